"""Writing an assembled raw file: HDUs of one or more source files, bytes copied verbatim."""

from __future__ import annotations

import re
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any, BinaryIO

from astropy.io import fits
from astropy.io.fits.verify import VerifyWarning

from butler.formatters.fits_index import BLOCK, padded
from butler.ingest.plan import StoragePlan, extension_name
from butler.translators.base import FileHeaders

__all__ = ["assemble"]

_STRUCTURAL = re.compile(
    r"^(SIMPLE|BITPIX|NAXIS\d*|EXTEND|XTENSION|PCOUNT|GCOUNT|GROUPS|EXTNAME|EXTVER|EXTLEVEL|"
    r"BSCALE|BZERO|BLANK|CHECKSUM|DATASUM|THEAP|TFIELDS|T(FORM|TYPE|UNIT|DIM)\d+|Z\w*)$"
)
_COPY_CHUNK = 8 * 1024 * 1024


# WCS keywords stay with the pixels they describe (the image extension).
_WCS = re.compile(
    r"^(WCSAXES|CTYPE\d|CRPIX\d|CRVAL\d|CDELT\d|CUNIT\d|CROTA\d|CD\d_\d|PC\d_\d|PV\d_\d+|"
    r"[AB]P?_\d+_\d+|[AB]P?_ORDER|[AB]P?_DMAX|LONPOLE|LATPOLE|EQUINOX|EPOCH|RADESYS|RADECSYS|"
    r"MJDREF|DATEREF)$"
)


def _primary_header(exposure: fits.Header, detector: fits.Header | None) -> bytes:
    """A data-less PRIMARY with the exposure's cards and then the detector's own (gain,
    CCD number...), so the metadata of one detector's dataset says all the source said."""
    header = fits.Header([("SIMPLE", True), ("BITPIX", 8), ("NAXIS", 0), ("EXTEND", True)])
    for source in (exposure, detector):
        for card in source.cards if source is not None else []:
            key = card.keyword
            if key in ("", "COMMENT", "HISTORY") or _STRUCTURAL.match(key):
                continue
            if source is detector and (_WCS.match(key) or key in header):
                continue
            header.append(card, end=True)
    return _text(header)


def _extension_header(source: fits.Header, name: str) -> bytes:
    header = source.copy()
    for key in ("CHECKSUM", "DATASUM", "EXTVER"):
        header.remove(key, ignore_missing=True, remove_all=True)
    if "SIMPLE" in header:
        # A primary image becomes an IMAGE extension: same pixels, extension keywords.
        header.remove("EXTEND", ignore_missing=True)
        naxis = int(header["NAXIS"])
        header.set("XTENSION", "IMAGE", before="SIMPLE")
        header.remove("SIMPLE")
        last_axis = f"NAXIS{naxis}" if naxis else "NAXIS"
        header.set("PCOUNT", 0, after=last_axis)
        header.set("GCOUNT", 1, after="PCOUNT")
    header["EXTNAME"] = name
    return _text(header)


def _text(header: fits.Header) -> bytes:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", VerifyWarning)
        text: str = header.tostring(padding=True)
    return text.encode("ascii")


def _copy_data(src: BinaryIO, hdu: Mapping[str, Any], out: BinaryIO) -> None:
    src.seek(int(hdu["data_offset"]))
    remaining = int(hdu["data_size"])
    while remaining:
        chunk = src.read(min(remaining, _COPY_CHUNK))
        if not chunk:
            raise OSError(f"unexpected end of file copying HDU {hdu['index']}")
        out.write(chunk)
        remaining -= len(chunk)
    out.write(b"\0" * (padded(int(hdu["data_size"])) - int(hdu["data_size"])))


def assemble(plan: StoragePlan, files: Mapping[str, FileHeaders], out: Path) -> None:
    """Write the file ``plan`` describes to ``out``; ``files`` maps a role (``main`` or a
    companion's) to that file's headers and index."""
    layout = plan.unit.layout
    meta = files[layout.metadata.file].headers[layout.metadata.hdu]
    image = files[layout.image.file].headers[layout.image.hdu]
    with out.open("xb") as dst:
        dst.write(_primary_header(meta, image if image is not meta else None))
        for role, ref in plan.parts:
            source = files[ref.file]
            hdu = source.hdu(ref.hdu)
            name = extension_name(role, layout.variance_kind, layout.mask_is_lsst)
            dst.write(_extension_header(source.headers[ref.hdu], name))
            with source.path.open("rb") as src:
                _copy_data(src, hdu, dst)
    if out.stat().st_size % BLOCK:
        raise OSError(f"{out}: assembled file is not a whole number of FITS blocks")
