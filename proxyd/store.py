"""The block store: object metadata and fixed-size content blocks on disk (diskcache).

Layout, in one diskcache directory (evictable) and one beside it for pinned content:

* ``meta:<cache key>`` -> :class:`ObjectMeta` as JSON (size, validators, stored headers,
  freshness facts, and the *version* that names its blocks);
* ``block:<version>:<n>`` -> a block: a small header (magic, sub-block size, length and a
  BLAKE2b digest of every 64 KiB sub-block) followed by the block's bytes.

A version is a digest of (cache key, ETag or Last-Modified, size): when the origin's object
changes, new blocks live under a new version, so no response can ever mix bytes of two
versions. Bytes are verified before they are served: a block is hashed whole when first read, then
its file is trusted for ``VERIFIED_SECONDS``, so that hot objects are sent straight from the
file (sendfile) and hot small ranges read with one system call, without hashing every byte
on every read. A torn or damaged block (a crash mid-write, a bad
disk) is dropped and fetched again, never served.

Everything here blocks (SQLite, file I/O): callers run it in a worker thread, except what
the event loop calls itself: the ``memory_*``/``remembered_*``/``known_block`` lookups (only
dictionaries), and ``quick_slice``/``quick_open``/``close_stale_files``, which touch only
block files verified lately and already found, through descriptors kept open by the loop
(a read that would wait for the disk is refused, and then done in a thread).
"""

from __future__ import annotations

import contextlib
import copy
import functools
import hashlib
import json
import math
import os
import resource
import sqlite3
import struct
import tempfile
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Protocol

import diskcache
import xxhash
from diskcache.core import MODE_BINARY, MODE_RAW, UNKNOWN

from proxyd.changes import ChangeMarker
from proxyd.policy.extents import Extent, merged, split_at_blocks
from proxyd.policy.freshness import StoredMeta

if TYPE_CHECKING:
    from proxyd.settings import ProxySettings

DIGEST_SIZE = 16
SUB_BLOCK = 64 * 1024
"""Bytes covered by one digest: the most a small range has to read and hash."""
MAGIC = b"PXB3"
"""The format of a stored value; blocks of an older format (PXB2: BLAKE2b digests) are
treated as damaged and fetched again."""
_HEAD = struct.Struct(">4sII")  # magic, sub-block size, data length
META_MEMORY_SECONDS = 60.0
"""How long metadata read from disk is reused from memory. Changes made by other processes
(``proxyd purge``, ``proxyd pin``) are noticed at once through the marker file, so this only
bounds how long metadata is trusted without that signal."""
MISSING_META_SECONDS = 0.5
"""How long "not cached" is remembered."""
RECENCY_BATCH = 256
"""Blocks whose access time one SQLite transaction updates (short, so fills wait little)."""
RECENCY_SECONDS = 60.0
"""How often at most diskcache is told that a block is still being read."""
MAX_OPEN_FILES = 4096
"""Block files kept open for hot reads (at most a quarter of the descriptor limit)."""
VERIFIED_SECONDS = 600.0
"""How long a block hashed in full is trusted without hashing it again. Blocks are never
rewritten in place (diskcache writes a new file per value), so only a crash mid-write or
the disk itself can damage one: the first read after a restart verifies every block."""


class StoreWriteError(Exception):
    """The cache could not store something: its file system is full or read-only, or the
    disk failed. The caller serves the bytes in hand all the same (the cache is only a
    copy) and reports the cache as degraded."""


