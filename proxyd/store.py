"""The block store: object metadata and fixed-size content blocks on disk (diskcache).

Layout, in one diskcache directory (evictable) and one beside it for pinned content:

* ``meta:<cache key>`` -> :class:`ObjectMeta` as JSON (size, validators, stored headers,
  freshness facts, and the *version* that names its blocks);
* ``block:<version>:<n>`` -> a block's bytes prefixed with their BLAKE2b digest.

A version is a digest of (cache key, ETag or Last-Modified, size): when the origin's object
changes, new blocks live under a new version, so no response can ever mix bytes of two
versions. Every block is verified when read; a torn or damaged block (a crash mid-write, a
bad disk) is dropped and fetched again, never served.

Everything here blocks (SQLite, file I/O): callers run it in a worker thread.
"""

from __future__ import annotations

import copy
import hashlib
import json
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import diskcache

from proxyd.policy.freshness import StoredMeta

DIGEST_SIZE = 32
META_MEMORY_SECONDS = 1.0
"""How long metadata read from disk is reused from memory (other processes may purge)."""


def _digest(data: bytes) -> bytes:
    return hashlib.blake2b(data, digest_size=DIGEST_SIZE).digest()


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
        }
        return json.dumps(data, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> ObjectMeta:
        data = json.loads(text)
        return cls(
            data["key"], data["url"], StoredMeta.from_json(data["stored"]), bool(data.get("pinned"))
        )


@dataclass
class StoreStats:
    volume: int
    pinned_volume: int
    objects: int
    blocks: int
    evictions: int
    corrupt_blocks: int


class BlockStore:
    """Metadata and blocks of cached objects, with LRU eviction between watermarks."""

    def __init__(
        self,
        directory: Path,
        size_limit: int,
        block_size: int,
        low_watermark: float = 0.9,
        high_watermark: float = 0.95,
        memory_bytes: int = 128 * 2**20,
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
            disk_min_file_size=64 * 1024,
            statistics=False,
        )
        self._pinned = diskcache.Cache(
            str(self.directory / "pinned"), eviction_policy="none", disk_min_file_size=64 * 1024
        )
        self._lock = threading.Lock()
        self.evictions = 0
        self.corrupt_blocks = 0
        # Hot blocks stay in memory once verified: a small range of a hot object then costs
        # neither a disk read nor hashing a whole block. Bounded in bytes, LRU.
        self.memory_limit = memory_bytes
        self._memory: OrderedDict[str, bytes] = OrderedDict()
        self._memory_bytes = 0
        self._meta_memory: dict[str, tuple[float, ObjectMeta | None]] = {}

    def close(self) -> None:
        self._cache.close()
        self._pinned.close()

    # -- metadata -------------------------------------------------------------------------

    def get_meta(self, key: str) -> ObjectMeta | None:
        now = time.monotonic()
        with self._lock:
            cached = self._meta_memory.get(key)
        if cached is not None and now - cached[0] < META_MEMORY_SECONDS:
            return None if cached[1] is None else copy.copy(cached[1])
        meta = None
        for cache in (self._pinned, self._cache):
            text = cache.get(f"meta:{key}")
            if text is not None:
                meta = ObjectMeta.from_json(text)
                break
        self._remember_meta(key, meta)
        return None if meta is None else copy.copy(meta)

    def remembered_meta(self, key: str) -> ObjectMeta | None:
        """Metadata held in memory and still fresh, else None (never touches the disk)."""
        with self._lock:
            cached = self._meta_memory.get(key)
        if cached is None or cached[1] is None:
            return None
        if time.monotonic() - cached[0] >= META_MEMORY_SECONDS:
            return None
        return copy.copy(cached[1])

    def _remember_meta(self, key: str, meta: ObjectMeta | None) -> None:
        with self._lock:
            if len(self._meta_memory) > 100_000:
                self._meta_memory.clear()
            self._meta_memory[key] = (time.monotonic(), meta)

    def put_meta(self, meta: ObjectMeta) -> None:
        target = self._pinned if meta.pinned else self._cache
        target.set(f"meta:{meta.key}", meta.to_json())
        self._remember_meta(meta.key, copy.copy(meta))

    def delete_object(self, key: str) -> int:
        """Forget an object and every block of its current version; returns blocks removed."""
        removed = 0
        meta = self.get_meta(key)
        with self._lock:
            self._meta_memory.pop(key, None)
            if meta is not None:
                prefix = f"block:{meta.version(self.block_size)}:"
                for block_key in [k for k in self._memory if k.startswith(prefix)]:
                    self._memory_bytes -= len(self._memory.pop(block_key))
        for cache in (self._pinned, self._cache):
            cache.delete(f"meta:{key}")
            if meta is not None:
                version = meta.version(self.block_size)
                for index in range(max(1, meta.block_count(self.block_size))):
                    removed += bool(cache.delete(f"block:{version}:{index}"))
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
        """A verified block, or None (missing, or damaged and now dropped)."""
        in_memory = self.memory_block(version, index)
        if in_memory is not None:
            return in_memory
        block_key = f"block:{version}:{index}"
        for cache in (self._pinned, self._cache):
            raw = cache.get(block_key)
            if raw is None:
                continue
            data = bytes(raw)
            body = data[DIGEST_SIZE:]
            if len(data) >= DIGEST_SIZE and _digest(body) == data[:DIGEST_SIZE]:
                self._remember_block(block_key, body)
                return body
            cache.delete(block_key)
            with self._lock:
                self.corrupt_blocks += 1
        return None

    def has_blocks(self, version: str, indexes: range | list[int]) -> set[int]:
        """Which of ``indexes`` are stored (not verified: reading verifies)."""
        present = set()
        for index in indexes:
            block_key = f"block:{version}:{index}"
            with self._lock:
                in_memory = block_key in self._memory
            if in_memory or block_key in self._pinned or block_key in self._cache:
                present.add(index)
        return present

    def put_block(self, version: str, index: int, data: bytes, *, pinned: bool = False) -> None:
        target = self._pinned if pinned else self._cache
        block_key = f"block:{version}:{index}"
        target.set(block_key, _digest(data) + data)
        self._remember_block(block_key, data)

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
                self._pinned.set(block_key, raw)
                self._cache.delete(block_key)
                moved += len(raw) - DIGEST_SIZE
        meta.pinned = True
        self._cache.delete(f"meta:{key}")
        self._pinned.set(f"meta:{key}", meta.to_json())
        self._remember_meta(key, copy.copy(meta))
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
                self._cache.set(block_key, raw)
                self._pinned.delete(block_key)
        meta.pinned = False
        self._pinned.delete(f"meta:{key}")
        self._cache.set(f"meta:{key}", meta.to_json())
        self._remember_meta(key, copy.copy(meta))

    def evict(self) -> int:
        """If above the high watermark, drop least recently used entries to the low one."""
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
        return StoreStats(
            volume=int(self._cache.volume()),
            pinned_volume=int(self._pinned.volume()),
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
        with self._lock:
            self._memory.clear()
            self._memory_bytes = 0
            self._meta_memory.clear()
        return count


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
