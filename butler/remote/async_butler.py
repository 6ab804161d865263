"""``AsyncButler``: the butler API as coroutines, over a repository server.

It is a :class:`~butler.reading.Reader` (the read path, written once, over this class's
primitives) with the remote registry's queries and the writes, all coroutines; the blocking
:class:`~butler.remote.butler.RemoteButler` runs these same coroutines on a private event loop
(its methods are their blocking twins, not a second copy).
All requests share one aiohttp session with a bounded connection pool, so
``asyncio.gather`` of hundreds of ``get`` calls reuses a few connections.

Writes: ``put`` writes the file locally with the dataset type's formatter, uploads it to the
server's staging area (hashed on both ends) and commits. Inside ``async with
butler.transaction()`` uploads accumulate and one commit makes them all visible at once;
errors about data IDs or conflicts are raised by that commit, at the end of the block.
Until then the transaction reads its own writes from the local copies of what it uploaded
(:class:`RemoteTransaction`).
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import math
import shutil
import sqlite3
import tempfile
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from butler.butler import QuerySummary
from butler.datastore import sha256_file
from butler.errors import (
    AmbiguousDatasetError,
    ButlerError,
    CollectionNotFoundError,
    CorruptFileError,
    DataIdError,
    DatasetNotFoundError,
    ReadOnlyRepositoryError,
    StorageClassError,
    TransactionError,
)
from butler.formatters.base import Formatter, validate_file
from butler.formatters.registry import ORIGIN_KEY, FormatterRegistry, default_registry
from butler.io.source import ByteSource, LocalFileSource
from butler.reading import Collections, DatasetLike, IOStats, Lookup, Reader, as_collection_list
from butler.refs import DataCoordinate, DatasetRef, DatasetType, FileInfo, split_component
from butler.registry import Registry
from butler.remote.api import (
    RepositoryAPI,
    constraint_params,
    dataset_query,
    name_segment,
    plain,
    plain_json,
)
from butler.remote.cache import DEFAULT_SIZE_LIMIT, FileCache
from butler.remote.client import ClientSettings, RepositoryClient
from butler.remote.io_thread import CALLER
from butler.remote.limits import is_disk_full
from butler.remote.source import HttpByteSource
from butler.universe import DimensionUniverse

T = TypeVar("T")


@dataclass(frozen=True)
class PendingPut:
    """A dataset put inside an open transaction: its ref, its file record, and the local
    copy of the bytes that were uploaded (what reads inside the transaction use)."""

    ref: DatasetRef
    data_id: dict[str, Any]
    """The data ID as the put gave it (the server expands it at the commit)."""
    file: FileInfo
    local: Path

    def matches(self, parent: str, given: Mapping[str, Any]) -> bool:
        """Whether a read of ``parent`` with data ID ``given`` names this dataset: every
        required dimension given the same value (values the put did not give, or that a
        read names only through implied dimensions, are not matched here)."""
        if self.ref.dataset_type.name != parent:
            return False
        required = self.ref.dataset_type.dimensions
        if any(d not in given or d not in self.data_id for d in required):
            return False
        return all(str(given[k]) == str(self.data_id[k]) for k in given.keys() & self.data_id)


@dataclass
class RemoteTransaction:
    """Operations waiting for one commit, and the server-side transaction of their uploads.

    Reads inside the transaction see its own writes from the client side: each put keeps
    the file it uploaded (in ``workdir``, removed when the transaction ends) and its file
    record in ``pending``, and datasets it removes are in ``removed``. The server's staged
    uploads are never read back: they stay invisible to everyone (this client included)
    until the commit, and the bytes read are exactly those uploaded (same checksum).
    """

    operations: list[dict[str, Any]] = field(default_factory=list)
    server_id: str | None = None
    workdir: Path | None = None
    pending: dict[uuid.UUID, PendingPut] = field(default_factory=dict)
    removed: set[uuid.UUID] = field(default_factory=set)

    def rollback_to(self, mark: int) -> None:
        """Undo a nested block: drop its operations and what reads saw of them."""
        for op in self.operations[mark:]:
            if op["op"] == "put":
                dropped = self.pending.pop(uuid.UUID(op["id"]), None)
                if dropped is not None:
                    dropped.local.unlink(missing_ok=True)
            elif op["op"] == "remove":
                self.removed.difference_update(uuid.UUID(r["id"]) for r in op["refs"])
        del self.operations[mark:]
        # A removal kept by the outer block must stay hidden even if the inner one repeated it.
        for op in self.operations:
            if op["op"] == "remove":
                self.removed.update(uuid.UUID(r["id"]) for r in op["refs"])

    def pending_local(self, file: FileInfo) -> Path | None:
        """The local copy of a file this transaction put (None for any other file)."""
        pending = self.pending.get(file.dataset_id)
        if pending is None or pending.file.checksum != file.checksum:
            return None
        return pending.local


class CacheFullError(ButlerError, OSError):
    """The client's file cache has no room left on its disk for a file."""

    error_type = "CacheFullError"


