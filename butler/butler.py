"""``Butler``: one interface over a local repository, a remote one, and a mirror of one.

``Butler(path_or_url, ...)`` returns the backend its argument names: a
:class:`~butler.direct_butler.DirectButler` for a local path, a
:class:`~butler.remote.butler.RemoteButler` for an ``http(s)://`` URL (a repository server or
a caching proxy in front of one), a :class:`~butler.mirrored.MirroredButler` with ``mirror=``.

What a backend can do is what its class declares. :class:`Butler` is what every backend does:
read, query, write (puts, removals, registrations, transactions; a remote one through its
server). Only a local repository ingests files and verifies them (``DirectButler.ingest``,
``ingest_many``, ``verify``: they work on the repository's own storage). A method a backend
lacks is absent: a type checker flags the call, ``dir()`` does not list it, and using it
raises ``AttributeError`` at once, saying what to use instead.

Reading is written once, as the coroutines of :class:`~butler.reading.Reader`; a butler's
read methods are their blocking twins (:func:`~butler.blocking.blocking`), run by the
backend's :meth:`Butler._read`.
"""

from __future__ import annotations

import functools
import inspect
import os
from abc import ABCMeta, abstractmethod
from collections.abc import Callable, Coroutine, Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NoReturn, Self, TypeVar

from butler.blocking import blocking
from butler.formatters.registry import FormatterRegistry
from butler.reading import (
    Collections,
    DatasetLike,
    IOStats,
    Reader,
    as_collection_list,
)
from butler.refs import DataCoordinate, DatasetRef, DatasetType, FileInfo
from butler.universe import DimensionUniverse

if TYPE_CHECKING:
    from butler.direct_butler import DirectButler
    from butler.interactive.factory import QueryFactory

__all__ = [
    "Butler",
    "Collections",
    "DatasetLike",
    "IOStats",
    "QuerySummary",
    "as_collection_list",
    "is_remote_uri",
]

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])

if TYPE_CHECKING:
    # ``Butler(...)`` builds a concrete backend (_ButlerFactory), which a type checker cannot
    # see: to it the interface's methods are plain, or every ``Butler(path)`` would be
    # flagged as instantiating an abstract class. At run time they are abstract: a backend
    # lacking one cannot be instantiated.
    def abstract(method: F) -> F:
        return method
else:
    abstract = abstractmethod


@dataclass(frozen=True)
class QuerySummary:
    """What a dataset query would return, known before fetching anything."""

    count: int
    size: int
    """Total bytes of the datasets' files."""


def is_remote_uri(path: object) -> bool:
    return isinstance(path, str) and path.startswith(("http://", "https://"))


class _Absent:
    """A method that a backend lacks: reading it raises ``AttributeError`` saying why."""

    def __init__(self, why: str) -> None:
        self.why = why
        self.name = ""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, obj: object, owner: type | None = None) -> NoReturn:
        backend = owner.__name__ if owner is not None else type(obj).__name__
        raise AttributeError(
            f"{backend} has no {self.name}(): it {self.why}, so only a local repository has "
            "it. Open the repository by its path on the machine that holds it (Butler(path), "
            "or the butler command there); a remote one takes put().",
            name=self.name,
            obj=obj,
        )


def _static(obj: object, name: str) -> object:
    return inspect.getattr_static(obj, name, None)


