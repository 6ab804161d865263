"""The fast lane: plain GETs of fresh cached bytes, answered before aiohttp sees them.

Every client connection starts here. For each request that arrives whole, the lane asks
:func:`proxyd.policy.plain.recognise` whether it is a plain GET and then whether the
answer is in hand: the route (memoised per target), the object's metadata in memory, still
fresh for anyone (:func:`proxyd.policy.plain.plain_hit_until`), one satisfiable range (or
none) short enough to send from memory, its blocks held in memory or the page cache
(:func:`proxyd.hit.small_body`). Then it writes the answer :mod:`proxyd.hit` lays out for
the full handler too -- same status, fields, body, metrics and access-log line -- at a
fraction of the cost: no request object, no router, no middleware, no response object.

The first request the lane does not answer, for whatever reason (a miss, credentials, a
condition, a partial request, a slow client), hands the connection to aiohttp's request
handler together with every byte not yet answered, and aiohttp serves it from then on with
all of its checks, limits and timeouts. The lane never reads a request body, never holds a
partial request, and never answers out of order: pipelined requests are answered in turn,
and the hand-over happens at a request boundary.

Backpressure: the lane stops reading (and answering) while the socket's send buffer is
over its high-water mark, so a client that asks without reading cannot make the proxy
buffer more than one answer beyond it.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Literal, cast

from aiohttp import web
from aiohttp.http import SERVER_SOFTWARE

from butler.http.conditional import format_http_date
from butler.http.ranges import ByteRange, RangeOutcome, parse_range_header, simple_range
from proxyd.hit import StoredAnswer, layout, small_body, stored_answer
from proxyd.policy.clients import client_address
from proxyd.policy.plain import Recogniser, plain_hit_until
from proxyd.policy.requests import Route, route
from proxyd.state import CACHE_HEADER, ProxyState, Served, account
from proxyd.store import ObjectMeta

log = logging.getLogger("proxyd")

MAX_WARMS = 4
"""Reads from disk one request may wait for (its metadata, then each block it touches, at
most three for a small range); one that still needs more is the full handler's."""
ROUTE_MEMORY = 10_000
"""Routes remembered per target; the table is emptied when it fills (hot targets return)."""


@dataclass(frozen=True, slots=True)
class _Hot:
    """How to write the answers to plain requests for one stored version (worked out once
    per version): the answer itself is :mod:`proxyd.hit`'s, as for the full handler."""

    answer: StoredAnswer
    fresh_until: float
    version: str
    size: int
    heads: dict[int, bytes]
    """Status line and the fields every answer of that status carries, up to the
    per-request ones (those of the :class:`proxyd.hit.Layout`, Age, length, Date)."""
    dated: bool
    """Whether the stored fields include Date (the origin's, kept as RFC 9110 §6.6.1 asks);
    otherwise each answer gets the current one, as aiohttp would add."""


def _field_block(fields: Iterable[tuple[str, str]]) -> bytes | None:
    if any("\r" in f"{name}{value}" or "\n" in f"{name}{value}" for name, value in fields):
        return None  # aiohttp would refuse to send such a field: leave it to the handler
    return "".join(f"{name}: {value}\r\n" for name, value in fields).encode("utf-8")


def _hot(meta: ObjectMeta, state: ProxyState) -> _Hot:
    """The answer of :func:`proxyd.hit.stored_answer` for ``meta``, with the fields aiohttp
    adds to a response when they are missing and the X-Cache of a hit."""
    answer = stored_answer(meta.stored)
    fields = list(answer.fields)
    present = {name.lower() for name, _ in fields}
    if "content-type" not in present:
        fields.append(("Content-Type", "application/octet-stream"))
    if "server" not in present:
        fields.append(("Server", SERVER_SOFTWARE))
    fields.append((CACHE_HEADER, "HIT"))
    block = _field_block(fields)
    size = meta.size or 0
    # Only 200s: a stored 301, 404... is answered with its own status by the full handler.
    if block is None or size <= 0 or answer.status != 200:
        return _Hot(answer, -math.inf, "", 0, {}, True)
    return _Hot(
        answer,
        plain_hit_until(answer.stored, state.settings),
        meta.version(state.settings.block_size),
        size,
        {200: b"HTTP/1.1 200 OK\r\n" + block, 206: b"HTTP/1.1 206 Partial Content\r\n" + block},
        "date" in present,
    )


@dataclass(frozen=True, slots=True)
class _Warm:
    """The answer needs something read from disk first (in a worker thread, never in the
    loop): the object's metadata (``index`` -1), or a block not verified lately."""

    key: str
    version: str = ""
    index: int = -1
    start: int = 0
    stop: int = 0
    reload: bool = False
    """Read the metadata from disk even though memory holds it (it went stale there)."""

    @property
    def reason(self) -> str:
        """Why the handler gets the request if reading did not help."""
        return "not fresh for anyone" if self.reload else "not cached"


