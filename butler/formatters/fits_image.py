"""FITS formatters for the ``Image`` storage class, with byte-exact partial reads.

Files are written in the LSST layout: an empty PRIMARY HDU carrying the observation metadata,
then ``IMAGE`` (pixels, with the WCS and ``BUNIT``), ``MASK`` (``int32`` bit planes, plane
names as ``MP_<NAME> = bit`` cards) and ``VARIANCE``. :class:`CompressedFitsImageFormatter`
writes the same HDUs tile-compressed, losslessly.

Reading uses the file's offset index (:mod:`butler.formatters.fits_index`) so it asks the
:class:`~butler.io.source.ByteSource` for exactly the bytes it needs, all at once:

- ``metadata`` / ``wcs``: one range, the header of the PRIMARY / IMAGE HDU;
- a ``bbox`` cutout of an uncompressed HDU: one range per image row of the box (a
  full-width box is one range), for all requested planes in a single ``read_ranges`` call;
- a ``bbox`` cutout of a tile-compressed HDU: the table rows describing the tiles that
  intersect the box, then the compressed bytes of just those tiles (two calls).

Files from other telescopes are read too. Raws ingested with ``butler ingest-raws`` carry
their layout in the offset index (``index["raw"]``, see :mod:`butler.translators`): which
HDU holds the image, variance (or sigma, or inverse variance) and mask, how source flags map
onto the common mask planes (:mod:`butler.formatters.planes`), and the gain and read noise
that estimate a variance the file does not store. Without a recorded layout the pixels come
from the HDU called ``IMAGE`` or ``SCI`` (or the first HDU with pixels), the mask from
``MASK`` or ``DQ``, the variance from ``VARIANCE``/``VAR`` or, squared, from ``ERR``; what is
missing is NaN variance / zero mask.

The ``sky`` parameter (:mod:`butler.formatters.sky`) reads the image header first, places
the region through its WCS, then reads that pixel box exactly as ``bbox`` does. The
``obsinfo`` component is the translated observation (from the index when ingest recorded
it, else from the headers).
"""

from __future__ import annotations

import io
import logging
import math
import re
import sys
import threading
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt
from astropy import units as u
from astropy.io import fits
from astropy.io.fits.verify import VerifyWarning
from astropy.wcs import WCS

from butler.errors import (
    ButlerError,
    CorruptFileError,
    StorageClassError,
    UnsupportedParameterError,
)
from butler.formatters.base import FileIndex, Formatter
from butler.formatters.fits_index import (
    apply_scaling,
    decode_image,
    ensure_index,
    find_hdu,
    hdu_header_range,
    image_header,
    index_fits,
    is_image_hdu,
    padded,
    parse_header,
    read_header,
    wcs_from_header,
)
from butler.formatters.planes import common_mask, estimate_variance, to_variance
from butler.formatters.sky import parse_sky, sky_box
from butler.image import DEFAULT_MASK_PLANES, Box, Image, as_box
from butler.io.source import ByteRange, ByteSource, LocalFileSource, merge_ranges
from butler.units import human_size

__all__ = ["CompressedFitsImageFormatter", "FitsImageFormatter"]

log = logging.getLogger(__name__)

# Cards that describe how a header's HDU is stored, not the observation; they are dropped from
# the metadata so that writing it into a new HDU cannot contradict that HDU's own structure.
# (Metadata comes from the PRIMARY header, which is never tile-compressed, so Z* cards such as
# ZD or ZPT are observation metadata and are kept.)
_STRUCTURAL = re.compile(
    r"^(SIMPLE|BITPIX|NAXIS\d*|EXTEND|XTENSION|PCOUNT|GCOUNT|GROUPS|EXTNAME|EXTVER|EXTLEVEL|"
    r"BSCALE|BZERO|BLANK|CHECKSUM|DATASUM)$"
)
_PLANE_NAME = re.compile(r"^[A-Z][A-Z0-9_]*$")


def _metadata_header(header: fits.Header) -> fits.Header:
    out = header.copy()
    for key in {k for k in out if _STRUCTURAL.match(k)}:
        del out[key]
    return out


def _bunit(unit: u.UnitBase | None) -> str | None:
    if unit is None:
        return None
    try:
        text: str = unit.to_string("fits")
    except ValueError:
        # Not a FITS-standard unit (e.g. electron): astropy's generic form still reads back.
        text = unit.to_string()
    return text


# BUNIT spellings common in archive headers that astropy does not parse.
_UNIT_ALIASES = {
    "COUNTS": "count",
    "COUNTS/S": "count/s",
    "ELECTRONS": "electron",
    "ELECTRONS/S": "electron/s",
    "DN": "adu",
    "DN/S": "adu/s",
    "ADU": "adu",  # how HSC, SuprimeCam and many CCD cameras spell it
    "ADU/S": "adu/s",
}


def _parse_unit(text: Any, where: str) -> u.UnitBase | None:
    """The unit a BUNIT card names, or None (logged) if astropy cannot interpret it."""
    if not isinstance(text, str) or not text.strip():
        return None
    text = text.strip()
    candidates = [(text, "fits"), (text, None)]
    if text.upper() in _UNIT_ALIASES:
        candidates.append((_UNIT_ALIASES[text.upper()], None))
    for candidate, fmt in candidates:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", u.UnitsWarning)
                unit: u.UnitBase = u.Unit(candidate, format=fmt)
        except ValueError:
            continue
        return unit
    log.warning("%s: BUNIT = %r is not a unit astropy knows; reading without a unit", where, text)
    return None


def _two_d(shape: Sequence[int], where: str) -> tuple[int, int]:
    if len(shape) < 2 or any(n != 1 for n in shape[:-2]):
        raise StorageClassError(
            f"{where}: pixels have shape {tuple(shape)}; the Image storage class is 2-D "
            "(read such files with the 'npy'/'Array' storage class instead)"
        )
    return int(shape[-2]), int(shape[-1])


# ----------------------------------------------------------------------------------------
# Which HDU holds what


