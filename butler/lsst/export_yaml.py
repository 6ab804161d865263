"""The LSST butler's export YAML (``butler export``/``Butler.export``), read with PyYAML.

Its tags: ``!butler_time/tai/iso`` (a TAI time, kept exact), ``!uuid``,
``!<lsst.sphgeom.ConvexPolygon>`` and the other sphgeom regions (``{encoded: HEX}``),
``!lsst.daf.butler.Timespan`` and ``!!binary`` (a skymap's hash). Any other tag is an error
naming it. Files are relative to the export's directory (or absolute local paths).
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from butler.lsst.contents import DafCollection, DafContents, DafDataset, LsstFormatError
from butler.lsst.records import TaiTime, complete_records, convert_record, group_extra
from butler.tai import tai_from_iso
from butler.universe import DimensionUniverse

__all__ = ["read_export"]

_BASE: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _ExportLoader(_BASE):  # type: ignore[misc, valid-type]
    """A safe loader knowing the LSST butler's tags (and no others)."""


def _tai(loader: yaml.SafeLoader, node: yaml.Node) -> TaiTime | None:
    text = loader.construct_scalar(node)  # type: ignore[arg-type]
    if text in (None, "", "null"):
        return None
    return TaiTime(tai_from_iso(str(text)))


def _uuid(loader: yaml.SafeLoader, node: yaml.Node) -> uuid.UUID:
    return uuid.UUID(str(loader.construct_scalar(node)))  # type: ignore[arg-type]


