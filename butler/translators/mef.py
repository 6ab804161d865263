"""Finding a detector's planes in multi-extension files that pair them by EXTNAME/EXTVER."""

from __future__ import annotations

from dataclasses import dataclass

from butler.translators.base import FileHeaders

__all__ = ["PlaneSet", "planes_by_extver"]


@dataclass(frozen=True)
class PlaneSet:
    """Positions of one detector's image, variance-like and mask HDUs (None if absent or
    empty: raw HST files carry ``ERR``/``DQ`` extensions with ``NAXIS = 0``)."""

    ver: int
    image: int
    variance: int | None
    mask: int | None


def planes_by_extver(
    headers: FileHeaders, image: str, variance: tuple[str, ...], mask: tuple[str, ...]
) -> list[PlaneSet]:
    """One :class:`PlaneSet` per ``image`` extension, matched to same-EXTVER planes."""
    out = []
    for position in headers.pixel_hdus():
        hdu = headers.hdu(position)
        if hdu["name"] != image.upper():
            continue
        ver = int(hdu["ver"])
        var = next((p for n in variance if (p := headers.find(n, ver)) is not None), None)
        msk = next((p for n in mask if (p := headers.find(n, ver)) is not None), None)
        shape = hdu["shape"][-2:]
        var = var if var is not None and headers.hdu(var)["shape"][-2:] == shape else None
        msk = msk if msk is not None and headers.hdu(msk)["shape"][-2:] == shape else None
        out.append(PlaneSet(ver, position, var, msk))
    return out
