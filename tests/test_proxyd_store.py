"""The block store on its own: what it verifies, and that it lets go of evicted files."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from proxyd.app import until_eviction_due
from proxyd.policy import freshness
from proxyd.store import BlockFile, BlockStore, ObjectMeta

KiB = 1024
BLOCK = 256 * KiB


def _store(tmp_path: Path, size_limit: int = 64 * BLOCK) -> BlockStore:
    return BlockStore(tmp_path / "cache", size_limit, BLOCK, memory_bytes=0)


def test_a_damaged_block_is_dropped_not_served(tmp_path: Path) -> None:
    store = _store(tmp_path)
    data = os.urandom(BLOCK)
    store.put_block("v", 0, data)
    assert store.read_slice("v", 0, 10, 20) == data[10:20]
    [path] = [p for p in (tmp_path / "cache" / "blocks").rglob("*.val")]
    raw = bytearray(path.read_bytes())
    raw[-5] ^= 0xFF
    path.write_bytes(bytes(raw))
    fresh = _store(tmp_path)  # a restart: nothing is trusted yet
    assert fresh.read_slice("v", 0, 10, 20) is None
    assert fresh.corrupt_blocks == 1
    assert fresh.has_blocks("v", [0]) == set()


def test_hot_reads_keep_files_open_until_eviction(tmp_path: Path) -> None:
    # 24 blocks: diskcache culls ten entries at a time, so eviction leaves some to read.
    count = 24
    store = _store(tmp_path, size_limit=count * BLOCK)
    blocks = {i: os.urandom(BLOCK) for i in range(count)}
    for i, data in blocks.items():
        store.put_block("v", i, data)
        assert store.quick_slice("v", i, 100, 200) == data[100:200]
    opened = store.quick_open("v", 0)
    assert isinstance(opened, BlockFile)
    assert os.pread(opened.fd, 16, opened.offset) == blocks[0][:16]
    opened.release()
    assert len(store._fds) == count
    # Eviction deletes files: the store must not keep them open (their disk space would
    # stay in use), and must not find them by their old paths any more.
    removed = store.evict()
    assert 0 < removed < count  # down to the low watermark, not to nothing
    store.close_stale_files()  # what the proxy's eviction task does next
    assert len(store._fds) == 0
    survivors = store.has_blocks("v", range(count))
    assert len(survivors) == count - removed
    for i in survivors:
        assert store.read_slice("v", i, 0, 16) == blocks[i][:16]
    for i in survivors:
        store.quick_slice("v", i, 0, 16)
    assert len(store._fds) <= len(survivors)
    store.close()


def test_recency_reaches_diskcache_once_a_minute_per_block_and_spares_it(tmp_path: Path) -> None:
    store = _store(tmp_path, size_limit=32 * BLOCK)
    for i in range(20):
        store.put_block("v", i, os.urandom(BLOCK))
    for _ in range(3):
        assert store.quick_slice("v", 0, 0, 8) is not None
    assert store.flush_recency() == 1  # read three times, told once
    assert store.quick_slice("v", 0, 0, 8) is not None
    assert store.flush_recency() == 0  # told less than a minute ago
    for i in range(20, 34):  # over the limit: the least recently used go
        store.put_block("v", i, os.urandom(BLOCK))
    store.evict()
    kept = store.has_blocks("v", range(20))
    assert 0 in kept, kept  # read lately: spared, unlike blocks 1-19 written with it
    assert 1 not in kept, kept
    store.close()


def test_a_change_in_another_process_is_seen_by_the_next_read(tmp_path: Path) -> None:
    store, other = _store(tmp_path), _store(tmp_path)
    stored = freshness.StoredMeta.from_response(
        200, [("Content-Length", "8")], request_time=0.0, response_time=0.0
    )
    store.put_meta(ObjectMeta("k", "http://o/k", stored))
    store.put_block(store.get_meta("k").version(BLOCK), 0, b"12345678")  # type: ignore[union-attr]
    assert store.peek_meta("k") is not None
    assert other.delete_object("k") == 1  # `proxyd purge`, say
    assert store.peek_meta("k") is None  # memory forgotten at once, not in a minute
    assert store.get_meta("k") is None
    store.close()
    other.close()


def test_entries_keyed_by_a_sorted_query_are_dropped_after_the_upgrade(tmp_path: Path) -> None:
    """Before key format 2 the query's parameters were sorted into the key, so an entry for
    ``?b=2&a=1`` may hold the answer to ``?a=1&b=2``: such entries are dropped with their
    blocks when met; entries whose key the sorting could not change are kept."""
    store = _store(tmp_path)
    stored = freshness.StoredMeta.from_response(
        200, [("Content-Length", "8"), ("ETag", '"x"')], request_time=0.0, response_time=0.0
    )
    keys = {
        "http://o/f?a=1&b=2": True,  # several parameters: ambiguous under format 1
        "http://o/f?a=1": False,
        "http://o/g": False,
    }
    for key in keys:
        old = ObjectMeta(key, key, stored, key_format=1)
        store.put_meta(old)
        store.put_block(old.version(BLOCK), 0, b"12345678")
    store.close()
    store = _store(tmp_path)  # a proxyd of the new release on the old cache
    for key, dropped in keys.items():
        meta = store.get_meta(key)
        assert (meta is None) is dropped, key
        version = ObjectMeta(key, key, stored).version(BLOCK)
        assert store.has_blocks(version, [0]) == (set() if dropped else {0}), key
    # What is stored now carries the current format and is kept.
    fresh = ObjectMeta("http://o/f?a=1&b=2", "http://o/f?a=1&b=2", stored)
    store.put_meta(fresh)
    store.close()
    store = _store(tmp_path)
    again = store.get_meta("http://o/f?a=1&b=2")
    assert again is not None
    assert again.key_format == 2
    store.close()


class _NoSQLite:
    """Stands in for the store's diskcache: any use is a failure."""

    def __getattr__(self, name: str) -> object:
        raise AssertionError(f"the event loop's reads used SQLite ({name})")


