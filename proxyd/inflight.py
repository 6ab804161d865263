"""Coalesced block fetches: one upstream request per run of missing blocks, many readers.

A :class:`BlockRun` fetches blocks ``first..last`` of one object version with one upstream
range request and writes each block to the store as soon as it is complete. Readers of any
of those blocks — the request that started the run and every concurrent request that needs
the same bytes — subscribe to it and receive bytes *as they arrive*, so N clients asking for
the same cold bytes cost the origin those bytes once, and nobody waits for a whole block.

Only blocks in flight are held in memory; a block is released once stored, and later readers
take it from the store.

Requests that need a run's blocks *claim* it for as long as they run. A run fetches at most
``readahead`` bytes past the furthest point any reader has asked for, then waits for the
readers (backpressure: a slow client slows the upstream transfer instead of letting the proxy
fetch, store or buffer the whole object ahead of it). Once no request claims it, the run
stops: at once if no reader ever reached it, else after ``readahead`` bytes past the furthest
point read, so an abandoned download costs the origin a bounded read-ahead.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

log = logging.getLogger("proxyd.inflight")

ChunkSource = Callable[["BlockRun"], Awaitable[None]]
"""Fills a run: fetches its byte range upstream and calls ``feed`` / ``finish``."""


class RunFailedError(Exception):
    """The upstream fetch of a run failed; readers of its missing bytes fail with it."""


@dataclass
class _Block:
    index: int
    expected: int
    data: bytearray = field(default_factory=bytearray)
    stored: bool = False


class BlockRun:
    """Blocks ``first..last`` of object version ``version`` being fetched."""

    def __init__(
        self,
        version: str,
        first: int,
        last: int,
        block_size: int,
        size: int,
        readahead: int,
    ) -> None:
        self.version = version
        self.first = first
        self.last = last
        self.block_size = block_size
        self.start = first * block_size
        self.end = min(size, (last + 1) * block_size)  # exclusive
        self.size = size
        self.readahead = readahead
        self.received = 0
        """Bytes of the run received so far (from ``start``)."""
        self._blocks: dict[int, _Block] = {}
        """Blocks being received, or received and not stored: made when first fed or read,
        dropped once stored, so that a run over a whole huge object (an origin that ignored
        Range) costs memory for the blocks in flight, not for every block it spans."""
        self.error: BaseException | None = None
        self.finished = False
        self.readers = 0
        """Readers inside :meth:`read` right now."""
        self.claims = 0
        """Requests that will (or may still) read this run's blocks (see :meth:`claim`)."""
        self.reached = False
        """Whether any reader has asked for bytes of this run yet."""
        self.furthest = self.start
        """Furthest byte offset any reader has asked for (drives read-ahead and abandonment)."""
        self.task: asyncio.Task[None] | None = None
        self._changed = asyncio.Event()
        self._progress = asyncio.Event()

    @property
    def blocks(self) -> range:
        """The block indexes of the run."""
        return range(self.first, self.last + 1)

    def _arrived(self, index: int) -> bool:
        """Whether every byte of block ``index`` has been received."""
        end = min(self.size, (index + 1) * self.block_size)
        return self.start + self.received >= end

    def _block(self, index: int) -> _Block | None:
        """Block ``index`` in flight (made on demand), or None once it is stored."""
        if not self.first <= index <= self.last:
            raise KeyError(index)
        block = self._blocks.get(index)
        if block is None and not self._arrived(index):
            expected = min(self.block_size, self.size - index * self.block_size)
            block = self._blocks[index] = _Block(index, expected)
        return block

    # -- producer side --------------------------------------------------------------------

    def feed(self, chunk: bytes) -> list[tuple[int, bytes]]:
        """Add upstream bytes; returns blocks that became complete (to be stored)."""
        completed = []
        offset = 0
        while offset < len(chunk):
            index = (self.start + self.received) // self.block_size
            block = self._block(index) if self.first <= index <= self.last else None
            if block is None:
                raise RunFailedError(
                    f"upstream sent more bytes than the run {self.start}-{self.end}"
                )
            take = min(block.expected - len(block.data), len(chunk) - offset)
            block.data += chunk[offset : offset + take]
            offset += take
            self.received += take
            if len(block.data) == block.expected:
                completed.append((index, bytes(block.data)))
        if completed:
            self._forget_oldest_unstored()
        self._pulse()
        return completed

    def _forget_oldest_unstored(self) -> None:
        """Keep at most :attr:`held_limit` bytes of whole blocks not (yet) stored, dropping
        the oldest first. A cache that cannot store (a full disk) would otherwise keep every
        block of the run until it ends: the whole object in memory. Readers hold on to the
        block they are reading; one that comes back for a dropped block finds it neither
        here nor in the store, and fetches it again (see ``reading.py``)."""
        whole = [i for i, b in self._blocks.items() if len(b.data) == b.expected]
        held = sum(len(self._blocks[i].data) for i in whole)
        for index in sorted(whole):
            if held <= self.held_limit:
                break
            held -= len(self._blocks.pop(index).data)

    @property
    def held_limit(self) -> int:
        """Bytes of whole, unstored blocks a run keeps: the read-ahead on either side of the
        furthest reader, and two blocks (the one being read and the one being stored)."""
        return 2 * self.readahead + 2 * self.block_size

    def mark_stored(self, index: int) -> None:
        block = self._blocks.pop(index, None)
        if block is not None:
            block.stored = True
            block.data = bytearray()  # readers now take it from the store
        self._pulse()

    def finish(self, error: BaseException | None = None) -> None:
        if self.received < self.end - self.start and error is None:
            error = RunFailedError(
                f"upstream ended after {self.received} of {self.end - self.start} bytes"
            )
        self.error = error
        self.finished = True
        self._pulse()

    def claim(self) -> None:
        """A request will read blocks of this run: keep fetching until it releases it."""
        self.claims += 1

    def release(self) -> None:
        self.claims -= 1
        self._nudge()

    def ahead(self) -> bool:
        """The fetch is ``readahead`` bytes past the furthest point any reader asked for."""
        return self.start + self.received >= self.furthest + self.readahead

    def complete(self, index: int) -> bool:
        """Whether all bytes of block ``index`` have arrived (stored, or about to be)."""
        block = self._block(index)
        return block is None or block.stored or len(block.data) == block.expected

    def holds(self, index: int) -> bool:
        """Whether block ``index`` is whole in memory, not stored (the cache could not
        store it): its readers take it from here, even after the fetch has ended."""
        block = self._blocks.get(index) if self.first <= index <= self.last else None
        return block is not None and not block.stored and len(block.data) == block.expected

    def abandoned(self) -> bool:
        """No request wants the run any more, and the read-ahead past the furthest point
        read is spent (or nobody ever read from it): stop."""
        if self.readers or self.claims:
            return False
        return not self.reached or self.ahead()

    async def wait_for_readers(self, limit: float) -> bool:
        """Backpressure for the producer: while ``readahead`` past the readers, wait until a
        reader asks for more or every request has gone (then :meth:`abandoned` is true).

        False if the readers have not moved for ``limit`` seconds: the producer should then
        give up its upstream connection rather than hold it idle (connections per origin
        are capped, and the origin may time it out anyway); readers that get that far
        later fetch the rest again from where the run stopped."""
        try:
            async with asyncio.timeout(limit):
                while self.ahead() and not self.abandoned():
                    await self._progress.wait()
        except TimeoutError:
            return False
        return True

    def _nudge(self) -> None:
        self._progress.set()
        self._progress = asyncio.Event()

    def _pulse(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    # -- reader side ----------------------------------------------------------------------

    async def read(
        self,
        index: int,
        start: int,
        end: int,
        load_stored: Callable[[int], Awaitable[bytes | None]],
    ) -> AsyncIterator[bytes]:
        """Bytes ``start..end`` (exclusive, offsets within block ``index``) as they arrive."""
        block = self._block(index)
        base = index * self.block_size
        position = start
        self.reached = True
        if base + end > self.furthest:
            self.furthest = base + end
            self._nudge()
        while position < end:
            if block is None or block.stored:
                stored = await load_stored(index)
                if stored is None:
                    raise RunFailedError(f"block {index} vanished from the store")
                yield stored[position:end]
                return
            available = min(len(block.data), end)
            if available > position:
                with memoryview(block.data) as view:  # one copy, and the buffer can grow
                    chunk = bytes(view[position:available])
                position = available
                yield chunk
                continue
            if self.finished:
                raise RunFailedError(str(self.error or "upstream fetch ended early"))
            await self._changed.wait()


class InflightRegistry:
    """Which blocks are being fetched right now, so new requests join instead of refetching."""

    def __init__(self) -> None:
        self._by_version: dict[str, list[BlockRun]] = {}
        """Runs in flight per object version, newest last (a run is found by its block
        range, not one entry per block: a run may span millions of blocks)."""
        self.coalesced = 0
        """Reads that joined an existing fetch instead of starting one."""

    def run_for(self, version: str, index: int) -> BlockRun | None:
        for run in reversed(self._by_version.get(version, ())):
            if run.first <= index <= run.last:
                return run
        return None

    def register(self, run: BlockRun) -> None:
        """Make a run's blocks findable (its bytes come from a fetch already under way)."""
        self._by_version.setdefault(run.version, []).append(run)

    def unregister(self, run: BlockRun) -> None:
        runs = self._by_version.get(run.version)
        if runs is not None and run in runs:
            runs.remove(run)
            if not runs:
                del self._by_version[run.version]

    def start(self, run: BlockRun, fill: ChunkSource) -> BlockRun:
        """Register a run and start the task that fills it."""
        self.register(run)

        async def runner() -> None:
            try:
                await fill(run)
                if not run.finished:
                    run.finish()
            except asyncio.CancelledError:
                run.finish(RunFailedError("fetch cancelled"))
                raise
            except Exception as exc:  # noqa: BLE001 - handed to every reader of the run
                log.debug("run %s %d-%d failed: %s", run.version, run.first, run.last, exc)
                run.finish(exc)
            finally:
                self.unregister(run)

        run.task = asyncio.create_task(runner())
        return run

    @contextlib.asynccontextmanager
    async def reading(self, run: BlockRun, joined: bool) -> AsyncIterator[BlockRun]:
        if joined:
            self.coalesced += 1
        run.readers += 1
        try:
            yield run
        finally:
            run.readers -= 1
            run._nudge()

    async def close(self) -> None:
        tasks = {
            run.task for runs in self._by_version.values() for run in runs if run.task is not None
        }
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(BaseException):
                await task
