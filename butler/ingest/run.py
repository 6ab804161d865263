"""``ingest_raws``: raw files from any telescope into a local repository.

For each file: read its headers (never its pixels), pick a translator, describe each
detector, then in one transaction per file insert the dimension records and register one
``raw`` dataset per detector whose offset index carries the plane layout. A file that fails
is reported and the next one is tried, unless ``fail_fast`` is set.
"""

from __future__ import annotations

import bz2
import gzip
import shutil
import tempfile
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

from butler.direct_butler import DirectButler
from butler.errors import ButlerError, CorruptFileError, DatasetExistsError
from butler.ingest.assemble import assemble
from butler.ingest.discover import expand_paths, file_kind, looks_like_fits
from butler.ingest.headers import read_file_headers
from butler.ingest.plan import StoragePlan, plan_storage
from butler.ingest.records import dimension_records
from butler.refs import DatasetRef
from butler.translators.base import FileHeaders, Observation, RawUnit, Translator
from butler.translators.registry import TranslatorRegistry, choose_translator

__all__ = ["RAW_DIMENSIONS", "FileOutcome", "RawIngestOptions", "ingest_raws"]

RAW_DIMENSIONS = ("instrument", "exposure", "detector")
Status = Literal["ingested", "skipped", "failed"]


@dataclass(frozen=True)
class RawIngestOptions:
    instrument: str = "auto"
    """A translator name, or ``auto`` to detect it from the headers."""
    transfer: str = "copy"
    run: str | None = None
    """RUN collection; default ``<instrument>/raw/all`` (the LSST convention)."""
    fail_fast: bool = False
    dataset_type: str = "raw"


@dataclass
class FileOutcome:
    """What happened to one file. ``warnings`` (one line each, starting with the fact
    concerned) name the facts left null because the header does not determine them, and
    those taken from a fallback keyword."""

    path: Path
    status: Status
    message: str
    translator: str | None = None
    refs: list[DatasetRef] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def default_run(instrument: str) -> str:
    return f"{instrument}/raw/all"


def ingest_raws(
    butler: DirectButler,
    paths: Sequence[Path],
    options: RawIngestOptions = RawIngestOptions(),  # noqa: B008 - frozen, never mutated
    *,
    translators: TranslatorRegistry | None = None,
    report: Callable[[FileOutcome], None] | None = None,
) -> list[FileOutcome]:
    """Ingest ``paths`` (files, or directories searched for FITS files); one outcome per file.

    With ``fail_fast`` the first failure is raised instead of reported.
    """
    registry = translators or TranslatorRegistry()
    files = expand_paths(paths, exclude=butler.root)
    named = {p for p in paths if not p.is_dir()}
    outcomes = []
    for path in files:
        try:
            outcome = _ingest_path(butler, path, path in named, options, registry)
        except (ButlerError, OSError, ValueError) as exc:
            if options.fail_fast:
                raise
            outcome = FileOutcome(path, "failed", str(exc))
        outcomes.append(outcome)
        if report is not None:
            report(outcome)
    return outcomes


_NOT_FITS = (
    "not a FITS file (neither its name nor its first bytes say so); ingest-raws reads FITS "
    "files (.fits, .fit, .fts), plain, tile-compressed (.fz) or compressed whole (.gz, .bz2)"
)


def _ingest_path(
    butler: DirectButler,
    path: Path,
    named: bool,
    options: RawIngestOptions,
    registry: TranslatorRegistry,
) -> FileOutcome:
    """One file: a non-FITS file met in a directory is skipped with the reason; a
    whole-file compressed one is decompressed first; any other is ingested (a file named on
    the command line that is not FITS fails, saying so)."""
    kind = file_kind(path)
    if kind == "other" and not named and not looks_like_fits(path):
        return FileOutcome(path, "skipped", _NOT_FITS)
    if kind not in ("gzip", "bzip2"):
        return _ingest_file(butler, path, options, registry)
    # Byte-range reads (cutouts, components, proxies) need offsets into plain FITS, which a
    # compressed stream does not have: the datastore keeps the decompressed file.
    with tempfile.TemporaryDirectory(dir=butler.root, prefix=".ingest-") as tmp:
        plain = Path(tmp) / _decompressed_name(path)
        _decompress(path, plain, kind)
        outcome = _ingest_file(butler, plain, replace(options, transfer="move"), registry)
    outcome.path = path
    if outcome.status == "ingested":
        kept = (
            ""
            if options.transfer in ("copy", "move")
            else (f"; --transfer {options.transfer} cannot apply to a decompressed copy")
        )
        outcome.message += f" ({kind}-compressed file: stored decompressed{kept})"
        if options.transfer == "move":
            path.unlink(missing_ok=True)
    return outcome


def _decompressed_name(path: Path) -> str:
    name = path.name
    for suffix in (".gz", ".bz2", ".GZ", ".BZ2"):
        name = name.removesuffix(suffix)
    return name if name != path.name else f"{name}.fits"


