"""``AsyncButler``: the butler API as coroutines, over a repository server.

Every method of :class:`~butler.butler.Butler` has an awaitable twin here; the sync
:class:`~butler.remote.butler.RemoteButler` runs these same coroutines on a private event loop.
All requests share one aiohttp session with a bounded connection pool, so
``asyncio.gather`` of hundreds of ``get`` calls reuses a few connections.

Writes: ``put`` writes the file locally with the dataset type's formatter, uploads it to the
server's staging area (hashed on both ends) and commits. Inside ``async with
butler.transaction()`` uploads accumulate and one commit makes them all visible at once;
errors about data IDs or conflicts are raised by that commit, at the end of the block.
"""

from __future__ import annotations

import asyncio
import contextvars
import shutil
import sqlite3
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from butler.butler import (
    Collections,
    DatasetLike,
    IOStats,
    QuerySummary,
    as_collection_list,
    memmap_hdu,
)
from butler.datastore import sha256_file
from butler.errors import (
    AmbiguousDatasetError,
    ButlerError,
    CorruptFileError,
    DatasetNotFoundError,
    ReadOnlyRepositoryError,
    StorageClassError,
    TransactionError,
)
from butler.formatters.registry import ORIGIN_KEY, FormatterRegistry, default_registry
from butler.io.source import RangeFile
from butler.refs import DataCoordinate, DatasetRef, DatasetType, FileInfo, split_component
from butler.remote.cache import DEFAULT_SIZE_LIMIT, FileCache
from butler.remote.client import API, ClientSettings, RepositoryClient, data_id_json
from butler.remote.limits import Pages, is_disk_full
from butler.remote.source import HttpByteSource
from butler.universe import DimensionUniverse

if TYPE_CHECKING:
    import numpy as np


@dataclass
class RemoteTransaction:
    """Operations waiting for one commit, and the server-side transaction of their uploads."""

    operations: list[dict[str, Any]] = field(default_factory=list)
    server_id: str | None = None
    workdir: Path | None = None


class CacheFullError(ButlerError, OSError):
    """The client's file cache has no room left on its disk for a file."""

    error_type = "CacheFullError"


_CURRENT_TXN: contextvars.ContextVar[RemoteTransaction | None] = contextvars.ContextVar(
    "butler_remote_transaction", default=None
)


def _collection_params(collections: Sequence[str] | None) -> list[tuple[str, str]]:
    return [("collections", c) for c in collections or []]


