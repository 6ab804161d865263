"""Fills: what the proxy asks the origin and how the answer enters the store.

The first fetch of an object (:func:`probe`: one upstream request, the client's own, shared
by every request for the same object), revalidation, and the runs of blocks fetched later
(:func:`fill_run`, fed by :func:`pump`); extents are the extent lane's (proxyd.sparse)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence

import aiohttp
from aiohttp import web

from butler.http.ranges import (
    ByteRange,
    RangeSpec,
    parse_range_specs,
)
from proxyd.hit import NOT_REPLAYED
from proxyd.inflight import BlockRun, RunFailedError
from proxyd.passing import CHUNK, forward_uncached, pass_on, text_response
from proxyd.policy import Headers, access, blocks, extents, field_value, freshness
from proxyd.policy.extents import Extent
from proxyd.policy.relay import relay_plan
from proxyd.policy.requests import (
    HOP_BY_HOP_FIELDS,
    Route,
    forward_request_headers,
)
from proxyd.settings import ProxySettings
from proxyd.state import (
    Probe,
    Probed,
    ProxyState,
    Relay,
    Served,
    Uncacheable,
    VersionChangedError,
    forget_object,
    put_meta,
)
from proxyd.store import (
    ObjectMeta,
    StoreWriteError,
)
from proxyd.upstream import UpstreamError

log = logging.getLogger("proxyd")


STORE_PIPELINE = 2
"""Blocks of one fill being stored at once (while the fill reads on)."""


# Fields of a response meant for the one client whose request the origin answered. They are
# never stored (policy.freshness.headers_to_store drops them), so no other client ever gets
# them from the cache; the client whose request fetched the object still does.
PERSONAL = ("set-cookie", "set-cookie2", "authentication-info")


def serve_despite_origin(
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
    if verdict.outcome is not freshness.Outcome.STALE_ON_ERROR:
        raise UpstreamError(
            target.upstream, f"upstream {target.upstream!r} failed: {verdict.reason}"
        )
    grace = state.settings.stale_if_error
    entry = state.auth_cache.get(target.credential, target.cache_key, now, grace)
    permitted = access.access_without_origin(meta.stored, target.credential, entry, now, grace)
    if permitted.access is not access.Access.SERVE:
        served.cache = "DENIED"
        return text_response(permitted.status or 502, permitted.reason, permitted.headers)
    served.cache = "STALE"
    state.metrics.stale_served.inc()
    return meta, True


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
        entry = Probe(asyncio.get_running_loop().create_future(), key=probe_key)
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
                if plan is not None or relay.body is not None:
                    # A shorter answer than asked (relay.body) is passed on as it came when
                    # it does not cover the client's range: its Content-Range says what it
                    # holds, and asking the origin again would not change its answer.
                    return await pass_on(
                        request, state, target, served, relay.upstream, plan, relay.body
                    )
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
        checked = serve_despite_origin(state, target, meta, creq, served, status)
    except UpstreamError:
        return None
    if isinstance(checked, web.StreamResponse):
        return checked
    return Probed(checked[0], None, stale=True)


async def _probe_task(
    request: web.Request,
    state: ProxyState,
    target: Route,
    entry: Probe,
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
            run_plan = blocks.RunPlan(
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
        # (at most the read-ahead in front of the readers: see pump).
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
                shorter = blocks.shorter_answer(run_plan, upstream.status, upstream.headers)
                validated = extents.combinable(
                    upstream.headers.get("ETag"), upstream.headers.get("Last-Modified")
                )
                if (
                    isinstance(result, blocks.FetchProblem)
                    and validated
                    and shorter is not None
                    and shorter.received is not None
                    and shorter.size is not None
                    and shorter.received.length <= settings.block_size
                    and not extents.is_whole_blocks(
                        Extent.of(shorter.received), shorter.size, settings.block_size
                    )
                ):
                    # The origin sent less than the block asked for (a partial response
                    # of its own): kept as an extent, and passed on as it came.
                    result = shorter
                else:
                    shorter = None
                reason: str | None = None
                if isinstance(result, blocks.FetchProblem):
                    reason = result.reason
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
                elif (
                    exact is not None
                    and not validated
                    and upstream.status == 206
                    and result.received is not None
                    and not extents.is_whole_blocks(
                        Extent.of(result.received), result.size, settings.block_size
                    )
                ):
                    # Its other pieces, fetched later, could be of another version.
                    reason = "no validator to keep its extents consistent"
                if (
                    reason is not None
                    or isinstance(result, blocks.FetchProblem)
                    or result.size is None
                ):
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
                if not await put_meta(state, meta):
                    await _lend(entry, upstream, "the cache cannot store")
                    return
                if target.credential is not None:
                    state.auth_cache.put(
                        target.credential,
                        target.cache_key,
                        access.AuthEntry.allow(stored, time.time()),
                    )
                received = result.received
                if shorter is not None and received is not None:
                    _, body = await _store_first_extent(state, target, meta, upstream, received)
                    _end_probe(state, entry)
                    relay = Relay(upstream, asyncio.Event(), body)
                    future.set_result(Uncacheable("a shorter answer than asked", relay))
                    await relay.done.wait()
                    return
                if (
                    exact is not None
                    and upstream.status == 206
                    and received is not None
                    and not extents.is_whole_blocks(
                        Extent.of(received), result.size, settings.block_size
                    )
                ):
                    fresh, _ = await _store_first_extent(state, target, meta, upstream, received)
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
                    await pump(state, target, meta, upstream, run, skip=max(0, skip))
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
        {*PERSONAL, *stored.cache_control.no_cache_fields, *stored.cache_control.private_fields}
        - NOT_REPLAYED
        - HOP_BY_HOP_FIELDS
    )
    return tuple((k, v) for k, v in upstream.headers.items() if k.lower() in withheld)


async def _store_first_extent(
    state: ProxyState,
    target: Route,
    meta: ObjectMeta,
    upstream: aiohttp.ClientResponse,
    received: ByteRange,
) -> tuple[Extent, bytes]:
    """Keep the body of a first fetch made for a small range as an extent (at most a
    block: read whole); returns the extent and its bytes. If the cache cannot store it,
    the extent lane fetches it again when asked (the cache is degraded, not wrong)."""
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
    return Extent.of(received), body


# Fields of the client's request that a first fetch sets itself (see _probe_task).
_REPLACED_ON_FILL = frozenset({"range", "accept-encoding"})


_CONDITIONS = frozenset(
    {"if-none-match", "if-modified-since", "if-match", "if-unmodified-since", "if-range"}
)


async def _revalidated(
    state: ProxyState,
    target: Route,
    entry: Probe,
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
        if outcome.outcome is freshness.Outcome.NOT_MODIFIED and outcome.updated is not None:
            fresh = ObjectMeta(meta.key, meta.url, outcome.updated, meta.pinned)
            await put_meta(state, fresh)  # if it cannot be stored, this response still uses it
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
    await forget_object(state, target.cache_key)  # a new response (stored or not) replaces it
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
    run_plan: blocks.RunPlan, status: int, headers: Headers, storable: bool
) -> blocks.FetchResult | blocks.FetchProblem:
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
        return blocks.FetchProblem(f"a {status} without Content-Length")
    size = int(length.strip())
    return blocks.FetchResult(status, size, ByteRange(0, size - 1) if size else None)


async def _lend(entry: Probe, upstream: aiohttp.ClientResponse, reason: str) -> None:
    """Hand an answer that is not stored to the request it was sent for, and keep the
    upstream connection open until that request has relayed it. Requests that joined the
    fetch get the reason only: they send their own requests."""
    if entry.originator_gone:
        entry.future.set_result(Uncacheable(reason))
        return
    relay = Relay(upstream, asyncio.Event())
    entry.future.set_result(Uncacheable(reason, relay))
    await relay.done.wait()


def _end_probe(state: ProxyState, entry: Probe) -> None:
    """Stop offering ``entry`` to new requests (only if a newer probe has not replaced it)."""
    if state.probes.get(entry.key) is entry:
        del state.probes[entry.key]


async def pump(
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


async def fill_run(
    state: ProxyState,
    target: Route,
    meta: ObjectMeta,
    run: BlockRun,
    credentials: Sequence[tuple[str, str]],
) -> None:
    """Fetch a run of missing blocks of a known object version (refused if it changed).
    A stored extent at the start of the run's first block (a partial response stored
    earlier) is not asked for again: the run starts with it, the origin sends the rest."""
    prefix = b""
    if extents.combinable(meta.etag, meta.last_modified):
        prefix = await state.blocking(state.store.in_thread.block_prefix, run.version, run.first)
    if not 0 < len(prefix) < run.end - run.start:
        prefix = b""
    plan = blocks.RunPlan(run.first, run.last, run.start + len(prefix), run.end - 1)
    headers = [*credentials, *blocks.run_request_headers(plan, meta.etag, meta.last_modified)]
    if prefix and plan.byte_end == (meta.size or 0) - 1:
        # Completing a stored partial response: the rest of the object, asked open-ended.
        headers = [(k, f"bytes={plan.byte_start}-" if k == "Range" else v) for k, v in headers]
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
        if isinstance(result, blocks.FetchProblem):
            # A 412, or a 200/206 that is not the bytes of the stored version: the object
            # changed (a precondition failed, or another size or ETag came back).
            if upstream.status in (412, 200, 206) or result.changed:
                await forget_object(state, meta.key)
                raise VersionChangedError(f"{target.upstream_url}: {result.reason}")
            raise RunFailedError(f"{target.upstream_url}: {result.reason}")
        skip = plan.byte_start if upstream.status == 200 else 0
        if prefix:
            run.feed(prefix)  # less than a block: completes none
        await pump(state, target, meta, upstream, run, skip=skip)
