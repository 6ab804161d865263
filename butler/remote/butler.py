"""``RemoteButler``: the synchronous butler over HTTP, the same interface as a local one.

It is a thin facade: its methods are the blocking twins of
:class:`~butler.remote.async_butler.AsyncButler`'s coroutines (:mod:`butler.blocking`), run on a
private event loop in a background thread (:mod:`butler.remote.io_thread`), so it works the
same from a script, a thread, or a Jupyter cell whose own event loop is already running.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import weakref
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

from butler.blocking import blocking
from butler.butler import Butler
from butler.formatters.registry import FormatterRegistry
from butler.reading import Collections, Reader
from butler.remote.async_butler import _CURRENT_TXN, AsyncButler, RemoteTransaction
from butler.remote.cache import DEFAULT_SIZE_LIMIT
from butler.remote.io_thread import IOThread
from butler.universe import DimensionUniverse

T = TypeVar("T")


async def _in_transaction(coro: Coroutine[Any, Any, T], txn: RemoteTransaction | None) -> T:
    """Run ``coro`` with the calling thread's transaction (each call is a task of its own)."""
    token = _CURRENT_TXN.set(txn)
    try:
        return await coro
    finally:
        _CURRENT_TXN.reset(token)


def _shutdown(io: IOThread, remote: AsyncButler) -> None:
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
        self._local = threading.local()
        # Started once the arguments are accepted (a bad URL or run name leaves no thread).
        self._io = IOThread()
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

    # -- reading and queries: the async client's coroutines, run on the I/O thread ---------

    @property
    def _reader(self) -> AsyncButler:
        return self.remote

    def _read(self, call: Callable[[Reader], Coroutine[Any, Any, T]]) -> T:
        return self._run(call(self.remote))

    get_dataset_type = blocking(AsyncButler.get_dataset_type)
    dataset_types = blocking(AsyncButler.dataset_types)
    query_collections = blocking(AsyncButler.query_collections)
    get_collection_chain = blocking(AsyncButler.get_collection_chain)
    query_datasets_with_files = blocking(AsyncButler.query_datasets_with_files)
    query_data_ids = blocking(AsyncButler.query_data_ids)
    query_dimension_records = blocking(AsyncButler.query_dimension_records)
    query_summary = blocking(AsyncButler.query_summary)
    query_dimension_values = blocking(AsyncButler.query_dimension_values)

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

    register_dataset_type = blocking(AsyncButler.register_dataset_type)
    register_run = blocking(AsyncButler.register_run)
    set_collection_chain = blocking(AsyncButler.set_collection_chain)
    insert_dimension_records = blocking(AsyncButler.insert_dimension_records)
    put = blocking(AsyncButler.put)
    remove = blocking(AsyncButler.remove)