TakeOver = Callable[[asyncio.Transport, bytes], None]
"""Gives a connection, and the bytes read from it but not answered, to the full handler."""


def in_process(handler_factory: web.Server) -> TakeOver:
    """The full handler is aiohttp's, in this process: it takes over the transport."""

    def take_over(transport: asyncio.Transport, pending: bytes) -> None:
        handler = handler_factory()
        transport.set_protocol(handler)
        handler.connection_made(transport)
        if pending:
            handler.data_received(pending)

    return take_over


class FastLane:
    """What the connections of one proxy share: its state, who takes connections over, the
    memo tables, and the open connections (closed at shutdown)."""

    def __init__(self, state: ProxyState, take_over: TakeOver) -> None:
        self.state = state
        self.take_over = take_over
        self.connections: set[_Connection] = set()
        self._routes: dict[str, Route | None] = {}
        self._hot: dict[str, _Hot] = {}
        limits = state.limits
        self._recognise = Recogniser(min(limits.max_url_bytes, limits.max_header_bytes))
        self._date_second = -1
        self._date = b""

    def connection(self) -> asyncio.Protocol:
        """Protocol factory for ``loop.create_server``."""
        return _Connection(self)

    def close_all(self) -> None:
        for connection in list(self.connections):
            connection.close()

    def answer(self, head: bytes, client: str | None) -> bytes | _Warm | str:
        """The whole response to the request ``head``; or what to read from disk before
        asking again; or why the full handler must answer it."""
        started = time.perf_counter()
        plain = self._recognise(head)
        if plain is None:
            return "not plain"
        target = self._route(plain.target)
        if target is None:
            return "not routed"
        state = self.state
        meta = state.store.on_loop.peek_meta(target.cache_key)
        if meta is None:
            return _Warm(target.cache_key)
        hot = self._hot_answer(target.cache_key, meta)
        now = time.time()
        if now >= hot.fresh_until:
            # Another process (the main one, for a worker) may have revalidated it since it
            # was read: read the metadata again, once, before leaving it to the handler.
            return _Warm(target.cache_key, reload=True)
        chosen = self._range(plain.range, hot.size)
        if chosen is False:
            return "ranges"
        framing = layout(hot.answer, hot.size, chosen)
        [(_, byte_range)] = framing.parts
        body = small_body(state.store, hot.version, state.settings.block_size, byte_range)
        if body is None:
            return "large"
        if not isinstance(body, bytes):
            return _Warm(target.cache_key, hot.version, *body)
        head = hot.heads[framing.status]
        for name, value in framing.fields:  # hit.layout's Content-Range: no CR or LF
            head += f"{name}: {value}\r\n".encode()
        date = b"" if hot.dated else b"Date: %s\r\n" % self._http_date(now)
        response = b"%sAge: %s\r\nContent-Length: %d\r\n%s\r\n%s" % (
            head,
            hot.answer.age(now).encode(),
            len(body),
            date,
            body,
        )
        served = Served("HIT", from_cache=len(body))
        state.metrics.count_received()
        if plain.forwarded_for is not None and state.settings.trusted_proxies:
            forwarded = (("X-Forwarded-For", plain.forwarded_for),)
            client = client_address(client, forwarded, state.settings.trusted_proxies)
        account(state, "GET", client, plain.target, served, framing.status, started)
        return response

    async def warm(self, need: _Warm) -> None:
        """Read what :meth:`answer` asked for into the store's memory, in a worker thread."""
        store = self.state.store
        try:
            if need.index < 0:
                await self.state.blocking(store.in_thread.get_meta, need.key, reload=need.reload)
            else:
                await self.state.blocking(store.in_thread.warm_block, need.version, need.index)
        except OSError as exc:  # the handler will meet it again and answer properly
            log.warning("fast lane: cannot read %s from the cache: %s", need.key, exc)

    def handed_over(self, reason: str) -> None:
        self.state.metrics.count_handover(reason)

    def _range(self, value: str | None, size: int) -> tuple[ByteRange] | Literal[False] | None:
        """The range to send; None to send the whole object; False when the handler must
        answer (several ranges, or none satisfiable: a multipart answer or a 416)."""
        if value is not None:
            simple = simple_range(value, size)
            if simple is not None:
                return (simple,)
            parsed = parse_range_header(value, size, max_ranges=self.state.settings.max_ranges)
            if parsed.outcome is RangeOutcome.SATISFIABLE and len(parsed.ranges) == 1:
                return (parsed.ranges[0],)
            if parsed.outcome is not RangeOutcome.IGNORE:
                return False
        return None

    def _route(self, raw_target: str) -> Route | None:
        try:
            return self._routes[raw_target]
        except KeyError:
            pass
        settings = self.state.settings
        decision = route(
            "GET",
            raw_target,
            (),
            settings.upstreams,
            self.state.limits,
            signing_params=settings.signing_params,
        )
        # Refusals and signed URLs (a credential in the query) are the handler's to answer.
        found = decision if isinstance(decision, Route) and decision.credential is None else None
        if len(self._routes) >= ROUTE_MEMORY:
            self._routes.clear()
        self._routes[raw_target] = found
        return found

    def _hot_answer(self, key: str, meta: ObjectMeta) -> _Hot:
        hot = self._hot.get(key)
        if hot is None or hot.answer.stored is not meta.stored:
            hot = _hot(meta, self.state)
            if len(self._hot) >= ROUTE_MEMORY:
                self._hot.clear()
            self._hot[key] = hot
        return hot

    def _http_date(self, now: float) -> bytes:
        second = int(now)
        if second != self._date_second:
            self._date_second = second
            self._date = format_http_date(second).encode()
        return self._date


