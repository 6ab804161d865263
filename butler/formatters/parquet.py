"""Parquet formatter for the ``Table`` storage class (astropy Table <-> Parquet via pyarrow).

What astropy knows beyond the values (units, descriptions, formats, column and table ``meta``,
the exact numpy dtype, whether a column was masked, ``QTable`` vs ``Table``) travels as one
JSON document in the Arrow schema metadata under ``butler.table``; no pickle and no YAML tags
are involved, so reading a file from an untrusted source only ever builds arrays.

Columns may be numeric, boolean, string or bytes, of any fixed per-row shape (stored as nested
fixed-size lists), masked (stored as nulls), or ``Quantity``. Other mixin columns (``Time``,
``SkyCoord``) are refused with advice; the ``fits-table`` formatter stores those.

Index layout::

    {"format": "parquet", "size": <file bytes>,
     "footer_offset": <offset of the thrift FileMetaData>, "footer_size": <its length>,
     "num_rows": <rows>, "row_groups": <number of row groups>, "columns": [<names>]}

The ``columns`` read parameter fetches the footer (located by the index, one range) and then
only the column chunks of the requested columns (one ``read_ranges`` call).
"""

from __future__ import annotations

import io
import json
import struct
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from astropy import units as u
from astropy.table import Column, MaskedColumn, QTable, Table

from butler.errors import CorruptFileError, StorageClassError, UnsupportedParameterError
from butler.formatters.base import FileIndex, Formatter
from butler.formatters.structured import load_json_mapping, to_builtin
from butler.io.source import ByteRange, ByteSource

__all__ = ["ParquetFormatter"]

META_KEY = b"butler.table"
MAGIC = b"PAR1"
_ROW_GROUP_BYTES = 128 * 1024 * 1024
"""Target uncompressed size of a row group: large enough for efficient column scans, small
enough that a reader of a few rows of a huge table does not fetch gigabytes."""
_MAX_ROW_GROUP_ROWS = 1024 * 1024


# ----------------------------------------------------------------------------------------
# astropy -> Arrow


def _column_to_arrow(name: str, col: Any) -> tuple[pa.Array, dict[str, Any]]:
    info: dict[str, Any] = {}
    if isinstance(col, u.Quantity):
        info["quantity"] = True
        unit = col.unit
        values: Any = col.value
        mask = None
        description, fmt, meta = col.info.description, col.info.format, col.info.meta
    elif isinstance(col, Column):
        unit = col.unit
        values = col.data
        mask = np.ma.getmaskarray(col.data) if isinstance(col, MaskedColumn) else None
        if mask is not None:
            info["masked"] = True
            values = np.ma.getdata(col.data)
        description, fmt, meta = col.description, col.format, col.meta
    else:
        raise StorageClassError(
            f"Column {name!r} is a {type(col).__name__}, which the parquet formatter does not "
            "store; convert it to plain columns (e.g. a Time to its .mjd values, a SkyCoord to "
            "ra/dec in degrees) or use formatter 'fits-table'."
        )
    values = np.asarray(values)
    if values.dtype.kind in "OV":
        raise StorageClassError(
            f"Column {name!r} has dtype {values.dtype}; only numeric, boolean, string and bytes "
            "columns can be stored in Parquet by the butler."
        )
    if unit is not None:
        info["unit"] = unit.to_string()
    if description:
        info["description"] = str(description)
    if fmt:
        info["format"] = str(fmt)
    if meta:
        # Held in the metadata document at ["columns"][name]["meta"]: 3 levels down.
        info["meta"] = to_builtin(dict(meta), path=f"column {name!r} meta", depth=3)
    info["dtype"] = values.dtype.str
    if values.ndim > 1:
        info["shape"] = list(values.shape[1:])
    # Arrow wants native byte order.
    native = values.astype(values.dtype.newbyteorder("="), copy=False)
    flat = native.reshape(-1)
    flat_mask = mask.reshape(-1) if mask is not None else None
    array: pa.Array = pa.array(flat, mask=flat_mask)
    for size in reversed(values.shape[1:]):
        array = pa.FixedSizeListArray.from_arrays(array, size)
    return array, info


