"""The fast lane (proxyd.fastlane) against a real proxyd and nginx: its answers are the full
handler's, byte for byte and field for field; pipelined requests stay in order across the
hand-over; a client that does not read is not answered ahead; a cold restart and a stale
object are handled without wrong answers.

Whether a request was answered by the lane is read off ``proxyd_fast_lane_handovers_total``:
the lane hands a connection to the full handler, with a reason, at the first request it
does not answer itself.
"""

from __future__ import annotations

import http.client
import os
import socket
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from nginx import NginxOrigin
from proxies import BLOCK, Proxy, RecordingOrigin, proxyd_cli, running, write_old

BIG = 5 * BLOCK + 1234  # several 64 KiB blocks
SMALL = 5000  # small enough to be answered whole from memory


@pytest.fixture(scope="module")
def origin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NginxOrigin]:
    base = tmp_path_factory.mktemp("fastlane")
    with NginxOrigin(base / "root", base / "nginx") as nginx:
        yield nginx


@pytest.fixture(scope="module")
def objects(origin: NginxOrigin) -> dict[str, bytes]:
    return {
        "big.bin": write_old(origin.root_dir, "big.bin", BIG, seed=11),
        "small.bin": write_old(origin.root_dir, "small.bin", SMALL, seed=12),
        "stream.bin": write_old(origin.root_dir, "stream.bin", 8 << 20, seed=13),
    }


@pytest.fixture(scope="module")
def proxy(
    origin: NginxOrigin, objects: dict[str, bytes], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Proxy]:
    workdir = tmp_path_factory.mktemp("fastlane-proxy")
    with running(Proxy({"o": origin.url}, workdir)) as p:
        for name, data in objects.items():
            assert p.get(f"o/{name}").body == data  # fills the cache
        yield p


def handovers(proxy: Proxy, reason: str | None = None) -> float:
    """Connections handed to the full handler (for ``reason``, or for any reason but "not
    routed", which every request for /metrics is, this one's included)."""
    prefix = 'proxyd_fast_lane_handovers_total{reason="'
    counts = {k[len(prefix) : -2]: v for k, v in proxy.metrics().items() if k.startswith(prefix)}
    if reason is None:
        return sum(v for k, v in counts.items() if k != "not routed")
    return counts.get(reason, 0.0)


def read_response(sock: socket.socket, buffer: bytearray) -> tuple[int, dict[str, str], bytes]:
    """One response off a keep-alive connection (Content-Length framing), leaving whatever
    follows in ``buffer``."""
    while b"\r\n\r\n" not in buffer:
        chunk = sock.recv(1 << 20)
        assert chunk, "connection closed before a complete response"
        buffer += chunk
    head, _, _ = bytes(buffer).partition(b"\r\n\r\n")
    del buffer[: len(head) + 4]
    lines = head.decode("latin-1").split("\r\n")
    fields = {
        k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])
    }
    length = int(fields.get("content-length", "0"))
    while len(buffer) < length:
        chunk = sock.recv(1 << 20)
        assert chunk, "connection closed inside a body"
        buffer += chunk
    body = bytes(buffer[:length])
    del buffer[:length]
    return int(lines[0].split()[1]), fields, body


def plain_get(port: int, target: str, range_value: str | None = None) -> bytes:
    extra = f"Range: {range_value}\r\n" if range_value else ""
    return f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n{extra}\r\n".encode()


@pytest.mark.parametrize(
    ("name", "range_value", "expected"),
    [
        ("big.bin", "bytes=100-2979", (100, 2980)),  # inside one block
        ("big.bin", f"bytes={BLOCK - 1000}-{BLOCK + 999}", (BLOCK - 1000, BLOCK + 1000)),
        ("big.bin", "bytes=-700", (BIG - 700, BIG)),  # suffix
        ("big.bin", f"bytes={BIG - 10}-", (BIG - 10, BIG)),  # open-ended
        ("big.bin", f"bytes={BIG - 10}-{BIG + 500}", (BIG - 10, BIG)),  # clipped
        ("small.bin", None, (0, SMALL)),  # a whole small object: 200
        ("small.bin", "bytes=9-1", (0, SMALL)),  # an invalid Range is ignored: 200
    ],
)
def test_lane_answers_equal_the_full_handlers(
    proxy: Proxy,
    objects: dict[str, bytes],
    name: str,
    range_value: str | None,
    expected: tuple[int, int],
) -> None:
    before = handovers(proxy)
    headers = {"Range": range_value} if range_value else {}
    lane = proxy.get(f"o/{name}", headers)
    assert handovers(proxy) == before, "the lane should have answered this itself"
    full = proxy.get(f"o/{name}", {**headers, "X-Take-The-Long-Way": "1"})
    assert handovers(proxy, "not plain") >= 1
    start, stop = expected
    assert lane.body == full.body == objects[name][start:stop]
    assert lane.status == full.status == (200 if (start, stop) == (0, len(objects[name])) else 206)

    def fields(response: object) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for key, value in response.headers.items():  # type: ignore[attr-defined]
            if key.lower() != "age":  # seconds pass between the two requests
                out.setdefault(key.lower(), []).append(value)
        return out

    assert fields(lane) == fields(full)
    # Both lanes frame the range with proxyd.hit's code: check it against RFC 9110 §14.4.
    whole = (start, stop) == (0, len(objects[name]))
    content_range = None if whole else f"bytes {start}-{stop - 1}/{len(objects[name])}"
    assert lane.header("Content-Range") == content_range
    assert lane.header("Content-Length") == str(stop - start)
    assert lane.header("X-Cache") == "HIT"
    assert 0 <= int(lane.header("Age") or "-1") <= int(full.header("Age") or "0")


