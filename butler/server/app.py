"""``butler serve``: the aiohttp application, its middlewares, and how to run it."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import resource
import secrets
import signal
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any
from urllib.parse import quote

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger
from aiohttp.web_server import Server

from butler.errors import ButlerError, PayloadTooLargeError
from butler.http.redact import redact_target
from butler.server.api import (
    API,
    POOL,
    READ_POSTS,
    REPO_ROOT,
    SETTINGS,
    TRANSACTIONS,
    add_routes,
)
from butler.server.auth import Principal, ReloadingTokens, bearer_token
from butler.server.collection_access import COLLECTION_RULE, EVERYTHING
from butler.server.pool import RepositoryPool
from butler.server.settings import ServerSettings
from butler.server.transactions import TransactionManager

log = logging.getLogger("butler.server")
TOKENS: web.AppKey[ReloadingTokens] = web.AppKey("tokens", ReloadingTokens)
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}\Z")  # \Z: "$" also matches before a final newline
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
PUBLIC_PATHS = frozenset({"/", "/healthz", f"{API}/openapi.json"})
"""The only paths readable without a token under ``--read-access token`` (exact matches)."""


class AccessCounts:
    """Requests received and access-log lines written, so a reader of the log can tell
    when it holds a line for every request answered so far (``/healthz`` says, in the
    ``X-Access-Log`` field): aiohttp writes a request's line only after its response has
    gone out, so the client can have the answer before the line exists."""

    def __init__(self) -> None:
        self.received = 0
        self.written = 0

    def field(self) -> str:
        return f"received={self.received}, written={self.written}"


ACCESS_COUNTS: web.AppKey[AccessCounts] = web.AppKey("access_counts", AccessCounts)
ACCESS_COUNTS_FIELD = "X-Access-Log"
_COUNTED = "access_counts"
"""Request key: the counts that await this request's line (set on arrival)."""


def _error_body(
    request: web.Request, error_type: str, message: str, **extra: object
) -> dict[str, object]:
    return {
        "error_type": error_type,
        "message": message,
        "request_id": request.get("request_id", ""),
        **extra,
    }


@web.middleware
async def access_count_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Count every request on arrival (the outermost middleware, so all are); /healthz
    answers with the counts, its own arrival included and its line not yet written."""
    counts = request.app[ACCESS_COUNTS]
    counts.received += 1
    request[_COUNTED] = counts
    response = await handler(request)
    if request.path == "/healthz" and not response.prepared:
        response.headers[ACCESS_COUNTS_FIELD] = counts.field()
    return response


@web.middleware
async def request_id_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    given = request.headers.get("X-Request-ID", "")
    request["request_id"] = given if _REQUEST_ID.match(given) else secrets.token_hex(8)
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        exc.headers["X-Request-ID"] = request["request_id"]
        raise
    if not response.prepared:
        response.headers["X-Request-ID"] = request["request_id"]
    return response


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """User errors become JSON with a stable ``error_type``; bugs become 500 + request ID."""
    try:
        return await handler(request)
    except ButlerError as exc:
        message = _without_server_paths(request, str(exc))
        body = _error_body(request, exc.error_type, message, details=exc.details)
        return web.json_response(
            body, status=exc.http_status, headers={"Cache-Control": "no-store"}
        )
    except web.HTTPException as exc:
        if exc.status < 400 or not request.path.startswith("/api/"):
            raise
        body = _error_body(request, "HTTPError", exc.text or exc.reason)
        return web.json_response(body, status=exc.status, headers={"Cache-Control": "no-store"})
    except (asyncio.CancelledError, ConnectionResetError):
        raise
    except Exception:
        log.exception(
            "internal error handling %s %s (request %s)",
            request.method,
            request.path,
            request.get("request_id"),
        )
        body = _error_body(
            request,
            "InternalServerError",
            f"internal server error; report request ID {request.get('request_id')} "
            "to the repository's operator",
        )
        return web.json_response(body, status=500, headers={"Cache-Control": "no-store"})


def _without_server_paths(request: web.Request, message: str) -> str:
    """``message`` with the repository's location on this server taken out: clients name
    files by their path inside the repository, and the server's layout is none of theirs."""
    settings = request.app[SETTINGS]
    for root in sorted({str(request.app[REPO_ROOT]), str(settings.repo)}, key=len, reverse=True):
        message = message.replace(root + "/", "").replace(root, "<repository>")
    return message


