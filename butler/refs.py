"""Value types that name datasets: dataset types, data IDs, dataset refs, file records.

All are immutable and convert to and from plain JSON-able dicts, which is how they travel
between a repository server and its clients.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

DataIdValue = int | str


class DataCoordinate(Mapping[str, DataIdValue]):
    """An immutable data ID: required dimension values, plus implied ones when known.

    Equality and hashing use the required values only, so an expanded data ID (with
    ``band`` and ``physical_filter`` filled in from records) equals the minimal one.
    """

    __slots__ = ("_hash", "_required", "_values")

    def __init__(self, values: Mapping[str, DataIdValue], required: tuple[str, ...]) -> None:
        self._values = dict(values)
        self._required = required
        self._hash = hash(tuple((k, self._values.get(k)) for k in required))

    @property
    def required(self) -> dict[str, DataIdValue]:
        return {k: self._values[k] for k in self._required if k in self._values}

    @property
    def required_names(self) -> tuple[str, ...]:
        return self._required

    def __getitem__(self, key: str) -> DataIdValue:
        return self._values[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __hash__(self) -> int:
        return self._hash

    def __eq__(self, other: object) -> bool:
        if isinstance(other, DataCoordinate):
            return self.required == other.required
        if isinstance(other, Mapping):
            return self.required == {k: other.get(k) for k in self._required}
        return NotImplemented

    def __repr__(self) -> str:
        inner = ", ".join(f"{k}: {v!r}" for k, v in self._values.items())
        return "{" + inner + "}"

    def to_dict(self) -> dict[str, Any]:
        return {"values": dict(self._values), "required": list(self._required)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DataCoordinate:
        return cls(data["values"], tuple(data["required"]))


@dataclass(frozen=True)
class DatasetType:
    """A named kind of dataset: its dimensions and storage class (and optionally formatter)."""

    name: str
    dimensions: tuple[str, ...]
    """Required dimensions, in canonical universe order."""
    storage_class: str
    formatter: str | None = None
    """Formatter name; ``None`` means the storage class's default."""
    implied: tuple[str, ...] = ()
    """Dimensions implied by the required ones (``band`` for a ``visit`` dataset)."""

    @property
    def all_dimensions(self) -> tuple[str, ...]:
        return self.dimensions + self.implied

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "dimensions": list(self.dimensions),
            "implied": list(self.implied),
            "storage_class": self.storage_class,
            "formatter": self.formatter,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DatasetType:
        return cls(
            name=data["name"],
            dimensions=tuple(data["dimensions"]),
            storage_class=data["storage_class"],
            formatter=data.get("formatter"),
            implied=tuple(data.get("implied", ())),
        )


def split_component(name: str) -> tuple[str, str | None]:
    """``"calexp.metadata"`` -> ``("calexp", "metadata")``."""
    parent, dot, component = name.partition(".")
    return parent, (component if dot else None)


@dataclass(frozen=True)
class DatasetRef:
    """A resolved dataset: its UUID, type, data ID and RUN collection."""

    id: uuid.UUID
    dataset_type: DatasetType
    data_id: DataCoordinate
    run: str
    component: str | None = field(default=None, compare=False)

    def make_component_ref(self, component: str | None) -> DatasetRef:
        return DatasetRef(self.id, self.dataset_type, self.data_id, self.run, component)

    @property
    def name(self) -> str:
        base = self.dataset_type.name
        return f"{base}.{self.component}" if self.component else base

    def __repr__(self) -> str:
        return f"DatasetRef({self.name}, {self.data_id!r}, run={self.run!r}, id={self.id})"

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": str(self.id),
            "dataset_type": self.dataset_type.to_dict(),
            "data_id": self.data_id.to_dict(),
            "run": self.run,
            "component": self.component,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DatasetRef:
        return cls(
            id=uuid.UUID(data["id"]),
            dataset_type=DatasetType.from_dict(data["dataset_type"]),
            data_id=DataCoordinate.from_dict(data["data_id"]),
            run=data["run"],
            component=data.get("component"),
        )


@dataclass(frozen=True)
class FileInfo:
    """The stored file of one dataset: where it is, what it holds, and its offset index.

    ``index`` is format specific; for FITS it lists every HDU's header and data offsets, so
    ``numpy.memmap(path, dtype=hdu["dtype"], mode="r", offset=hdu["data_offset"],
    shape=hdu["shape"])`` maps exactly one HDU's pixels.
    """

    dataset_id: uuid.UUID
    path: str
    """Path relative to the repository root (POSIX separators)."""
    size: int
    checksum: str
    """``"sha256:<hex>"`` of the whole file."""
    formatter: str
    storage_class: str
    index: dict[str, Any]

    @property
    def etag(self) -> str:
        return '"' + self.checksum.partition(":")[2] + '"'

    def hdu(self, name_or_index: str | int) -> dict[str, Any]:
        """The index entry of one FITS HDU, by EXTNAME or position."""
        for hdu in self.index.get("hdus", []):
            if hdu.get("index") == name_or_index or hdu.get("name") == name_or_index:
                return dict(hdu)
        names = [h.get("name") for h in self.index.get("hdus", [])]
        raise KeyError(f"no HDU {name_or_index!r} in {self.path} (HDUs: {names})")

    def to_dict(self) -> dict[str, Any]:
        return {
            "dataset_id": str(self.dataset_id),
            "path": self.path,
            "size": self.size,
            "checksum": self.checksum,
            "formatter": self.formatter,
            "storage_class": self.storage_class,
            "index": self.index,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FileInfo:
        return cls(
            dataset_id=uuid.UUID(data["dataset_id"]),
            path=data["path"],
            size=int(data["size"]),
            checksum=data["checksum"],
            formatter=data["formatter"],
            storage_class=data["storage_class"],
            index=dict(data.get("index") or {}),
        )