def check_writable(directory: Path) -> None:
    """Raise :class:`StoreWriteError` unless ``directory`` (made if missing) takes a new
    file: checked before the proxy listens, so that a read-only or full cache directory is
    a clear message at start-up, not a traceback after "listening" and 500s later."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=directory, prefix=".write-check-") as probe:
            probe.write(b"proxyd")
            probe.flush()
            os.fsync(probe.fileno())
    except OSError as exc:
        raise StoreWriteError(
            f"the cache directory {directory} is not writable ({exc.strerror or exc})"
        ) from None


SETTINGS_RECORD = "proxyd-settings.json"
"""What the proxy that last opened a cache directory ran with (``proxyd stats`` shows it:
the command's own settings are defaults and flags, not the running proxy's)."""


def is_cache_directory(directory: Path) -> bool:
    """Whether a proxy has set up ``directory`` (its evictable store's database is there)."""
    return (Path(directory) / "blocks" / "cache.db").is_file()


def record_settings(directory: Path, record: dict[str, Any]) -> None:
    """Write ``record`` as the settings in force (atomically: a reader sees the old or the new
    one whole). Only informative, so a failure to write it stops nothing."""
    target = Path(directory) / SETTINGS_RECORD
    try:
        fd, temp = tempfile.mkstemp(dir=target.parent, prefix=".settings-", suffix=".tmp")
        with os.fdopen(fd, "w") as out:
            json.dump(record, out, indent=2)
        os.replace(temp, target)
    except OSError:
        return


def settings_record(settings: ProxySettings) -> dict[str, Any]:
    """The facts about a running proxy that ``proxyd stats`` shows beside the cache's."""
    from proxyd.settings import describe

    return {
        "pid": os.getpid(),
        "started": time.time(),
        "listen": settings.listen,
        "cache_size": settings.cache_size,
        "block_size": settings.block_size,
        "upstreams": dict(settings.upstreams),
        "description": describe(settings),
    }


def recorded_settings(directory: Path) -> dict[str, Any] | None:
    """The record of :func:`record_settings`, or None (none written, or unreadable)."""
    try:
        data = json.loads((Path(directory) / SETTINGS_RECORD).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _digest(data: bytes | memoryview) -> bytes:
    # XXH3-128 detects torn and damaged values as well as a cryptographic digest would (the
    # cache directory is the proxy's own: nobody forges its files) at 30x the speed of
    # BLAKE2b, which cost a cold read 1.7 ms of CPU per MiB.
    return xxhash.xxh3_128_digest(data)


class EncodedBlock:
    """A block (or extent) as stored: a header with per-sub-block digests, then the data.
    Kept as two buffers, written one after the other, never joined in memory."""

    __slots__ = ("data", "header", "path")

    def __init__(self, data: bytes | bytearray) -> None:
        view = memoryview(data)
        digests = b"".join(_digest(view[i : i + SUB_BLOCK]) for i in range(0, len(data), SUB_BLOCK))
        self.header = BlockHeader(SUB_BLOCK, len(data), digests)
        self.data = data
        self.path: str | None = None
        """The file it was written to (set by :class:`BlockDisk`; None if kept in SQLite)."""

    def __len__(self) -> int:
        return self.header.size + len(self.data)

    def joined(self) -> bytes:
        return self.header.encoded() + self.data


class BlockDisk(diskcache.Disk):  # type: ignore[misc]
    """diskcache's file layer, writing an :class:`EncodedBlock` with two writes. The stock
    layer writes bytes through ``io.BytesIO``'s line iterator: thousands of small writes
    per MiB of binary data, the largest cost of a cold fill."""

    def __init__(self, directory: str, **settings: Any) -> None:
        super().__init__(directory, **settings)
        for n in range(256):  # made once, here, rather than on the way of the first fills
            os.makedirs(os.path.join(directory, f"{n:02x}"), exist_ok=True)

    def filename(self, key: Any = UNKNOWN, value: Any = UNKNOWN) -> tuple[str, str]:
        # One level of 256 directories, kept once made. The stock layout (65,536 directories
        # in two levels, each removed when emptied) makes a directory or two for almost
        # every block of a new cache, and creating one costs more than writing the block.
        name = os.urandom(16).hex()
        filename = os.path.join(name[:2], name[2:] + ".val")
        return filename, os.path.join(self._directory, filename)

    def remove(self, file_path: str) -> None:
        # As diskcache's, without removing the directory when it becomes empty.
        with contextlib.suppress(OSError):
            os.remove(os.path.join(self._directory, file_path))

    def store(self, value: Any, read: bool, key: Any = UNKNOWN) -> tuple[int, int, Any, Any]:
        if not isinstance(value, EncodedBlock):
            return super().store(value, read, key=key)  # type: ignore[no-any-return]
        if len(value) < self.min_file_size:
            return 0, MODE_RAW, None, sqlite3.Binary(value.joined())
        filename, full_path = self.filename(key, value)
        directory = os.path.dirname(full_path)
        for attempt in range(10):
            try:
                file = open(full_path, "xb")  # noqa: SIM115 - closed below
            except FileNotFoundError:
                # A new directory, or another process's eviction removed it meanwhile.
                if attempt == 9:
                    raise
                os.makedirs(directory, exist_ok=True)
                continue
            break
        with file:
            file.write(value.header.encoded())
            file.write(value.data)
        value.path = full_path
        return len(value), MODE_BINARY, filename, None


def decode_verified(raw: bytes) -> bytes | None:
    """The data of a value written as an :class:`EncodedBlock` if every digest matches, else
    None (torn, damaged or of another format)."""
    header = BlockHeader.parse(raw[: BlockHeader.room(len(raw))], len(raw))
    if header is None:
        return None
    view = memoryview(raw)[header.size :]
    step = header.sub_block
    for n, offset in enumerate(range(0, header.length, step)):
        if _digest(view[offset : offset + step]) != header.digest(n):
            return None
    return bytes(view)


@dataclass(frozen=True)
class BlockHeader:
    """The parsed header of a stored block."""

    sub_block: int
    length: int
    digests: bytes

    @property
    def size(self) -> int:
        """Bytes of header before the data."""
        return _HEAD.size + len(self.digests)

    def digest(self, sub: int) -> bytes:
        return self.digests[sub * DIGEST_SIZE : (sub + 1) * DIGEST_SIZE]

    @classmethod
    def parse(cls, prefix: bytes, total_size: int) -> BlockHeader | None:
        """The header at the start of a stored block of ``total_size`` bytes, or None when
        it is not one (torn, damaged, or an older format)."""
        if len(prefix) < _HEAD.size:
            return None
        magic, sub_block, length = _HEAD.unpack_from(prefix)
        if magic != MAGIC or sub_block <= 0:
            return None
        count = (length + sub_block - 1) // sub_block
        end = _HEAD.size + count * DIGEST_SIZE
        if len(prefix) < end or total_size != end + length:
            return None
        return cls(sub_block, length, bytes(prefix[_HEAD.size : end]))

    def encoded(self) -> bytes:
        return _HEAD.pack(MAGIC, self.sub_block, self.length) + self.digests

    @staticmethod
    def room(block_size: int) -> int:
        """Bytes to read to be sure of having the whole header of a block this size."""
        return _HEAD.size + (block_size // SUB_BLOCK + 1) * DIGEST_SIZE


@dataclass
class BlockFile:
    """A verified block on disk, for sending straight from the file: its data are the
    ``length`` bytes from ``offset`` in the open descriptor ``fd``. Whoever sends it calls
    ``release`` once done (the descriptor may be shared: never close it directly)."""

    fd: int
    offset: int
    length: int
    release: Callable[[], None]

    def part(self, start: int, stop: int) -> BlockFile:
        """Bytes ``start:stop`` of the block (the same descriptor and release)."""
        return BlockFile(self.fd, self.offset + start, min(stop, self.length) - start, self.release)


#: How cache keys are made (:func:`proxyd.policy.keys.cache_key`), stored with each object's
#: metadata. 1: query parameters sorted; 2: kept in the order sent (order names different
#: resources for many origins: ``collections=`` is a search path). An entry of an older format
#: whose key has several query parameters may have been filled by a request in another order,
#: so it is dropped when met (:meth:`BlockStore.get_meta`); other entries mean the same.
KEY_FORMAT = 2


def key_format_ambiguous(key: str) -> bool:
    """Whether a format-1 key may name another resource under format 2: its query has more
    than one parameter (sorting changed nothing for zero or one)."""
    query = key.partition("?")[2]
    return "&" in query


@functools.lru_cache(maxsize=4096)
def object_version(key: str, validator: str, size: int | None, block_size: int) -> str:
    """Names the blocks of one version of one object (at one block size)."""
    raw = f"{key}\x00{validator}\x00{size}\x00{block_size}".encode()
    return hashlib.sha256(raw).hexdigest()[:24]


@dataclass
class ObjectMeta:
    """What the cache knows of one upstream object (one cache key): the policy's
    :class:`~proxyd.policy.freshness.StoredMeta` (headers, times, size, whether clients need
    the origin's authorisation) plus where it came from and whether it is pinned."""

    key: str
    url: str
    stored: StoredMeta
    pinned: bool = False
    key_format: int = KEY_FORMAT

    @property
    def size(self) -> int | None:
        return self.stored.size

    @property
    def etag(self) -> str | None:
        return self.stored.etag

    @property
    def last_modified(self) -> str | None:
        return self.stored.last_modified

    @property
    def validator(self) -> str:
        return self.stored.validator or ""

    def version(self, block_size: int) -> str:
        return object_version(self.key, self.validator, self.size, block_size)

    def block_count(self, block_size: int) -> int:
        if self.size is None:
            return 0
        return (self.size + block_size - 1) // block_size

    def to_json(self) -> str:
        data = {
            "key": self.key,
            "url": self.url,
            "pinned": self.pinned,
            "stored": self.stored.to_json(),
            "key_format": self.key_format,
        }
        return json.dumps(data, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> ObjectMeta:
        data = json.loads(text)
        return cls(
            data["key"],
            data["url"],
            StoredMeta.from_json(data["stored"]),
            bool(data.get("pinned")),
            int(data.get("key_format", 1)),
        )


@dataclass
class StoreStats:
    volume: int
    pinned_volume: int
    objects: int
    blocks: int
    evictions: int
    corrupt_blocks: int


class LoopReads(Protocol):
    """The store's reads for the event loop's thread: memory, and block files verified
    lately through descriptors the loop keeps open (a read that would wait for the disk is
    refused). None (or False) means "not in hand": ask :class:`ThreadReads` in a worker."""

    def remembered_meta(self, key: str) -> ObjectMeta | None: ...

    def peek_meta(self, key: str) -> ObjectMeta | None: ...

    def known_block(self, version: str, index: int) -> bool: ...

    def memory_block(self, version: str, index: int) -> bytes | None: ...

    def quick_slice(self, version: str, index: int, start: int, stop: int) -> bytes | None: ...

    def quick_open(self, version: str, index: int) -> BlockFile | None: ...

    def close_stale_files(self) -> None: ...


class ThreadReads(Protocol):
    """The store's reads for a worker thread (SQLite, file reads, hashing: they block)."""

    def get_meta(self, key: str, *, reload: bool = False) -> ObjectMeta | None: ...

    def has_blocks(self, version: str, indexes: range | list[int]) -> set[int]: ...

    def get_block(self, version: str, index: int) -> bytes | None: ...

    def read_slice(
        self, version: str, index: int, start: int, stop: int | None
    ) -> bytes | None: ...

    def open_block(self, version: str, index: int) -> BlockFile | bytes | None: ...

    def warm_block(self, version: str, index: int) -> bool: ...

    def read_extents(self, version: str, wanted: list[Extent]) -> list[tuple[Extent, bytes]]: ...

    def block_prefix(self, version: str, index: int) -> bytes: ...


class BlockStore:
    """Metadata, blocks and extents of cached objects, with LRU eviction between
    watermarks. Readers go through :attr:`on_loop` on the event loop and :attr:`in_thread`
    in worker threads: which reads may run where is in the type."""

    def __init__(
        self,
        directory: Path,
        size_limit: int,
        block_size: int,
        low_watermark: float = 0.9,
        high_watermark: float = 0.95,
        memory_bytes: int = 32 * 2**20,
    ) -> None:
        self.directory = Path(directory)
        self.block_size = block_size
        self.size_limit = size_limit
        self.low = int(size_limit * low_watermark)
        self.high = int(size_limit * high_watermark)
        # cull_limit=0: writes never pay for eviction; evict() does it between watermarks.
        # disk_min_file_size: blocks go to files of their own, metadata stays in SQLite.
        self._cache = diskcache.Cache(
            str(self.directory / "blocks"),
            size_limit=self.low,
            cull_limit=0,
            eviction_policy="least-recently-used",
            disk=BlockDisk,
            disk_min_file_size=64 * 1024,
            statistics=False,
        )
        self._pinned = diskcache.Cache(
            str(self.directory / "pinned"),
            eviction_policy="none",
            disk=BlockDisk,
            disk_min_file_size=64 * 1024,
        )
        self._lock = threading.Lock()
        self.evictions = 0
        self._written = 0
        """Bytes stored since the last eviction round began (see :meth:`eviction_due`)."""
        self.corrupt_blocks = 0
        # Hot blocks stay in memory once verified: a small range of a hot object then costs
        # neither a disk read nor hashing a whole block. Bounded in bytes, LRU.
        self.memory_limit = memory_bytes
        self._memory: OrderedDict[str, bytes] = OrderedDict()
        self._memory_bytes = 0
        self._meta_memory: dict[str, tuple[float, ObjectMeta | None]] = {}
        # Where blocks' files are and their headers, so that a hot block is read without
        # asking SQLite; blocks hashed in full lately; blocks read that way since the last
        # flush_recency() (diskcache does not see those reads).
        self._located: dict[str, tuple[str, BlockHeader]] = {}
        self._verified: dict[str, float] = {}
        self._touched: set[str] = set()
        self._recency_told: dict[str, float] = {}
        """When flush_recency() last told diskcache about a block (flushes run one at a
        time, in a worker thread)."""
        self._changes = ChangeMarker(self.directory / "purged")
        soft_limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        if soft_limit == resource.RLIM_INFINITY:
            soft_limit = 4 * MAX_OPEN_FILES
        self.max_open_files = max(16, min(MAX_OPEN_FILES, soft_limit // 4))
        self._fds: OrderedDict[str, list[int]] = OrderedDict()
        self._fds_stale = False
        """Path -> [open descriptor, users] of block files (event loop only)."""

    @property
    def on_loop(self) -> LoopReads:
        """The reads the event loop may make itself."""
        return self

    @property
    def in_thread(self) -> ThreadReads:
        """The reads that block: for a worker thread (``await state.blocking(...)``)."""
        return self

    def close(self) -> None:
        while self._fds:
            os.close(self._fds.popitem()[1][0])
        self._cache.close()
        self._pinned.close()
        self._changes.close()

    # -- metadata -------------------------------------------------------------------------

    def get_meta(self, key: str, *, reload: bool = False) -> ObjectMeta | None:
        """An object's metadata: from memory if read lately (unless ``reload``), else from
        disk, and then remembered."""
        now = time.monotonic()
        self._notice_changes()
        with self._lock:
            cached = self._meta_memory.get(key)
        if not reload and cached is not None and now - cached[0] < META_MEMORY_SECONDS:
            return None if cached[1] is None else copy.copy(cached[1])
        meta = None
        for cache in (self._pinned, self._cache):
            text = cache.get(f"meta:{key}")
            if text is not None:
                meta = ObjectMeta.from_json(text)
                break
        if meta is not None and meta.key_format < KEY_FORMAT and key_format_ambiguous(key):
            self._delete(key, meta)  # filled under a key that ignored the query's order
            meta = None
        self._remember_meta(key, meta)
        return None if meta is None else copy.copy(meta)

    def remembered_meta(self, key: str) -> ObjectMeta | None:
        """Metadata held in memory and still fresh, else None (no SQLite, no waiting)."""
        meta = self.peek_meta(key)
        return None if meta is None else copy.copy(meta)

    def peek_meta(self, key: str) -> ObjectMeta | None:
        """:meth:`remembered_meta` without the copy, for callers that only read it (the
        fast lane, once per request): the object is shared, never to be modified."""
        now = time.monotonic()
        self._notice_changes()
        cached = self._meta_memory.get(key)
        if cached is None or now - cached[0] >= META_MEMORY_SECONDS:
            return None
        return cached[1]

    def _notice_changes(self) -> None:
        """Forget what is held in memory if another process has deleted or moved stored
        things since (``proxyd purge``, ``pin``, eviction; for a worker, the main process's
        invalidations): looked at on every read of metadata, so that a change takes effect
        at once in every running proxy (:mod:`proxyd.changes`)."""
        if self._changes.changed():
            self._forget_memory()

    def _forget_memory(self) -> None:
        with self._lock:
            self._memory.clear()
            self._memory_bytes = 0
            self._meta_memory.clear()
            self._located.clear()
            self._verified.clear()
            self._fds_stale = True

    def _mark_change(self) -> None:
        self._changes.mark()

    def _remember_meta(self, key: str, meta: ObjectMeta | None) -> None:
        stamp = time.monotonic()
        if meta is None:
            # An object not cached is remembered briefly: another process (the main one,
            # filling it for a worker) may store it at any moment.
            stamp -= META_MEMORY_SECONDS - MISSING_META_SECONDS
        with self._lock:
            if len(self._meta_memory) > 100_000:
                self._meta_memory.clear()
            self._meta_memory[key] = (stamp, meta)

    def put_meta(self, meta: ObjectMeta) -> None:
        """Store an object's metadata (:class:`StoreWriteError` if the cache cannot)."""
        target = self._pinned if meta.pinned else self._cache
        try:
            target.set(f"meta:{meta.key}", meta.to_json())
        except (OSError, sqlite3.Error) as exc:
            raise self._write_error(exc) from None
        self._remember_meta(meta.key, copy.copy(meta))

    def _write_error(self, exc: BaseException) -> StoreWriteError:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        return StoreWriteError(f"cannot write to the cache in {self.directory}: {reason}")

    def delete_object(self, key: str) -> int:
        """Forget an object and every block of its current version; returns blocks removed."""
        return self._delete(key, self.get_meta(key))

    def _delete(self, key: str, meta: ObjectMeta | None) -> int:
        removed = 0
        with self._lock:
            self._meta_memory.pop(key, None)
            if meta is not None:
                prefix = f"block:{meta.version(self.block_size)}:"
                for block_key in [k for k in self._memory if k.startswith(prefix)]:
                    self._memory_bytes -= len(self._memory.pop(block_key))
                for block_key in [k for k in self._located if k.startswith(prefix)]:
                    self._verified.pop(self._located.pop(block_key)[0], None)
                self._fds_stale = True
        for cache in (self._pinned, self._cache):
            cache.delete(f"meta:{key}")
            if meta is not None:
                version = meta.version(self.block_size)
                for index in range(max(1, meta.block_count(self.block_size))):
                    removed += bool(cache.delete(f"block:{version}:{index}"))
                    if cache is self._cache:
                        self._drop_extents(version, index)
        self._mark_change()
        return removed

    # -- blocks ---------------------------------------------------------------------------

    def memory_block(self, version: str, index: int) -> bytes | None:
        """A block already verified and held in memory, or None (never touches the disk)."""
        block_key = f"block:{version}:{index}"
        with self._lock:
            data = self._memory.get(block_key)
            if data is not None:
                self._memory.move_to_end(block_key)
            return data

    def _remember_block(self, block_key: str, data: bytes) -> None:
        if len(data) > self.memory_limit // 4:
            return
        with self._lock:
            old = self._memory.pop(block_key, None)
            if old is not None:
                self._memory_bytes -= len(old)
            self._memory[block_key] = data
            self._memory_bytes += len(data)
            while self._memory_bytes > self.memory_limit and self._memory:
                _, dropped = self._memory.popitem(last=False)
                self._memory_bytes -= len(dropped)

    def get_block(self, version: str, index: int) -> bytes | None:
        """A whole verified block, or None (missing, or damaged and now dropped)."""
        in_memory = self.memory_block(version, index)
        if in_memory is not None:
            return in_memory
        data = self.read_slice(version, index, 0, None)
        if data is not None:
            self._remember_block(f"block:{version}:{index}", data)
        return data

    def read_slice(self, version: str, index: int, start: int, stop: int | None) -> bytes | None:
        """Bytes ``start:stop`` of a block (``stop`` None: to its end), verified; None if the
        block is missing or damaged (then dropped). A block not verified lately is read and
        hashed whole, once: later small reads of it are then served by :meth:`quick_slice`
        without a worker thread."""
        block_key = f"block:{version}:{index}"
        in_memory = self.memory_block(version, index)
        if in_memory is not None:
            return in_memory[start:stop]
        for _ in range(2):  # a remembered location may have been evicted meanwhile
            found = self._open(block_key)
            if found is None:
                return None
            source, header, path = found
            try:
                end = header.length if stop is None else min(stop, header.length)
                if start >= end:
                    return b""
                trusted = self._verified_recently(path)
                lo, hi = (start, end) if trusted else (0, header.length)
                if isinstance(source, bytes):
                    chunk = source[header.size + lo : header.size + hi]
                else:
                    chunk = os.pread(source.fileno(), hi - lo, header.size + lo)
            except FileNotFoundError:
                self._forget_location(block_key)
                continue
            finally:
                if not isinstance(source, bytes):
                    source.close()
            if not trusted and not self._verify(block_key, path, header, chunk):
                return None
            return chunk[start - lo : end - lo]
        return None

    def warm_block(self, version: str, index: int) -> bool:
        """Make :meth:`quick_slice` able to answer from a block (in a worker thread): its
        file is verified and remembered, or a small block kept in SQLite is held in memory.
        False if the block is missing or damaged."""
        if self.read_slice(version, index, 0, 1) is None:
            return False
        if self._trusted_location(f"block:{version}:{index}") is None:  # no file of its own
            return self.get_block(version, index) is not None
        return True

    def quick_slice(self, version: str, index: int, start: int, stop: int) -> bytes | None:
        """Bytes ``start:stop`` of a block held in memory, or verified in full lately and in
        the page cache; else None (then use :meth:`read_slice` in a worker thread).

        For the event loop: no SQLite, no hashing, and a read that cannot wait for the disk
        (``RWF_NOWAIT``), on a descriptor kept open. A hot small range thus costs one
        system call instead of a hop to a worker thread -- and the hop is what makes a busy
        proxy slow (the loop waits for the GIL behind the workers). Call it only from the
        event loop's thread: the descriptors are its own.
        """
        in_memory = self.memory_block(version, index)
        if in_memory is not None:
            return in_memory[start:stop]
        block_key = f"block:{version}:{index}"
        trusted = self._trusted_location(block_key)
        if trusted is None or stop > trusted[1].length:
            return None
        path, header = trusted
        fd = self._acquire_fd(path)
        if fd is None:
            return None
        buffer = bytearray(stop - start)
        try:
            got = os.preadv(fd, [buffer], header.size + start, os.RWF_NOWAIT)
        except OSError:  # not in the page cache (EAGAIN), unsupported...
            return None
        finally:
            self._release_fd(path)
        if got != len(buffer):
            return None
        self._touched.add(block_key)
        return bytes(buffer)

    def quick_open(self, version: str, index: int) -> BlockFile | None:
        """A block file verified lately, opened without SQLite or hashing; None otherwise
        (then use :meth:`open_block` in a worker thread). For the event loop: the file was
        opened moments ago, so opening it again costs a cached lookup, not a disk wait --
        and a download of a hot object then never stalls between blocks on a thread hop."""
        block_key = f"block:{version}:{index}"
        trusted = self._trusted_location(block_key)
        if trusted is None:
            return None
        path, header = trusted
        fd = self._acquire_fd(path)
        if fd is None:
            return None
        self._touched.add(block_key)
        return BlockFile(fd, header.size, header.length, lambda: self._release_fd(path))

    def _trusted_location(self, block_key: str) -> tuple[str, BlockHeader] | None:
        """The file and header of a block found and verified lately, else None."""
        located = self._located.get(block_key)
        if located is None or not self._verified_recently(located[0]):
            return None
        return located

    def _acquire_fd(self, path: str) -> int | None:
        """A descriptor of a block file, kept open across requests (event loop only): a
        hot download then opens and closes nothing per block. Counted, so that one in use
        by a sending thread is never closed (its number could be reused for another file).
        """
        self.close_stale_files()
        entry = self._fds.get(path)
        if entry is None:
            try:
                entry = [os.open(path, os.O_RDONLY | os.O_CLOEXEC), 0]
            except OSError:
                return None
            self._fds[path] = entry
            if len(self._fds) > self.max_open_files:
                idle = [p for p, (_, users) in self._fds.items() if users == 0]
                for old in idle[: len(self._fds) - self.max_open_files]:
                    os.close(self._fds.pop(old)[0])
        else:
            self._fds.move_to_end(path)
        entry[1] += 1
        return entry[0]

    def close_stale_files(self) -> None:
        """After an eviction or purge, close the block files kept open (event loop only):
        an open descriptor would keep a deleted file's disk space in use. Those being sent
        from are closed when the next eviction or purge comes."""
        if not self._fds_stale:
            return
        self._fds_stale = False
        for old in [p for p, (_, users) in self._fds.items() if users == 0]:
            os.close(self._fds.pop(old)[0])

    def _release_fd(self, path: str) -> None:
        entry = self._fds.get(path)
        if entry is not None:
            entry[1] -= 1

    def open_block(self, version: str, index: int) -> BlockFile | bytes | None:
        """A whole verified block to send: an open file and where its data lie, or its
        bytes (small blocks live in SQLite, not in files); None if missing or damaged."""
        block_key = f"block:{version}:{index}"
        in_memory = self.memory_block(version, index)
        if in_memory is not None:
            return in_memory
        found = self._open(block_key)
        if found is None:
            return None
        source, header, path = found
        if isinstance(source, bytes):
            data = source[header.size :]
            return data if self._verify(block_key, path, header, data) else None
        if self._verified_recently(path):
            with self._lock:
                self._touched.add(block_key)
        else:
            try:
                data = os.pread(source.fileno(), header.length, header.size)
            except OSError:
                source.close()
                raise
            if not self._verify(block_key, path, header, data):
                source.close()
                return None
        return BlockFile(source.fileno(), header.size, header.length, source.close)

    def _open(self, block_key: str) -> tuple[BinaryIO | bytes, BlockHeader, str | None] | None:
        """The stored block (an open file, or the bytes of a small one), its header, and
        the file's path (None for small blocks, which live in SQLite)."""
        with self._lock:
            located = self._located.get(block_key)
        if located is not None:
            path, header = located
            try:
                return open(path, "rb"), header, path  # noqa: SIM115 - the caller closes it
            except FileNotFoundError:
                self._forget_location(block_key)
        for cache in (self._pinned, self._cache):
            try:
                value = cache.get(block_key, read=True)
            except FileNotFoundError:  # evicted between the row lookup and the open
                value = None
            if value is None:
                continue
            if isinstance(value, bytes):
                parsed = BlockHeader.parse(value[: BlockHeader.room(len(value))], len(value))
                if parsed is None:
                    self._drop_damaged(block_key)
                    return None
                return value, parsed, None
            file: BinaryIO = value
            try:
                total = os.fstat(file.fileno()).st_size
                parsed = BlockHeader.parse(file.read(BlockHeader.room(total)), total)
            except BaseException:
                file.close()
                raise
            if parsed is None:
                file.close()
                self._drop_damaged(block_key)
                return None
            with self._lock:
                if len(self._located) >= 65_536:
                    self._located.clear()
                self._located[block_key] = (file.name, parsed)
            return file, parsed, file.name
        return None

    def _verify(self, block_key: str, path: str | None, header: BlockHeader, data: bytes) -> bool:
        """Check a whole block's ``data`` against its stored digests; a mismatch drops the
        block. A block file checked is then trusted for a while (by path: diskcache writes
        every value to a new file, never over an old one)."""
        view = memoryview(data)
        step = header.sub_block
        for n, offset in enumerate(range(0, max(len(data), header.length), step)):
            if _digest(view[offset : offset + step]) != header.digest(n):
                self._drop_damaged(block_key)
                return False
        with self._lock:
            self._touched.add(block_key)
            if path is not None:
                if len(self._verified) >= 65_536:
                    self._verified.clear()
                self._verified[path] = time.monotonic()
        return True

    def _verified_recently(self, path: str | None) -> bool:
        if path is None:
            return False
        with self._lock:
            when = self._verified.get(path)
        return when is not None and time.monotonic() - when < VERIFIED_SECONDS

    def _forget_location(self, block_key: str) -> None:
        with self._lock:
            located = self._located.pop(block_key, None)
            if located is not None:
                self._verified.pop(located[0], None)

    def _drop_damaged(self, block_key: str) -> None:
        self._forget_location(block_key)
        for cache in (self._pinned, self._cache):
            cache.delete(block_key)
        with self._lock:
            self.corrupt_blocks += 1

    def flush_recency(self) -> int:
        """Tell diskcache which blocks were read from remembered locations (which bypass
        it), so that its least-recently-used eviction spares them; returns how many."""
        with self._lock:
            touched, self._touched = self._touched, set()
        # A block read again and again (a hot object) is told about once a minute, not at
        # every flush: eviction needs the order of minutes, not of seconds.
        now = time.monotonic()
        told = self._recency_told
        keys = sorted(key for key in touched if now - told.get(key, -math.inf) >= RECENCY_SECONDS)
        if len(told) > 100_000:
            told.clear()
        for key in keys:
            told[key] = now
        for first in range(0, len(keys), RECENCY_BATCH):
            # One SQLite transaction per batch: each get on its own is a write transaction
            # (it updates the access time), and a thousand of those every few seconds cost
            # a busy proxy a tenth of its CPU, and the loop the GIL while they run.
            with self._cache.transact():
                for block_key in keys[first : first + RECENCY_BATCH]:
                    value = self._cache.get(block_key, read=True)  # updates the access time
                    if value is not None and not isinstance(value, bytes):
                        value.close()
        return len(keys)

    def known_block(self, version: str, index: int) -> bool:
        """Whether a block is held in memory or its file was found lately (dictionaries
        only, for the event loop; a block not known may still be stored: ask has_blocks)."""
        block_key = f"block:{version}:{index}"
        return block_key in self._memory or block_key in self._located

    def has_blocks(self, version: str, indexes: range | list[int]) -> set[int]:
        """Which of ``indexes`` are stored (not verified: reading verifies)."""
        present = set()
        for index in indexes:
            block_key = f"block:{version}:{index}"
            with self._lock:
                known = block_key in self._memory or block_key in self._located
            if known or block_key in self._pinned or block_key in self._cache:
                present.add(index)
        return present

    def put_block(self, version: str, index: int, data: bytes, *, pinned: bool = False) -> None:
        """Store a block (:class:`StoreWriteError` if the cache cannot: full, read-only)."""
        target = self._pinned if pinned else self._cache
        block_key = f"block:{version}:{index}"
        self._forget_location(block_key)
        encoded = EncodedBlock(data)
        try:
            target.set(block_key, encoded)
        except (OSError, sqlite3.Error) as exc:
            raise self._write_error(exc) from None
        with self._lock:
            self._written += len(data)
        self._remember_block(block_key, data)
        if self._cache.get(_extent_index_key(version, index)) is not None:
            self._drop_extents(version, index)  # the block holds all they did
        # Written from bytes in hand: trusted as such (a crash mid-write ends the process,
        # and with it this memory), so a download right after a fill need not hash it.
        if encoded.path is not None:
            with self._lock:
                self._located[block_key] = (encoded.path, encoded.header)
                self._verified[encoded.path] = time.monotonic()

    # -- extents --------------------------------------------------------------------------
    # Pieces of a block, byte-exact, for reads far smaller than a block (see
    # proxyd.policy.extents). ``extent:<version>:<start>:<stop>`` holds the bytes (encoded
    # like a block: with digests); ``extents:<version>:<block>`` lists the block's extents.
    # A piece is written before the list names it and deleted after the list stops naming
    # it, so a crash leaves at most a piece nobody names (evicted in time), never a name
    # without its bytes; a piece evicted or damaged on its own is missing, fetched again.
    # Extents live in the evictable store only; the block, once whole, replaces them.

    def extents_of(self, version: str, index: int) -> list[Extent]:
        """The extents stored of block ``index`` (sorted, disjoint)."""
        raw = self._cache.get(_extent_index_key(version, index))
        if not isinstance(raw, str):
            return []
        try:
            return [Extent(int(a), int(b)) for a, b in json.loads(raw)]
        except (ValueError, TypeError):
            return []

    def _extent_bytes(self, version: str, extent: Extent) -> bytes | None:
        raw = self._cache.get(_extent_key(version, extent))
        data = decode_verified(raw) if isinstance(raw, bytes) else None
        if data is not None and len(data) == extent.length:
            return data
        if raw is not None:
            with self._lock:
                self.corrupt_blocks += 1
        self._set_extents(version, extent.start // self.block_size, remove=[extent])
        return None

    def _set_extents(
        self, version: str, index: int, *, add: Extent | None = None, remove: list[Extent]
    ) -> None:
        """Change the list of block ``index``'s extents (one SQLite transaction: two proxy
        processes adding pieces of one block at once both keep theirs)."""
        with self._cache.transact():
            current = [e for e in self.extents_of(version, index) if e not in remove]
            if add is not None:
                current.append(add)
            key = _extent_index_key(version, index)
            if current:
                self._cache.set(key, json.dumps([[e.start, e.stop] for e in sorted(current)]))
            else:
                self._cache.delete(key)

    def _drop_extents(self, version: str, index: int) -> None:
        extents = self.extents_of(version, index)
        self._cache.delete(_extent_index_key(version, index))
        for extent in extents:
            self._cache.delete(_extent_key(version, extent))

    def block_prefix(self, version: str, index: int) -> bytes:
        """The stored extent that begins where block ``index`` begins (verified), or b"":
        a fill of the block then asks the origin only for the rest (RFC 9111 §3.4)."""
        start = index * self.block_size
        for extent in self.extents_of(version, index):
            if extent.start == start:
                return self._extent_bytes(version, extent) or b""
        return b""

    def read_extents(self, version: str, wanted: list[Extent]) -> list[tuple[Extent, bytes]]:
        """What the store holds of ``wanted`` (sorted, disjoint): pieces from whole blocks
        and from extents, verified, in order. What is left out is not stored."""
        bs = self.block_size
        found: list[tuple[Extent, bytes]] = []
        for want in wanted:
            for piece in split_at_blocks(want, bs):
                index = piece.start // bs
                base = index * bs
                data = self.read_slice(version, index, piece.start - base, piece.stop - base)
                if data is not None and len(data) == piece.length:
                    found.append((piece, data))
                    continue
                for extent in self.extents_of(version, index):
                    lo, hi = max(extent.start, piece.start), min(extent.stop, piece.stop)
                    if lo >= hi:
                        continue
                    whole = self._extent_bytes(version, extent)
                    if whole is not None:
                        found.append((Extent(lo, hi), whole[lo - extent.start : hi - extent.start]))
        return found

    def put_extents(self, version: str, pieces: list[tuple[int, bytes]], size: int) -> None:
        """Store fetched bytes (``(offset, data)``) of an object of ``size`` bytes as extents,
        each merged with the extents it overlaps or touches; a block they then cover whole
        becomes a block (:class:`StoreWriteError` if the cache cannot store)."""
        with self._lock:
            self._written += sum(len(data) for _, data in pieces)
        try:
            for offset, data in pieces:
                if not data:
                    continue
                for extent in split_at_blocks(Extent(offset, offset + len(data)), self.block_size):
                    self._add_extent(
                        version, extent, data[extent.start - offset : extent.stop - offset], size
                    )
        except (OSError, sqlite3.Error) as exc:
            raise self._write_error(exc) from None

    def _add_extent(self, version: str, extent: Extent, data: bytes, size: int) -> None:
        bs = self.block_size
        index = extent.start // bs
        if self.has_blocks(version, [index]):
            return  # the whole block is stored already
        touching = [
            e
            for e in self.extents_of(version, index)
            if e.start <= extent.stop and e.stop >= extent.start
        ]
        pieces = [(extent, data)]
        for e in touching:
            got = self._extent_bytes(version, e)
            if got is not None:
                pieces.insert(0, (e, got))  # the new bytes go last, over the old ones
        union = merged(e for e, _ in pieces)[0]  # each piece touches ``extent``: one run
        buffer = bytearray(union.length)
        for e, got in pieces:
            buffer[e.start - union.start : e.stop - union.start] = got
        if union.start == index * bs and union.stop == min(size, (index + 1) * bs):
            self.put_block(version, index, bytes(buffer))  # drops the block's extents
            return
        self._cache.set(_extent_key(version, union), EncodedBlock(bytes(buffer)))
        self._set_extents(version, index, add=union, remove=touching)
        for e in touching:
            if e != union:
                self._cache.delete(_extent_key(version, e))

    # -- pinning, eviction, listing -------------------------------------------------------

    def pin(self, key: str) -> int:
        """Move an object's metadata and stored blocks to the pinned store; returns bytes."""
        meta = self.get_meta(key)
        if meta is None:
            raise KeyError(key)
        moved = 0
        version = meta.version(self.block_size)
        for index in range(meta.block_count(self.block_size)):
            block_key = f"block:{version}:{index}"
            raw = self._cache.get(block_key)
            if raw is not None:
                self._forget_location(block_key)
                self._pinned.set(block_key, raw)
                self._cache.delete(block_key)
                header = BlockHeader.parse(raw[: BlockHeader.room(len(raw))], len(raw))
                moved += header.length if header is not None else 0
        meta.pinned = True
        self._cache.delete(f"meta:{key}")
        self._pinned.set(f"meta:{key}", meta.to_json())
        self._remember_meta(key, copy.copy(meta))
        self._mark_change()  # running proxies: the blocks' files have moved
        return moved

    def unpin(self, key: str) -> None:
        meta = self.get_meta(key)
        if meta is None or not meta.pinned:
            return
        version = meta.version(self.block_size)
        for index in range(meta.block_count(self.block_size)):
            block_key = f"block:{version}:{index}"
            raw = self._pinned.get(block_key)
            if raw is not None:
                self._forget_location(block_key)
                self._cache.set(block_key, raw)
                self._pinned.delete(block_key)
        meta.pinned = False
        self._pinned.delete(f"meta:{key}")
        self._cache.set(f"meta:{key}", meta.to_json())
        self._remember_meta(key, copy.copy(meta))
        self._mark_change()

    def eviction_due(self) -> bool:
        """Whether as much has been stored since the last eviction round as lies between
        the watermarks: the next round should not wait for its timer. Fills at disk speed
        would otherwise take the cache past its size by seconds' worth of writes (gigabytes),
        which on a small cache (a laptop's) is many times the limit."""
        with self._lock:
            return self._written >= max(1, self.high - self.low)

    def evict(self) -> int:
        """If above the high watermark, drop least recently used entries to the low one."""
        with self._lock:
            self._written = 0
        pinned = int(self._pinned.volume())
        if self._cache.volume() + pinned <= self.high:
            return 0
        # Pinned content counts against the limit but cannot be evicted: the evictable
        # part must shrink to what is left of the low watermark, or a cache holding pinned
        # content would stay above its limit for ever (evicting a little every round).
        target = max(0, self.low - pinned)
        if self._cache.size_limit != target:
            self._cache.reset("size_limit", target)
        removed = int(self._cache.cull())
        with self._lock:
            self.evictions += removed
        if removed:
            # What is held in memory may be what was evicted: an evicted object is then a
            # miss, as `proxyd ls` says, rather than served from memory for a while (here
            # and, through the marker, in the worker processes).
            self._forget_memory()
            self._mark_change()
        return removed

    def volume(self) -> int:
        return int(self._cache.volume()) + int(self._pinned.volume())

    def objects(self) -> Iterator[ObjectMeta]:
        for cache in (self._pinned, self._cache):
            for raw_key in cache.iterkeys():
                if isinstance(raw_key, str) and raw_key.startswith("meta:"):
                    text = cache.get(raw_key)
                    if text is not None:
                        yield ObjectMeta.from_json(text)

    def stats(self) -> StoreStats:
        blocks = objects = 0
        for cache in (self._pinned, self._cache):
            for raw_key in cache.iterkeys():
                if isinstance(raw_key, str):
                    blocks += raw_key.startswith("block:")
                    objects += raw_key.startswith("meta:")
        pinned_entries = any(True for _ in self._pinned.iterkeys())
        return StoreStats(
            volume=int(self._cache.volume()),
            # An empty store's volume is its SQLite file's pages (~28 KiB): not pinned data.
            pinned_volume=int(self._pinned.volume()) if pinned_entries else 0,
            objects=objects,
            blocks=blocks,
            evictions=self.evictions,
            corrupt_blocks=self.corrupt_blocks,
        )

    def purge(self, prefix: str = "") -> int:
        """Drop every object whose key starts with ``prefix`` (all of them by default)."""
        count = 0
        for meta in list(self.objects()):
            if meta.key.startswith(prefix):
                self.delete_object(meta.key)
                count += 1
        if not prefix:
            self._cache.clear()
            self._pinned.clear()
        self._forget_memory()
        self._mark_change()
        return count


def _extent_index_key(version: str, index: int) -> str:
    return f"extents:{version}:{index}"


def _extent_key(version: str, extent: Extent) -> str:
    return f"extent:{version}:{extent.start}:{extent.stop}"


def describe_meta(meta: ObjectMeta, block_size: int, present: set[int]) -> dict[str, Any]:
    """One line of ``proxyd ls``."""
    total = meta.block_count(block_size)
    return {
        "key": meta.key,
        "url": meta.url,
        "size": meta.size,
        "etag": meta.etag,
        "blocks": f"{len(present)}/{total}",
        "pinned": meta.pinned,
    }
