"""``butler serve``: the aiohttp application, its middlewares, and how to run it."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable

from aiohttp import web

from butler.errors import ButlerError
from butler.server.api import POOL, READ_POSTS, REPO_ROOT, SETTINGS, TRANSACTIONS, add_routes
from butler.server.auth import Principal, TokenStore, bearer_token
from butler.server.pool import RepositoryPool
from butler.server.settings import ServerSettings
from butler.server.transactions import TransactionManager

log = logging.getLogger("butler.server")
TOKENS: web.AppKey[TokenStore] = web.AppKey("tokens", TokenStore)
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
ACCESS_LOG_FORMAT = '%a "%r" %s body=%{Content-Length}o %Tfs rid=%{X-Request-ID}o'
"""Access-log line: client, request line, status, body bytes, seconds, request ID. (Body bytes
come from Content-Length because files go out by sendfile, which aiohttp's %b does not count.
No request headers are logged, so tokens never are.)"""


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
        body = _error_body(request, exc.error_type, str(exc), details=exc.details)
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


def _is_write(request: web.Request) -> bool:
    return request.method not in ("GET", "HEAD", "OPTIONS") and request.path not in READ_POSTS


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """401 when a needed token is missing or unknown, 403 when it lacks the scope."""
    settings = request.app[SETTINGS]
    tokens = request.app[TOKENS]
    token = bearer_token(request.headers.get("Authorization"))
    principal: Principal | None = tokens.identify(token) if token else None
    write = _is_write(request)
    needed = "write" if write else "read"
    public = request.path == "/healthz" or request.path.endswith("/openapi.json")
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
            "the bearer token is not valid for this repository; check --token-file",
        )
    needs_token = write or (settings.read_access == "token" and not public)
    if needs_token and principal is None:
        if write and not tokens:
            message = "this server accepts no writes: it was started without --tokens"
            return _auth_error(request, 403, "WritesDisabled", message)
        message = (
            f"this repository requires a bearer token with the {needed!r} scope for "
            f"{'writes' if write else 'reads'}; pass token=... (or --token-file)"
        )
        return _auth_error(request, 401, "AuthenticationRequired", message)
    if needs_token and principal is not None and needed not in principal.scopes:
        message = f"token {principal.name!r} lacks the {needed!r} scope needed here"
        return _auth_error(request, 403, "InsufficientScope", message)
    request["principal"] = principal.name if principal else "anonymous"
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


def create_app(settings: ServerSettings) -> web.Application:
    """The repository server application (open the repository, wire the routes)."""
    tokens = TokenStore.load(settings.tokens_file) if settings.tokens_file else TokenStore.empty()
    if settings.read_access == "token" and not tokens:
        from butler.errors import RepositoryConfigError

        raise RepositoryConfigError("--read-access token needs a --tokens file")
    app = web.Application(
        middlewares=[request_id_middleware, error_middleware, auth_middleware],
        client_max_size=256 * 2**20,  # JSON bodies; uploads stream and have their own cap
    )
    app[SETTINGS] = settings
    app[REPO_ROOT] = settings.repo.resolve()
    app[TOKENS] = tokens
    app[POOL] = RepositoryPool(settings.repo, settings.read_workers, not settings.read_only)
    app[TRANSACTIONS] = TransactionManager(settings.repo, settings.staging_ttl)
    app.cleanup_ctx.append(_expire_transactions)
    app.on_cleanup.append(_close_pool)
    add_routes(app)
    return app


def serve(settings: ServerSettings, *, print_url: Callable[[str], None] | None = None) -> None:
    """Run the server until interrupted (SIGINT/SIGTERM shut it down cleanly)."""
    app = create_app(settings)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    url = f"http://{settings.host}:{settings.port}/"
    if print_url:
        print_url(url)
    web.run_app(
        app,
        host=settings.host,
        port=settings.port,
        access_log_format=ACCESS_LOG_FORMAT,
        print=None,
        handle_signals=True,
    )
