"""A run of blocks in flight (:class:`proxyd.inflight.BlockRun`) on its own: what it keeps
in memory when the cache cannot store, and what its readers get. The wire is in
tests/test_hardening_proxyd.py (a 512 MiB object through a cache on a 4 MiB file system)."""

from __future__ import annotations

import pytest

from proxyd.inflight import BlockRun, RunFailedError

BLOCK = 1000


def pattern(start: int, stop: int) -> bytes:
    return bytes(i % 251 for i in range(start, stop))


async def nothing_stored(index: int) -> bytes | None:
    return None


async def read_block(run: BlockRun, index: int) -> bytes:
    return b"".join([chunk async for chunk in run.read(index, 0, BLOCK, nothing_stored)])


async def test_blocks_that_cannot_be_stored_are_kept_only_up_to_the_limit() -> None:
    run = BlockRun("v1", 0, 99, BLOCK, 100 * BLOCK, readahead=3 * BLOCK)
    assert run.held_limit == 2 * 3 * BLOCK + 2 * BLOCK
    completed = []
    for start in range(0, 100 * BLOCK, 700):  # chunks that straddle blocks
        completed += run.feed(pattern(start, min(start + 700, 100 * BLOCK)))
    run.finish()
    # Every block was handed over for storing, whole and exact...
    assert [index for index, _ in completed] == list(range(100))
    assert all(data == pattern(i * BLOCK, (i + 1) * BLOCK) for i, data in completed)
    # ...and, none being stored, only the newest 8 stay in memory for the readers.
    held = [i for i in range(100) if run.holds(i)]
    assert held == list(range(92, 100))
    assert await read_block(run, 99) == pattern(99 * BLOCK, 100 * BLOCK)
    assert await read_block(run, 92) == pattern(92 * BLOCK, 93 * BLOCK)
    with pytest.raises(RunFailedError, match="block 91 vanished"):
        await read_block(run, 91)  # dropped: the reader fetches it again


async def test_stored_blocks_leave_memory_at_once() -> None:
    run = BlockRun("v1", 0, 9, BLOCK, 10 * BLOCK, readahead=0)
    for index, _ in run.feed(pattern(0, 10 * BLOCK)):
        run.mark_stored(index)
    assert not any(run.holds(i) for i in range(10))


async def test_a_reader_keeps_the_block_it_is_reading() -> None:
    run = BlockRun("v1", 0, 9, BLOCK, 10 * BLOCK, readahead=0)
    assert run.held_limit == 2 * BLOCK
    run.feed(pattern(0, BLOCK // 2))
    reading = run.read(0, 0, BLOCK, nothing_stored)
    first = await anext(reading)
    run.feed(pattern(BLOCK // 2, 10 * BLOCK))  # block 0 is dropped from the run meanwhile
    assert not run.holds(0)
    rest = b"".join([chunk async for chunk in reading])
    assert first + rest == pattern(0, BLOCK)
