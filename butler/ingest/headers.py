"""Reading every header of a FITS file, and only the headers."""

from __future__ import annotations

from pathlib import Path

from butler.formatters.fits_index import hdu_header_range, index_fits, parse_header
from butler.io.source import LocalFileSource
from butler.translators.base import FileHeaders

__all__ = ["read_file_headers"]


def read_file_headers(path: Path) -> FileHeaders:
    """The offset index of ``path`` and the header of each HDU (the pixels are not read).

    Raises :class:`~butler.errors.CorruptFileError` for a file that is not FITS or is
    truncated.
    """
    index = index_fits(path)
    source = LocalFileSource(path)
    try:
        blobs = source.read_ranges([hdu_header_range(h) for h in index["hdus"]])
    finally:
        source.close()
    headers = [
        parse_header(blob, f"{path}: HDU {hdu['index']}")
        for blob, hdu in zip(blobs, index["hdus"], strict=True)
    ]
    return FileHeaders(path, index, headers)