def test_the_loop_reads_never_touch_sqlite(tmp_path: Path) -> None:
    """store.on_loop is what the event loop calls itself: memory and verified files only.
    A read there that went to SQLite would stall every client of the proxy."""
    store = _store(tmp_path)
    data = os.urandom(BLOCK)
    store.put_block("v", 0, data)
    store.put_block("v", 1, data[::-1])
    assert store.in_thread.read_slice("v", 1, 0, 10) == data[::-1][:10]  # verifies block 1
    store.in_thread.get_meta("absent")
    cache, pinned = store._cache, store._pinned
    store._cache = store._pinned = _NoSQLite()
    try:
        loop = store.on_loop
        assert loop.quick_slice("v", 1, 5, 25) == data[::-1][5:25]
        opened = loop.quick_open("v", 1)
        assert isinstance(opened, BlockFile)
        assert os.pread(opened.fd, 8, opened.offset) == data[::-1][:8]
        opened.release()
        assert loop.known_block("v", 1)
        assert not loop.known_block("v", 7)
        assert loop.memory_block("v", 7) is None
        assert loop.quick_slice("v", 7, 0, 10) is None  # not in hand: ask in a thread
        assert loop.quick_open("v", 7) is None
        assert loop.remembered_meta("absent") is None
        assert loop.peek_meta("other") is None
        loop.close_stale_files()
    finally:
        store._cache, store._pinned = cache, pinned
    store.close()


def test_a_block_is_written_as_its_header_then_its_bytes_one_directory_deep(
    tmp_path: Path,
) -> None:
    import struct

    import xxhash

    store = _store(tmp_path)
    data = os.urandom(BLOCK + 1000 - BLOCK % 1000)  # not a multiple of the 64 KiB sub-block
    store.put_block("v", 0, data)
    [path] = [p for p in (tmp_path / "cache" / "blocks").rglob("*.val")]
    assert path.parent.parent == tmp_path / "cache" / "blocks"  # xx/NAME.val, one level
    raw = path.read_bytes()
    # The format, computed here independently: magic, sub-block size, length, then one
    # XXH3-128 digest per 64 KiB, then the bytes.
    sub = 64 * KiB
    digests = b"".join(
        xxhash.xxh3_128(data[i : i + sub]).digest() for i in range(0, len(data), sub)
    )
    assert raw == struct.pack(">4sII", b"PXB3", sub, len(data)) + digests + data
    fresh = _store(tmp_path)  # read from disk, verified
    assert fresh.read_slice("v", 0, 0, None) == data
    assert fresh.corrupt_blocks == 0


def test_a_block_of_the_older_format_is_fetched_again_not_served(tmp_path: Path) -> None:
    store = _store(tmp_path)
    data = os.urandom(BLOCK)
    store.put_block("v", 0, data)
    [path] = [p for p in (tmp_path / "cache" / "blocks").rglob("*.val")]
    raw = bytearray(path.read_bytes())
    raw[:4] = b"PXB2"  # BLAKE2b digests, before XXH3
    path.write_bytes(bytes(raw))
    fresh = _store(tmp_path)
    assert fresh.read_slice("v", 0, 0, 10) is None
    assert fresh.corrupt_blocks == 1


def test_removing_values_keeps_the_directories(tmp_path: Path) -> None:
    store = _store(tmp_path)
    for i in range(4):
        store.put_block("v", i, os.urandom(BLOCK))
    directories = {p.parent for p in (tmp_path / "cache" / "blocks").rglob("*.val")}
    store.purge()
    assert not list((tmp_path / "cache" / "blocks").rglob("*.val"))
    assert all(d.is_dir() for d in directories)
    data = os.urandom(BLOCK)
    store.put_block("w", 0, data)
    assert _store(tmp_path).read_slice("w", 0, 5, 9) == data[5:9]


def test_writing_the_band_between_the_watermarks_brings_eviction_forward(
    tmp_path: Path,
) -> None:
    store = _store(tmp_path)  # 64 blocks: 5 % between the watermarks, 3.2 blocks
    band = store.high - store.low
    assert 3 * BLOCK < band < 4 * BLOCK
    for i in range(3):
        store.put_block("v", i, os.urandom(BLOCK))
    assert not store.eviction_due()
    store.put_extents("v", [(3 * BLOCK, os.urandom(band - 3 * BLOCK - 1))], 100 * BLOCK)
    assert not store.eviction_due()  # one byte short of the band
    store.put_extents("v", [(5 * BLOCK, b"x")], 100 * BLOCK)
    assert store.eviction_due()  # the band's worth, blocks and extents
    store.evict()
    assert not store.eviction_due()  # counted again from this round


async def test_the_evictor_waits_its_interval_or_until_enough_was_written(
    tmp_path: Path,
) -> None:
    store = _store(tmp_path)
    # Nothing written: the whole interval (20 looks), bounded by the test's own timeout.
    await asyncio.wait_for(until_eviction_due(store, interval=0.02, check=0.001), timeout=10)
    waiting = asyncio.create_task(until_eviction_due(store, interval=3600, check=0.001))
    await asyncio.sleep(0.01)
    assert not waiting.done()
    for i in range(4):
        store.put_block("v", i, os.urandom(BLOCK))
    await asyncio.wait_for(waiting, timeout=10)  # not an hour: the writes made it due
