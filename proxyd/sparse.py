"""The extent lane: small and scattered ranges answered from byte-exact extents.

A FITS header or the rows of a cutout are a few KiB spread over blocks of 1 MiB: fetched as
blocks they would cost the origin hundreds of times the bytes asked for. Such a request
(:func:`proxyd.policy.extents.prefers_extents`) is answered here instead:

1. what the store holds of the requested bytes is read (whole blocks and extents: one
   worker-thread call, :meth:`proxyd.store.BlockStore.read_extents`);
2. the rest is fetched from the origin exactly, one multi-range request per
   ``UPSTREAM_RANGES`` runs of missing bytes, with the stored validator as a precondition
   (a changed object is refused, never mixed in);
3. identical fetches in flight are shared (:class:`ExtentFills`, keyed by object version
   and extent), the fetched bytes stored as extents before the fetch is unregistered;
4. the response is assembled in memory (at most ``SPARSE_MAX_BYTES``) and sent at once.

The caller falls back to the block path when this lane returns None (the origin ignored
the ranges, or answered with parts that are not what was asked).
"""

from __future__ import annotations

import asyncio
import bisect
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import ParamSpec, Protocol, TypeVar

from butler.http.ranges import (
    MultipartError,
    multipart_boundary,
    multipart_parts,
    parse_content_range,
)
from proxyd.metrics import Metrics
from proxyd.policy import blocks, extents
from proxyd.policy.extents import Extent
from proxyd.store import BlockStore, StoreWriteError
from proxyd.upstream import UpstreamClients

log = logging.getLogger("proxyd")

LINGER_SECONDS = 2.0
"""How long a finished extent fetch stays in :class:`ExtentFills` (see ``_fetch``)."""

P = ParamSpec("P")
R = TypeVar("R")


class ObjectChangedError(Exception):
    """The origin's object is no longer the stored version (412, other size or ETag)."""


class UnusableAnswerError(Exception):
    """The origin's answer to an extent fetch cannot be used (it ignored the ranges, or
    sent parts other than those asked for): the block path answers instead."""


class Health(Protocol):
    """Whether the cache can store (:class:`proxyd.state.StoreHealth`)."""

    def may_try(self) -> bool: ...

    def failed(self, exc: StoreWriteError) -> None: ...

    def stored(self) -> None: ...

    @property
    def problem(self) -> str | None: ...


class Blocking(Protocol):
    """Runs a blocking call in a worker thread."""

    def __call__(
        self, func: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs
    ) -> Awaitable[R]: ...


@dataclass
class ExtentFills:
    """Extent fetches in flight (event loop only): identical fetches are shared."""

    pending: dict[tuple[str, Extent], asyncio.Future[bytes]] = field(default_factory=dict)
    fetches: int = 0
    """Upstream requests made for extents."""
    shared: int = 0
    """Extents a request awaited from another request's fetch."""


@dataclass
class Lane:
    """What the lane needs from the running proxy."""

    store: BlockStore
    upstreams: UpstreamClients
    metrics: Metrics
    health: Health
    blocking: Blocking
    fills: ExtentFills


@dataclass
class Gathered:
    """The requested bytes, in order, and how many of them came from the origin now."""

    pieces: list[tuple[Extent, bytes]]
    from_origin: int

    def slice(self, start: int, stop: int) -> bytes:
        """Bytes ``start:stop`` of the object (every one of them among ``pieces``)."""
        starts = [e.start for e, _ in self.pieces]
        i = max(0, bisect.bisect_right(starts, start) - 1)
        out = bytearray()
        position = start
        while position < stop:
            extent, data = self.pieces[i]
            if not extent.start <= position < extent.stop:
                raise LookupError(f"byte {position} was not gathered")
            take = min(stop, extent.stop) - position
            out += data[position - extent.start : position - extent.start + take]
            position += take
            i += 1
        return bytes(out)


