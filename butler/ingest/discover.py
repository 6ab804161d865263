"""Which files an ``ingest-raws`` command line names."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

__all__ = ["FITS_SUFFIXES", "expand_paths"]

FITS_SUFFIXES = (".fits", ".fit", ".fts", ".fits.fz", ".fz")


def _is_fits(path: Path) -> bool:
    return path.name.lower().endswith(FITS_SUFFIXES)


def expand_paths(paths: Iterable[Path]) -> list[Path]:
    """Files as given, and FITS files (by suffix) found recursively in directories, sorted
    so a re-run processes them in the same order. A path that does not exist raises
    ``FileNotFoundError`` naming it."""
    out: list[Path] = []
    for path in paths:
        if path.is_dir():
            out.extend(sorted(p for p in path.rglob("*") if p.is_file() and _is_fits(p)))
        elif path.is_file():
            out.append(path)
        else:
            raise FileNotFoundError(f"{path}: no such file or directory")
    return list(dict.fromkeys(out))