class _Connection(asyncio.Protocol):
    """One client connection while the lane serves it."""

    def __init__(self, lane: FastLane) -> None:
        self._lane = lane
        self._transport: asyncio.Transport | None = None
        self._client: str | None = None
        self._pending = b""
        self._paused = False
        """The client is not reading our answers fast enough (send buffer over its mark)."""
        self._warming: asyncio.Task[None] | None = None
        self._warms = 0
        """Reads from disk made for the request at the head of ``_pending``."""
        self._warmed: _Warm | None = None
        self._reading = True
        self._last_activity = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._loop = asyncio.get_running_loop()
        self._timeout = lane.state.settings.client_timeout

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        peer = transport.get_extra_info("peername")
        self._client = peer[0] if isinstance(peer, tuple) and peer else None
        self._lane.connections.add(self)
        self._last_activity = self._loop.time()
        self._timer = self._loop.call_at(self._last_activity + self._timeout, self._check_idle)

    def data_received(self, data: bytes) -> None:
        self._last_activity = self._loop.time()
        self._pending = self._pending + data if self._pending else data
        self._serve_pending()

    def _serve_pending(self) -> None:
        transport = self._transport
        if transport is None or self._warming is not None:
            return
        pending = self._pending
        answer = self._lane.answer
        reason = "partial request"
        while pending and not self._paused:
            end = pending.find(b"\r\n\r\n")
            if end < 0:
                break
            result = answer(pending[:end], self._client)
            if isinstance(result, bytes):
                pending = pending[end + 4 :]
                self._warms, self._warmed = 0, None
                transport.write(result)  # may call pause_writing() at once
                continue
            if isinstance(result, _Warm) and self._warms < MAX_WARMS and result != self._warmed:
                self._pending = pending
                self._warming = self._loop.create_task(self._warm(result))
                self._update_reading()
                return
            reason = result.reason if isinstance(result, _Warm) else result
            break
        self._pending = pending
        if pending and not self._paused:
            self._hand_over(reason)

    async def _warm(self, need: _Warm) -> None:
        try:
            await self._lane.warm(need)
        finally:
            self._warming = None
            self._warms += 1
            self._warmed = need  # asked for again, it is not there: a miss
        self._last_activity = self._loop.time()
        self._update_reading()
        self._serve_pending()

    def pause_writing(self) -> None:
        self._paused = True
        self._update_reading()

    def resume_writing(self) -> None:
        self._paused = False
        self._last_activity = self._loop.time()
        self._update_reading()
        self._serve_pending()

    def _update_reading(self) -> None:
        """Read requests only while able to answer them: not while the client leaves its
        answers unread, nor while one is being read from disk."""
        transport = self._transport
        wanted = not self._paused and self._warming is None
        if transport is None or transport.is_closing() or wanted == self._reading:
            return
        self._reading = wanted
        if wanted:
            transport.resume_reading()
        else:
            transport.pause_reading()

    def _hand_over(self, reason: str) -> None:
        """From now on the full handler serves this connection, starting with the bytes
        not answered yet."""
        transport = self._transport
        assert transport is not None
        self._lane.handed_over(reason)
        self._forget()
        if not self._reading:
            transport.resume_reading()
        pending, self._pending = self._pending, b""
        self._lane.take_over(transport, pending)

    def _check_idle(self) -> None:
        """Close a connection idle (or not reading its answers) for ``client_timeout``:
        aiohttp's keep-alive timeout, for the connections it has not been given yet."""
        deadline = self._last_activity + self._timeout
        if self._loop.time() >= deadline:
            self.close()
        else:
            self._timer = self._loop.call_at(deadline, self._check_idle)

    def close(self) -> None:
        self._forget()
        if self._transport is not None:
            self._transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self._forget()
        self._transport = None

    def _forget(self) -> None:
        self._lane.connections.discard(self)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
