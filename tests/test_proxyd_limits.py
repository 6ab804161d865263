"""Abuse limits (issue 4, item 10): ranges per request, URL and header sizes, clients that
send or read slowly, the cap on upstream connections, and backpressure: a slow reader of a
256 MiB object must not make the proxy buffer it (its RSS stays flat, and the origin is only
asked for what the client is about to get).
"""

from __future__ import annotations

import concurrent.futures
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from nginx import NginxOrigin
from proxies import (
    BLOCK,
    Proxy,
    RecordingOrigin,
    raw_request,
    request,
    running,
    wait_until,
    write_old,
)

MiB = 1 << 20
LIMITS = {
    "max_ranges": 8,
    "max_url_bytes": 1024,
    "max_header_bytes": 1024,
    "max_headers_total_bytes": 4096,
    "client_timeout": 2,
    "upstream_connections": 2,
}


@pytest.fixture(scope="module")
def origin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NginxOrigin]:
    base = tmp_path_factory.mktemp("limits")
    with NginxOrigin(base / "root", base / "nginx") as nginx:
        yield nginx


@pytest.fixture(scope="module")
def proxy(origin: NginxOrigin, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proxy]:
    workdir = tmp_path_factory.mktemp("limits-proxy")
    with running(Proxy({"o": origin.url}, workdir, config=LIMITS)) as p:
        yield p


def test_too_many_ranges_is_416(origin: NginxOrigin, proxy: Proxy) -> None:
    size = 4 * BLOCK
    data = write_old(origin.root_dir, "ranges.bin", size, seed=1)
    eight = ",".join(f"{i * 1000}-{i * 1000 + 9}" for i in range(8))
    nine = ",".join(f"{i * 1000}-{i * 1000 + 9}" for i in range(9))
    for attempt in ("cold", "warm"):
        refused = proxy.get("/o/ranges.bin", {"Range": f"bytes={nine}"})
        assert refused.status == 416, attempt
        assert refused.header("Content-Range") == f"bytes */{size}"
        assert "9 ranges requested; at most 8" in refused.body.decode()
        assert data[:10] not in refused.body
        accepted = proxy.get("/o/ranges.bin", {"Range": f"bytes={eight}"})
        assert accepted.status == 206
        assert data[7000:7010] in accepted.body


def test_overlong_url_is_414_and_overlong_headers_431(origin: NginxOrigin, proxy: Proxy) -> None:
    mark = origin.mark()
    status, _, body = raw_request(
        proxy.port, f"GET /o/{'a' * 2000} HTTP/1.1\r\nHost: p\r\n\r\n".encode()
    )
    assert (status, body.decode()) == (
        414,
        "request target is 2003 bytes; at most 1024 bytes are accepted\n",
    )
    status, _, body = raw_request(
        proxy.port, b"GET /o/a.bin HTTP/1.1\r\nHost: p\r\nX-Big: " + b"b" * 2000 + b"\r\n\r\n"
    )
    assert status == 431
    assert "request header field X-Big is 2009 bytes" in body.decode()
    many = b"".join(b"X-H%d: %s\r\n" % (i, b"c" * 900) for i in range(10))
    status, _, body = raw_request(
        proxy.port, b"GET /o/a.bin HTTP/1.1\r\nHost: p\r\n" + many + b"\r\n"
    )
    assert status == 431
    assert "request header fields total" in body.decode()
    # Far beyond the limits (4x) the HTTP parser itself refuses, before any allocation of
    # that size: 400.
    status, _, _ = raw_request(
        proxy.port, f"GET /o/{'a' * 5000} HTTP/1.1\r\nHost: p\r\n\r\n".encode()
    )
    assert status == 400
    assert origin.access_log(mark) == []  # none of it reached the origin
    # One line in proxyd's log for each such request, not a traceback (a log flood).
    wait_until(lambda: "refused a malformed request (400)" in proxy.log_text())
    assert "Traceback" not in proxy.log_text()


def test_clients_that_send_slowly_or_stay_idle_are_dropped(proxy: Proxy) -> None:
    for opening in (b"GET /o/a.bin HTTP/1.1\r\nHost: p\r\n", b""):  # half a request; nothing
        # Closed by the proxy after client_timeout (2 s): with the default (60 s) the
        # socket's own timeout (10 s) would end the wait with an error instead.
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as sock:
            sock.sendall(opening)
            assert sock.recv(100) == b""


@pytest.mark.parametrize("cached", [False, True], ids=["filling", "cached"])
def test_a_client_that_stops_reading_is_dropped(
    origin: NginxOrigin, proxy: Proxy, cached: bool
) -> None:
    # Filling: bytes go out as they arrive from the origin; cached: sent from the block
    # files by sendfile threads. Either way a client that stops reading is let go.
    size = 32 * MiB
    name = f"unread-{cached}.bin"
    write_old(origin.root_dir, name, size, seed=3)
    if cached:
        assert proxy.get(f"/o/{name}").status == 200
    dropped = proxy.metrics().get('proxyd_errors_total{kind="client_timeout"}', 0)
    mark = proxy.mark()
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * 1024)
        sock.sendall(f"GET /o/{name} HTTP/1.1\r\nHost: p\r\n\r\n".encode())
        # The client reads nothing: after client_timeout (2 s) the proxy gives up on it
        # (with the default, 60 s, the wait below would fail).
        wait_until(
            lambda: proxy.metrics().get('proxyd_errors_total{kind="client_timeout"}', 0) > dropped,
            timeout=10,
            interval=0.2,
            what="the client to be dropped",
        )
        received = 0
        while chunk := sock.recv(1 << 20):  # what was in the socket buffers, then EOF
            received += len(chunk)
        assert received < size // 2
    [entry] = proxy.entries_since(mark, 1)
    assert (entry["target"], entry["status"]) == (f"/o/{name}", 499)
    assert "Traceback" not in proxy.log_text()  # an event, not a crash


