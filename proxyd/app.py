"""Assemble and run the proxy: routes, background eviction, clean shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import resource
import socket
import sqlite3
import time
from collections.abc import AsyncIterator

from aiohttp import web
from aiohttp.http_exceptions import BadHttpMessage
from aiohttp.typedefs import Handler
from aiohttp.web_runner import GracefulExit

from proxyd import status
from proxyd.fastlane import FastLane, in_process
from proxyd.metrics import CONTENT_TYPE_LATEST, SAMPLE_SECONDS
from proxyd.policy.routes import route_path
from proxyd.server import handle
from proxyd.settings import ConfigError, ProxySettings
from proxyd.state import STATE, ProxyState
from proxyd.store import BlockStore, StoreWriteError, check_writable
from proxyd.workers import WorkerLink, fork_workers, listening_socket, reap

RESERVED_NAMES = ("metrics", "healthz")
EVICTION_INTERVAL = 5.0
EVICTION_CHECK = 0.1
"""How often the evictor looks whether writes have brought its next round forward."""

log = logging.getLogger("proxyd")


async def metrics_view(request: web.Request) -> web.Response:
    state = request.app[STATE]
    await asyncio.gather(*(link.flush() for link in state.workers))
    state.metrics.settle()  # in the loop, whose counts they are
    body = await asyncio.to_thread(_render_metrics, state)
    return web.Response(
        body=body, headers={"Content-Type": CONTENT_TYPE_LATEST, "Cache-Control": "no-store"}
    )


def _render_metrics(state: ProxyState) -> bytes:
    state.metrics.cache_size.set(state.store.volume())
    state.metrics.coalesced_waits.inc(0)
    return state.metrics.render()


async def status_view(request: web.Request) -> web.Response:
    """The operator's page (:mod:`proxyd.status`): the /metrics counters, workers' included,
    with the ring of samples drawn as charts."""
    state = request.app[STATE]
    volume, problem = await _settled(state)
    problems = [p for p in (state.store_health.problem, problem) if p is not None]
    page = status.render(
        status.collect(
            state.metrics, volume, state.settings.cache_size, state.settings.upstreams, problems
        )
    )
    return web.Response(text=page, content_type="text/html", headers={"Cache-Control": "no-store"})


async def _settled(state: ProxyState) -> tuple[int, str | None]:
    """Bring the workers' counts in and settle them (as a /metrics scrape does); the cache's
    size, or 0 and why it could not be read."""
    await asyncio.gather(*(link.flush() for link in state.workers))
    state.metrics.settle()  # in the loop, whose counts they are
    try:
        return await asyncio.to_thread(state.store.volume), None
    except (OSError, sqlite3.Error) as exc:
        return 0, f"cannot read the cache's size: {exc}"


async def healthz(request: web.Request) -> web.Response:
    """The proxy's health as JSON: ``status`` is ``ok``, or ``degraded`` with the reason in
    ``problems`` (the cache cannot store: its file system is full or read-only).

    ``?route=URL`` adds ``route``: the proxy's path for that origin URL, or null if no
    upstream serves it (:mod:`proxyd.policy.routes`), by which a client given the proxy's
    base URL and a repository's URL finds its way (``mirror pull --via``). The answer
    names upstreams, never their URLs.

    A degraded proxy still answers every request correctly (misses pass through to the
    origin), so it answers 200 and load balancers keep sending it clients; monitoring
    alerts on ``status`` (or the ``proxyd_store_degraded`` gauge). A check that can only
    look at the status code asks ``/healthz?strict=1``, which answers 503 when degraded.
    """
    state = request.app[STATE]
    problems = [] if state.store_health.problem is None else [state.store_health.problem]
    try:
        volume: int | None = await asyncio.to_thread(state.store.volume)
    except (OSError, sqlite3.Error) as exc:
        volume = None
        problems.append(f"cannot read the cache's size: {exc}")
    strict = request.query.get("strict", "") not in ("", "0", "false")
    health: dict[str, object] = {
        "status": "degraded" if problems else "ok",
        "problems": problems,
        "cache_bytes": volume,
        "cache_limit": state.settings.cache_size,
        "upstreams": sorted(state.settings.upstreams),
    }
    if "route" in request.query:
        health["route"] = route_path(state.settings.upstreams, request.query["route"])
    return web.json_response(
        health,
        status=503 if problems and strict else 200,
        headers={"Cache-Control": "no-store"},
    )


async def until_eviction_due(store: BlockStore, interval: float, check: float) -> None:
    """Wait ``interval`` seconds, or less once the store has taken in as much as lies
    between its watermarks (:meth:`proxyd.store.BlockStore.eviction_due`)."""
    waited = 0.0
    while waited < interval and not store.eviction_due():
        await asyncio.sleep(check)
        waited += check


async def _evictor(app: web.Application) -> AsyncIterator[None]:
    state = app[STATE]

    async def loop() -> None:
        while True:
            await until_eviction_due(state.store, EVICTION_INTERVAL, EVICTION_CHECK)
            try:
                await asyncio.to_thread(state.store.flush_recency)
                removed = await asyncio.to_thread(state.store.evict)
            except (OSError, sqlite3.Error) as exc:
                # A full or read-only cache must not end eviction for good (the next round
                # may free the space); the requests' own writes report it (/healthz).
                log.warning("cache maintenance failed: %s", exc)
                continue
            state.store.on_loop.close_stale_files()
            if removed:
                state.metrics.evictions.inc(removed)
                log.info("evicted %d cache entries", removed)

    async def sampling() -> None:
        """Every SAMPLE_SECONDS, the counters into the ring the status page draws."""
        while True:
            volume, _ = await _settled(state)  # a size it cannot read: /status says why
            state.metrics.sample(volume)
            await asyncio.sleep(SAMPLE_SECONDS)

    tasks = [asyncio.create_task(loop())]
    if state.settings.metrics:
        tasks.append(asyncio.create_task(sampling()))
    yield
    for task in tasks:
        task.cancel()
    for task in tasks:
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
        app.router.add_get("/status", status_view)
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


def configure_logging() -> None:
    """proxyd's own log lines (start, stop, warnings) go to stderr. They are few: the line
    per request is the access log's (:mod:`proxyd.accesslog`), written in batches."""
    console = logging.StreamHandler()
    console.setFormatter(logging.Formatter("%(asctime)s %(name)s %(message)s"))
    root = logging.getLogger()
    root.handlers = [console]
    root.setLevel(logging.INFO)
    logging.getLogger("aiohttp.server").addFilter(_MalformedRequestFilter())


