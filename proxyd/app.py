"""Assemble and run the proxy: routes, background eviction, clean shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import resource
import time
from collections.abc import AsyncIterator
from logging.handlers import QueueHandler, QueueListener
from pathlib import Path

from aiohttp import web
from aiohttp.http_exceptions import BadHttpMessage
from aiohttp.typedefs import Handler

from proxyd.metrics import CONTENT_TYPE_LATEST
from proxyd.server import STATE, ProxyState, handle
from proxyd.settings import ConfigError, ProxySettings

RESERVED_NAMES = ("metrics", "healthz")
EVICTION_INTERVAL = 5.0

log = logging.getLogger("proxyd")


async def metrics_view(request: web.Request) -> web.Response:
    state = request.app[STATE]
    body = await asyncio.to_thread(_render_metrics, state)
    return web.Response(
        body=body, headers={"Content-Type": CONTENT_TYPE_LATEST, "Cache-Control": "no-store"}
    )


def _render_metrics(state: ProxyState) -> bytes:
    state.metrics.cache_size.set(state.store.volume())
    state.metrics.coalesced_waits.inc(0)
    return state.metrics.render()


async def healthz(request: web.Request) -> web.Response:
    state = request.app[STATE]
    volume = await asyncio.to_thread(state.store.volume)
    return web.json_response(
        {
            "status": "ok",
            "cache_bytes": volume,
            "cache_limit": state.settings.cache_size,
            "upstreams": sorted(state.settings.upstreams),
        },
        headers={"Cache-Control": "no-store"},
    )


async def _evictor(app: web.Application) -> AsyncIterator[None]:
    state = app[STATE]

    async def loop() -> None:
        while True:
            await asyncio.sleep(EVICTION_INTERVAL)
            await asyncio.to_thread(state.store.flush_recency)
            removed = await asyncio.to_thread(state.store.evict)
            state.store.close_stale_files()
            if removed:
                state.metrics.evictions.inc(removed)
                log.info("evicted %d cache entries", removed)

    task = asyncio.create_task(loop())
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    await state.close()


@web.middleware
async def _policy_for_unrouted(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Requests the router cannot place go to the proxy's policy all the same.

    aiohttp's router matches paths, so a target that is not a path -- CONNECT's
    authority-form ``host:port``, OPTIONS's asterisk-form ``*`` -- never reaches the
    catch-all route and would get aiohttp's bare 404 and no access-log line. The policy
    (:func:`proxyd.policy.requests.route`) has the right answers for them (405 with
    ``Allow`` for CONNECT, 400 for ``*``), so hand them to :func:`handle`.
    """
    if request.match_info.http_exception is not None:
        return await handle(request)
    return await handler(request)


def create_app(settings: ProxySettings) -> web.Application:
    clash = set(RESERVED_NAMES) & set(settings.upstreams)
    if clash:
        raise ConfigError(
            "upstreams",
            "configuration",
            f"the names {sorted(clash)} are reserved for proxyd's own endpoints",
            "another upstream name",
        )
    app = web.Application(middlewares=[_policy_for_unrouted])
    app[STATE] = ProxyState(settings)
    if settings.metrics:
        app.router.add_get("/metrics", metrics_view)
    app.router.add_get("/healthz", healthz)
    app.router.add_route("*", "/{tail:.*}", handle)
    app.cleanup_ctx.append(_evictor)
    return app


class _MalformedRequestFilter(logging.Filter):
    """aiohttp logs every request its parser refuses (over-long lines, bad syntax: answered
    400) with a full traceback; any client could flood the log with them. Keep one line."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, BadHttpMessage):
            record.msg = "refused a malformed request (400): %s"
            record.args = (" ".join(str(exc.message).split())[:200],)
            record.exc_info = None
            record.exc_text = None
            record.levelno, record.levelname = logging.INFO, "INFO"
        return True


def configure_logging(settings: ProxySettings) -> list[QueueListener]:
    """Log lines are handed to a thread that writes them (QueueHandler): a write and flush
    per request in the event loop would cost a busy proxy a third of its time. Returns the
    writer threads, for :func:`run` to stop (and so flush) at exit."""
    console = logging.StreamHandler()
    console.setFormatter(logging.Formatter("%(asctime)s %(name)s %(message)s"))
    listeners = [_queued(logging.getLogger(), console)]
    logging.getLogger().setLevel(logging.INFO)
    logging.getLogger("aiohttp.server").addFilter(_MalformedRequestFilter())
    access = logging.getLogger("proxyd.access")
    access.propagate = True
    if settings.access_log is False:
        access.disabled = True
    elif isinstance(settings.access_log, Path):
        handler = logging.FileHandler(settings.access_log)
        handler.setFormatter(logging.Formatter("%(message)s"))
        listeners.append(_queued(access, handler))
        access.propagate = False
    return listeners


def _queued(logger: logging.Logger, handler: logging.Handler) -> QueueListener:
    records: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
    logger.handlers = [QueueHandler(records)]
    listener = QueueListener(records, handler)
    listener.start()
    return listener


def _raise_open_file_limit() -> None:
    """Allow as many open descriptors as the system lets this process have: every client
    connection, upstream connection and hot block file held open takes one."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def run(settings: ProxySettings) -> None:
    _raise_open_file_limit()
    listeners = configure_logging(settings)
    try:
        _serve(settings)
    finally:
        for listener in listeners:
            listener.stop()


def _serve(settings: ProxySettings) -> None:
    app = create_app(settings)
    log.info(
        "proxyd listening on http://%s/ for %s",
        settings.listen,
        ", ".join(f"/{n}/ -> {u}" for n, u in sorted(settings.upstreams.items())),
    )
    started = time.monotonic()
    web.run_app(
        app,
        host=settings.listen_host,
        port=settings.listen_port,
        print=None,
        access_log=None,  # proxyd writes its own line per request, with cache status
        handler_cancellation=True,
        keepalive_timeout=settings.client_timeout,
        # Let over-long targets and fields through the parser so the policy answers them
        # with 414/431 and a clear message; far beyond that the parser refuses (400).
        max_line_size=4 * settings.max_url_bytes,
        max_field_size=4 * settings.max_header_bytes,
    )
    log.info("proxyd stopped after %.0f s", time.monotonic() - started)