def test_upstream_connections_are_capped(tmp_path: Path) -> None:
    """With upstream_connections = 2, eight concurrent cold requests to a stuck origin keep
    at most two requests open there; the others wait their turn, and all complete."""
    with RecordingOrigin({"Cache-Control": "max-age=3600"}) as recording:
        names = [f"cap{i}.bin" for i in range(8)]
        for i, name in enumerate(names):
            recording.put(f"/{name}", bytes([i]) * (3 * BLOCK))
        recording.hang = True
        proxy = Proxy({"r": recording.url}, tmp_path / "p", config=LIMITS)
        with running(proxy), concurrent.futures.ThreadPoolExecutor(8) as pool:
            futures = [pool.submit(request, proxy.url, f"r/{n}") for n in names]
            wait_until(lambda: recording.active == 2, timeout=5, what="two stuck requests")
            # Every client is waiting now, yet the origin sees no third request.
            assert len(recording.requests) == 2
            assert recording.peak_active == 2
            recording.hang = False
            bodies = [f.result(timeout=30).body for f in futures]
        assert bodies == [bytes([i]) * (3 * BLOCK) for i in range(8)]
        assert recording.peak_active == 2
        assert len(recording.requests) == 8  # one request per object


def test_a_slow_reader_does_not_make_the_proxy_buffer_the_object(
    origin: NginxOrigin, tmp_path: Path
) -> None:
    256 * MiB
    chunk = os.urandom(MiB)
    path = origin.root_dir / "huge.bin"
    with path.open("wb") as f:
        for _ in range(256):
            f.write(chunk)
    old = time.time() - 30 * 86400
    os.utime(path, (old, old))
    config = {"readahead_bytes": "1MiB", "client_timeout": 30}
    with running(
        Proxy({"o": origin.url}, tmp_path / "p", block_size="1MiB", config=config)
    ) as proxy:
        assert request(proxy.url, "healthz").status == 200
        baseline = proxy.rss()
        mark = origin.mark()
        peak = baseline
        received = 0
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * 1024)
            sock.sendall(b"GET /o/huge.bin HTTP/1.1\r\nHost: p\r\n\r\n")
            deadline = time.monotonic() + 3
            while time.monotonic() < deadline:  # about 1 MiB/s, in 4 KiB reads
                data = sock.recv(4096)
                assert data
                received += len(data)
                if received % (256 * 1024) < 4096:
                    peak = max(peak, proxy.rss())
                time.sleep(0.004)
            peak = max(peak, proxy.rss())
            in_flight = proxy.metric_sum("proxyd_bytes_from_origin_total")
        print(
            f"slow reader: read {received} bytes in 3 s; proxy RSS {baseline / MiB:.0f} -> "
            f"peak {peak / MiB:.0f} MiB; proxy read {in_flight / MiB:.1f} MiB from the origin"
        )
        assert received < 8 * MiB
        assert peak - baseline < 48 * MiB  # far from the 256 MiB object
        # The proxy read from the origin only a little ahead of what it had sent: the
        # read-ahead (1 MiB) plus what sits in the socket buffers towards the client.
        assert in_flight < received + 12 * MiB
        # Once the client has gone the proxy hangs up (nginx logs the request then): the
        # origin sent that plus what the socket buffers between them held, not 256 MiB.
        [entry] = wait_until(
            lambda: [e for e in origin.access_log(mark) if e["path"] == "/huge.bin"],
            timeout=10,
            what="the upstream request to end",
        )
        assert entry["completion"] != "OK"
        assert entry["body_bytes_sent"] < 64 * MiB


def test_a_stalled_reader_releases_the_upstream_connection(
    origin: NginxOrigin, tmp_path: Path
) -> None:
    """While its client does not read, a fetch waits at the read-ahead; after
    upstream_read_timeout (1 s here) it gives the upstream connection back instead of
    holding it, and the rest is fetched again when the client wants it: the response is
    still whole and exact."""
    # Far more than the socket buffers between proxy and client can hold (loopback's grow
    # to several MiB): with 12 MiB the whole object once fitted in them, so the reader
    # never stalled the fetch.
    size = 40 * MiB
    data = write_old(origin.root_dir, "stall.bin", size, seed=30)
    config = {"readahead_bytes": "256KiB", "upstream_read_timeout": 1}
    with running(Proxy({"o": origin.url}, tmp_path / "p", config=config)) as proxy:
        mark = origin.mark()
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=20) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
            sock.sendall(b"GET /o/stall.bin HTTP/1.1\r\nHost: p\r\nConnection: close\r\n\r\n")
            received = sock.recv(65536)
            # Stall until the proxy has let go of the upstream request (nginx logs it then).
            wait_until(
                lambda: [e for e in origin.access_log(mark) if e["path"] == "/stall.bin"],
                timeout=10,
                what="the upstream request to be released",
            )
            while chunk := sock.recv(1 << 20):
                received += chunk
        head, _, body = received.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200")
        assert body == data
        fetches = [e for e in origin.access_log(mark) if e["path"] == "/stall.bin"]
        print("stalled reader:", [(e["range"], e["body_bytes_sent"]) for e in fetches])
        assert len(fetches) >= 2  # released, then fetched again from where it stopped
        assert fetches[0]["completion"] != "OK"
        # Nothing was fetched twice, except what was in flight when the connection went.
        # The client got it all, so the origin sent it all at least once.
        assert size <= sum(e["body_bytes_sent"] for e in fetches) < size + 8 * MiB
