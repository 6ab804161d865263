"""Moving dataset files to the mirror: resumable, verified, bounded.

N workers drain a queue (bandersnatch's shape), each bringing one file at a time to
``<dest>/.mirror-partial/<uuid>.part`` through a fetcher: :class:`mirror.http.HttpFetcher`
for a server or proxy (resume by Range + If-Range, retries), :class:`LocalFetcher` for a
local repository. Bytes are hashed as they are written and a file is handed on only when
its SHA-256 equals the registry's. This module holds what both fetchers share.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
import sqlite3
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, Self

from butler.remote.limits import is_disk_full
from mirror.plan import Item

PARTIAL_DIR = ".mirror-partial"
CHUNK = 1 << 20


class TransferError(Exception):
    """A file could not be fetched intact (after retries where they made sense)."""


@dataclass
class TransferSettings:
    jobs: int = 8
    attempts: int = 5
    backoff: float = 0.5
    max_backoff: float = 30.0
    connect_timeout: float = 15.0
    read_timeout: float = 120.0


def partial_path(dest: Path, item: Item) -> Path:
    return dest / PARTIAL_DIR / f"{item.ref.id}.part"


def partial_sizes(dest: Path) -> dict[str, int]:
    directory = dest / PARTIAL_DIR
    if not directory.is_dir():
        return {}
    return {p.stem: p.stat().st_size for p in directory.glob("*.part")}


def _hash_existing(path: Path) -> hashlib._Hash:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest


async def resume_point(target: Path, size: int) -> tuple[int, hashlib._Hash]:
    """Bytes already downloaded (and their running hash); a too-long file starts over.

    Only a partial file left by an interrupted pull is read again (in a thread); the usual
    case, no partial file, costs one stat on the event loop.
    """
    try:
        have = target.stat().st_size  # noqa: ASYNC240 - a stat is cheaper than a thread hop
    except FileNotFoundError:
        return 0, hashlib.sha256()
    if have > size:
        target.unlink()  # noqa: ASYNC240 - rare (the source file shrank)
        return 0, hashlib.sha256()
    if have == 0:
        return 0, hashlib.sha256()
    return have, await asyncio.to_thread(_hash_existing, target)


def complete(target: Path, size: int, on_disk: int, digest: hashlib._Hash, checksum: str) -> bool:
    """Whether the download is whole and intact (``on_disk`` bytes were written, hashed to
    ``digest``); a bad one is deleted, to be fetched anew."""
    if on_disk == size and "sha256:" + digest.hexdigest() == checksum:
        return True
    target.unlink(missing_ok=True)
    return False


def disk_failure(error: OSError | sqlite3.Error) -> str:
    """Why a file failed when the destination itself failed (a full disk, an I/O error)."""
    return f"could not write it to disk: {error}"


@dataclass
class Halt:
    """Set when the destination is full: no further transfer starts (each would fail the
    same way, after its bytes were fetched for nothing)."""

    error: BaseException | None = None

    def disk_full(self, error: BaseException) -> None:
        if self.error is None:
            self.error = error


Progress = Callable[[int], None]
"""Called with the number of new bytes as they arrive (negative: bytes to discount)."""


@dataclass
class BundleResult:
    """What one request for several files settled: files brought complete and verified,
    and files that failed for good; the others are fetched one by one."""

    done: list[Item] = field(default_factory=list)
    failed: list[tuple[Item, str]] = field(default_factory=list)
    disk_full: OSError | None = None
    """Set when a failure was the destination running out of room."""


class LocalFetcher:
    """Copies files from a local source repository (no network), verifying them."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.requests = 0

    async def __aenter__(self) -> LocalFetcher:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None

    def bundles(self, items: Sequence[Item], dest: Path) -> list[list[Item]]:
        return [[item] for item in items]  # a local copy has no per-request cost to save

    async def fetch_bundle(
        self, items: list[Item], targets: list[Path], progress: Progress
    ) -> BundleResult:
        return BundleResult()

    async def fetch(self, item: Item, target: Path, progress: Progress) -> None:
        source = self.root / item.file.path

        def copy() -> str:
            # One pass: each block is hashed as it is copied.
            digest = hashlib.sha256()
            with open(source, "rb") as src, open(target, "wb") as dst:
                while block := src.read(CHUNK):
                    digest.update(block)
                    dst.write(block)
            return "sha256:" + digest.hexdigest()

        checksum = await asyncio.to_thread(copy)
        if checksum != item.file.checksum:
            await asyncio.to_thread(target.unlink, missing_ok=True)
            raise TransferError(f"{source} does not match its recorded checksum")
        progress(item.file.size)


