"""Origin down (issue 4, item 6): cached content is still served, marked stale; uncached
requests get 502/504 naming the upstream, within the configured timeout.

nginx stopped gives "connection refused"; a recording origin that stops answering gives a
read timeout, and one that answers 503 a failing origin.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from fixtures_nginx import write_object
from nginx import Location, NginxOrigin
from proxies import BLOCK, Proxy, RecordingOrigin, parse_multipart, running, write_old

SIZE = 5 * BLOCK + 300
TIMEOUTS = {"upstream_connect_timeout": 1, "upstream_read_timeout": 1}
#: How long a test's client waits for the proxy: far below proxyd's default timeouts (60 s),
#: so a proxy that ignored the configured ones fails the request instead of answering late.
CLIENT_BOUND = 10.0


@pytest.fixture
def origin(tmp_path: Path) -> Iterator[NginxOrigin]:
    # /stale/ says max-age=0: stale at once (but not forbidden to be served stale).
    with NginxOrigin(
        tmp_path / "root",
        tmp_path / "nginx",
        locations=[Location("/stale/", headers={"Cache-Control": "max-age=0"})],
    ) as nginx:
        yield nginx


def test_origin_down_cached_content_is_served_stale(origin: NginxOrigin, tmp_path: Path) -> None:
    root = origin.root_dir
    stale = write_old(root, "stale.bin", SIZE, seed=1)  # served as /stale/: max-age=0
    fresh = write_old(root, "fresh.bin", SIZE, seed=2)  # heuristically fresh for a day
    part = write_old(root, "part.bin", SIZE, seed=3)
    write_object(root, "never.bin", SIZE, seed=4)
    with running(Proxy({"o": origin.url}, tmp_path / "p", config=TIMEOUTS)) as proxy:
        assert proxy.get("/o/stale/stale.bin").body == stale
        assert proxy.get("/o/fresh.bin").body == fresh
        assert proxy.get("/o/stale/part.bin", {"Range": "bytes=0-99"}).body == part[:100]
        assert proxy.get("/o/stale/stale.bin").header("X-Cache") == "REVALIDATED"  # origin up
        origin.stop()

        response = proxy.get("/o/stale/stale.bin")
        assert (response.status, response.header("X-Cache")) == (200, "STALE")
        assert response.body == stale
        ranged = proxy.get("/o/stale/stale.bin", {"Range": "bytes=70000-70999"})
        assert (ranged.status, ranged.header("X-Cache")) == (206, "STALE")
        assert ranged.body == stale[70000:71000]
        multi = proxy.get("/o/stale/stale.bin", {"Range": "bytes=0-9,-10"})
        assert multi.header("X-Cache") == "STALE"
        parts = parse_multipart(multi.header("Content-Type") or "", multi.body)
        assert [p[1] for p in parts] == [stale[:10], stale[-10:]]
        head = proxy.get("/o/stale/stale.bin", method="HEAD")
        assert (head.status, head.header("X-Cache")) == (200, "STALE")
        assert head.header("Content-Length") == str(SIZE)
        # Fresh content needs no origin at all.
        hit = proxy.get("/o/fresh.bin")
        assert (hit.status, hit.header("X-Cache"), hit.body) == (200, "HIT", fresh)
        # What is cached of a partly cached object is served; the rest is a clean 502.
        cached_part = proxy.get("/o/stale/part.bin", {"Range": "bytes=10-59"})
        assert (cached_part.status, cached_part.header("X-Cache")) == (206, "STALE")
        assert cached_part.body == part[10:60]
        # Connection refused is an answer, not a wait: the client's own timeout bounds it.
        missing_part = proxy.get("/o/stale/part.bin", timeout=CLIENT_BOUND)
        assert missing_part.status == 502
        assert "'o'" in missing_part.body.decode()
        assert part[:100] not in missing_part.body
        # Never cached: 502 at once (connection refused), naming the upstream.
        never = proxy.get("/o/never.bin", timeout=CLIENT_BOUND)
        assert never.status == 502
        assert "upstream 'o'" in never.body.decode()
        assert "unreachable" in never.body.decode()
        metrics = proxy.metrics()
        assert metrics.get('proxyd_errors_total{kind="upstream_timeout"}', 0) == 0
        assert metrics["proxyd_stale_served_total"] >= 5
        assert metrics['proxyd_errors_total{kind="upstream_unavailable"}'] >= 2
        logged = proxy.entries_since(0, 12)
        assert [e["cache"] for e in logged].count("STALE") >= 5
        assert {e["status"] for e in logged if e["cache"] == "ERROR"} == {502}


def test_stuck_origin_times_out_with_504_and_cached_content_is_served_stale(
    tmp_path: Path,
) -> None:
    with RecordingOrigin({"Cache-Control": "max-age=0"}) as recording:
        data = b"x" * SIZE
        recording.put("/cached.bin", data)
        recording.put("/uncached.bin", data)
        with running(Proxy({"r": recording.url}, tmp_path / "p", config=TIMEOUTS)) as proxy:
            assert proxy.get("/r/cached.bin").body == data
            recording.hang = True
            stale = proxy.get("/r/cached.bin", timeout=CLIENT_BOUND)
            assert (stale.status, stale.header("X-Cache"), stale.body) == (200, "STALE", data)
            # The configured read timeout (1 s), not the default 60 s: the client's bound
            # (10 s) would end the request first.
            uncached = proxy.get("/r/uncached.bin", timeout=CLIENT_BOUND)
            assert uncached.status == 504
            assert "upstream 'r'" in uncached.body.decode()
            assert "timeout" in uncached.body.decode()
            assert proxy.metrics()['proxyd_errors_total{kind="upstream_timeout"}'] == 2
            recording.hang = False
            assert proxy.get("/r/uncached.bin").body == data  # it recovers
            assert proxy.metrics()['proxyd_errors_total{kind="upstream_timeout"}'] >= 2


def test_an_origin_that_never_accepts_times_out(tmp_path: Path) -> None:
    """A listening socket that never answers (the TCP handshake completes in the kernel)."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        url = f"http://127.0.0.1:{listener.getsockname()[1]}/"
        with running(Proxy({"dead": url}, tmp_path / "p", config=TIMEOUTS)) as proxy:
            response = proxy.get("/dead/x.bin", timeout=CLIENT_BOUND)
            assert response.status == 504
            assert "upstream 'dead'" in response.body.decode()


def test_failing_origin_stale_if_error_unless_forbidden(tmp_path: Path) -> None:
    with RecordingOrigin() as recording:
        data = b"y" * SIZE
        recording.put("/ok.bin", data)
        recording.headers_for["/ok.bin"] = {"Cache-Control": "max-age=0"}
        recording.put("/strict.bin", data)
        recording.headers_for["/strict.bin"] = {"Cache-Control": "max-age=0, must-revalidate"}
        with running(Proxy({"r": recording.url}, tmp_path / "p", config=TIMEOUTS)) as proxy:
            assert proxy.get("/r/ok.bin").body == data
            assert proxy.get("/r/strict.bin").body == data
            recording.fail_with = 503
            ok = proxy.get("/r/ok.bin")
            assert (ok.status, ok.header("X-Cache"), ok.body) == (200, "STALE", data)
            # must-revalidate forbids serving it stale (RFC 9111 §4.2.4, §5.2.2.2).
            strict = proxy.get("/r/strict.bin")
            assert strict.status in (502, 503, 504)
            assert data[:100] not in strict.body
            recording.fail_with = None
            assert proxy.get("/r/strict.bin").header("X-Cache") == "REVALIDATED"