def _is_write(request: web.Request) -> bool:
    return request.method not in ("GET", "HEAD", "OPTIONS") and request.path not in READ_POSTS


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """401 when a needed token is missing or unknown, 403 when it lacks the scope."""
    settings = request.app[SETTINGS]
    tokens = request.app[TOKENS].current()
    token = bearer_token(request.headers.get("Authorization"))
    principal: Principal | None = tokens.identify(token) if token else None
    write = _is_write(request)
    needed = "write" if write else "read"
    public = request.path in PUBLIC_PATHS
    if write and settings.read_only:
        return _auth_error(
            request,
            403,
            "ReadOnlyRepositoryError",
            "this repository is served read-only; writes are refused",
        )
    if token and principal is None:
        return _auth_error(
            request,
            401,
            "InvalidToken",
            "the bearer token is not valid for this repository; check the token given "
            "(token=/token_file= in Python, --token-file or BUTLER_TOKEN for a command)",
        )
    needs_token = write or (settings.read_access == "token" and not public)
    if needs_token and principal is None:
        if write and not tokens:
            message = "this server accepts no writes: it was started without --tokens"
            return _auth_error(request, 403, "WritesDisabled", message)
        message = (
            f"this repository requires a bearer token with the {needed!r} scope for "
            f"{'writes' if write else 'reads'}; give one (token=/token_file= in Python, "
            "--token-file or BUTLER_TOKEN for a command)"
        )
        return _auth_error(request, 401, "AuthenticationRequired", message)
    if needs_token and principal is not None and needed not in principal.scopes:
        message = f"token {principal.name!r} lacks the {needed!r} scope needed here"
        return _auth_error(request, 403, "InsufficientScope", message)
    request["principal"] = principal.name if principal else "anonymous"
    request[COLLECTION_RULE] = principal.rule if principal else EVERYTHING
    return await handler(request)


def _auth_error(request: web.Request, status: int, error_type: str, message: str) -> web.Response:
    headers = {"Cache-Control": "no-store"}
    if status == 401:
        headers["WWW-Authenticate"] = 'Bearer realm="butler"' + (
            ', error="invalid_token"' if error_type == "InvalidToken" else ""
        )
    return web.json_response(
        _error_body(request, error_type, message), status=status, headers=headers
    )


@web.middleware
async def body_limit_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """413 before reading a body whose declared length is over the limit (uploads have
    their own, larger one; a body without a length is cut off while it streams)."""
    settings = request.app[SETTINGS]
    upload = request.method == "PUT"
    limit = settings.max_upload_bytes if upload else settings.max_json_bytes
    length = request.content_length
    if length is not None and length > limit:
        what = "an upload" if upload else "a JSON request body"
        raise PayloadTooLargeError(
            f"{what} of {length} bytes is over this server's limit of {limit} bytes"
            + ("" if upload else "; split the request (fewer operations or paths per call)")
        )
    return await handler(request)


async def _expire_transactions(app: web.Application) -> AsyncIterator[None]:
    manager = app[TRANSACTIONS]
    pool = app[POOL]
    interval = max(1.0, min(60.0, app[SETTINGS].staging_ttl / 4))

    async def loop() -> None:
        while True:
            await asyncio.sleep(interval)
            expired = await pool.blocking(manager.expire)
            if expired:
                log.info("removed %d expired transaction(s)", expired)

    task = asyncio.create_task(loop())
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def _close_pool(app: web.Application) -> None:
    await asyncio.get_running_loop().run_in_executor(None, app[POOL].close)
    await asyncio.get_running_loop().run_in_executor(None, app[TRANSACTIONS].close)


