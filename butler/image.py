"""The butler's one image model: data, variance, named mask planes, WCS, unit and header.

Images from every telescope come back as an :class:`Image`, so code comparing an LSST
``calexp`` with an HST or DSS image sees the same attributes. It is an astropy
:class:`~astropy.nddata.NDData` (with slicing), so astropy tools that accept NDData work on it,
and :meth:`Image.to_ccddata` / :meth:`Image.from_nddata` convert to and from ``CCDData``.

Conventions (those of the LSST data model):

- ``data`` and ``variance`` are 2-D arrays of the same shape, indexed ``[row, column]``
  (``[y, x]``); the variance is NaN where unknown.
- ``mask`` is an ``int32`` array of bit planes; ``mask_planes`` maps a plane name to its bit
  number (``BAD`` is bit 0, so ``mask & 1`` flags bad pixels).
- ``header`` (the same object as ``meta``) is an astropy FITS header with the observation
  metadata; the WCS and the unit are *not* duplicated in it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, cast

import numpy as np
import numpy.typing as npt
from astropy import units as u
from astropy.io import fits
from astropy.nddata import (
    CCDData,
    NDData,
    NDSlicingMixin,
    NDUncertainty,
    VarianceUncertainty,
)
from astropy.wcs import WCS
from astropy.wcs.wcsapi import BaseHighLevelWCS, BaseLowLevelWCS

from butler.errors import StorageClassError, UnsupportedParameterError

__all__ = [
    "DEFAULT_BAD_PLANES",
    "DEFAULT_MASK_PLANES",
    "Box",
    "Image",
    "as_box",
]

DEFAULT_MASK_PLANES: dict[str, int] = {
    "BAD": 0,
    "SAT": 1,
    "INTRP": 2,
    "CR": 3,
    "EDGE": 4,
    "DETECTED": 5,
    "DETECTED_NEGATIVE": 6,
    "SUSPECT": 7,
    "NO_DATA": 8,
}
"""The LSST science pipelines' default mask planes and their bit numbers."""

DEFAULT_BAD_PLANES: tuple[str, ...] = ("BAD", "SAT", "INTRP", "CR", "EDGE", "SUSPECT", "NO_DATA")
"""Planes that make a pixel unusable in :meth:`Image.to_ccddata` (detections are not defects)."""

_MAX_MASK_BIT = 31  # the mask is int32; bit 31 is its sign bit, which LSST also allows


@dataclass(frozen=True)
class Box:
    """A half-open pixel box: columns ``x0 <= x < x0 + width``, rows ``y0 <= y < y0 + height``.

    ``x`` is the column (FITS axis 1) and ``y`` the row (FITS axis 2), both 0-based, so
    ``image.data[box.slices]`` is the cutout.
    """

    x0: int
    y0: int
    width: int
    height: int

    def __post_init__(self) -> None:
        for name in ("x0", "y0", "width", "height"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | np.integer):
                raise UnsupportedParameterError(
                    f"Box.{name} must be an integer pixel number, got {value!r}."
                )
            object.__setattr__(self, name, int(value))
        if self.width <= 0 or self.height <= 0:
            raise UnsupportedParameterError(
                f"Box width and height must be positive, got {self.width}x{self.height}."
            )

    @property
    def x1(self) -> int:
        """One past the last column."""
        return self.x0 + self.width

    @property
    def y1(self) -> int:
        """One past the last row."""
        return self.y0 + self.height

    @property
    def shape(self) -> tuple[int, int]:
        """``(height, width)``, numpy order."""
        return (self.height, self.width)

    @property
    def slices(self) -> tuple[slice, slice]:
        """``(rows, columns)`` slices, for indexing a numpy array or an :class:`Image`."""
        return (slice(self.y0, self.y1), slice(self.x0, self.x1))

    @classmethod
    def from_slices(cls, slices: tuple[slice, slice], shape: tuple[int, int]) -> Box:
        """The box of ``(slice(y0, y1), slice(x0, x1))`` in an image of ``shape``.

        Open ends (``None``) mean the image edge; steps other than 1 and negative bounds are
        refused, because a box is a contiguous region in absolute pixel coordinates.
        """
        if not (isinstance(slices, tuple) and len(slices) == 2):
            raise UnsupportedParameterError(
                f"bbox slices must be a pair (rows, columns), got {slices!r}."
            )
        bounds: list[tuple[int, int]] = []
        for axis, (sl, length) in enumerate(zip(slices, shape, strict=True)):
            if not isinstance(sl, slice):
                raise UnsupportedParameterError(
                    f"bbox must be (slice(y0, y1), slice(x0, x1)); item {axis} is {sl!r}."
                )
            if sl.step not in (None, 1):
                raise UnsupportedParameterError(f"bbox slices cannot have a step ({sl!r}).")
            start = 0 if sl.start is None else sl.start
            stop = length if sl.stop is None else sl.stop
            if start < 0 or stop < 0:
                raise UnsupportedParameterError(
                    f"bbox slices use absolute pixel numbers; negative bound in {sl!r}."
                )
            bounds.append((int(start), int(stop)))
        (y0, y1), (x0, x1) = bounds
        return cls(x0=x0, y0=y0, width=x1 - x0, height=y1 - y0)