class _ButlerFactory(ABCMeta):
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
        registry: str | None = None,
    ) -> DirectButler:
        """Create a new, empty local repository at ``path`` and open it for writing.

        ``registry``: a ``postgresql://USER@HOST:PORT/DB`` URL of an empty database to keep
        the registry in (default: ``registry.sqlite3`` in ``path``)."""
        from butler.direct_butler import DirectButler

        return DirectButler.create_repository(
            path, name=name, universe=universe, description=description, registry=registry
        )

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- reading: the read path of the backend's reader ------------------------------------

    @property
    @abstract
    def _reader(self) -> Reader:
        """The coroutines this butler's read methods run (see :mod:`butler.reading`)."""

    @abstract
    def _read(self, call: Callable[[Reader], Coroutine[Any, Any, T]]) -> T:
        """Run ``call(self._reader)`` (a coroutine of the reader) to its end."""

    @property
    def formatters(self) -> FormatterRegistry:
        return self._reader.formatters

    @property
    def io_stats(self) -> IOStats:
        """Bytes and requests this butler's reads have made."""
        return self._reader.io_stats

    resolve = blocking(Reader.resolve)
    find_dataset = blocking(Reader.find_dataset)
    get_file_info = blocking(Reader.get_file_info)
    get = blocking(Reader.get)
    read_file = blocking(Reader.read_file)
    open = blocking(Reader.open)
    exists = blocking(Reader.exists)
    get_local_path = blocking(Reader.get_local_path)
    get_uri = blocking(Reader.get_uri)
    memmap = blocking(Reader.memmap)

    # What only a local repository does: absent on every other backend, so that using one
    # fails at once with an AttributeError that says why and what to do. (Runtime only: to
    # a type checker they are not there at all; and not ``__getattr__``, which would make
    # IPython's completion refuse to look into butlers.)
    if not TYPE_CHECKING:
        ingest = _Absent("copies or links an existing file into the repository's own storage")
        ingest_many = _Absent("copies or links files into the repository's own storage")
        verify = _Absent("re-hashes the files in the repository's own storage")

    def __dir__(self) -> list[str]:
        return [n for n in super().__dir__() if not isinstance(_static(self, n), _Absent)]

    # -- the registry: every backend answers these ----------------------------------------

    @abstract
    def close(self) -> None:
        """Release what the butler holds (connections, files); ``with`` does it."""

    @abstract
    def info(self) -> dict[str, Any]:
        """The repository's name, format, dataset types, collections..."""

    @abstract
    def get_dataset_type(self, name: str) -> DatasetType: ...

    @abstract
    def dataset_types(self) -> list[DatasetType]: ...

    @abstract
    def get_collection_chain(self, name: str) -> list[str]: ...

    @abstract
    def query_collections(self) -> list[dict[str, Any]]: ...

    @abstract
    def query_datasets_with_files(
        self,
        /,
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

    def query_datasets(
        self,
        /,
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

    @abstract
    def query_data_ids(
        self,
        /,
        dimensions: str | Sequence[str],
        where: str = "",
        bind: Mapping[str, Any] | None = None,
        *,
        dataset_type: str | None = None,
        collections: Collections = None,
        limit: int | None = None,
        offset: int = 0,
        **data_id: Any,
    ) -> list[DataCoordinate]: ...

    @abstract
    def query_dimension_records(
        self,
        /,
        element: str,
        where: str = "",
        bind: Mapping[str, Any] | None = None,
        *,
        limit: int | None = None,
        **data_id: Any,
    ) -> list[dict[str, Any]]: ...

    @abstract
    def query_summary(
        self,
        /,
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

    @abstract
    def query_dimension_values(
        self,
        /,
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

    def iter_datasets(self, dataset_types: Iterable[str] | None = None) -> Iterator[DatasetRef]:
        """Every dataset in every RUN, type by type (for verification and copying)."""
        names = list(dataset_types) if dataset_types else [t.name for t in self.dataset_types()]
        runs = [c["name"] for c in self.query_collections() if c["type"] == "RUN"]
        for name in names:
            yield from self.query_datasets(name, collections=runs, find_first=False)

    # -- writing: every backend writes (a remote one through its server) ------------------

    @abstract
    def transaction(self) -> AbstractContextManager[None]:
        """All puts, removes and registrations inside happen together or not at all."""

    @abstract
    def register_dataset_type(
        self,
        name: str,
        dimensions: Iterable[str],
        storage_class: str,
        formatter: str | None = None,
    ) -> DatasetType: ...

    @abstract
    def register_run(self, name: str, doc: str = "") -> bool: ...

    @abstract
    def set_collection_chain(self, name: str, children: Sequence[str], doc: str = "") -> None: ...

    @abstract
    def insert_dimension_records(
        self, element: str, *records: Mapping[str, Any], skip_existing: bool = False
    ) -> int: ...

    @abstract
    def put(
        self,
        /,
        obj: Any,
        dataset_type: str | DatasetType,
        data_id: Mapping[str, Any] | None = None,
        *,
        run: str | None = None,
        **data_id_kwargs: Any,
    ) -> DatasetRef:
        """Write ``obj`` as a dataset of ``dataset_type`` in ``run`` (default: the butler's)."""

    @abstract
    def remove(
        self,
        /,
        refs: DatasetRef | Iterable[DatasetRef] | str,
        data_id: Mapping[str, Any] | None = None,
        *,
        collections: Collections = None,
        **kwargs: Any,
    ) -> int:
        """Remove datasets (refs, or one named by dataset type and data ID): rows and files."""