def _region(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> str:
    mapping = loader.construct_mapping(node)  # type: ignore[arg-type]
    encoded = mapping.get("encoded")
    if not isinstance(encoded, str):
        raise yaml.constructor.ConstructorError(
            None, None, f"sphgeom {suffix} without an 'encoded' hex string", node.start_mark
        )
    return encoded


def _timespan(loader: yaml.SafeLoader, node: yaml.Node) -> dict[str, Any] | None:
    if isinstance(node, yaml.ScalarNode):
        return None  # "EMPTY"
    return dict(loader.construct_mapping(node))  # type: ignore[arg-type]


_ExportLoader.add_constructor("!butler_time/tai/iso", _tai)
_ExportLoader.add_constructor("!uuid", _uuid)
_ExportLoader.add_constructor("!lsst.daf.butler.Timespan", _timespan)
_ExportLoader.add_multi_constructor("lsst.sphgeom.", _region)
_ExportLoader.add_multi_constructor("!lsst.sphgeom.", _region)


def _load(path: Path) -> Mapping[str, Any]:
    try:
        text = path.read_text()
    except OSError as exc:
        raise LsstFormatError(f"cannot read export {path}: {exc}") from exc
    try:
        data = yaml.load(text, Loader=_ExportLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        raise LsstFormatError(
            f"{path} is not an LSST butler export this butler reads: {exc}"
        ) from exc
    if not isinstance(data, Mapping) or not isinstance(data.get("data"), list):
        raise LsstFormatError(
            f"{path}: not an LSST butler export (expected a mapping with a 'data' list, as "
            "`butler export` writes)"
        )
    return data


def _str(item: Mapping[str, Any], key: str, where: str) -> str:
    value = item.get(key)
    if not isinstance(value, str) or not value:
        raise LsstFormatError(f"{where}: '{key}' is missing or not a string")
    return value


def read_export(path: Path, universe: DimensionUniverse) -> DafContents:
    """The contents of an export file, records converted to ``universe``."""
    path = Path(path)
    data = _load(path)
    version_value = data.get("universe_version")
    version = int(version_value) if isinstance(version_value, int) else None
    namespace = data.get("universe_namespace", "daf_butler")
    if namespace != "daf_butler":
        raise LsstFormatError(
            f"{path}: universe namespace {namespace!r} is not the LSST butler's (daf_butler)"
        )
    contents = DafContents(universe_version=version)
    base = path.parent
    for number, item in enumerate(data["data"], start=1):
        where = f"{path.name}: data item {number}"
        if not isinstance(item, Mapping):
            raise LsstFormatError(f"{where}: expected a mapping")
        kind = item.get("type")
        if kind == "dimension":
            element = _str(item, "element", where)
            rows = contents.records.setdefault(element, [])
            extra: list[tuple[str, dict[str, Any]]] = []
            for record in item.get("records") or []:
                if not isinstance(record, Mapping):
                    raise LsstFormatError(f"{where}: a {element} record is not a mapping")
                converted, more = convert_record(universe, element, record, version, where)
                rows.append(converted)
                extra += more
            group_extra(contents.records, extra)
        elif kind == "collection":
            # Old chains could restrict a child to dataset types ([name, restriction]); the
            # LSST butler ignores the restriction now, and so does this.
            children = tuple(
                str(c[0]) if isinstance(c, list) and c else str(c)
                for c in item.get("children") or ()
            )
            contents.collections.append(
                DafCollection(
                    name=_str(item, "name", where),
                    type=_str(item, "collection_type", where),
                    children=children,
                    doc=str(item.get("doc") or ""),
                )
            )
        elif kind == "run":  # export format 1.0.0 wrote runs as their own kind
            contents.collections.append(DafCollection(_str(item, "name", where), "RUN"))
        elif kind == "dataset_type":
            name = _str(item, "name", where)
            dimensions = item.get("dimensions") or []
            if not isinstance(dimensions, list):
                raise LsstFormatError(f"{where}: dataset type {name!r} dimensions not a list")
            names = [str(d) for d in dimensions]
            if (version or 0) < 2 and "visit" in names and "visit_system" in names:
                names.remove("visit_system")  # a visit no longer implies its system
            contents.dataset_types[name] = (
                tuple(names),
                _str(item, "storage_class", where),
            )
        elif kind == "dataset":
            _read_datasets(item, contents, base, where)
        elif kind in ("associations",):
            continue  # TAGGED and CALIBRATION memberships: not carried over (see the docs)
        else:
            raise LsstFormatError(f"{where}: unknown item type {kind!r}")
    contents.records = complete_records(universe, contents.records)
    return contents


def _read_datasets(item: Mapping[str, Any], contents: DafContents, base: Path, where: str) -> None:
    type_name = _str(item, "dataset_type", where)
    run = _str(item, "run", where)
    if type_name not in contents.dataset_types:
        raise LsstFormatError(f"{where}: datasets of {type_name!r} come before its definition")
    storage_class = contents.dataset_types[type_name][1]
    for record in item.get("records") or []:
        if not isinstance(record, Mapping):
            raise LsstFormatError(f"{where}: a {type_name} dataset record is not a mapping")
        ids = record.get("dataset_id")
        data_ids = record.get("data_id")
        ids = ids if isinstance(ids, list) else [ids]
        data_ids = data_ids if isinstance(data_ids, list) else [data_ids]
        if len(ids) != len(data_ids) or not ids:
            raise LsstFormatError(f"{where}: {type_name} dataset ids and data IDs do not pair up")
        file_path = _local_path(record.get("path"), base, f"{where}: {type_name}")
        for dataset_id, data_id in zip(ids, data_ids, strict=True):
            if isinstance(dataset_id, int):
                raise LsstFormatError(
                    f"{where}: {type_name} has integer dataset IDs (a registry older than UUIDs); "
                    "export it again with a current LSST butler"
                )
            try:
                uid = (
                    dataset_id if isinstance(dataset_id, uuid.UUID) else uuid.UUID(str(dataset_id))
                )
            except ValueError:
                raise LsstFormatError(f"{where}: {dataset_id!r} is not a UUID") from None
            if not isinstance(data_id, Mapping):
                raise LsstFormatError(f"{where}: a {type_name} data ID is not a mapping")
            contents.datasets.append(
                DafDataset(
                    id=uid,
                    dataset_type=type_name,
                    run=run,
                    data_id=dict(data_id),
                    path=file_path,
                    storage_class=storage_class,
                    formatter=record.get("formatter"),
                )
            )


def _local_path(value: Any, base: Path, where: str) -> Path:
    if not isinstance(value, str) or not value:
        raise LsstFormatError(f"{where}: a dataset has no file path (export it with its files)")
    if value.startswith("file://"):
        value = value[len("file://") :]
    elif "://" in value:
        raise LsstFormatError(
            f"{where}: file {value!r} is not local; export with a transfer (--transfer copy) "
            "so the files are beside the export"
        )
    path = Path(value)
    return path if path.is_absolute() else base / path
