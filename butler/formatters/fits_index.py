"""Offset index of a FITS file, and the low-level reads that use it.

:func:`index_fits` scans the headers of a FITS file (never its data) and records where each
HDU's header and data lie, with what a reader needs to fetch part of an HDU without opening
the file: image shape and on-disk dtype, scaling, binary-table column layout, and the tile
parameters of tile-compressed images. The index is stored in the registry with the file, so a
client reading a cutout or a header from a remote repository knows the byte ranges to ask for
before the first request.

Index layout (JSON-serialisable)::

    {"format": "fits", "size": <file bytes>, "hdus": [
        {"index": 0, "name": "PRIMARY", "ver": 1, "kind": "primary",
         "header_offset": 0, "header_size": 2880,      # header_size includes padding
         "data_offset": 2880, "data_size": 0,          # data_size excludes padding
         "shape": [ny, nx], "dtype": ">f4",            # image HDUs (numpy order, on-disk)
         "bitpix": -32, "bscale": 2.0, "bzero": 32768, "blank": -1,  # only when present
         # BINTABLE (and compressed images, which are stored as one):
         "naxis1": <row bytes>, "naxis2": <rows>, "pcount": <heap+gap bytes>,
         "theap": <heap offset from data start>,
         "columns": [{"name", "tform", "code", "repeat", "offset", "width"}, ...],
         # compressed images only (kind "compimage"; shape/dtype are the image's):
         "tile_shape": [ty, tx], "zcmptype": "RICE_1", "zsettings": {"BLOCKSIZE": 32},
         "zquantiz": "SUBTRACTIVE_DITHER_1", "zdither0": 1, "zblank": <int>},
        ...],
     "trailing_bytes": <bytes after the last HDU that are not an HDU>}   # only if > 0

``kind`` is ``primary`` (also when it holds an image), ``image``, ``bintable``,
``compimage``, ``table`` (ASCII), ``groups`` (random groups) or the lower-cased XTENSION of
anything else.

Files come from anyone who can upload, so the scan is bounded whatever the bytes say: a header
is read block by block up to :data:`MAX_HEADER_BYTES`, at most :data:`MAX_HDUS` HDUs are
walked, every count that numbers keywords (NAXIS, TFIELDS, ZNAXIS) is held to the standard's
999, and sizes that would move the walk backwards are refused. Anything that is not a
well-formed FITS file raises :class:`~butler.errors.CorruptFileError` naming the file, the HDU
and what is wrong, and every value recorded is JSON-serialisable.
"""

from __future__ import annotations

import logging
import math
import re
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt
from astropy.io import fits
from astropy.io.fits.verify import VerifyError, VerifyWarning
from astropy.utils.exceptions import AstropyUserWarning
from astropy.wcs import WCS, FITSFixedWarning

from butler.errors import CorruptFileError
from butler.io.source import ByteRange, ByteSource

__all__ = [
    "BLOCK",
    "SOURCE_READ",
    "apply_scaling",
    "decode_image",
    "ensure_index",
    "find_hdu",
    "hdu_header_range",
    "image_header",
    "index_fits",
    "index_fits_source",
    "is_image_hdu",
    "padded",
    "parse_header",
    "parse_tform",
    "read_header",
    "wcs_from_header",
]

log = logging.getLogger(__name__)

BLOCK = 2880
"""FITS logical record size: headers and data are padded to multiples of it."""

CARD = 80

MAX_HEADER_BYTES = 2000 * BLOCK
"""Longest header read (72,000 cards): far beyond real headers, it bounds the work and memory
a file without an END card costs before it is refused."""

MAX_HDUS = 10_000
"""Most HDUs indexed in one file (real multi-extension files hold at most a few hundred)."""

MAX_FIELDS = 999
"""The FITS standard's limit on NAXIS, TFIELDS and ZNAXIS (their indices have 3 digits)."""

BITPIX_DTYPES = {8: "u1", 16: ">i2", 32: ">i4", 64: ">i8", -32: ">f4", -64: ">f8"}

# Byte width of one element of each binary-table TFORM code (P/Q are heap descriptors).
_TFORM_WIDTH = {"L": 1, "B": 1, "A": 1, "I": 2, "J": 4, "E": 4, "K": 8, "D": 8, "C": 8, "M": 16}
_TFORM_RE = re.compile(r"^\s*(\d*)([LXBIJKAEDCMPQ])(.*)$")


