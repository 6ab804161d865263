"""Operations (issue 4, item 9): /metrics after a known sequence of requests, /healthz, one
access-log line per request, and the admin commands (stats, ls, purge, warm), each run as a
subprocess the way an operator runs them.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
from nginx import NginxOrigin
from proxies import BLOCK, Proxy, free_port, proxyd_cli, request, running, write_old

SIZE = 5 * BLOCK + 123


@pytest.fixture
def origin(tmp_path: Path) -> Iterator[NginxOrigin]:
    with NginxOrigin(tmp_path / "root", tmp_path / "nginx") as nginx:
        yield nginx


@pytest.fixture
def dead() -> str:
    return f"http://127.0.0.1:{free_port()}/"  # nothing listens there


@pytest.fixture
def proxy(origin: NginxOrigin, dead: str, tmp_path: Path) -> Iterator[Proxy]:
    with running(Proxy({"o": origin.url, "dead": dead}, tmp_path / "p")) as p:
        yield p


def test_metrics_and_access_log_after_a_known_sequence(origin: NginxOrigin, proxy: Proxy) -> None:
    root = origin.root_dir
    write_old(root, "a.bin", SIZE, seed=1)
    write_old(root, "b.bin", SIZE, seed=2)
    c_size = 512 * 1024
    write_old(root, "c.bin", c_size, seed=3)
    sent: list[int] = []  # body bytes of every response

    def get(path: str, headers: dict[str, str] | None = None, method: str = "GET") -> str:
        response = proxy.get(path, headers, method=method)
        sent.append(len(response.body))
        return response.header("X-Cache") or ""

    assert get("/o/a.bin") == "MISS"
    assert get("/o/a.bin") == "HIT"
    assert get("/o/b.bin", {"Range": f"bytes={BLOCK}-{3 * BLOCK - 1}"}) == "MISS"
    assert get("/o/b.bin") == "PARTIAL"
    assert get("/o/b.bin", method="HEAD") == "HIT"
    # Three concurrent cold requests for one object from a throttled origin (/slow/, 256
    # KiB/s after a burst): one fetch, and the two others wait for its bytes (coalesced
    # waits). Each is a MISS, or a PARTIAL if the first blocks were already in.
    barrier = threading.Barrier(3)
    statuses: list[str] = []

    def cold() -> None:
        barrier.wait()
        statuses.append(get("/o/slow/c.bin"))

    threads = [threading.Thread(target=cold) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert set(statuses) <= {"MISS", "PARTIAL"}
    assert "MISS" in statuses
    assert proxy.get("/nope/x").status == 404
    assert proxy.get("/dead/x.bin").status == 502
    requests_made = 10

    logged = proxy.entries_since(0, requests_made)
    assert len(logged) == requests_made  # one line per request, no more
    for entry in logged:
        assert set(entry) == {
            "client",
            "method",
            "target",
            "status",
            "cache",
            "bytes_from_cache",
            "bytes_from_origin",
            "seconds",
        }
    assert [e["cache"] for e in logged][:5] == ["MISS", "HIT", "MISS", "PARTIAL", "HIT"]
    assert sorted(e["cache"] for e in logged[5:]) == sorted(["ERROR", "REFUSED", *statuses])
    assert logged[0]["bytes_from_origin"] == SIZE
    assert logged[1]["bytes_from_cache"] == SIZE
    assert (logged[3]["bytes_from_cache"], logged[3]["bytes_from_origin"]) == (
        2 * BLOCK,
        SIZE - 2 * BLOCK,
    )
    body_bytes = sum(e["bytes_from_cache"] + e["bytes_from_origin"] for e in logged)
    assert body_bytes == sum(sent[:8])  # object bytes; the error bodies are proxyd's own
    from_origin = sum(e["body_bytes_sent"] for e in origin.access_log())

    m = proxy.metrics()
    assert m['proxyd_requests_total{cache="MISS",method="GET",status="200"}'] == 1 + statuses.count(
        "MISS"
    )
    assert m['proxyd_requests_total{cache="MISS",method="GET",status="206"}'] == 1
    assert m['proxyd_requests_total{cache="HIT",method="HEAD",status="200"}'] == 1
    assert m['proxyd_requests_total{cache="REFUSED",method="GET",status="404"}'] == 1
    assert m['proxyd_requests_total{cache="ERROR",method="GET",status="502"}'] == 1
    assert m["proxyd_cache_hits_total"] == 2
    assert m["proxyd_cache_misses_total"] == 2 + statuses.count("MISS")
    assert m["proxyd_cache_partial_hits_total"] == 1 + statuses.count("PARTIAL")
    c_from_cache = sum(e["bytes_from_cache"] for e in logged[5:])
    assert m["proxyd_bytes_from_cache_total"] == SIZE + 2 * BLOCK + c_from_cache
    assert m['proxyd_bytes_from_origin_total{upstream="o"}'] == from_origin
    assert from_origin == 2 * SIZE + c_size  # each object crossed the link once
    assert m["proxyd_bytes_to_clients_total"] == body_bytes
    assert m["proxyd_coalesced_waits_total"] >= 2
    upstream_requests = len(origin.access_log())
    assert m['proxyd_upstream_latency_seconds_count{upstream="o"}'] == upstream_requests
    assert m['proxyd_upstream_latency_seconds_bucket{le="+Inf",upstream="o"}'] == upstream_requests
    assert m['proxyd_upstream_latency_seconds_sum{upstream="o"}'] > 0
    assert m['proxyd_errors_total{kind="upstream_unavailable"}'] == 1
    assert 3 * SIZE <= m["proxyd_cache_size_bytes"] < 3 * SIZE + (1 << 20)
    assert m["proxyd_evictions_total"] == 0
    metrics = request(proxy.url, "metrics")
    assert (metrics.header("Content-Type") or "").startswith("text/plain")


def test_metrics_say_when_every_request_is_in_the_access_log(
    origin: NginxOrigin, tmp_path: Path
) -> None:
    """proxyd writes its access log in batches, after the answers: /metrics counts the
    requests received (on arrival) and the lines written, summed over worker processes,
    so a reader knows when the log is complete instead of waiting for it to go quiet."""
    write_old(origin.root_dir, "a.bin", SIZE, seed=4)
    with running(Proxy({"o": origin.url}, tmp_path / "p", config={"workers": 2})) as proxy:
        statuses = [proxy.get("/o/a.bin").status for _ in range(12)]
        statuses.append(proxy.get("/nope/x").status)
        assert statuses == [200] * 12 + [404]
        proxy.sync_log()
        m = proxy.metrics()
        # /metrics and /healthz are neither counted nor logged: exactly the 13 above.
        assert m["proxyd_requests_received_total"] == 13
        assert m["proxyd_access_log_lines_total"] == 13
        assert [e["target"] for e in proxy.access_log()] == ["/o/a.bin"] * 12 + ["/nope/x"]
        # Hits went to both processes' fast lanes or the main handler: all counted once.
        assert m['proxyd_requests_total{cache="MISS",method="GET",status="200"}'] == 1


def test_healthz(proxy: Proxy, origin: NginxOrigin, dead: str) -> None:
    response = request(proxy.url, "healthz")
    assert response.status == 200
    health = json.loads(response.body)
    assert health["status"] == "ok"
    assert health["upstreams"] == ["dead", "o"]
    assert "route" not in health
    assert origin.url.rstrip("/") not in response.body.decode()  # names, never URLs
    # The proxy's path for a URL it serves (as `mirror pull --via` asks), else null.
    for url, path in [
        (origin.url + "sub/repo/", "/o/sub/repo/"),
        (origin.url, "/o/"),
        (dead.replace("127.0.0.1", "127.0.0.2"), None),
    ]:
        answer = json.loads(request(proxy.url, f"healthz?route={quote(url, safe='')}").body)
        assert answer["route"] == path, url
    assert health["cache_limit"] == 10 * 1024**3
    assert health["cache_bytes"] >= 0


def test_admin_commands_stats_ls_purge_warm(
    origin: NginxOrigin, proxy: Proxy, tmp_path: Path
) -> None:
    root = origin.root_dir
    files = {f"w{i}.bin": write_old(root, f"sub/w{i}.bin", SIZE + i, seed=10 + i) for i in range(3)}
    write_old(root, "other.bin", 1000, seed=20)
    cache = ["--cache-dir", str(proxy.cache_dir), "--block-size", "64KiB"]
    upstreams = ["--upstream", f"o={origin.url}"]

    # warm: a URL list from a file (proxy paths and full URLs) and from stdin.
    url_file = tmp_path / "urls.txt"
    url_file.write_text(f"# objects for the conference\n/o/sub/w0.bin\n{proxy.url}o/sub/w1.bin\n\n")
    warmed = proxyd_cli("warm", "--proxy", proxy.url, "--urls", str(url_file))
    assert warmed.returncode == 0, warmed.stderr
    assert warmed.stdout.strip() == "Warmed 2 of 2 URL(s), 640.2 KiB; 0 failed"
    from_stdin = proxyd_cli(
        "warm", "--proxy", proxy.url, "--urls", "-", input="o/sub/w2.bin\no/missing.bin\n"
    )
    assert from_stdin.returncode == 1  # one URL failed: say so, and exit non-zero
    assert "Warmed 1 of 2 URL(s)" in from_stdin.stdout
    assert "failed" in from_stdin.stderr
    assert "missing.bin: HTTP 404" in from_stdin.stderr
    mark = origin.mark()
    for i in range(3):
        hit = proxy.get(f"/o/sub/w{i}.bin")
        assert (hit.header("X-Cache"), hit.body) == ("HIT", files[f"w{i}.bin"])
    assert origin.access_log(mark) == []

    # stats: human and JSON.
    stats = proxyd_cli("stats", *cache)
    assert stats.returncode == 0, stats.stderr
    assert "block size      64 KiB" in stats.stdout
    assert "3 objects" in stats.stdout
    figures = json.loads(proxyd_cli("stats", "--json", *cache).stdout)
    assert figures["objects"] == 3
    assert figures["blocks"] == 3 * 6
    assert figures["volume"] >= 3 * SIZE

    # ls: every object with its blocks present / total.
    listing = proxyd_cli("ls", *cache)
    assert listing.returncode == 0, listing.stderr
    rows = listing.stdout.splitlines()
    assert len(rows) == 3
    for i, row in enumerate(sorted(rows, key=lambda r: r.split()[-1])):
        assert row.split()[0] == "6/6"
        assert row.endswith(f"{origin.url}sub/w{i}.bin")
    only = proxyd_cli("ls", *cache, "--prefix", f"{origin.url}sub/w1")
    assert len(only.stdout.splitlines()) == 1
    # json and csv: every field, whole, sizes in bytes (for scripts).
    listed = json.loads(proxyd_cli("ls", *cache, "--format", "json").stdout)
    assert [(r["key"], r["blocks"], r["size"], r["pinned"]) for r in listed] == [
        (f"{origin.url}sub/w{i}.bin", "6/6", SIZE + i, False) for i in range(3)
    ]
    csv_lines = proxyd_cli("ls", *cache, "--format", "csv").stdout.splitlines()
    assert csv_lines[0] == "key,url,size,etag,blocks,pinned"
    assert len(csv_lines) == 4
    assert csv_lines[1].startswith(f"{origin.url}sub/w0.bin,")
    nothing = proxyd_cli("ls", *cache, "--prefix", "http://nowhere/")
    assert nothing.stdout.strip() == "No cached objects."

    # purge: one object by proxy path, then a prefix, then everything.
    purged = proxyd_cli("purge", *cache, *upstreams, "/o/sub/w0.bin")
    assert (purged.returncode, purged.stdout.strip()) == (0, "Purged 1 object(s).")
    assert proxy.get("/o/sub/w0.bin").header("X-Cache") == "MISS"
    assert proxy.get("/o/other.bin").header("X-Cache") == "MISS"
    prefix = proxyd_cli("purge", *cache, *upstreams, "/o/sub/*")
    assert (prefix.returncode, prefix.stdout.strip()) == (0, "Purged 3 object(s).")
    assert proxy.get("/o/other.bin").header("X-Cache") == "HIT"  # not under the prefix
    assert proxy.get("/o/sub/w2.bin").header("X-Cache") == "MISS"
    everything = proxyd_cli("purge", *cache, "--all")
    assert everything.returncode == 0
    assert json.loads(proxyd_cli("stats", "--json", *cache).stdout)["objects"] == 0
    assert proxy.get("/o/other.bin").header("X-Cache") == "MISS"
    # Mistakes are explained.
    unknown = proxyd_cli("purge", *cache, *upstreams, "/nope/x")
    assert unknown.returncode == 2
    assert "no upstream named 'nope'" in unknown.stderr
    nothing = proxyd_cli("purge", *cache)
    assert nothing.returncode == 2
    assert "--all" in nothing.stderr