def test_lane_requests_are_logged_and_counted_like_the_others(proxy: Proxy) -> None:
    mark = proxy.mark()
    hits = proxy.metric_sum("proxyd_cache_hits_total")
    from_cache = proxy.metric_sum("proxyd_bytes_from_cache_total")
    before = handovers(proxy)
    assert proxy.get("o/big.bin", {"Range": "bytes=10-109"}).status == 206
    [entry] = proxy.entries_since(mark, 1)
    assert handovers(proxy) == before
    assert entry["method"] == "GET"
    assert entry["target"] == "/o/big.bin"
    assert (entry["status"], entry["cache"]) == (206, "HIT")
    assert (entry["bytes_from_cache"], entry["bytes_from_origin"]) == (100, 0)
    assert entry["client"] == "127.0.0.1"
    assert proxy.metric_sum("proxyd_cache_hits_total") == hits + 1
    assert proxy.metric_sum("proxyd_bytes_from_cache_total") == from_cache + 100


def test_pipelined_requests_stay_in_order_across_the_hand_over(
    proxy: Proxy, objects: dict[str, bytes]
) -> None:
    port = int(proxy.url.rsplit(":", 1)[1].strip("/"))
    etag = proxy.get("o/big.bin").header("ETag")
    conditional = (
        f"GET /o/big.bin HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nIf-None-Match: {etag}\r\n\r\n"
    ).encode()
    ranges = [(0, 99), (5000, 5999), None, (70000, 70999), (BIG - 50, BIG - 1)]
    wire = b"".join(
        conditional if r is None else plain_get(port, "/o/big.bin", f"bytes={r[0]}-{r[1]}")
        for r in ranges
    )
    before = handovers(proxy, "not plain")
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(wire)  # all five at once: the lane answers two, aiohttp the rest
        buffer = bytearray()
        for r in ranges:
            status, _, body = read_response(sock, buffer)
            if r is None:
                assert (status, body) == (304, b"")
            else:
                assert (status, body) == (206, objects["big.bin"][r[0] : r[1] + 1])
    assert handovers(proxy, "not plain") == before + 1


def test_a_client_that_does_not_read_is_not_answered_ahead(
    proxy: Proxy, objects: dict[str, bytes]
) -> None:
    """1,000 pipelined requests for 100 KiB each (100 MB of answers): while the client
    reads nothing, the lane answers only what the socket buffers hold, then waits."""
    port = int(proxy.url.rsplit(":", 1)[1].strip("/"))
    data = objects["stream.bin"]
    count, length = 1000, 100 * 1024
    starts = [(i * 7919 * 1024) % (len(data) - length) for i in range(count)]
    wire = b"".join(plain_get(port, "/o/stream.bin", f"bytes={s}-{s + length - 1}") for s in starts)
    answered = "proxyd_requests_total"
    before = proxy.metric_sum(answered)
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(wire)
        time.sleep(1.0)
        meanwhile = proxy.metric_sum(answered) - before - 1  # the scrape counts itself
        assert meanwhile < count // 2, f"{meanwhile} answers ran ahead of a client not reading"
        buffer = bytearray()
        for s in starts:
            status, _, body = read_response(sock, buffer)
            assert status == 206
            assert body == data[s : s + length]


def test_a_restarted_proxy_answers_from_the_lane_after_reading_the_disk_once(
    origin: NginxOrigin, objects: dict[str, bytes], tmp_path: Path
) -> None:
    with running(Proxy({"o": origin.url}, tmp_path)) as first:
        assert first.get("o/big.bin").body == objects["big.bin"]
    mark = origin.mark()
    with running(Proxy({"o": origin.url}, tmp_path, log_name="second.log")) as second:
        port = int(second.url.rsplit(":", 1)[1].strip("/"))
        before = handovers(second)
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        try:
            for start in (0, 3 * BLOCK + 5, 200):
                connection.request(
                    "GET", "/o/big.bin", headers={"Range": f"bytes={start}-{start + 99}"}
                )
                response = connection.getresponse()
                assert response.read() == objects["big.bin"][start : start + 100]
                assert response.getheader("X-Cache") == "HIT"
        finally:
            connection.close()
        assert handovers(second) == before  # metadata and blocks read in a thread, once
    assert [e for e in origin.access_log(mark) if e["path"] == "/big.bin"] == []


