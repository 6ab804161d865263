"""A change marker every process using one cache directory shares: has anyone changed it?

Running proxies (the main process and its workers) hold metadata, blocks and file locations
in memory. When any process deletes or moves stored things -- ``proxyd purge``, ``pin``,
eviction, an invalidation in the main process that a worker must see -- the others have to
forget what they hold before their next answer. They ask on every request, so asking must
cost next to nothing: the marker is an 8-byte file mapped into memory (``MAP_SHARED``), and
asking is comparing those 8 bytes with the ones seen last. (A ``stat`` of a marker file's
mtime, as before, was a system call per request: 5 % of a busy worker's time.)

A change writes 8 random bytes rather than incrementing: two processes marking at the same
moment then never write the same value, which would hide the second change from a reader
that saw the first. An 8-byte aligned store is not torn on the platforms we run on, and a
torn read would only cost a needless forgetting.
"""

from __future__ import annotations

import mmap
import os
from pathlib import Path

SIZE = 8


class ChangeMarker:
    """The shared marker at ``path`` (created if missing; an empty file left by an older
    version is extended)."""

    def __init__(self, path: Path) -> None:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            if os.fstat(fd).st_size < SIZE:
                # Only ever grown: a concurrent creator's bytes beyond are kept either way.
                os.ftruncate(fd, SIZE)
            self._map = mmap.mmap(fd, SIZE, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        finally:
            os.close(fd)  # the mapping keeps the file
        self._seen = self._map[:SIZE]

    def changed(self) -> bool:
        """Whether another process has marked a change since this one last looked (or
        marked); looking resets it."""
        current = self._map[:SIZE]
        if current == self._seen:
            return False
        self._seen = current
        return True

    def mark(self) -> None:
        """Tell every other process that stored things have changed."""
        value = os.urandom(SIZE)
        self._map[:SIZE] = value
        self._seen = value

    def close(self) -> None:
        self._map.close()