def table_to_arrow(table: Table) -> pa.Table:
    """Arrow table holding ``table``'s values, with its astropy metadata as JSON."""
    arrays, infos = [], {}
    for name in table.colnames:
        array, info = _column_to_arrow(name, table[name])
        arrays.append(array)
        infos[name] = info
    meta = {
        "version": 1,
        "qtable": isinstance(table, QTable),
        "meta": to_builtin(dict(table.meta), path="table meta", depth=1),
        "columns": infos,
    }
    schema_meta = {META_KEY: json.dumps(meta).encode()}
    if not arrays:
        return pa.table({}, metadata=schema_meta)
    return pa.Table.from_arrays(arrays, names=list(table.colnames), metadata=schema_meta)


# ----------------------------------------------------------------------------------------
# Arrow -> astropy


def _fill_value(arrow_type: pa.DataType) -> Any:
    if pa.types.is_string(arrow_type) or pa.types.is_large_string(arrow_type):
        return ""
    if pa.types.is_binary(arrow_type) or pa.types.is_large_binary(arrow_type):
        return b""
    if pa.types.is_boolean(arrow_type):
        return False
    return 0


def _arrow_to_numpy(
    name: str, chunked: pa.ChunkedArray, info: Mapping[str, Any]
) -> tuple[npt.NDArray[Any], npt.NDArray[np.bool_] | None]:
    array = chunked.combine_chunks() if isinstance(chunked, pa.ChunkedArray) else chunked
    shape: list[int] = []
    while pa.types.is_fixed_size_list(array.type):
        shape.append(array.type.list_size)
        if array.null_count:
            raise CorruptFileError(f"column {name!r}: null rows in a fixed-shape column")
        array = array.flatten()
    if pa.types.is_nested(array.type) or pa.types.is_dictionary(array.type):
        raise StorageClassError(
            f"Column {name!r} has Arrow type {chunked.type}, which an astropy Table column "
            "cannot hold (only fixed-shape arrays of scalars)."
        )
    mask = None
    if array.null_count:
        mask = np.asarray(array.is_null().to_numpy(zero_copy_only=False), dtype=bool)
        array = pc.fill_null(array, pa.scalar(_fill_value(array.type), type=array.type))
    values = np.asarray(array.to_numpy(zero_copy_only=False))
    dtype = info.get("dtype")
    if dtype is not None:
        values = values.astype(np.dtype(dtype), copy=False)
    elif values.dtype.kind == "O":
        # Foreign files: Arrow strings/bytes come back as Python objects.
        first = next((v for v in values if v is not None), "")
        values = values.astype(bytes if isinstance(first, bytes) else str)
    rows = len(chunked)
    values = values.reshape((rows, *shape))
    if mask is not None:
        mask = mask.reshape((rows, *shape))
    return values, mask


def _table_meta(schema: pa.Schema, name: str) -> dict[str, Any]:
    """The butler's metadata document in an Arrow schema ({} for a foreign file).

    Checked when a file is stored (from the footer's schema) as well as when it is read, so
    a damaged or hostile document (not an object, nested deeper than the stack) is refused
    before it is recorded.
    """
    raw_meta = (schema.metadata or {}).get(META_KEY)
    if not raw_meta:
        return _astropy_meta(schema, name)
    meta = load_json_mapping(raw_meta, f"{name}: table metadata {META_KEY.decode()!r}")
    columns = meta.get("columns", {})
    if not isinstance(columns, dict) or not all(isinstance(v, dict) for v in columns.values()):
        raise CorruptFileError(
            f"{name}: table metadata {META_KEY.decode()!r} has 'columns' that is not a "
            "mapping of column names to mappings; the file is damaged"
        )
    return meta


ASTROPY_META_KEY = b"table_meta_yaml"