def create_app(settings: ServerSettings) -> web.Application:
    """The repository server application (open the repository, wire the routes)."""
    tokens = ReloadingTokens(settings.tokens_file)
    if settings.read_access == "token" and not tokens.store:
        from butler.errors import RepositoryConfigError

        raise RepositoryConfigError("--read-access token needs a --tokens file")
    app = web.Application(
        middlewares=[
            access_count_middleware,
            request_id_middleware,
            error_middleware,
            auth_middleware,  # before anything reads a body: a refused body is never read
            body_limit_middleware,
        ],
        # JSON bodies are read whole, so their cap is small; uploads stream to disk.
        client_max_size=settings.max_json_bytes,
    )
    app[SETTINGS] = settings
    app[REPO_ROOT] = settings.repo.resolve()
    app[TOKENS] = tokens
    app[ACCESS_COUNTS] = AccessCounts()
    app[POOL] = RepositoryPool(settings.repo, settings.read_workers, not settings.read_only)
    # A read-only server stages nothing: it must start on a read-only file system, and
    # never touches other servers' staging.
    app[TRANSACTIONS] = TransactionManager(
        settings.repo, settings.staging_ttl, writeable=not settings.read_only
    )
    app.cleanup_ctx.append(_expire_transactions)
    app.on_cleanup.append(_close_pool)
    add_routes(app)
    app.router.add_get("/", landing_page)
    return app


_LINKS = {"api": f"{API}/", "openapi": f"{API}/openapi.json", "health": "/healthz"}


async def landing_page(request: web.Request) -> web.Response:
    """``GET /``: what this server is and where its API is described (HTML for browsers,
    JSON when ``Accept`` prefers it). The repository's name and dataset types are shown
    only to a client that may read it: with ``--read-access token``, anonymous visitors
    get the links alone."""
    settings = request.app[SETTINGS]
    may_read = settings.read_access == "public" or request["principal"] != "anonymous"
    body: dict[str, Any] = {"service": "butler serve", "links": dict(_LINKS)}
    if may_read:
        name, types = await request.app[POOL].read(
            lambda b: (b.config.name, sorted(t.name for t in b.dataset_types()))
        )
        body.update(repository=name, dataset_types=types)
    else:
        body["note"] = "this repository needs a bearer token with the 'read' scope"
    headers = {"Cache-Control": "no-store", "Vary": "Accept, Authorization"}
    if _prefers_json(request.headers.get("Accept", "")):
        return web.json_response(body, headers=headers)
    return web.Response(text=_landing_html(body), content_type="text/html", headers=headers)


def _prefers_json(accept: str) -> bool:
    """Whether ``Accept`` ranks JSON above HTML (a browser sends text/html first)."""
    ranks: dict[str, float] = {}
    for part in accept.split(","):
        media, _, params = part.strip().partition(";")
        quality = 1.0
        for param in params.split(";"):
            key, _, value = param.strip().partition("=")
            if key == "q":
                with contextlib.suppress(ValueError):
                    quality = float(value)
        ranks[media.strip().lower()] = quality
    json_rank = ranks.get("application/json", 0.0)
    return json_rank > 0 and json_rank >= ranks.get("text/html", 0.0)


def _landing_html(body: dict[str, Any]) -> str:
    from html import escape

    name = body.get("repository")
    title = escape(f"butler repository {name}" if name is not None else "butler serve")
    links = "".join(
        # Relative links: they still work behind a proxy that serves this under a prefix.
        f'<li><a href="{escape(href.lstrip("/"))}">{escape(href)}</a> ({label})</li>'
        for href, label in (
            (_LINKS["openapi"], "the API, described in OpenAPI 3"),
            (_LINKS["api"], "repository information"),
            (_LINKS["health"], "health check"),
        )
    )
    if "dataset_types" in body:
        types = "".join(f"<li>{escape(t)}</li>" for t in body["dataset_types"])
        types = types or "<li>(none)</li>"
        content = f"<h2>Dataset types</h2><ul>{types}</ul>"
    else:
        content = f"<p>{escape(body['note'])}.</p>"
    return (
        f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{title}</title>'
        f"</head><body><h1>{title}</h1>{content}<h2>API</h2><ul>{links}</ul>"
        "<p>Read it in Python with <code>Butler(&quot;&lt;this URL&gt;&quot;)</code>.</p>"
        "</body></html>\n"
    )


