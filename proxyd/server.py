"""The proxyd request handler: thin code that carries out what the policy decides.

Per GET/HEAD request:

1. :func:`proxyd.policy.requests.route` accepts it (reverse proxy only) or refuses it;
2. :func:`proxyd.policy.freshness.decide` says whether the stored object may be served,
   must be revalidated, or must be fetched; :mod:`proxyd.policy.access` says whether the
   origin must vouch for this client's credentials first (a conditional request with them);
3. the requested byte ranges are answered block by block: stored blocks from disk, blocks in
   flight from the coalesced fetch (:mod:`proxyd.inflight`), the rest fetched with one
   upstream range request per contiguous run, streamed to the client as they arrive.

Unsafe methods, uncacheable responses and requests with ``no-store`` pass through
uncached; a successful unsafe request invalidates what it touched (RFC 9111 §4.4).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

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
    content_range,
    make_boundary,
    multipart_content_type,
    multipart_layout,
    parse_range_header,
    parse_range_specs,
    unsatisfied_content_range,
)
from proxyd.inflight import BlockRun, InflightRegistry, RunFailedError
from proxyd.metrics import Metrics
from proxyd.policy import access, blocks, freshness
from proxyd.policy.keys import cache_key
from proxyd.policy.requests import (
    Refusal,
    RequestLimits,
    Route,
    forward_request_headers,
    forward_response_headers,
    route,
)
from proxyd.settings import ProxySettings
from proxyd.store import BlockStore, ObjectMeta
from proxyd.upstream import UpstreamClients, UpstreamError

log = logging.getLogger("proxyd")
access_log = logging.getLogger("proxyd.access")
CACHE_HEADER = "X-Cache"
CHUNK = 256 * 1024
Outcome = freshness.Outcome
# Fields describing the stored representation that a response from cache repeats.
_REPLAYED = {
    "content-type",
    "content-encoding",
    "content-language",
    "content-disposition",
    "etag",
    "last-modified",
    "cache-control",
    "expires",
    "vary",
    "link",
    "x-dataset-id",
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
class Uncacheable:
    reason: str


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
        self.upstreams = UpstreamClients(settings, self.metrics)
        self.inflight = InflightRegistry()
        self.auth_cache = access.AuthDecisionCache(max_entries=100_000)
        self.limits = RequestLimits.from_settings(settings)
        self.probes: dict[tuple[str, str | None], asyncio.Future[ObjectMeta | Uncacheable]] = {}

    async def blocking(self, func: Any, *args: Any, **kwargs: Any) -> Any:
        """Run a blocking call (diskcache, SQLite) off the event loop."""
        return await asyncio.to_thread(func, *args, **kwargs)

    async def close(self) -> None:
        await self.inflight.close()
        await self.upstreams.close()
        await asyncio.to_thread(self.store.close)


STATE: web.AppKey[ProxyState] = web.AppKey("state", ProxyState)


# -- entry point ------------------------------------------------------------------------------


async def handle(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
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
        return response
    except UpstreamError as exc:
        served.cache = "ERROR"
        status = exc.status
        return _text(exc.status, f"{exc}\n")
    finally:
        _account(state, request, served, status, started)


def _account(
    state: ProxyState, request: web.Request, served: Served, status: int, started: float
) -> None:
    metrics = state.metrics
    metrics.requests.labels(request.method, str(status), served.cache).inc()
    metrics.bytes_from_cache.inc(served.from_cache)
    metrics.bytes_to_clients.inc(served.from_cache + served.from_origin)
    if served.cache in ("HIT", "STALE", "REVALIDATED"):
        metrics.hits.inc()
    elif served.cache == "MISS":
        metrics.misses.inc()
    elif served.cache == "PARTIAL":
        metrics.partial_hits.inc()
    if state.settings.access_log:
        access_log.info(
            json.dumps(
                {
                    "client": request.remote,
                    "method": request.method,
                    "target": request.raw_path[:500],
                    "status": status,
                    "cache": served.cache,
                    "bytes_from_cache": served.from_cache,
                    "bytes_from_origin": served.from_origin,
                    "seconds": round(time.perf_counter() - started, 4),
                },
                separators=(",", ":"),
            )
        )


def _text(status: int, message: str, headers: Iterable[tuple[str, str]] = ()) -> web.Response:
    out: CIMultiDict[str] = CIMultiDict({"Cache-Control": "no-store"})
    for name, value in headers:
        out.add(name, value)
    return web.Response(
        status=status, text=message if message.endswith("\n") else message + "\n", headers=out
    )


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
        response = web.StreamResponse(
            status=upstream.status,
            reason=upstream.reason,
            headers=_headers(forward_response_headers(upstream.headers)),
        )
        if upstream.content_length is not None and request.method != "HEAD":
            response.content_length = upstream.content_length
        response.headers[CACHE_HEADER] = "PASS"
        await response.prepare(request)
        if request.method != "HEAD":
            async for chunk in upstream.content.iter_chunked(CHUNK):
                served.from_origin += len(chunk)
                state.metrics.bytes_from_origin.labels(target.upstream).inc(len(chunk))
                await _write(response, chunk, state)
        await response.write_eof()
        for url in freshness.invalidation_targets(
            request.method, upstream.status, target.upstream_url, upstream.headers
        ):
            key = cache_key(url, state.settings.signing_params)
            await state.blocking(state.store.delete_object, key)
            state.auth_cache.forget_object(key)
    return response


# -- cacheable requests --------------------------------------------------------------------------


async def serve_cacheable(
    request: web.Request, state: ProxyState, target: Route, served: Served
) -> web.StreamResponse:
    settings = state.settings
    now = time.time()
    creq = freshness.CacheRequest.from_headers(request.method, request.headers)
    meta: ObjectMeta | None = await state.blocking(state.store.get_meta, target.cache_key)
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
    if meta is not None and decision.outcome is not Outcome.MISS:
        # Revalidate (stale, no-cache...) or ask the origin to vouch for this client: the
        # same conditional request, sent with the client's own credentials.
        checked = await check_with_origin(request, state, target, meta, creq, served)
        if isinstance(checked, web.StreamResponse):
            return checked
        meta, stale = checked
    if meta is None:
        probed = await probe(request, state, target, served)
        if isinstance(probed, web.StreamResponse):
            return probed
        meta = probed
        served.cache = "MISS"
    return await respond_from_blocks(request, state, target, meta, served, stale=stale)


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
        await state.blocking(state.store.put_meta, meta)
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
        await state.blocking(state.store.put_meta, meta)
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
    await state.blocking(state.store.delete_object, key)
    state.auth_cache.forget_object(key)


# -- first fetch of an object ---------------------------------------------------------------------


async def probe(
    request: web.Request, state: ProxyState, target: Route, served: Served
) -> ObjectMeta | web.StreamResponse:
    """Learn an object's size and validators with its first block-aligned range request;
    concurrent requests for the same object (and the same credentials) share it."""
    probe_key = (target.cache_key, target.credential)
    future = state.probes.get(probe_key)
    if future is None:
        future = asyncio.get_running_loop().create_future()
        state.probes[probe_key] = future
        task = asyncio.create_task(_probe_task(request, state, target, future))
        task.add_done_callback(lambda _: state.probes.pop(probe_key, None))
    else:
        state.inflight.coalesced += 1
        state.metrics.coalesced_waits.inc()
    result = await asyncio.shield(future)
    if isinstance(result, Uncacheable):
        served.cache = "PASS"
        return await forward_uncached(request, state, target, served)
    return result


async def _probe_task(
    request: web.Request,
    state: ProxyState,
    target: Route,
    future: asyncio.Future[ObjectMeta | Uncacheable],
) -> None:
    settings = state.settings
    range_value = request.headers.get("Range") if request.method == "GET" else None
    specs = parse_range_specs(range_value) if range_value else None
    run_plan = blocks.initial_fetch(
        specs if isinstance(specs, tuple) else None, settings.block_size, settings.max_fetch_bytes
    )
    sent = [
        *_credential_headers(request),
        ("Range", run_plan.range_header),
        ("Accept-Encoding", "identity"),
    ]
    request_time = time.time()
    try:
        async with state.upstreams.request(
            target.upstream, "GET", target.upstream_url, sent
        ) as upstream:
            response_time = time.time()
            result = blocks.interpret_fetch_response(run_plan, upstream.status, upstream.headers)
            storable = freshness.storable(
                "GET", target.credential is not None, upstream.status, upstream.headers
            )
            if isinstance(result, str) or not storable or result.size is None:
                reason = result if isinstance(result, str) else "not storable in a shared cache"
                future.set_result(Uncacheable(reason))
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
            await state.blocking(state.store.put_meta, meta)
            if target.credential is not None:
                state.auth_cache.put(
                    target.credential, target.cache_key, access.AuthEntry.allow(stored, time.time())
                )
            received = result.received
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
                state.inflight.register(run)
                skip = first * bs - received.start if upstream.status == 206 else 0
            future.set_result(meta)
            if run is not None:
                await _pump(state, target, meta, upstream, run, skip=max(0, skip))
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
    """Feed an upstream body into a run: store each block as it completes, stop when the
    readers have gone and the read-ahead is spent."""
    counter = state.metrics.bytes_from_origin.labels(target.upstream)
    try:
        async for chunk in upstream.content.iter_chunked(CHUNK):
            counter.inc(len(chunk))
            if skip:
                cut = min(skip, len(chunk))
                chunk, skip = chunk[cut:], skip - cut
                if not chunk:
                    continue
            for index, data in run.feed(chunk):
                await state.blocking(
                    state.store.put_block, run.version, index, data, pinned=meta.pinned
                )
                run.mark_stored(index)
            if run.abandoned():
                log.debug("stopping fetch of %s: no reader left", target.upstream_url)
                run.finish(RunFailedError("abandoned by its readers"))
                return
        run.finish()
    except BaseException as exc:
        run.finish(exc if isinstance(exc, Exception) else RunFailedError("cancelled"))
        raise
    finally:
        state.inflight.unregister(run)


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
) -> web.StreamResponse:
    settings = state.settings
    size = meta.size or 0
    now = time.time()
    headers = _headers((k, v) for k, v in meta.stored.headers if k.lower() in _REPLAYED)
    headers["Accept-Ranges"] = "bytes"
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
    if precondition is not None:
        headers[CACHE_HEADER] = served.cache
        for name in ("Content-Type", "Content-Encoding", "Content-Disposition"):
            headers.popall(name, None)
        return web.Response(status=precondition, headers=headers)

    ranges: list[ByteRange] | None = None
    range_value = request.headers.get("Range")
    if_range = request.headers.get("If-Range")
    if (
        range_value
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
        response = web.StreamResponse(status=200, headers=headers)
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

    needed = blocks.blocks_for([r for _, r in parts], size, settings.block_size) if size else []
    reader = _BlockReader(state, target, meta, request, needed)
    await reader.start_missing()
    if served.cache == "HIT" and not stale:
        served.cache = reader.cache_status()
    response.headers[CACHE_HEADER] = "STALE" if stale else served.cache
    await response.prepare(request)
    try:
        for part_header, byte_range in parts:
            if part_header:
                await _write(response, part_header, state)
            async for chunk in reader.bytes_of(byte_range, served):
                await _write(response, chunk, state)
        if closing:
            await _write(response, closing, state)
        await response.write_eof()
    except (VersionChangedError, RunFailedError, UpstreamError) as exc:
        # Headers are out: the only honest signal left is to cut the connection, so the
        # client sees a truncated body rather than bytes of two versions or made-up ones.
        log.warning("aborting response for %s: %s", target.upstream_url, exc)
        state.metrics.errors.labels("aborted_response").inc()
        if request.transport is not None:
            request.transport.close()
        raise web.HTTPInternalServerError() from None
    return response


class _BlockReader:
    """Bytes of one object version for one response: from store, in-flight runs, or new
    fetches started for the missing runs."""

    def __init__(
        self,
        state: ProxyState,
        target: Route,
        meta: ObjectMeta,
        request: web.Request,
        needed: list[int],
    ) -> None:
        self.state = state
        self.target = target
        self.meta = meta
        self.version = meta.version(state.settings.block_size)
        self.needed = needed
        self.credentials = _credential_headers(request)
        self.present: set[int] = set()
        self.started: list[BlockRun] = []

    async def start_missing(self) -> None:
        state = self.state
        self.present = await state.blocking(state.store.has_blocks, self.version, self.needed)
        waiting = {i for i in self.needed if state.inflight.run_for(self.version, i)}
        for plan in blocks.missing_runs(
            [i for i in self.needed if i not in waiting],
            self.present,
            state.settings.block_size,
            self.meta.size or 0,
            state.settings.max_fetch_bytes,
        ):
            self._start(plan.first, plan.last)

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
        self.state.inflight.start(
            run, lambda r: _fill_run(self.state, self.target, self.meta, r, self.credentials)
        )
        self.started.append(run)
        return run

    def cache_status(self) -> str:
        if not self.needed or len(self.present) == len(set(self.needed)):
            return "HIT"
        return "PARTIAL" if self.present else "MISS"

    async def bytes_of(self, byte_range: ByteRange, served: Served) -> AsyncIterator[bytes]:
        state = self.state
        for piece in blocks.slice_plan(byte_range, state.settings.block_size):
            index = piece.block_index
            run = state.inflight.run_for(self.version, index)
            if run is None:
                data = await state.blocking(state.store.get_block, self.version, index)
                if data is not None:
                    served.from_cache += piece.stop - piece.start
                    yield data[piece.start : piece.stop]
                    continue
                run = self._start(index, index)  # evicted or damaged since planning
            joined = run not in self.started
            if joined:
                state.metrics.coalesced_waits.inc()
            async with state.inflight.reading(run, joined):
                async for chunk in run.read(index, piece.start, piece.stop, self._load):
                    served.from_origin += len(chunk)
                    yield chunk

    async def _load(self, index: int) -> bytes | None:
        data: bytes | None = await self.state.blocking(
            self.state.store.get_block, self.version, index
        )
        return data