def as_box(bbox: Any, shape: tuple[int, ...]) -> Box:
    """Turn a ``bbox`` read parameter into a :class:`Box` that lies inside ``shape``.

    Accepts a :class:`Box`, a pair of slices ``(slice(y0, y1), slice(x0, x1))``, or a mapping
    with ``x0, y0, width, height`` (the form a box takes after a JSON round trip). Raises
    :class:`~butler.errors.UnsupportedParameterError` (a ``ValueError``) if the box is
    malformed or not inside the image.
    """
    if len(shape) != 2:
        raise UnsupportedParameterError(f"bbox needs a 2-D image; this one has shape {shape}.")
    height, width = int(shape[0]), int(shape[1])
    if isinstance(bbox, Box):
        box = bbox
    elif isinstance(bbox, Mapping):
        try:
            box = Box(**{k: bbox[k] for k in ("x0", "y0", "width", "height")})
        except KeyError as exc:
            raise UnsupportedParameterError(
                f"A bbox mapping needs keys x0, y0, width, height; {exc} is missing."
            ) from None
    elif isinstance(bbox, tuple) and len(bbox) == 2 and all(isinstance(s, slice) for s in bbox):
        box = Box.from_slices(bbox, (height, width))
    else:
        raise UnsupportedParameterError(
            "bbox must be a butler.image.Box(x0, y0, width, height) or a pair of slices "
            f"(slice(y0, y1), slice(x0, x1)); got {bbox!r}."
        )
    if box.x0 < 0 or box.y0 < 0 or box.x1 > width or box.y1 > height:
        raise UnsupportedParameterError(
            f"bbox {box} (columns {box.x0}..{box.x1 - 1}, rows {box.y0}..{box.y1 - 1}) does not "
            f"lie inside the image of {width} columns x {height} rows; clip it to "
            f"x in [0, {width}) and y in [0, {height})."
        )
    return box


def _as_header(meta: Any) -> fits.Header:
    """A FITS header from a header or a flat mapping of FITS-representable values."""
    if meta is None:
        return fits.Header()
    if isinstance(meta, fits.Header):
        return meta
    if not isinstance(meta, Mapping):
        raise StorageClassError(f"Image metadata must be a FITS header or a mapping, got {meta!r}.")
    header = fits.Header()
    for key, value in meta.items():
        if not isinstance(value, str | int | float | bool | complex | np.generic) or value is None:
            raise StorageClassError(
                f"Metadata item {key!r} = {value!r} ({type(value).__name__}) cannot be stored in "
                "a FITS header; convert it to a string or number, or remove it."
            )
        if isinstance(value, np.generic):
            value = value.item()
        name = str(key)
        # Long or lower-case keys are legal as HIERARCH cards; ask for one explicitly so
        # astropy does not warn that it is creating one.
        card_key = name if len(name) <= 8 and name.isupper() else f"HIERARCH {name}"
        header[card_key] = value
    return header


def _as_wcs(wcs: Any) -> WCS | None:
    """An :class:`astropy.wcs.WCS` from a WCS-like object (the only kind FITS can store)."""
    if wcs is None or isinstance(wcs, WCS):
        return wcs
    low = getattr(wcs, "low_level_wcs", None)
    if isinstance(low, WCS):
        return low
    if isinstance(wcs, BaseHighLevelWCS | BaseLowLevelWCS):
        raise StorageClassError(
            f"Image.wcs must be an astropy.wcs.WCS (a FITS WCS); {type(wcs).__name__} cannot "
            "be written to a FITS header. Fit a FITS WCS (e.g. astropy.wcs.utils."
            "fit_wcs_from_points) or drop the WCS."
        )
    raise StorageClassError(f"Image.wcs must be an astropy.wcs.WCS or None, got {wcs!r}.")


