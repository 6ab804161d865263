"""Run registry work off the event loop: read-only butlers per worker thread, one writer.

SQLite and file hashing block, so every repository call from a request handler runs in a
thread. Each read thread keeps its own read-only connection (WAL readers never block one
another or the writer); writes go through one writeable butler, one commit at a time.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from butler.direct_butler import DirectButler

T = TypeVar("T")


class RepositoryPool:
    def __init__(self, repo: Path, read_workers: int, writeable: bool) -> None:
        self.repo = repo
        self._local = threading.local()
        self._readers: list[DirectButler] = []
        self._readers_lock = threading.Lock()
        self._read_executor = ThreadPoolExecutor(read_workers, thread_name_prefix="butler-read")
        self._write_executor = ThreadPoolExecutor(1, thread_name_prefix="butler-write")
        self.write_lock = threading.Lock()
        self.writer = DirectButler(repo, writeable=True) if writeable else None

    def _reader(self) -> DirectButler:
        butler: DirectButler | None = getattr(self._local, "butler", None)
        if butler is None:
            butler = DirectButler(self.repo)
            self._local.butler = butler
            with self._readers_lock:
                self._readers.append(butler)
        return butler

    async def read(self, work: Callable[[DirectButler], T]) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._read_executor, lambda: work(self._reader()))

    async def write(self, work: Callable[[DirectButler], T]) -> T:
        writer = self.writer
        if writer is None:
            from butler.errors import ReadOnlyRepositoryError

            raise ReadOnlyRepositoryError(
                "this server is read-only (started with --read-only); writes are refused"
            )
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._write_executor, lambda: work(writer))

    async def blocking(self, work: Callable[[], T]) -> T:
        """Other blocking work (file hashing, staging clean-up) on the read threads."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._read_executor, work)

    def close(self) -> None:
        self._read_executor.shutdown(wait=True)
        self._write_executor.shutdown(wait=True)
        with self._readers_lock:
            for butler in self._readers:
                butler.close()
            self._readers.clear()
        if self.writer is not None:
            self.writer.close()