class Fetcher(Protocol):
    """Brings one item's file to ``target``, complete and verified, or raises
    :class:`TransferError` (or ``OSError`` for the destination's own failures).

    Not synced: the commit that records a batch of files makes them durable first, with one
    flush of the file system for the batch (see :mod:`butler.datastore`). A sync per file
    cost the bench 2,000 device flushes, ~6 ms each on its virtual disk.
    """

    requests: int

    async def __aenter__(self) -> Self: ...

    async def __aexit__(self, *exc: object) -> None: ...

    async def fetch(self, item: Item, target: Path, progress: Progress) -> None: ...

    def bundles(self, items: Sequence[Item], dest: Path) -> list[list[Item]]:
        """``items`` in groups: a group of several is asked for with :meth:`fetch_bundle`."""
        ...

    async def fetch_bundle(
        self, items: list[Item], targets: list[Path], progress: Progress
    ) -> BundleResult:
        """Several files in one request, as far as it goes (see :class:`BundleResult`)."""
        ...


async def run_transfers(
    fetcher: Fetcher,
    items: list[Item],
    dest: Path,
    jobs: int,
    progress: Progress,
    on_done: Callable[[Item, Path], Awaitable[None]],
    on_failed: Callable[[Item, str], None],
    halt: Halt | None = None,
) -> None:
    """Fetch ``items`` with ``jobs`` workers; hand each verified file to ``on_done``.

    When the destination is full (a write failed so), ``halt`` is told and the workers
    start nothing more: the files not started are neither fetched nor reported as failed.
    """
    halt = halt or Halt()
    (dest / PARTIAL_DIR).mkdir(parents=True, exist_ok=True)
    queue: asyncio.Queue[list[Item]] = asyncio.Queue()
    for group in fetcher.bundles(items, dest):
        queue.put_nowait(group)

    async def fetch_one(item: Item) -> None:
        target = partial_path(dest, item)
        try:
            await fetcher.fetch(item, target, progress)
        except TransferError as exc:
            on_failed(item, str(exc))
            return
        except OSError as exc:  # the destination's own failure (a full disk, an I/O error)
            on_failed(item, disk_failure(exc))
            if is_disk_full(exc):
                halt.disk_full(exc)
            return
        await on_done(item, target)

    async def worker() -> None:
        while halt.error is None:
            try:
                group = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            rest = group
            if len(group) > 1:
                targets = [partial_path(dest, item) for item in group]
                result = await fetcher.fetch_bundle(group, targets, progress)
                for item in result.done:
                    await on_done(item, partial_path(dest, item))
                for item, reason in result.failed:
                    on_failed(item, reason)
                if result.disk_full is not None:
                    halt.disk_full(result.disk_full)
                settled = {i.ref.id for i in result.done} | {i.ref.id for i, _ in result.failed}
                rest = [item for item in group if item.ref.id not in settled]
            for item in rest:
                if halt.error is not None:
                    return
                await fetch_one(item)

    await asyncio.gather(*(worker() for _ in range(max(1, min(jobs, queue.qsize())))))


def free_bytes(path: Path) -> int:
    probe = path
    while not probe.exists():
        probe = probe.parent
    return shutil.disk_usage(probe).free


def remove_partial_dir(dest: Path) -> None:
    directory = dest / PARTIAL_DIR
    if directory.is_dir() and not any(directory.iterdir()):
        os.rmdir(directory)