def _decompress(path: Path, out: Path, kind: str) -> None:
    opener = gzip.open if kind == "gzip" else bz2.open
    try:
        with opener(path, "rb") as src, out.open("xb") as dst:
            shutil.copyfileobj(src, dst, 8 * 1024 * 1024)
    except (OSError, EOFError, zlib.error) as exc:
        raise CorruptFileError(
            f"{path}: cannot decompress this {kind} file ({exc}); is it truncated?"
        ) from exc


def _ingest_file(
    butler: DirectButler, path: Path, options: RawIngestOptions, registry: TranslatorRegistry
) -> FileOutcome:
    if options.instrument == "auto":
        owner = registry.companion_owner(path.name)
        if owner is not None:
            return FileOutcome(
                path,
                "skipped",
                f"companion file ({owner.name} layout): ingested with its image file",
                owner.name,
            )
    headers = read_file_headers(path)
    translator = choose_translator(registry, headers, options.instrument)
    units = translator.translate(headers)
    files = {"main": headers, **_companions(translator, path, units)}
    plans = plan_storage(units)
    transfer = options.transfer
    note = ""
    if not plans[0].as_is and transfer in ("link", "hardlink", "symlink", "direct"):
        note = (
            f" (--transfer {transfer} keeps one file per dataset; this file's detectors were "
            "copied into one file each instead)"
        )
    refs: list[DatasetRef] = []
    try:
        with butler.transaction():
            _register(butler, options.dataset_type)
            for plan in plans:
                refs.append(_store(butler, plan, files, options))
    except DatasetExistsError:
        return FileOutcome(
            path,
            "skipped",
            f"already ingested: {options.dataset_type} datasets with these data IDs exist in "
            f"run {options.run or default_run(units[0].observation.instrument)!r} (--run "
            "another RUN keeps a second version)",
            translator.name,
        )
    if transfer == "move" and not plans[0].as_is:
        for file in files.values():
            file.path.unlink(missing_ok=True)
    obs = units[0].observation
    detectors = ", ".join(str(u.observation.detector) for u in units)
    return FileOutcome(
        path,
        "ingested",
        f"{obs.instrument} exposure {obs.exposure} detector(s) {detectors}, "
        f"{obs.physical_filter or 'physical_filter null'}, day_obs {obs.day_obs} "
        f"-> run {refs[0].run}{note}",
        translator.name,
        refs,
        _warnings(units),
    )


def _warnings(units: Sequence[RawUnit]) -> list[str]:
    """Each unit's warnings once; prefixed by the detector when detectors differ."""
    shared = set.intersection(*(set(u.warnings) for u in units)) if units else set()
    out = [w for w in units[0].warnings if w in shared] if units else []
    for unit in units:
        out += [
            f"detector {unit.observation.detector}: {w}" for w in unit.warnings if w not in shared
        ]
    return out


def _companions(
    translator: Translator, path: Path, units: Sequence[RawUnit]
) -> dict[str, FileHeaders]:
    needed = {ref.file for u in units for ref in u.layout.refs().values()} - {"main"}
    found = translator.companions(path)
    missing = sorted(needed - set(found))
    if missing:
        raise FileNotFoundError(
            f"{path}: the {translator.name} layout keeps the {', '.join(missing)} plane(s) in "
            "separate files beside the image, and they are missing; put them next to it"
        )
    return {role: read_file_headers(found[role]) for role in needed}


def _register(butler: DirectButler, dataset_type: str) -> None:
    butler.register_dataset_type(dataset_type, RAW_DIMENSIONS, "Image", "fits-image")


def _insert_records(butler: DirectButler, obs: Observation) -> None:
    for element, record in dimension_records(obs):
        columns = {name for name, _ in butler.universe.table_columns(element)}
        butler.insert_dimension_records(
            element, {k: v for k, v in record.items() if k in columns}, skip_existing=True
        )


def _store(
    butler: DirectButler,
    plan: StoragePlan,
    files: dict[str, FileHeaders],
    options: RawIngestOptions,
) -> DatasetRef:
    obs = plan.unit.observation
    _insert_records(butler, obs)
    run = options.run or default_run(obs.instrument)
    data_id = obs.data_id()
    main = files["main"]
    if plan.as_is:
        index = {**dict(main.index), "raw": plan.raw_index()}
        return butler.ingest(
            main.path,
            options.dataset_type,
            data_id,
            run=run,
            transfer=options.transfer,
            index=index,
        )
    from butler.formatters.fits_index import index_fits

    with tempfile.TemporaryDirectory(dir=butler.root, prefix=".ingest-") as tmp:
        out = Path(tmp) / f"{main.path.stem}-det{obs.detector}.fits"
        assemble(plan, files, out)
        index = {**index_fits(out), "raw": plan.raw_index()}
        return butler.ingest(
            out, options.dataset_type, data_id, run=run, transfer="move", index=index
        )
