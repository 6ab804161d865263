"""FITS binary-table formatter for the ``Table`` storage class.

Written by astropy's FITS table writer: units go to ``TUNITn``, table ``meta`` to header cards,
and what FITS cards cannot express (column descriptions and meta, ``SkyCoord`` and other
mixin columns; ``Time`` is native FITS) goes to astropy's YAML block in the header, which
astropy reads back with its safe YAML loader (no arbitrary objects). Table metadata that
cannot be a header card (a nested dict, say) fails the write instead of being dropped with a
warning; use the ``parquet`` formatter for such tables.

Reading locates the table HDU in the offset index and fetches its header and data (heap
included) in one ``read_ranges`` call; the ``columns`` parameter then keeps the requested
columns. FITS tables are stored row by row, so unlike Parquet a column subset still reads the
table's bytes (but never other HDUs).
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

from astropy.io import fits
from astropy.io.fits.verify import VerifyWarning
from astropy.table import Column, Table
from astropy.utils.exceptions import AstropyUserWarning

from butler.errors import (
    ButlerError,
    CorruptFileError,
    StorageClassError,
    UnsupportedParameterError,
)
from butler.formatters.base import FileIndex, Formatter
from butler.formatters.fits_index import ensure_index, index_fits, padded, read_header
from butler.io.source import ByteSource

__all__ = ["FitsTableFormatter"]


def _empty_primary() -> bytes:
    """A minimal PRIMARY header, to make one extension's bytes a complete FITS file."""
    header = fits.PrimaryHDU().header
    header["EXTEND"] = True
    raw: bytes = header.tostring().encode("ascii")
    return raw + b" " * (padded(len(raw)) - len(raw))


class FitsTableFormatter(Formatter):
    """``astropy.table.Table`` <-> FITS BINTABLE; parameter ``columns`` selects columns."""

    name: ClassVar[str] = "fits-table"
    storage_class: ClassVar[str] = "Table"
    extension: ClassVar[str] = ".fits"
    components: ClassVar[frozenset[str]] = frozenset({"metadata"})
    # bbox and lazy apply to an image extension chosen with hdu.
    parameters: ClassVar[frozenset[str]] = frozenset({"columns", "hdu", "bbox", "lazy"})

    def write(self, obj: Any, path: Path) -> None:
        if not isinstance(obj, Table):
            raise StorageClassError(
                f"fits-table stores an astropy Table, got {type(obj).__name__}."
            )
        with warnings.catch_warnings():
            # astropy warns and skips meta it cannot store; a silent loss is not acceptable.
            warnings.simplefilter("error", AstropyUserWarning)
            warnings.simplefilter("error", VerifyWarning)
            if path.exists():
                raise FileExistsError(f"{path} exists; formatters only write new files")
            try:
                obj.write(path, format="fits")
            except (AstropyUserWarning, VerifyWarning, ValueError, TypeError) as exc:
                path.unlink(missing_ok=True)
                raise StorageClassError(
                    f"Table cannot be written as a FITS binary table ({exc}); nothing was "
                    "written. Flatten or remove that metadata, or store the table with "
                    "formatter 'parquet', which keeps nested metadata."
                ) from exc

    def index(self, path: Path) -> FileIndex:
        index = index_fits(path)
        self._table_hdu(index, str(path))  # refuse files without a table now
        return index

    def decoded_bytes(self, index: Mapping[str, Any]) -> int | None:
        """A bound of what the table HDU becomes in memory. Fixed-width cells take at most
        4 bytes per byte on disk (a character becomes a 4-byte code point). Each row of a
        variable-length array column (P, Q) may point at any part of the heap, the same
        part for every row, so a small file can stand for rows x heap bytes, 8 per byte for
        arrays of bits."""
        try:
            hdu = self._table_hdu(index, "the file")
            rows = int(hdu.get("naxis2") or 0)
            fixed = 4 * int(hdu.get("naxis1") or 0) * rows
            heap = int(hdu.get("pcount") or 0)
            arrays = sum(1 for c in hdu.get("columns") or () if c.get("code") in ("P", "Q"))
        except (ButlerError, KeyError, TypeError, ValueError, AttributeError):
            return None  # no table to read whole: the read itself will say so
        return fixed + arrays * rows * 8 * heap

    @staticmethod
    def _table_hdu(index: Mapping[str, Any], name: str) -> Mapping[str, Any]:
        for hdu in index["hdus"]:
            if hdu["kind"] in ("bintable", "table"):
                return hdu  # type: ignore[no-any-return]
        kinds = ", ".join(f"{h['index']}:{h['kind']}" for h in index["hdus"])
        raise CorruptFileError(f"{name}: no table HDU in the file (HDUs: {kinds})")

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
        idx = ensure_index(source, index)
        if params.get("hdu") is not None:
            # Any extension of the file: another table, an image (an array), a header.
            from butler.formatters.fits_image import read_extension, select_hdu

            chosen = select_hdu(idx, params["hdu"], source.name)
            return read_extension(source, chosen, component, params)
        hdu = self._table_hdu(idx, source.name)
        if params.get("bbox") is not None or params.get("lazy"):
            raise UnsupportedParameterError(
                f"{source.name}: 'bbox' and 'lazy' read an image extension chosen with 'hdu'; "
                "a table is read whole or by 'columns'"
            )
        if component == "metadata":
            return read_header(source, hdu)
        return read_table_hdu(source, hdu, params.get("columns"))

    @staticmethod
    def _column_names(columns: Any, available: Sequence[str], name: str) -> list[str]:
        if isinstance(columns, str):
            columns = [columns]
        if not isinstance(columns, Sequence) or not all(isinstance(c, str) for c in columns):
            raise UnsupportedParameterError(
                f"parameter 'columns' must be a list of column names, got {columns!r}."
            )
        missing = [c for c in columns if c not in available]
        if missing:
            raise UnsupportedParameterError(
                f"{name}: no column(s) {missing} in this table; available columns: "
                f"{', '.join(available)}."
            )
        return list(columns)


