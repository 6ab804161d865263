"""mirror.partfile: direct writes where the file system allows them, the page cache where it
does not (refused open, refused write, unaligned tail, short write, appended file); the bytes
on disk are the same either way."""

from __future__ import annotations

import errno
import fcntl
import os
from pathlib import Path

import pytest
from conftest import direct_io_in_tmp

import mirror.partfile
from mirror.partfile import ALIGN, PartFile, aligned_buffer

DIRECT = direct_io_in_tmp()
"""Whether files in tmp_path are written directly; everything else holds either way."""


def filled(size: int) -> memoryview:
    buffer = aligned_buffer(size)
    buffer[:] = bytes(i % 251 for i in range(size))
    return memoryview(buffer)


def write_all(path: Path, chunks: list[memoryview], append: bool = False) -> PartFile:
    part = PartFile(path, append)
    try:
        for chunk in chunks:
            part.write(chunk)
    finally:
        part.close()
    return part


def assert_written_through_the_cache(path: Path, data: memoryview) -> None:
    part = write_all(path, [data])
    assert not part.direct
    assert path.read_bytes() == bytes(data)


def test_aligned_buffers_are_page_aligned() -> None:
    import ctypes

    buffer = aligned_buffer(1 << 20)
    address = ctypes.addressof(ctypes.c_char.from_buffer(buffer))
    assert address % ALIGN == 0
    assert len(buffer) == 1 << 20


def test_whole_blocks_stay_direct_and_a_tail_switches_to_the_cache(tmp_path: Path) -> None:
    data = filled(3 * ALIGN + 100)
    path = tmp_path / "a.part"
    part = PartFile(path, append=False)
    assert part.direct == DIRECT
    part.write(data[: 2 * ALIGN])
    assert part.direct == DIRECT
    part.write(data[2 * ALIGN :])  # one aligned block and 100 bytes
    assert not part.direct
    part.close()
    assert path.read_bytes() == bytes(data)


def test_a_file_system_refusing_direct_io_gets_buffered_writes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_open = os.open

    def refusing(path: Path, flags: int, mode: int = 0o777) -> int:
        if flags & mirror.partfile.O_DIRECT:
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_open(path, flags, mode)

    monkeypatch.setattr(mirror.partfile.os, "open", refusing)
    assert_written_through_the_cache(tmp_path / "b.part", filled(2 * ALIGN))


def test_a_refused_or_short_direct_write_goes_on_through_the_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_write = os.write
    calls: list[int] = []

    def flaky(fd: int, data: memoryview) -> int:
        calls.append(len(data))
        if len(calls) == 1:  # a short, unaligned direct write
            return real_write(fd, data[: ALIGN + 10])
        return real_write(fd, data)

    monkeypatch.setattr(mirror.partfile.os, "write", flaky)
    data = filled(4 * ALIGN)
    assert_written_through_the_cache(tmp_path / "c.part", data)

    def refusing(fd: int, data: memoryview) -> int:
        if mirror.partfile.O_DIRECT & fcntl.fcntl(fd, fcntl.F_GETFL):
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_write(fd, data)

    monkeypatch.setattr(mirror.partfile.os, "write", refusing)
    assert_written_through_the_cache(tmp_path / "d.part", data)


def test_other_errors_are_raised(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def full(fd: int, data: memoryview) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(mirror.partfile.os, "write", full)
    with pytest.raises(OSError, match="No space left"):
        write_all(tmp_path / "e.part", [filled(ALIGN)])


def test_an_appended_file_keeps_its_bytes_and_is_written_through_the_cache(
    tmp_path: Path,
) -> None:
    path = tmp_path / "f.part"
    path.write_bytes(b"x" * 1000)  # a resumed download's unaligned start
    data = filled(2 * ALIGN)
    part = write_all(path, [data], append=True)
    assert not part.direct
    assert path.read_bytes() == b"x" * 1000 + bytes(data)


def test_a_fresh_file_replaces_what_was_there(tmp_path: Path) -> None:
    path = tmp_path / "g.part"
    path.write_bytes(b"y" * 3 * ALIGN)
    data = filled(ALIGN)
    write_all(path, [data])
    assert path.read_bytes() == bytes(data)
