"""``Butler``: one interface over a local repository and a remote one.

``Butler(path_or_url, ...)`` returns a :class:`~butler.direct_butler.DirectButler` for a local
path and a :class:`~butler.remote.butler.RemoteButler` for an ``http(s)://`` URL (a repository
server or a caching proxy in front of one). Reading is implemented once, here, on top of four
backend primitives: find a dataset and its file record, open a byte source on the file, give
a local path for it, check it is present. Everything else is declared here (the interface
both backends implement, which is why its bodies only raise) and implemented by each backend.
"""

from __future__ import annotations

import functools
import os
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self

from butler.errors import DatasetNotFoundError
from butler.formatters.registry import ORIGIN_KEY, FormatterRegistry
from butler.io.source import ByteSource, RangeFile
from butler.refs import DataCoordinate, DatasetRef, DatasetType, FileInfo
from butler.universe import DimensionUniverse

if TYPE_CHECKING:
    import numpy as np

    from butler.direct_butler import DirectButler
    from butler.interactive.factory import QueryFactory

DatasetLike = str | DatasetType | DatasetRef
Collections = str | Sequence[str] | None


@dataclass
class IOStats:
    """Bytes and read requests that this butler's reads have made (for checks and tests)."""

    bytes_read: int = 0
    requests: int = 0

    def reset(self) -> None:
        self.bytes_read = 0
        self.requests = 0

    def add(self, source: ByteSource) -> None:
        self.bytes_read += source.bytes_read
        self.requests += source.requests


@dataclass(frozen=True)
class QuerySummary:
    """What a dataset query would return, known before fetching anything."""

    count: int
    size: int
    """Total bytes of the datasets' files."""


def is_remote_uri(path: object) -> bool:
    return isinstance(path, str) and path.startswith(("http://", "https://"))


def as_collection_list(collections: Collections) -> list[str] | None:
    if collections is None:
        return None
    if isinstance(collections, str):
        return [collections]
    return list(collections)


def memmap_entry(file: FileInfo, hdu: str | int | None, raw: bool = False) -> dict[str, Any]:
    """The offset-index entry of the HDU :meth:`Butler.memmap` maps, once it is sure that the
    map gives what ``get()`` gives.

    ``hdu=None`` is the HDU holding the pixels ``get()`` reads (``IMAGE`` in the LSST
    layout, the ingest-recorded one for raws, else ``SCI`` or the first HDU with pixels).
    A map holds the stored values: for data with BZERO/BSCALE (unsigned integers stored as
    BZERO = 32768 too) or an integer BLANK they differ from ``get()``'s, so they are refused
    unless ``raw=True`` asks for the stored values.
    """
    from butler.errors import UnsupportedParameterError
    from butler.formatters.fits_image import _Layout, describe_hdus, select_hdu

    if file.index.get("format") != "fits" or not file.index.get("hdus"):
        raise UnsupportedParameterError(
            f"{file.path} is not a FITS file with an offset index; memmap maps FITS image "
            "HDUs (use get_local_path() and numpy.memmap/numpy.load for other files)"
        )
    if hdu is None:
        entry = dict(_Layout.of(file.index, file.path).image)
    else:
        entry = dict(select_hdu(file.index, hdu, file.path))
    where = f"HDU {entry['index']} ({entry['name'] or 'unnamed'}) of {file.path}"
    if entry.get("kind") not in ("image", "primary") or not entry.get("shape"):
        raise UnsupportedParameterError(
            f"{where} is a {entry.get('kind')} HDU without plain pixels; only uncompressed "
            f"image HDUs can be memory-mapped (the file's HDUs: {describe_hdus(file.index)}). "
            "Read it with get(..., parameters={'hdu': ...}), lazily with {'lazy': True}"
        )
    scaling = {
        key.upper(): entry[key]
        for key in ("bscale", "bzero", "blank")
        if key in entry and not (key == "blank" and entry["dtype"].lstrip("<>=").startswith("f"))
    }
    if scaling and not raw:
        cards = ", ".join(f"{k} = {v}" for k, v in scaling.items())
        raise UnsupportedParameterError(
            f"{where} is stored scaled ({cards}): a memory map would give the stored integers, "
            "not the values get() gives (value = BZERO + BSCALE * stored, BLANK -> NaN). Pass "
            "raw=True to map the stored values and apply BZERO/BSCALE yourself, or read "
            "the scaled values lazily without loading them: "
            "get(..., parameters={'lazy': True})"
        )
    return entry


