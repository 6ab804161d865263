"""Content correctness and the cost of misses (issue 4, item 3), against nginx.

Every body is compared byte for byte with the file nginx serves; every cold request's cost is
read off nginx's access log (body bytes it sent, and the Range of each upstream request), and
compared with the blocks the request touches. The proxy uses 64 KiB blocks, runs of at most
256 KiB and a 256 KiB read-ahead, so objects of a few hundred KiB span several blocks and runs.
"""

from __future__ import annotations

import re
import socket
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from nginx import NginxOrigin
from proxies import (
    BLOCK,
    Proxy,
    block_union,
    parse_multipart,
    request,
    running,
    wait_until,
    write_old,
)

SIZE = 10 * BLOCK + 777  # 11 blocks, the last one short
READAHEAD = 256 * 1024
MAX_FETCH = 256 * 1024


@pytest.fixture(scope="module")
def origin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NginxOrigin]:
    base = tmp_path_factory.mktemp("content")
    with NginxOrigin(base / "root", base / "nginx", slow_rate="1m") as nginx:
        yield nginx


@pytest.fixture(scope="module")
def proxy(origin: NginxOrigin, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proxy]:
    config = {"max_fetch_bytes": "256KiB", "readahead_bytes": "256KiB"}
    workdir = tmp_path_factory.mktemp("content-proxy")
    with running(Proxy({"o": origin.url}, workdir, config=config)) as p:
        yield p


def origin_requests(origin: NginxOrigin, mark: int, name: str) -> list[dict[str, Any]]:
    return [e for e in origin.access_log(mark) if e["path"] == f"/{name}"]


def origin_bytes(origin: NginxOrigin, mark: int, name: str) -> int:
    return sum(e["body_bytes_sent"] for e in origin_requests(origin, mark, name))


def test_full_get_is_exact_and_then_a_hit(origin: NginxOrigin, proxy: Proxy) -> None:
    data = write_old(origin.root_dir, "full.bin", SIZE, seed=1)
    logged = proxy.mark()
    first = proxy.get("/o/full.bin")
    mark = origin.mark()
    fills = [e for e in origin.access_log() if e["path"] == "/full.bin"]
    assert first.status == 200
    assert first.body == data
    assert first.header("X-Cache") == "MISS"
    assert first.header("Content-Length") == str(SIZE)
    assert first.header("Accept-Ranges") == "bytes"
    assert (first.header("ETag") or "").startswith('"')
    assert first.header("Last-Modified")
    # The miss cost the origin exactly the object, in one request: the client's, for all
    # of it (issue 22: one upstream request per miss, not runs of max_fetch_bytes).
    ranges = [str(e["range"]) for e in fills]
    assert sum(e["body_bytes_sent"] for e in fills) == SIZE
    assert ranges == [""]
    again = proxy.get("/o/full.bin")
    assert (again.status, again.header("X-Cache"), again.body) == (200, "HIT", data)
    for name in ("ETag", "Last-Modified", "Content-Type", "Content-Length", "Accept-Ranges"):
        assert again.header(name) == first.header(name), name
    assert origin_requests(origin, mark, "full.bin") == []  # fresh: not even a revalidation
    [miss, hit] = proxy.entries_since(logged, 2)
    assert (miss["cache"], miss["bytes_from_origin"], miss["bytes_from_cache"]) == ("MISS", SIZE, 0)
    assert (hit["cache"], hit["bytes_from_origin"], hit["bytes_from_cache"]) == ("HIT", 0, SIZE)


def test_headers_match_the_origin(origin: NginxOrigin, proxy: Proxy) -> None:
    write_old(origin.root_dir, "hdr.bin", 5000, seed=2)
    direct = request(origin.url, "hdr.bin")
    for _ in range(2):  # the miss and the hit
        via = proxy.get("/o/hdr.bin")
        for name in ("ETag", "Last-Modified", "Content-Type", "Content-Length", "Accept-Ranges"):
            assert via.header(name) == direct.header(name), name