def _astropy_meta(schema: pa.Schema, name: str) -> dict[str, Any]:
    """Units, descriptions, formats and ``meta`` from the document astropy's own Parquet
    writer leaves (the LSST butler writes tables that way), in this module's form."""
    raw = (schema.metadata or {}).get(ASTROPY_META_KEY)
    if not raw:
        return {}
    from astropy.table.meta import get_header_from_yaml

    try:
        # astropy's reader of its ECSV-style header: a safe YAML loader (plus astropy's
        # own tags), the same code astropy runs when it reads such a file.
        header = get_header_from_yaml(raw.decode("utf-8").splitlines())
        columns: dict[str, Any] = {}
        for column in header.get("datatype") or []:
            info = {k: column[k] for k in ("unit", "description", "format") if column.get(k)}
            if column.get("meta"):
                info["meta"] = dict(column["meta"])
            columns[str(column["name"])] = info
        # The LSST butler stamps its own provenance (LSST.BUTLER.ID, .RUN, .DATAID...) into
        # the file and takes it out again when it reads; so does this reader (the registry
        # holds the same facts).
        meta = {
            k: v
            for k, v in dict(header.get("meta") or {}).items()
            if not str(k).startswith("LSST.BUTLER.")
        }
        return {"columns": columns, "meta": meta}
    except Exception as exc:
        raise CorruptFileError(
            f"{name}: its astropy table metadata ({ASTROPY_META_KEY.decode()!r}) cannot be "
            f"read: {exc}; the file is damaged"
        ) from exc


def arrow_to_table(arrow: pa.Table, name: str = "Parquet file") -> Table:
    """astropy table from an Arrow table (with or without butler metadata)."""
    meta = _table_meta(arrow.schema, name)
    infos: Mapping[str, Any] = meta.get("columns", {})
    qtable = bool(meta.get("qtable", False))
    columns: list[Any] = []
    for name in arrow.column_names:
        info = infos.get(name, {})
        values, mask = _arrow_to_numpy(name, arrow.column(name), info)
        unit = u.Unit(info["unit"], parse_strict="silent") if info.get("unit") else None
        col: Any
        if qtable and info.get("quantity") and mask is None:
            col = u.Quantity(values, unit, copy=False)
            col.info.name = name
            col.info.description = info.get("description")
            col.info.format = info.get("format")
            col.info.meta = info.get("meta") or {}
        else:
            kwargs = {
                "name": name,
                "unit": unit,
                "description": info.get("description"),
                "format": info.get("format"),
                "meta": info.get("meta"),
            }
            if mask is not None or info.get("masked"):
                col = MaskedColumn(values, mask=mask if mask is not None else False, **kwargs)
            else:
                col = Column(values, **kwargs)
        columns.append(col)
    cls = QTable if qtable else Table
    return cls(columns, meta=meta.get("meta") or {}, copy=False)


# ----------------------------------------------------------------------------------------
# Partial reads


def _leaf_count(arrow_type: pa.DataType) -> int:
    """Number of Parquet leaf columns an Arrow field is stored as."""
    if pa.types.is_struct(arrow_type):
        return sum(_leaf_count(arrow_type.field(i).type) for i in range(arrow_type.num_fields))
    if pa.types.is_map(arrow_type):
        return _leaf_count(arrow_type.key_type) + _leaf_count(arrow_type.item_type)
    if (
        pa.types.is_list(arrow_type)
        or pa.types.is_large_list(arrow_type)
        or pa.types.is_fixed_size_list(arrow_type)
    ):
        return _leaf_count(arrow_type.value_type)
    return 1


class _PrefetchedFile(io.RawIOBase):
    """Read-only file that serves bytes already fetched and falls back to the source.

    pyarrow reads a column chunk with one positioned read; giving it this file means those
    reads hit bytes fetched together in one request, while anything unexpected (an older
    writer's padding, say) is still read correctly, and counted, from the source.
    """

    def __init__(self, source: ByteSource, chunks: Mapping[int, bytes]) -> None:
        super().__init__()
        self.source = source
        self.chunks = sorted(chunks.items())
        self.pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.pos, io.SEEK_END: self.source.size}[whence]
        self.pos = base + offset
        return self.pos

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        want = min(len(view), max(0, self.source.size - self.pos))
        for start, data in self.chunks:
            if start <= self.pos and self.pos + want <= start + len(data):
                view[:want] = data[self.pos - start : self.pos - start + want]
                break
        else:
            view[:want] = self.source.read(self.pos, want)
        self.pos += want
        return want


