"""The proxyd request handler: thin code that carries out what the policy decides.

Per GET/HEAD request:

1. :func:`proxyd.policy.requests.route` accepts it (reverse proxy only) or refuses it;
2. :func:`proxyd.policy.freshness.decide` says whether the stored object may be served,
   must be revalidated, or must be fetched; :mod:`proxyd.policy.access` says whether the
   origin must vouch for this client's credentials first (a conditional request with them);
3. a miss or a revalidation is one upstream request, the client's own
   (:func:`proxyd.fills.probe`); its answer fills the cache when it may be stored, else it
   is relayed to that client, cut to what it asked for (:mod:`proxyd.policy.relay`);
4. the response is read from the stored version (:func:`proxyd.reading.respond_from_blocks`),
   laid out by :mod:`proxyd.hit` as the fast lane's answers are: blocks from disk or from
   the fills in flight, small and scattered ranges from extents.

Unsafe methods, uncacheable responses and requests with ``no-store`` pass through
uncached (:mod:`proxyd.passing`); a successful unsafe request invalidates what it touched
(RFC 9111 §4.4). What requests share lives in :mod:`proxyd.state`.
"""

from __future__ import annotations

import logging
import time

from aiohttp import web

from proxyd.fills import probe, serve_despite_origin
from proxyd.passing import forward_uncached, text_response
from proxyd.policy import access, blocks, freshness
from proxyd.policy.clients import client_address
from proxyd.policy.extents import Extent
from proxyd.policy.requests import (
    Refusal,
    Route,
    forward_response_headers,
    headers_of,
    route,
)
from proxyd.reading import respond_from_blocks
from proxyd.state import (
    CACHE_HEADER,
    STATE,
    Probed,
    ProxyState,
    Served,
    account,
    forget_object,
    put_meta,
)
from proxyd.store import ObjectMeta
from proxyd.upstream import UpstreamError

log = logging.getLogger("proxyd")

Outcome = freshness.Outcome


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
            via_name=state.settings.via_name,
        )
        if isinstance(decision, Refusal):
            served.cache = "REFUSED"
            response: web.StreamResponse = text_response(
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
        return text_response(exc.status, f"{exc}\n", [(CACHE_HEADER, "ERROR")])
    finally:
        client = client_address(request.remote, request.headers, state.settings.trusted_proxies)
        account(state, request.method, client, request.raw_path, served, status, started)


# -- pass-through -----------------------------------------------------------------------------


# -- cacheable requests --------------------------------------------------------------------------


async def serve_cacheable(
    request: web.Request, state: ProxyState, target: Route, served: Served
) -> web.StreamResponse:
    settings = state.settings
    now = time.time()
    creq = freshness.CacheRequest.from_headers(request.method, request.headers)
    meta = state.store.on_loop.remembered_meta(target.cache_key)  # hot objects: no thread hop
    if meta is None:
        meta = await state.blocking(state.store.in_thread.get_meta, target.cache_key)
    if meta is not None and not blocks.cacheable_in_blocks(
        meta.etag, meta.last_modified, meta.size or 0, settings.block_size
    ):
        # Stored before such objects were passed through: its blocks may be of two versions.
        await forget_object(state, meta.key)
        meta = None
    decision = freshness.decide(creq, meta.stored if meta else None, now, settings)
    if decision.outcome is Outcome.ONLY_IF_CACHED:
        return text_response(504, "not in the cache, and the request says only-if-cached")
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
            return text_response(verdict.status or 403, verdict.reason, verdict.headers)
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
            checked = serve_despite_origin(state, target, revalidating[0], creq, served, None)
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
        return serve_despite_origin(state, target, meta, creq, served, None)
    now = time.time()
    answer = access.interpret_auth_response(meta.stored, status, upstream_headers, now)
    if answer.entry is not None:
        state.auth_cache.put(target.credential, target.cache_key, answer.entry)
        state.metrics.auth_checks.labels("allowed" if answer.entry.allowed else "denied").inc()
    if answer.outcome is access.AuthOutcome.UNAVAILABLE:
        return serve_despite_origin(state, target, meta, creq, served, status)
    if answer.outcome is access.AuthOutcome.DENIED:
        served.cache = "DENIED"
        return web.Response(
            status=status,
            body=body,
            headers=headers_of(
                forward_response_headers(upstream_headers),
                drop=("content-range", "transfer-encoding"),
            ),
        )
    if answer.outcome is access.AuthOutcome.CHANGED:
        await forget_object(state, target.cache_key)
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
        await put_meta(state, meta)  # if it cannot be stored, this response still uses it
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
        await put_meta(state, meta)
    else:
        await forget_object(state, target.cache_key)
        return None, False
    served.cache = "REVALIDATED"
    return meta, False


# -- first fetch of an object ---------------------------------------------------------------------


# -- answering from blocks ---------------------------------------------------------------------