_CURRENT_TXN: contextvars.ContextVar[RemoteTransaction | None] = contextvars.ContextVar(
    "butler_remote_transaction", default=None
)


MAX_VALUES = 10_000
"""Distinct values one completion query returns at most (the server's largest page)."""

# One ranged read of a remote memmap's HDU bytes: memory stays at a band, not the HDU.
_HDU_BAND = 8 * 2**20


def _collection_params(collections: Sequence[str] | None) -> list[tuple[str, str]]:
    return [("collections", c) for c in collections or []]


class AsyncButler(Reader):
    """Awaitable butler over ``http(s)://`` (a ``butler serve`` server or a proxy of one)."""

    def __init__(
        self,
        url: str,
        writeable: bool = False,
        run: str | None = None,
        collections: Collections = None,
        *,
        token: str | None = None,
        token_file: str | None = None,
        max_connections: int = 32,
        cache_dir: str | Path | None = None,
        cache_size: int = DEFAULT_SIZE_LIMIT,
        formatters: FormatterRegistry | None = None,
    ) -> None:
        self.settings = ClientSettings.from_args(
            url, token=token, token_file=token_file, max_connections=max_connections
        )
        self.client = RepositoryClient(self.settings)
        self.api = RepositoryAPI(self.client, self.settings.url)
        if run is not None:
            # Refused before any request, as a local butler refuses it.
            Registry._check_collection_name(run)
        self.writeable = writeable or run is not None
        self.run = run
        # The RUN is created by the first write that commits (never by opening): until it
        # exists, reads search it as an empty RUN. Once seen, it is not asked about again.
        self._run_exists = False
        self.collections = as_collection_list(collections) or ([run] if run else None)
        self.formatters = formatters or default_registry()
        self.io_stats = IOStats()
        self._cache_dir = Path(cache_dir).expanduser() if cache_dir else None
        self._cache_size = cache_size
        self._cache: FileCache | None = None
        self._info: dict[str, Any] | None = None
        self._universe: DimensionUniverse | None = None
        self._dataset_types: dict[str, DatasetType] = {}

    @property
    def url(self) -> str:
        return self.settings.url

    async def __aenter__(self) -> AsyncButler:
        try:
            await self.check_run()
        except BaseException:
            await self.close()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self.client.close()
        if self._cache is not None:
            self._cache.close()
            self._cache = None

    # -- repository facts -----------------------------------------------------------------

    async def info(self) -> dict[str, Any]:
        if self._info is None:
            info = await self.api.info()
            self._info = info
            self._universe = DimensionUniverse(info["universe"], source=self.url)
            # (The API took the server's largest page from it.)
            max_ranges = int(info.get("max_ranges") or self.settings.max_ranges)
            if max_ranges != self.settings.max_ranges:
                from dataclasses import replace

                self.settings = replace(self.settings, max_ranges=max_ranges)
                self.client.settings = self.settings
        return dict(self._info)

    async def universe(self) -> DimensionUniverse:
        if self._universe is None:
            await self.info()
        assert self._universe is not None
        return self._universe

    async def get_dataset_type(self, name: str) -> DatasetType:
        parent, _ = split_component(name)
        cached = self._dataset_types.get(parent)
        if cached is None:
            cached = await self.api.dataset_type(parent)
            self._dataset_types[parent] = cached
        return cached

    async def dataset_types(self) -> list[DatasetType]:
        return await self.api.dataset_types()

    async def query_collections(self) -> list[dict[str, Any]]:
        return await self.api.collections()

    async def get_collection_chain(self, name: str) -> list[str]:
        return await self.api.collection_chain(name)

    async def _collection(self, name: str) -> dict[str, Any] | None:
        """The server's record of collection ``name`` (type, children, runs); None if none."""
        try:
            return await self.api.collection(name)
        except CollectionNotFoundError:
            return None

    async def check_run(self) -> None:
        """Refuse a ``run`` that could never be written to, as a local butler does when it
        opens: a read-only server, or a collection of that name that is not a RUN. The RUN
        is not created here: the first committed write creates it (inside that commit), so
        a client that never commits leaves nothing on the server."""
        if self.run is None:
            return
        if (await self.info()).get("read_only"):
            raise ReadOnlyRepositoryError(
                f"{self.url} is served read-only: it cannot be opened with run={self.run!r} "
                "(to write to it); open it without run= to read"
            )
        found = await self._collection(self.run)
        Registry.check_writable_run(self.run, None if found is None else str(found["type"]))
        self._run_exists = found is not None

    async def _searched(self, search: Sequence[str] | None) -> list[str] | None:
        """``search`` as the server is asked it: without this butler's own RUN while that
        does not exist yet (it is an empty RUN, so searching it finds nothing and leaves the
        order of the others as it is). ``[]``: nothing is left to search. ``None``: all."""
        if search is None:
            return None
        if self.run is None or self.run not in search or self._run_exists:
            return list(search)
        self._run_exists = await self._collection(self.run) is not None
        if self._run_exists:
            return list(search)
        return [name for name in search if name != self.run]

    # -- finding and reading --------------------------------------------------------------

    async def locate(self, lookup: Lookup) -> tuple[DatasetRef, FileInfo]:
        """The dataset's ref (with its component) and its file record, in one request.

        Inside a transaction, its own writes count: a dataset it put is found (by ref, or
        by data ID in its place in the collection search order) and one it removed is not.
        """
        txn = _CURRENT_TXN.get()
        if txn is not None and (txn.pending or txn.removed):
            own = await self._own_write(
                txn, lookup.target, lookup.data_id, lookup.collections, lookup.kwargs
            )
            if own is not None:
                return own
        ref, file = await self._resolve_committed(
            lookup.target, lookup.data_id, collections=lookup.collections, **lookup.kwargs
        )
        if txn is not None and ref.id in txn.removed:
            raise DatasetNotFoundError(f"{ref!r} was removed in this transaction")
        return ref, file

    async def _own_write(
        self,
        txn: RemoteTransaction,
        dataset_type_or_ref: DatasetLike,
        data_id: Mapping[str, Any] | None,
        collections: Collections,
        kwargs: Mapping[str, Any],
    ) -> tuple[DatasetRef, FileInfo] | None:
        """A dataset put in this transaction that a read names (None: ask the server)."""
        if isinstance(dataset_type_or_ref, DatasetRef):
            ref = dataset_type_or_ref
            if ref.id in txn.removed:
                raise DatasetNotFoundError(f"{ref!r} was removed in this transaction")
            pending = txn.pending.get(ref.id)
            return None if pending is None else (ref, pending.file)
        name = (
            dataset_type_or_ref.name
            if isinstance(dataset_type_or_ref, DatasetType)
            else dataset_type_or_ref
        )
        parent, component = split_component(name)
        given = plain({**dict(data_id or {}), **kwargs})
        matches = {
            p.ref.run: p
            for p in txn.pending.values()
            if p.ref.id not in txn.removed and p.matches(parent, given)
        }
        if not matches:
            return None
        search = as_collection_list(collections) or self.collections
        if search is None:
            # No search path: the match must be unique among all runs, committed or not
            # (several committed ones: the server's AmbiguousDatasetError says so).
            committed = await self.resolve_committed_or_none(parent, given, None)
            if committed is not None or len(matches) > 1:
                runs = sorted({*matches, *([committed.run] if committed else [])})
                raise AmbiguousDatasetError(
                    f"{parent!r} {given!r} exists in several runs ({', '.join(runs)}); "
                    "pass collections=..."
                )
            pending = next(iter(matches.values()))
            return pending.ref.make_component_ref(component), pending.file
        runs, known = await self._search_order(search)
        for position, run in enumerate(runs):
            if run in matches:
                # Find-first: a committed dataset in a RUN searched before this one wins.
                earlier = [r for r in runs[:position] if r in known]
                if earlier:
                    committed_ref = await self.resolve_committed_or_none(name, given, earlier)
                    if committed_ref is not None:
                        return None  # the server's answer (asked again by the caller)
                pending = matches[run]
                return pending.ref.make_component_ref(component), pending.file
        return None

    async def resolve_committed_or_none(
        self, name: str, given: Mapping[str, Any], collections: Sequence[str] | None
    ) -> DatasetRef | None:
        """A committed, not since removed, dataset the server finds (None if none)."""
        txn = _CURRENT_TXN.get()
        try:
            ref, _ = await self._resolve_committed(name, given, collections=collections)
        except DatasetNotFoundError:
            return None
        return None if txn is not None and ref.id in txn.removed else ref

    async def _search_order(self, search: Sequence[str]) -> tuple[list[str], set[str]]:
        """The RUNs ``search`` names, in search order, and those the server knows (a RUN
        that only this transaction's puts create is searched in its place, as named)."""
        runs: list[str] = []
        known: set[str] = set()
        for name in search:
            found = await self._collection(name)
            flat = [name] if found is None else list(found["runs"])
            if found is not None:
                known.update(flat)
            runs += [r for r in flat if r not in runs]
        return runs, known

    async def _resolve_committed(
        self,
        dataset_type_or_ref: DatasetLike,
        data_id: Mapping[str, Any] | None = None,
        *,
        collections: Collections = None,
        **kwargs: Any,
    ) -> tuple[DatasetRef, FileInfo]:
        """The server's answer to :meth:`resolve` (committed datasets only)."""
        if isinstance(dataset_type_or_ref, DatasetRef):
            ref = dataset_type_or_ref
            found = await self.client.get_json(f"datasets/{ref.id}")
            resolved = DatasetRef.from_dict(found["ref"]).make_component_ref(ref.component)
            return resolved, FileInfo.from_dict(found["file"])
        name = (
            dataset_type_or_ref.name
            if isinstance(dataset_type_or_ref, DatasetType)
            else dataset_type_or_ref
        )
        parent, component = split_component(name)
        given = {**dict(data_id or {}), **kwargs}
        search = as_collection_list(collections) or self.collections
        searched = await self._searched(search)
        if search and not searched:  # only this butler's own RUN, not created yet
            await self._check_find(parent, given)
            raise DatasetNotFoundError.for_search(name, given, search)
        params = [("dataset_type", parent), ("data_id", plain_json(given))]
        params += _collection_params(searched)
        try:
            found = await self.client.get_json("find", params)
        except DatasetNotFoundError as exc:
            # Say which dataset type was asked for, component included.
            raise DatasetNotFoundError(str(exc).replace(repr(parent), repr(name), 1)) from None
        except AmbiguousDatasetError:
            raise
        ref = DatasetRef.from_dict(found["ref"]).make_component_ref(component)
        return ref, FileInfo.from_dict(found["file"])

    async def _check_find(self, parent: str, given: Mapping[str, Any]) -> None:
        """Fail as the server's find would for a bad dataset type or data ID, when the
        answer (not found) is known without asking it."""
        dataset_type = await self.get_dataset_type(parent)
        # The server checks the data ID's keys and values as in any query of the type...
        await self._check_query({"dataset_type": parent, "data_id": plain(given)})
        # ...and a find needs every required dimension (the message is the server's).
        missing = [d for d in dataset_type.dimensions if given.get(d) is None]
        if missing:
            raise DataIdError(
                f"data ID {dict(given)} for {parent!r} lacks {missing} "
                f"(required: {', '.join(dataset_type.dimensions)})"
            )

    # -- the read path's primitives (the read path itself: butler.reading.Reader) ---------

    async def byte_source(self, ref: DatasetRef, file: FileInfo) -> ByteSource:
        own = self._own_file(file)
        if own is not None:
            return LocalFileSource(own)
        return HttpByteSource(self.client, file, asyncio.get_running_loop())

    @staticmethod
    def _own_file(file: FileInfo) -> Path | None:
        """The local copy of a file the current transaction put and has not committed."""
        txn = _CURRENT_TXN.get()
        return txn.pending_local(file) if txn is not None else None

    async def run_blocking(self, work: Callable[[], T]) -> T:
        # Formatters are synchronous: in another thread, fetching through this loop (the
        # thread of a blocking caller waiting for this read, else a worker thread).
        in_context = functools.partial(contextvars.copy_context().run, work)
        return await asyncio.get_running_loop().run_in_executor(CALLER.get(), in_context)

    async def file_present(self, ref: DatasetRef, file: FileInfo) -> bool:
        """Whether the server serves the file (a HEAD request): a registered dataset whose
        file is gone from the server's disk does not exist, as for a local butler."""
        own = self._own_file(file)
        if own is not None:
            return own.exists()
        return await self.client.file_served(file.path)

    def file_cache(self) -> FileCache:
        if self._cache is None:
            self._cache = FileCache(self._cache_dir, self._cache_size)
        return self._cache

    async def local_file(self, ref: DatasetRef, file: FileInfo) -> Path:
        """The file downloaded once into the client cache, verified; its path there."""
        own = self._own_file(file)
        if own is not None:
            return own  # put in the current transaction: valid until it ends
        cache = self.file_cache()
        try:
            cached = await asyncio.to_thread(cache.path, file.checksum)
            if cached is not None:
                return cached
            workdir = Path(tempfile.mkdtemp(prefix="download-", dir=cache.directory))
            try:
                partial = workdir / Path(file.path).name
                checksum = await self.client.download(file.path, partial)
                if checksum != file.checksum:
                    raise CorruptFileError(
                        f"{self.url}files/{file.path}: downloaded bytes have checksum "
                        f"{checksum}, the registry says {file.checksum}; the download was damaged"
                    )
                return await asyncio.to_thread(cache.add, file.checksum, partial)
            finally:
                # Also what a full disk left half written: the cache keeps no partial file.
                shutil.rmtree(workdir, ignore_errors=True)
        except (OSError, sqlite3.Error) as exc:
            if isinstance(exc, ButlerError) or not is_disk_full(exc):
                raise
            raise _cache_full(
                cache.directory,
                exc,
                file.path,
                file.size,
                "; get() and open() read parts of files without the cache",
            ) from None

    async def file_uri(self, ref: DatasetRef, file: FileInfo) -> str:
        """The ``http(s)://`` URL of the dataset's file on the server."""
        own = self._own_file(file)
        if own is not None:
            return own.as_uri()  # not on the server before the commit
        return self.client.url("files/" + file.path)

    async def local_hdu(
        self, ref: DatasetRef, file: FileInfo, entry: Mapping[str, Any]
    ) -> tuple[Path, int]:
        """Only the data bytes of one HDU, fetched by ranged reads (in bands, so memory
        stays small) into the client cache once; the path of that cache file (where the
        bytes start at 0).

        A part of a file has no checksum of its own to verify; each band's length is
        checked, and the cache key names the file's checksum and the byte range."""
        import numpy as np

        own = self._own_file(file)
        if own is not None:  # put in the open transaction: the whole file is here
            return own, int(entry["data_offset"])
        offset = int(entry["data_offset"])
        length = math.prod(entry["shape"]) * np.dtype(entry["dtype"]).itemsize
        key = f"{file.checksum}#bytes={offset}-{offset + length - 1}"
        cache = self.file_cache()
        try:
            cached = await asyncio.to_thread(cache.path, key)
            if cached is not None:
                return cached, 0
            workdir = Path(tempfile.mkdtemp(prefix="download-", dir=cache.directory))
            try:
                partial = workdir / f"{Path(file.path).name}.hdu{entry['index']}"
                await self._fetch_to_file(file, offset, length, partial)
                return await asyncio.to_thread(cache.add, key, partial), 0
            finally:
                shutil.rmtree(workdir, ignore_errors=True)
        except (OSError, sqlite3.Error) as exc:
            if isinstance(exc, ButlerError) or not is_disk_full(exc):
                raise
            raise _cache_full(
                cache.directory, exc, f"HDU {entry['index']} of {file.path}", length
            ) from None

    async def _fetch_to_file(self, file: FileInfo, offset: int, length: int, out: Path) -> None:
        with out.open("wb") as handle:
            for start in range(offset, offset + length, _HDU_BAND):
                size = min(_HDU_BAND, offset + length - start)
                (chunk,) = await self.client.fetch_ranges(file.path, [(start, size)])
                if len(chunk) != size:
                    raise CorruptFileError(
                        f"{self.url}files/{file.path}: asked for bytes {start}+{size}, "
                        f"got {len(chunk)}; the file changed or the server is wrong"
                    )
                await asyncio.to_thread(handle.write, chunk)

    # -- queries --------------------------------------------------------------------------

    async def query_datasets_with_files(
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
        name = dataset_type.name if isinstance(dataset_type, DatasetType) else dataset_type
        searched = await self._searched(as_collection_list(collections) or self.collections)
        body = dataset_query(
            split_component(name)[0], searched, where, bind, data_id, find_first=find_first
        )
        if searched == []:  # only this butler's own RUN, not created yet: empty
            await self._check_query(body)
            return []
        await self.info()  # the server's page size
        return await self.api.datasets(body, limit=limit, offset=offset)

    async def _check_query(self, query: Mapping[str, Any]) -> None:
        """Have the server check a dataset query answered empty without asking it (its
        dataset type, where expression, bind values and data ID), so that it fails as it
        would over any collection: the same query over all RUNs, one row, not used."""
        check = {**query, "collections": None, "find_first": False, "limit": 1, "offset": 0}
        await self.client.post_json("datasets/query", check)

    async def query_datasets(
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
        rows = await self.query_datasets_with_files(
            dataset_type, collections, where, bind, find_first=find_first, limit=limit, **data_id
        )
        return [ref for ref, _ in rows]

    async def query_data_ids(
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
    ) -> list[DataCoordinate]:
        if offset:
            raise ButlerError("offset is not supported for remote data ID queries; use limit")
        dims = [dimensions] if isinstance(dimensions, str) else list(dimensions)
        params = [("dimensions", d) for d in dims]
        params += constraint_params(where, bind, data_id)
        if dataset_type:
            searched = await self._searched(as_collection_list(collections) or self.collections)
            if searched == []:  # only this butler's own RUN, not created yet: no datasets
                # Checked by the server as ever (the dataset type, then the rest without it).
                await self.get_dataset_type(dataset_type)
                await self.api.paged("data-ids", "data_ids", params=params, limit=1)
                return []
            params.append(("dataset_type", dataset_type))
            params += _collection_params(searched)
        rows = await self.api.paged("data-ids", "data_ids", params=params, limit=limit)
        return [DataCoordinate.from_dict(r) for r in rows]

    async def query_dimension_records(
        self,
        /,
        element: str,
        where: str = "",
        bind: Mapping[str, Any] | None = None,
        *,
        limit: int | None = None,
        **data_id: Any,
    ) -> list[dict[str, Any]]:
        return await self.api.dimension_records(element, where, bind, data_id, limit=limit)

    async def dimension_values(
        self,
        /,
        element: str,
        where: str = "",
        bind: Mapping[str, Any] | None = None,
        *,
        dataset_type: str | None = None,
        collections: Collections = None,
        prefix: str = "",
        limit: int = 1000,
        **data_id: Any,
    ) -> list[Any]:
        """Distinct values of one dimension given constraints (what completion offers)."""
        path = f"dimensions/{name_segment(element)}/values"
        params = [
            *constraint_params(where, bind, data_id),
            ("prefix", prefix),
            ("limit", str(limit)),
        ]
        if dataset_type:
            searched = await self._searched(as_collection_list(collections) or self.collections)
            if searched == []:  # only this butler's own RUN, not created yet: no datasets
                # Checked by the server as ever (the dataset type, then the rest without it).
                await self.get_dataset_type(dataset_type)
                await self.client.get_json(path, params)
                return []
            params.append(("dataset_type", dataset_type))
            params += _collection_params(searched)
        data = await self.client.get_json(path, params)
        return list(data["values"])

    async def query_dimension_values(
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
        """Sorted distinct values of one dimension: :meth:`dimension_values`, as many as
        the server gives in one answer."""
        return await self.dimension_values(
            dimension,
            where,
            bind,
            dataset_type=dataset_type,
            collections=collections,
            limit=MAX_VALUES,
            **data_id,
        )

    async def query_summary(
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
        """Count and total bytes of a dataset query, computed by the server."""
        name = dataset_type.name if isinstance(dataset_type, DatasetType) else dataset_type
        searched = await self._searched(as_collection_list(collections) or self.collections)
        if searched == []:  # only this butler's own RUN, not created yet: empty
            await self._check_query(
                dataset_query(split_component(name)[0], None, where, bind, data_id)
            )
            return QuerySummary(count=0, size=0)
        params = [
            ("dataset_type", split_component(name)[0]),
            *constraint_params(where, bind, data_id),
            ("find_first", "true" if find_first else "false"),
            *_collection_params(searched),
        ]
        data = await self.client.get_json("datasets/summary", params)
        return QuerySummary(count=int(data["count"]), size=int(data["size"]))

    # -- writing --------------------------------------------------------------------------

    def _check_writeable(self) -> None:
        if not self.writeable:
            raise ReadOnlyRepositoryError(
                f"{self.url} was opened read-only; open it with writeable=True or run='...'"
            )

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[None]:
        """Everything inside commits at once, or (on an exception) not at all.

        Reads inside see the transaction's own writes, from the client side (see
        :class:`RemoteTransaction`); other clients see nothing until the commit.
        """
        self._check_writeable()
        outer = _CURRENT_TXN.get()
        if outer is not None:
            mark = len(outer.operations)
            try:
                yield
            except BaseException:
                outer.rollback_to(mark)
                raise
            return
        txn = RemoteTransaction()
        token = _CURRENT_TXN.set(txn)
        try:
            try:
                yield
            except BaseException:
                await asyncio.shield(self._abort(txn))
                raise
            await self._commit(txn)
        finally:
            _CURRENT_TXN.reset(token)
            if txn.workdir is not None:
                shutil.rmtree(txn.workdir, ignore_errors=True)

    async def _commit(self, txn: RemoteTransaction) -> list[dict[str, Any]]:
        if not txn.operations:
            if txn.server_id:
                await self._abort(txn)
            return []
        if txn.server_id is None:
            result = await self.client.post_json("operations", {"operations": txn.operations})
        else:
            try:
                result = await self.client.post_json(
                    f"transactions/{txn.server_id}/commit", {"operations": txn.operations}
                )
            finally:
                txn.server_id = None  # the server discards it either way
        if any(self._creates_own_run(op) for op in txn.operations):
            self._run_exists = True  # committed: no need to ask the server again
        return list(result["results"])

    def _creates_own_run(self, op: Mapping[str, Any]) -> bool:
        """Whether a committed operation made this butler's own RUN exist."""
        created = {"put": op.get("run"), "register_run": op.get("name")}.get(op["op"])
        return self.run is not None and created == self.run

    async def _abort(self, txn: RemoteTransaction) -> None:
        if txn.server_id is not None:
            server_id, txn.server_id = txn.server_id, None
            try:
                await self.client.delete(f"transactions/{server_id}")
            except Exception:  # noqa: BLE001 - the staging expires on the server anyway
                return

    async def _operate(self, op: dict[str, Any]) -> dict[str, Any] | None:
        """Queue ``op`` in the current transaction, or commit it alone right away."""
        self._check_writeable()
        txn = _CURRENT_TXN.get()
        if txn is not None:
            txn.operations.append(op)
            return None
        single = RemoteTransaction(operations=[op])
        return (await self._commit(single))[0]

    async def register_dataset_type(
        self, name: str, dimensions: Iterable[str], storage_class: str, formatter: str | None = None
    ) -> DatasetType:
        op = {
            "op": "register_dataset_type",
            "name": name,
            "dimensions": list(dimensions),
            "storage_class": storage_class,
            "formatter": formatter,
        }
        result = await self._operate(op)
        if result is None:
            universe = await self.universe()
            required = universe.validate_dimensions(dimensions, f"dataset type {name!r}")
            return DatasetType(
                name, required, storage_class, formatter, universe.implied_closure(required)
            )
        return DatasetType.from_dict(result["dataset_type"])

    async def register_run(self, name: str, doc: str = "") -> bool:
        result = await self._operate({"op": "register_run", "name": name, "doc": doc})
        return bool(result and result.get("created"))

    async def set_collection_chain(self, name: str, children: Sequence[str], doc: str = "") -> None:
        await self._operate(
            {"op": "set_collection_chain", "name": name, "children": list(children), "doc": doc}
        )

    async def insert_dimension_records(
        self, element: str, *records: Mapping[str, Any], skip_existing: bool = False
    ) -> int:
        result = await self._operate(
            {
                "op": "insert_dimension_records",
                "element": element,
                "records": [plain(r) for r in records],
                "skip_existing": skip_existing,
            }
        )
        return int(result["inserted"]) if result else len(records)

    async def put(
        self,
        /,
        obj: Any,
        dataset_type: str | DatasetType,
        data_id: Mapping[str, Any] | None = None,
        *,
        run: str | None = None,
        **data_id_kwargs: Any,
    ) -> DatasetRef:
        """Write ``obj`` locally with its formatter, upload it, and commit (or queue) it."""
        self._check_writeable()
        run = run or self.run
        if run is None:
            raise TransactionError(
                "no RUN collection to write to: open the butler with run='...' or pass run="
            )
        name = dataset_type.name if isinstance(dataset_type, DatasetType) else dataset_type
        parent, component = split_component(name)
        if component is not None:
            raise StorageClassError(f"cannot write component {name!r}; put the whole {parent!r}")
        resolved = await self.get_dataset_type(parent)
        sc = self.formatters.storage_class(resolved.storage_class)
        obj = sc.validate(obj)
        formatter = self.formatters.formatter(resolved.formatter or sc.default_formatter)
        given = plain({**dict(data_id or {}), **data_id_kwargs})
        outer = _CURRENT_TXN.get()
        txn = outer or RemoteTransaction()
        try:
            if txn.workdir is None:
                txn.workdir = Path(tempfile.mkdtemp(prefix="butler-put-"))
            dataset_id = uuid.uuid4()
            local = txn.workdir / f"{dataset_id}{formatter.extension}"
            await asyncio.to_thread(formatter.write, obj, local)
            checksum = await asyncio.to_thread(sha256_file, local)
            if txn.server_id is None:
                txn.server_id = (await self.client.post_json("transactions", {}))["id"]
            await self.client.upload(
                f"transactions/{txn.server_id}/uploads/{dataset_id}", local, checksum
            )
            if outer is None:
                local.unlink()
            else:
                # Kept (until the transaction ends) for reads inside the transaction.
                pending = await self._pending_put(
                    dataset_id, resolved, given, run, formatter, local, checksum
                )
            txn.operations.append(
                {
                    "op": "put",
                    "id": str(dataset_id),
                    "dataset_type": parent,
                    "data_id": given,
                    "run": run,
                    "checksum": checksum,
                }
            )
            if outer is None:
                results = await self._commit(txn)
                return DatasetRef.from_dict(results[-1]["ref"])
            txn.pending[dataset_id] = pending
        except BaseException:
            if outer is None:
                await asyncio.shield(self._abort(txn))
            raise
        finally:
            if outer is None and txn.workdir is not None:
                shutil.rmtree(txn.workdir, ignore_errors=True)
        # Queued in a transaction: the data ID is checked and expanded by the commit.
        return pending.ref

    async def _pending_put(
        self,
        dataset_id: uuid.UUID,
        dataset_type: DatasetType,
        given: dict[str, Any],
        run: str,
        formatter: Formatter,
        local: Path,
        checksum: str,
    ) -> PendingPut:
        """What reads inside the transaction see of a queued put: the uploaded file's local
        copy and the file record the commit will give it (the same index and checksum)."""
        index = await asyncio.to_thread(validate_file, formatter, local)
        size = await asyncio.to_thread(lambda: local.stat().st_size)
        origin = self.formatters.origin(formatter.name)
        if origin is not None:
            index = {**index, ORIGIN_KEY: origin}
        required = tuple(d for d in dataset_type.dimensions if d in given)
        ref = DatasetRef(dataset_id, dataset_type, DataCoordinate(given, required), run)
        file = FileInfo(
            dataset_id=dataset_id,
            path=local.name,
            size=size,
            checksum=checksum,
            formatter=formatter.name,
            storage_class=dataset_type.storage_class,
            index=index,
        )
        return PendingPut(ref, dict(given), file, local)

    async def remove(
        self,
        /,
        refs: DatasetRef | Iterable[DatasetRef] | str,
        data_id: Mapping[str, Any] | None = None,
        *,
        collections: Collections = None,
        **kwargs: Any,
    ) -> int:
        if isinstance(refs, str):
            ref_list = [(await self.resolve(refs, data_id, collections=collections, **kwargs))[0]]
        elif isinstance(refs, DatasetRef):
            ref_list = [refs]
        else:
            ref_list = list(refs)
        result = await self._operate({"op": "remove", "refs": [r.to_dict() for r in ref_list]})
        txn = _CURRENT_TXN.get()
        if result is None and txn is not None:
            txn.removed.update(r.id for r in ref_list)  # queued: hidden from reads at once
        return int(result["removed"]) if result else len(ref_list)


def _cache_full(
    directory: Path, exc: BaseException, what: str, needed: int, advice: str = ""
) -> CacheFullError:
    """The error for a download the local file cache has no room for."""
    free = shutil.disk_usage(directory).free
    return CacheFullError(
        f"the file cache at {directory} is full ({exc}): {what} needs {needed} bytes (twice "
        f"that while it is stored) and {free} bytes are free. Free some space, or give the "
        f"butler a cache with room (cache_dir=, or $BUTLER_CACHE_DIR){advice}"
    )
