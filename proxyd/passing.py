"""Answers passed on from the origin and not stored: forwarded as they are, or relayed cut
to what the client asked; and the small response helpers every path uses."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Iterable
from typing import NoReturn

import aiohttp
from aiohttp import web
from multidict import CIMultiDict

from proxyd.policy import freshness
from proxyd.policy.keys import cache_key
from proxyd.policy.relay import RelayPlan, framing_problem
from proxyd.policy.requests import (
    Route,
    forward_request_headers,
    forward_response_headers,
    headers_of,
)
from proxyd.sendfile import FileSender
from proxyd.state import CACHE_HEADER, ProxyState, Served, forget_object
from proxyd.store import BlockFile

log = logging.getLogger("proxyd")


CHUNK = 256 * 1024


def text_response(
    status: int, message: str, headers: Iterable[tuple[str, str]] = ()
) -> web.Response:
    out: CIMultiDict[str] = CIMultiDict({"Cache-Control": "no-store"})
    for name, value in headers:
        out.add(name, value)
    return web.Response(
        status=status, text=message if message.endswith("\n") else message + "\n", headers=out
    )


async def write_chunk(response: web.StreamResponse, chunk: bytes, state: ProxyState) -> None:
    # Writes wait for the client (backpressure); a client that stops reading is dropped
    # after client_timeout instead of holding the request open for ever.
    # asyncio.timeout, not wait_for: no task per write (a cold fill writes thousands).
    async with asyncio.timeout(state.settings.client_timeout):
        await response.write(chunk)


async def send_piece(
    response: web.StreamResponse, piece: bytes | BlockFile, sender: FileSender, state: ProxyState
) -> None:
    """Send bytes in hand, or a verified stored piece straight from its file: the kernel
    copies it to the socket (sendfile, from worker threads: :mod:`proxyd.sendfile`), so hot
    downloads neither copy through Python nor hold blocks in memory. The timeout is for the
    client's progress, as for writes."""
    if isinstance(piece, bytes):
        await sender.flush()  # file pieces queued before it go first
        await write_chunk(response, piece, state)
        return
    await sender.send(piece.fd, piece.offset, piece.length, piece.release)


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
            await forget_object(state, cache_key(url, state.settings.signing_params))
        return await pass_on(request, state, target, served, upstream, None)


async def pass_on(
    request: web.Request,
    state: ProxyState,
    target: Route,
    served: Served,
    upstream: aiohttp.ClientResponse,
    plan: RelayPlan | None,
    body: bytes | None = None,
) -> web.StreamResponse:
    """Stream an upstream answer to the client: as it is (``plan`` None), or cut back to what
    the client asked for (:func:`proxyd.policy.relay.relay_plan`). ``body``: the answer's
    body, when it has been read already."""
    known_length = len(body) if body is not None else upstream.content_length
    problem = framing_problem(upstream.status, upstream.headers, known_length)
    if problem is not None:
        log.warning("refusing the answer of %s: %s", target.upstream_url, problem)
        state.metrics.errors.labels("upstream_malformed").inc()
        return text_response(
            502,
            f"upstream {target.upstream!r} sent a broken answer: {problem}; nothing of it was "
            "passed on (the origin's fault: tell its operator)",
        )
    status = upstream.status if plan is None else plan.status
    drop = () if plan is None else ("content-range",)
    response = web.StreamResponse(
        status=status,
        reason=upstream.reason if status == upstream.status else None,
        headers=headers_of(forward_response_headers(upstream.headers), drop=drop),
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
            chunks = upstream.content.iter_chunked(CHUNK) if body is None else _once(body)
            async for chunk in chunks:
                served.from_origin += len(chunk)
                counter.inc(len(chunk))
                if skip:
                    cut = min(skip, len(chunk))
                    chunk, skip = chunk[cut:], skip - cut
                if left is not None:
                    chunk, left = chunk[:left], left - min(left, len(chunk))
                if chunk:
                    await write_chunk(response, chunk, state)
                if left == 0:
                    break
        if left:
            # The upstream body ended before the bytes promised to the client.
            cut_response(request, state, target, "the upstream body ended early")
            return response
        await response.write_eof()
    except (TimeoutError, ConnectionError) as exc:
        drop_client(request, state, target, exc)
    return response


async def _once(body: bytes) -> AsyncIterator[bytes]:
    yield body


def cut_response(request: web.Request, state: ProxyState, target: Route, reason: object) -> None:
    """Headers are out and the body cannot be finished as promised: close the connection,
    the only honest signal left, so the client sees the answer cut short rather than wait
    for bytes that will not come (or get bytes of two versions, or made-up ones)."""
    log.warning("aborting response for %s: %s", target.upstream_url, reason)
    state.metrics.errors.labels("aborted_response").inc()
    if request.transport is not None:
        request.transport.close()


def drop_client(
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


def credential_headers(request: web.Request) -> list[tuple[str, str]]:
    """The client's credentials, which the origin needs to answer for this client."""
    return [(k, v) for k, v in request.headers.items() if k.lower() in ("authorization", "cookie")]
