"""Sky regions in the LSST butler's encoding (lsst.sphgeom's ``Region.encode()``), and the
bounding box a query can use.

A region is kept exactly as the LSST butler wrote it (the encoded bytes, as hex), so nothing
is lost; what this project's queries use is its RA/Dec bounding box, computed here without
lsst.sphgeom (the core install does not need it). Encodings: a type byte, then little-endian
doubles — ``p`` a convex polygon (unit-vector vertices), ``b`` a box (longitude interval,
latitude interval, radians), ``c`` a circle (centre unit vector, squared chord length,
opening angle). Other region kinds (ellipses, unions, intersections) are kept but get no box.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from typing import Any

from butler.errors import DataIdError

__all__ = ["BoundingBox", "bounding_box", "region_hex"]


@dataclass(frozen=True)
class BoundingBox:
    """ICRS degrees; ``ra_min > ra_max`` when the box crosses RA 0 (it holds RA >= ra_min
    and RA <= ra_max); a box around a pole spans RA 0..360."""

    ra_min: float
    ra_max: float
    dec_min: float
    dec_max: float


def region_hex(value: Any, what: str) -> str:
    """The hex text stored for a region given as hex, bytes, or an lsst.sphgeom region."""
    if hasattr(value, "encode") and not isinstance(value, str | bytes):
        value = value.encode()  # an lsst.sphgeom.Region
    if isinstance(value, bytes | bytearray):
        return bytes(value).hex()
    if isinstance(value, str):
        try:
            bytes.fromhex(value)
        except ValueError:
            raise DataIdError(
                f"{what} must be a hex-encoded sphgeom region, got {value!r}"
            ) from None
        return value.lower()
    raise DataIdError(f"{what} must be a region (hex text, bytes or sphgeom region), not {value!r}")


def bounding_box(encoded_hex: str) -> BoundingBox | None:
    """The RA/Dec box enclosing the region, or None for a kind without one here."""
    data = bytes.fromhex(encoded_hex)
    if not data:
        return None
    kind, body = data[:1], data[1:]
    if kind == b"p" and body and len(body) % 24 == 0:
        count = len(body) // 24
        vertices = [struct.unpack_from("<3d", body, 24 * i) for i in range(count)]
        return _polygon_box([_normalise(v) for v in vertices])
    if kind == b"b" and len(body) == 32:
        lon_a, lon_b, lat_a, lat_b = struct.unpack("<4d", body)
        if lat_a > lat_b:
            return None  # an empty box
        full = lon_b - lon_a >= 2 * math.pi or (lon_a == 0 and lon_b >= 2 * math.pi)
        return BoundingBox(
            0.0 if full else math.degrees(lon_a) % 360,
            360.0 if full else math.degrees(lon_b) % 360,
            math.degrees(lat_a),
            math.degrees(lat_b),
        )
    if kind == b"c" and len(body) == 40:
        x, y, z, _, opening = struct.unpack("<5d", body)
        return _circle_box(_normalise((x, y, z)), opening)
    return None


Vector = tuple[float, float, float]


def _normalise(v: Vector) -> Vector:
    norm = math.sqrt(v[0] ** 2 + v[1] ** 2 + v[2] ** 2)
    return (v[0] / norm, v[1] / norm, v[2] / norm)


def _cross(a: Vector, b: Vector) -> Vector:
    return (a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2], a[0] * b[1] - a[1] * b[0])


def _dot(a: Vector, b: Vector) -> float:
    return a[0] * b[0] + a[1] * b[1] + a[2] * b[2]


def _ra(v: Vector) -> float:
    return math.degrees(math.atan2(v[1], v[0])) % 360


def _dec(v: Vector) -> float:
    return math.degrees(math.asin(max(-1.0, min(1.0, v[2]))))


def _polygon_box(vertices: list[Vector]) -> BoundingBox:
    decs = [_dec(v) for v in vertices]
    edges = list(zip(vertices, vertices[1:] + vertices[:1], strict=True))
    # A great-circle arc reaches its highest (lowest) declination inside the arc, not at a
    # vertex, when the circle's topmost point lies between the arc's ends.
    for a, b in edges:
        normal = _cross(a, b)
        n2 = _dot(normal, normal)
        if n2 == 0:
            continue
        for sign in (1.0, -1.0):
            # The point of the circle nearest the pole: z-axis minus its normal component.
            t = normal[2] / n2
            top = (-t * normal[0] * sign, -t * normal[1] * sign, sign * (1 - t * normal[2]))
            length = math.sqrt(_dot(top, top))
            if length < 1e-12:
                continue  # an arc of the equator: every point has the same declination
            top = (top[0] / length, top[1] / length, top[2] / length)
            if _dot(_cross(a, top), normal) >= 0 and _dot(_cross(top, b), normal) >= 0:
                decs.append(_dec(top))
    # A convex polygon holding a pole spans every RA, up to that pole.
    for pole, sign in (((0.0, 0.0, 1.0), 1.0), ((0.0, 0.0, -1.0), -1.0)):
        if all(_dot(_cross(a, b), pole) >= 0 for a, b in edges):
            return BoundingBox(
                0.0, 360.0, min(decs) if sign > 0 else -90.0, 90.0 if sign > 0 else max(decs)
            )
    return BoundingBox(*_ra_interval([_ra(v) for v in vertices]), min(decs), max(decs))


def _ra_interval(ras: list[float]) -> tuple[float, float]:
    """The shortest RA interval holding every value: from after the largest gap to before it.

    Along an arc that does not pass a pole, RA changes monotonically, so the vertices' RAs
    bound the polygon's (a polygon around a pole is handled before this)."""
    ordered = sorted(ras)
    gaps = [((ordered[(i + 1) % len(ordered)] - ordered[i]) % 360, i) for i in range(len(ordered))]
    if len(ordered) == 1:
        return ordered[0], ordered[0]
    _, widest = max(gaps)
    return ordered[(widest + 1) % len(ordered)], ordered[widest]


def _circle_box(centre: Vector, opening: float) -> BoundingBox:
    dec = math.asin(max(-1.0, min(1.0, centre[2])))
    dec_min = math.degrees(dec - opening)
    dec_max = math.degrees(dec + opening)
    if dec_max >= 90 or dec_min <= -90:
        return BoundingBox(0.0, 360.0, max(dec_min, -90.0), min(dec_max, 90.0))
    half = math.degrees(math.asin(min(1.0, math.sin(opening) / math.cos(dec))))
    ra = _ra(centre)
    return BoundingBox((ra - half) % 360, (ra + half) % 360, dec_min, dec_max)