SINGLE = [
    # (Range, the bytes it selects: first and last, inclusive)
    ("bytes=0-0", (0, 0)),
    ("bytes=70000-140000", (70000, 140000)),
    ("bytes=65535-65536", (65535, 65536)),  # one byte each side of a block boundary
    ("bytes=-1000", (SIZE - 1000, SIZE - 1)),
    ("bytes=-99999999", (0, SIZE - 1)),  # suffix longer than the object: all of it
    ("bytes=600000-", (600000, SIZE - 1)),
    ("bytes=600000-99999999", (600000, SIZE - 1)),  # end past the object: clipped
    ("bytes=655360-", (655360, SIZE - 1)),  # the short last block alone
]


@pytest.mark.parametrize(("spec", "expected"), SINGLE)
def test_single_ranges_cold_and_warm(
    origin: NginxOrigin, proxy: Proxy, spec: str, expected: tuple[int, int]
) -> None:
    name = "single-" + re.sub(r"\W", "_", spec) + ".bin"
    data = write_old(origin.root_dir, name, SIZE, seed=zlib.crc32(spec.encode()) % 1000)
    start, end = expected
    mark = origin.mark()
    for attempt in ("cold", "warm"):
        response = proxy.get(f"/o/{name}", {"Range": spec})
        assert response.status == 206, attempt
        assert response.header("Content-Range") == f"bytes {start}-{end}/{SIZE}"
        assert response.header("Content-Length") == str(end - start + 1)
        assert response.header("Accept-Ranges") == "bytes"
        assert response.body == data[start : end + 1], attempt
        if attempt == "cold":
            cost = origin_bytes(origin, mark, name)
            # Only the blocks the range touches (plus block 0 for a suffix: the first
            # request, not knowing the size yet, learns it from block 0).
            allowed = block_union([(start, end)], SIZE)
            if spec.startswith("bytes=-"):
                allowed += BLOCK
            assert cost <= allowed, (cost, allowed)
            assert cost >= end - start + 1
            mark = origin.mark()
        else:
            assert response.header("X-Cache") == "HIT"
            assert origin_requests(origin, mark, name) == []


def test_multi_range_is_multipart_and_exact(origin: NginxOrigin, proxy: Proxy) -> None:
    data = write_old(origin.root_dir, "multi.bin", SIZE, seed=4)
    spec = "bytes=0-99,200000-200099,-50,131072-196607"
    wanted = [(0, 99), (200000, 200099), (SIZE - 50, SIZE - 1), (131072, 196607)]
    mark = origin.mark()
    for attempt in ("cold", "warm"):
        response = proxy.get("/o/multi.bin", {"Range": spec})
        assert response.status == 206
        assert response.header("Content-Range") is None
        assert response.header("Content-Length") == str(len(response.body))
        parts = parse_multipart(response.header("Content-Type") or "", response.body)
        assert [p[0] for p in parts] == [f"bytes {s}-{e}/{SIZE}" for s, e in wanted]
        assert [p[1] for p in parts] == [data[s : e + 1] for s, e in wanted]
        if attempt == "cold":
            # At least the (disjoint) ranges asked for, at most the blocks they touch.
            asked = sum(e - s + 1 for s, e in wanted)
            assert asked <= origin_bytes(origin, mark, "multi.bin") <= block_union(wanted, SIZE)
            mark = origin.mark()
        else:
            assert response.header("X-Cache") == "HIT"
            assert origin_requests(origin, mark, "multi.bin") == []


def test_unsatisfiable_range_is_416_with_the_size(origin: NginxOrigin, proxy: Proxy) -> None:
    data = write_old(origin.root_dir, "416.bin", SIZE, seed=5)
    for attempt in ("cold", "warm", "after a full read"):
        if attempt == "after a full read":
            assert proxy.get("/o/416.bin").body == data
        for spec in (f"bytes={SIZE}-", "bytes=99999999-", f"bytes={SIZE}-{SIZE + 10}"):
            response = proxy.get("/o/416.bin", {"Range": spec})
            assert response.status == 416, (attempt, spec)
            assert response.header("Content-Range") == f"bytes */{SIZE}"
            assert data[:64] not in response.body
            assert len(response.body) < 1000


