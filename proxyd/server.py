"""The proxyd request handler: thin code that carries out what the policy decides.

Per GET/HEAD request:

1. :func:`proxyd.policy.requests.route` accepts it (reverse proxy only) or refuses it;
2. :func:`proxyd.policy.freshness.decide` says whether the stored object may be served,
   must be revalidated, or must be fetched; :mod:`proxyd.policy.access` says whether the
   origin must vouch for this client's credentials first (a conditional request with them);
3. the requested byte ranges are answered block by block: stored blocks from disk, blocks in
   flight from the coalesced fetch (:mod:`proxyd.inflight`), the rest fetched with one
   upstream range request per contiguous run, streamed to the client as they arrive.

A miss (or a revalidation) costs the origin one request: the client's own, with its
end-to-end fields, the range widened to whole blocks (none for a whole-object GET) and, to
revalidate, the stored validators (:func:`probe`). Its answer fills the cache when it may
be stored; otherwise it is relayed to that client, cut to what it asked for
(:mod:`proxyd.policy.relay`). Requests that joined it and cannot use it ask for themselves.

Unsafe methods, uncacheable responses and requests with ``no-store`` pass through
uncached; a successful unsafe request invalidates what it touched (RFC 9111 §4.4).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn, ParamSpec, TypeVar

import aiohttp
from aiohttp import web
from multidict import CIMultiDict

from butler.http.conditional import (
    evaluate_preconditions,
    if_range_allows_partial,
    parse_http_date,
)
from butler.http.ranges import (
    ByteRange,
    RangeOutcome,
    RangeSpec,
    content_range,
    make_boundary,
    multipart_content_type,
    multipart_layout,
    parse_range_header,
    parse_range_specs,
    unsatisfied_content_range,
)
from proxyd import sparse
from proxyd.accesslog import AccessLog
from proxyd.inflight import BlockRun, InflightRegistry, RunFailedError
from proxyd.metrics import Metrics
from proxyd.policy import Headers, access, blocks, extents, field_value, freshness
from proxyd.policy.extents import Extent
from proxyd.policy.keys import cache_key
from proxyd.policy.relay import RelayPlan, relay_plan
from proxyd.policy.requests import (
    HOP_BY_HOP_FIELDS,
    Refusal,
    RequestLimits,
    Route,
    forward_request_headers,
    forward_response_headers,
    route,
)
from proxyd.sendfile import FileSender
from proxyd.settings import ProxySettings
from proxyd.store import (
    BlockFile,
    BlockStore,
    ObjectMeta,
    StoreWriteError,
    record_settings,
    settings_record,
)
from proxyd.upstream import UpstreamClients, UpstreamError

if TYPE_CHECKING:
    from proxyd.workers import WorkerLink

log = logging.getLogger("proxyd")
P = ParamSpec("P")
R = TypeVar("R")

CACHE_HEADER = "X-Cache"
CHUNK = 256 * 1024
STORE_PIPELINE = 2
"""Blocks of one fill being stored at once (while the fill reads on)."""
SENDFILE_MIN = 128 * 1024
"""Stored pieces at least this long go from the block's file to the socket (sendfile)."""
Outcome = freshness.Outcome
# Stored fields a response from cache does not repeat: proxyd frames each response itself
# (length, range, Accept-Ranges, Age, its own X-Cache), and X-Request-ID names the origin's
# log line of the request that filled the cache, not this one. Every other stored field is
# replayed, unknown ones included: RFC 9111 §3.1 and §4 (a cache answers with the stored
# header fields), so new end-to-end fields work through the proxy. headers_to_store has
# already dropped hop-by-hop fields, Set-Cookie and the other per-response ones.
_NOT_REPLAYED = {
    "content-length",
    "content-range",
    "transfer-encoding",
    "accept-ranges",
    "age",
    "x-cache",
    "x-request-id",
}


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
class _Probe:
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


# Fields of a response meant for the one client whose request the origin answered. They are
# never stored (policy.freshness.headers_to_store drops them), so no other client ever gets
# them from the cache; the client whose request fetched the object still does.
_PERSONAL = ("set-cookie", "set-cookie2", "authentication-info")
# Statuses whose responses have no content (RFC 9110 §15.3.5, §15.4.5): no Content-Length.
_NO_CONTENT = frozenset({204, 304})


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
        self.probes: dict[tuple[str, str | None], _Probe] = {}
        self.workers: list[WorkerLink] = []
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


# -- entry point ------------------------------------------------------------------------------