def map_hdu(path: Path, entry: Mapping[str, Any], offset: int) -> np.memmap[Any, Any]:
    """A read-only map of an HDU's pixels, found at ``offset`` in the file at ``path``."""
    import numpy as np  # here: numpy costs a command-line tool's start ~0.07 s

    return np.memmap(
        path,
        dtype=np.dtype(entry["dtype"]),
        mode="r",
        offset=offset,
        shape=tuple(entry["shape"]),
    )


def memmap_hdu(
    path: Path, file: FileInfo, hdu: str | int | None, raw: bool = False
) -> np.memmap[Any, Any]:
    """Map exactly one uncompressed FITS image HDU of a local file, using its offset index."""
    entry = memmap_entry(file, hdu, raw)
    return map_hdu(path, entry, int(entry["data_offset"]))


class _ButlerFactory(type):
    """``Butler(...)`` picks the backend from its first argument (path or URL)."""

    def __call__(cls, *args: Any, **kwargs: Any) -> Any:
        if cls is Butler:
            target = args[0] if args else kwargs.get("path")
            if kwargs.get("mirror") is not None:
                from butler.mirrored import MirroredButler

                return MirroredButler(*args, **kwargs)
            if is_remote_uri(target):
                from butler.remote.butler import RemoteButler

                return RemoteButler(*args, **kwargs)
            from butler.direct_butler import DirectButler

            return DirectButler(*args, **kwargs)
        return super().__call__(*args, **kwargs)