def _is_lazy_array(obj: Any) -> bool:
    """A dask array (what ``get(..., parameters={"lazy": True})`` gives): computed on demand,
    so it is kept as it is rather than turned into a numpy array (which would read it all)."""
    return type(obj).__module__.startswith("dask.")


def _as_array(obj: Any) -> npt.NDArray[Any]:
    # A dask array is typed as the numpy array it stands for: it has the same interface.
    return cast("npt.NDArray[Any]", obj) if _is_lazy_array(obj) else np.asarray(obj)


def _as_variance(
    variance: Any, uncertainty: Any, shape: tuple[int, ...], dtype: np.dtype[Any]
) -> npt.NDArray[np.floating[Any]]:
    if variance is not None and uncertainty is not None:
        raise TypeError("Give either variance or uncertainty, not both.")
    if uncertainty is not None:
        variance = _uncertainty_to_variance(uncertainty)
    if variance is None:
        float_dtype = np.float64 if dtype == np.float64 else np.float32
        return np.full(shape, np.nan, dtype=float_dtype)
    var = _as_array(variance)
    if var.shape != shape:
        raise StorageClassError(f"variance has shape {var.shape}, the image has shape {shape}.")
    if var.dtype.kind != "f":
        var = var.astype(np.float64 if var.dtype.itemsize > 4 else np.float32)
    return var


def _uncertainty_to_variance(uncertainty: Any) -> npt.NDArray[Any]:
    if isinstance(uncertainty, VarianceUncertainty):
        return np.asarray(uncertainty.array)
    if isinstance(uncertainty, NDUncertainty):
        try:
            converted = uncertainty.represent_as(VarianceUncertainty)
        except (TypeError, ValueError) as exc:
            raise StorageClassError(
                f"Cannot convert a {type(uncertainty).__name__} to a variance: {exc}"
            ) from exc
        return np.asarray(converted.array)
    raise StorageClassError(
        f"uncertainty must be an astropy NDUncertainty (e.g. StdDevUncertainty), got "
        f"{type(uncertainty).__name__}; or pass a variance array."
    )


def _as_mask(mask: Any, shape: tuple[int, ...], bad_bit: int) -> npt.NDArray[np.int32]:
    if mask is None:
        return np.zeros(shape, dtype=np.int32)
    arr = _as_array(mask)
    if arr.shape != shape:
        raise StorageClassError(f"mask has shape {arr.shape}, the image has shape {shape}.")
    if _is_lazy_array(arr):
        if arr.dtype != np.int32:
            raise StorageClassError(f"a lazy mask must hold int32 bit planes, not {arr.dtype}.")
        return arr
    if arr.dtype == np.bool_:
        # A boolean mask (CCDData's convention) says "bad" and nothing more.
        return np.where(arr, np.int32(1 << bad_bit), np.int32(0)).astype(np.int32)
    if arr.dtype.kind not in "iu":
        raise StorageClassError(f"mask must be integer bit planes or boolean, not {arr.dtype}.")
    if arr.dtype == np.int32:
        return arr
    if arr.size and (int(arr.min()) < np.iinfo(np.int32).min or int(arr.max()) > 2**32 - 1):
        raise StorageClassError("mask values do not fit in 32 bit planes.")
    # uint32 values with the top bit set keep their bit pattern in int32.
    return arr.astype(np.int64).astype(np.uint32).view(np.int32)


def _check_planes(planes: Mapping[str, int]) -> dict[str, int]:
    checked: dict[str, int] = {}
    seen: dict[int, str] = {}
    for name, bit in planes.items():
        if not isinstance(name, str) or not name:
            raise StorageClassError(f"Mask plane names must be non-empty strings, got {name!r}.")
        if isinstance(bit, bool) or not isinstance(bit, int | np.integer):
            raise StorageClassError(f"Mask plane {name!r} has bit {bit!r}; bits are integers.")
        if not 0 <= int(bit) <= _MAX_MASK_BIT:
            raise StorageClassError(f"Mask plane {name!r} has bit {bit}; bits are 0..31.")
        if int(bit) in seen:
            raise StorageClassError(
                f"Mask planes {seen[int(bit)]!r} and {name!r} both use bit {bit}."
            )
        seen[int(bit)] = name
        checked[name] = int(bit)
    return checked