def test_if_range(origin: NginxOrigin, proxy: Proxy) -> None:
    data = write_old(origin.root_dir, "ifrange.bin", SIZE, seed=6)
    full = proxy.get("/o/ifrange.bin")
    etag, last_modified = full.header("ETag"), full.header("Last-Modified")
    assert etag
    assert last_modified
    cases = [
        (etag, 206),  # the current version: the range
        ('"something-else"', 200),  # another version: the whole object
        (last_modified, 206),  # a date equal to Last-Modified (a strong validator here)
        ("Mon, 01 Jan 2001 00:00:00 GMT", 200),
    ]
    for if_range, status in cases:
        response = proxy.get("/o/ifrange.bin", {"Range": "bytes=1000-1999", "If-Range": if_range})
        assert response.status == status, if_range
        assert response.body == (data[1000:2000] if status == 206 else data)


def test_head_is_answered_from_metadata(origin: NginxOrigin, proxy: Proxy) -> None:
    write_old(origin.root_dir, "head.bin", SIZE, seed=7)
    mark = origin.mark()
    first = proxy.get("/o/head.bin", method="HEAD")
    assert first.status == 200
    assert first.body == b""
    assert first.header("Content-Length") == str(SIZE)
    assert first.header("Accept-Ranges") == "bytes"
    etag = first.header("ETag") or ""
    assert etag.startswith('"')
    # Learning the size and validators cost the origin at most one block, not the object.
    assert origin_bytes(origin, mark, "head.bin") <= BLOCK
    mark = origin.mark()
    second = proxy.get("/o/head.bin", method="HEAD")
    assert (second.status, second.header("X-Cache")) == (200, "HIT")
    assert second.header("Content-Length") == str(SIZE)
    assert second.header("ETag") == etag
    # Range is defined for GET only: a HEAD ignores it (RFC 9110 §14.2).
    ranged = proxy.get("/o/head.bin", {"Range": "bytes=0-9"}, method="HEAD")
    assert ranged.status == 200
    assert ranged.header("Content-Length") == str(SIZE)
    assert origin_requests(origin, mark, "head.bin") == []  # no origin request at all


def test_conditional_requests_answered_from_cache(origin: NginxOrigin, proxy: Proxy) -> None:
    write_old(origin.root_dir, "cond.bin", 3000, seed=8)
    full = proxy.get("/o/cond.bin")
    mark = origin.mark()
    etag, last_modified = full.header("ETag") or "", full.header("Last-Modified") or ""
    for headers in ({"If-None-Match": etag}, {"If-Modified-Since": last_modified}):
        response = proxy.get("/o/cond.bin", headers)
        assert response.status == 304, headers
        assert response.body == b""
        assert response.header("ETag") == etag
    changed = proxy.get("/o/cond.bin", {"If-None-Match": '"other"'})
    assert changed.status == 200
    assert changed.body == full.body
    assert origin_requests(origin, mark, "cond.bin") == []


def test_empty_object(origin: NginxOrigin, proxy: Proxy) -> None:
    write_old(origin.root_dir, "empty.bin", 0)
    for _ in range(2):
        response = proxy.get("/o/empty.bin")
        assert (response.status, response.body) == (200, b"")
        assert response.header("Content-Length") == "0"
    response = proxy.get("/o/empty.bin", {"Range": "bytes=0-"})
    assert response.status == 416
    assert response.header("Content-Range") == "bytes */0"
    response = proxy.get("/o/empty.bin", {"Range": "bytes=-5"})
    assert (response.status, response.body) == (200, b"")


# -- misses fetch only what is missing --------------------------------------------------------


