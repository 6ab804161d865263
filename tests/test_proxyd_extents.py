"""Sparse reads cost the origin what they ask for (issue 17, item 1).

A small range (a FITS header) or a scattered multi-range request (a cutout's rows) is
fetched exactly and kept as byte-exact extents, not as whole blocks: counted here at the
origin (nginx's access log, butler serve's access log), byte for byte. Also: the span
arithmetic on its own, the store's extents (merged, promoted to a block once whole,
damaged ones never served), identical cold fetches shared, and extents surviving SIGKILL.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import random
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest
from aiohttp import web
from conftest import populate_dimensions
from nginx import NginxOrigin
from proxies import Proxy, parse_multipart, running, write_old
from servers import served, served_app

from butler import Box, Butler, Image
from proxyd.policy.extents import (
    GAP,
    UPSTREAM_RANGES,
    Extent,
    block_bytes,
    blocks_touched,
    exact_first_fetch,
    fetch_requests,
    is_whole_blocks,
    merged,
    missing,
    prefers_extents,
    split_at_blocks,
)
from proxyd.store import BlockStore

KiB, MiB = 1 << 10, 1 << 20
SIZE = 4 * MiB


# -- the arithmetic -----------------------------------------------------------------------------


def _as_set(extents: list[Extent]) -> set[int]:
    return {i for e in extents for i in range(e.start, e.stop)}


def test_missing_is_what_is_wanted_and_not_held() -> None:
    assert missing([Extent(0, 10), Extent(20, 30)], [Extent(5, 25)]) == [
        Extent(0, 5),
        Extent(25, 30),
    ]
    assert missing([Extent(0, 10)], [Extent(0, 3), Extent(3, 10)]) == []
    assert missing([Extent(0, 10)], []) == [Extent(0, 10)]
    rng = random.Random(17)
    for _ in range(300):
        wanted = merged(Extent(a, a + rng.randint(1, 40)) for a in rng.sample(range(400), 6))
        have = [Extent(a, a + rng.randint(1, 60)) for a in rng.sample(range(400), 5)]
        holes = missing(wanted, have)
        assert _as_set(holes) == _as_set(wanted) - _as_set(have)
        assert holes == merged(holes)  # sorted, disjoint, nothing adjacent left unjoined


def test_extents_split_at_blocks_and_join_into_few_requests() -> None:
    assert split_at_blocks(Extent(100, 300), 128) == [
        Extent(100, 128),
        Extent(128, 256),
        Extent(256, 300),
    ]
    assert merged([Extent(0, 10), Extent(10, 20), Extent(30, 40)]) == [
        Extent(0, 20),
        Extent(30, 40),
    ]
    # Holes closer than GAP are one range; far ones stay apart; UPSTREAM_RANGES per request.
    near = [Extent(0, 10), Extent(10 + GAP - 1, 20 + GAP)]
    assert fetch_requests(near, 10_000) == [[Extent(0, 20 + GAP)]]
    far = [Extent(i * 10 * GAP, i * 10 * GAP + 7) for i in range(UPSTREAM_RANGES + 6)]
    plans = fetch_requests(far, 10**9)
    assert [len(p) for p in plans] == [UPSTREAM_RANGES, 6]
    assert [e for p in plans for e in p] == far
    # Never past the end of the object.
    assert fetch_requests([Extent(90, 200)], 100) == [[Extent(90, 100)]]


def test_which_first_fetches_are_exact_and_which_requests_take_extents() -> None:
    assert exact_first_fetch(0, 2879, MiB) == Extent(0, 2880)
    assert exact_first_fetch(0, None, MiB) is None  # open-ended: blocks
    assert exact_first_fetch(0, MiB // 4, MiB) is None  # a quarter block and one byte
    assert exact_first_fetch(MiB + 5, MiB + 5 + MiB // 4 - 1, MiB) == Extent(
        MiB + 5, MiB + 5 + MiB // 4
    )
    assert prefers_extents(2880, MiB)
    assert not prefers_extents(600 * KiB, MiB)  # a block costs less than twice the bytes
    assert not prefers_extents(0, MiB)


def test_the_limits_docs_proxy_architecture_states() -> None:
    """2× the bytes asked, 8 MiB per response, 64 ranges per request, a 512-byte gap,
    a quarter block: the figures of docs/proxy-architecture.md, at their edges."""
    eight = 8 * MiB
    assert prefers_extents(eight, 10 * eight)
    assert not prefers_extents(eight + 1, 10 * eight)  # assembled in memory: bounded
    assert prefers_extents(1, 3)
    assert prefers_extents(1000, 2001)  # more than twice the bytes asked
    assert not prefers_extents(1000, 2000)  # exactly twice: the blocks are fetched
    joined = [Extent(0, 10), Extent(10 + 512, 20 + 512)]  # 512 bytes apart: one range
    assert fetch_requests(joined, 10_000) == [[Extent(0, 20 + 512)]]
    apart = [Extent(0, 10), Extent(10 + 513, 20 + 513)]
    assert fetch_requests(apart, 10_000) == [apart]
    holes = [Extent(i * 10_000, i * 10_000 + 7) for i in range(70)]
    assert [len(p) for p in fetch_requests(holes, 10**9)] == [64, 6]
    # Nothing at or past the end of the object is asked for.
    assert fetch_requests([Extent(100, 200)], 100) == []
    assert exact_first_fetch(5, 5, MiB) == Extent(5, 6)  # one byte
    assert exact_first_fetch(6, 5, MiB) is None


def test_extents_are_never_empty_and_blocks_are_counted_exactly() -> None:
    for start, stop in ((5, 5), (5, 4), (-1, 5)):
        with pytest.raises(ValueError, match="invalid extent"):
            Extent(start, stop)
    for size in (0, -1):
        with pytest.raises(ValueError, match="block size must be positive"):
            split_at_blocks(Extent(0, 3), size)
    assert split_at_blocks(Extent(0, 3), 1) == [Extent(0, 1), Extent(1, 2), Extent(2, 3)]
    assert blocks_touched([Extent(0, 1024)], 1024) == [0]  # stop is excluded
    assert blocks_touched([Extent(1000, 1025)], 1024) == [0, 1]
    assert blocks_touched([Extent(1023, 1024), Extent(2048, 2049)], 1024) == [0, 2]
    assert block_bytes([0, 1, 2], 2500, 1024) == 1024 + 1024 + 452  # the last is short
    assert block_bytes([3], 2500, 1024) == 0  # past the end
    assert block_bytes([], 2500, 1024) == 0
    size = 5000
    assert is_whole_blocks(Extent(0, 1024), size, 1024)
    assert is_whole_blocks(Extent(1024, 3072), size, 1024)
    assert is_whole_blocks(Extent(4096, 5000), size, 1024)  # the last block, to the end
    assert not is_whole_blocks(Extent(4096, 4999), size, 1024)
    assert not is_whole_blocks(Extent(1, 1024), size, 1024)
    assert not is_whole_blocks(Extent(1024, 2047), size, 1024)


# -- the store ----------------------------------------------------------------------------------

BLOCK = 256 * KiB


def _store(tmp_path: Path) -> BlockStore:
    return BlockStore(tmp_path / "cache", 64 * BLOCK, BLOCK, memory_bytes=0)


def _joined(pieces: list[tuple[Extent, bytes]]) -> dict[int, int]:
    return {e.start + i: b for e, data in pieces for i, b in enumerate(data)}


def test_extents_merge_read_back_and_become_a_block(tmp_path: Path) -> None:
    store = _store(tmp_path)
    data = os.urandom(2 * BLOCK)
    size = len(data)
    store.put_extents("v", [(10, data[10:20])], size)
    store.put_extents("v", [(20, data[20:40]), (BLOCK - 5, data[BLOCK - 5 : BLOCK + 5])], size)
    # Adjacent pieces are one extent; a piece across a block boundary is cut there.
    assert store.extents_of("v", 0) == [Extent(10, 40), Extent(BLOCK - 5, BLOCK)]
    assert store.extents_of("v", 1) == [Extent(BLOCK, BLOCK + 5)]
    assert store.extents_of("other", 0) == []  # versions never meet
    assert store.read_extents("other", [Extent(0, 100)]) == []
    got = store.read_extents("v", [Extent(0, 30), Extent(35, BLOCK + 100)])
    expected = {i: data[i] for i in [*range(10, 30), *range(35, 40), *range(BLOCK - 5, BLOCK + 5)]}
    assert _joined(got) == expected
    # The rest of block 0 arrives: the block is stored whole, its extents are gone.
    store.put_extents("v", [(0, data[:10]), (40, data[40 : BLOCK - 5])], size)
    assert store.has_blocks("v", [0, 1]) == {0}
    assert store.extents_of("v", 0) == []
    assert store.read_slice("v", 0, 0, None) == data[:BLOCK]
    store.close()
    # Everything above is on disk: a restart finds it.
    again = _store(tmp_path)
    assert again.extents_of("v", 1) == [Extent(BLOCK, BLOCK + 5)]
    assert _joined(again.read_extents("v", [Extent(BLOCK, BLOCK + 5)])) == {
        BLOCK + i: data[BLOCK + i] for i in range(5)
    }
    again.close()


def test_a_damaged_extent_is_dropped_not_served(tmp_path: Path) -> None:
    store = _store(tmp_path)
    data = os.urandom(BLOCK)
    piece = Extent(1000, 1000 + 100 * KiB)  # large enough for a file of its own
    store.put_extents("v", [(piece.start, data[piece.start : piece.stop])], BLOCK)
    [path] = list((tmp_path / "cache" / "blocks").rglob("*.val"))
    raw = bytearray(path.read_bytes())
    raw[-7] ^= 0x01
    path.write_bytes(bytes(raw))
    store.close()
    fresh = _store(tmp_path)
    assert fresh.read_extents("v", [piece]) == []
    assert fresh.corrupt_blocks == 1
    assert fresh.extents_of("v", 0) == []  # no longer listed: fetched again next time
    fresh.close()


# -- through proxyd, counted at an nginx origin ---------------------------------------------------


@pytest.fixture
def origin(tmp_path: Path) -> Iterator[NginxOrigin]:
    with NginxOrigin(tmp_path / "root", tmp_path / "nginx") as nginx:
        yield nginx


def _rows(count: int, length: int, stride: int, first: int = 100_000) -> list[tuple[int, int]]:
    """A cutout's rows: ``count`` inclusive ranges of ``length`` bytes, ``stride`` apart."""
    return [(first + i * stride, first + i * stride + length - 1) for i in range(count)]