class AccessLogger(AbstractAccessLogger):
    """One line per request: client, request line, status, body bytes, seconds, request ID.

    Body bytes come from Content-Length because files go out by sendfile, which aiohttp's
    own ``%b`` does not count. Signed-URL signatures and other credentials in the query
    string are redacted, and no request header is logged, so tokens never are."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        version = request.version
        target = quote(redact_target(request.raw_path), safe="/?&=%:@,;+!$'()*~-._")
        self.logger.info(
            '%s "%s %s HTTP/%d.%d" %d body=%s %.6fs rid=%s',
            request.remote,
            request.method,
            target,
            version.major,
            version.minor,
            response.status,
            response.headers.get("Content-Length", "-"),
            time,
            response.headers.get("X-Request-ID", "-"),
        )
        counts = request.get(_COUNTED)
        if isinstance(counts, AccessCounts):  # not a request the parser refused
            counts.written += 1  # the handler flushes: the line is in the file now


def default_max_connections() -> int:
    """Half the descriptors this process may open (the rest: files being sent, uploads,
    the registry), at least 16: so slow clients can never exhaust the server's files."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return 16_384
    return min(16_384, max(16, (soft - 32) // 2))


class _Runner(web.AppRunner):
    """An AppRunner that closes connections beyond ``max_connections`` as they arrive."""

    def __init__(self, app: web.Application, max_connections: int, **kwargs: object) -> None:
        super().__init__(app, **kwargs)  # type: ignore[arg-type]
        self._max_connections = max_connections
        self._refused = 0

    async def _make_server(self) -> Server:
        server = await super()._make_server()
        accept = server.connection_made

        def connection_made(handler: object, transport: asyncio.Transport) -> None:
            accept(handler, transport)  # type: ignore[arg-type]
            if len(server.connections) > self._max_connections:
                self._refused += 1
                if self._refused in (1, 10, 100) or self._refused % 1000 == 0:
                    log.warning(
                        "%d connection(s) refused so far: over --max-connections %d",
                        self._refused,
                        self._max_connections,
                    )
                transport.close()

        # aiohttp has no hook for this; its Server calls connection_made on itself.
        setattr(server, "connection_made", connection_made)  # noqa: B010
        return server


async def _run(
    app: web.Application,
    settings: ServerSettings,
    print_url: Callable[[str], None] | None = None,
) -> None:
    runner = _Runner(
        app,
        settings.max_connections or default_max_connections(),
        access_log_class=AccessLogger,
        # Also aiohttp's only bound on reading request headers: a connection without a
        # complete request after this long is closed (slow-header clients included).
        keepalive_timeout=settings.idle_timeout,
        lingering_time=min(10.0, settings.body_timeout),
    )
    await runner.setup()
    try:
        site = web.TCPSite(runner, settings.host, settings.port)
        try:
            await site.start()
        except OSError as exc:
            # Said first and alone (no "Serving ..." line before it), as a command error.
            raise ButlerError(
                f"cannot listen on {settings.host}:{settings.port}: "
                f"{os.strerror(exc.errno) if exc.errno else exc}; "
                "stop what uses that port or choose another with --port"
            ) from exc
        if print_url:
            # Announced once listening: the real port when --port 0 asked for any.
            host, port = runner.addresses[0][:2]
            print_url(f"http://{f'[{host}]' if ':' in host else host}:{port}/")
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        await stop.wait()
    finally:
        await runner.cleanup()


def serve(settings: ServerSettings, *, print_url: Callable[[str], None] | None = None) -> None:
    """Run the server until interrupted (SIGINT/SIGTERM shut it down cleanly)."""
    app = create_app(settings)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    asyncio.run(_run(app, settings, print_url))
