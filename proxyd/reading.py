"""Reading a stored object for one response: conditions and ranges, then the bytes from
blocks (:class:`BlockReader`: store, fills in flight, new fills) or from extents
(:func:`respond_from_extents`), sent in order by sendfile or from memory."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Iterable

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
    parse_range_header,
    unsatisfied_content_range,
)
from proxyd import sparse
from proxyd.fills import fill_run
from proxyd.hit import SENDFILE_MIN, layout, small_body, stored_answer
from proxyd.inflight import BlockRun, RunFailedError
from proxyd.passing import (
    credential_headers,
    cut_response,
    drop_client,
    forward_uncached,
    send_piece,
    text_response,
)
from proxyd.policy import blocks, extents, field_value
from proxyd.policy.extents import Extent
from proxyd.policy.requests import Route
from proxyd.sendfile import FileSender
from proxyd.state import CACHE_HEADER, ProxyState, Served, VersionChangedError, forget_object
from proxyd.store import BlockFile, ObjectMeta
from proxyd.upstream import UpstreamError

log = logging.getLogger("proxyd")


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
    answer = stored_answer(meta.stored)
    headers = CIMultiDict(answer.fields)
    for name, value in extra:
        headers.add(name, value)
    headers["Age"] = answer.age(now)
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
    status = answer.status
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
            return text_response(416, message, [("Content-Range", unsatisfied_content_range(size))])
        if parsed.outcome is RangeOutcome.SATISFIABLE:
            ranges = list(parsed.ranges)

    framing = layout(answer, size, ranges)
    for name, value in framing.fields:
        headers[name] = value
    response = web.StreamResponse(status=framing.status, headers=headers)
    if framing.length is not None:
        response.content_length = framing.length
    parts = list(framing.parts)
    closing = framing.closing

    if request.method == "HEAD":
        response.headers[CACHE_HEADER] = "STALE" if stale else served.cache
        await response.prepare(request)
        await response.write_eof()
        return response

    if fetching is None and not stale and len(parts) == 1 and not closing:
        ready = small_body(
            state.store, meta.version(settings.block_size), settings.block_size, parts[0][1]
        )
        if isinstance(ready, bytes):
            # The whole answer is one piece of a block in hand: send it as one response,
            # without planning fetches or streaming (what most hot small reads are).
            served.from_cache += len(ready)
            response.headers[CACHE_HEADER] = served.cache
            return web.Response(status=response.status, body=ready, headers=response.headers)

    if ranges is not None and fetching is None:
        answered = await respond_from_extents(
            request, response, state, target, meta, served, ranges, parts, closing, fresh, stale
        )
        if answered is not None:
            return answered

    scattered = ranges is not None and len(ranges) > 1 and not stale
    if scattered and ranges is not None and await _sparse_miss(state, meta, ranges):
        served.cache = "PASS"
        return await forward_uncached(request, state, target, served)

    reader = BlockReader(state, target, meta, request, [r for _, r in parts], fetching)
    try:
        return await _stream(
            request, response, state, target, reader, parts, closing, served, stale
        )
    finally:
        reader.close()


async def respond_from_extents(
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
    if not extents.combinable(meta.etag, meta.last_modified):
        return None  # cached only whole, from one fetch
    bs = state.settings.block_size
    size = meta.size or 0
    version = meta.version(bs)
    wanted = extents.merged(Extent.of(r) for r in ranges)
    touched = extents.blocks_touched(wanted, bs)
    if any(state.inflight.run_for(version, i) is not None for i in touched):
        return None  # a block fetch under way brings them: join it
    lacking = [i for i in touched if not state.store.on_loop.known_block(version, i)]
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
            credentials=credential_headers(request),
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
        await forget_object(state, meta.key)
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
        drop_client(request, state, target, exc)
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
    known = {i for i in absent if state.store.on_loop.known_block(version, i)}
    rest = [i for i in absent if i not in known]
    stored: set[int] = set()
    if rest:
        stored = await state.blocking(state.store.in_thread.has_blocks, version, rest)
    size = meta.size or 0
    missing = sum(min(bs, size - i * bs) for i in rest if i not in stored)
    return missing > allowance


async def _stream(
    request: web.Request,
    response: web.StreamResponse,
    state: ProxyState,
    target: Route,
    reader: BlockReader,
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
        # Every body byte goes through send_piece, which keeps file pieces and bytes in
        # order; the last file pieces are waited for before the end of the response.
        for part_header, byte_range in parts:
            if part_header:
                await send_piece(response, part_header, sender, state)
            async for piece in reader.bytes_of(byte_range, served):
                await send_piece(response, piece, sender, state)
        if closing:
            await send_piece(response, closing, sender, state)
        await sender.flush()
        await response.write_eof()
    except (VersionChangedError, RunFailedError, UpstreamError) as exc:
        cut_response(request, state, target, exc)
        raise web.HTTPInternalServerError() from None
    except (TimeoutError, ConnectionError) as exc:
        drop_client(request, state, target, exc)
    finally:
        sender.close()
    return response


class BlockReader:
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
        self.credentials = credential_headers(request)
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
        self.pending: list[tuple[int, blocks.RunPlan]] = []
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

    async def _start_plan(self, plan: blocks.RunPlan, *, check_store: bool) -> None:
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
            run, lambda r: fill_run(self.state, self.target, self.meta, r, self.credentials)
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
            found = store.on_loop.quick_slice(self.version, index, start, stop)
            if found is None:
                found = await self.state.blocking(
                    store.in_thread.read_slice, self.version, index, start, stop
                )
            return found
        data = store.on_loop.memory_block(self.version, index)
        if data is not None:
            return data[start:stop]
        whole: BlockFile | bytes | None = store.on_loop.quick_open(self.version, index)
        if whole is None:
            whole = await self.state.blocking(store.in_thread.open_block, self.version, index)
        if isinstance(whole, BlockFile):
            return whole.part(start, stop)
        return None if whole is None else whole[start:stop]

    async def _load(self, index: int) -> bytes | None:
        data = self.state.store.on_loop.memory_block(self.version, index)
        if data is None:
            data = await self.state.blocking(
                self.state.store.in_thread.get_block, self.version, index
            )
        return data

    async def _present(self, indexes: list[int]) -> set[int]:
        """Stored blocks among ``indexes``; the store is asked only about those not in memory
        (a thread hop per request is most of the cost of a small hot range)."""
        store = self.state.store
        known = {i for i in indexes if store.on_loop.known_block(self.version, i)}
        rest = [i for i in indexes if i not in known]
        if not rest:
            return known
        on_disk: set[int] = await self.state.blocking(
            store.in_thread.has_blocks, self.version, rest
        )
        return known | on_disk