def read_table_hdu(source: ByteSource, hdu: Mapping[str, Any], columns: Any = None) -> Table:
    """One table HDU as an astropy ``Table``: its header and data (heap included) in one
    ``read_ranges`` call, then the ``columns`` asked for."""
    header, data = source.read_ranges(
        [
            (int(hdu["header_offset"]), int(hdu["header_size"])),
            (int(hdu["data_offset"]), int(hdu["data_size"])),
        ]
    )
    pad = b"\0" * (padded(len(data)) - len(data))
    stream = io.BytesIO(_empty_primary() + header + data + pad)
    try:
        with warnings.catch_warnings():
            # Real-world headers provoke "fixed" warnings; the values are what we want.
            warnings.simplefilter("ignore", VerifyWarning)
            table = Table.read(
                stream,
                format="fits",
                hdu=1,
                character_as_bytes=False,
                memmap=False,
                # Time columns come back as Time (as written), not as raw jd1/jd2 pairs.
                astropy_native=True,
            )
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CorruptFileError(
            f"{source.name}: astropy cannot read table HDU {hdu['index']}: {exc}"
        ) from exc
    for name in table.colnames:
        col = table[name]
        # FITS is big-endian; hand back native arrays, as the parquet formatter does.
        if isinstance(col, Column) and not col.dtype.isnative:
            table.replace_column(name, col.astype(col.dtype.newbyteorder("=")), copy=False)
    if columns is None:
        return table
    # Checked against the table, not the FITS columns: a mixin column (Time, SkyCoord)
    # may be stored as several FITS columns but is asked for by its table name.
    selected: Table = table[FitsTableFormatter._column_names(columns, table.colnames, source.name)]
    return selected
