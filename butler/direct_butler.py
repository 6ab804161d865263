"""The butler on a local repository directory: registry + datastore + formatters."""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from collections.abc import Callable, Collection, Coroutine, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from butler.blocking import run_in_place
from butler.butler import Butler, QuerySummary
from butler.datastore import (
    Staging,
    check_file,
    recover_stale_staging,
    render_path,
    sha256_file,
)
from butler.errors import (
    AmbiguousDatasetError,
    ButlerError,
    CorruptFileError,
    DatasetNotFoundError,
    ReadOnlyRepositoryError,
    StorageClassError,
    TransactionError,
)
from butler.formatters.base import Formatter, validate_file
from butler.formatters.registry import ORIGIN_KEY, FormatterRegistry, default_registry
from butler.io.source import ByteSource, LocalFileSource
from butler.reading import Collections, IOStats, Lookup, Reader, as_collection_list
from butler.refs import DataCoordinate, DatasetRef, DatasetType, FileInfo, split_component
from butler.registry import Registry
from butler.registry_db import check_postgresql_url
from butler.repo_config import RepoConfig, load_repo_config, new_repository_layout, repo_info
from butler.universe import DimensionUniverse

T = TypeVar("T")

TRANSFER_MODES = ("copy", "move", "hardlink", "link", "symlink", "direct")


def _value_order(value: Any) -> tuple[str, Any]:
    # Dimension keys are all ints or all strings; the type name keeps a mix sortable.
    return (type(value).__name__, value)


@dataclass
class _Transaction:
    staging: Staging | None = None
    marks: list[int] = field(default_factory=list)


def _missing(path: Path) -> FileNotFoundError:
    return FileNotFoundError(f"cannot ingest {path}: no such file")


def _transfer_file(source: Path, staged: Path, transfer: str) -> None:
    """Link or copy ``source`` to ``staged``."""
    if transfer in ("hardlink", "link", "move"):
        try:
            # A link is instant and leaves the source intact until the commit.
            os.link(source, staged)
            return
        except OSError:
            if transfer != "move":
                raise
    if transfer == "symlink":
        os.symlink(source.resolve(), staged)
        return
    shutil.copyfile(source, staged)


@dataclass(frozen=True)
class IngestEntry:
    """One file for :meth:`DirectButler.ingest_many` and what to record it as."""

    path: Path
    dataset_type: str | DatasetType
    data_id: Mapping[str, Any]
    run: str | None = None
    """RUN collection (default: the butler's run)."""
    dataset_id: uuid.UUID | None = None
    checksum: str | None = None
    """The file's ``sha256:`` digest when the caller has verified it already."""
    size: int | None = None
    """The file's size in bytes, verified along with ``checksum`` (used only with it)."""
    index: Mapping[str, Any] | None = None
    """The file's offset index when the caller has it already (a mirror has the source's
    for the same, checksum-verified bytes); used only if built by the same formatter."""
    index_formatter: str | None = None
    """The formatter that built ``index``."""


class _LocalReader(Reader):
    """The read path's primitives on a local repository: the registry finds, the file is
    read where it lies (or where its open transaction staged it). Nothing here waits."""

    def __init__(self, butler: DirectButler, formatters: FormatterRegistry) -> None:
        self.butler = butler
        self.formatters = formatters
        self.io_stats = IOStats()

    async def locate(self, lookup: Lookup) -> tuple[DatasetRef, FileInfo]:
        return self.butler._resolve(
            lookup.target, lookup.data_id, lookup.collections, lookup.kwargs
        )

    async def byte_source(self, ref: DatasetRef, file: FileInfo) -> ByteSource:
        path = self.butler._stored_path(file)
        try:
            return LocalFileSource(path)
        except FileNotFoundError:
            raise CorruptFileError(
                f"the file of {ref!r} is missing from the datastore ({path})"
            ) from None

    async def local_file(self, ref: DatasetRef, file: FileInfo) -> Path:
        # Inside the writing transaction, the staged file: valid until the transaction ends
        # (a commit renames it into place, so an open descriptor or memory map stays valid).
        return self.butler._stored_path(file)

    async def file_present(self, ref: DatasetRef, file: FileInfo) -> bool:
        try:
            check_file(self.butler._stored_path(file), file.size)
        except CorruptFileError:
            return False
        return True

    async def file_uri(self, ref: DatasetRef, file: FileInfo) -> str:
        return self.butler._stored_path(file).as_uri()