def _range_field(rows: list[tuple[int, int]]) -> str:
    return "bytes=" + ",".join(f"{a}-{b}" for a, b in rows)


def _check_parts(response: Any, rows: list[tuple[int, int]], data: bytes) -> None:
    assert response.status == 206
    parts = parse_multipart(response.header("Content-Type"), response.body)
    assert [p[1] for p in parts] == [data[a : b + 1] for a, b in rows]


def test_small_and_scattered_ranges_cost_the_origin_what_they_ask(
    origin: NginxOrigin, tmp_path: Path
) -> None:
    data = write_old(origin.root_dir, "image.fits", SIZE, seed=3)
    with running(Proxy({"o": origin.url}, tmp_path / "proxy", block_size="1MiB")) as proxy:
        mark = origin.mark()
        header = proxy.get("/o/image.fits", {"Range": "bytes=0-2879"})
        assert header.status == 206
        assert header.body == data[:2880]
        assert header.header("X-Cache") == "MISS"
        log = origin.access_log(mark)
        assert [(e["range"], e["body_bytes_sent"]) for e in log] == [("bytes=0-2879", 2880)]

        rows = _rows(100, 800, 16_384)  # 100 rows of 800 bytes over 1.6 MB (two blocks)
        mark = origin.mark()
        _check_parts(proxy.get("/o/image.fits", {"Range": _range_field(rows)}), rows, data)
        log = origin.access_log(mark)
        asked = 100 * 800
        fetched = sum(e["body_bytes_sent"] for e in log)
        # Two requests (64 ranges, then 36), the bytes asked for plus multipart headers.
        assert len(log) == 2
        assert asked < fetched < asked + 100 * 200
        assert all(e["status"] == 206 for e in log)

        # Again: all from the cache.
        mark = origin.mark()
        again = proxy.get("/o/image.fits", {"Range": _range_field(rows)})
        _check_parts(again, rows, data)
        assert again.header("X-Cache") == "HIT"
        assert proxy.get("/o/image.fits", {"Range": "bytes=100-2000"}).body == data[100:2001]
        assert origin.access_log(mark) == []

        # A later long read fetches whole blocks, only the bytes that were not there...
        mark = origin.mark()
        whole = proxy.get("/o/image.fits")
        assert whole.status == 200
        assert whole.body == data
        assert sum(e["body_bytes_sent"] for e in origin.access_log(mark)) <= SIZE
        # ...and the extents are then no longer needed: still served exactly.
        mark = origin.mark()
        _check_parts(proxy.get("/o/image.fits", {"Range": _range_field(rows)}), rows, data)
        assert origin.access_log(mark) == []


