"""Turning a source's planes into the common image model's (pure array functions).

Telescopes store uncertainty and pixel quality differently; the butler's :class:`Image`
always has a variance (in the image unit squared) and LSST-named mask planes. These
functions do the conversions the raw layout in a file's offset index asks for.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import numpy.typing as npt

from butler.errors import CorruptFileError

__all__ = ["common_mask", "estimate_variance", "to_variance"]

UNMAPPED_PLANE = "SUSPECT"
"""Where source mask bits that a translator does not name end up: flagged, not dropped."""


def to_variance(values: npt.NDArray[Any], kind: str) -> npt.NDArray[np.floating[Any]]:
    """The variance from a stored plane: a variance as is, a standard deviation squared,
    an inverse variance inverted (a weight of 0, "no data", becomes a NaN variance)."""
    arr = np.asarray(values)
    floats: npt.NDArray[np.floating[Any]] = arr if arr.dtype.kind == "f" else arr.astype(np.float32)
    if kind == "variance":
        return floats
    if kind == "stddev":
        squared: npt.NDArray[np.floating[Any]] = np.square(floats)
        return squared
    if kind == "inverse_variance":
        with np.errstate(divide="ignore", invalid="ignore"):
            out = np.where(floats > 0, 1.0 / floats, np.nan)
        return out.astype(floats.dtype, copy=False)
    raise CorruptFileError(
        f"unknown variance kind {kind!r} in the file's raw layout "
        "(expected variance, stddev or inverse_variance)"
    )


def estimate_variance(
    data: npt.NDArray[Any], gain: float | None, read_noise: float | None, bias: float = 0.0
) -> npt.NDArray[np.floating[Any]]:
    """Per-pixel variance in data units squared from the pixels themselves:
    ``max(data - bias, 0) / gain + (read_noise / gain)**2`` (Poisson noise of the signal in
    electrons plus read noise, converted back to data units). Without a gain the variance
    is unknown: all NaN. A missing read noise counts as 0."""
    floats: npt.NDArray[np.floating[Any]] = np.asarray(
        data, dtype=np.float64 if data.dtype.itemsize > 4 else np.float32
    )
    if gain is None or not gain > 0:
        return np.full(floats.shape, np.nan, dtype=floats.dtype)
    noise = float(read_noise or 0.0) / gain
    signal = np.clip(np.subtract(floats, bias), 0, None)
    out: npt.NDArray[np.floating[Any]] = (signal / gain + noise * noise).astype(floats.dtype)
    return out


def common_mask(
    source: npt.NDArray[Any],
    planes: Mapping[str, int],
    bits: Mapping[int, str] | None = None,
    values: Mapping[int, str] | None = None,
) -> npt.NDArray[np.int32]:
    """An ``int32`` mask on the common ``planes`` from a source mask.

    ``bits`` maps a source bit number to a plane name; ``values`` maps whole source values
    (masks that store codes) to a plane. Set source bits (or unknown non-zero codes) that no
    mapping names go to :data:`UNMAPPED_PLANE`.
    """
    src = np.asarray(source)
    if src.dtype.kind not in "iu":
        raise CorruptFileError(f"a mask holds integer flags, this one holds {src.dtype} values")
    wide = src.astype(np.int64)
    out = np.zeros(src.shape, dtype=np.int64)
    unmapped = 1 << planes[UNMAPPED_PLANE]
    if values:
        known = np.zeros(src.shape, dtype=bool)
        for value, plane in values.items():
            hit = wide == int(value)
            out[hit] |= 1 << planes[plane]
            known |= hit
        out[(wide != 0) & ~known] |= unmapped
        return out.astype(np.uint32).view(np.int32)
    named = 0
    for bit, plane in (bits or {}).items():
        bit = int(bit)
        named |= 1 << bit
        out[(wide >> bit) & 1 == 1] |= 1 << planes[plane]
    out[(wide & ~named) != 0] |= unmapped
    return out.astype(np.uint32).view(np.int32)
