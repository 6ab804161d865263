"""Which files an ``ingest-raws`` command line names, and what kind of file each one is."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Literal

__all__ = [
    "COMPRESSED_SUFFIXES",
    "FITS_SUFFIXES",
    "FileKind",
    "expand_paths",
    "file_kind",
    "looks_like_fits",
]

FITS_SUFFIXES = (".fits", ".fit", ".fts", ".fits.fz", ".fz")
"""Plain or tile-compressed FITS (a tile-compressed file is FITS, read in place)."""
COMPRESSED_SUFFIXES = (".gz", ".bz2")
"""Whole-file compression astropy reads (``.fits.gz``, ``.fits.bz2``...)."""

FileKind = Literal["fits", "gzip", "bzip2", "other"]
_MAGIC: tuple[tuple[bytes, FileKind], ...] = (
    (b"SIMPLE  =", "fits"),
    (b"\x1f\x8b", "gzip"),
    (b"BZh", "bzip2"),
)


def file_kind(path: Path) -> FileKind:
    """What the first bytes say the file is (the name can lie: sunpy ships a gzipped FITS
    file called ``gzip_fits_test.file``)."""
    with path.open("rb") as f:
        head = f.read(9)
    return next((kind for magic, kind in _MAGIC if head.startswith(magic)), "other")


def looks_like_fits(path: Path) -> bool:
    """True if the name says FITS, plain, tile-compressed or whole-file compressed."""
    name = path.name.lower()
    for suffix in COMPRESSED_SUFFIXES:
        name = name.removesuffix(suffix)
    return name.endswith(FITS_SUFFIXES)


def expand_paths(paths: Iterable[Path], exclude: Path | None = None) -> list[Path]:
    """Files as given, and every file found recursively in directories (each is then
    ingested or reported, so a directory's count adds up), sorted so a re-run processes
    them in the same order. Files under ``exclude`` (the repository being written to) are
    left out. A path that does not exist raises ``FileNotFoundError`` naming it."""
    out: list[Path] = []
    skip = exclude.resolve() if exclude is not None else None
    for path in paths:
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file())
            out.extend(p for p in found if skip is None or not p.resolve().is_relative_to(skip))
        elif path.is_file():
            out.append(path)
        else:
            raise FileNotFoundError(f"{path}: no such file or directory")
    return list(dict.fromkeys(out))