def test_identical_cold_extent_fetches_are_shared(origin: NginxOrigin, tmp_path: Path) -> None:
    data = write_old(origin.root_dir, "cube.fits", SIZE, seed=4)
    rows = _rows(40, 500, 50_000)
    with running(Proxy({"o": origin.url}, tmp_path / "proxy", block_size="1MiB")) as proxy:
        assert proxy.get("/o/cube.fits", {"Range": "bytes=0-99"}).body == data[:100]
        mark = origin.mark()

        async def clients() -> list[tuple[int, bytes, str]]:
            timeout = aiohttp.ClientTimeout(total=30)
            async with aiohttp.ClientSession(timeout=timeout) as session:

                async def one() -> tuple[int, bytes, str]:
                    headers = {"Range": _range_field(rows)}
                    async with session.get(proxy.url + "o/cube.fits", headers=headers) as r:
                        return r.status, await r.read(), r.headers["Content-Type"]

                return await asyncio.gather(*(one() for _ in range(8)))

        answers = asyncio.run(clients())
        for status, body, content_type in answers:
            assert status == 206
            parts = parse_multipart(content_type, body)
            assert [p[1] for p in parts] == [data[a : b + 1] for a, b in rows]
        log = origin.access_log(mark)
        # One upstream request for the 40 ranges, whatever the number of clients.
        assert len(log) == 1, [e["range"] for e in log]
        assert log[0]["range"] == _range_field(rows)


