"""How each detector of a raw file is stored (pure: no I/O).

A dataset is one file with one offset index: that is what lets proxies cache byte ranges and
mirrors copy datasets. A raw file holding exactly one detector's planes is stored as it is
(so ``--transfer link/symlink/direct`` keep the original bytes). A file holding several
detectors (DECam, Euclid VIS, GMOS), or a detector whose planes are split over several files
(Spitzer ``_bcd``/``_bunc``/``_bimsk``, DECam ``ooi``/``oow``/``ood``), is *assembled*: a new
file per detector with a PRIMARY HDU carrying the exposure metadata and then the detector's
image, variance and mask HDUs, their data bytes copied verbatim.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from butler.translators.base import HduRef, RawUnit

__all__ = ["PLANE_ORDER", "StoragePlan", "extension_name", "plan_storage"]

PLANE_ORDER = ("image", "variance", "mask")


@dataclass(frozen=True)
class StoragePlan:
    """One detector: stored as the original file, or assembled from ``parts``."""

    unit: RawUnit
    as_is: bool
    parts: tuple[tuple[str, HduRef], ...]
    """(role, source HDU) in stored order after the new PRIMARY (assembled files only)."""
    positions: dict[str, int]
    """Role -> HDU position in the stored file."""

    def raw_index(self) -> dict[str, Any]:
        """The ``raw`` entry of the stored file's offset index."""
        return {
            "layout": self.unit.layout.stored(self.positions),
            "observation": self.unit.observation.to_dict(),
        }


def plan_storage(units: Sequence[RawUnit]) -> list[StoragePlan]:
    if len(units) == 1 and all(r.file == "main" for r in units[0].layout.refs().values()):
        unit = units[0]
        positions = {role: ref.hdu for role, ref in unit.layout.refs().items()}
        return [StoragePlan(unit, True, (), positions)]
    plans = []
    for unit in units:
        refs = unit.layout.refs()
        parts = tuple((role, refs[role]) for role in PLANE_ORDER if role in refs)
        positions = {"metadata": 0} | {role: n for n, (role, _) in enumerate(parts, start=1)}
        plans.append(StoragePlan(unit, False, parts, positions))
    return plans


def extension_name(role: str, variance_kind: str, mask_is_lsst: bool) -> str:
    """EXTNAME of an assembled plane, saying what it holds to anyone opening the file."""
    if role == "image":
        return "SCI"
    if role == "variance":
        return {"variance": "VARIANCE", "stddev": "ERR", "inverse_variance": "WEIGHT"}[
            variance_kind
        ]
    return "MASK" if mask_is_lsst else "DQ"