def test_a_partial_hit_fetches_only_the_missing_blocks(origin: NginxOrigin, proxy: Proxy) -> None:
    data = write_old(origin.root_dir, "partial.bin", SIZE, seed=9)
    warmed = proxy.get("/o/partial.bin", {"Range": f"bytes={2 * BLOCK}-{5 * BLOCK - 1}"})
    assert warmed.status == 206
    assert warmed.body == data[2 * BLOCK : 5 * BLOCK]
    mark = origin.mark()
    logged = proxy.mark()
    full = proxy.get("/o/partial.bin")
    assert full.status == 200
    assert full.header("X-Cache") == "PARTIAL"
    assert full.body == data
    requests = origin_requests(origin, mark, "partial.bin")
    assert sum(e["body_bytes_sent"] for e in requests) == SIZE - 3 * BLOCK
    fetched = []
    for entry in requests:
        match = re.fullmatch(r"bytes=(\d+)-(\d+)", str(entry["range"]))
        assert match, entry
        fetched.append((int(match[1]), int(match[2])))
        # None of the upstream requests asks for a block the cache already had.
        assert int(match[2]) < 2 * BLOCK or int(match[1]) >= 5 * BLOCK, entry
    assert fetched[0] == (0, 2 * BLOCK - 1)  # one request per contiguous missing run
    [entry] = proxy.entries_since(logged, 1)
    assert entry["cache"] == "PARTIAL"
    assert entry["bytes_from_cache"] == 3 * BLOCK
    assert entry["bytes_from_origin"] == SIZE - 3 * BLOCK
    assert proxy.get("/o/partial.bin").header("X-Cache") == "HIT"


def test_an_abandoned_download_stops_the_upstream_fetch(
    origin: NginxOrigin, tmp_path: Path
) -> None:
    """/slow/ sends 1 MiB/s: a client that reads 512 KiB of an 8 MiB object and hangs up
    costs the origin what was sent to it plus the 256 KiB read-ahead, not the 8 MiB.

    The proxy fetches the object with one upstream request (runs of up to 64 MiB, the
    default), so what bounds the cost is the read-ahead, not the size of a run.
    """
    size = 8 << 20
    data = write_old(origin.root_dir, "abandon.bin", size, seed=10)
    config = {"readahead_bytes": "256KiB"}
    with running(Proxy({"o": origin.url}, tmp_path / "p", config=config)) as proxy:
        mark = origin.mark()
        wanted = 512 * 1024
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=20) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
            sock.sendall(b"GET /o/slow/abandon.bin HTTP/1.1\r\nHost: proxy\r\n\r\n")
            received = b""
            while len(received) < wanted:
                chunk = sock.recv(65536)
                assert chunk
                received += chunk
        head, _, body = received.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200")
        assert body == data[: len(body)]
        # nginx logs the upstream request once the proxy has closed it; at 1 MiB/s the
        # whole object would take 8 s, longer than this wait.
        [entry] = wait_until(
            lambda: origin_requests(origin, mark, "slow/abandon.bin"), timeout=6, what="fetch end"
        )
        assert entry["range"] == ""  # the client's request for the whole object (issue 22)
        assert entry["completion"] != "OK"  # cut short by the proxy
        sent_by_origin = entry["body_bytes_sent"]
        assert sent_by_origin < size
        [logged] = proxy.entries_since(0, 1)
        assert logged["status"] == 499  # the client went away
        sent_to_client = logged["bytes_from_origin"] + logged["bytes_from_cache"]
        assert len(body) <= sent_to_client
        # The proxy read from the upstream only the block being sent and the read-ahead
        # past it ...
        read_by_proxy = proxy.metric_sum("proxyd_bytes_from_origin_total")
        assert read_by_proxy <= sent_to_client + BLOCK + READAHEAD, (read_by_proxy, sent_to_client)
        # ... and then closed the connection: the origin sent that plus what was in transit
        # (socket buffers; nginx's limit_rate sends up to a second's worth ahead, 1 MiB).
        assert read_by_proxy <= sent_by_origin <= read_by_proxy + (1 << 20)
        assert sent_by_origin <= sent_to_client + READAHEAD + 2 * BLOCK + (1 << 20)
        # What was fetched is cached: reading it again costs the origin nothing.
        mark = origin.mark()
        again = proxy.get("/o/slow/abandon.bin", {"Range": f"bytes=0-{len(body) - 1}"})
        assert again.status == 206
        assert again.body == body
        assert again.header("X-Cache") == "HIT"
        assert origin_requests(origin, mark, "slow/abandon.bin") == []