_FIXED_WIDTHS = {"BOOLEAN": 1, "INT32": 4, "INT64": 8, "INT96": 12, "FLOAT": 4, "DOUBLE": 8}


def _decoded_bytes(md: pq.FileMetaData) -> int:
    """An upper bound of the memory a whole read takes, from the footer alone.

    Compression, dictionaries and run lengths let a small file stand for many values: each
    column chunk counts its values at their decoded width. A string becomes a fixed-width
    numpy ``U`` column (4 bytes per character of the longest value), and the longest value
    is at most the chunk's uncompressed size, so variable-width chunks count that much per
    value: generous for long string columns, which are then only indexed when uploaded.
    """
    total = 0
    for g in range(md.num_row_groups):
        group = md.row_group(g)
        for c in range(group.num_columns):
            chunk = group.column(c)
            kind = chunk.physical_type
            if kind in _FIXED_WIDTHS:
                width = _FIXED_WIDTHS[kind]
            elif kind == "FIXED_LEN_BYTE_ARRAY":
                width = max(1, int(md.schema.column(c).length or 1))
            else:
                width = 4 * max(1, int(chunk.total_uncompressed_size))
            total += int(chunk.num_values) * width
    return total


def _parse_footer(raw: bytes, name: str) -> pq.FileMetaData:
    """FileMetaData from the footer bytes (thrift + 4-byte length + magic)."""
    try:
        # read_metadata expects a whole file; the magic in front is all it checks of the rest.
        return pq.read_metadata(pa.BufferReader(MAGIC + raw))
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise CorruptFileError(f"{name}: Parquet footer cannot be read: {exc}") from exc


def _locate_footer(head: bytes, tail: bytes, size: int, name: str) -> tuple[int, int]:
    """``(offset, length)`` of the thrift footer, from the first 4 and last 8 bytes."""
    if size < 12 or head != MAGIC or tail[4:] != MAGIC:
        raise CorruptFileError(
            f"{name}: not a Parquet file (it must start and end with {MAGIC!r}); the file "
            "is truncated or of another format"
        )
    footer_size: int = struct.unpack("<I", tail[:4])[0]
    footer_offset = size - 8 - footer_size
    if footer_offset < 4:
        raise CorruptFileError(
            f"{name}: footer length {footer_size} does not fit in the file ({size} bytes); "
            "the file is truncated"
        )
    return footer_offset, footer_size


def _row_bytes(table: Table) -> int:
    """Approximate in-memory bytes per row, to size row groups."""
    total = 0
    for name in table.colnames:
        values = np.asarray(table[name])
        total += values.dtype.itemsize * int(np.prod(values.shape[1:], dtype=np.int64))
    return max(1, total)


