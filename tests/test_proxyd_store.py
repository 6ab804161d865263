"""The block store on its own: what it verifies, and that it lets go of evicted files."""

from __future__ import annotations

import os
from pathlib import Path

from proxyd.store import BlockFile, BlockStore

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
    store = _store(tmp_path, size_limit=8 * BLOCK)
    blocks = {i: os.urandom(BLOCK) for i in range(8)}
    for i, data in blocks.items():
        store.put_block("v", i, data)
        assert store.quick_slice("v", i, 100, 200) == data[100:200]
    opened = store.quick_open("v", 0)
    assert isinstance(opened, BlockFile)
    assert os.pread(opened.fd, 16, opened.offset) == blocks[0][:16]
    opened.release()
    assert len(store._fds) == 8
    # Eviction deletes files: the store must not keep them open (their disk space would
    # stay in use), and must not find them by their old paths any more.
    assert store.evict() > 0
    store.close_stale_files()  # what the proxy's eviction task does next
    assert len(store._fds) == 0
    survivors = store.has_blocks("v", range(8))
    for i in survivors:
        assert store.read_slice("v", i, 0, 16) == blocks[i][:16]
    for i in survivors:
        store.quick_slice("v", i, 0, 16)
    assert len(store._fds) <= len(survivors)
    store.close()