def disjoint(pieces: list[tuple[Extent, bytes]]) -> list[tuple[Extent, bytes]]:
    """``pieces`` of one version sorted by offset, each cut to start where the ones before
    it end (overlapping bytes are equal: one version), wholly covered ones dropped."""
    out: list[tuple[Extent, bytes]] = []
    for extent, data in sorted(pieces, key=lambda item: (item[0].start, -item[0].stop)):
        end = out[-1][0].stop if out else 0
        if extent.stop <= end:
            continue
        if extent.start < end:
            data = data[end - extent.start :]
            extent = Extent(end, extent.stop)
        out.append((extent, data))
    return out


def _in_flight(lane: Lane, version: str) -> dict[Extent, asyncio.Future[bytes]]:
    return {e: f for (v, e), f in lane.fills.pending.items() if v == version}


async def gather(
    lane: Lane,
    *,
    upstream: str,
    url: str,
    version: str,
    size: int,
    etag: str | None,
    last_modified: str | None,
    credentials: Sequence[tuple[str, str]],
    wanted: list[Extent],
    may_fetch: bool = True,
) -> Gathered:
    """The bytes of ``wanted`` (sorted, disjoint): stored ones, and the rest fetched as
    extents (raises :class:`ObjectChangedError`, :class:`UnusableAnswerError`; the latter
    also when bytes are missing and ``may_fetch`` is false: the origin is unavailable)."""
    # Fetches in flight are looked at before the store and again after: one that ends
    # meanwhile has stored its bytes before leaving ``pending``, so its extents are either
    # found in the store or awaited here, never fetched a second time.
    earlier = _in_flight(lane, version)
    found = await lane.blocking(lane.store.in_thread.read_extents, version, wanted)
    holes = extents.missing(wanted, [e for e, _ in found])
    fetched: list[tuple[Extent, bytes]] = []
    if holes and not may_fetch:
        raise UnusableAnswerError(f"{url}: {len(holes)} pieces not stored")
    if holes:
        waits: list[asyncio.Future[bytes]] = []
        keys: list[Extent] = []
        for extent, future in {**earlier, **_in_flight(lane, version)}.items():
            if extents.missing([extent], holes) != [extent]:  # it brings some of the holes
                lane.fills.shared += 1
                waits.append(future)
                keys.append(extent)
        for request in extents.fetch_requests(extents.missing(holes, keys), size):
            for extent in request:
                future = asyncio.get_running_loop().create_future()
                lane.fills.pending[(version, extent)] = future
                waits.append(future)
                keys.append(extent)
            asyncio.create_task(
                _fetch(
                    lane, upstream, url, version, size, etag, last_modified, credentials, request
                )
            )
        results = await asyncio.gather(*(asyncio.shield(w) for w in waits))
        fetched = list(zip(keys, results, strict=True))
    pieces = disjoint(found + fetched)
    from_origin = sum(
        max(0, min(h.stop, e.stop) - max(h.start, e.start)) for h in holes for e, _ in fetched
    )
    return Gathered(pieces, from_origin)


async def _fetch(
    lane: Lane,
    upstream: str,
    url: str,
    version: str,
    size: int,
    etag: str | None,
    last_modified: str | None,
    credentials: Sequence[tuple[str, str]],
    wanted: list[Extent],
) -> None:
    """One upstream request for ``wanted``; settles their futures, stores what came."""
    futures = [lane.fills.pending[(version, e)] for e in wanted]
    try:
        got = await _request(lane, upstream, url, size, etag, last_modified, credentials, wanted)
        data = [got[e] for e in wanted]
        if lane.health.problem is None or lane.health.may_try():
            try:
                await lane.blocking(
                    lane.store.put_extents,
                    version,
                    [(e.start, d) for e, d in zip(wanted, data, strict=True)],
                    size,
                )
                lane.health.stored()
            except StoreWriteError as exc:
                lane.health.failed(exc)  # the bytes still answer the requests
        for future, chunk in zip(futures, data, strict=True):
            if not future.done():
                future.set_result(chunk)
    except BaseException as exc:
        for future in futures:
            if not future.done():
                future.set_exception(
                    exc if isinstance(exc, Exception) else UnusableAnswerError("cancelled")
                )
                future.exception()  # retrieved: its waiters may have gone
        if not isinstance(exc, Exception):
            raise
    finally:
        # Kept a moment after they end: a request that looked at the store before these
        # bytes were stored and at ``pending`` after they left it would fetch them again.
        loop = asyncio.get_running_loop()
        for e, future in zip(wanted, futures, strict=True):
            failed = future.cancelled() or future.exception() is not None
            if failed:  # a later request tries again at once
                _forget_fill(lane.fills, (version, e), future)
            else:
                loop.call_later(LINGER_SECONDS, _forget_fill, lane.fills, (version, e), future)


