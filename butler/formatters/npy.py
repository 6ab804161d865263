"""The ``.npy`` formatter for the ``Array`` storage class.

Written with ``np.save(allow_pickle=False)`` and read without ever enabling pickle, so an
object array cannot be stored and a file from a remote source cannot run code. The index
records where the raw data starts, so the ``slice`` parameter (a slice of the leading axis)
reads just those rows of a C-ordered array.

Index layout: ``{"format": "npy", "data_offset", "dtype", "shape", "fortran_order"}``
(``dtype`` is numpy's descriptor: a string such as ``"<f4"``, or a list for structured
dtypes).
"""

from __future__ import annotations

import io
import math
import tokenize
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt

from butler.errors import CorruptFileError, StorageClassError, UnsupportedParameterError
from butler.formatters.base import FileIndex, Formatter
from butler.io.source import ByteSource

__all__ = ["NpyFormatter"]

_MAX_HEADER = 65536 + 12  # format 2/3 headers may be up to 4 GiB, but real ones are tiny
_MAX_DIMS = 64
"""numpy's limit on the number of axes (``NPY_MAXDIMS``)."""
_MAX_BYTES = int(np.iinfo(np.intp).max)
"""The largest size numpy can give an array, in elements times item size."""


def _parse_header(f: io.BufferedIOBase | io.BytesIO, name: str) -> tuple[Any, ...]:
    """``(shape, fortran_order, dtype, data_offset)`` of the .npy file open in ``f``."""
    try:
        major, _minor = np.lib.format.read_magic(f)
        with warnings.catch_warnings():
            # A header numpy can read only by re-tokenising it (as Python 2 wrote them) draws
            # a UserWarning; the file is readable or refused below either way.
            warnings.simplefilter("ignore", UserWarning)
            if major == 1:
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
            elif major in (2, 3):
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
            else:
                raise ValueError(f"unsupported .npy format version {major}")
    except (
        ValueError,
        EOFError,
        SyntaxError,
        TypeError,
        OverflowError,
        RecursionError,
        tokenize.TokenError,
    ) as exc:
        # numpy's header parser lets each of these through for some malformed header.
        raise CorruptFileError(f"{name}: not a readable .npy file: {exc}") from exc
    return shape, fortran, dtype, f.tell()


def _check_layout(shape: tuple[Any, ...], dtype: np.dtype[Any], name: str) -> None:
    """Refuse a header that numpy parses but no array (or only a pickle) can have.

    numpy checks these only when the data is loaded; checked here, a bad file is refused
    when it is stored, not when someone reads it later.
    """
    if dtype.hasobject:
        raise CorruptFileError(
            f"{name}: the .npy header declares dtype {dtype}, which holds Python objects: "
            "such data is a pickle, which the butler never loads. Store a numeric, string or "
            "structured array without objects."
        )
    if len(shape) > _MAX_DIMS:
        raise CorruptFileError(
            f"{name}: the .npy header declares {len(shape)} axes; numpy arrays have at most "
            f"{_MAX_DIMS}"
        )
    if any(n < 0 for n in shape):
        raise CorruptFileError(
            f"{name}: the .npy header declares shape {shape} with a negative axis length; "
            "the file is damaged"
        )
    # An empty axis makes the data empty whatever the others say, but numpy still has to
    # allocate an array of that shape, which it cannot if the other axes overflow.
    nonzero = math.prod(n for n in shape if n) * max(dtype.itemsize, 1)
    if nonzero > _MAX_BYTES:
        raise CorruptFileError(
            f"{name}: the .npy header declares shape {shape} of {dtype}, too large for any "
            "array; the file is damaged"
        )


def _has_objects(dtype: np.dtype[Any]) -> bool:
    return bool(dtype.hasobject)


def _leading_slice(value: Any, length: int) -> tuple[int, int, int]:
    """``(start, stop, step)`` of the ``slice`` parameter on an axis of ``length``."""
    if isinstance(value, slice):
        sl = value
    elif (
        isinstance(value, Sequence)
        and not isinstance(value, str)
        and 1 <= len(value) <= 3
        and all(v is None or (isinstance(v, int) and not isinstance(v, bool)) for v in value)
    ):
        # A slice after a JSON round trip: [start, stop] or [start, stop, step].
        sl = slice(*value)
    else:
        raise UnsupportedParameterError(
            f"parameter 'slice' must be a slice of the leading axis (e.g. slice(100, 200)) or "
            f"[start, stop(, step)]; got {value!r}."
        )
    if sl.step is not None and sl.step <= 0:
        raise UnsupportedParameterError(f"parameter 'slice' needs a positive step, got {sl!r}.")
    start, stop, step = sl.indices(length)
    return start, max(start, stop), step


