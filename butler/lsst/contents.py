"""What an LSST butler source holds, in this project's terms, before it is written anywhere."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from butler.errors import ButlerError


class LsstFormatError(ButlerError, ValueError):
    """An LSST butler export or archive this project cannot read (malformed, or holding
    something it cannot carry over); the message names what and where."""


@dataclass(frozen=True)
class DafCollection:
    name: str
    type: str
    """``RUN``, ``CHAINED``, ``TAGGED`` or ``CALIBRATION`` (the last two are not carried over)."""
    children: tuple[str, ...] = ()
    doc: str = ""


@dataclass(frozen=True)
class DafDataset:
    id: uuid.UUID
    dataset_type: str
    run: str
    data_id: dict[str, Any]
    path: Path
    """The local file holding the dataset's bytes."""
    storage_class: str
    """The LSST butler's storage class name (``ArrowAstropy``, ``StructuredDataDict``...)."""
    formatter: str | None = None
    """The LSST butler's formatter class, when the source names it."""


@dataclass
class DafContents:
    universe_version: int | None
    """The source's LSST universe version (None: older than the version was recorded)."""
    records: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    """Dimension records by element, in this project's field names and value forms."""
    collections: list[DafCollection] = field(default_factory=list)
    dataset_types: dict[str, tuple[tuple[str, ...], str]] = field(default_factory=dict)
    """Dataset type name -> (its dimensions as the source lists them, storage class)."""
    datasets: list[DafDataset] = field(default_factory=list)