def _forget_fill(
    fills: ExtentFills, key: tuple[str, Extent], future: asyncio.Future[bytes]
) -> None:
    if fills.pending.get(key) is future:
        del fills.pending[key]


async def _request(
    lane: Lane,
    upstream: str,
    url: str,
    size: int,
    etag: str | None,
    last_modified: str | None,
    credentials: Sequence[tuple[str, str]],
    wanted: list[Extent],
) -> dict[Extent, bytes]:
    """Ask the origin for ``wanted``; each extent's bytes, from a 206 (one part or
    multipart) of the stored version."""
    headers = [
        *credentials,
        ("Range", extents.range_field(wanted)),
        *blocks.precondition_headers(etag, last_modified),
    ]
    lane.fills.fetches += 1
    counter = lane.metrics.bytes_from_origin.labels(upstream)
    async with lane.upstreams.request(upstream, "GET", url, headers) as answer:
        if answer.status == 412:
            raise ObjectChangedError(f"{url}: the origin's object changed (412)")
        if answer.status != 206:
            raise UnusableAnswerError(f"{url}: a {answer.status} to a range request for extents")
        sent_etag = answer.headers.get("ETag")
        if etag is not None and sent_etag is not None and sent_etag.strip() != etag.strip():
            raise ObjectChangedError(f"{url}: ETag {sent_etag} instead of {etag}")
        # At most what was asked for plus generous room for part headers: an origin that
        # sends more is not answering this request.
        limit = sum(e.length for e in wanted) + 512 * len(wanted) + 4096
        length = answer.content_length
        if length is not None and length > limit:
            raise UnusableAnswerError(f"{url}: {length} bytes for {len(wanted)} extents")
        body = b""
        while len(body) <= limit:
            more = await answer.content.read(limit + 1 - len(body))
            if not more:
                break
            body += more
        if len(body) > limit:
            raise UnusableAnswerError(f"{url}: more bytes than the extents asked for")
        counter.inc(len(body))
    boundary = multipart_boundary(answer.headers.get("Content-Type", ""))
    try:
        if boundary is not None:
            received = [(Extent.of(r), data) for r, data in multipart_parts(boundary, body)]
        else:
            value = answer.headers.get("Content-Range")
            parsed = None if value is None else parse_content_range(value)
            if parsed is None or parsed.start is None or parsed.end is None:
                raise MultipartError("a 206 without a valid Content-Range")
            if parsed.size is not None and parsed.size != size:
                raise ObjectChangedError(f"{url}: {parsed.size} bytes instead of {size}")
            if len(body) != parsed.end - parsed.start + 1:
                raise MultipartError("a body shorter than its Content-Range")
            received = [(Extent(parsed.start, parsed.end + 1), body)]
    except MultipartError as exc:
        raise UnusableAnswerError(f"{url}: {exc}") from None
    # An origin may join near ranges into one part (RFC 9110 §14.6): cut each extent out.
    out: dict[Extent, bytes] = {}
    gathered = Gathered(disjoint(received), 0)
    for extent in wanted:
        try:
            out[extent] = gathered.slice(extent.start, extent.stop)
        except (LookupError, IndexError):
            raise UnusableAnswerError(
                f"{url}: bytes {extent.range_spec} missing from the answer"
            ) from None
    return out