class Image(NDSlicingMixin, NDData):  # type: ignore[misc]  # astropy is untyped
    """A 2-D image with variance, bit-plane mask, WCS, unit and FITS header.

    Parameters
    ----------
    data
        2-D pixel array (``[y, x]``).
    variance
        Per-pixel variance, same shape; NaN-filled if not given.
    mask
        Integer bit planes (stored as ``int32``), or a boolean array (True sets the ``BAD``
        plane); zeros if not given.
    mask_planes
        Plane name -> bit number; the LSST defaults (:data:`DEFAULT_MASK_PLANES`) if not given.
    wcs
        An :class:`astropy.wcs.WCS` or None.
    unit
        Unit of ``data`` (variance is in ``unit**2``).
    header
        Observation metadata (a FITS header, or a flat mapping of FITS-representable values);
        ``meta`` is accepted as an alias, as NDData calls it.
    uncertainty
        An astropy uncertainty, converted to a variance (alternative to ``variance``).
    copy
        Copy the arrays instead of referencing them.
    """

    def __init__(
        self,
        data: Any,
        variance: Any = None,
        mask: Any = None,
        mask_planes: Mapping[str, int] | None = None,
        wcs: Any = None,
        unit: Any = None,
        header: Any = None,
        *,
        uncertainty: Any = None,
        meta: Any = None,
        copy: bool = False,
    ) -> None:
        if isinstance(data, NDData):
            raise TypeError("Use Image.from_nddata() to convert an NDData or CCDData.")
        if isinstance(data, u.Quantity):
            if unit is None:
                unit = data.unit
            data = data.to_value(unit)
        arr = _as_array(data)
        if arr.ndim != 2:
            raise StorageClassError(f"Image data must be 2-D, got shape {arr.shape}.")
        if arr.dtype.kind not in "iuf":
            raise StorageClassError(f"Image data must be numeric (int or float), not {arr.dtype}.")
        if unit is not None:
            unit = u.Unit(unit)
            if isinstance(unit, u.UnrecognizedUnit):
                raise StorageClassError(
                    f"Image unit {unit.name!r} is not a unit astropy understands; the variance "
                    "needs unit**2. Use a known unit (e.g. 'adu', 'electron', 'nJy') or None."
                )
        if header is not None and meta is not None:
            raise TypeError("Give either header or meta (they are the same thing), not both.")
        planes = _check_planes(DEFAULT_MASK_PLANES if mask_planes is None else mask_planes)
        var = _as_variance(variance, uncertainty, arr.shape, arr.dtype)
        if mask is not None and _as_array(mask).dtype == np.bool_ and "BAD" not in planes:
            # A boolean mask means "bad"; give it a plane so mask_of("BAD") finds it.
            planes["BAD"] = min(set(range(_MAX_MASK_BIT + 1)) - set(planes.values()))
        int_mask = _as_mask(mask, arr.shape, planes.get("BAD", 0))
        super().__init__(
            arr,
            uncertainty=VarianceUncertainty(var, copy=False),
            mask=int_mask,
            wcs=_as_wcs(wcs),
            meta=_as_header(header if header is not None else meta),
            unit=unit,
            copy=copy,
        )
        self.mask_planes: dict[str, int] = planes

    # -- typed accessors -------------------------------------------------------------------

    @property
    def variance(self) -> npt.NDArray[Any]:
        """Per-pixel variance (the array of the ``VarianceUncertainty`` in ``uncertainty``;
        a dask array for a lazily read image)."""
        return _as_array(self.uncertainty.array)

    @variance.setter
    def variance(self, value: Any) -> None:
        self.uncertainty = VarianceUncertainty(
            _as_variance(value, None, self.data.shape, self.data.dtype), copy=False
        )

    @property
    def header(self) -> fits.Header:
        """Observation metadata (the same object as ``meta``)."""
        meta: fits.Header = self.meta
        return meta

    @header.setter
    def header(self, value: Any) -> None:
        self.meta = _as_header(value)

    @property
    def shape(self) -> tuple[int, int]:
        """``(height, width)`` of the image."""
        return (int(self.data.shape[0]), int(self.data.shape[1]))

    @property
    def bbox(self) -> Box:
        """The box covering the whole image."""
        return Box(0, 0, self.shape[1], self.shape[0])

    # -- mask planes -----------------------------------------------------------------------

    def plane_bitmask(self, *plane_names: str) -> int:
        """The integer with the bits of the named planes set."""
        value = 0
        for name in plane_names:
            if name not in self.mask_planes:
                known = ", ".join(sorted(self.mask_planes)) or "none"
                raise KeyError(f"No mask plane {name!r} in this image (planes: {known}).")
            value |= 1 << self.mask_planes[name]
        return value

    def mask_of(self, *plane_names: str) -> npt.NDArray[np.bool_]:
        """Boolean array: True where any of the named planes is set (any plane if none named)."""
        mask: npt.NDArray[np.int32] = np.asarray(self.mask, dtype=np.int32)
        if not plane_names:
            return np.not_equal(mask, 0)
        bits = np.uint32(self.plane_bitmask(*plane_names)).view(np.int32)
        return np.not_equal(np.bitwise_and(mask, bits), 0)

    def add_mask_plane(self, name: str) -> int:
        """Add a plane (or return the bit of an existing one) on the lowest free bit."""
        if name in self.mask_planes:
            return self.mask_planes[name]
        used = set(self.mask_planes.values())
        for bit in range(_MAX_MASK_BIT + 1):
            if bit not in used:
                self.mask_planes[name] = bit
                return bit
        raise StorageClassError(f"No free mask bit left for plane {name!r}; all 32 are used.")

    # -- conversions -----------------------------------------------------------------------

    def to_ccddata(self, bad_planes: Iterable[str] | None = None) -> CCDData:
        """A ``CCDData`` with a variance uncertainty and a boolean mask of unusable pixels.

        ``bad_planes`` selects the planes that make a pixel bad (default
        :data:`DEFAULT_BAD_PLANES`, those this image has); an image without named planes
        counts every set bit. CCDData requires a unit, so an image without one gets
        ``dimensionless``.
        """
        wanted = DEFAULT_BAD_PLANES if bad_planes is None else tuple(bad_planes)
        if self.mask_planes:
            present = [p for p in wanted if p in self.mask_planes]
            if bad_planes is not None and len(present) != len(wanted):
                self.plane_bitmask(*wanted)  # raises naming the missing plane
            bad = self.mask_of(*present) if present else np.zeros(self.shape, dtype=bool)
        else:
            bad = self.mask_of()
        return CCDData(
            self.data,
            uncertainty=VarianceUncertainty(self.variance),
            mask=bad,
            wcs=self.wcs,
            meta=self.header.copy(),
            unit=self.unit if self.unit is not None else u.dimensionless_unscaled,
        )

    @classmethod
    def from_nddata(cls, nddata: NDData, mask_planes: Mapping[str, int] | None = None) -> Image:
        """Convert an ``NDData``/``CCDData``: any uncertainty becomes a variance, a boolean
        mask becomes the ``BAD`` plane, ``meta`` becomes the header."""
        if isinstance(nddata, Image):
            return nddata
        if not isinstance(nddata, NDData):
            raise StorageClassError(f"Expected an astropy NDData, got {type(nddata).__name__}.")
        variance = None
        if nddata.uncertainty is not None:
            variance = _uncertainty_to_variance(nddata.uncertainty)
        return cls(
            np.asarray(nddata.data),
            variance=variance,
            mask=nddata.mask,
            mask_planes=mask_planes,
            wcs=_as_wcs(nddata.wcs),
            unit=nddata.unit,
            header=_as_header(nddata.meta) if nddata.meta else None,
        )

    # -- slicing ---------------------------------------------------------------------------

    def _slice(self, item: Any) -> dict[str, Any]:
        # NDSlicingMixin would wrap the WCS in a SlicedLowLevelWCS, which FITS cannot store;
        # WCS.slice gives a real FITS WCS with CRPIX moved, so sky positions stay right.
        if not isinstance(item, tuple):
            item = (item, slice(None))
        if len(item) != 2 or not all(isinstance(s, slice) for s in item):
            raise TypeError(
                "An Image is sliced with two slices, img[y0:y1, x0:x1], so it stays 2-D; "
                f"got {item!r}. Index .data for single pixels."
            )
        for s in item:
            if s.step is not None and s.step <= 0:
                raise TypeError(f"Image slices need a positive step, got {s!r}.")
        kwargs: dict[str, Any] = super()._slice(item)
        kwargs["mask_planes"] = dict(self.mask_planes)
        kwargs["header"] = kwargs.pop("meta")
        return kwargs

    def _slice_wcs(self, item: Any) -> WCS | None:
        if self.wcs is None:
            return None
        sliced: WCS = self.wcs.slice(item)
        return sliced

    def cutout(self, bbox: Any) -> Image:
        """The part of the image inside ``bbox`` (a :class:`Box` or a pair of slices)."""
        result: Image = self[as_box(bbox, self.shape).slices]
        return result

    def __repr__(self) -> str:
        planes = ", ".join(self.mask_planes)
        wcs = "yes" if self.wcs is not None else "none"
        return (
            f"Image(shape={self.shape}, dtype={self.data.dtype}, unit={self.unit}, wcs={wcs}, "
            f"mask_planes=[{planes}], header cards={len(self.header)})"
        )
