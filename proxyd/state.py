"""What one running proxy shares between requests: its store, upstream clients, fills in
flight and first fetches under way, the store's health, and the accounting of each answer."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ParamSpec, Protocol, TypeVar

import aiohttp
from aiohttp import web

from proxyd import sparse
from proxyd.accesslog import AccessLog
from proxyd.inflight import BlockRun, InflightRegistry
from proxyd.metrics import Metrics
from proxyd.policy import access
from proxyd.policy.extents import Extent
from proxyd.policy.requests import RequestLimits
from proxyd.settings import ProxySettings
from proxyd.store import (
    BlockStore,
    ObjectMeta,
    StoreWriteError,
    record_settings,
    settings_record,
)
from proxyd.upstream import UpstreamClients


class WorkerLinks(Protocol):
    """A worker process's link as the main process's state sees it
    (:class:`proxyd.workers.WorkerLink`): its counts are flushed before metrics are read."""

    async def flush(self) -> None: ...


log = logging.getLogger("proxyd")


P = ParamSpec("P")
R = TypeVar("R")


CACHE_HEADER = "X-Cache"


class VersionChangedError(Exception):
    """The origin's object changed while the old version was being read."""


@dataclass
class Served:
    """What one request did, for the access log and the metrics."""

    cache: str = ""
    """HIT, PARTIAL, MISS, REVALIDATED, STALE, PASS, DENIED, REFUSED or ERROR."""
    from_cache: int = 0
    from_origin: int = 0


@dataclass
class Relay:
    """The open upstream answer to a first fetch that is not stored, lent to the request that
    made it (issue 22: the origin is asked once per miss). The fetch task keeps the upstream
    connection until ``done`` is set."""

    upstream: aiohttp.ClientResponse
    done: asyncio.Event
    body: bytes | None = None
    """The answer's body when the fetch has read it already (to keep it as an extent)."""


@dataclass
class Uncacheable:
    reason: str
    relay: Relay | None = None
    """The answer itself, for the request whose headers it was sent with (None when there is
    no answer to lend: the cache cannot store, or the fetch was made for another request)."""
    origin_error: int | None = None
    """The status of an origin error (5xx) answering a revalidation: a stored object may
    then be served stale instead (stale-if-error)."""


@dataclass
class Probe:
    """A first fetch in progress and the requests waiting for its answer."""

    future: asyncio.Future[Probed | Uncacheable]
    waiting: int = 0
    """Requests waiting for the answer: the run it starts is created with one claim for
    each of them (:meth:`proxyd.inflight.BlockRun.claim`), which each one releases."""
    key: tuple[str, str | None] = ("", None)
    """Its key in ``ProxyState.probes``: (cache key, credential fingerprint)."""
    originator_gone: bool = False
    """The request whose fields were sent went away before the answer: nobody will take an
    uncacheable answer from the fetch task (see Relay)."""


@dataclass
class Probed:
    """What a first fetch learnt: the object's metadata, and the run of blocks its body is
    filling (None when the body held no blocks, e.g. an empty object)."""

    meta: ObjectMeta
    run: BlockRun | None
    personal: tuple[tuple[str, str], ...] = ()
    """Fields of the origin's answer meant for the client whose request was forwarded
    (Set-Cookie...): never stored, given to that request only (see probe())."""
    revalidated: bool = False
    """The stored object was confirmed by a 304 (its metadata freshened)."""
    stale: bool = False
    """The origin failed to revalidate it: the stored object is served stale."""
    fresh: Extent | None = None
    """Bytes the first fetch brought as an extent (a small range, fetched exactly)."""


STORE_RETRY_SECONDS = 30.0
"""While the cache cannot store, how often a miss tries to store again (the others pass
through to the origin without trying)."""


