"""``RemoteButler``: the synchronous butler over HTTP, the same interface as a local one.

It runs :class:`~butler.remote.async_butler.AsyncButler` coroutines on a private event loop in
a background thread, so it works the same from a script, a thread, or a Jupyter cell whose
own event loop is already running (no "event loop is already running" errors).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
import weakref
from collections.abc import Coroutine, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from butler.butler import Butler, Collections, DatasetLike, QuerySummary
from butler.errors import ButlerError
from butler.formatters.registry import FormatterRegistry
from butler.io.source import ByteSource, LocalFileSource
from butler.refs import DataCoordinate, DatasetRef, DatasetType, FileInfo
from butler.remote.async_butler import _CURRENT_TXN, AsyncButler, RemoteTransaction
from butler.remote.cache import DEFAULT_SIZE_LIMIT
from butler.remote.source import HttpByteSource
from butler.universe import DimensionUniverse

T = TypeVar("T")
MAX_VALUES = 10_000
"""Distinct values one completion query returns at most (the server's largest page)."""


class _LoopThread:
    """An event loop running in a daemon thread, for blocking callers."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self.loop.run_forever, name="butler-http", daemon=True
        )
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        if threading.current_thread() is self._thread:
            raise ButlerError("a RemoteButler method was called from its own I/O thread")
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()

    def stop(self) -> None:
        if threading.current_thread() is self._thread:
            # Collected on its own thread: stop after this callback, nothing to wait for.
            self.loop.call_soon(self.loop.stop)
            return
        if self.loop.is_running():
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(timeout=10)
        if not self.loop.is_running():
            self.loop.close()


async def _in_transaction(coro: Coroutine[Any, Any, T], txn: RemoteTransaction | None) -> T:
    """Run ``coro`` with the calling thread's transaction (each call is a task of its own)."""
    token = _CURRENT_TXN.set(txn)
    try:
        return await coro
    finally:
        _CURRENT_TXN.reset(token)


def _shutdown(io: _LoopThread, remote: AsyncButler) -> None:
    """Close the session and the cache, then stop the I/O thread (``close`` and the
    finalizer that runs it when a butler nobody closed is collected or at exit)."""
    try:
        io.run(remote.close())
    except Exception:  # noqa: BLE001 - the thread must stop anyway; say what went wrong
        logging.getLogger("butler").warning("closing %s failed", remote.url, exc_info=True)
    io.stop()


class RemoteButler(Butler):
    """A butler on a remote repository (``Butler("http://host:port/")``)."""

    def __init__(
        self,
        path: str | os.PathLike[str],
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
        super().__init__(path, writeable, run, collections)
        self.remote = AsyncButler(
            str(path),
            writeable,
            run,
            collections,
            token=token,
            token_file=token_file,
            max_connections=max_connections,
            cache_dir=cache_dir,
            cache_size=cache_size,
            formatters=formatters,
        )
        self.formatters = self.remote.formatters
        self._local = threading.local()
        # Started once the arguments are accepted (a bad URL or run name leaves no thread).
        self._io = _LoopThread()
        # Closed when collected or at interpreter exit if the caller never closes it (holds
        # no reference to ``self``, so it does not keep the butler alive).
        self._finalizer = weakref.finalize(self, _shutdown, self._io, self.remote)
        try:
            self._run(self.remote.info())
            # Like a local butler: ``run`` is checked now and created by the first write
            # that commits; until then reads search it as an empty RUN.
            self._run(self.remote.check_run())
        except BaseException:
            self.close()
            raise

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self._io.run(_in_transaction(coro, getattr(self._local, "txn", None)))

    @property
    def url(self) -> str:
        return self.remote.url

    @property
    def universe(self) -> DimensionUniverse:  # type: ignore[override]
        return self._run(self.remote.universe())

    def __repr__(self) -> str:
        mode = "writeable" if self.writeable else "read-only"
        return f"Butler({self.url!r}, {mode}, run={self.run!r}, collections={self.collections!r})"

    def close(self) -> None:
        """Close the connections and the cache; ``with Butler(url) as butler:`` does it."""
        self._finalizer()

    def info(self) -> dict[str, Any]:
        return self._run(self.remote.info())

    # -- backend primitives ---------------------------------------------------------------

    def _resolve(
        self,
        dataset_type_or_ref: DatasetLike,
        data_id: Mapping[str, Any] | None,
        collections: Collections,
        kwargs: Mapping[str, Any],
    ) -> tuple[DatasetRef, FileInfo]:
        return self._run(
            self.remote.resolve(dataset_type_or_ref, data_id, collections=collections, **kwargs)
        )

    def _own_file(self, file: FileInfo) -> Path | None:
        """The local copy of a file this thread's open transaction put (read your own
        writes: see :class:`~butler.remote.async_butler.RemoteTransaction`)."""
        txn: RemoteTransaction | None = getattr(self._local, "txn", None)
        return txn.pending_local(file) if txn is not None else None

    def _open_source(self, ref: DatasetRef, file: FileInfo) -> ByteSource:
        own = self._own_file(file)
        if own is not None:
            return LocalFileSource(own)
        return HttpByteSource(self.remote.client, file, self._io.loop)

    def _local_file(self, ref: DatasetRef, file: FileInfo) -> Path:
        return self._run(self.remote.local_file(file))

    def _file_present(self, file: FileInfo) -> bool:
        return True  # the server only lists datasets whose files it serves

    def _local_hdu(
        self, ref: DatasetRef, file: FileInfo, entry: Mapping[str, Any]
    ) -> tuple[Path, int]:
        own = self._own_file(file)
        if own is not None:  # put in this thread's open transaction: the whole file is here
            return own, int(entry["data_offset"])
        # Only the HDU's data bytes are fetched (and cached): they start the cached file.
        return self._run(self.remote.local_hdu(file, entry)), 0

    def get_uri(
        self,
        dataset_type_or_ref: DatasetLike,
        data_id: Mapping[str, Any] | None = None,
        *,
        collections: Collections = None,
        **kwargs: Any,
    ) -> str:
        _, file = self._resolve(dataset_type_or_ref, data_id, collections, kwargs)
        own = self._own_file(file)
        return own.as_uri() if own is not None else self.remote.file_url(file)

    # -- registry-like ---------------------------------------------------------------------

    def get_dataset_type(self, name: str) -> DatasetType:
        return self._run(self.remote.get_dataset_type(name))

    def dataset_types(self) -> list[DatasetType]:
        return self._run(self.remote.dataset_types())

    def query_collections(self) -> list[dict[str, Any]]:
        return self._run(self.remote.query_collections())

    def get_collection_chain(self, name: str) -> list[str]:
        return self._run(self.remote.get_collection_chain(name))

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
        return self._run(
            self.remote.query_datasets_with_files(
                dataset_type,
                collections,
                where,
                bind,
                find_first=find_first,
                limit=limit,
                offset=offset,
                **data_id,
            )
        )

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
        if offset:
            raise ButlerError("offset is not supported for remote data ID queries; use limit")
        return self._run(
            self.remote.query_data_ids(
                dimensions,
                where,
                bind,
                dataset_type=dataset_type,
                collections=collections,
                limit=limit,
                **data_id,
            )
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
        return self._run(
            self.remote.query_dimension_records(element, where, bind, limit=limit, **data_id)
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
        return self._run(
            self.remote.query_summary(
                dataset_type, collections, where, bind, find_first=find_first, **data_id
            )
        )

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
        return self._run(
            self.remote.dimension_values(
                dimension,
                where,
                bind,
                dataset_type=dataset_type,
                collections=collections,
                limit=MAX_VALUES,
                **data_id,
            )
        )

    # -- writing ---------------------------------------------------------------------------

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """Everything inside commits at once (one request), or on an exception not at all.

        Reads inside see the transaction's own writes, from the client side: a dataset put
        is read from the local copy of the bytes it uploaded (``get``, ``open``,
        ``get_local_path``, ``exists``, by ref or by a data ID giving its required
        dimensions), and a dataset removed is not found. Queries list committed datasets
        only. Nothing is visible to other clients until the commit; a client killed before
        it leaves only staged uploads, which the server drops when they expire.
        """
        self.remote._check_writeable()
        outer: RemoteTransaction | None = getattr(self._local, "txn", None)
        if outer is not None:
            mark = len(outer.operations)
            try:
                yield
            except BaseException:
                outer.rollback_to(mark)
                raise
            return
        txn = RemoteTransaction()
        self._local.txn = txn
        try:
            try:
                yield
            except BaseException:
                self._io.run(self.remote._abort(txn))
                raise
            self._io.run(self.remote._commit(txn))
        finally:
            self._local.txn = None
            if txn.workdir is not None:
                import shutil

                shutil.rmtree(txn.workdir, ignore_errors=True)

    def register_dataset_type(
        self, name: str, dimensions: Iterable[str], storage_class: str, formatter: str | None = None
    ) -> DatasetType:
        return self._run(
            self.remote.register_dataset_type(name, dimensions, storage_class, formatter)
        )

    def register_run(self, name: str, doc: str = "") -> bool:
        return self._run(self.remote.register_run(name, doc))

    def set_collection_chain(self, name: str, children: Sequence[str], doc: str = "") -> None:
        self._run(self.remote.set_collection_chain(name, children, doc))

    def insert_dimension_records(
        self, element: str, *records: Mapping[str, Any], skip_existing: bool = False
    ) -> int:
        return self._run(
            self.remote.insert_dimension_records(element, *records, skip_existing=skip_existing)
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
        return self._run(self.remote.put(obj, dataset_type, data_id, run=run, **data_id_kwargs))

    def remove(
        self,
        refs: DatasetRef | Iterable[DatasetRef] | str,
        data_id: Mapping[str, Any] | None = None,
        *,
        collections: Collections = None,
        **kwargs: Any,
    ) -> int:
        return self._run(self.remote.remove(refs, data_id, collections=collections, **kwargs))