class ParquetFormatter(Formatter):
    """``astropy.table.Table`` <-> Parquet; parameter ``columns`` reads only those columns,
    component ``metadata`` only the footer: the table's ``meta`` (the keywords a FITS table
    keeps in its header), as a dict."""

    name: ClassVar[str] = "parquet"
    storage_class: ClassVar[str] = "Table"
    extension: ClassVar[str] = ".parq"
    components: ClassVar[frozenset[str]] = frozenset({"metadata"})
    parameters: ClassVar[frozenset[str]] = frozenset({"columns"})
    compression: ClassVar[str] = "zstd"

    def write(self, obj: Any, path: Path) -> None:
        if not isinstance(obj, Table):
            raise StorageClassError(f"parquet stores an astropy Table, got {type(obj).__name__}.")
        arrow = table_to_arrow(obj)
        rows = max(1, min(_MAX_ROW_GROUP_ROWS, _ROW_GROUP_BYTES // _row_bytes(obj)))
        with path.open("xb") as f:
            pq.write_table(arrow, f, row_group_size=rows, compression=self.compression)

    def index(self, path: Path) -> FileIndex:
        size = path.stat().st_size
        with path.open("rb") as f:
            head = f.read(4)
            f.seek(max(0, size - 8))
            tail = f.read(8)
            footer_offset, footer_size = _locate_footer(head, tail, size, str(path))
            f.seek(footer_offset)
            md = _parse_footer(f.read(footer_size + 8), str(path))
        try:
            schema = md.schema.to_arrow_schema()
        except (pa.ArrowException, ValueError) as exc:
            raise CorruptFileError(f"{path}: Parquet schema cannot be read: {exc}") from exc
        _table_meta(schema, str(path))
        return {
            "format": "parquet",
            "size": size,
            "footer_offset": footer_offset,
            "footer_size": footer_size,
            "num_rows": md.num_rows,
            "row_groups": md.num_row_groups,
            "columns": list(schema.names),
            "decoded_bytes": _decoded_bytes(md),
        }

    def decoded_bytes(self, index: Mapping[str, Any]) -> int | None:
        value = index.get("decoded_bytes")
        return int(value) if isinstance(value, int) else None

    def read(
        self,
        source: ByteSource,
        index: Mapping[str, Any],
        *,
        component: str | None = None,
        parameters: Mapping[str, Any] | None = None,
    ) -> Any:
        self.check_request(component, parameters)
        if component == "metadata":
            footer_offset, footer_size = self._footer_location(source, index)
            md = _parse_footer(source.read(footer_offset, footer_size + 8), source.name)
            meta = _table_meta(md.schema.to_arrow_schema(), source.name).get("meta") or {}
            return dict(meta)
        columns = (parameters or {}).get("columns")
        if columns is None:
            raw = source.read(0, source.size)
            try:
                arrow = pq.read_table(pa.BufferReader(raw))
            except (pa.ArrowException, OSError) as exc:
                raise CorruptFileError(f"{source.name}: cannot read Parquet: {exc}") from exc
            return arrow_to_table(arrow, source.name)
        names = self._column_names(columns)
        footer_offset, footer_size = self._footer_location(source, index)
        md = _parse_footer(source.read(footer_offset, footer_size + 8), source.name)
        schema = md.schema.to_arrow_schema()
        missing = [n for n in names if n not in schema.names]
        if missing:
            raise UnsupportedParameterError(
                f"{source.name}: no column(s) {missing} in this table; available columns: "
                f"{', '.join(schema.names)}."
            )
        # Parquet leaf columns are numbered in schema order; a nested field spans several.
        first_leaf, leaves = 0, {}
        for field in schema:
            count = _leaf_count(field.type)
            leaves[field.name] = range(first_leaf, first_leaf + count)
            first_leaf += count
        ranges: list[ByteRange] = []
        for rg in range(md.num_row_groups):
            group = md.row_group(rg)
            for name in names:
                for leaf in leaves[name]:
                    chunk = group.column(leaf)
                    start = chunk.data_page_offset
                    if chunk.has_dictionary_page and chunk.dictionary_page_offset:
                        start = min(start, chunk.dictionary_page_offset)
                    ranges.append((start, chunk.total_compressed_size))
        fetched = source.read_ranges(ranges)
        prefetched = _PrefetchedFile(
            source, {off: data for (off, _), data in zip(ranges, fetched, strict=True)}
        )
        try:
            arrow = pq.ParquetFile(prefetched, metadata=md, pre_buffer=False).read(
                columns=names, use_threads=False
            )
        except (pa.ArrowException, OSError) as exc:
            raise CorruptFileError(f"{source.name}: cannot read Parquet columns: {exc}") from exc
        return arrow_to_table(arrow, source.name)

    @staticmethod
    def _column_names(columns: Any) -> list[str]:
        if isinstance(columns, str):
            columns = [columns]
        if not isinstance(columns, Sequence) or not all(isinstance(c, str) for c in columns):
            raise UnsupportedParameterError(
                f"parameter 'columns' must be a list of column names, got {columns!r}."
            )
        if len(set(columns)) != len(columns):
            raise UnsupportedParameterError(f"parameter 'columns' repeats a name: {columns!r}.")
        return list(columns)

    def _footer_location(self, source: ByteSource, index: Mapping[str, Any]) -> tuple[int, int]:
        if index and "footer_offset" in index and "footer_size" in index:
            return int(index["footer_offset"]), int(index["footer_size"])
        # No index recorded: the last 8 bytes say where the footer is.
        head, tail = source.read_ranges([(0, min(4, source.size)), (max(0, source.size - 8), 8)])
        return _locate_footer(head, tail, source.size, source.name)
