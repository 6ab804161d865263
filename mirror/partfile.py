"""Writing a download's bytes to its partial file, past the page cache where that works.

Every file the mirror keeps is made durable before the registry records it (the commit of
each batch flushes the file system), so its bytes go to the disk during the pull anyway.
Written through the page cache they are copied twice (into the cache, then out to the disk)
and each new cache page must be allocated first. A fresh file is therefore opened with
``O_DIRECT`` and written a whole, page-aligned MiB at a time straight to the disk, and the
commit's flush has only the unaligned tail and the metadata left to write.

Measured on the bench machine (a 2-core VM, ext4 on virtio; ``bench/bench_mirror.py``):
the pull's system CPU went from 8-10 s to 2-4 s per 2 GiB, most of it the page-cache
copy and the allocation of its pages (which on this VM fault into the host). ``dd`` of
2 GiB with 8 writers: 0.5 s of system time with ``O_DIRECT`` against 2.3-6.3 s buffered.

Where ``O_DIRECT`` is missing or refused (macOS, tmpfs, some network file systems) or a
write cannot be aligned (a resumed file appends at any offset; the last piece of a file
has any length), the same bytes go through the page cache instead: never an error.
"""

from __future__ import annotations

import errno
import fcntl
import mmap
import os
from pathlib import Path

ALIGN = 4096
"""Offsets, lengths and addresses of direct writes are multiples of this: it covers disks
with 512-byte and with 4 KiB logical blocks."""
BUFFERED_SLICE = 128 * 1024
"""Largest single write() through the page cache.

The page cache sizes its folios by the write, and on the bench machine (a VM, kernel 6.18,
ext4) 1 MiB folios cost 2-3 x the system time of 128 KiB ones (256 KiB and 512 KiB were as
slow as 1 MiB, 64 KiB like 128 KiB)."""
O_DIRECT: int = getattr(os, "O_DIRECT", 0)


def aligned_buffer(size: int) -> mmap.mmap:
    """A zeroed, page-aligned buffer of ``size`` bytes (anonymous memory, as direct I/O wants)."""
    return mmap.mmap(-1, size)


class PartFile:
    """A partial file opened for writing: from scratch, or appended to (a resumed download).

    Not thread-safe: one thread at a time writes to it (a download's jobs run in order).
    """

    def __init__(self, path: Path, append: bool) -> None:
        flags = os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC
        flags |= os.O_APPEND if append else os.O_TRUNC
        self.direct = False
        if O_DIRECT and not append:
            try:
                self._fd = os.open(path, flags | O_DIRECT, 0o644)
                self.direct = True
                return
            except OSError as exc:
                if exc.errno != errno.EINVAL:  # EINVAL: this file system refuses O_DIRECT
                    raise
        self._fd = os.open(path, flags, 0o644)

    def write(self, data: memoryview) -> None:
        """Write all of ``data`` (a slice of an :func:`aligned_buffer` from its start)."""
        if self.direct:
            head = len(data) - len(data) % ALIGN
            written = self._write_direct(data[:head]) if head else 0
            if written < len(data):  # an unaligned tail: the rest goes through the cache
                self._stop_direct()
                data = data[written:]
            else:
                return
        written = 0
        while written < len(data):  # slices, and short writes (rare on regular files)
            written += os.write(self._fd, data[written : written + BUFFERED_SLICE])

    def _write_direct(self, data: memoryview) -> int:
        """Bytes of ``data`` written directly; fewer (even none) where the rest must not be."""
        written = 0
        try:
            while written < len(data):
                count = os.write(self._fd, data[written:])
                written += count
                if count % ALIGN:  # a short write left an unaligned offset
                    break
        except OSError as exc:
            if exc.errno != errno.EINVAL:  # EINVAL: refused here (an odd device, a stacked fs)
                raise
        return written

    def _stop_direct(self) -> None:
        flags = fcntl.fcntl(self._fd, fcntl.F_GETFL)
        fcntl.fcntl(self._fd, fcntl.F_SETFL, flags & ~O_DIRECT)
        self.direct = False

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