def test_extents_survive_sigkill_and_stay_exact(origin: NginxOrigin, tmp_path: Path) -> None:
    data = write_old(origin.root_dir, "table.fits", SIZE, seed=5)
    rows = _rows(30, 1000, 70_000, first=7)
    cache = tmp_path / "cache"
    first = Proxy({"o": origin.url}, tmp_path / "p1", block_size="1MiB", cache_dir=cache)
    with running(first):
        assert first.get("/o/table.fits", {"Range": "bytes=0-5"}).body == data[:6]
        _check_parts(first.get("/o/table.fits", {"Range": _range_field(rows)}), rows, data)
        first.kill()  # SIGKILL: no shutdown
    second = Proxy({"o": origin.url}, tmp_path / "p2", block_size="1MiB", cache_dir=cache)
    with running(second):
        mark = origin.mark()
        _check_parts(second.get("/o/table.fits", {"Range": _range_field(rows)}), rows, data)
        assert second.get("/o/table.fits", {"Range": "bytes=0-5"}).body == data[:6]
        assert origin.access_log(mark) == []  # every answered extent had been stored


# -- the case: butler serve's access log -----------------------------------------------


def test_image_metadata_and_cutouts_through_proxyd_cost_what_they_cost_directly(
    tmp_path: Path,
) -> None:
    root = tmp_path / "repo"
    rng = np.random.default_rng(11)
    side = 1024
    with Butler.create(root) as butler:
        populate_dimensions(butler)
        butler.register_dataset_type("calexp", ["visit", "detector"], "Image")
    with Butler(root, run="run1") as butler:
        image = Image(
            rng.standard_normal((side, side), dtype=np.float32),
            variance=rng.random((side, side), dtype=np.float32),
            mask=(rng.random((side, side)) < 0.01).astype(np.int32),
        )
        butler.put(image, "calexp", {"instrument": "HSC"}, visit=100, detector=0)
    ids = {"instrument": "HSC", "visit": 100, "detector": 0}
    box = Box(300, 400, 100, 100)

    def reads(url: str, cache: Path) -> dict[str, Any]:
        with Butler(url, collections="run1", cache_dir=cache) as butler:
            meta = butler.get("calexp.metadata", **ids)
            cut = butler.get("calexp", **ids, parameters={"bbox": box})
        return {"meta": meta, "cut": cut}

    with served(root, tmp_path / "server") as server:
        mark = server.mark()
        direct = reads(server.url, tmp_path / "c1")
        direct_bytes = server.file_bytes_sent(mark)
        proxy = Proxy({"repo": server.url}, tmp_path / "proxy", block_size="1MiB")
        with running(proxy):
            costs = []
            for n in range(2):  # cold, then warm
                mark = server.mark()
                via = reads(proxy.upstream_url("repo"), tmp_path / f"c{n + 2}")
                costs.append(server.file_bytes_sent(mark))
                assert dict(via["meta"]) == dict(direct["meta"])
                for plane in ("data", "variance", "mask"):
                    np.testing.assert_array_equal(
                        getattr(via["cut"], plane), getattr(direct["cut"], plane)
                    )
    # Before extents, the first block alone (1 MiB) was 2,500 times the metadata and 7
    # times the cutout; now the proxy costs the server what the reads cost it directly.
    assert 0 < costs[0] <= 2 * direct_bytes
    assert costs[1] == 0


# -- partial answers of the origin's own, objects without validators --------------------------


