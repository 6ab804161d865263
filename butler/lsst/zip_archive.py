"""The zip archives of the LSST butler's ``butler retrieve-artifacts --zip``.

An archive holds the dataset files and ``_butler_zip_index.json``: the datasets' UUIDs,
types, runs and data IDs, the file each is in (its size and, when known, checksum), and
sometimes their dimension records. Members are extracted by the names the index gives, into
files whose names are made here (never a path taken from the archive), and each is checked
against the size the index records before anything is written to the registry.
"""

from __future__ import annotations

import json
import uuid
import zipfile
from collections.abc import Mapping
from pathlib import Path, PurePosixPath
from typing import Any

from butler.lsst.contents import DafCollection, DafContents, DafDataset, LsstFormatError
from butler.lsst.daf_columns import ZIP_RECORD_COLUMNS, ZIP_RECORD_VERSIONS
from butler.lsst.records import complete_records, convert_record, group_extra
from butler.universe import DimensionUniverse

__all__ = ["INDEX_NAME", "read_zip"]

INDEX_NAME = "_butler_zip_index.json"


def _mapping(value: Any, what: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise LsstFormatError(f"{what} is missing or not a mapping")
    return value


def read_zip(path: Path, universe: DimensionUniverse, extract_to: Path) -> DafContents:
    """The archive's contents, its files extracted (and size-checked) into ``extract_to``."""
    path = Path(path)
    try:
        archive = zipfile.ZipFile(path)
    except (OSError, zipfile.BadZipFile) as exc:
        raise LsstFormatError(f"{path} is not a zip archive: {exc}") from exc
    with archive:
        try:
            index = json.loads(archive.read(INDEX_NAME))
        except KeyError:
            raise LsstFormatError(
                f"{path}: no {INDEX_NAME}; not an archive made by `butler retrieve-artifacts --zip`"
            ) from None
        except (ValueError, zipfile.BadZipFile) as exc:
            raise LsstFormatError(f"{path}: {INDEX_NAME} is not valid JSON: {exc}") from exc
        where = f"{path.name}: {INDEX_NAME}"
        index = _mapping(index, where)
        if index.get("index_version") != "V1":
            raise LsstFormatError(
                f"{where}: index version {index.get('index_version')!r} is not V1, the one "
                "this butler reads"
            )
        refs = _mapping(index.get("refs"), f"{where}: 'refs'")
        version = refs.get("universe_version")
        contents = DafContents(universe_version=version if isinstance(version, int) else None)
        _read_records(refs.get("dimension_records"), contents, universe, where)
        for name, spec in _mapping(refs.get("dataset_types"), f"{where}: dataset_types").items():
            spec = _mapping(spec, f"{where}: dataset type {name!r}")
            contents.dataset_types[name] = (
                tuple(str(d) for d in spec.get("dimensions") or ()),
                str(spec.get("storageClass")),
            )
        compact = _mapping(refs.get("compact_refs"), f"{where}: compact_refs")
        runs: list[str] = []
        artifacts = _mapping(index.get("artifact_map"), f"{where}: artifact_map")
        for number, (member, artifact) in enumerate(artifacts.items()):
            artifact = _mapping(artifact, f"{where}: artifact {member!r}")
            info = _mapping(artifact.get("info"), f"{where}: artifact {member!r} info")
            if info.get("component"):
                raise LsstFormatError(
                    f"{where}: {member!r} is one component of a disassembled dataset; such "
                    "datasets are not carried over (write them whole in the LSST butler)"
                )
            target = extract_to / f"{number:06d}{_suffix(member)}"
            _extract(archive, member, target, info.get("file_size"), where)
            for text in artifact.get("ids") or []:
                try:
                    dataset_id = uuid.UUID(str(text))
                except ValueError:
                    raise LsstFormatError(f"{where}: {text!r} is not a UUID") from None
                ref = _mapping(compact.get(str(text)), f"{where}: compact ref {text}")
                type_name = str(ref.get("dataset_type_name"))
                if type_name not in contents.dataset_types:
                    raise LsstFormatError(f"{where}: {text} is of undefined type {type_name!r}")
                run = str(ref.get("run"))
                if run not in runs:
                    runs.append(run)
                contents.datasets.append(
                    DafDataset(
                        id=dataset_id,
                        dataset_type=type_name,
                        run=run,
                        data_id=dict(_mapping(ref.get("data_id"), f"{where}: {text} data ID")),
                        path=target,
                        storage_class=str(info.get("storage_class")),
                        formatter=info.get("formatter"),
                    )
                )
        contents.collections = [DafCollection(run, "RUN") for run in runs]
    contents.records = complete_records(universe, contents.records)
    return contents


def _suffix(member: str) -> str:
    """The member's extension(s) (``.fits.fz``), which decide how its dataset is read."""
    suffixes = PurePosixPath(member).suffixes[-2:]
    text = "".join(s for s in suffixes if s.replace(".", "").isalnum() and len(s) <= 8)
    return text.lower()


def _extract(archive: zipfile.ZipFile, member: str, target: Path, size: Any, where: str) -> None:
    try:
        info = archive.getinfo(member)
    except KeyError:
        raise LsstFormatError(
            f"{where}: the index lists {member!r}, which is not in the archive"
        ) from None
    if isinstance(size, int) and size >= 0 and info.file_size != size:
        raise LsstFormatError(
            f"{where}: {member!r} is {info.file_size} bytes, the index says {size}; the archive "
            "is damaged"
        )
    try:
        with archive.open(info) as source, open(target, "xb") as out:
            while chunk := source.read(1 << 20):
                out.write(chunk)
    except (zipfile.BadZipFile, OSError) as exc:  # a CRC mismatch is a BadZipFile
        raise LsstFormatError(f"{where}: cannot extract {member!r}: {exc}") from exc


def _read_records(
    value: Any, contents: DafContents, universe: DimensionUniverse, where: str
) -> None:
    if value is None:
        return  # records not included: the repository must have them (or `butler import`)
    if contents.universe_version not in ZIP_RECORD_VERSIONS:
        raise LsstFormatError(
            f"{where}: dimension records of LSST universe version {contents.universe_version} "
            f"(this butler reads those of versions {ZIP_RECORD_VERSIONS}); bring the records "
            "in with `butler import` of an export and make the archive without them"
        )
    for element, rows in _mapping(value, f"{where}: dimension_records").items():
        columns = ZIP_RECORD_COLUMNS.get(element)
        if columns is None:
            raise LsstFormatError(f"{where}: unknown dimension element {element!r}")
        out = contents.records.setdefault(element, [])
        extra: list[tuple[str, dict[str, Any]]] = []
        for row in rows if isinstance(rows, list) else []:
            if not isinstance(row, list) or len(row) != len(columns):
                raise LsstFormatError(
                    f"{where}: a {element} record is not a list of {len(columns)} values"
                )
            record = dict(zip(columns, row, strict=True))
            converted, more = convert_record(
                universe, element, record, contents.universe_version, where
            )
            out.append(converted)
            extra += more
        group_extra(contents.records, extra)