class AsyncButler:
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
        self.writeable = writeable or run is not None
        self.run = run
        self.collections = as_collection_list(collections) or ([run] if run else None)
        self.formatters = formatters or default_registry()
        self.io_stats = IOStats()
        self._cache_dir = Path(cache_dir) if cache_dir else None
        self._cache_size = cache_size
        self._cache: FileCache | None = None
        self._info: dict[str, Any] | None = None
        self._universe: DimensionUniverse | None = None
        self._dataset_types: dict[str, DatasetType] = {}

    @property
    def url(self) -> str:
        return self.settings.url

    async def __aenter__(self) -> AsyncButler:
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
            info = await self.client.get_json("")
            self._info = info
            self._universe = DimensionUniverse(info["universe"], source=self.url)
            max_ranges = int(info.get("max_ranges") or self.settings.max_ranges)
            # Servers that do not say (older ones) get the default page size.
            page_size = int(info.get("max_page_size") or self.settings.page_size)
            if (max_ranges, page_size) != (self.settings.max_ranges, self.settings.page_size):
                from dataclasses import replace

                self.settings = replace(self.settings, max_ranges=max_ranges, page_size=page_size)
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
            cached = DatasetType.from_dict(await self.client.get_json(f"dataset-types/{parent}"))
            self._dataset_types[parent] = cached
        return cached

    async def dataset_types(self) -> list[DatasetType]:
        data = await self.client.get_json("dataset-types")
        return [DatasetType.from_dict(d) for d in data["dataset_types"]]

    async def query_collections(self) -> list[dict[str, Any]]:
        return list((await self.client.get_json("collections"))["collections"])

    async def get_collection_chain(self, name: str) -> list[str]:
        return list((await self.client.get_json(f"collections/{name}"))["children"])

    # -- finding and reading --------------------------------------------------------------

    async def resolve(
        self,
        dataset_type_or_ref: DatasetLike,
        data_id: Mapping[str, Any] | None = None,
        *,
        collections: Collections = None,
        **kwargs: Any,
    ) -> tuple[DatasetRef, FileInfo]:
        """The dataset's ref (with its component) and its file record, in one request."""
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
        params = [("dataset_type", parent), ("data_id", data_id_json(given))]
        params += _collection_params(search)
        try:
            found = await self.client.get_json("find", params)
        except DatasetNotFoundError as exc:
            # Say which dataset type was asked for, component included.
            raise DatasetNotFoundError(str(exc).replace(repr(parent), repr(name), 1)) from None
        except AmbiguousDatasetError:
            raise
        ref = DatasetRef.from_dict(found["ref"]).make_component_ref(component)
        return ref, FileInfo.from_dict(found["file"])

    async def find_dataset(
        self,
        dataset_type: str | DatasetType,
        data_id: Mapping[str, Any] | None = None,
        *,
        collections: Collections = None,
        **kwargs: Any,
    ) -> DatasetRef | None:
        try:
            return (await self.resolve(dataset_type, data_id, collections=collections, **kwargs))[0]
        except DatasetNotFoundError:
            return None

    async def get_file_info(
        self,
        dataset_type_or_ref: DatasetLike,
        data_id: Mapping[str, Any] | None = None,
        *,
        collections: Collections = None,
        **kwargs: Any,
    ) -> FileInfo:
        return (
            await self.resolve(dataset_type_or_ref, data_id, collections=collections, **kwargs)
        )[1]

    def byte_source(self, file: FileInfo) -> HttpByteSource:
        return HttpByteSource(self.client, file, asyncio.get_running_loop())

    async def get(
        self,
        dataset_type_or_ref: DatasetLike,
        data_id: Mapping[str, Any] | None = None,
        *,
        parameters: Mapping[str, Any] | None = None,
        collections: Collections = None,
        **kwargs: Any,
    ) -> Any:
        """Read a dataset or a part of it; only the bytes the read needs are fetched."""
        ref, file = await self.resolve(
            dataset_type_or_ref, data_id, collections=collections, **kwargs
        )
        return await self.read_file(ref, file, parameters)

    async def read_file(
        self, ref: DatasetRef, file: FileInfo, parameters: Mapping[str, Any] | None = None
    ) -> Any:
        formatter = self.formatters.formatter(file.formatter, file.index.get(ORIGIN_KEY))
        formatter.check_request(ref.component, parameters)
        source = self.byte_source(file)
        try:
            # Formatters are synchronous; they run in a thread and fetch through the loop.
            return await asyncio.to_thread(
                formatter.read,
                source,
                file.index,
                component=ref.component,
                parameters=parameters or {},
            )
        finally:
            self.io_stats.add(source)

    async def exists(
        self,
        dataset_type_or_ref: DatasetLike,
        data_id: Mapping[str, Any] | None = None,
        *,
        collections: Collections = None,
        **kwargs: Any,
    ) -> bool:
        try:
            await self.resolve(dataset_type_or_ref, data_id, collections=collections, **kwargs)
        except DatasetNotFoundError:
            return False
        return True

    def file_cache(self) -> FileCache:
        if self._cache is None:
            self._cache = FileCache(self._cache_dir, self._cache_size)
        return self._cache

    async def get_local_path(
        self,
        dataset_type_or_ref: DatasetLike,
        data_id: Mapping[str, Any] | None = None,
        *,
        collections: Collections = None,
        **kwargs: Any,
    ) -> Path:
        """Download the file once into the client cache, verified; its path there."""
        _, file = await self.resolve(
            dataset_type_or_ref, data_id, collections=collections, **kwargs
        )
        return await self.local_file(file)

    async def local_file(self, file: FileInfo) -> Path:
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
            free = shutil.disk_usage(cache.directory).free
            raise CacheFullError(
                f"the file cache at {cache.directory} is full ({exc}): {file.path} needs "
                f"{file.size} bytes (twice that while it is stored) and {free} bytes are "
                "free. Free some space, or give the butler a cache with room (cache_dir=, or "
                "$BUTLER_CACHE_DIR); get() and open() read parts of files without the cache"
            ) from None

    def file_url(self, file: FileInfo) -> str:
        return self.client.url("files/" + file.path)

    async def get_uri(
        self,
        dataset_type_or_ref: DatasetLike,
        data_id: Mapping[str, Any] | None = None,
        *,
        collections: Collections = None,
        **kwargs: Any,
    ) -> str:
        """The ``http(s)://`` URL of the dataset's file on the server."""
        _, file = await self.resolve(
            dataset_type_or_ref, data_id, collections=collections, **kwargs
        )
        return self.file_url(file)

    async def open(
        self,
        dataset_type_or_ref: DatasetLike,
        data_id: Mapping[str, Any] | None = None,
        *,
        read_ahead: int = 64 * 1024,
        collections: Collections = None,
        **kwargs: Any,
    ) -> RangeFile:
        """A lazily range-reading file object; read it from a thread (it blocks on the loop)."""
        _, file = await self.resolve(
            dataset_type_or_ref, data_id, collections=collections, **kwargs
        )
        return self.byte_source(file).open(read_ahead=read_ahead)

    async def memmap(
        self,
        dataset_type_or_ref: DatasetLike,
        data_id: Mapping[str, Any] | None = None,
        *,
        hdu: str | int = "IMAGE",
        collections: Collections = None,
        **kwargs: Any,
    ) -> np.memmap[Any, Any]:
        """Download once into the client cache, then memory-map one HDU's pixels."""
        _, file = await self.resolve(
            dataset_type_or_ref, data_id, collections=collections, **kwargs
        )
        return memmap_hdu(await self.local_file(file), file, hdu)

    # -- queries --------------------------------------------------------------------------

    async def query_datasets_with_files(
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
        name = dataset_type.name if isinstance(dataset_type, DatasetType) else dataset_type
        search = as_collection_list(collections) or self.collections
        body = {
            "dataset_type": split_component(name)[0],
            "collections": search,
            "where": where,
            "bind": _plain(bind or {}),
            "data_id": _plain(data_id),
            "find_first": find_first,
        }
        rows: list[Any] = []
        pages = Pages(self.client.url(f"{API}/datasets/query"), offset)
        await self.info()  # the server's page size
        # POST keeps long where expressions out of URLs.
        while True:
            size = self.settings.page_size
            if limit is not None:
                size = min(size, limit - len(rows))
            page = await self.client.post_json(
                "datasets/query", {**body, "limit": size, "offset": pages.offset}
            )
            new = pages.rows_of(page, "datasets")
            rows.extend(new)
            if (limit is not None and len(rows) >= limit) or not pages.follow(page, new, size):
                break
        return [(DatasetRef.from_dict(r["ref"]), FileInfo.from_dict(r["file"])) for r in rows]

    async def query_datasets(
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
        rows = await self.query_datasets_with_files(
            dataset_type, collections, where, bind, find_first=find_first, limit=limit, **data_id
        )
        return [ref for ref, _ in rows]

    async def query_data_ids(
        self,
        dimensions: str | Sequence[str],
        where: str = "",
        bind: Mapping[str, Any] | None = None,
        *,
        dataset_type: str | None = None,
        collections: Collections = None,
        limit: int | None = None,
        **data_id: Any,
    ) -> list[DataCoordinate]:
        dims = [dimensions] if isinstance(dimensions, str) else list(dimensions)
        params = [("dimensions", d) for d in dims]
        params += [
            ("where", where),
            ("bind", data_id_json(bind or {})),
            ("data_id", data_id_json(data_id)),
        ]
        if dataset_type:
            params.append(("dataset_type", dataset_type))
            params += _collection_params(as_collection_list(collections) or self.collections)
        rows = await self.client.paginate("data-ids", "data_ids", params, limit)
        return [DataCoordinate.from_dict(r) for r in rows]

    async def query_dimension_records(
        self,
        element: str,
        where: str = "",
        bind: Mapping[str, Any] | None = None,
        *,
        limit: int | None = None,
        **data_id: Any,
    ) -> list[dict[str, Any]]:
        params = [
            ("where", where),
            ("bind", data_id_json(bind or {})),
            ("data_id", data_id_json(data_id)),
        ]
        return await self.client.paginate(f"dimensions/{element}/records", "records", params, limit)

    async def dimension_values(
        self,
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
        params = [
            ("where", where),
            ("bind", data_id_json(bind or {})),
            ("data_id", data_id_json(data_id)),
            ("prefix", prefix),
            ("limit", str(limit)),
        ]
        if dataset_type:
            params.append(("dataset_type", dataset_type))
            params += _collection_params(as_collection_list(collections) or self.collections)
        data = await self.client.get_json(f"dimensions/{element}/values", params)
        return list(data["values"])

    async def query_summary(
        self,
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
        params = [
            ("dataset_type", split_component(name)[0]),
            ("where", where),
            ("bind", data_id_json(bind or {})),
            ("data_id", data_id_json(data_id)),
            ("find_first", "true" if find_first else "false"),
            *_collection_params(as_collection_list(collections) or self.collections),
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
        """Everything inside commits at once, or (on an exception) not at all."""
        self._check_writeable()
        outer = _CURRENT_TXN.get()
        if outer is not None:
            mark = len(outer.operations)
            try:
                yield
            except BaseException:
                del outer.operations[mark:]
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
        return list(result["results"])

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
                "records": [_plain(r) for r in records],
                "skip_existing": skip_existing,
            }
        )
        return int(result["inserted"]) if result else len(records)

    async def put(
        self,
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
        given = _plain({**dict(data_id or {}), **data_id_kwargs})
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
            local.unlink()
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
        except BaseException:
            if outer is None:
                await asyncio.shield(self._abort(txn))
            raise
        finally:
            if outer is None and txn.workdir is not None:
                shutil.rmtree(txn.workdir, ignore_errors=True)
        # Queued in a transaction: the data ID is checked and expanded by the commit.
        required = tuple(d for d in resolved.dimensions if d in given)
        return DatasetRef(dataset_id, resolved, DataCoordinate(given, required), run)

    async def remove(
        self,
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
        return int(result["removed"]) if result else len(ref_list)


def _plain(mapping: Mapping[str, Any]) -> dict[str, Any]:
    """JSON-ready copy: numpy scalars become Python numbers."""
    return {
        k: (v.item() if hasattr(v, "item") and not isinstance(v, (str, bytes)) else v)
        for k, v in mapping.items()
    }