class Butler(metaclass=_ButlerFactory):
    """Read and write datasets by dataset type + data ID.

    ``Butler(path)`` opens a local repository read-only; ``writeable=True`` or ``run=...``
    (the RUN collection :meth:`put` writes to) opens it for writing. ``collections`` is the
    default search path for reads (a name or a list, searched in order); without it, reads
    search every RUN and complain if a data ID is found in more than one. An ``http(s)://``
    URL opens a remote repository (server or proxy) with the same interface.
    """

    universe: DimensionUniverse
    formatters: FormatterRegistry
    io_stats: IOStats
    run: str | None
    collections: list[str] | None
    writeable: bool

    def __init__(
        self,
        path: str | os.PathLike[str],
        writeable: bool = False,
        run: str | None = None,
        collections: Collections = None,
        **options: Any,
    ) -> None:
        # ``run`` implies writing: it names where puts go.
        self.writeable = writeable or run is not None
        self.run = run
        self.collections = as_collection_list(collections) or ([run] if run else None)
        self.io_stats = IOStats()

    @functools.cached_property
    def query(self) -> QueryFactory:
        """Interactive queries: ``butler.query.calexp.where(instrument="HSC").count()``."""
        # Imported on first use: the query builder costs every butler's first open ~30 ms.
        from butler.interactive.factory import QueryFactory

        return QueryFactory(self)

    @classmethod
    def create(
        cls,
        path: str | os.PathLike[str],
        *,
        name: str | None = None,
        universe: str | os.PathLike[str] | None = None,
        description: str = "",
    ) -> DirectButler:
        """Create a new, empty local repository at ``path`` and open it for writing."""
        from butler.direct_butler import DirectButler

        return DirectButler.create_repository(
            path, name=name, universe=universe, description=description
        )

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- backend primitives ---------------------------------------------------------------

    def _resolve(
        self,
        dataset_type_or_ref: DatasetLike,
        data_id: Mapping[str, Any] | None,
        collections: Collections,
        kwargs: Mapping[str, Any],
    ) -> tuple[DatasetRef, FileInfo]:
        """The dataset (with its component, if one was named) and its file record."""
        raise NotImplementedError(f"{type(self).__name__} does not implement _resolve")

    def _open_source(self, ref: DatasetRef, file: FileInfo) -> ByteSource:
        """Random access to the dataset's file."""
        raise NotImplementedError(f"{type(self).__name__} does not implement _open_source")

    def _local_file(self, ref: DatasetRef, file: FileInfo) -> Path:
        """A complete, verified local copy (or the file itself) of the dataset's file."""
        raise NotImplementedError(f"{type(self).__name__} does not implement _local_file")

    def _file_present(self, file: FileInfo) -> bool:
        """Whether the file of a registered dataset can be read."""
        raise NotImplementedError(f"{type(self).__name__} does not implement _file_present")

    def _local_hdu(
        self, ref: DatasetRef, file: FileInfo, entry: Mapping[str, Any]
    ) -> tuple[Path, int]:
        """A local file holding the data bytes of one HDU, and where they start in it: the
        whole file here; a remote butler overrides it to fetch just those bytes."""
        return self._local_file(ref, file), int(entry["data_offset"])

    # -- reading (shared by every backend) ------------------------------------------------

    def resolve(
        self,
        dataset_type_or_ref: DatasetLike,
        data_id: Mapping[str, Any] | None = None,
        *,
        collections: Collections = None,
        **kwargs: Any,
    ) -> tuple[DatasetRef, FileInfo]:
        """The dataset's ref and its file record; raises ``DatasetNotFoundError`` if absent."""
        return self._resolve(dataset_type_or_ref, data_id, collections, kwargs)

    def find_dataset(
        self,
        dataset_type: str | DatasetType,
        data_id: Mapping[str, Any] | None = None,
        *,
        collections: Collections = None,
        **kwargs: Any,
    ) -> DatasetRef | None:
        """The ref of a dataset, or None if it is not in the collections searched."""
        try:
            return self._resolve(dataset_type, data_id, collections, kwargs)[0]
        except DatasetNotFoundError:
            return None

    def get_file_info(
        self,
        dataset_type_or_ref: DatasetLike,
        data_id: Mapping[str, Any] | None = None,
        *,
        collections: Collections = None,
        **kwargs: Any,
    ) -> FileInfo:
        """Size, checksum, format and offset index of a dataset's file."""
        return self._resolve(dataset_type_or_ref, data_id, collections, kwargs)[1]

    def get(
        self,
        dataset_type_or_ref: DatasetLike,
        data_id: Mapping[str, Any] | None = None,
        *,
        parameters: Mapping[str, Any] | None = None,
        collections: Collections = None,
        **kwargs: Any,
    ) -> Any:
        """Read a dataset (or a component: ``"calexp.metadata"``), or part of it.

        ``parameters`` select a part (``{"bbox": Box(...)}`` for images, ``{"columns": [...]}``
        for tables) and only the bytes needed are read.
        """
        ref, file = self._resolve(dataset_type_or_ref, data_id, collections, kwargs)
        return self.read_file(ref, file, parameters)

    def read_file(
        self, ref: DatasetRef, file: FileInfo, parameters: Mapping[str, Any] | None = None
    ) -> Any:
        """Read a resolved dataset through its formatter (only the bytes the request needs)."""
        formatter = self.formatters.formatter(file.formatter, file.index.get(ORIGIN_KEY))
        formatter.check_request(ref.component, parameters)
        source = self._open_source(ref, file)
        try:
            return formatter.read(
                source, file.index, component=ref.component, parameters=parameters or {}
            )
        finally:
            self.io_stats.add(source)
            source.close()

    def open(
        self,
        dataset_type_or_ref: DatasetLike,
        data_id: Mapping[str, Any] | None = None,
        *,
        read_ahead: int = 64 * 1024,
        collections: Collections = None,
        **kwargs: Any,
    ) -> RangeFile:
        """A seekable binary file object over the dataset's file that reads lazily.

        Hand it to astropy.io.fits or pyarrow: only the bytes they ask for are read
        (plus ``read_ahead`` bytes per miss, to keep small reads from becoming requests).
        """
        ref, file = self._resolve(dataset_type_or_ref, data_id, collections, kwargs)
        return self._open_source(ref, file).open(read_ahead=read_ahead)

    def exists(
        self,
        dataset_type_or_ref: DatasetLike,
        data_id: Mapping[str, Any] | None = None,
        *,
        collections: Collections = None,
        **kwargs: Any,
    ) -> bool:
        """True if the dataset is registered and its file can be read."""
        try:
            _, file = self._resolve(dataset_type_or_ref, data_id, collections, kwargs)
        except DatasetNotFoundError:
            return False
        return self._file_present(file)

    def get_local_path(
        self,
        dataset_type_or_ref: DatasetLike,
        data_id: Mapping[str, Any] | None = None,
        *,
        collections: Collections = None,
        **kwargs: Any,
    ) -> Path:
        """A local path of the dataset's file, for memory-mapping or external tools.

        Local repositories give the file itself; remote ones download it once into the
        client cache and verify its checksum first.
        """
        ref, file = self._resolve(dataset_type_or_ref, data_id, collections, kwargs)
        return self._local_file(ref, file)

    def get_uri(
        self,
        dataset_type_or_ref: DatasetLike,
        data_id: Mapping[str, Any] | None = None,
        *,
        collections: Collections = None,
        **kwargs: Any,
    ) -> str:
        """Where the dataset's file lives (``file://`` or ``http(s)://``)."""
        raise NotImplementedError(f"{type(self).__name__} does not implement get_uri")

    def memmap(
        self,
        dataset_type_or_ref: DatasetLike,
        data_id: Mapping[str, Any] | None = None,
        *,
        hdu: str | int | None = None,
        raw: bool = False,
        collections: Collections = None,
        **kwargs: Any,
    ) -> np.memmap[Any, Any]:
        """Memory-map exactly one uncompressed FITS HDU's pixels (read-only, no copy).

        ``hdu`` (EXTNAME or position) defaults to the HDU whose pixels ``get()`` reads.
        Scaled data (BZERO/BSCALE, integer BLANK) is refused unless ``raw=True``: a map
        holds stored values, and memmap never gives numbers that differ from ``get()``'s.
        A remote butler fetches only that HDU's data bytes into its local cache.
        """
        ref, file = self._resolve(dataset_type_or_ref, data_id, collections, kwargs)
        entry = memmap_entry(file, hdu, raw)
        path, offset = self._local_hdu(ref, file, entry)
        return map_hdu(path, entry, offset)

    # -- the rest of the interface --------------------------------------------------------

    def close(self) -> None:
        raise NotImplementedError(f"{type(self).__name__} does not implement close")

    def info(self) -> dict[str, Any]:
        raise NotImplementedError(f"{type(self).__name__} does not implement info")

    def transaction(self) -> AbstractContextManager[None]:
        """All puts, removes and registrations inside happen together or not at all."""
        raise NotImplementedError(f"{type(self).__name__} does not implement transaction")

    def register_dataset_type(
        self,
        name: str,
        dimensions: Iterable[str],
        storage_class: str,
        formatter: str | None = None,
    ) -> DatasetType:
        raise NotImplementedError(f"{type(self).__name__} does not implement register_dataset_type")

    def get_dataset_type(self, name: str) -> DatasetType:
        raise NotImplementedError(f"{type(self).__name__} does not implement get_dataset_type")

    def dataset_types(self) -> list[DatasetType]:
        raise NotImplementedError(f"{type(self).__name__} does not implement dataset_types")

    def register_run(self, name: str, doc: str = "") -> bool:
        raise NotImplementedError(f"{type(self).__name__} does not implement register_run")

    def set_collection_chain(self, name: str, children: Sequence[str], doc: str = "") -> None:
        raise NotImplementedError(f"{type(self).__name__} does not implement set_collection_chain")

    def get_collection_chain(self, name: str) -> list[str]:
        raise NotImplementedError(f"{type(self).__name__} does not implement get_collection_chain")

    def query_collections(self) -> list[dict[str, Any]]:
        raise NotImplementedError(f"{type(self).__name__} does not implement query_collections")

    def insert_dimension_records(
        self, element: str, *records: Mapping[str, Any], skip_existing: bool = False
    ) -> int:
        raise NotImplementedError(
            f"{type(self).__name__} does not implement insert_dimension_records"
        )

    def put(
        self,
        obj: Any,
        dataset_type: str | DatasetType,
        data_id: Mapping[str, Any] | None = None,
        *,
        run: str | None = None,
        **data_id_kwargs: Any,
    ) -> DatasetRef:
        raise NotImplementedError(f"{type(self).__name__} does not implement put")

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
        **data_id_kwargs: Any,
    ) -> DatasetRef:
        """Add an existing file (already in the dataset type's format) as a dataset."""
        raise NotImplementedError(f"{type(self).__name__} does not implement ingest")

    def verify(self, refs: Iterable[DatasetRef] | None = None) -> list[tuple[DatasetRef, str]]:
        """Re-hash files; returns (ref, problem) for each missing or altered one."""
        raise NotImplementedError(f"{type(self).__name__} does not implement verify")

    def remove(
        self,
        refs: DatasetRef | Iterable[DatasetRef] | str,
        data_id: Mapping[str, Any] | None = None,
        *,
        collections: Collections = None,
        **kwargs: Any,
    ) -> int:
        raise NotImplementedError(f"{type(self).__name__} does not implement remove")

    def query_datasets_with_files(
        self,
        dataset_type: str | DatasetType,
        collections: Collections = None,
        where: str = "",
        bind: Mapping[str, Any] | None = None,
        *,
        find_first: bool = True,
        limit: int | None = None,
        offset: int = 0,
        **data_id: Any,
    ) -> list[tuple[DatasetRef, FileInfo]]:
        """Like :meth:`query_datasets`, with each dataset's file record."""
        raise NotImplementedError(
            f"{type(self).__name__} does not implement query_datasets_with_files"
        )

    def query_datasets(
        self,
        dataset_type: str | DatasetType,
        collections: Collections = None,
        where: str = "",
        bind: Mapping[str, Any] | None = None,
        *,
        find_first: bool = True,
        limit: int | None = None,
        **data_id: Any,
    ) -> list[DatasetRef]:
        """Datasets of a type matching a ``where`` expression and data ID values.

        With several collections, ``find_first`` keeps for each data ID only the dataset of
        the first collection (in search order) that has one.
        """
        rows = self.query_datasets_with_files(
            dataset_type, collections, where, bind, find_first=find_first, limit=limit, **data_id
        )
        return [ref for ref, _ in rows]

    def query_data_ids(
        self,
        dimensions: str | Sequence[str],
        where: str = "",
        bind: Mapping[str, Any] | None = None,
        *,
        dataset_type: str | None = None,
        collections: Collections = None,
        limit: int | None = None,
        offset: int = 0,
        **data_id: Any,
    ) -> list[DataCoordinate]:
        raise NotImplementedError(f"{type(self).__name__} does not implement query_data_ids")

    def query_dimension_records(
        self,
        element: str,
        where: str = "",
        bind: Mapping[str, Any] | None = None,
        *,
        limit: int | None = None,
        **data_id: Any,
    ) -> list[dict[str, Any]]:
        raise NotImplementedError(
            f"{type(self).__name__} does not implement query_dimension_records"
        )

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
        """How many datasets a :meth:`query_datasets` would return and their total bytes,
        computed where the registry is (a remote repository answers without listing them)."""
        raise NotImplementedError(f"{type(self).__name__} does not implement query_summary")

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
        """Sorted distinct values of one dimension under constraints (only values that have
        datasets of ``dataset_type`` in ``collections``, if given): what completion offers."""
        raise NotImplementedError(
            f"{type(self).__name__} does not implement query_dimension_values"
        )

    def iter_datasets(self, dataset_types: Iterable[str] | None = None) -> Iterator[DatasetRef]:
        """Every dataset in every RUN, type by type (for verification and copying)."""
        names = list(dataset_types) if dataset_types else [t.name for t in self.dataset_types()]
        runs = [c["name"] for c in self.query_collections() if c["type"] == "RUN"]
        for name in names:
            yield from self.query_datasets(name, collections=runs, find_first=False)