class StoreHealth:
    """Whether the cache can store what it fetches (event loop only).

    A write that fails (file system full or read-only, a failing disk) makes the cache
    *degraded*: responses are still answered, with the bytes in hand (the cache is only a
    copy); new misses pass through to the origin, and one tries to store again every
    ``STORE_RETRY_SECONDS``. A block stored again clears the condition. ``/healthz`` and
    the ``proxyd_store_degraded`` gauge report it, ``proxyd_store_failures`` counts failed
    writes.
    """

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics
        self.problem: str | None = None
        """Why the cache cannot store (the last failed write), None when it can."""
        self._last_try = 0.0

    def failed(self, exc: StoreWriteError) -> None:
        if self.problem is None:
            log.warning("cache degraded, passing responses through: %s", exc)
        self.problem = str(exc)
        self._last_try = time.monotonic()
        self.metrics.store_failures.inc()
        self.metrics.store_degraded.set(1)

    def stored(self) -> None:
        if self.problem is not None:
            log.warning("cache stores again (was: %s)", self.problem)
            self.problem = None
            self.metrics.store_degraded.set(0)

    def may_try(self) -> bool:
        """Whether a miss should go through the cache (which stores what it fetches)."""
        if self.problem is None:
            return True
        if time.monotonic() - self._last_try < STORE_RETRY_SECONDS:
            return False
        self._last_try = time.monotonic()
        return True


class ProxyState:
    """Everything one running proxy shares between requests."""

    def __init__(self, settings: ProxySettings) -> None:
        self.settings = settings
        self.metrics = Metrics()
        self.store = BlockStore(
            settings.cache_dir,
            settings.cache_size,
            settings.block_size,
            settings.evict_low_watermark,
            settings.evict_high_watermark,
        )
        record_settings(settings.cache_dir, settings_record(settings))  # for `proxyd stats`
        self.upstreams = UpstreamClients(settings, self.metrics)
        self.store_health = StoreHealth(self.metrics)
        self.inflight = InflightRegistry()
        self.extent_fills = sparse.ExtentFills()
        self.auth_cache = access.AuthDecisionCache(max_entries=100_000)
        self.limits = RequestLimits.from_settings(settings)
        self.probes: dict[tuple[str, str | None], Probe] = {}
        self.workers: Sequence[WorkerLinks] = ()
        """The worker processes' links (main process only; proxyd.workers)."""
        log_path = settings.access_log if isinstance(settings.access_log, Path) else None
        self.access_log = AccessLog(
            settings.access_log is not False, log_path, self.metrics.count_logged
        )

    async def blocking(self, func: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs) -> R:
        """Run a blocking call (diskcache, SQLite) off the event loop."""
        return await asyncio.to_thread(func, *args, **kwargs)

    @property
    def lane(self) -> sparse.Lane:
        """What the extent lane (proxyd.sparse) uses of this proxy."""
        return sparse.Lane(
            self.store,
            self.upstreams,
            self.metrics,
            self.store_health,
            self.blocking,
            self.extent_fills,
        )

    async def close(self) -> None:
        await self.inflight.close()
        await self.upstreams.close()
        await asyncio.to_thread(self.store.close)
        self.access_log.close()


STATE: web.AppKey[ProxyState] = web.AppKey("state", ProxyState)


def account(
    state: ProxyState,
    method: str,
    client: str | None,
    target: str,
    served: Served,
    status: int,
    started: float,
) -> None:
    """Count one answered request in the metrics and write its access-log line."""
    state.metrics.count_request(method, status, served.cache, served.from_cache, served.from_origin)
    if status < 400:  # the top objects are what clients got, not what they probed for
        state.metrics.count_object(target, served.from_cache + served.from_origin)
    state.access_log.request(
        client,
        method,
        target,
        status,
        served.cache,
        served.from_cache,
        served.from_origin,
        time.perf_counter() - started,
    )


async def forget_object(state: ProxyState, key: str) -> None:
    state.auth_cache.forget_object(key)
    try:
        await state.blocking(state.store.delete_object, key)
    except (OSError, sqlite3.Error) as exc:
        # The object stays stored under its old version; requests see the change through
        # the origin's validators (a new ETag is a new version) or once it is evicted.
        state.store_health.failed(StoreWriteError(f"cannot forget {key}: {exc}"))


async def put_meta(state: ProxyState, meta: ObjectMeta) -> bool:
    """Store metadata; False (and the cache reported degraded) if the cache cannot."""
    try:
        await state.blocking(state.store.put_meta, meta)
    except StoreWriteError as exc:
        state.store_health.failed(exc)
        return False
    return True