@dataclass
class _Layout:
    """Which HDU holds what, and how to turn each into the common model's plane."""

    primary: Mapping[str, Any]
    image: Mapping[str, Any]
    mask: Mapping[str, Any] | None
    variance: Mapping[str, Any] | None
    variance_kind: str
    mask_is_lsst: bool
    shape: tuple[int, int]
    raw: Mapping[str, Any] | None = None
    """The ``raw`` layout recorded at ingest (see :mod:`butler.translators`), if any."""

    @property
    def mask_mapping(self) -> tuple[dict[int, str], dict[int, str]] | None:
        """(bits, values) naming the source mask's flags, when ingest recorded them."""
        if self.raw is None or self.mask_is_lsst:
            return None
        bits = {int(k): str(v) for k, v in (self.raw.get("mask_bits") or {}).items()}
        values = {int(k): str(v) for k, v in (self.raw.get("mask_values") or {}).items()}
        return bits, values

    @classmethod
    def of(cls, index: Mapping[str, Any], name: str) -> _Layout:
        raw = index.get("raw")
        if isinstance(raw, Mapping) and isinstance(raw.get("layout"), Mapping):
            return cls._recorded(index, raw["layout"], name)
        hdus = index["hdus"]
        image = next(
            (
                h
                for h in (find_hdu(index, "IMAGE"), find_hdu(index, "SCI"))
                if h is not None and is_image_hdu(h)
            ),
            None,
        ) or next((h for h in hdus if is_image_hdu(h)), None)
        if image is None:
            described = ", ".join(f"{h['index']}:{h['name'] or '?'}({h['kind']})" for h in hdus)
            raise CorruptFileError(f"{name}: no HDU holds image pixels (HDUs: {described})")
        shape = _two_d(image["shape"], f"{name}: HDU {image['index']}")
        # HST/JWST files pair SCI with DQ and ERR of the same EXTVER.
        ver = image["ver"] if image["name"] == "SCI" else None

        def pick(*names: str, ver: int | None = None) -> Mapping[str, Any] | None:
            for n in names:
                hdu = find_hdu(index, n, ver=ver)
                if hdu is not None and is_image_hdu(hdu):
                    _check_shape(hdu, shape, name)
                    return hdu
            return None

        mask = pick("MASK")
        mask_is_lsst = mask is not None
        if mask is None:
            mask = pick("DQ", ver=ver)
        variance = pick("VARIANCE", "VAR")
        stddev = variance is None
        if variance is None:
            variance = pick("ERR", ver=ver)
        return cls(
            primary=hdus[0],
            image=image,
            mask=mask,
            variance=variance,
            variance_kind="stddev" if stddev else "variance",
            mask_is_lsst=mask_is_lsst,
            shape=shape,
        )

    @classmethod
    def _recorded(cls, index: Mapping[str, Any], layout: Mapping[str, Any], name: str) -> _Layout:
        hdus = index["hdus"]

        def hdu_at(role: str) -> Mapping[str, Any] | None:
            position = layout.get(role)
            if position is None:
                return None
            if not isinstance(position, int) or not 0 <= position < len(hdus):
                raise CorruptFileError(
                    f"{name}: the recorded raw layout puts {role} in HDU {position!r}, but the "
                    f"file has {len(hdus)} HDUs; the offset index is damaged (re-ingest the file)"
                )
            hdu: Mapping[str, Any] = hdus[position]
            return hdu

        image = hdu_at("image")
        if image is None or not is_image_hdu(image):
            raise CorruptFileError(f"{name}: the recorded raw layout names no image HDU")
        shape = _two_d(image["shape"], f"{name}: HDU {image['index']}")
        variance, mask = hdu_at("variance"), hdu_at("mask")
        for hdu in (variance, mask):
            if hdu is not None:
                _check_shape(hdu, shape, name)
        return cls(
            primary=hdu_at("metadata") or hdus[0],
            image=image,
            mask=mask,
            variance=variance,
            variance_kind=str(layout.get("variance_kind") or "variance"),
            mask_is_lsst=bool(layout.get("mask_is_lsst")),
            shape=shape,
            raw=layout,
        )


def _check_shape(hdu: Mapping[str, Any], shape: tuple[int, int], name: str) -> None:
    if tuple(hdu["shape"][-2:]) != shape:
        raise CorruptFileError(
            f"{name}: HDU {hdu['index']} ({hdu['name'] or 'unnamed'}) has shape {hdu['shape']} "
            f"but the image has shape {list(shape)}"
        )


# ----------------------------------------------------------------------------------------
# Reading pixels


class _Batch:
    """Ranges collected from several readers, fetched with one ``read_ranges`` call."""

    def __init__(self) -> None:
        self.ranges: list[ByteRange] = []
        self.results: list[bytes] = []

    def add(self, ranges: Sequence[ByteRange]) -> slice:
        start = len(self.ranges)
        self.ranges.extend(ranges)
        return slice(start, len(self.ranges))

    def fetch(self, source: ByteSource) -> None:
        self.results = source.read_ranges(self.ranges) if self.ranges else []

    def get(self, handle: slice) -> list[bytes]:
        return self.results[handle]


class _PlainPixels:
    """A box of an uncompressed image HDU: one range per row, merged where rows touch."""

    def __init__(self, hdu: Mapping[str, Any], shape: tuple[int, int], box: Box) -> None:
        self.hdu, self.box = hdu, box
        itemsize = np.dtype(hdu["dtype"]).itemsize
        nx = shape[1]
        base = int(hdu["data_offset"])
        rows = [
            (base + (y * nx + box.x0) * itemsize, box.width * itemsize)
            for y in range(box.y0, box.y1)
        ]
        # Full-width boxes collapse to one range; keep the merged list in file order so the
        # concatenated bytes are the rows in order.
        self.ranges = merge_ranges(rows)
        self.handle = slice(0)

    def stage1(self, batch: _Batch) -> None:
        self.handle = batch.add(self.ranges)

    def stage2(self, batch: _Batch, first: _Batch) -> None:
        return None

    def result(self, first: _Batch, second: _Batch) -> npt.NDArray[Any]:
        # The merged runs, in file order, are exactly the box's rows one after the other.
        return decode_image(b"".join(first.get(self.handle)), self.hdu, self.box.shape)


_ELEMENT_DTYPES = {"B": "u1", "I": ">i2", "J": ">i4", "K": ">i8", "E": ">f4", "D": ">f8"}
_FIELD_DTYPES = {"B": "u1", "I": ">i2", "J": ">i4", "K": ">i8", "E": ">f4", "D": ">f8", "L": "u1"}


def _row_dtype(hdu: Mapping[str, Any]) -> np.dtype[Any]:
    """Structured dtype of one row of a compressed image's tile table."""
    names: list[str] = []
    formats: list[np.dtype[Any]] = []
    offsets: list[int] = []
    for col in hdu["columns"]:
        code = col["code"]
        if code in "PQ":
            fmt = np.dtype((">i4" if code == "P" else ">i8", (2,)))
        elif code in _FIELD_DTYPES:
            base = np.dtype(_FIELD_DTYPES[code])
            fmt = base if col["repeat"] == 1 else np.dtype((base, (col["repeat"],)))
        else:
            continue  # a column the tile decoder never looks at
        names.append(col["name"].upper())
        formats.append(fmt)
        offsets.append(col["offset"])
    return np.dtype(
        {"names": names, "formats": formats, "offsets": offsets, "itemsize": hdu["naxis1"]}
    )