class DirectButler(Butler):
    """The butler on a local repository directory (see :class:`~butler.butler.Butler`)."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        writeable: bool = False,
        run: str | None = None,
        collections: str | Sequence[str] | None = None,
        *,
        formatters: FormatterRegistry | None = None,
    ) -> None:
        super().__init__(path, writeable, run, collections)
        self.root = Path(path).expanduser().absolute()
        self.config: RepoConfig = load_repo_config(self.root)
        self.universe: DimensionUniverse = self.config.load_universe()
        self._local_reader = _LocalReader(self, formatters or default_registry())
        self.registry = Registry(self.config.registry_location, self.universe, self.writeable)
        self._txn: _Transaction | None = None
        if os.access(self.root, os.W_OK):
            # Any open may finish off what a killed writer left behind; live writers hold
            # their staging lock and are left alone.
            recover_stale_staging(self.root, self.registry.existing_ids)
        if run is not None:
            # Checked now, created by the first write: a butler opened to write that never
            # commits (its transaction failed or was killed) leaves no empty RUN behind.
            self._check_run(run)

    @property
    def _reader(self) -> Reader:
        return self._local_reader

    def _read(self, call: Callable[[Reader], Coroutine[Any, Any, T]]) -> T:
        return run_in_place(call(self._local_reader))  # local primitives never wait

    # -- creation and lifecycle -----------------------------------------------------------

    @classmethod
    def create_repository(
        cls,
        path: str | os.PathLike[str],
        *,
        name: str | None = None,
        universe: str | os.PathLike[str] | None = None,
        description: str = "",
        tolerated: Collection[str] = (),
        registry: str | None = None,
    ) -> DirectButler:
        """Create a new, empty repository at ``path`` and open it for writing.

        ``path`` must be missing or empty, but for the names in ``tolerated``: those are
        kept as they are, even when the creation fails. ``registry``: a PostgreSQL URL of
        an empty database for the registry (default: SQLite inside ``path``).
        """
        root = Path(path).expanduser().absolute()
        if registry is not None:
            check_postgresql_url(registry)
        with new_repository_layout(
            root,
            name=name,
            universe=Path(universe) if universe else None,
            description=description,
            tolerated=tolerated,
            registry=registry,
        ) as config:
            Registry.create(config.registry_location, config.load_universe())
        return cls(root, writeable=True)

    def close(self) -> None:
        self.registry.close()

    def __repr__(self) -> str:
        mode = "writeable" if self.writeable else "read-only"
        return (
            f"Butler({str(self.root)!r}, {mode}, run={self.run!r}, "
            f"collections={self.collections!r})"
        )

    def info(self) -> dict[str, Any]:
        return repo_info(
            self.config,
            {
                "root": str(self.root),
                "registry": str(self.config.registry_location),
                "datasets": self.registry.count_datasets(),
                "dataset_types": [t.name for t in self.registry.dataset_types()],
                "collections": [c["name"] for c in self.registry.collections()],
            },
        )

    # -- transactions ---------------------------------------------------------------------

    def _check_writeable(self) -> None:
        if not self.writeable:
            raise ReadOnlyRepositoryError(
                f"repository {self.root} was opened read-only; open it with "
                "Butler(path, writeable=True) or Butler(path, run='...')"
            )

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """All puts, removes and registrations inside happen together or not at all.

        Files are staged and moved into place just before the single SQLite commit; an
        exception rolls both back. Nested calls form savepoints: an exception caught inside
        the outer block undoes only the inner one.

        Reads inside see the transaction's own writes (``get``, ``open``, ``get_local_path``,
        ``memmap``, ``exists``, queries): its uncommitted registry rows through its own
        SQLite connection, and its files where they are staged. Other butlers and processes
        see none of it until the commit. A process killed at any point leaves nothing the
        next writeable open does not undo (see :mod:`butler.datastore`); the RUN a butler
        was opened with is created by its first write, inside that write's transaction.
        """
        self._check_writeable()
        if self._txn is not None:
            txn = self._txn
            staged = len(txn.staging.files) if txn.staging else 0
            deletions = len(txn.staging.deletions) if txn.staging else 0
            try:
                with self.registry.transaction():
                    yield
            except BaseException:
                if txn.staging is not None:
                    for item in txn.staging.files[staged:]:
                        item.staged.unlink(missing_ok=True)
                    del txn.staging.files[staged:]
                    del txn.staging.deletions[deletions:]
                raise
            return
        txn = _Transaction()
        self._txn = txn
        committed = False
        try:
            with self.registry.transaction():
                yield
                if txn.staging is not None:
                    txn.staging.move_into_place()
            committed = True
        finally:
            self._txn = None
            if txn.staging is not None:
                txn.staging.finish(committed, self.registry.existing_ids)

    def _check_run(self, run: str) -> None:
        """Refuse a ``run`` that could never be written to (a bad name, a CHAINED one)."""
        Registry.check_writable_run(run, self.registry.collection_type(run, missing_ok=True))

    def _staging(self) -> Staging:
        assert self._txn is not None
        if self._txn.staging is None:
            self._txn.staging = Staging.begin(self.root)
        return self._txn.staging

    # -- registrations --------------------------------------------------------------------

    def register_dataset_type(
        self,
        name: str,
        dimensions: Iterable[str],
        storage_class: str,
        formatter: str | None = None,
    ) -> DatasetType:
        """Register (or confirm) a dataset type. Redefining an existing one is an error."""
        required = self.universe.validate_dimensions(dimensions, f"dataset type {name!r}")
        sc = self.formatters.storage_class(storage_class)
        if formatter is not None:
            fmt = self.formatters.formatter(formatter)
            if fmt.storage_class != sc.name:
                raise StorageClassError(
                    f"formatter {formatter!r} writes storage class {fmt.storage_class!r}, "
                    f"not {storage_class!r}"
                )
        dataset_type = DatasetType(
            name=name,
            dimensions=required,
            storage_class=sc.name,
            formatter=formatter,
            implied=self.universe.implied_closure(required),
        )
        with self.transaction():
            self.registry.register_dataset_type(dataset_type)
        return self.registry.get_dataset_type(name)

    def get_dataset_type(self, name: str) -> DatasetType:
        return self.registry.get_dataset_type(split_component(name)[0])

    def dataset_types(self) -> list[DatasetType]:
        return self.registry.dataset_types()

    def register_run(self, name: str, doc: str = "") -> bool:
        with self.transaction():
            return self.registry.register_run(name, doc)

    def set_collection_chain(self, name: str, children: Sequence[str], doc: str = "") -> None:
        """Create or redefine a CHAINED collection that searches ``children`` in order."""
        with self.transaction():
            self.registry.set_chain(name, list(children), doc)

    def get_collection_chain(self, name: str) -> list[str]:
        return self.registry.chain(name)

    def query_collections(self) -> list[dict[str, Any]]:
        return self.registry.collections()

    def insert_dimension_records(
        self, element: str, *records: Mapping[str, Any], skip_existing: bool = False
    ) -> int:
        """Add dimension records; key fields are enough (``{"instrument": "HSC", "id": 42}``)."""
        with self.transaction():
            return self.registry.insert_dimension_records(
                element, records, skip_existing=skip_existing
            )

    # -- resolving datasets ---------------------------------------------------------------

    def _search_runs(self, collections: str | Sequence[str] | None) -> tuple[list[str], list[str]]:
        """(collections as given, RUNs to search in order)."""
        names = as_collection_list(collections) or self.collections
        if names is None:
            return [], self.registry.all_runs()
        if self.run in names and self.registry.collection_type(self.run, missing_ok=True) is None:
            # The butler's own RUN is created by its first write; until then it is searched
            # as an empty RUN (its name matches no row) in its place in the search order.
            runs: list[str] = []
            for name in names:
                flat = [name] if name == self.run else self.registry.flatten([name])
                runs += [r for r in flat if r not in runs]
            return names, runs
        return names, self.registry.flatten(names)

    def _resolve(
        self,
        dataset_type_or_ref: str | DatasetType | DatasetRef,
        data_id: Mapping[str, Any] | DataCoordinate | None,
        collections: str | Sequence[str] | None,
        kwargs: Mapping[str, Any],
    ) -> tuple[DatasetRef, FileInfo]:
        if isinstance(dataset_type_or_ref, DatasetRef):
            ref = dataset_type_or_ref
            found = self.registry.get_dataset(ref.id)
            if found is None:
                raise DatasetNotFoundError(
                    f"dataset {ref.name} {ref.data_id!r} (id {ref.id}, run {ref.run!r}) is not "
                    "in this repository"
                )
            return found[0].make_component_ref(ref.component), found[1]
        name = (
            dataset_type_or_ref.name
            if isinstance(dataset_type_or_ref, DatasetType)
            else dataset_type_or_ref
        )
        parent, component = split_component(name)
        dataset_type = self.registry.get_dataset_type(parent)
        given = {**dict(data_id or {}), **kwargs}
        coordinate = self.registry.expand_data_id(dataset_type, given, check_records=False)
        names, runs = self._search_runs(collections)
        if not names:
            # No search path: accept a unique match among all runs.
            matches = self.registry.query_datasets(
                dataset_type, runs, data_id=coordinate.required, find_first=False
            )
            if len(matches) > 1:
                raise AmbiguousDatasetError(
                    f"{parent!r} {coordinate!r} exists in several runs "
                    f"({', '.join(m[0].run for m in matches)}); pass collections=..."
                )
            names = runs
        found = self.registry.find_dataset(dataset_type, coordinate, runs)
        if found is None:
            raise DatasetNotFoundError.for_search(name, coordinate, names)
        return found[0].make_component_ref(component), found[1]

    def _stored_path(self, file: FileInfo) -> Path:
        """Where a dataset's bytes are now: its staged file while the transaction that wrote
        it is open (read your own writes), else its place in the datastore.

        Staged files live in this transaction's locked ``.staging`` directory and their
        registry rows are uncommitted, so no other butler or process can see either until
        the commit moves them into place.
        """
        staging = self._txn.staging if self._txn is not None else None
        if staging is not None:
            staged = staging.staged_path(file.dataset_id)
            if staged is not None:
                return staged
        return self.root / file.path

    def verify(self, refs: Iterable[DatasetRef] | None = None) -> list[tuple[DatasetRef, str]]:
        """Re-hash files; returns (ref, problem) for each missing or altered one."""
        problems: list[tuple[DatasetRef, str]] = []
        if refs is None:
            refs = [
                ref
                for dataset_type in self.registry.dataset_types()
                for ref in self.query_datasets(dataset_type.name, find_first=False)
            ]
        for ref in refs:
            _, file = self._resolve(ref, None, None, {})
            try:
                check_file(self._stored_path(file), file.size, file.checksum)
            except CorruptFileError as exc:
                problems.append((ref, str(exc)))
        return problems

    # -- writing --------------------------------------------------------------------------

    def put(
        self,
        obj: Any,
        dataset_type: str | DatasetType,
        data_id: Mapping[str, Any] | None = None,
        *,
        run: str | None = None,
        **data_id_kwargs: Any,
    ) -> DatasetRef:
        """Store ``obj`` as a new dataset of ``dataset_type`` in ``run`` (default: the butler's)."""
        self._check_writeable()
        dataset_type, formatter, obj = self._prepare_write(obj, dataset_type)
        run = self._write_run(run)
        with self.transaction():
            ref = self._new_ref(dataset_type, run, {**dict(data_id or {}), **data_id_kwargs})
            staging = self._staging()
            staged = staging.new_path(ref.id, formatter.extension)
            try:
                formatter.write(obj, staged)  # made durable at commit (Staging.move_into_place)
            except ButlerError:
                staged.unlink(missing_ok=True)
                raise
            except Exception as exc:
                staged.unlink(missing_ok=True)
                raise StorageClassError(
                    f"formatter {formatter.name!r} could not write {ref.name} "
                    f"{ref.data_id!r}: {exc}"
                ) from exc
            self._record_file(ref, formatter, staged, staging)
        return ref

    def ingest(
        self,
        path: str | os.PathLike[str],
        dataset_type: str | DatasetType,
        data_id: Mapping[str, Any] | None = None,
        *,
        run: str | None = None,
        transfer: str = "copy",
        dataset_id: uuid.UUID | None = None,
        checksum: str | None = None,
        index: dict[str, Any] | None = None,
        **data_id_kwargs: Any,
    ) -> DatasetRef:
        """Add an existing file (already in the dataset type's format) as a dataset.

        The file is checked (its offset index built, so a broken or truncated file is refused)
        before anything is recorded. ``transfer`` is ``copy``, ``move`` (the source is removed
        once the transaction commits), ``hardlink`` (alias ``link``), ``symlink`` (the
        datastore holds a link to the absolute source path) or ``direct`` (nothing is
        transferred: the registry records the file's absolute path, the file stays the
        caller's, and removing the dataset leaves it alone; such datasets are readable only
        by local butlers, since a server serves files inside the repository only).
        ``index`` is the file's offset index when the caller built it already (raw ingest
        adds the instrument layout to it). ``dataset_id`` keeps a UUID assigned
        elsewhere (a remote client, the repository a mirror copies): a UUID names the same
        bytes everywhere. ``checksum`` is the file's ``sha256:`` digest when the caller has
        just computed and verified it (a mirror hashes while downloading), so it is not read
        again.
        """
        entry = IngestEntry(
            Path(path),
            dataset_type,
            {**dict(data_id or {}), **data_id_kwargs},
            run=run,
            dataset_id=dataset_id,
            checksum=checksum,
            index=index,
        )
        return self.ingest_many([entry], transfer=transfer)[0]

    def ingest_many(
        self, entries: Sequence[IngestEntry], *, transfer: str = "copy"
    ) -> list[DatasetRef]:
        """Ingest many files as one transaction (see :meth:`ingest` for each file's checks).

        The registry work is done per batch, not per file: each dataset type and run is
        looked up once, and the rows of each dataset type go in with one statement. A
        dataset that exists already fails the whole batch (nothing is recorded or moved).
        """
        self._check_writeable()
        if transfer not in TRANSFER_MODES:
            raise ValueError(f"transfer must be one of {TRANSFER_MODES}, not {transfer!r}")
        types: dict[str, tuple[DatasetType, Formatter]] = {}
        indexed: list[tuple[IngestEntry, DatasetType, Formatter, dict[str, Any]]] = []
        for entry in entries:
            # Other transfers find a missing file when they link or copy it (below): a
            # batch of a mirror's 2,000 downloads saves 2,000 stat calls.
            if transfer == "direct" and not entry.path.is_file():
                raise _missing(entry.path)
            name = (
                entry.dataset_type.name
                if isinstance(entry.dataset_type, DatasetType)
                else entry.dataset_type
            )
            if name not in types:
                resolved = self._dataset_type(entry.dataset_type)
                types[name] = (resolved, self._formatter_for(resolved))
            resolved, formatter = types[name]
            if entry.index is not None and entry.index_formatter in (None, formatter.name):
                index = dict(entry.index)
            else:
                try:
                    index = validate_file(formatter, entry.path)  # refuse broken input first
                except FileNotFoundError:
                    raise _missing(entry.path) from None
            indexed.append((entry, resolved, formatter, index))
        refs: list[DatasetRef] = []
        with self.transaction():
            runs: dict[str | None, str] = {}
            rows: dict[str, list[tuple[DatasetRef, FileInfo]]] = {}
            staging = self._staging()
            for entry, resolved, formatter, index in indexed:
                if entry.run not in runs:
                    runs[entry.run] = self._write_run(entry.run)
                    self.registry.register_run(runs[entry.run])
                coordinate = self.registry.expand_data_id(resolved, entry.data_id)
                ref = DatasetRef(
                    entry.dataset_id or uuid.uuid4(), resolved, coordinate, runs[entry.run]
                )
                if transfer == "direct":
                    info = self._file_info(
                        ref, formatter, entry.path, entry.checksum, index, external=True
                    )
                    rows.setdefault(resolved.name, []).append((ref, info))
                    refs.append(ref)
                    continue
                staged = staging.new_path(ref.id, formatter.extension)
                try:
                    _transfer_file(entry.path, staged, transfer)
                    info = self._file_info(
                        ref,
                        formatter,
                        staged,
                        entry.checksum,
                        index,
                        size=entry.size if entry.checksum else None,
                    )
                except BaseException as exc:
                    staged.unlink(missing_ok=True)
                    if isinstance(exc, FileNotFoundError) and not entry.path.is_file():
                        raise _missing(entry.path) from None
                    raise
                staging.add(ref.id, staged, info.path)
                rows.setdefault(resolved.name, []).append((ref, info))
                refs.append(ref)
            for batch in rows.values():
                # The registry's unique key refuses a data ID already in the run.
                self.registry.insert_datasets(batch)
        if transfer == "move":
            for entry in entries:
                entry.path.unlink(missing_ok=True)
        return refs

    def _dataset_type(self, dataset_type: str | DatasetType) -> DatasetType:
        name = dataset_type.name if isinstance(dataset_type, DatasetType) else dataset_type
        parent, component = split_component(name)
        if component is not None:
            raise StorageClassError(
                f"cannot write component {name!r}; put the whole {parent!r} dataset"
            )
        return self.registry.get_dataset_type(parent)

    def _formatter_for(self, dataset_type: DatasetType) -> Formatter:
        sc = self.formatters.storage_class(dataset_type.storage_class)
        return self.formatters.formatter(dataset_type.formatter or sc.default_formatter)

    def _prepare_write(
        self, obj: Any, dataset_type: str | DatasetType
    ) -> tuple[DatasetType, Formatter, Any]:
        resolved = self._dataset_type(dataset_type)
        sc = self.formatters.storage_class(resolved.storage_class)
        return resolved, self._formatter_for(resolved), sc.validate(obj)

    def _write_run(self, run: str | None) -> str:
        run = run or self.run
        if run is None:
            raise TransactionError(
                "no RUN collection to write to: open the butler with run='...' or pass run="
            )
        return run

    def _new_ref(
        self,
        dataset_type: DatasetType,
        run: str,
        data_id: Mapping[str, Any],
        dataset_id: uuid.UUID | None = None,
    ) -> DatasetRef:
        self.registry.register_run(run)
        coordinate = self.registry.expand_data_id(dataset_type, data_id)
        ref = DatasetRef(dataset_id or uuid.uuid4(), dataset_type, coordinate, run)
        if self.registry.find_dataset(dataset_type, coordinate, [run]) is not None:
            from butler.errors import DatasetExistsError

            raise DatasetExistsError(
                f"a {dataset_type.name!r} dataset with data ID {coordinate!r} exists already in "
                f"run {run!r}; datasets are immutable: remove it first or write to another run"
            )
        return ref

    def _record_file(
        self,
        ref: DatasetRef,
        formatter: Formatter,
        staged: Path,
        staging: Staging,
    ) -> None:
        try:
            info = self._file_info(ref, formatter, staged)
            self.registry.insert_dataset(ref, info)
        except BaseException:
            staged.unlink(missing_ok=True)
            raise
        staging.add(ref.id, staged, info.path)

    def _file_path(self, ref: DatasetRef, formatter: Formatter) -> str:
        return render_path(
            self.config.file_template,
            run=ref.run,
            dataset_type=ref.dataset_type.name,
            data_id=ref.data_id,
            dimensions=ref.dataset_type.dimensions,
            dataset_id=ref.id,
            extension=formatter.extension,
        )

    def _file_info(
        self,
        ref: DatasetRef,
        formatter: Formatter,
        file: Path,
        checksum: str | None = None,
        index: dict[str, Any] | None = None,
        *,
        external: bool = False,
        size: int | None = None,
    ) -> FileInfo:
        """The file record of a staged file (indexed and hashed here unless already done),
        or with ``external`` of a file that stays where it is (``transfer="direct"``: the
        record holds its absolute path)."""
        if index is None:
            index = validate_file(formatter, file)
        origin = self.formatters.origin(formatter.name)
        if origin is not None:
            # Readers without the plugin are told what to install (see load_plugins).
            index = {**index, ORIGIN_KEY: origin}
        return FileInfo(
            dataset_id=ref.id,
            path=str(file.resolve()) if external else self._file_path(ref, formatter),
            size=file.stat().st_size if size is None else size,
            checksum=checksum or sha256_file(file),
            formatter=formatter.name,
            storage_class=ref.dataset_type.storage_class,
            index=index,
        )

    def remove(
        self,
        refs: DatasetRef | Iterable[DatasetRef] | str,
        data_id: Mapping[str, Any] | None = None,
        *,
        collections: str | Sequence[str] | None = None,
        **kwargs: Any,
    ) -> int:
        """Remove datasets (refs, or one dataset type + data ID); files go on commit."""
        self._check_writeable()
        if isinstance(refs, str):
            ref_list = [self._resolve(refs, data_id, collections, kwargs)[0]]
        elif isinstance(refs, DatasetRef):
            ref_list = [refs]
        else:
            ref_list = list(refs)
        with self.transaction():
            staging = self._staging()
            found = []
            for ref in ref_list:
                resolved = self.registry.get_dataset(ref.id)
                if resolved is None:
                    raise DatasetNotFoundError(
                        f"cannot remove {ref!r}: it is not in the repository"
                    )
                found.append(resolved)
            self.registry.delete_datasets(r.id for r, _ in found)
            for ref, file in found:
                if Path(file.path).is_absolute():
                    continue  # ingested with transfer="direct": the file is not ours to delete
                staging.delete_on_commit(ref.id, self.root / file.path)
        return len(ref_list)

    # -- queries --------------------------------------------------------------------------

    def query_datasets_with_files(
        self,
        dataset_type: str | DatasetType,
        collections: str | Sequence[str] | None = None,
        where: str = "",
        bind: Mapping[str, Any] | None = None,
        *,
        find_first: bool = True,
        limit: int | None = None,
        offset: int = 0,
        **data_id: Any,
    ) -> list[tuple[DatasetRef, FileInfo]]:
        """Like :meth:`query_datasets`, with each dataset's file record (size, checksum, index)."""
        name = dataset_type.name if isinstance(dataset_type, DatasetType) else dataset_type
        resolved = self.get_dataset_type(name)
        names, runs = self._search_runs(collections)
        rows = self.registry.query_datasets(
            resolved,
            runs,
            where=where,
            bind=bind,
            data_id=data_id,
            find_first=find_first and bool(names),
            limit=limit,
            with_files=True,
            offset=offset,
        )
        return [(ref, file) for ref, file in rows if file is not None]

    def query_summary(
        self,
        dataset_type: str | DatasetType,
        collections: Collections = None,
        where: str = "",
        bind: Mapping[str, Any] | None = None,
        *,
        find_first: bool = True,
        **data_id: Any,
    ) -> QuerySummary:
        name = dataset_type.name if isinstance(dataset_type, DatasetType) else dataset_type
        resolved = self.get_dataset_type(name)
        names, runs = self._search_runs(collections)
        count, size = self.registry.summarize_datasets(
            resolved, runs, where, bind, data_id, find_first=find_first and bool(names)
        )
        return QuerySummary(count=count, size=size)

    def query_dimension_values(
        self,
        dimension: str,
        where: str = "",
        bind: Mapping[str, Any] | None = None,
        *,
        dataset_type: str | None = None,
        collections: Collections = None,
        **data_id: Any,
    ) -> list[Any]:
        ids = self.query_data_ids(
            [dimension],
            where,
            bind,
            dataset_type=dataset_type,
            collections=collections,
            **data_id,
        )
        return sorted({i[dimension] for i in ids if dimension in i}, key=_value_order)

    def query_data_ids(
        self,
        dimensions: str | Sequence[str],
        where: str = "",
        bind: Mapping[str, Any] | None = None,
        *,
        dataset_type: str | None = None,
        collections: str | Sequence[str] | None = None,
        limit: int | None = None,
        offset: int = 0,
        **data_id: Any,
    ) -> list[DataCoordinate]:
        """Distinct data IDs over ``dimensions`` (restricted to those with datasets, if asked)."""
        dims = [dimensions] if isinstance(dimensions, str) else list(dimensions)
        resolved = self.registry.get_dataset_type(dataset_type) if dataset_type else None
        runs = self._search_runs(collections)[1] if resolved is not None else None
        return self.registry.query_data_ids(
            dims, where, bind, data_id, dataset_type=resolved, runs=runs, limit=limit, offset=offset
        )

    def query_dimension_records(
        self,
        element: str,
        where: str = "",
        bind: Mapping[str, Any] | None = None,
        *,
        limit: int | None = None,
        **data_id: Any,
    ) -> list[dict[str, Any]]:
        """Records of one dimension element (``visit``, ``detector``...), filtered."""
        return self.registry.query_dimension_records(element, where, bind, data_id, limit)
