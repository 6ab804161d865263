"""Write LSST butler contents into a repository, all of it or nothing (one transaction).

Datasets keep their UUIDs, so importing the same export again adds only what is missing
(a UUID always names the same bytes). Dimension records that exist already are kept as they
are. What has no place here is reported, not dropped silently: TAGGED and CALIBRATION
collections (this registry has RUN and CHAINED ones).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from butler.direct_butler import TRANSFER_MODES, DirectButler, IngestEntry
from butler.lsst.contents import DafCollection, DafContents, DafDataset, LsstFormatError
from butler.lsst.storage import our_storage
from butler.universe import DimensionUniverse

__all__ = ["ImportSummary", "apply", "required_dimensions"]

_CARRIED = ("RUN", "CHAINED")


@dataclass
class ImportSummary:
    records: int = 0
    dataset_types: list[str] = field(default_factory=list)
    collections: list[str] = field(default_factory=list)
    datasets: int = 0
    already_present: int = 0
    not_carried_over: list[str] = field(default_factory=list)


def required_dimensions(universe: DimensionUniverse, names: Iterable[str]) -> tuple[str, ...]:
    """The dimensions a dataset type is defined by, from the LSST butler's full list (which
    also names the implied ones: ``band``, ``day_obs``, ``physical_filter`` for a visit)."""
    given = list(names)
    unknown = [n for n in given if n not in universe.dimensions]
    if unknown:
        raise LsstFormatError(
            f"dimensions {unknown} have no place in this repository's universe (sky "
            "pixelisations such as htm7 are not carried over)"
        )
    implied = set(universe.implied_closure(given)) | {i for n in given for i in universe[n].implies}
    return tuple(n for n in universe.dimensions if n in given and n not in implied)


def _chain_order(collections: list[DafCollection]) -> list[DafCollection]:
    """Chains after the chains they contain."""
    chains = {c.name: c for c in collections if c.type == "CHAINED"}
    done: list[DafCollection] = []

    def visit(name: str, depth: int) -> None:
        if depth > 100:
            raise LsstFormatError(f"collection chain through {name!r} is a cycle")
        chain = chains.get(name)
        if chain is None or chain in done:
            return
        for child in chain.children:
            visit(child, depth + 1)
        done.append(chain)

    for name in chains:
        visit(name, 0)
    return done


def _dataset_storage(
    contents: DafContents, unsupported: dict[str, str]
) -> dict[str, tuple[str, str]]:
    """Each dataset type's (storage class, formatter) here, from its files; the types with
    a format this project does not read go into ``unsupported`` with the reason."""
    chosen: dict[str, tuple[str, str]] = {}
    for dataset in contents.datasets:
        where = f"dataset {dataset.id} of {dataset.dataset_type!r}"
        if dataset.dataset_type in unsupported:
            continue
        try:
            mapped = our_storage(dataset.storage_class, dataset.path, where)
        except LsstFormatError as exc:
            unsupported[dataset.dataset_type] = str(exc)
            chosen.pop(dataset.dataset_type, None)
            continue
        previous = chosen.setdefault(dataset.dataset_type, mapped)
        if previous != mapped:
            raise LsstFormatError(
                f"{where}: its file {dataset.path.name!r} is {mapped}, but other datasets of "
                f"the type are {previous}; a dataset type here has one format"
            )
    return chosen


def apply(
    contents: DafContents,
    butler: DirectButler,
    *,
    transfer: str = "copy",
    skip_dimensions: bool = False,
) -> ImportSummary:
    """Write ``contents`` into ``butler``'s repository as one transaction."""
    if transfer not in TRANSFER_MODES:
        raise LsstFormatError(f"transfer must be one of {TRANSFER_MODES}, not {transfer!r}")
    universe = butler.universe
    summary = ImportSummary()
    unsupported: dict[str, str] = {}
    storage = _dataset_storage(contents, unsupported)
    for name, reason in unsupported.items():
        summary.not_carried_over.append(f"dataset type {name!r}: {reason}")
    datasets = [d for d in contents.datasets if d.dataset_type in storage]
    missing = [d for d in datasets if not d.path.is_file()]
    if missing:
        shown = ", ".join(str(d.path) for d in missing[:3]) + (", ..." if len(missing) > 3 else "")
        raise LsstFormatError(
            f"{len(missing)} dataset files are missing ({shown}); "
            "an export's files must be beside it as `butler export --transfer copy` leaves them"
        )
    carried = {c.name for c in contents.collections if c.type in _CARRIED}
    carried |= {d.run for d in datasets}
    for collection in contents.collections:
        if collection.type not in _CARRIED:
            summary.not_carried_over.append(
                f"{collection.type} collection {collection.name!r} (only RUN and CHAINED "
                "collections exist here; its datasets come in through their RUNs)"
            )
    present = butler.registry.existing_ids(d.id for d in datasets)
    with butler.transaction():
        if not skip_dimensions:
            for element in universe.names:
                rows = contents.records.get(element)
                if rows:
                    summary.records += butler.insert_dimension_records(
                        element, *rows, skip_existing=True
                    )
        for name, (dimensions, storage_class) in contents.dataset_types.items():
            if name in unsupported:
                continue
            if name not in storage:
                summary.not_carried_over.append(
                    f"dataset type {name!r} ({storage_class}): no datasets in the export"
                )
                continue
            ours, formatter = storage[name]
            butler.register_dataset_type(
                name, required_dimensions(universe, dimensions), ours, formatter
            )
            summary.dataset_types.append(name)
        for collection in contents.collections:
            if collection.type == "RUN":
                butler.register_run(collection.name, collection.doc)
                summary.collections.append(collection.name)
        for chain in _chain_order(contents.collections):
            children = [c for c in chain.children if c in carried]
            dropped = [c for c in chain.children if c not in carried]
            if dropped:
                summary.not_carried_over.append(
                    f"chain {chain.name!r} members {dropped} (not RUN or CHAINED)"
                )
            for child in children:
                if child not in {c.name for c in contents.collections}:
                    butler.register_run(child)
            butler.set_collection_chain(chain.name, children, chain.doc)
            summary.collections.append(chain.name)
        entries = [_entry(dataset) for dataset in datasets if dataset.id not in present]
        butler.ingest_many(entries, transfer=transfer)
    summary.datasets = len(entries)
    summary.already_present = len(datasets) - len(entries)
    return summary


def _entry(dataset: DafDataset) -> IngestEntry:
    return IngestEntry(
        path=Path(dataset.path),
        dataset_type=dataset.dataset_type,
        data_id=dataset.data_id,
        run=dataset.run,
        dataset_id=dataset.id,
    )