async def handle(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    state.metrics.count_received()  # before any answer: its line is owed from now on
    started = time.perf_counter()
    served = Served()
    status = 499  # the client went away before an answer
    try:
        decision = route(
            request.method,
            request.raw_path,
            request.headers,
            state.settings.upstreams,
            state.limits,
            signing_params=state.settings.signing_params,
        )
        if isinstance(decision, Refusal):
            served.cache = "REFUSED"
            response: web.StreamResponse = _text(
                decision.status, decision.message, decision.headers
            )
        elif not decision.cacheable_method:
            served.cache = "PASS"
            response = await forward_uncached(request, state, decision, served)
        else:
            response = await serve_cacheable(request, state, decision, served)
        status = response.status
        if not response.prepared and served.cache:
            # Every answer says what the cache did, denials and refusals included.
            response.headers.setdefault(CACHE_HEADER, served.cache)
        return response
    except UpstreamError as exc:
        served.cache = "ERROR"
        status = exc.status
        return _text(exc.status, f"{exc}\n", [(CACHE_HEADER, "ERROR")])
    finally:
        account(state, request.method, request.remote, request.raw_path, served, status, started)


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


def _text(status: int, message: str, headers: Iterable[tuple[str, str]] = ()) -> web.Response:
    out: CIMultiDict[str] = CIMultiDict({"Cache-Control": "no-store"})
    for name, value in headers:
        out.add(name, value)
    return web.Response(
        status=status, text=message if message.endswith("\n") else message + "\n", headers=out
    )


@functools.lru_cache(maxsize=1024)
def replayed(stored: tuple[tuple[str, str], ...]) -> tuple[tuple[str, str], ...]:
    """The stored fields a response from cache repeats (worked out once per stored version:
    every hit of a hot object asks)."""
    kept = [(k, v) for k, v in stored if k.lower() not in _NOT_REPLAYED]
    return tuple(_headers(forward_response_headers(kept)).items())


def _headers(pairs: Iterable[tuple[str, str]], *, drop: Iterable[str] = ()) -> CIMultiDict[str]:
    dropped = {"content-length", *(d.lower() for d in drop)}
    out: CIMultiDict[str] = CIMultiDict()
    for name, value in pairs:
        if name.lower() not in dropped:
            out.add(name, value)
    return out


async def _write(response: web.StreamResponse, chunk: bytes, state: ProxyState) -> None:
    # Writes wait for the client (backpressure); a client that stops reading is dropped
    # after client_timeout instead of holding the request open for ever.
    await asyncio.wait_for(response.write(chunk), timeout=state.settings.client_timeout)


async def _send_piece(
    response: web.StreamResponse, piece: bytes | BlockFile, sender: FileSender, state: ProxyState
) -> None:
    """Send bytes in hand, or a verified stored piece straight from its file: the kernel
    copies it to the socket (sendfile, from worker threads: :mod:`proxyd.sendfile`), so hot
    downloads neither copy through Python nor hold blocks in memory. The timeout is for the
    client's progress, as for writes."""
    if isinstance(piece, bytes):
        await sender.flush()  # file pieces queued before it go first
        await _write(response, piece, state)
        return
    await sender.send(piece.fd, piece.offset, piece.length, piece.release)


# -- pass-through -----------------------------------------------------------------------------


async def forward_uncached(
    request: web.Request, state: ProxyState, target: Route, served: Served
) -> web.StreamResponse:
    """Forward the request as is and stream the answer back; nothing is stored."""
    headers = forward_request_headers(request.headers)
    body = request.content if request.body_exists else None
    async with state.upstreams.request(
        target.upstream, request.method, target.upstream_url, list(headers), data=body
    ) as upstream:
        # Invalidate before relaying the answer (RFC 9111 §4.4): a client that has seen its
        # PUT succeed and asks for the object again must not get the old one from cache.
        for url in freshness.invalidation_targets(
            request.method, upstream.status, target.upstream_url, upstream.headers
        ):
            await _forget(state, cache_key(url, state.settings.signing_params))
        return await _pass_on(request, state, target, served, upstream, None)


async def _pass_on(
    request: web.Request,
    state: ProxyState,
    target: Route,
    served: Served,
    upstream: aiohttp.ClientResponse,
    plan: RelayPlan | None,
) -> web.StreamResponse:
    """Stream an upstream answer to the client: as it is (``plan`` None), or cut back to what
    the client asked for (:func:`proxyd.policy.relay.relay_plan`)."""
    status = upstream.status if plan is None else plan.status
    drop = () if plan is None else ("content-range",)
    response = web.StreamResponse(
        status=status,
        reason=upstream.reason if status == upstream.status else None,
        headers=_headers(forward_response_headers(upstream.headers), drop=drop),
    )
    if plan is not None and plan.content_range is not None:
        response.headers["Content-Range"] = plan.content_range
    with_body = request.method != "HEAD" and (plan is None or plan.body)
    length = upstream.content_length if plan is None or plan.length is None else plan.length
    if length is not None and (with_body or plan is not None):
        response.content_length = length
    response.headers[CACHE_HEADER] = "PASS"
    await response.prepare(request)
    skip = 0 if plan is None else plan.skip
    left = None if plan is None else plan.length
    counter = state.metrics.bytes_from_origin.labels(target.upstream)
    try:
        if with_body:
            async for chunk in upstream.content.iter_chunked(CHUNK):
                served.from_origin += len(chunk)
                counter.inc(len(chunk))
                if skip:
                    cut = min(skip, len(chunk))
                    chunk, skip = chunk[cut:], skip - cut
                if left is not None:
                    chunk, left = chunk[:left], left - min(left, len(chunk))
                if chunk:
                    await _write(response, chunk, state)
                if left == 0:
                    break
        await response.write_eof()
    except (TimeoutError, ConnectionError) as exc:
        _drop_client(request, state, target, exc)
    return response


def _drop_client(
    request: web.Request, state: ProxyState, target: Route, exc: BaseException
) -> NoReturn:
    """The client did not take more of the response for client_timeout seconds (or its
    connection broke): close the connection. Handled here, it is an ordinary event with a
    log line and a metric, not a server error with a traceback."""
    kind = "client_timeout" if isinstance(exc, TimeoutError) else "client_gone"
    log.info("dropping client %s of %s: %s %r", request.remote, target.upstream_url, kind, exc)
    state.metrics.errors.labels(kind).inc()
    if request.transport is not None:
        request.transport.close()
    raise web.HTTPInternalServerError() from None


# -- cacheable requests --------------------------------------------------------------------------


async def serve_cacheable(
    request: web.Request, state: ProxyState, target: Route, served: Served
) -> web.StreamResponse:
    settings = state.settings
    now = time.time()
    creq = freshness.CacheRequest.from_headers(request.method, request.headers)
    meta = state.store.remembered_meta(target.cache_key)  # hot objects: no thread hop
    if meta is None:
        meta = await state.blocking(state.store.get_meta, target.cache_key)
    if meta is not None and not blocks.cacheable_in_blocks(
        meta.etag, meta.last_modified, meta.size or 0, settings.block_size
    ):
        # Stored before such objects were passed through: its blocks may be of two versions.
        await _forget(state, meta.key)
        meta = None
    decision = freshness.decide(creq, meta.stored if meta else None, now, settings)
    if decision.outcome is Outcome.ONLY_IF_CACHED:
        return _text(504, "not in the cache, and the request says only-if-cached")
    if not decision.store:
        served.cache = "PASS"
        return await forward_uncached(request, state, target, served)
    stale = False
    if meta is not None and decision.outcome in (Outcome.FRESH_HIT, Outcome.STALE_HIT):
        entry = state.auth_cache.get(target.credential, target.cache_key, now, settings.auth_ttl)
        verdict = access.access_decision(
            meta.stored, target.credential, entry, now, settings.auth_ttl
        )
        if verdict.access is access.Access.DENY:
            served.cache = "DENIED"
            return _text(verdict.status or 403, verdict.reason, verdict.headers)
        if verdict.access is access.Access.SERVE:
            served.cache = "HIT" if decision.outcome is Outcome.FRESH_HIT else "STALE"
            return await respond_from_blocks(request, state, target, meta, served, stale=False)
    revalidating = None
    if (
        meta is not None
        and decision.outcome is Outcome.REVALIDATE
        and target.credential is None
        and not meta.stored.requires_authorization
    ):
        # Revalidate with the client's own request plus the stored validators: one request,
        # whose answer (a 304, or the new version) serves this client (issue 22).
        revalidating, meta = (meta, creq), None
    elif meta is not None and decision.outcome is not Outcome.MISS:
        # Ask the origin to vouch for this client (credentials): a conditional request
        # with the client's own credentials.
        checked = await check_with_origin(request, state, target, meta, creq, served)
        if isinstance(checked, web.StreamResponse):
            return checked
        meta, stale = checked
    if decision.outcome is Outcome.MISS:
        # Stored, but not for this request (another variant of a Vary, or stale with no
        # validator to revalidate with): fetched anew, and the answer replaces it.
        meta = None
    fetching = None
    fresh: Extent | None = None
    personal: tuple[tuple[str, str], ...] = ()
    if meta is None and not state.store_health.may_try():
        # The cache cannot store (full, read-only): the origin answers this miss itself.
        served.cache = "PASS"
        return await forward_uncached(request, state, target, served)
    if meta is None:
        try:
            probed = await probe(request, state, target, served, revalidating)
        except UpstreamError:
            if revalidating is None:
                raise
            checked = _serve_despite_origin(state, target, revalidating[0], creq, served, None)
            if isinstance(checked, web.StreamResponse):
                return checked
            probed = Probed(checked[0], None, stale=True)
        if isinstance(probed, web.StreamResponse):
            return probed
        meta, fetching, personal = probed.meta, probed.run, probed.personal
        fresh = probed.fresh
        stale = probed.stale
        served.cache = "STALE" if stale else "REVALIDATED" if probed.revalidated else "MISS"
    try:
        return await respond_from_blocks(
            request,
            state,
            target,
            meta,
            served,
            stale=stale,
            fetching=fetching,
            extra=personal,
            fresh=fresh,
        )
    finally:
        if fetching is not None:
            fetching.release()  # the claim probe() handed to this request


async def check_with_origin(
    request: web.Request,
    state: ProxyState,
    target: Route,
    meta: ObjectMeta,
    creq: freshness.CacheRequest,
    served: Served,
) -> tuple[ObjectMeta | None, bool] | web.StreamResponse:
    """Conditional request with the client's credentials: (meta to serve, stale?) or an
    answer to relay. None as meta means the object changed: fetch it anew."""
    settings = state.settings
    headers = [*access.auth_check_headers(meta.stored, request.headers), ("Range", "bytes=0-0")]
    request_time = time.time()
    try:
        async with state.upstreams.request(
            target.upstream, "GET", target.upstream_url, headers
        ) as upstream:
            response_time = time.time()
            status = upstream.status
            upstream_headers = list(upstream.headers.items())
            body = b""
            if status in (401, 403, 404, 410) or status >= 500:
                body = await upstream.content.read(64 * 1024)
    except UpstreamError:
        return _serve_despite_origin(state, target, meta, creq, served, None)
    now = time.time()
    answer = access.interpret_auth_response(meta.stored, status, upstream_headers, now)
    if answer.entry is not None:
        state.auth_cache.put(target.credential, target.cache_key, answer.entry)
        state.metrics.auth_checks.labels("allowed" if answer.entry.allowed else "denied").inc()
    if answer.outcome is access.AuthOutcome.UNAVAILABLE:
        return _serve_despite_origin(state, target, meta, creq, served, status)
    if answer.outcome is access.AuthOutcome.DENIED:
        served.cache = "DENIED"
        return web.Response(
            status=status,
            body=body,
            headers=_headers(
                forward_response_headers(upstream_headers),
                drop=("content-range", "transfer-encoding"),
            ),
        )
    if answer.outcome is access.AuthOutcome.CHANGED:
        await _forget(state, target.cache_key)
        return None, False
    outcome = freshness.after_revalidation(
        meta.stored,
        status,
        upstream_headers,
        request=creq,
        request_time=request_time,
        response_time=response_time,
        now=now,
        settings=settings,
    )
    if outcome.outcome is Outcome.NOT_MODIFIED and outcome.updated is not None:
        meta.stored = outcome.updated
        await _put_meta(state, meta)  # if it cannot be stored, this response still uses it
    elif status == 206:
        # The same version, answered in full rather than 304: take its fresh headers.
        meta.stored = freshness.StoredMeta.from_response(
            206,
            upstream_headers,
            request_time=request_time,
            response_time=response_time,
            requires_authorization=meta.stored.requires_authorization,
            size=meta.size,
        )
        await _put_meta(state, meta)
    else:
        await _forget(state, target.cache_key)
        return None, False
    served.cache = "REVALIDATED"
    return meta, False


def _serve_despite_origin(
    state: ProxyState,
    target: Route,
    meta: ObjectMeta,
    creq: freshness.CacheRequest,
    served: Served,
    status: int | None,
) -> tuple[ObjectMeta, bool] | web.StreamResponse:
    """The origin failed: serve the stored object marked stale, if the rules allow."""
    now = time.time()
    verdict = freshness.on_origin_error(meta.stored, creq, now, state.settings, status=status)
    if verdict.outcome is not Outcome.STALE_ON_ERROR:
        raise UpstreamError(
            target.upstream, f"upstream {target.upstream!r} failed: {verdict.reason}"
        )
    grace = state.settings.stale_if_error
    entry = state.auth_cache.get(target.credential, target.cache_key, now, grace)
    permitted = access.access_without_origin(meta.stored, target.credential, entry, now, grace)
    if permitted.access is not access.Access.SERVE:
        served.cache = "DENIED"
        return _text(permitted.status or 502, permitted.reason, permitted.headers)
    served.cache = "STALE"
    state.metrics.stale_served.inc()
    return meta, True


async def _forget(state: ProxyState, key: str) -> None:
    state.auth_cache.forget_object(key)
    try:
        await state.blocking(state.store.delete_object, key)
    except (OSError, sqlite3.Error) as exc:
        # The object stays stored under its old version; requests see the change through
        # the origin's validators (a new ETag is a new version) or once it is evicted.
        state.store_health.failed(StoreWriteError(f"cannot forget {key}: {exc}"))


async def _put_meta(state: ProxyState, meta: ObjectMeta) -> bool:
    """Store metadata; False (and the cache reported degraded) if the cache cannot."""
    try:
        await state.blocking(state.store.put_meta, meta)
    except StoreWriteError as exc:
        state.store_health.failed(exc)
        return False
    return True


# -- first fetch of an object ---------------------------------------------------------------------


async def probe(
    request: web.Request,
    state: ProxyState,
    target: Route,
    served: Served,
    revalidating: tuple[ObjectMeta, freshness.CacheRequest] | None = None,
) -> Probed | web.StreamResponse:
    """Learn an object's size and validators with its first block-aligned range request;
    concurrent requests for the same object (and the same credentials) share it.

    A :class:`Probed` answer with a run comes with a claim on that run, which the caller
    must release once it no longer reads from it."""
    probe_key = (target.cache_key, target.credential)
    entry = state.probes.get(probe_key)
    originator = entry is None
    if entry is None:
        entry = _Probe(asyncio.get_running_loop().create_future(), key=probe_key)
        state.probes[probe_key] = entry
        task = asyncio.create_task(_probe_task(request, state, target, entry, revalidating))
        task.add_done_callback(lambda _: _end_probe(state, entry))
    else:
        state.inflight.coalesced += 1
        state.metrics.coalesced_waits.inc()
    future = entry.future
    # Until the answer is out, the run is created with a claim for each waiting request;
    # a request that joins later takes its own.
    counted = not future.done()
    if counted:
        entry.waiting += 1
    try:
        result = await asyncio.shield(future)
    except BaseException:
        if not future.done():
            entry.waiting -= 1
            entry.originator_gone |= originator
        elif counted and not future.cancelled() and future.exception() is None:
            answer = future.result()
            if isinstance(answer, Probed) and answer.run is not None:
                answer.run.release()
            if originator and isinstance(answer, Uncacheable) and answer.relay is not None:
                answer.relay.done.set()
        raise
    if isinstance(result, Probed) and result.run is not None and not counted:
        result.run.claim()
    if isinstance(result, Probed) and not originator and result.personal:
        # Requests that joined the probe may be other clients (anonymous ones share it):
        # the origin's cookie for the first client is not theirs.
        result = Probed(result.meta, result.run)
    if isinstance(result, Uncacheable):
        served.cache = "PASS"
        if originator and result.relay is not None:
            # The origin's answer to this very request: relay it, do not ask again.
            relay = result.relay
            try:
                if result.origin_error is not None and revalidating is not None:
                    stale = _stale_instead(state, target, revalidating, served, result.origin_error)
                    if stale is not None:
                        return stale
                plan = relay_plan(
                    request.method,
                    field_value(request.headers, "Range"),
                    relay.upstream.status,
                    relay.upstream.headers,
                    max_ranges=state.settings.max_ranges,
                )
                if plan is not None:
                    return await _pass_on(request, state, target, served, relay.upstream, plan)
            finally:
                relay.done.set()
        return await forward_uncached(request, state, target, served)
    if not originator and not freshness.vary_matches(result.meta.stored, request.headers):
        # The fetch this request joined was negotiated for another request's fields.
        if result.run is not None:
            result.run.release()
        served.cache = "PASS"
        return await forward_uncached(request, state, target, served)
    return result


def _stale_instead(
    state: ProxyState,
    target: Route,
    revalidating: tuple[ObjectMeta, freshness.CacheRequest],
    served: Served,
    status: int,
) -> Probed | web.StreamResponse | None:
    """The stored object to serve stale when the origin answered a revalidation with an
    error (or a denial to send), None when the rules say the origin's answer is relayed."""
    meta, creq = revalidating
    try:
        checked = _serve_despite_origin(state, target, meta, creq, served, status)
    except UpstreamError:
        return None
    if isinstance(checked, web.StreamResponse):
        return checked
    return Probed(checked[0], None, stale=True)


async def _probe_task(
    request: web.Request,
    state: ProxyState,
    target: Route,
    entry: _Probe,
    revalidating: tuple[ObjectMeta, freshness.CacheRequest] | None = None,
) -> None:
    settings = state.settings
    future = entry.future
    if request.method == "GET":
        range_value = field_value(request.headers, "Range")
        specs = parse_range_specs(range_value) if range_value else None
    else:
        # HEAD needs the size and validators only: ask for the first block, not the
        # first max_fetch_bytes of an object nobody is going to read.
        specs = (RangeSpec(first=0, last=0),)
    run_plan = blocks.initial_fetch(
        specs if isinstance(specs, tuple) else None, settings.block_size, settings.max_fetch_bytes
    )
    # A small first range (a header, a table's footer, a cutout's first row) is fetched
    # exactly and kept as an extent: a block around it would cost the origin far more.
    exact: Extent | None = None
    if request.method == "GET" and isinstance(specs, tuple):
        first_spec = next((spec for spec in specs if spec.first is not None), None)
        if first_spec is not None:
            exact = extents.exact_first_fetch(
                first_spec.first, first_spec.last, settings.block_size
            )
        if exact is not None:
            bs = settings.block_size
            run_plan = blocks.BlockRun(
                exact.start // bs, (exact.stop - 1) // bs, exact.start, exact.stop - 1
            )
    several_ranges = isinstance(specs, tuple) and len(specs) > 1
    # The client's own request (its end-to-end fields: content negotiation, cookies,
    # conditionals...), with the range widened to whole blocks and the identity coding,
    # which is what the blocks hold. Its answer is the client's, stored or not.
    # A revalidation replaces the client's own conditions with the stored validators.
    replaced = _REPLACED_ON_FILL | (_CONDITIONS if revalidating is not None else frozenset())
    sent = [
        *((k, v) for k, v in forward_request_headers(request.headers) if k.lower() not in replaced),
        *(revalidating[0].stored.conditional_headers() if revalidating is not None else ()),
        ("Range", run_plan.range_header),
        ("Accept-Encoding", "identity"),
    ]
    if request.method == "GET" and field_value(request.headers, "Range") is None:
        # The client wants the whole object: ask for it as the client did. A range of the
        # first max_fetch_bytes would make a longer object that may not be stored cost the
        # origin a second request for the rest; the whole answer is stored as it streams
        # (at most the read-ahead in front of the readers: see _pump).
        del sent[-2]
    retried = False
    try:
        while True:
            request_time = time.time()
            async with state.upstreams.request(
                target.upstream, "GET", target.upstream_url, sent
            ) as upstream:
                response_time = time.time()
                if revalidating is not None and await _revalidated(
                    state, target, entry, upstream, revalidating, request_time, response_time
                ):
                    return
                storable = freshness.storable(
                    "GET", target.credential is not None, upstream.status, upstream.headers
                )
                result = _fetch_result(run_plan, upstream.status, upstream.headers, storable)
                reason: str | None = None
                if isinstance(result, str):
                    reason = result
                elif result.status == 416 and not retried and several_ranges:
                    # Only the client's first range was asked for, and it starts past the
                    # end; the others may not. Ask for block 0 (the 416 gave the size but
                    # no metadata); the cache then answers the client's ranges itself.
                    retried = True
                    run_plan = blocks.initial_fetch(
                        (RangeSpec(first=0, last=0),), settings.block_size, settings.max_fetch_bytes
                    )
                    sent = [*(f for f in sent if f[0] != "Range"), ("Range", run_plan.range_header)]
                    continue
                elif result.status == 416:
                    # The client's one range starts past the end: the 416 is its answer.
                    reason = "a range past the end"
                elif not storable or result.size is None:
                    reason = "not storable in a shared cache"
                elif upstream.status not in (200, 206) and not _reusable(
                    upstream, settings, response_time
                ):
                    # A 404 with neither freshness nor a validator could never be reused.
                    reason = f"a {upstream.status} that could never be reused"
                elif not blocks.cacheable_in_blocks(
                    upstream.headers.get("ETag"),
                    upstream.headers.get("Last-Modified"),
                    result.size,
                    settings.block_size,
                ):
                    reason = "no validator to keep its blocks consistent"
                if reason is not None or isinstance(result, str) or result.size is None:
                    await _lend(entry, upstream, reason or "not storable")
                    return
                stored = freshness.StoredMeta.from_response(
                    upstream.status,
                    upstream.headers,
                    request_time=request_time,
                    response_time=response_time,
                    request_headers=sent,
                    requires_authorization=access.requires_authorization(
                        target.credential is not None, upstream.headers
                    ),
                    size=result.size,
                )
                meta = ObjectMeta(target.cache_key, target.upstream_url, stored)
                if not await _put_meta(state, meta):
                    await _lend(entry, upstream, "the cache cannot store")
                    return
                if target.credential is not None:
                    state.auth_cache.put(
                        target.credential,
                        target.cache_key,
                        access.AuthEntry.allow(stored, time.time()),
                    )
                received = result.received
                if (
                    exact is not None
                    and upstream.status == 206
                    and received is not None
                    and not extents.is_whole_blocks(
                        Extent.of(received), result.size, settings.block_size
                    )
                ):
                    fresh = await _store_first_extent(state, target, meta, upstream, received)
                    _end_probe(state, entry)
                    future.set_result(Probed(meta, None, _personal(upstream, stored), fresh=fresh))
                    return
                run = None
                if received is not None and received.end >= received.start and result.size > 0:
                    bs = settings.block_size
                    skip = 0
                    if upstream.status == 206:
                        first, last = received.start // bs, received.end // bs
                    else:
                        # 200: the origin sent the whole object; keep all of it.
                        first, last = 0, (result.size - 1) // bs
                    run = BlockRun(
                        meta.version(bs), first, last, bs, result.size, settings.readahead_bytes
                    )
                    run.claims = entry.waiting  # handed to the waiting requests with the answer
                    state.inflight.register(run)
                    skip = first * bs - received.start if upstream.status == 206 else 0
                personal = _personal(upstream, stored)
                # The answer is out and the metadata stored: from now on requests find the
                # object in the store (and its blocks in flight), not this probe. Leaving it
                # registered while its body is pumped would hand its metadata to requests made
                # after the object was invalidated, purged or found changed.
                _end_probe(state, entry)
                future.set_result(Probed(meta, run, personal))
                if run is not None:
                    await _pump(state, target, meta, upstream, run, skip=max(0, skip))
            return
    except BaseException as exc:
        if not future.done():
            future.set_exception(exc)
        if not isinstance(exc, Exception):
            raise
    finally:
        if not future.done():
            future.set_exception(UpstreamError(target.upstream, "probe ended without an answer"))
        # Mark the exception retrieved: waiters may all have gone away.
        if future.done() and not future.cancelled():
            future.exception()


def _personal(
    upstream: aiohttp.ClientResponse, stored: freshness.StoredMeta
) -> tuple[tuple[str, str], ...]:
    """Fields not stored but meant for the client whose request was sent all the same:
    cookies, and those a qualified no-cache="..." or private="..." names (RFC 9111
    §5.2.2.4, §5.2.2.7 restrict what the cache keeps, not what the origin told the client
    it answered). Framing stays proxyd's own."""
    withheld = (
        {*_PERSONAL, *stored.cache_control.no_cache_fields, *stored.cache_control.private_fields}
        - _NOT_REPLAYED
        - HOP_BY_HOP_FIELDS
    )
    return tuple((k, v) for k, v in upstream.headers.items() if k.lower() in withheld)


async def _store_first_extent(
    state: ProxyState,
    target: Route,
    meta: ObjectMeta,
    upstream: aiohttp.ClientResponse,
    received: ByteRange,
) -> Extent:
    """Keep the body of a first fetch made for a small range as an extent (at most a
    quarter of a block: read whole). If the cache cannot store it, the extent lane fetches
    it again for the request (the cache is degraded, not wrong)."""
    body = await upstream.content.readexactly(received.length)
    state.metrics.bytes_from_origin.labels(target.upstream).inc(len(body))
    if state.store_health.problem is None or state.store_health.may_try():
        try:
            await state.blocking(
                state.store.put_extents,
                meta.version(state.settings.block_size),
                [(received.start, body)],
                meta.size or 0,
            )
            state.store_health.stored()
        except StoreWriteError as exc:
            state.store_health.failed(exc)
    return Extent.of(received)


# Fields of the client's request that a first fetch sets itself (see _probe_task).
_REPLACED_ON_FILL = frozenset({"range", "accept-encoding"})
_CONDITIONS = frozenset(
    {"if-none-match", "if-modified-since", "if-match", "if-unmodified-since", "if-range"}
)


async def _revalidated(
    state: ProxyState,
    target: Route,
    entry: _Probe,
    upstream: aiohttp.ClientResponse,
    revalidating: tuple[ObjectMeta, freshness.CacheRequest],
    request_time: float,
    response_time: float,
) -> bool:
    """Settle the answer to a revalidation that is not a new response to store: a 304 (the
    stored object, freshened), an origin error (stale-if-error decides), a 304 about
    something else (the request is sent again as is). True when settled; False for a new
    response, which the caller stores as for any miss, after the old one is forgotten."""
    meta, creq = revalidating
    status = upstream.status
    if status == 304:
        outcome = freshness.after_revalidation(
            meta.stored,
            status,
            upstream.headers,
            request=creq,
            request_time=request_time,
            response_time=response_time,
            now=time.time(),
            settings=state.settings,
        )
        if outcome.outcome is Outcome.NOT_MODIFIED and outcome.updated is not None:
            fresh = ObjectMeta(meta.key, meta.url, outcome.updated, meta.pinned)
            await _put_meta(state, fresh)  # if it cannot be stored, this response still uses it
            _end_probe(state, entry)
            entry.future.set_result(Probed(fresh, None, revalidated=True))
        else:
            entry.future.set_result(Uncacheable("a 304 that does not select the stored object"))
        return True
    if status in freshness.ERROR_STATUSES:
        if entry.originator_gone:
            entry.future.set_result(Uncacheable("origin error", origin_error=status))
            return True
        relay = Relay(upstream, asyncio.Event())
        entry.future.set_result(Uncacheable("origin error", relay, origin_error=status))
        await relay.done.wait()
        return True
    await _forget(state, target.cache_key)  # a new response (stored or not) replaces it
    return False


def _reusable(
    upstream: aiohttp.ClientResponse, settings: ProxySettings, response_time: float
) -> bool:
    """Whether a response could ever answer a later request: fresh for a while, or with a
    validator to revalidate it by."""
    headers = upstream.headers
    if "ETag" in headers or "Last-Modified" in headers:
        return True
    lifetime = freshness.freshness_lifetime(
        headers, response_time, settings, status=upstream.status
    )
    return lifetime > 0


def _fetch_result(
    run_plan: blocks.BlockRun, status: int, headers: Headers, storable: bool
) -> blocks.FetchResult | str:
    """:func:`proxyd.policy.blocks.interpret_fetch_response`, and for a storable answer of
    another status (a 301, 404, 410, 500... with freshness: RFC 9111 §3 stores any final
    status the rules allow) its whole body as the object: it is answered from the cache
    with its own status, without ranges (a range applies to a 200's representation)."""
    if status in (200, 206, 416) or not storable:
        return blocks.interpret_fetch_response(run_plan, status, headers)
    if status in (204, 205):
        return blocks.FetchResult(status, 0, None)  # no content, whatever framing says
    length = field_value(headers, "Content-Length")
    if length is None or not length.strip().isdigit():
        return f"a {status} without Content-Length"
    size = int(length.strip())
    return blocks.FetchResult(status, size, ByteRange(0, size - 1) if size else None)


async def _lend(entry: _Probe, upstream: aiohttp.ClientResponse, reason: str) -> None:
    """Hand an answer that is not stored to the request it was sent for, and keep the
    upstream connection open until that request has relayed it. Requests that joined the
    fetch get the reason only: they send their own requests."""
    if entry.originator_gone:
        entry.future.set_result(Uncacheable(reason))
        return
    relay = Relay(upstream, asyncio.Event())
    entry.future.set_result(Uncacheable(reason, relay))
    await relay.done.wait()


def _end_probe(state: ProxyState, entry: _Probe) -> None:
    """Stop offering ``entry`` to new requests (only if a newer probe has not replaced it)."""
    if state.probes.get(entry.key) is entry:
        del state.probes[entry.key]


def _credential_headers(request: web.Request) -> list[tuple[str, str]]:
    """The client's credentials, which the origin needs to answer for this client."""
    return [(k, v) for k, v in request.headers.items() if k.lower() in ("authorization", "cookie")]


async def _pump(
    state: ProxyState,
    target: Route,
    meta: ObjectMeta,
    upstream: aiohttp.ClientResponse,
    run: BlockRun,
    *,
    skip: int = 0,
) -> None:
    """Feed an upstream body into a run: store each block as it completes, keep at most the
    read-ahead in front of the readers, stop when no request wants the run any more."""
    counter = state.metrics.bytes_from_origin.labels(target.upstream)
    wanted = run.end - run.start
    storing: set[asyncio.Task[None]] = set()
    try:
        while run.received < wanted:
            # Backpressure: not reading the upstream body makes the origin wait (TCP), so
            # a slow client never makes the proxy fetch (or hold) the object ahead of it.
            if not await run.wait_for_readers(state.settings.upstream_read_timeout):
                log.debug("pausing fetch of %s: readers too slow", target.upstream_url)
                run.finish(RunFailedError("readers too slow: upstream connection released"))
                return
            if run.abandoned():
                log.debug("stopping fetch of %s: no reader left", target.upstream_url)
                run.finish(RunFailedError("abandoned by its readers"))
                return
            if skip:
                size = min(CHUNK, skip)
            else:
                # Never read past the read-ahead (nor past the run: an origin that ignored
                # Range sends the rest of the object, which this run does not want).
                allowance = run.furthest + run.readahead - (run.start + run.received)
                size = max(1, min(CHUNK, wanted - run.received, allowance))
            chunk = await upstream.content.read(size)
            if not chunk:
                break  # the body ended: finish() says whether it was short
            counter.inc(len(chunk))
            if skip:
                cut = min(skip, len(chunk))
                chunk, skip = chunk[cut:], skip - cut
                if not chunk:
                    continue
            for index, data in run.feed(chunk):
                # Blocks are stored (hashed, written) in worker threads while the next ones
                # arrive: a cold read then costs about the slower of the two, not their sum.
                # A block stays in the run's memory until stored, so at most
                # STORE_PIPELINE blocks wait beyond the read-ahead.
                while len(storing) >= STORE_PIPELINE:
                    done, storing = await asyncio.wait(storing, return_when=asyncio.FIRST_COMPLETED)
                    for task in done:
                        task.result()
                storing.add(
                    asyncio.create_task(_store_block(state, run, index, data, pinned=meta.pinned))
                )
        for task in [*storing]:
            await task
        run.finish()
    except BaseException as exc:
        run.finish(exc if isinstance(exc, Exception) else RunFailedError("cancelled"))
        raise
    finally:
        if storing:
            # Stored blocks must be in the store before the run leaves the registry, or a
            # request arriving between the two would fetch them again.
            await asyncio.wait(storing)
        state.inflight.unregister(run)


async def _store_block(
    state: ProxyState, run: BlockRun, index: int, data: bytes, *, pinned: bool
) -> None:
    """Store a block that has arrived whole. If the cache cannot store it (or has lately
    failed to: then it does not try), it stays in the run's memory, and the readers of the
    run take it from there: the response is answered all the same."""
    if state.store_health.problem is not None and not state.store_health.may_try():
        return
    try:
        await state.blocking(state.store.put_block, run.version, index, data, pinned=pinned)
    except StoreWriteError as exc:
        state.store_health.failed(exc)
        return
    state.store_health.stored()
    run.mark_stored(index)


async def _fill_run(
    state: ProxyState,
    target: Route,
    meta: ObjectMeta,
    run: BlockRun,
    credentials: Sequence[tuple[str, str]],
) -> None:
    """Fetch a run of missing blocks of a known object version (refused if it changed)."""
    plan = blocks.BlockRun(run.first, run.last, run.start, run.end - 1)
    headers = [*credentials, *blocks.run_request_headers(plan, meta.etag, meta.last_modified)]
    async with state.upstreams.request(
        target.upstream, "GET", target.upstream_url, headers
    ) as upstream:
        result = blocks.interpret_fetch_response(
            plan,
            upstream.status,
            upstream.headers,
            known_size=meta.size,
            expected_etag=meta.etag,
        )
        if isinstance(result, str):
            if upstream.status in (412, 200, 206) or "changed" in result:
                await _forget(state, meta.key)
                raise VersionChangedError(f"{target.upstream_url}: {result}")
            raise RunFailedError(f"{target.upstream_url}: {result}")
        skip = run.start if upstream.status == 200 else 0
        await _pump(state, target, meta, upstream, run, skip=skip)


# -- answering from blocks ---------------------------------------------------------------------


async def respond_from_blocks(
    request: web.Request,
    state: ProxyState,
    target: Route,
    meta: ObjectMeta,
    served: Served,
    *,
    stale: bool,
    fetching: BlockRun | None = None,
    extra: Iterable[tuple[str, str]] = (),
    fresh: Extent | None = None,
) -> web.StreamResponse:
    """Answer from the blocks of ``meta``'s version. ``fetching`` is the run the first
    fetch of the object (which this request made or waited for) is filling, ``fresh`` the
    extent it stored: their bytes count as from the origin for this request. ``extra``
    fields are added to the response."""
    settings = state.settings
    size = meta.size or 0
    now = time.time()
    headers = CIMultiDict(replayed(meta.stored.headers))
    headers["Accept-Ranges"] = "bytes"
    for name, value in extra:
        headers.add(name, value)
    headers["Age"] = freshness.age_field(meta.stored.current_age(now))
    last_modified = meta.last_modified
    modified_ts = parse_http_date(last_modified) if last_modified else None
    precondition = evaluate_preconditions(
        request.method,
        request.headers,
        meta.etag,
        None if modified_ts is None else float(modified_ts),
    )
    served.cache = served.cache or "HIT"  # no fetch so far: what follows is from the cache
    # A stored 301, 404, 500... is replayed with its status; conditions and ranges apply to
    # a 200's representation only (RFC 9110 §13.2.1, §14.2).
    status = meta.stored.status
    if precondition is not None and status == 200:
        headers[CACHE_HEADER] = served.cache
        for name in ("Content-Type", "Content-Encoding", "Content-Disposition"):
            headers.popall(name, None)
        return web.Response(status=precondition, headers=headers)

    ranges: list[ByteRange] | None = None
    # Several lines of a singleton field make it invalid once joined (RFC 9110 §5.3): the
    # Range is then ignored, as butler serve does, not read from its first line.
    range_value = field_value(request.headers, "Range")
    if_range = field_value(request.headers, "If-Range")
    if (
        range_value
        and status == 200
        and request.method == "GET"
        and (
            if_range is None
            or if_range_allows_partial(
                if_range, meta.etag, None if modified_ts is None else float(modified_ts)
            )
        )
    ):
        parsed = parse_range_header(range_value, size, max_ranges=settings.max_ranges)
        if parsed.outcome in (RangeOutcome.UNSATISFIABLE, RangeOutcome.REJECTED):
            message = parsed.reason or "none of the requested ranges overlaps the object"
            return _text(416, message, [("Content-Range", unsatisfied_content_range(size))])
        if parsed.outcome is RangeOutcome.SATISFIABLE:
            ranges = list(parsed.ranges)

    content_type = meta.stored.field("Content-Type") or "application/octet-stream"
    if ranges is None:
        response = web.StreamResponse(status=status, headers=headers)
        if status not in _NO_CONTENT:
            response.content_length = size
        parts: list[tuple[bytes, ByteRange]] = [(b"", ByteRange(0, size - 1))] if size else []
        closing = b""
    elif len(ranges) == 1:
        response = web.StreamResponse(status=206, headers=headers)
        response.headers["Content-Range"] = content_range(ranges[0], size)
        response.content_length = ranges[0].length
        parts = [(b"", ranges[0])]
        closing = b""
    else:
        boundary = make_boundary()
        layout = multipart_layout(ranges, size, content_type, boundary)
        headers.popall("Content-Type", None)
        response = web.StreamResponse(status=206, headers=headers)
        response.content_type = "multipart/byteranges"
        response.headers["Content-Type"] = multipart_content_type(boundary)
        response.content_length = layout.content_length
        parts = list(layout.parts)
        closing = layout.closing

    if request.method == "HEAD":
        response.headers[CACHE_HEADER] = "STALE" if stale else served.cache
        await response.prepare(request)
        await response.write_eof()
        return response

    if fetching is None and not stale and len(parts) == 1 and not closing:
        ready = ready_piece(state, meta.version(settings.block_size), parts[0][1])
        if ready is not None:
            # The whole answer is one piece of a block in hand: send it as one response,
            # without planning fetches or streaming (what most hot small reads are).
            served.from_cache += len(ready)
            response.headers[CACHE_HEADER] = served.cache
            return web.Response(status=response.status, body=ready, headers=response.headers)

    if ranges is not None and fetching is None:
        answered = await _respond_from_extents(
            request, response, state, target, meta, served, ranges, parts, closing, fresh, stale
        )
        if answered is not None:
            return answered

    scattered = ranges is not None and len(ranges) > 1 and not stale
    if scattered and ranges is not None and await _sparse_miss(state, meta, ranges):
        served.cache = "PASS"
        return await forward_uncached(request, state, target, served)

    reader = _BlockReader(state, target, meta, request, [r for _, r in parts], fetching)
    try:
        return await _stream(
            request, response, state, target, reader, parts, closing, served, stale
        )
    finally:
        reader.close()


async def _respond_from_extents(
    request: web.Request,
    response: web.StreamResponse,
    state: ProxyState,
    target: Route,
    meta: ObjectMeta,
    served: Served,
    ranges: list[ByteRange],
    parts: list[tuple[bytes, ByteRange]],
    closing: bytes,
    fresh: Extent | None,
    stale: bool,
) -> web.StreamResponse | None:
    """Answer a ranged GET from extents (proxyd.sparse) when the blocks it lacks would cost
    the origin far more than the bytes it asks for; None to leave it to the block path."""
    bs = state.settings.block_size
    size = meta.size or 0
    version = meta.version(bs)
    wanted = extents.merged(Extent.of(r) for r in ranges)
    touched = extents.blocks_touched(wanted, bs)
    if any(state.inflight.run_for(version, i) is not None for i in touched):
        return None  # a block fetch under way brings them: join it
    lacking = [i for i in touched if not state.store.known_block(version, i)]
    requested = sum(e.length for e in wanted)
    if not extents.prefers_extents(requested, extents.block_bytes(lacking, size, bs)):
        return None
    try:
        got = await sparse.gather(
            state.lane,
            upstream=target.upstream,
            url=target.upstream_url,
            version=version,
            size=size,
            etag=meta.etag,
            last_modified=meta.last_modified,
            credentials=_credential_headers(request),
            wanted=wanted,
            may_fetch=not stale,  # the origin has just failed: only what is stored
        )
    except sparse.UnusableAnswerError as exc:
        log.info("extents of %s: %s; fetching blocks instead", target.upstream_url, exc)
        return None
    except sparse.ObjectChangedError as exc:
        # Nothing sent yet: the origin answers this request itself, and the next one
        # stores the new version.
        log.info("%s", exc)
        await _forget(state, meta.key)
        served.cache = "PASS"
        return await forward_uncached(request, state, target, served)
    total = sum(r.length for r in ranges)
    just_fetched = got.from_origin
    if fresh is not None:
        just_fetched += sum(
            max(0, min(fresh.stop, e.stop) - max(fresh.start, e.start)) for e in wanted
        )
    from_origin = min(total, just_fetched)
    served.from_origin += from_origin
    served.from_cache += total - from_origin
    if served.cache == "HIT" and from_origin:
        served.cache = "PARTIAL" if from_origin < total else "MISS"
    body = b"".join([*(head + got.slice(r.start, r.end + 1) for head, r in parts), closing])
    response.headers[CACHE_HEADER] = "STALE" if stale else served.cache
    try:
        await response.prepare(request)
        await response.write(body)
        await response.write_eof()
    except (TimeoutError, ConnectionError) as exc:
        _drop_client(request, state, target, exc)
    return response


async def _sparse_miss(state: ProxyState, meta: ObjectMeta, ranges: list[ByteRange]) -> bool:
    """Whether the blocks a multi-range request lacks would cost the origin far more than
    the bytes it asks for: then the request goes to the origin as it is (its ranges, in one
    response) and nothing is stored.

    Each missing block is fetched whole, so ``bytes=0-0,1048576-1048576,...`` (up to
    ``max_ranges`` one-byte ranges) would cost a block per byte asked for. Allowed: the
    bytes asked for twice over, plus one block (what a single small range costs). Ranges
    that cover most of their blocks are never looked at further; sparse ones touch at most
    a few blocks per range, whose presence is looked up.
    """
    bs = state.settings.block_size
    requested = sum(r.length for r in ranges)
    allowance = 2 * requested + bs
    spanned = sum(r.end // bs - r.start // bs + 1 for r in ranges)  # blocks, with repeats
    if spanned * bs <= allowance:
        return False
    if spanned > 4 * len(ranges) + 8:  # not sparse after all: long ranges, mostly covered
        return False
    touched = sorted({i for r in ranges for i in range(r.start // bs, r.end // bs + 1)})
    version = meta.version(bs)
    absent = [i for i in touched if state.inflight.run_for(version, i) is None]
    known = {i for i in absent if state.store.known_block(version, i)}
    rest = [i for i in absent if i not in known]
    stored: set[int] = set()
    if rest:
        stored = await state.blocking(state.store.has_blocks, version, rest)
    size = meta.size or 0
    missing = sum(min(bs, size - i * bs) for i in rest if i not in stored)
    return missing > allowance


def ready_piece(state: ProxyState, version: str, byte_range: ByteRange) -> bytes | None:
    """The bytes of a small range whose blocks are held in memory or verified in the page
    cache, else None (the general path then plans, fetches and streams)."""
    pieces = small_pieces(state.settings.block_size, byte_range)
    if pieces is None:
        return None
    found = quick_pieces(state.store, version, pieces)
    return found if isinstance(found, bytes) else None


def quick_pieces(
    store: BlockStore, version: str, pieces: list[tuple[int, int, int]]
) -> bytes | tuple[int, int, int]:
    """The bytes of ``pieces`` (see :func:`small_pieces`) from memory or the page cache
    (:meth:`BlockStore.quick_slice`), or the first piece found in neither."""
    parts = []
    for piece in pieces:
        part = store.quick_slice(version, *piece)
        if part is None:
            return piece
        parts.append(part)
    return parts[0] if len(parts) == 1 else b"".join(parts)


def small_pieces(block_size: int, byte_range: ByteRange) -> list[tuple[int, int, int]] | None:
    """(block, start, stop) of each block a range short enough to send from memory
    touches; None for longer ranges, which go out from the block files (sendfile)."""
    if byte_range.length >= SENDFILE_MIN:
        return None
    pieces = []
    for index in range(byte_range.start // block_size, byte_range.end // block_size + 1):
        base = index * block_size
        start = max(byte_range.start, base) - base
        stop = min(byte_range.end + 1, base + block_size) - base
        pieces.append((index, start, stop))
    return pieces


async def _stream(
    request: web.Request,
    response: web.StreamResponse,
    state: ProxyState,
    target: Route,
    reader: _BlockReader,
    parts: list[tuple[bytes, ByteRange]],
    closing: bytes,
    served: Served,
    stale: bool,
) -> web.StreamResponse:
    # ``stale``: the origin has just failed to answer. Serve what is stored; a response
    # that would need bytes from it gets a clean 502 now rather than a cut-off body later.
    await reader.start_missing(fetch=not stale)
    if stale and reader.cache_status() != "HIT":
        raise UpstreamError(
            target.upstream,
            f"upstream {target.upstream!r} is unavailable, and only part of the requested "
            "bytes are cached",
        )
    if served.cache == "HIT" and not stale:
        served.cache = reader.cache_status()
    response.headers[CACHE_HEADER] = "STALE" if stale else served.cache
    await response.prepare(request)
    sender = FileSender(request.transport, state.settings.client_timeout)
    try:
        # Every body byte goes through _send_piece, which keeps file pieces and bytes in
        # order; the last file pieces are waited for before the end of the response.
        for part_header, byte_range in parts:
            if part_header:
                await _send_piece(response, part_header, sender, state)
            async for piece in reader.bytes_of(byte_range, served):
                await _send_piece(response, piece, sender, state)
        if closing:
            await _send_piece(response, closing, sender, state)
        await sender.flush()
        await response.write_eof()
    except (VersionChangedError, RunFailedError, UpstreamError) as exc:
        # Headers are out: the only honest signal left is to cut the connection, so the
        # client sees a truncated body rather than bytes of two versions or made-up ones.
        log.warning("aborting response for %s: %s", target.upstream_url, exc)
        state.metrics.errors.labels("aborted_response").inc()
        if request.transport is not None:
            request.transport.close()
        raise web.HTTPInternalServerError() from None
    except (TimeoutError, ConnectionError) as exc:
        _drop_client(request, state, target, exc)
    finally:
        sender.close()
    return response


class _BlockReader:
    """Bytes of one object version for one response: from store, in-flight runs, or new
    fetches of the missing runs.

    Missing runs are fetched at most ``readahead_bytes`` (in response order) ahead of what
    the client has been sent, so a full GET of an object larger than ``max_fetch_bytes``
    does not open every run's upstream request at once (each would stop at its read-ahead,
    and the rest be fetched again block by block), and an abandoned download costs a
    bounded read-ahead. Every run the request uses is claimed until :meth:`close` (or,
    once finished, until the reader next tidies up).

    The response is planned a window at a time (``plan_window`` bytes past the read-ahead,
    lazily from :func:`proxyd.policy.blocks.needed_in_order`), never whole: a request for
    a 4 TiB object must not look up four million blocks on the event loop before its first
    byte, nor hold a plan of them in memory (one request would stall every other client).
    What is remembered of blocks already sent is dropped as the response moves on.
    """

    def __init__(
        self,
        state: ProxyState,
        target: Route,
        meta: ObjectMeta,
        request: web.Request,
        ranges: list[ByteRange],
        fetching: BlockRun | None = None,
    ) -> None:
        self.state = state
        self.target = target
        self.meta = meta
        self.block_size = state.settings.block_size
        self.version = meta.version(self.block_size)
        self.credentials = _credential_headers(request)
        settings = state.settings
        self.plan_window = max(settings.max_fetch_bytes, settings.readahead_bytes)
        self._to_plan = blocks.needed_in_order(ranges, self.block_size)
        self._next_needed: tuple[int, int] | None = next(self._to_plan, None)
        self.first_needed: dict[int, int] = {}
        """Where in the response each planned block is first needed (bytes sent before it);
        blocks already sent are forgotten as the response moves on (see _tidy)."""
        self.planned: list[int] = []
        """Blocks planned by :meth:`start_missing` (what the cache status is about)."""
        self.present: set[int] = set()
        """Planned blocks stored when they were planned."""
        self.ready: set[int] = set()
        """... plus those whose bytes had all arrived in a fetch still storing them."""
        self.started: list[BlockRun] = [] if fetching is None else [fetching]
        """Runs fetching for this request (not joined from another one)."""
        self.claimed: set[BlockRun] = set()
        self.pending: list[tuple[int, blocks.BlockRun]] = []
        """Missing runs not started yet: (response offset where first needed, plan)."""
        self.sent = 0
        """Body bytes handed to the response so far."""

    def _take_planned(self, upto: int) -> list[int]:
        """Blocks first needed before response offset ``upto`` not planned yet (in order)."""
        new: list[int] = []
        while self._next_needed is not None and self._next_needed[0] < upto:
            offset, index = self._next_needed
            if index not in self.first_needed:
                self.first_needed[index] = offset
                new.append(index)
            self._next_needed = next(self._to_plan, None)
        return new

    async def start_missing(self, *, fetch: bool = True) -> None:
        """Plan the first window of the response: which blocks are ready, and (``fetch``)
        start fetching the first missing runs."""
        self.planned = await self._plan(self.plan_window + self.state.settings.readahead_bytes)
        if not fetch:
            return
        await self._start_due(planned_now=True)
        if self.pending and not self.started:
            # Something to fetch and nothing under way for this request yet: start now.
            _, plan = self.pending.pop(0)
            await self._start_plan(plan, check_store=False)

    async def _plan(self, upto: int) -> list[int]:
        """Plan the blocks first needed before response offset ``upto``: note those ready,
        claim the runs fetching them, queue runs for the missing ones; returns them."""
        needed = self._take_planned(upto)
        if not needed:
            return needed
        state = self.state
        # Which blocks are being fetched is looked at before the store, and again after:
        # a fetch that ends meanwhile has stored its blocks before it unregisters them,
        # so no block can slip between the two looks and be fetched a second time.
        runs = {i: state.inflight.run_for(self.version, i) for i in needed}
        present = await self._present(needed)
        for i in needed:
            runs[i] = runs[i] or state.inflight.run_for(self.version, i)
        waiting = {i for i, run in runs.items() if run is not None}
        # Blocks the cache held when the request was planned. One whose bytes have all
        # arrived in a fetch still writing it counts: a client that has just received a
        # whole response and asks again must see a HIT. Blocks of the first fetch this
        # request made or waited for (``started``) came from the origin for it.
        complete = {i for i, run in runs.items() if run is not None and run.complete(i)}
        ours = {i for i in needed if any(run.first <= i <= run.last for run in self.started)}
        self.present |= present
        self.ready |= (present | complete) - ours
        for run in {run for run in runs.values() if run is not None}:
            self._claim(run)
        plans = blocks.missing_runs(
            [i for i in needed if i not in waiting],
            present,
            self.block_size,
            self.meta.size or 0,
            state.settings.max_fetch_bytes,
        )
        # Every block planned now is first needed after those planned before: the new
        # runs go after the pending ones.
        self.pending += sorted(
            ((min(self.first_needed[i] for i in range(p.first, p.last + 1)), p) for p in plans),
            key=lambda item: item[0],
        )
        return needed

    def _claim(self, run: BlockRun) -> None:
        if run not in self.claimed:
            run.claim()
            self.claimed.add(run)

    def close(self) -> None:
        """The response is over (sent, failed or abandoned): release every claimed run."""
        for run in self.claimed:
            run.release()
        self.claimed.clear()

    def _tidy(self) -> None:
        """Forget what a long response no longer needs: blocks already sent, and finished
        runs none of whose blocks is still to be sent (a claim only keeps a fetch going;
        and a run may hold blocks the cache could not store), so that its memory is
        bounded by the window planned, not by the bytes sent so far."""
        gone = [i for i, offset in self.first_needed.items() if offset < self.sent]
        for i in gone:
            del self.first_needed[i]
            self.present.discard(i)
            self.ready.discard(i)
        ahead = list(self.first_needed)
        if self._next_needed is not None:
            ahead.append(self._next_needed[1])  # the next window starts with it

        def done(run: BlockRun) -> bool:
            return run.finished and not any(run.first <= i <= run.last for i in ahead)

        for run in [run for run in self.claimed if done(run)]:
            run.release()
            self.claimed.discard(run)
        self.started = [run for run in self.started if not done(run)]

    async def _start_due(self, *, planned_now: bool = False) -> None:
        """Start the pending runs first needed within the read-ahead of what was sent,
        planning the next window first when the read-ahead has reached its end."""
        horizon = self.sent + self.state.settings.readahead_bytes
        if self._next_needed is not None and self._next_needed[0] <= horizon:
            self._tidy()
            await self._plan(horizon + self.plan_window)
        while self.pending and self.pending[0][0] <= horizon:
            _, plan = self.pending.pop(0)
            await self._start_plan(plan, check_store=not planned_now)

    async def _start_plan(self, plan: blocks.BlockRun, *, check_store: bool) -> None:
        """Fetch the blocks of ``plan`` that are still missing. Since the plan was made,
        other requests may have started fetching some of them (join those) or stored them
        (``check_store``)."""
        state = self.state
        indexes = range(plan.first, plan.last + 1)
        present: set[int] = set()
        fetching: set[int] = set()
        if check_store:
            # As in start_missing: in-flight blocks first, then the store.
            fetching = {i for i in indexes if state.inflight.run_for(self.version, i)}
            present = await self._present(list(indexes))
        group: list[int] = []
        for i in indexes:
            run = state.inflight.run_for(self.version, i)
            if run is None and i not in present and i not in fetching:
                group.append(i)
                continue
            if run is not None:
                self._claim(run)
            if group:
                self._start(group[0], group[-1])
                group = []
        if group:
            self._start(group[0], group[-1])

    def _start(self, first: int, last: int) -> BlockRun:
        settings = self.state.settings
        run = BlockRun(
            self.version,
            first,
            last,
            settings.block_size,
            self.meta.size or 0,
            settings.readahead_bytes,
        )
        self._claim(run)
        self.state.inflight.start(
            run, lambda r: _fill_run(self.state, self.target, self.meta, r, self.credentials)
        )
        self.started.append(run)
        return run

    async def _refetch(self, index: int, failed: BlockRun | None) -> None:
        """Fetch from block ``index`` on (not fetched yet, evicted or damaged since
        planning, or the fetch that was to bring it failed): through the following needed
        blocks that are missing too, up to ``max_fetch_bytes``, so that a long read never
        degrades to a fetch per block."""
        state = self.state
        for position, (_, plan) in enumerate(self.pending):
            if plan.first <= index <= plan.last:
                del self.pending[position]  # not due yet, but needed now
                await self._start_plan(plan, check_store=True)
                return
        per_run = max(1, state.settings.max_fetch_bytes // self.block_size)
        following = [i for i in range(index + 1, index + per_run) if i in self.first_needed]
        fetching = {i for i in following if state.inflight.run_for(self.version, i)}
        present = await self._present(list(following))
        if state.inflight.run_for(self.version, index) not in (None, failed):
            return  # another request started fetching it meanwhile
        last = index
        for i in following:
            if i != last + 1 or i in present or i in fetching:
                break
            if state.inflight.run_for(self.version, i) not in (None, failed):
                break
            if any(plan.first <= i <= plan.last for _, plan in self.pending):
                break
            last = i
        self._start(index, last)

    def cache_status(self) -> str:
        """HIT, PARTIAL or MISS for the blocks planned first (the whole response, unless it
        is longer than a planning window)."""
        if all(i in self.ready for i in self.planned):
            return "HIT"
        return "PARTIAL" if self.ready else "MISS"

    async def bytes_of(
        self, byte_range: ByteRange, served: Served
    ) -> AsyncIterator[bytes | BlockFile]:
        state = self.state
        for piece in blocks.iter_slices(byte_range, self.block_size):
            index = piece.block_index
            # Blocks ready when the request was planned count as from the cache; bytes this
            # request fetched or waited for count as from the origin, wherever they are read
            # from by now (a fetch may have stored them already).
            cached = index in self.ready
            position = piece.start
            attempts = 0
            failed: BlockRun | None = None
            while position < piece.stop:
                await self._start_due()
                run = state.inflight.run_for(self.version, index) or self._holding(index)
                if run is failed:
                    run = None
                if run is None:
                    chunk = await self._stored(index, position, piece.stop)
                    if chunk is not None:
                        length = chunk.length if isinstance(chunk, BlockFile) else len(chunk)
                        if cached:
                            served.from_cache += length
                        else:
                            served.from_origin += length
                        self.sent += length
                        yield chunk
                        break
                    attempts += 1
                    if attempts > 3:
                        raise RunFailedError(f"block {index} could not be fetched")
                    await self._refetch(index, failed)
                    cached = False
                    continue
                self._claim(run)
                # Waiting for another request's fetch is a coalesced wait.
                joined = run not in self.started and not cached
                if joined:
                    state.metrics.coalesced_waits.inc()
                try:
                    async with state.inflight.reading(run, joined):
                        async for chunk in run.read(index, position, piece.stop, self._load):
                            if cached:
                                served.from_cache += len(chunk)
                            else:
                                served.from_origin += len(chunk)
                            position += len(chunk)
                            self.sent += len(chunk)
                            yield chunk
                except RunFailedError:
                    # A fetch that failed for a reason other than a new version (the origin
                    # closed a connection that waited too long for a slow client, another
                    # request's fetch was abandoned...) is retried from where this left off.
                    attempts += 1
                    if isinstance(run.error, VersionChangedError) or attempts > 3:
                        raise
                    failed = run
                    cached = False

    def _holding(self, index: int) -> BlockRun | None:
        """A run of this request that has block ``index`` in memory because the cache
        could not store it (after the run's fetch has ended and left the registry)."""
        for run in self.claimed:
            if run.holds(index):
                return run
        return None

    async def _stored(self, index: int, start: int, stop: int) -> bytes | BlockFile | None:
        """Bytes ``start:stop`` of a stored block: from memory; a small piece read in the
        loop if its block is verified and in the page cache, else in a worker thread; a
        large piece as a file to send. None if the block is not (or no longer) stored."""
        store = self.state.store
        if stop - start < SENDFILE_MIN:
            found = store.quick_slice(self.version, index, start, stop)
            if found is None:
                found = await self.state.blocking(
                    store.read_slice, self.version, index, start, stop
                )
            return found
        data = store.memory_block(self.version, index)
        if data is not None:
            return data[start:stop]
        whole: BlockFile | bytes | None = store.quick_open(self.version, index)
        if whole is None:
            whole = await self.state.blocking(store.open_block, self.version, index)
        if isinstance(whole, BlockFile):
            return whole.part(start, stop)
        return None if whole is None else whole[start:stop]

    async def _load(self, index: int) -> bytes | None:
        data = self.state.store.memory_block(self.version, index)
        if data is None:
            data = await self.state.blocking(self.state.store.get_block, self.version, index)
        return data

    async def _present(self, indexes: list[int]) -> set[int]:
        """Stored blocks among ``indexes``; the store is asked only about those not in memory
        (a thread hop per request is most of the cost of a small hot range)."""
        store = self.state.store
        known = {i for i in indexes if store.known_block(self.version, i)}
        rest = [i for i in indexes if i not in known]
        if not rest:
            return known
        on_disk: set[int] = await self.state.blocking(store.has_blocks, self.version, rest)
        return known | on_disk