class _TiledPixels:
    """A box of a tile-compressed image HDU: descriptors of the tiles it touches, then their
    compressed bytes, decoded with astropy's codecs exactly as ``CompImageHDU`` does."""

    def __init__(self, hdu: Mapping[str, Any], shape: tuple[int, int], box: Box) -> None:
        self.hdu, self.box, self.shape = hdu, box, shape
        tile = hdu["tile_shape"]
        if len(tile) < 2 or any(t != 1 for t in tile[:-2]):
            raise StorageClassError(f"tile shape {tile} of a 2-D image is not supported")
        self.ty, self.tx = int(tile[-2]), int(tile[-1])
        self.ntx = -(-shape[1] // self.tx)
        self.tiles_y = range(box.y0 // self.ty, (box.y1 - 1) // self.ty + 1)
        self.tiles_x = range(box.x0 // self.tx, (box.x1 - 1) // self.tx + 1)
        self.rows = [ty * self.ntx + tx for ty in self.tiles_y for tx in self.tiles_x]
        if hdu["naxis2"] < max(self.rows) + 1:
            raise CorruptFileError(
                f"compressed HDU {hdu['index']} has {hdu['naxis2']} tile rows, fewer than its "
                f"{shape} image and {tile} tiles need"
            )
        self.row_dtype = _row_dtype(hdu)
        self.handle = slice(0)
        self.heap_handle = slice(0)
        self.descriptors: npt.NDArray[Any] = np.zeros(0, dtype=self.row_dtype)
        self.heap_plan: list[tuple[str, int]] = []

    def stage1(self, batch: _Batch) -> None:
        base, width = int(self.hdu["data_offset"]), int(self.hdu["naxis1"])
        self.handle = batch.add(merge_ranges([(base + r * width, width) for r in self.rows]))

    def _heap_column(self, name: str) -> tuple[str, np.dtype[Any]] | None:
        for col in self.hdu["columns"]:
            if col["name"].upper() == name and col["code"] in "PQ":
                return name, np.dtype(_ELEMENT_DTYPES.get(col.get("element", "B"), "u1"))
        return None

    def stage2(self, batch: _Batch, first: _Batch) -> None:
        # Map each wanted tile row to its record inside the merged descriptor runs.
        base, width = int(self.hdu["data_offset"]), int(self.hdu["naxis1"])
        runs = merge_ranges([(base + r * width, width) for r in self.rows])
        blobs = first.get(self.handle)
        records = []
        for r in self.rows:
            off = base + r * width
            for (run_off, run_len), blob in zip(runs, blobs, strict=True):
                if run_off <= off < run_off + run_len:
                    records.append(blob[off - run_off : off - run_off + width])
                    break
        self.descriptors = np.frombuffer(b"".join(records), dtype=self.row_dtype)
        heap = int(self.hdu["data_offset"]) + int(self.hdu["theap"])
        ranges: list[ByteRange] = []
        self.heap_plan = []
        for i in range(len(self.rows)):
            chosen = self._pick_column(i)
            if chosen is None:
                raise CorruptFileError(
                    f"compressed HDU {self.hdu['index']}: tile row {self.rows[i]} has no data "
                    "in COMPRESSED_DATA and no GZIP_COMPRESSED_DATA/UNCOMPRESSED_DATA column"
                )
            name, dtype = chosen
            count, offset = (int(v) for v in self.descriptors[name][i])
            ranges.append((heap + offset, count * dtype.itemsize))
            self.heap_plan.append((name, i))
        self.heap_handle = batch.add(ranges)

    def _pick_column(self, i: int) -> tuple[str, np.dtype[Any]] | None:
        main = self._heap_column("COMPRESSED_DATA")
        if main is not None and int(self.descriptors["COMPRESSED_DATA"][i][0]) > 0:
            return main
        # Quantised float tiles that would not quantise are stored losslessly elsewhere.
        for name in ("GZIP_COMPRESSED_DATA", "UNCOMPRESSED_DATA"):
            col = self._heap_column(name)
            if col is not None:
                return col
        return main

    def result(self, first: _Batch, second: _Batch) -> npt.NDArray[Any]:
        from astropy.io.fits.hdu.compressed._quantization import DITHER_METHODS, Quantize
        from astropy.io.fits.hdu.compressed._tiled_compression import (
            _decompress_tile,
            _finalize_array,
            _header_to_settings,
            _update_tile_settings,
        )

        hdu = self.hdu
        zbitpix = int(hdu["bitpix"])
        algorithm = hdu["zcmptype"]
        # _header_to_settings reads ZCMPTYPE/ZBITPIX and ZNAMEn/ZVALn pairs from a header;
        # rebuild just those from the index so no header fetch is needed.
        pseudo: dict[str, Any] = {"ZCMPTYPE": algorithm, "ZBITPIX": zbitpix}
        for n, (key, value) in enumerate(hdu.get("zsettings", {}).items(), start=1):
            pseudo[f"ZNAME{n}"] = key
            pseudo[f"ZVAL{n}"] = value
        settings = _header_to_settings(pseudo)
        names: tuple[str, ...] = self.row_dtype.names or ()
        quantized = "ZSCALE" in names
        dither_method = DITHER_METHODS[hdu.get("zquantiz", "NO_DITHER")]
        dither_seed = int(hdu.get("zdither0", 0))
        zblank_header = hdu.get("zblank", hdu.get("blank"))
        stored_dtype = np.dtype(hdu["dtype"])
        ny, nx = self.shape
        y_lo, x_lo = self.tiles_y.start * self.ty, self.tiles_x.start * self.tx
        y_hi = min(ny, self.tiles_y.stop * self.ty)
        x_hi = min(nx, self.tiles_x.stop * self.tx)
        region = np.empty((y_hi - y_lo, x_hi - x_lo), dtype=stored_dtype.newbyteorder("="))
        blobs = second.get(self.heap_handle)
        for i, (tile_y, tile_x) in enumerate(
            (ty, tx) for ty in self.tiles_y for tx in self.tiles_x
        ):
            row = self.rows[i]
            ys = slice(tile_y * self.ty - y_lo, min(ny, (tile_y + 1) * self.ty) - y_lo)
            xs = slice(tile_x * self.tx - x_lo, min(nx, (tile_x + 1) * self.tx) - x_lo)
            tile_shape = (ys.stop - ys.start, xs.stop - xs.start)
            column, _ = self.heap_plan[i]
            _, element = self._heap_column(column) or (column, np.dtype("u1"))
            cdata = np.frombuffer(blobs[i], dtype=element)
            if column == "UNCOMPRESSED_DATA":
                tile = cdata.reshape(tile_shape)
            elif column == "GZIP_COMPRESSED_DATA":
                buffer = _decompress_tile(cdata, algorithm="GZIP_1")
                tile = _finalize_array(
                    buffer,
                    bitpix=zbitpix,
                    tile_shape=tile_shape,
                    algorithm="GZIP_1",
                    lossless=True,
                )
            else:
                settings = _update_tile_settings(settings, algorithm, tile_shape)
                if algorithm == "GZIP_2":
                    # GZIP_2 shuffles bytes; the element size comes from the plain inflate.
                    plain = np.asarray(_decompress_tile(cdata, algorithm="GZIP_1"))
                    settings["itemsize"] = plain.size // math.prod(tile_shape)
                buffer = _decompress_tile(cdata, algorithm=algorithm, **settings)
                tile = _finalize_array(
                    buffer,
                    bitpix=zbitpix,
                    tile_shape=tile_shape,
                    algorithm=algorithm,
                    lossless=not quantized,
                )
                zblank = self.descriptors["ZBLANK"][i] if "ZBLANK" in names else zblank_header
                blank_mask = (tile == zblank) if zblank is not None else None
                if quantized:
                    q = Quantize(
                        row=(row + dither_seed) if dither_method != -1 else 0,
                        dither_method=dither_method,
                        quantize_level=None,
                        bitpix=zbitpix,
                    )
                    tile = np.asarray(
                        q.decode_quantized(
                            tile, self.descriptors["ZSCALE"][i], self.descriptors["ZZERO"][i]
                        )
                    ).reshape(tile_shape)
                if blank_mask is not None and zbitpix < 0:
                    tile = np.array(tile, copy=True)
                    tile[blank_mask] = np.nan
            region[ys, xs] = tile
        b = self.box
        cut = region[b.y0 - y_lo : b.y1 - y_lo, b.x0 - x_lo : b.x1 - x_lo]
        # BSCALE/BZERO/BLANK of the image apply after decompression, as for a plain HDU.
        return apply_scaling(cut.astype(stored_dtype, copy=False), hdu)


def _pixels(
    hdu: Mapping[str, Any], shape: tuple[int, int], box: Box
) -> _PlainPixels | _TiledPixels:
    if hdu["kind"] == "compimage":
        return _TiledPixels(hdu, shape, box)
    return _PlainPixels(hdu, shape, box)


@dataclass
class _Request:
    """Everything one read needs: headers by role, pixel readers by plane."""

    headers: dict[str, Mapping[str, Any]] = field(default_factory=dict)
    planes: dict[str, _PlainPixels | _TiledPixels] = field(default_factory=dict)

    def run(self, source: ByteSource) -> tuple[dict[str, fits.Header], dict[str, Any]]:
        first, second = _Batch(), _Batch()
        header_handles = {
            role: first.add([hdu_header_range(hdu)]) for role, hdu in self.headers.items()
        }
        for plane in self.planes.values():
            plane.stage1(first)
        first.fetch(source)
        for plane in self.planes.values():
            plane.stage2(second, first)
        second.fetch(source)
        headers = {
            role: parse_header(first.get(h)[0], f"{source.name}: HDU {self.headers[role]['index']}")
            for role, h in header_handles.items()
        }
        arrays = {name: plane.result(first, second) for name, plane in self.planes.items()}
        return headers, arrays


# ----------------------------------------------------------------------------------------
# The formatters


class FitsImageFormatter(Formatter):
    """``Image`` <-> LSST-layout multi-extension FITS (PRIMARY, IMAGE, MASK, VARIANCE).

    Components: ``image``, ``variance``, ``mask`` (arrays), ``wcs`` (``astropy.wcs.WCS`` or
    None), ``metadata`` (FITS header). Parameter: ``bbox`` (:class:`~butler.image.Box` or
    ``(slice(y0, y1), slice(x0, x1))``), also applied to the components (a cutout's WCS is
    shifted so sky coordinates stay right).
    """

    name: ClassVar[str] = "fits-image"
    storage_class: ClassVar[str] = "Image"
    extension: ClassVar[str] = ".fits"
    components: ClassVar[frozenset[str]] = frozenset(
        {"image", "variance", "mask", "wcs", "metadata", "obsinfo"}
    )
    parameters: ClassVar[frozenset[str]] = frozenset({"bbox", "sky", "hdu", "lazy"})

    # -- writing ---------------------------------------------------------------------------

    def _plane_hdu(self, data: npt.NDArray[Any], header: fits.Header, role: str) -> fits.ImageHDU:
        return fits.ImageHDU(data=data, header=header)

    def write(self, obj: Any, path: Path) -> None:
        image = obj if isinstance(obj, Image) else Image.from_nddata(obj)
        image_hdr = fits.Header()
        if image.wcs is not None:
            image_hdr.update(image.wcs.to_header(relax=True))
        bunit = _bunit(image.unit)
        if bunit is not None:
            image_hdr["BUNIT"] = (bunit, "unit of the pixel values")
        image_hdr["EXTNAME"] = "IMAGE"
        mask_hdr = fits.Header()
        mask_hdr["EXTNAME"] = "MASK"
        for plane, bit in sorted(image.mask_planes.items(), key=lambda kv: kv[1]):
            if not _PLANE_NAME.match(plane):
                raise StorageClassError(
                    f"Mask plane name {plane!r} cannot be stored as a FITS keyword; use "
                    "upper-case letters, digits and '_' (e.g. {plane.upper()!r})."
                )
            # Long names need HIERARCH cards; asking for them avoids astropy's warning.
            key = f"MP_{plane}" if len(plane) <= 5 else f"HIERARCH MP_{plane}"
            mask_hdr[key] = (bit, "mask plane bit number")
        var_hdr = fits.Header()
        var_hdr["EXTNAME"] = "VARIANCE"
        with warnings.catch_warnings():
            # A metadata card that FITS cannot hold must fail the write, not vanish.
            warnings.simplefilter("error", VerifyWarning)
            hdus = fits.HDUList(
                [
                    fits.PrimaryHDU(header=_metadata_header(image.header)),
                    self._plane_hdu(np.asarray(image.data), image_hdr, "image"),
                    self._plane_hdu(np.asarray(image.mask, dtype=np.int32), mask_hdr, "mask"),
                    self._plane_hdu(image.variance, var_hdr, "variance"),
                ]
            )
            try:
                hdus.writeto(path, overwrite=False, output_verify="exception")
            except (VerifyWarning, fits.VerifyError, ValueError) as exc:
                raise StorageClassError(
                    f"Image cannot be written as FITS: {exc}. Check the header cards."
                ) from exc

    def index(self, path: Path) -> FileIndex:
        return index_fits(path)

    def decoded_bytes(self, index: Mapping[str, Any]) -> int | None:
        # Tile-compressed planes decode to their full shape, whatever the file's size.
        try:
            layout = _Layout.of(index, "the file")
        except (ButlerError, KeyError, TypeError, ValueError):
            return None  # no image to read whole: the read itself will say so
        return _whole_read_bytes(layout)

    # -- reading ---------------------------------------------------------------------------

    def read(
        self,
        source: ByteSource,
        index: Mapping[str, Any],
        *,
        component: str | None = None,
        parameters: Mapping[str, Any] | None = None,
    ) -> Any:
        self.check_request(component, parameters)
        params = parameters or {}
        if params.get("bbox") is not None and params.get("sky") is not None:
            raise UnsupportedParameterError(
                "give either bbox (pixels) or sky (a sky region), not both"
            )
        region = parse_sky(params["sky"]) if params.get("sky") is not None else None
        idx = ensure_index(source, index)
        if params.get("hdu") is not None:
            if region is not None:
                raise UnsupportedParameterError(
                    "parameter 'sky' reads the dataset's image; with 'hdu' give a pixel 'bbox'"
                )
            hdu = select_hdu(idx, params["hdu"], source.name)
            return read_extension(source, hdu, component, params)
        if component == "obsinfo":
            return self._obsinfo(source, idx)
        layout = _Layout.of(idx, source.name)
        if _is_lazy(params):
            if region is not None:
                raise UnsupportedParameterError(
                    "parameter 'sky' is not supported with 'lazy'; give a pixel 'bbox' (or "
                    "slice the lazy image)"
                )
            return self._read_lazy(source, layout, component, params)
        try:
            return self._read_planes(source, layout, component, params, region)
        except Exception as exc:  # noqa: BLE001 - only out-of-memory is handled, see below
            if not _out_of_memory(exc):
                raise
        # Explained out here: inside the handler, the traceback would still hold the arrays
        # already read, and the explanation itself could not be allocated.
        raise MemoryError(_too_large(source.name, layout))

    def _read_planes(
        self,
        source: ByteSource,
        layout: _Layout,
        component: str | None,
        params: Mapping[str, Any],
        region: Any,
    ) -> Any:
        where = f"{source.name}: HDU {layout.image['index']}"

        known: dict[str, fits.Header] = {}
        if region is not None:
            # The WCS places the region, so the image header comes first, alone; it is not
            # fetched again below.
            known["image"] = read_header(source, layout.image)
            sky_wcs = wcs_from_header(image_header(layout.image, known["image"]), where)
            box = sky_box(sky_wcs, layout.shape, region, source.name)
        elif params.get("bbox") is not None:
            box = as_box(params["bbox"], layout.shape)
        else:
            box = Box(0, 0, *layout.shape[::-1])
        cutout = region is not None or params.get("bbox") is not None

        estimate = (
            layout.variance is None
            and layout.raw is not None
            and layout.raw.get("gain") is not None
        )
        request = _Request()
        if component in (None, "metadata"):
            if "image" in known and layout.primary is layout.image:
                known["metadata"] = known["image"]  # a single-HDU file: one header for both
            else:
                request.headers["metadata"] = layout.primary
        if component in (None, "wcs") and "image" not in known:
            request.headers["image"] = layout.image
        if component is None and layout.mask is not None and layout.mask_is_lsst:
            request.headers["mask"] = layout.mask
        # An estimated variance is computed from the image pixels: those are its bytes.
        wanted = {
            "image": component in (None, "image") or (component == "variance" and estimate),
            "mask": component in (None, "mask"),
            "variance": component in (None, "variance"),
        }
        for plane, hdu in (
            ("image", layout.image),
            ("mask", layout.mask),
            ("variance", layout.variance),
        ):
            if hdu is not None and wanted[plane]:
                request.planes[plane] = _pixels(hdu, layout.shape, box)
        headers, arrays = request.run(source)
        headers.update(known)

        if component == "metadata":
            return self._metadata(source, layout, headers)
        wcs = None
        unit = None
        if "image" in headers:
            img_header = image_header(layout.image, headers["image"])
            wcs = wcs_from_header(img_header, where)
            if wcs is not None and cutout:
                wcs = _shift_wcs(wcs, box)
            unit = _parse_unit((layout.raw or {}).get("unit") or img_header.get("BUNIT"), where)
        if component == "wcs":
            return wcs
        variance = self._variance(layout, arrays, box)
        if component == "image":
            return arrays["image"]
        if component == "variance":
            return variance
        mask, planes = self._mask(layout, arrays.get("mask"), headers.get("mask"), box)
        if component == "mask":
            return mask
        return Image(
            arrays["image"],
            variance=variance,
            mask=mask,
            mask_planes=planes,
            wcs=wcs,
            unit=unit,
            header=self._metadata(source, layout, headers),
        )

    @staticmethod
    def _metadata(
        source: ByteSource, layout: _Layout, headers: Mapping[str, fits.Header]
    ) -> fits.Header:
        """The observation metadata: the metadata HDU's header, with its structural cards
        dropped. A tile-compressed metadata HDU is described by the image header astropy
        reconstructs from it (not the binary table's ZIMAGE/TFORM cards); a PRIMARY HDU
        that holds nothing but comments (fpack's, say) gives way to the image's header,
        which is where such files keep the observation (not in the LSST layout, whose
        PRIMARY is the metadata even when it is empty)."""
        header = headers["metadata"]
        hdu = layout.primary
        if hdu["kind"] == "compimage":
            return image_header(hdu, header)
        if hdu is not layout.image and not layout.mask_is_lsst and _only_structure(header):
            image_hdr = headers.get("image")
            if image_hdr is None:
                image_hdr = read_header(source, layout.image)
            return image_header(layout.image, image_hdr)
        return _metadata_header(header)

    def _read_lazy(
        self,
        source: ByteSource,
        layout: _Layout,
        component: str | None,
        params: Mapping[str, Any],
    ) -> Any:
        """The Image (or a component) with dask arrays as planes: headers are read now,
        pixels chunk by chunk when computed (see :func:`lazy_plane`)."""
        import dask.array as da

        box = (
            as_box(params["bbox"], layout.shape)
            if params.get("bbox") is not None
            else Box(0, 0, *layout.shape[::-1])
        )
        if component in ("metadata", "wcs"):
            return self._read_planes(source, layout, component, params, None)
        arrays: dict[str, Any] = {}
        for plane, hdu in (
            ("image", layout.image),
            ("mask", layout.mask),
            ("variance", layout.variance),
        ):
            if hdu is not None and component in (None, plane, "variance"):
                arrays[plane] = lazy_plane(source, hdu, layout.shape, box)
        if component == "image":
            return arrays["image"]
        variance = self._lazy_variance(layout, arrays, box)
        if component == "variance":
            return variance
        stored_mask = arrays.get("mask")
        mask_header = (
            read_header(source, layout.mask)
            if layout.mask is not None and layout.mask_is_lsst
            else None
        )
        if stored_mask is None:
            mask, planes = da.zeros(box.shape, dtype=np.int32, chunks=arrays["image"].chunks), None
        else:
            _, planes = self._mask(layout, np.zeros((1, 1), np.int32), mask_header, box)

            def to_mask(block: npt.NDArray[Any]) -> npt.NDArray[np.int32]:
                return self._mask(layout, block, mask_header, box)[0]

            mask = stored_mask.map_blocks(to_mask, dtype=np.int32)
        if component == "mask":
            return mask
        request = _Request(headers={"metadata": layout.primary, "image": layout.image})
        if layout.primary is layout.image:
            del request.headers["image"]  # a single-HDU file: one header for both
        headers = request.run(source)[0]
        headers.setdefault("image", headers["metadata"])
        img_header = image_header(layout.image, headers["image"])
        where = f"{source.name}: HDU {layout.image['index']}"
        wcs = wcs_from_header(img_header, where)
        if wcs is not None and params.get("bbox") is not None:
            wcs = _shift_wcs(wcs, box)
        unit = _parse_unit((layout.raw or {}).get("unit") or img_header.get("BUNIT"), where)
        return Image(
            arrays["image"],
            variance=variance,
            mask=mask,
            mask_planes=planes,
            wcs=wcs,
            unit=unit,
            header=self._metadata(source, layout, headers),
        )

    @staticmethod
    def _lazy_variance(layout: _Layout, arrays: Mapping[str, Any], box: Box) -> Any:
        import dask.array as da

        stored = arrays.get("variance")
        kind = layout.variance_kind
        if stored is not None:
            dtype = to_variance(np.zeros(0, stored.dtype), kind).dtype
            return stored.map_blocks(lambda block: to_variance(block, kind), dtype=dtype)
        raw = layout.raw or {}
        image = arrays["image"]
        if raw.get("gain") is not None:
            gain, noise, bias = raw["gain"], raw.get("read_noise"), float(raw.get("bias") or 0)
            dtype = estimate_variance(np.zeros(0, image.dtype), gain, noise, bias).dtype
            return image.map_blocks(
                lambda block: estimate_variance(block, gain, noise, bias), dtype=dtype
            )
        return da.full(  # type: ignore[no-untyped-call]
            box.shape, np.nan, dtype=np.float32, chunks=image.chunks
        )

    @staticmethod
    def _variance(
        layout: _Layout, arrays: Mapping[str, npt.NDArray[Any]], box: Box
    ) -> npt.NDArray[Any]:
        stored = arrays.get("variance")
        if stored is not None:
            return to_variance(stored, layout.variance_kind)
        raw = layout.raw or {}
        if raw.get("gain") is not None and "image" in arrays:
            return estimate_variance(
                arrays["image"], raw["gain"], raw.get("read_noise"), float(raw.get("bias") or 0)
            )
        return np.full(box.shape, np.nan, np.float32)

    @staticmethod
    def _mask(
        layout: _Layout,
        stored: npt.NDArray[Any] | None,
        header: fits.Header | None,
        box: Box,
    ) -> tuple[npt.NDArray[np.int32], dict[str, int] | None]:
        """The mask and its plane names (None: the LSST defaults)."""
        if stored is None:
            return np.zeros(box.shape, dtype=np.int32), None
        if header is not None:  # LSST layout: planes named by MP_ cards
            planes = {
                key[3:]: int(value)
                for key, value in header.items()
                if key.startswith("MP_") and isinstance(value, int)
            }
            return _as_int32(stored), planes
        mapping = layout.mask_mapping
        if mapping is not None:
            bits, values = mapping
            return common_mask(stored, DEFAULT_MASK_PLANES, bits, values), dict(DEFAULT_MASK_PLANES)
        # A DQ array whose bits nobody named: every set bit counts, with no plane names.
        return _as_int32(stored), {}

    def _obsinfo(self, source: ByteSource, index: Mapping[str, Any]) -> dict[str, Any]:
        """What was observed: recorded at ingest (no bytes read), else translated from the
        file's headers (one request for all of them)."""
        raw = index.get("raw")
        if isinstance(raw, Mapping) and isinstance(raw.get("observation"), Mapping):
            return dict(raw["observation"])
        from butler.translators import FileHeaders, TranslatorRegistry, choose_translator

        hdus = index["hdus"]
        blobs = source.read_ranges([hdu_header_range(h) for h in hdus])
        headers = [
            parse_header(blob, f"{source.name}: HDU {h['index']}")
            for blob, h in zip(blobs, hdus, strict=True)
        ]
        file_headers = FileHeaders(Path(source.name), index, headers)
        translator = choose_translator(TranslatorRegistry(), file_headers)
        units = translator.translate(file_headers)
        image = _Layout.of(index, source.name).image["index"]
        unit = next((u for u in units if u.layout.image.hdu == image), units[0])
        return unit.observation.to_dict()


# ----------------------------------------------------------------------------------------
# Any HDU, lazy planes, reads too large for memory


def describe_hdus(index: Mapping[str, Any]) -> str:
    return ", ".join(f"{h['index']}:{h['name'] or '?'}({h['kind']})" for h in index["hdus"])


def select_hdu(index: Mapping[str, Any], selector: Any, name: str) -> Mapping[str, Any]:
    """The HDU a ``hdu`` parameter names: a position, an EXTNAME or ``(EXTNAME, EXTVER)``."""
    hdus = index["hdus"]
    found: Mapping[str, Any] | None = None
    if isinstance(selector, int | np.integer) and not isinstance(selector, bool):
        found = hdus[int(selector)] if 0 <= int(selector) < len(hdus) else None
    elif isinstance(selector, str):
        found = find_hdu(index, selector.strip())
    elif (
        isinstance(selector, tuple)
        and len(selector) == 2
        and isinstance(selector[0], str)
        and isinstance(selector[1], int)
    ):
        found = find_hdu(index, selector[0].strip(), ver=selector[1])
    else:
        raise UnsupportedParameterError(
            f"parameter 'hdu' is an HDU position (int), an EXTNAME (str) or (EXTNAME, EXTVER); "
            f"got {selector!r}"
        )
    if found is None:
        raise UnsupportedParameterError(
            f"{name}: no HDU {selector!r}; the file's HDUs are {describe_hdus(index)}"
        )
    return found


def read_extension(
    source: ByteSource,
    hdu: Mapping[str, Any],
    component: str | None,
    params: Mapping[str, Any],
) -> Any:
    """One HDU of a FITS file, whatever the dataset's storage class: a table extension as an
    astropy ``Table``, an image extension as a (scaled) array, its header as ``metadata``.
    Only that HDU's bytes are read (located by the offset index)."""
    where = f"{source.name}: HDU {hdu['index']} ({hdu['name'] or 'unnamed'})"
    if component == "metadata":
        return image_header(hdu, read_header(source, hdu))
    if component is not None:
        raise UnsupportedParameterError(
            f"with parameter 'hdu' the only component is 'metadata' (the HDU's header), "
            f"not {component!r}"
        )
    if hdu["kind"] in ("bintable", "table"):
        if params.get("bbox") is not None or _is_lazy(params):
            raise UnsupportedParameterError(
                f"{where} is a table: 'bbox' and 'lazy' apply to images (use 'columns')"
            )
        from butler.formatters.fits_table import read_table_hdu

        return read_table_hdu(source, hdu, params.get("columns"))
    if not is_image_hdu(hdu):
        raise UnsupportedParameterError(
            f"{where} holds no pixels and no table (a {hdu['kind']} HDU with shape "
            f"{hdu.get('shape')}); read its header with the 'metadata' component"
        )
    if hdu["kind"] != "compimage" and len(hdu["shape"]) != 2 and params.get("bbox") is None:
        # A cube (or a 1-D spectrum): all of its data bytes, scaled; no bbox, not lazy.
        if _is_lazy(params):
            raise UnsupportedParameterError(f"{where} has shape {hdu['shape']}; 'lazy' is 2-D")
        size = math.prod(hdu["shape"]) * np.dtype(hdu["dtype"]).itemsize
        return decode_image(source.read(int(hdu["data_offset"]), size), hdu, hdu["shape"])
    if hdu["kind"] == "compimage" and len(hdu["shape"]) != 2 and params.get("bbox") is None:
        if _is_lazy(params):
            raise UnsupportedParameterError(f"{where} has shape {hdu['shape']}; 'lazy' is 2-D")
        return _compressed_cube(source, hdu, where)
    shape = _two_d(hdu["shape"], where)
    box = (
        as_box(params["bbox"], shape) if params.get("bbox") is not None else Box(0, 0, *shape[::-1])
    )
    if _is_lazy(params):
        return lazy_plane(source, hdu, shape, box)
    try:
        return read_box(source, hdu, shape, box)
    except Exception as exc:  # noqa: BLE001 - only out-of-memory is handled, see below
        if not _out_of_memory(exc):
            raise
    raise MemoryError(_too_large(where, None, hdu))


def _compressed_cube(source: ByteSource, hdu: Mapping[str, Any], where: str) -> Any:
    """A tile-compressed HDU that is not 2-D (a cube, a spectrum), whole and scaled: its
    header and data bytes (heap included) in one read, decoded by astropy's own
    ``CompImageHDU`` behind a minimal PRIMARY header. Tiles of a cube are not located one by
    one, as the 2-D cutouts' are: such a cube is read whole, as an uncompressed one is."""
    start = int(hdu["header_offset"])
    stop = int(hdu["data_offset"]) + padded(int(hdu["data_size"]))
    raw = fits.PrimaryHDU().header.tostring().encode("ascii") + source.read(start, stop - start)
    try:
        with fits.open(io.BytesIO(raw), memmap=False) as hdus:
            data = hdus[1].data
            return np.array(data) if data is not None else None
    except (OSError, ValueError, TypeError, KeyError) as exc:
        raise CorruptFileError(
            f"{where}: its tile-compressed data cannot be decoded: {exc}"
        ) from exc


def read_box(
    source: ByteSource, hdu: Mapping[str, Any], shape: tuple[int, int], box: Box
) -> npt.NDArray[Any]:
    """The scaled pixels of ``box`` in one image HDU (plain or tile-compressed)."""
    request = _Request()
    request.planes["pixels"] = _pixels(hdu, shape, box)
    pixels: npt.NDArray[Any] = request.run(source)[1]["pixels"]
    return pixels


def _is_lazy(params: Mapping[str, Any]) -> bool:
    lazy = params.get("lazy", False)
    if not isinstance(lazy, bool | np.bool_):
        raise UnsupportedParameterError(f"parameter 'lazy' is True or False, not {lazy!r}")
    return bool(lazy)


def _only_structure(header: fits.Header) -> bool:
    """True for a header with nothing but structure and commentary (an empty PRIMARY)."""
    return all(_STRUCTURAL.match(key) or key in ("COMMENT", "HISTORY", "") for key in header)


def _out_of_memory(exc: BaseException) -> bool:
    """True for a MemoryError, or an error caused by one: a remote read that runs out of
    memory in the event loop may surface as the HTTP client's payload error."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, MemoryError):
            return True
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return False


def _scaled_dtype(hdu: Mapping[str, Any]) -> np.dtype[Any]:
    """The dtype of an image HDU's pixels once BSCALE/BZERO/BLANK are applied."""
    return apply_scaling(np.zeros(0, np.dtype(hdu["dtype"])), hdu).dtype


def _plane_bytes(hdu: Mapping[str, Any]) -> int:
    return int(math.prod(hdu["shape"])) * _scaled_dtype(hdu).itemsize


def _whole_read_bytes(layout: _Layout) -> int:
    """Bytes the planes of a whole read take: get() makes all three planes, whether the
    file stores them or not (a mask of int32, a variance of float32 when absent)."""
    variance = (
        to_variance(np.zeros(0, _scaled_dtype(layout.variance)), layout.variance_kind)
        if layout.variance is not None
        else np.zeros(0, np.float32)
    )
    per_pixel = _scaled_dtype(layout.image).itemsize + variance.itemsize + 4
    return int(math.prod(layout.shape)) * per_pixel


def _too_large(name: str, layout: _Layout | None, hdu: Mapping[str, Any] | None = None) -> str:
    """What a MemoryError means for a whole-dataset read, and what to do instead."""
    if layout is not None:
        size, shape = _whole_read_bytes(layout), list(layout.shape)
    else:
        assert hdu is not None
        size, shape = _plane_bytes(hdu), list(hdu["shape"])
    return (
        f"{name}: not enough memory to read it whole: the pixels are {shape} and need "
        f"{human_size(size)} ({size} bytes) in memory. Read it lazily, chunk by chunk "
        "(parameters={'lazy': True}: the planes are dask arrays), or a part of it "
        "(parameters={'bbox': Box(x0, y0, width, height)} or {'sky': ...})"
    )


# Pixels a lazy plane reads per chunk: small enough that a few chunks in flight (dask runs
# one per core) stay far below memory, big enough that a remote chunk is one fair request.
LAZY_CHUNK_BYTES = 16 * 2**20


def lazy_plane(source: ByteSource, hdu: Mapping[str, Any], shape: tuple[int, int], box: Box) -> Any:
    """A dask array of ``box`` of one image HDU, read in bands of rows when computed.

    A band of an uncompressed HDU in a local file is memory-mapped for just as long as it
    is scaled (unmapped after, so resident memory stays at a few bands however large the
    file); a remote file's band is one ranged read, as a cutout. Tile-compressed HDUs are
    read by whole tile rows. BSCALE/BZERO/BLANK apply per band, as :func:`decode_image`.
    """
    import dask.array as da
    from dask.delayed import delayed

    out_dtype = _scaled_dtype(hdu)
    rows = max(1, LAZY_CHUNK_BYTES // max(1, box.width * out_dtype.itemsize))
    if hdu["kind"] == "compimage":
        tile_rows = int(hdu["tile_shape"][-2])
        rows = max(tile_rows, rows // tile_rows * tile_rows)
    local = source.path if isinstance(source, LocalFileSource) else None
    bands = []
    for y0 in range(box.y0, box.y1, rows):
        band = Box(box.x0, y0, box.width, min(box.y1, y0 + rows) - y0)
        read = delayed(_read_band, pure=True)(local, source, hdu, shape, band)
        bands.append(
            da.from_delayed(read, shape=band.shape, dtype=out_dtype)  # type: ignore[no-untyped-call]
        )
    if not bands:
        return da.zeros(box.shape, dtype=out_dtype)
    return da.concatenate(bands, axis=0)  # type: ignore[no-untyped-call]


def _check_loop_free(source: ByteSource) -> None:
    """Refuse to wait for a remote band while the event loop that would fetch it is itself
    waiting for this computation (``.compute()`` called inside an AsyncButler's loop): that
    would hang for ever. The loop thread is then blocked inside dask's scheduler."""
    loop_thread = getattr(source, "_loop_thread", None)
    if loop_thread is None or loop_thread == threading.get_ident():
        return  # no loop, or the source's own check applies (it raises a clear error)
    frame = sys._current_frames().get(loop_thread)
    while frame is not None:
        if "dask" in Path(frame.f_code.co_filename).parts:
            raise ButlerError(
                f"{source.name}: a lazy remote image is being computed inside the event loop "
                "that fetches its bytes, which would wait for ever; compute it in a thread "
                "(await asyncio.to_thread(array.compute)) or use the synchronous Butler"
            )
        frame = frame.f_back


def _read_band(
    local: Path | None,
    source: ByteSource,
    hdu: Mapping[str, Any],
    shape: tuple[int, int],
    band: Box,
) -> npt.NDArray[Any]:
    if local is None:
        _check_loop_free(source)
        return read_box(source, hdu, shape, band)
    if hdu["kind"] == "compimage":
        # The butler closed its source when the read returned; a band opens its own.
        own = LocalFileSource(local)
        try:
            return read_box(own, hdu, shape, band)
        finally:
            own.close()
    stored = np.dtype(hdu["dtype"])
    mapped = np.memmap(
        local,
        dtype=stored,
        mode="r",
        offset=int(hdu["data_offset"]) + band.y0 * shape[1] * stored.itemsize,
        shape=(band.height, shape[1]),
    )
    # apply_scaling copies; dropping the last reference to the map unmaps it right away.
    pixels = apply_scaling(mapped[:, band.x0 : band.x1], hdu)
    del mapped
    return pixels


def _shift_wcs(wcs: WCS, box: Box) -> WCS:
    # WCS.slice moves CRPIX (and SIP/distortion reference points) by the cutout origin.
    shifted: WCS = wcs.slice(box.slices)
    return shifted


def _as_int32(mask: npt.NDArray[Any]) -> npt.NDArray[np.int32]:
    if mask.dtype == np.int32:
        return mask
    if mask.dtype.kind not in "iu":
        raise CorruptFileError(f"mask HDU holds {mask.dtype} values; a mask holds integer bits")
    return mask.astype(np.int64).astype(np.uint32).view(np.int32)


class CompressedFitsImageFormatter(FitsImageFormatter):
    """The LSST layout with each plane losslessly tile-compressed.

    Integer planes (the mask, integer images) use ``RICE_1``; float planes use ``GZIP_2``
    without quantisation, so the pixels read back bit for bit. Square tiles (``tile_shape``,
    default 64x64, numpy order) keep a small cutout to a few tiles of each plane.
    """

    name: ClassVar[str] = "fits-image-compressed"
    extension: ClassVar[str] = ".fits"
    tile_shape: ClassVar[tuple[int, int]] = (64, 64)

    def _plane_hdu(self, data: npt.NDArray[Any], header: fits.Header, role: str) -> fits.ImageHDU:
        tiles = tuple(min(t, n) for t, n in zip(self.tile_shape, data.shape, strict=True))
        if data.dtype.kind == "f":
            # quantize_level=0 switches quantisation off: lossless byte-shuffled gzip.
            return fits.CompImageHDU(
                data=data,
                header=header,
                compression_type="GZIP_2",
                tile_shape=tiles,
                quantize_level=0.0,
            )
        if data.dtype.itemsize == 8:
            # RICE_1 handles at most 32-bit integers; gzip is lossless for any width.
            return fits.CompImageHDU(
                data=data, header=header, compression_type="GZIP_2", tile_shape=tiles
            )
        return fits.CompImageHDU(
            data=data, header=header, compression_type="RICE_1", tile_shape=tiles
        )
