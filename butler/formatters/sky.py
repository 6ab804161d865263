"""Sky cutouts: the pixel box of a sky region, through an image's WCS (no I/O).

The ``sky`` read parameter is ``(ra, dec, size)``: the centre as ICRS angles (astropy
``Angle``/``Quantity``, or numbers in degrees) — or ``(SkyCoord, size)`` — and ``size`` the full
width of a square region on the sky (a ``Quantity`` angle such as ``30 * u.arcsec``, or a
number in degrees). The box is the smallest pixel box containing the region's outline,
clipped to the image, so the same call gives the same patch of sky from any instrument.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from astropy import units as u
from astropy.coordinates import SkyCoord
from astropy.wcs import WCS

from butler.errors import UnsupportedParameterError
from butler.image import Box

__all__ = ["SkyRegion", "parse_sky", "sky_box"]

SkyRegion = tuple[SkyCoord, u.Quantity]

_OUTLINE_POINTS = 16  # per side: enough to follow the curvature of distorted WCSs


def _angle(value: Any, what: str) -> u.Quantity:
    if isinstance(value, u.Quantity):
        try:
            return value.to(u.deg)
        except u.UnitConversionError:
            raise UnsupportedParameterError(
                f"sky {what} must be an angle, got {value!r}; e.g. 30 * astropy.units.arcsec"
            ) from None
    if isinstance(value, int | float | np.floating | np.integer) and not isinstance(value, bool):
        return float(value) * u.deg
    raise UnsupportedParameterError(
        f"sky {what} must be an angle (astropy Quantity) or a number of degrees, got {value!r}"
    )


def parse_sky(value: Any) -> SkyRegion:
    """``(ra, dec, size)``, ``(SkyCoord, size)`` or a mapping with ``ra``, ``dec``, ``size``
    (in degrees: the form it has after a JSON round trip) -> (centre, size in degrees)."""
    if isinstance(value, Mapping):
        try:
            value = (value["ra"], value["dec"], value["size"])
        except KeyError as exc:
            raise UnsupportedParameterError(
                f"a sky mapping needs keys ra, dec, size (degrees); {exc} is missing"
            ) from None
    if isinstance(value, Sequence) and not isinstance(value, str):
        if len(value) == 2 and isinstance(value[0], SkyCoord):
            centre, size = value[0].icrs, _angle(value[1], "size")
        elif len(value) == 3:
            ra, dec = _angle(value[0], "ra"), _angle(value[1], "dec")
            if not -90 <= dec.value <= 90:
                raise UnsupportedParameterError(f"sky dec must lie in [-90, 90] deg, got {dec}")
            centre, size = SkyCoord(ra, dec, frame="icrs"), _angle(value[2], "size")
        else:
            centre = None
        if centre is not None:
            if not 0 < size.value < 180:
                raise UnsupportedParameterError(f"sky size must be in (0, 180) deg, got {size}")
            return centre, size
    raise UnsupportedParameterError(
        "sky must be (ra, dec, size) — angles or degrees, size the full width of the square "
        f"region — or (SkyCoord, size); got {value!r}"
    )


def sky_box(wcs: WCS | None, shape: tuple[int, int], region: SkyRegion, where: str) -> Box:
    """The pixel box (clipped to ``shape``) covering ``region``; raises if it misses the image."""
    if wcs is None or not wcs.has_celestial:
        raise UnsupportedParameterError(
            f"{where}: the image has no celestial WCS, so a sky cutout cannot be placed; "
            "use a pixel bbox instead"
        )
    centre, size = region
    half = size / 2
    steps = np.linspace(-1.0, 1.0, _OUTLINE_POINTS)
    # The square's outline in offsets (east, north) from the centre, tangent-plane style.
    east = np.concatenate([steps, np.ones_like(steps), steps[::-1], -np.ones_like(steps)])
    north = np.concatenate([-np.ones_like(steps), steps, np.ones_like(steps), steps[::-1]])
    outline = centre.spherical_offsets_by(east * half, north * half)
    points = SkyCoord(
        np.concatenate([outline.ra.deg, [centre.ra.deg]]) * u.deg,
        np.concatenate([outline.dec.deg, [centre.dec.deg]]) * u.deg,
        frame="icrs",
    )
    with np.errstate(invalid="ignore"):
        x, y = wcs.celestial.world_to_pixel(points)
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    finite = np.isfinite(x) & np.isfinite(y)
    if not finite.any():
        raise UnsupportedParameterError(
            f"{where}: the sky region centred at RA {centre.ra.deg:.6f}, Dec "
            f"{centre.dec.deg:.6f} deg does not overlap the image (it lies outside the "
            "projection of its WCS)"
        )
    height, width = shape
    # Pixel centres are at integers; a pixel covers [i - 0.5, i + 0.5).
    x0 = max(0, math.floor(float(x[finite].min()) + 0.5))
    x1 = min(width, math.floor(float(x[finite].max()) + 0.5) + 1)
    y0 = max(0, math.floor(float(y[finite].min()) + 0.5))
    y1 = min(height, math.floor(float(y[finite].max()) + 0.5) + 1)
    if x1 <= x0 or y1 <= y0:
        raise UnsupportedParameterError(
            f"{where}: the sky region centred at RA {centre.ra.deg:.6f}, Dec "
            f"{centre.dec.deg:.6f} deg ({size.to(u.arcsec):.1f} wide) does not overlap the "
            f"image ({width} x {height} pixels)"
        )
    return Box(x0, y0, x1 - x0, y1 - y0)