def _raise_open_file_limit() -> None:
    """Allow as many open descriptors as the system lets this process have: every client
    connection, upstream connection and hot block file held open takes one."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def run(settings: ProxySettings) -> None:
    _raise_open_file_limit()
    configure_logging()
    _serve(settings)


def _serve(settings: ProxySettings) -> None:
    workers = settings.workers or os.cpu_count() or 1
    if workers > 1 and not settings.fast_lane:
        log.warning("workers = %d needs fast_lane = true (workers run the lane); using 1", workers)
        workers = 1
    _check_cache_dir(settings)
    listener = listening_socket(settings.listen_host, settings.listen_port)
    # Forked first, while this process has no threads and no event loop.
    forked = fork_workers(settings, listener, workers - 1)
    loop = _new_event_loop(settings.event_loop)
    asyncio.set_event_loop(loop)
    log.info(
        "proxyd listening on http://%s/ for %s (event loop %s, fast lane %s, %d process%s)",
        settings.listen,
        ", ".join(f"/{n}/ -> {u}" for n, u in sorted(settings.upstreams.items())),
        "uvloop" if type(loop).__module__.startswith("uvloop") else "asyncio",
        "on" if settings.fast_lane else "off",
        workers,
        "" if workers == 1 else "es",
    )
    started = time.monotonic()
    serving = loop.create_task(_serve_until_stopped(settings, listener, forked))
    try:
        loop.run_until_complete(serving)
    except (GracefulExit, KeyboardInterrupt):  # SIGTERM, SIGINT: stop cleanly
        pass
    finally:
        if not serving.done():
            serving.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                loop.run_until_complete(serving)
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()
        listener.close()
    log.info("proxyd stopped after %.0f s", time.monotonic() - started)


def _check_cache_dir(settings: ProxySettings) -> None:
    """Refuse to start, before listening, on a cache directory that cannot be written."""
    try:
        check_writable(settings.cache_dir)
    except StoreWriteError as exc:
        raise ConfigError(
            "cache_dir",
            "configuration",
            str(exc),
            "a writable directory (--cache-dir, or cache_dir in the config file), or make "
            "this one writable (its mount, permissions or free space)",
        ) from None


def _new_event_loop(choice: str) -> asyncio.AbstractEventLoop:
    if choice != "uvloop":
        return asyncio.new_event_loop()
    try:
        import uvloop
    except ImportError:
        raise ConfigError(
            "event_loop", "configuration", "uvloop is not installed", "pip install uvloop"
        ) from None
    return uvloop.new_event_loop()


async def _serve_until_stopped(
    settings: ProxySettings, listener: socket.socket, forked: list[tuple[int, socket.socket]]
) -> None:
    """Listen with the fast lane in front of aiohttp's handler (:mod:`proxyd.fastlane`),
    taking over what worker processes hand over (:mod:`proxyd.workers`), until a signal
    stops the loop; then close every connection, stop the workers and clean up."""
    app = create_app(settings)
    runner = web.AppRunner(
        app,
        handle_signals=True,  # SIGINT/SIGTERM raise GracefulExit
        access_log=None,  # proxyd writes its own line per request, with cache status
        handler_cancellation=True,
        keepalive_timeout=settings.client_timeout,
        # Let over-long targets and fields through the parser so the policy answers them
        # with 414/431 and a clear message; far beyond that the parser refuses (400).
        max_line_size=4 * settings.max_url_bytes,
        max_field_size=4 * settings.max_header_bytes,
    )
    await runner.setup()
    assert runner.server is not None
    state = app[STATE]
    take_over = in_process(runner.server)
    lane = FastLane(state, take_over)
    factory = lane.connection if settings.fast_lane else runner.server
    links = [WorkerLink(pid, channel, state.metrics, take_over) for pid, channel in forked]
    state.workers = links
    for link in links:
        link.start()
    server = await asyncio.get_running_loop().create_server(factory, sock=listener)
    try:
        await asyncio.Event().wait()
    finally:
        server.close()
        for link in links:
            link.stop()
        lane.close_all()
        await asyncio.to_thread(reap, links)
        await runner.cleanup()