class ScriptedOrigin:
    """An origin whose first answer to a range request is shorter than asked (RFC 9110
    §14.2 lets it send less), then honest; ``validators`` False: no ETag/Last-Modified."""

    def __init__(self, data: bytes, *, validators: bool, short: int | None) -> None:
        self.data = data
        self.validators = validators
        self.short = short
        self.requests: list[dict[str, str]] = []

    async def handle(self, request: web.Request) -> web.Response:
        fields = {k.lower(): v for k, v in request.headers.items()}
        self.requests.append(fields)
        headers = {"Cache-Control": "max-age=3600", "Accept-Ranges": "bytes"}
        if self.validators:
            headers["ETag"] = '"v1"'
            if fields.get("if-match", '"v1"') != '"v1"':
                return web.Response(status=412, headers=headers)
        size = len(self.data)
        value = fields.get("range")
        if value is None or "," in value:
            return web.Response(body=self.data, headers=headers)
        first, _, last = value.removeprefix("bytes=").partition("-")
        start = int(first) if first else size - int(last)
        end = min(size - 1, int(last)) if first and last else size - 1
        if self.short is not None:
            end, self.short = min(end, start + self.short - 1), None
        headers["Content-Range"] = f"bytes {start}-{end}/{size}"
        return web.Response(status=206, body=self.data[start : end + 1], headers=headers)


@contextlib.contextmanager
def scripted(origin: ScriptedOrigin) -> Iterator[str]:
    """Serve ``origin`` on 127.0.0.1 in a thread of its own; yields its URL."""
    loop = asyncio.new_event_loop()
    started: concurrent.futures.Future[str] = concurrent.futures.Future()
    stop = asyncio.Event()

    async def main() -> None:
        app = web.Application()
        app.router.add_get("/{name}", origin.handle)
        async with served_app(app) as url:
            started.set_result(url)
            await stop.wait()

    thread = threading.Thread(target=loop.run_until_complete, args=(main(),), daemon=True)
    thread.start()
    try:
        yield started.result(timeout=10)
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(10)
        loop.close()


def test_a_shorter_partial_answer_is_stored_and_completed_with_the_rest(tmp_path: Path) -> None:
    data = os.urandom(300_000)
    origin = ScriptedOrigin(data, validators=True, short=1000)
    with (
        scripted(origin) as url,
        running(Proxy({"o": url}, tmp_path / "proxy", block_size="1MiB")) as proxy,
    ):
        first = proxy.get("/o/cube.fits", {"Range": "bytes=-5"})
        # The origin sent bytes 0-999 for the block asked: passed on as it came (its
        # Content-Range says what it holds), one origin request.
        assert first.status == 206
        assert first.header("Content-Range") == f"bytes 0-999/{len(data)}"
        assert first.body == data[:1000]
        assert len(origin.requests) == 1
        whole = proxy.get("/o/cube.fits")
        assert whole.status == 200
        assert whole.body == data
        # Completed with the rest only, open-ended, on the condition of the same version.
        assert [r.get("range") for r in origin.requests] == ["bytes=0-1048575", "bytes=1000-"]
        assert origin.requests[1]["if-match"] == '"v1"'
        again = proxy.get("/o/cube.fits", {"Range": "bytes=-5"})
        assert again.body == data[-5:]
        assert again.header("X-Cache") == "HIT"
        assert len(origin.requests) == 2


def test_without_a_validator_pieces_are_never_combined(tmp_path: Path) -> None:
    data = os.urandom(300_000)
    origin = ScriptedOrigin(data, validators=False, short=None)
    with (
        scripted(origin) as url,
        running(Proxy({"o": url}, tmp_path / "proxy", block_size="1MiB")) as proxy,
    ):
        small = proxy.get("/o/plain.bin", {"Range": "bytes=100-199"})
        assert small.status == 206
        assert small.body == data[100:200]
        assert small.header("X-Cache") == "PASS"  # relayed: a later piece could be newer
        again = proxy.get("/o/plain.bin", {"Range": "bytes=100-199"})
        assert again.body == data[100:200]
        assert again.header("X-Cache") == "PASS"  # nothing was kept of it
        # Whole, from one fetch, it is cached: then any range is answered from it.
        assert proxy.get("/o/plain.bin").body == data
        rows = [(1000, 1099), (200_000, 200_099)]
        scattered = proxy.get("/o/plain.bin", {"Range": _range_field(rows)})
        _check_parts(scattered, rows, data)
        assert scattered.header("X-Cache") == "HIT"
        assert [r.get("range") for r in origin.requests] == ["bytes=100-199"] * 2 + [None]