class NpyFormatter(Formatter):
    """``numpy.ndarray`` <-> ``.npy``; parameter ``slice`` reads part of the leading axis."""

    name: ClassVar[str] = "npy"
    storage_class: ClassVar[str] = "Array"
    extension: ClassVar[str] = ".npy"
    parameters: ClassVar[frozenset[str]] = frozenset({"slice"})

    def write(self, obj: Any, path: Path) -> None:
        if not isinstance(obj, np.ndarray):
            raise StorageClassError(f"npy stores a numpy.ndarray, got {type(obj).__name__}.")
        if _has_objects(obj.dtype):
            raise StorageClassError(
                f"Array has dtype {obj.dtype}, which holds Python objects; .npy can only store "
                "them with pickle, which the butler never uses. Convert to a numeric, string "
                "or structured dtype without objects."
            )
        if isinstance(obj, np.ma.MaskedArray | np.matrix):
            # .npy keeps only the base array: the mask (or matrix semantics) would vanish.
            raise StorageClassError(
                f"npy stores plain numpy arrays; a {type(obj).__name__} would lose what makes it "
                "one. Pass np.asarray(obj) (and store a mask as a separate array)."
            )
        with path.open("xb") as f:
            np.save(f, obj, allow_pickle=False)

    def index(self, path: Path) -> FileIndex:
        size = path.stat().st_size
        with path.open("rb") as f:
            shape, fortran, dtype, offset = _parse_header(f, str(path))
        _check_layout(shape, dtype, str(path))
        expected = offset + math.prod(shape) * dtype.itemsize
        if size < expected:
            raise CorruptFileError(
                f"{path}: array data should end at byte {expected} but the file has {size} "
                "bytes; the file is truncated"
            )
        if size > expected:
            # np.save writes nothing after the data: extra bytes mean a damaged or spliced file.
            raise CorruptFileError(
                f"{path}: array data ends at byte {expected} but the file has {size} bytes; "
                "the file holds something after the array"
            )
        return {
            "format": "npy",
            "data_offset": offset,
            "dtype": np.lib.format.dtype_to_descr(dtype),
            "shape": list(shape),
            "fortran_order": bool(fortran),
        }

    def read(
        self,
        source: ByteSource,
        index: Mapping[str, Any],
        *,
        component: str | None = None,
        parameters: Mapping[str, Any] | None = None,
    ) -> Any:
        self.check_request(component, parameters)
        wanted = (parameters or {}).get("slice")
        if wanted is None:
            raw = source.read(0, source.size)
            try:
                array: npt.NDArray[Any] = np.load(io.BytesIO(raw), allow_pickle=False)
            except ValueError as exc:
                raise CorruptFileError(f"{source.name}: cannot load .npy data: {exc}") from exc
            return array

        shape, fortran, dtype, offset = self._layout(source, index)
        if not shape:
            raise UnsupportedParameterError(
                f"{source.name}: parameter 'slice' needs an array with at least one axis; "
                "this one is 0-d."
            )
        start, stop, step = _leading_slice(wanted, shape[0])
        row_items = math.prod(shape[1:])
        if fortran and len(shape) > 1:
            # Rows of a Fortran-ordered array are not contiguous: read it all, then slice.
            full = np.frombuffer(
                source.read(offset, math.prod(shape) * dtype.itemsize), dtype=dtype
            ).reshape(shape, order="F")
            return np.array(full[start:stop:step])
        row_bytes = row_items * dtype.itemsize
        count = len(range(start, stop))
        raw = source.read(offset + start * row_bytes, count * row_bytes) if count else b""
        rows = np.frombuffer(raw, dtype=dtype).reshape((count, *shape[1:]))
        return np.array(rows[::step])  # a writable copy, as np.load gives

    @staticmethod
    def _layout(source: ByteSource, index: Mapping[str, Any]) -> tuple[Any, ...]:
        """``(shape, fortran_order, dtype, data_offset)`` from the index, else the header."""
        try:
            return (
                tuple(index["shape"]),
                bool(index["fortran_order"]),
                np.lib.format.descr_to_dtype(_as_descr(index["dtype"])),
                int(index["data_offset"]),
            )
        except (KeyError, TypeError, ValueError):
            # No (usable) index recorded: the header is small and at the start of the file.
            head = source.read(0, min(source.size, _MAX_HEADER))
            return _parse_header(io.BytesIO(head), source.name)


def _as_descr(value: Any) -> Any:
    """Undo JSON's turning of a structured dtype descriptor's tuples into lists."""
    if isinstance(value, str):
        return value
    fields = []
    for name, typ, *shape in value:
        fields.append(
            (
                tuple(name) if isinstance(name, list) else name,  # (title, name) pairs
                typ if isinstance(typ, str) else _as_descr(typ),
                *(tuple(s) for s in shape),
            )
        )
    return fields