def test_stale_objects_are_left_to_the_full_handler_which_revalidates(tmp_path: Path) -> None:
    with RecordingOrigin({"Cache-Control": "max-age=1"}) as origin:
        origin.put("/short.bin", bytes(range(256)) * 40)
        with running(Proxy({"o": origin.url}, tmp_path)) as proxy:
            assert proxy.get("o/short.bin").header("X-Cache") == "MISS"
            port = int(proxy.url.rsplit(":", 1)[1].strip("/"))
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            try:
                seen = []
                for pause in (0.0, 1.5):
                    time.sleep(pause)
                    connection.request("GET", "/o/short.bin", headers={"Range": "bytes=0-9"})
                    response = connection.getresponse()
                    assert response.read() == bytes(range(10))
                    seen.append(response.getheader("X-Cache"))
            finally:
                connection.close()
            assert seen == ["HIT", "REVALIDATED"]
            # (the lane handed the stale request over: REVALIDATED is the handler's answer)
        conditional = [r for r in origin.requests_for("/short.bin") if r.header("If-None-Match")]
        assert len(conditional) == 1


@pytest.mark.parametrize("config", [{"fast_lane": False}, {"event_loop": "uvloop"}])
def test_without_the_lane_or_uvloop_the_answers_are_the_same(
    origin: NginxOrigin,
    objects: dict[str, bytes],
    proxy: Proxy,
    tmp_path: Path,
    config: dict[str, object],
) -> None:
    reference = proxy.get("o/big.bin", {"Range": "bytes=1000-4999"})
    with running(Proxy({"o": origin.url}, tmp_path, config=config)) as other:
        assert other.get("o/big.bin").body == objects["big.bin"]
        answer = other.get("o/big.bin", {"Range": "bytes=1000-4999"})
        if config.get("fast_lane") is False:
            assert handovers(other) == 0  # no lane: nothing is handed over
        else:
            assert handovers(other) >= 1  # the health check and the first, cold GET
            assert "event loop uvloop" in other.log_text()
    assert answer.status == reference.status == 206
    assert answer.body == reference.body == objects["big.bin"][1000:5000]
    same = ("Content-Range", "Content-Length", "ETag", "Last-Modified", "Content-Type", "X-Cache")
    assert [answer.header(n) for n in same] == [reference.header(n) for n in same]


def test_worker_processes_serve_hits_and_hand_the_rest_to_the_main_process(
    origin: NginxOrigin, objects: dict[str, bytes], tmp_path: Path
) -> None:
    """workers = 2: connections spread over two processes; whatever lands in the worker
    and is not a hit (the cold fills here) is served by the main process, so the origin
    still sends each object once, and /metrics and the access log count every request."""
    proxy = Proxy({"o": origin.url}, tmp_path, config={"workers": 2})
    with running(proxy):
        children = subprocess.run(
            ["pgrep", "-P", str(proxy.pid)], capture_output=True, text=True, check=False
        )
        pids = {int(p) for p in children.stdout.split()}
        assert len(pids) == 1, "one worker process besides the main one"
        mark = origin.mark()
        connections = 24
        requests_each = 6
        port = int(proxy.url.rsplit(":", 1)[1].strip("/"))

        def client(i: int) -> list[bytes]:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            bodies = []
            try:
                for j in range(requests_each):
                    start = (i * 7 + j * 1031) % (BIG - 100)
                    ranged = {"Range": f"bytes={start}-{start + 99}"}
                    conn.request("GET", "/o/big.bin", headers=ranged)
                    response = conn.getresponse()
                    body = response.read()
                    assert body == objects["big.bin"][start : start + 100]
                    bodies.append(body)
            finally:
                conn.close()
            return bodies

        with ThreadPoolExecutor(connections) as pool:
            results = list(pool.map(client, range(connections)))
        assert sum(len(r) for r in results) == connections * requests_each
        fills = [e for e in origin.access_log(mark) if e["path"] == "/big.bin"]
        assert sum(e["body_bytes_sent"] for e in fills) <= BIG + BLOCK  # one copy at most
        total = connections * requests_each
        counted = {
            k: v for k, v in proxy.metrics().items() if k.startswith("proxyd_requests_total")
        }
        assert sum(v for k, v in counted.items() if 'status="206"' in k) == total
        logged = [e for e in proxy.settled_access_log() if e["target"] == "/o/big.bin"]
        assert len(logged) == total

        # A purge is seen by both processes at once: the next reads are misses.
        cache = ["--cache-dir", str(proxy.cache_dir), "--block-size", "64KiB"]
        purge = proxyd_cli("purge", *cache, "--all")
        assert purge.returncode == 0, purge.stderr
        mark = origin.mark()
        again = [proxy.get("o/big.bin", {"Range": "bytes=0-9"}) for _ in range(4)]
        assert again[0].header("X-Cache") == "MISS"  # whichever process took it
        assert all(r.body == objects["big.bin"][:10] for r in again)
        assert [e for e in origin.access_log(mark) if e["path"] == "/big.bin"]
    for pid in pids:  # stopped with the main process
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
