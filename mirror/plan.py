"""The plan of a pull, decided before any byte moves (pure: no I/O).

From what the source's query returned, what the mirror holds already, and what partial
downloads lie around, it says how many datasets and bytes there are, how many are present,
what will be downloaded, and whether the destination has room.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from butler.refs import DatasetRef, FileInfo
from butler.units import human_size

SPACE_MARGIN = 64 * 2**20
"""Room kept free beyond the downloads (registry growth, filesystem slack)."""


@dataclass(frozen=True)
class Item:
    ref: DatasetRef
    file: FileInfo


@dataclass
class Plan:
    items: list[Item]
    present: list[Item] = field(default_factory=list)
    to_fetch: list[Item] = field(default_factory=list)
    resumable_bytes: int = 0
    """Bytes of partial downloads that will be resumed, not fetched again."""
    partial_ids: set[uuid.UUID] = field(default_factory=set)
    """Datasets to fetch that have a partial download (of any length) to resume."""
    free_bytes: int = 0

    @property
    def total_bytes(self) -> int:
        return sum(i.file.size for i in self.items)

    @property
    def present_bytes(self) -> int:
        return sum(i.file.size for i in self.present)

    @property
    def fetch_bytes(self) -> int:
        """Bytes still to transfer (partial downloads count for what they lack)."""
        return sum(i.file.size for i in self.to_fetch) - self.resumable_bytes

    @property
    def needed_bytes(self) -> int:
        return self.fetch_bytes + SPACE_MARGIN if self.to_fetch else 0

    @property
    def fits(self) -> bool:
        return self.needed_bytes <= self.free_bytes

    def as_dict(self) -> dict[str, int | bool]:
        return {
            "datasets": len(self.items),
            "total_bytes": self.total_bytes,
            "present": len(self.present),
            "present_bytes": self.present_bytes,
            "to_download": len(self.to_fetch),
            "download_bytes": self.fetch_bytes,
            "resumed_bytes": self.resumable_bytes,
            "free_bytes": self.free_bytes,
            "fits": self.fits,
        }


def make_plan(
    items: Iterable[Item],
    present_ids: set[uuid.UUID],
    partial_sizes: Mapping[uuid.UUID, int],
    free_bytes: int,
) -> Plan:
    unique: dict[uuid.UUID, Item] = {}
    for item in items:
        unique.setdefault(item.ref.id, item)
    plan = Plan(items=list(unique.values()), free_bytes=free_bytes)
    for item in plan.items:
        if item.ref.id in present_ids:
            plan.present.append(item)
        else:
            plan.to_fetch.append(item)
            if item.ref.id in partial_sizes:
                plan.partial_ids.add(item.ref.id)
                plan.resumable_bytes += min(partial_sizes[item.ref.id], item.file.size)
    return plan


def describe_plan(plan: Plan) -> str:
    lines = [
        f"{len(plan.items)} datasets, {human_size(plan.total_bytes)} in all",
        f"{len(plan.present)} already in the mirror ({human_size(plan.present_bytes)})",
        f"{len(plan.to_fetch)} to download ({human_size(plan.fetch_bytes)}"
        + (
            f"; {human_size(plan.resumable_bytes)} resumed from partial files"
            if plan.resumable_bytes
            else ""
        )
        + ")",
        f"free space at the destination: {human_size(plan.free_bytes)}",
    ]
    return "\n".join(lines)