def padded(size: int) -> int:
    """``size`` rounded up to whole FITS blocks."""
    return -(-size // BLOCK) * BLOCK


def parse_tform(tform: str) -> dict[str, Any]:
    """Layout of one binary-table column: code, repeat count, bytes per row, heap element type."""
    match = _TFORM_RE.match(tform.upper())
    if match is None:
        raise ValueError(f"unrecognised binary table column format TFORM={tform!r}")
    repeat = int(match.group(1)) if match.group(1) else 1
    code = match.group(2)
    rest = match.group(3).strip()
    out: dict[str, Any] = {"tform": tform.strip(), "code": code, "repeat": repeat}
    if code in "PQ":
        # A heap descriptor: (element count, heap offset), as 32-bit (P) or 64-bit (Q) ints.
        # The standard allows one descriptor per field, or none (FITS 4.0 §7.3.5).
        if repeat > 1:
            raise ValueError(
                f"binary table column format TFORM={tform!r} repeats a heap descriptor "
                f"{repeat} times; the FITS standard allows 0 or 1"
            )
        out["width"] = (8 if code == "P" else 16) * repeat
        out["element"] = rest[:1] if rest else "B"
    elif code == "X":
        out["width"] = -(-repeat // 8)
    else:
        out["width"] = _TFORM_WIDTH[code] * repeat
    return out


def parse_header(raw: bytes, where: str) -> fits.Header:
    """A FITS header from its raw bytes (padding included or not).

    ``where`` names the file and HDU for error messages. Astropy's warnings about
    non-standard but readable cards are dropped here: the header is what the file holds, and
    the caller cannot act on them.
    """
    try:
        text = raw.decode("ascii")
    except UnicodeDecodeError as exc:
        raise CorruptFileError(
            f"{where}: header contains non-ASCII byte {raw[exc.start]:#04x} at offset "
            f"{exc.start}; the file is damaged or not FITS"
        ) from None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", VerifyWarning)
            warnings.simplefilter("ignore", AstropyUserWarning)
            return fits.Header.fromstring(text)
    except (ValueError, KeyError, IndexError) as exc:
        raise CorruptFileError(f"{where}: header cannot be parsed: {exc}") from exc


def _get(header: fits.Header, key: str, default: Any = None) -> Any:
    """``header.get`` with card-value parse warnings silenced (values are parsed lazily)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", VerifyWarning)
        warnings.simplefilter("ignore", AstropyUserWarning)
        try:
            return header.get(key, default)
        except (ValueError, KeyError, VerifyError):
            # An unparsable value is as good as none: required keys are then refused.
            return default


def _int_key(header: fits.Header, key: str, where: str, default: int | None = None) -> int:
    value = _get(header, key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value is None:
        raise CorruptFileError(f"{where}: required keyword {key} is missing or not an integer")
    return value


def _count_key(header: fits.Header, key: str, where: str, default: int | None = None) -> int:
    """A NAXIS/TFIELDS/ZNAXIS value: it numbers keywords, so the standard bounds it."""
    value = _int_key(header, key, where, default)
    if not 0 <= value <= MAX_FIELDS:
        raise CorruptFileError(f"{where}: {key} = {value} is out of range (0 to {MAX_FIELDS})")
    return value


def _describe_hdu(
    header: fits.Header, position: int, header_offset: int, header_size: int, where: str
) -> dict[str, Any]:
    bitpix = _int_key(header, "BITPIX", where)
    if bitpix not in BITPIX_DTYPES:
        raise CorruptFileError(f"{where}: BITPIX = {bitpix} is not a valid FITS value")
    naxis = _count_key(header, "NAXIS", where)
    axes = [_int_key(header, f"NAXIS{i}", where) for i in range(1, naxis + 1)]
    if any(n < 0 for n in axes):
        raise CorruptFileError(f"{where}: negative axis length in NAXISn = {axes}")
    # Negative counts would make the data size negative and the walk go backwards.
    pcount = _int_key(header, "PCOUNT", where, 0)
    gcount = _int_key(header, "GCOUNT", where, 1)
    if pcount < 0 or gcount < 0:
        raise CorruptFileError(
            f"{where}: PCOUNT = {pcount} and GCOUNT = {gcount} must not be negative"
        )
    groups = bool(_get(header, "GROUPS", False)) and naxis > 0 and axes[0] == 0
    if naxis == 0:
        data_size = 0
    else:
        elements = math.prod(axes[1:] if groups else axes)
        data_size = abs(bitpix) // 8 * gcount * (pcount + elements)

    xtension = _get(header, "XTENSION")
    xtension = xtension.strip().upper() if isinstance(xtension, str) else None
    if position == 0:
        kind = "groups" if groups else "primary"
    elif xtension == "IMAGE":
        kind = "image"
    elif xtension in ("BINTABLE", "A3DTABLE"):
        kind = "compimage" if _get(header, "ZIMAGE", False) is True else "bintable"
    elif xtension == "TABLE":
        kind = "table"
    else:
        kind = (xtension or "unknown").lower()

    name = _get(header, "EXTNAME")
    ver = _get(header, "EXTVER", 1)
    hdu: dict[str, Any] = {
        "index": position,
        "name": name.strip().upper()
        if isinstance(name, str)
        else ("PRIMARY" if position == 0 else ""),
        "ver": ver if isinstance(ver, int) and not isinstance(ver, bool) else 1,
        "kind": kind,
        "header_offset": header_offset,
        "header_size": header_size,
        "data_offset": header_offset + header_size,
        "data_size": data_size,
    }
    if kind in ("primary", "image"):
        hdu["shape"] = axes[::-1]
        hdu["dtype"] = BITPIX_DTYPES[bitpix]
        hdu["bitpix"] = bitpix
        _add_scaling(hdu, header, where, "BSCALE", "BZERO", "BLANK")
    elif kind in ("bintable", "compimage"):
        if naxis != 2:
            raise CorruptFileError(f"{where}: a BINTABLE must have NAXIS = 2, not {naxis}")
        hdu["naxis1"], hdu["naxis2"] = axes
        hdu["pcount"] = pcount
        hdu["theap"] = _int_key(header, "THEAP", where, axes[0] * axes[1])
        if not axes[0] * axes[1] <= hdu["theap"] <= axes[0] * axes[1] + pcount:
            raise CorruptFileError(
                f"{where}: THEAP = {hdu['theap']} puts the heap outside the table's data "
                f"(rows end at byte {axes[0] * axes[1]}, PCOUNT = {pcount})"
            )
        hdu["columns"] = _columns(header, where, axes[0])
        if kind == "compimage":
            _describe_compressed(hdu, header, where)
    elif kind == "table":
        if naxis != 2:
            raise CorruptFileError(f"{where}: an ASCII TABLE must have NAXIS = 2, not {naxis}")
        hdu["naxis1"], hdu["naxis2"] = axes
        names = [
            _get(header, f"TTYPE{i}") for i in range(1, _count_key(header, "TFIELDS", where) + 1)
        ]
        hdu["columns"] = [{"name": str(n).strip() if n is not None else ""} for n in names]
    return hdu


def _real_key(header: fits.Header, key: str, where: str, default: float) -> int | float:
    """A scaling value: a finite real number (the index is JSON, and pixels are scaled by it)."""
    value = _get(header, key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise CorruptFileError(f"{where}: {key} = {value!r} is not a finite real number")
    return value


def _add_scaling(hdu: dict[str, Any], header: fits.Header, where: str, *keys: str) -> None:
    bscale = _real_key(header, keys[0], where, 1)
    bzero = _real_key(header, keys[1], where, 0)
    if bscale != 1:
        hdu["bscale"] = bscale
    if bzero != 0:
        hdu["bzero"] = bzero
    blank = _get(header, keys[2])
    if isinstance(blank, int) and not isinstance(blank, bool):
        hdu["blank"] = blank


def _columns(header: fits.Header, where: str, row_bytes: int) -> list[dict[str, Any]]:
    columns = []
    offset = 0
    for i in range(1, _count_key(header, "TFIELDS", where, 0) + 1):
        tform = _get(header, f"TFORM{i}")
        if not isinstance(tform, str):
            raise CorruptFileError(f"{where}: column {i} has no TFORM{i}")
        try:
            layout = parse_tform(tform)
        except ValueError as exc:
            raise CorruptFileError(f"{where}: {exc}") from None
        name = _get(header, f"TTYPE{i}")
        layout["name"] = str(name).strip() if name is not None else f"col{i}"
        layout["offset"] = offset
        offset += layout["width"]
        columns.append(layout)
    if offset != row_bytes:
        raise CorruptFileError(
            f"{where}: column formats add up to {offset} bytes per row but NAXIS1 = {row_bytes}"
        )
    return columns


def _describe_compressed(hdu: dict[str, Any], header: fits.Header, where: str) -> None:
    znaxis = _count_key(header, "ZNAXIS", where)
    zshape = [_int_key(header, f"ZNAXIS{i}", where) for i in range(1, znaxis + 1)]
    # Default tiling (FITS standard): one image row per tile.
    ztile = [
        _int_key(header, f"ZTILE{i}", where, zshape[0] if i == 1 else 1)
        for i in range(1, znaxis + 1)
    ]
    if any(n < 0 for n in zshape) or any(t < 1 for t in ztile):
        raise CorruptFileError(
            f"{where}: compressed image of ZNAXISn = {zshape} in tiles of ZTILEn = {ztile}: "
            "axis lengths must not be negative and tile sizes must be at least 1"
        )
    # One table row per tile (FITS standard): fewer rows than tiles leave pixels nowhere.
    tiles = math.prod(-(-n // t) for n, t in zip(zshape, ztile, strict=True))
    if hdu["naxis2"] < tiles:
        raise CorruptFileError(
            f"{where}: compressed image of ZNAXISn = {zshape} in tiles of ZTILEn = {ztile} "
            f"needs {tiles} tile rows but the table has NAXIS2 = {hdu['naxis2']}"
        )
    zbitpix = _int_key(header, "ZBITPIX", where)
    if zbitpix not in BITPIX_DTYPES:
        raise CorruptFileError(f"{where}: ZBITPIX = {zbitpix} is not a valid FITS value")
    zcmptype = _get(header, "ZCMPTYPE")
    if not isinstance(zcmptype, str):
        raise CorruptFileError(f"{where}: compressed image without ZCMPTYPE")
    settings: dict[str, Any] = {}
    for i in range(1, 1000):
        zname = _get(header, f"ZNAME{i}")
        if zname is None:
            break
        value = _get(header, f"ZVAL{i}")
        if not isinstance(value, str | int | float | None) or (
            isinstance(value, float) and not math.isfinite(value)
        ):
            raise CorruptFileError(f"{where}: ZVAL{i} = {value!r} is not a number or a string")
        settings[str(zname).strip().upper()] = value
    hdu.update(
        shape=zshape[::-1],
        dtype=BITPIX_DTYPES[zbitpix],
        bitpix=zbitpix,
        tile_shape=ztile[::-1],
        zcmptype=zcmptype.strip().upper(),
        zsettings=settings,
    )
    if not any(c["name"].upper() == "COMPRESSED_DATA" for c in hdu["columns"]):
        raise CorruptFileError(f"{where}: compressed image without a COMPRESSED_DATA column")
    zquantiz = _get(header, "ZQUANTIZ")
    if isinstance(zquantiz, str):
        hdu["zquantiz"] = zquantiz.strip().upper()
    zdither = _get(header, "ZDITHER0")
    if isinstance(zdither, int):
        hdu["zdither0"] = zdither
    zblank = _get(header, "ZBLANK")
    if isinstance(zblank, int) and not isinstance(zblank, bool):
        hdu["zblank"] = zblank
    # The image's BSCALE/BZERO/BLANK are carried over as such in the table header.
    _add_scaling(hdu, header, where, "BSCALE", "BZERO", "BLANK")
    if hdu["name"] == "":
        hdu["name"] = "COMPRESSED_IMAGE"


def _has_end_card(block: bytes | bytearray) -> bool:
    return any(block[i : i + 8] == b"END     " for i in range(0, len(block), CARD))


class HeaderReads(Protocol):
    """What the scan needs of a file: a local file, or a :class:`~butler.io.source.RangeFile`
    over a byte source."""

    def read(self, size: int, /) -> bytes: ...

    def seek(self, offset: int, /) -> int: ...


def _read_header_blocks(f: HeaderReads, head: bytes, offset: int, size: int, where: str) -> bytes:
    """The header blocks starting with ``head`` (read at ``offset``), up to the END card's.

    Every read must return a whole block: a short one is the end of the file, so a header cut
    at a block boundary is reported as truncated rather than read again and again.
    """
    raw = bytearray()
    block = head
    while True:
        raw += block
        if len(block) < BLOCK:
            raise CorruptFileError(
                f"{where} has no END card before the end of the file at byte "
                f"{offset + len(raw)} (the file has {size} bytes); the file is truncated"
            )
        if _has_end_card(block):
            return bytes(raw)
        if len(raw) >= MAX_HEADER_BYTES:
            raise CorruptFileError(
                f"{where} has no END card in its first {len(raw)} bytes "
                f"({len(raw) // CARD} cards, the most this reader accepts); the file is "
                "damaged or not FITS"
            )
        block = f.read(BLOCK)


def _scan(f: HeaderReads, size: int, name: str) -> dict[str, Any]:
    """Walk the HDUs of an open FITS file, reading only header blocks."""
    head = f.read(BLOCK)
    if head[:2] == b"\x1f\x8b":
        raise CorruptFileError(
            f"{name}: file is gzip-compressed; decompress it before storing it (a compressed "
            "stream has no byte offsets to read an HDU from). For compressed storage use "
            "tile compression (formatter 'fits-image-compressed')."
        )
    if not head.startswith(b"SIMPLE  ="):
        raise CorruptFileError(
            f"{name}: not a FITS file (the first card is {head[:CARD].decode('latin-1')!r}, "
            "a FITS file starts with SIMPLE  =)"
        )
    hdus: list[dict[str, Any]] = []
    offset = 0
    while True:
        position = len(hdus)
        if position >= MAX_HDUS:
            raise CorruptFileError(
                f"{name}: more than {MAX_HDUS} HDUs (the next at byte {offset}); the butler "
                "stores files of at most that many HDUs"
            )
        where = f"{name}: HDU {position} (header at byte {offset})"
        raw = _read_header_blocks(f, head, offset, size, where)
        # Only the last block holds an END card (the earlier ones were checked).
        end_card = next(
            i for i in range(len(raw) - BLOCK, len(raw), CARD) if raw[i : i + 8] == b"END     "
        )
        header = parse_header(raw[: end_card + CARD], where)
        hdu = _describe_hdu(header, position, offset, len(raw), where)
        hdus.append(hdu)
        data_end = hdu["data_offset"] + hdu["data_size"]
        if data_end > size:
            label = f"HDU {position}" + (f" ({hdu['name']})" if hdu["name"] else "")
            raise CorruptFileError(
                f"{name}: {label} data ends at byte {data_end} but the file has {size} bytes; "
                "the file is truncated"
            )
        # The last HDU's padding is often missing in files from sloppy writers; that loses
        # nothing, so only a next header that starts and then stops is an error. The offset
        # always grows (a header is at least one block, data sizes are checked >= 0), so the
        # walk ends.
        offset = hdu["data_offset"] + padded(hdu["data_size"])
        if offset >= size:
            break
        f.seek(offset)
        head = f.read(BLOCK)
        if not head.startswith(b"XTENSION="):
            index: dict[str, Any] = {"format": "fits", "size": size, "hdus": hdus}
            if head.strip(b"\x00 "):
                # astropy also ignores such bytes (with a warning); record them so a
                # checker can see them, but the HDUs before them are intact.
                index["trailing_bytes"] = size - offset
            return index
    return {"format": "fits", "size": size, "hdus": hdus}


def index_fits(path: Path | str) -> dict[str, Any]:
    """Offset index of the FITS file at ``path`` (see the module doc for the layout).

    Raises :class:`~butler.errors.CorruptFileError` naming the file and the problem if it is
    not FITS, is truncated, or has an unreadable header.
    """
    path = Path(path)
    size = path.stat().st_size
    with path.open("rb") as f:
        return _scan(f, size, str(path))


#: Bytes fetched per read when indexing through a :class:`ByteSource`: a header of up to
#: this many blocks (nearly all of them) costs one request.
SOURCE_READ = 4 * BLOCK


def index_fits_source(source: ByteSource) -> dict[str, Any]:
    """:func:`index_fits` through a :class:`ByteSource` (for files stored without an index).

    Each HDU whose header fits in :data:`SOURCE_READ` bytes costs one request of at most
    that many bytes (fewer at the end of the file): the source's file reads that far ahead
    and serves the next blocks, and a next header inside them, from what it holds.
    """
    with source.open(read_ahead=SOURCE_READ) as f:
        return _scan(f, source.size, source.name)


def ensure_index(source: ByteSource, index: Mapping[str, Any] | None) -> Mapping[str, Any]:
    """The given FITS index, or one built by scanning ``source`` if none was recorded."""
    if index and index.get("format") == "fits" and index.get("hdus"):
        return index
    return index_fits_source(source)


def is_image_hdu(hdu: Mapping[str, Any]) -> bool:
    """True for an HDU holding an image with pixels (plain or tile-compressed)."""
    return (
        hdu.get("kind") in ("primary", "image", "compimage")
        and bool(hdu.get("shape"))
        and math.prod(hdu["shape"]) > 0
    )


def find_hdu(
    index: Mapping[str, Any], *names: str, ver: int | None = None
) -> Mapping[str, Any] | None:
    """The first HDU whose EXTNAME is one of ``names`` (case-insensitive), tried in order."""
    for name in names:
        for hdu in index["hdus"]:
            if hdu["name"] == name.upper() and (ver is None or hdu["ver"] == ver):
                return hdu  # type: ignore[no-any-return]
    return None


def hdu_header_range(hdu: Mapping[str, Any]) -> ByteRange:
    return (int(hdu["header_offset"]), int(hdu["header_size"]))


def read_header(source: ByteSource, hdu: Mapping[str, Any]) -> fits.Header:
    """The header of one HDU, fetched with a single range read located by the index."""
    raw = source.read(*hdu_header_range(hdu))
    return parse_header(raw, f"{source.name}: HDU {hdu['index']}")


def image_header(hdu: Mapping[str, Any], header: fits.Header) -> fits.Header:
    """The image header of an HDU: for a compressed image, the header it decompresses to."""
    if hdu.get("kind") != "compimage":
        return header
    from astropy.io.fits.hdu.compressed.header import _bintable_header_to_image_header

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", VerifyWarning)
        warnings.simplefilter("ignore", AstropyUserWarning)
        converted: fits.Header = _bintable_header_to_image_header(header)
    return converted


def wcs_from_header(header: fits.Header, where: str = "") -> WCS | None:
    """The celestial/pixel WCS of a 2-D image header, or None if it has none.

    Real telescope headers often make WCSLIB "fix" legacy keywords (``RADECSYS``, dates) and
    warn (``FITSFixedWarning``); the fixed WCS is the one we want, so those warnings are
    dropped. A header whose WCS cannot be built is logged and read without a WCS rather than
    making the pixels unreadable.
    """
    if not any(k in header for k in ("CTYPE1", "CRVAL1", "CD1_1", "PC1_1", "CDELT1")):
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FITSFixedWarning)
            # Old headers with malformed cards (DSS's SKEW) make WCS verify-and-fix them.
            warnings.simplefilter("ignore", VerifyWarning)
            wcs = WCS(header, naxis=2, relax=True)
    except Exception as exc:  # noqa: BLE001 - WCSLIB raises many unrelated types
        log.warning("%s: header WCS cannot be interpreted (%s); reading without a WCS", where, exc)
        return None
    return wcs


def decode_image(
    raw: bytes | memoryview, hdu: Mapping[str, Any], shape: Sequence[int]
) -> npt.NDArray[Any]:
    """Pixels of (part of) an image HDU from its on-disk bytes, scaled as astropy does.

    BZERO/BSCALE of "pseudo-unsigned" integers give unsigned arrays; other scaling, or a BLANK
    value in integer data, gives floats (float32 for 8/16-bit data, float64 for 32/64-bit)
    with the BLANK pixels set to NaN.
    """
    stored = np.dtype(hdu["dtype"])
    arr = np.frombuffer(raw, dtype=stored).reshape(tuple(shape))
    return apply_scaling(arr, hdu)


def apply_scaling(arr: npt.NDArray[Any], hdu: Mapping[str, Any]) -> npt.NDArray[Any]:
    """Native-order array with the HDU's BSCALE/BZERO/BLANK applied (see :func:`decode_image`)."""
    bscale = hdu.get("bscale", 1)
    bzero = hdu.get("bzero", 0)
    blank = hdu.get("blank")
    native = arr.astype(arr.dtype.newbyteorder("="), copy=True)
    if bscale == 1 and bzero == 0 and (blank is None or native.dtype.kind == "f"):
        return native
    kind, bits = native.dtype.kind, native.dtype.itemsize * 8
    if bscale == 1 and kind in "iu" and bzero == (-128 if bits == 8 else 1 << (bits - 1)):
        # Flipping the sign bit is exactly "add BZERO" for pseudo-unsigned (and int8) data.
        target = np.dtype(f"i{bits // 8}" if bits == 8 else f"u{bits // 8}")
        flip = np.array(1 << (bits - 1), dtype=f"u{bits // 8}")
        flipped: npt.NDArray[Any] = np.bitwise_xor(native.view(f"u{bits // 8}"), flip)
        return flipped.view(target)
    out: npt.NDArray[np.floating[Any]] = (
        native if kind == "f" else native.astype(np.float64 if bits > 16 else np.float32)
    )
    if bscale != 1:
        np.multiply(out, bscale, out=out)
    if bzero != 0:
        np.add(out, bzero, out=out)
    if blank is not None and kind in "iu":
        out[native == blank] = np.nan
    return out
