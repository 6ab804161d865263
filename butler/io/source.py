"""Random access to the bytes of one stored file.

Formatters read through a :class:`ByteSource` rather than a path, so the same partial-read
logic (a FITS header from the offset index, the rows of a cutout, Parquet column chunks) works
on a local file and, through an HTTP implementation, on a remote repository, and so every byte
read can be counted.
"""

from __future__ import annotations

import io
import os
import threading
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from butler.errors import CorruptFileError

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

ByteRange = tuple[int, int]
"""``(offset, length)`` of a run of bytes in a file."""


def merge_ranges(ranges: Sequence[ByteRange], gap: int = 0) -> list[ByteRange]:
    """Sort ranges and merge those that overlap or lie within ``gap`` bytes of each other."""
    merged: list[list[int]] = []
    for offset, length in sorted(r for r in ranges if r[1] > 0):
        if merged and offset <= merged[-1][0] + merged[-1][1] + gap:
            end = max(merged[-1][0] + merged[-1][1], offset + length)
            merged[-1][1] = end - merged[-1][0]
        else:
            merged.append([offset, length])
    return [(o, n) for o, n in merged]


class ByteSource(ABC):
    """Bytes of one file, read by ranges. Counts what it reads (``bytes_read``, ``requests``)."""

    def __init__(self, size: int, name: str) -> None:
        self.size = size
        self.name = name
        self.bytes_read = 0
        self.requests = 0
        self._count_lock = threading.Lock()

    def read_ranges(self, ranges: Sequence[ByteRange]) -> list[bytes]:
        """Return the bytes of each range, in the order asked.

        Implementations fetch the merged ranges in as few requests as they can, so callers
        should ask for everything they need at once.
        """
        for offset, length in ranges:
            if offset < 0 or length < 0 or offset + length > self.size:
                raise CorruptFileError(
                    f"{self.name}: range {offset}+{length} lies outside the file "
                    f"({self.size} bytes); the file or its offset index is damaged"
                )
        wanted = merge_ranges(ranges)
        chunks = self._fetch(wanted) if wanted else []
        with self._count_lock:
            self.bytes_read += sum(len(c) for c in chunks)
            self.requests += 1 if wanted else 0
        out: list[bytes] = []
        for offset, length in ranges:
            for (m_off, m_len), chunk in zip(wanted, chunks, strict=True):
                if m_off <= offset and offset + length <= m_off + m_len:
                    start = offset - m_off
                    out.append(bytes(chunk[start : start + length]))
                    break
            else:  # only zero-length ranges are left out of ``wanted``
                out.append(b"")
        return out

    def read(self, offset: int, length: int) -> bytes:
        return self.read_ranges([(offset, length)])[0]

    @abstractmethod
    def _fetch(self, ranges: Sequence[ByteRange]) -> list[bytes]:
        """Fetch sorted, non-overlapping ranges that lie inside the file."""

    def open(self, read_ahead: int = 64 * 1024) -> RangeFile:
        """A seekable binary file object that reads lazily from this source."""
        return RangeFile(self, read_ahead=read_ahead)

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release resources held by the source."""


class LocalFileSource(ByteSource):
    """A file on local disk, read with ``pread`` (thread-safe, no shared file position)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        # Set before the open that may fail: __del__ (and close) of a source whose file was
        # missing then has nothing to close instead of raising AttributeError at exit.
        self._fd = -1
        self._fd = os.open(self.path, os.O_RDONLY)
        super().__init__(os.fstat(self._fd).st_size, str(self.path))

    def _fetch(self, ranges: Sequence[ByteRange]) -> list[bytes]:
        chunks = []
        for offset, length in ranges:
            data = os.pread(self._fd, length, offset)
            if len(data) != length:
                raise CorruptFileError(f"{self.path}: file shrank while being read")
            chunks.append(data)
        return chunks

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __del__(self) -> None:
        if getattr(self, "_fd", -1) >= 0:  # absent if __init__ failed before setting it
            self.close()


class RangeFile(io.RawIOBase):
    """Seekable, read-only file object over a :class:`ByteSource`.

    Reads go to the source lazily; a small read-ahead buffer keeps libraries that read a few
    bytes at a time (astropy's header parser, pyarrow's footer probe) from making a request
    per call. Consecutive reads extend the buffer window; a seek elsewhere starts a new one.
    """

    def __init__(self, source: ByteSource, read_ahead: int = 64 * 1024) -> None:
        super().__init__()
        self.source = source
        self.read_ahead = max(0, read_ahead)
        self._pos = 0
        self._buf = b""
        self._buf_start = 0
        self.name = source.name
        self.mode = "rb"

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_SET:
            pos = offset
        elif whence == io.SEEK_CUR:
            pos = self._pos + offset
        elif whence == io.SEEK_END:
            pos = self.source.size + offset
        else:
            raise ValueError(f"invalid whence {whence}")
        if pos < 0:
            raise OSError(f"negative seek position {pos}")
        self._pos = pos
        return pos

    def readinto(self, buffer: WriteableBuffer) -> int:
        view = memoryview(buffer).cast("B")
        want = min(len(view), max(0, self.source.size - self._pos))
        if want == 0:
            return 0
        buf_end = self._buf_start + len(self._buf)
        if not (self._buf_start <= self._pos and self._pos + want <= buf_end):
            length = min(max(want, self.read_ahead), self.source.size - self._pos)
            self._buf = self.source.read(self._pos, length)
            self._buf_start = self._pos
        start = self._pos - self._buf_start
        view[:want] = self._buf[start : start + want]
        self._pos += want
        return want

    def readall(self) -> bytes:
        rest = self.source.size - self._pos
        data = self.read(rest) if rest > 0 else b""
        return data or b""

    def read(self, size: int | None = -1) -> bytes:
        if size is None or size < 0:
            size = max(0, self.source.size - self._pos)
        out = bytearray(size)
        n = self.readinto(out)
        return bytes(out[:n])
