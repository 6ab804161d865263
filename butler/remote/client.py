"""HTTP access to a repository server (or a proxy in front of one): one aiohttp session.

Requests share one session per event loop with a bounded connection pool, so hundreds of
concurrent reads reuse a few keep-alive connections. Server errors come back as the same
exception classes the server raised (their ``error_type`` crosses the wire); transport
failures become :class:`~butler.errors.RemoteUnavailableError` naming the server.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import weakref
from collections.abc import AsyncGenerator, AsyncIterator, Collection, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from butler.errors import ButlerError, CorruptFileError, RemoteUnavailableError
from butler.http.errors import raise_for_error
from butler.http.ranges import (
    MultipartError,
    multipart_boundary,
    multipart_parts,
    parse_content_range,
)
from butler.io.source import ByteRange, merge_ranges
from butler.remote import limits
from butler.remote.api import API, Params, header_fields, timed_out, unreachable

USER_AGENT = "butler-client/1"


def _read_token_file(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError as exc:
        raise ButlerError(
            f"cannot read the token file {path}: {exc.strerror or exc}; pass token_file= "
            "(Python) or --token-file (command line) a file holding the bearer token"
        ) from exc


@dataclass(frozen=True)
class ClientSettings:
    """How a remote butler talks to its server."""

    url: str
    token: str | None = None
    max_connections: int = 32
    """Connections to the server at most; concurrent requests beyond this wait for one."""
    connect_timeout: float = 10.0
    read_timeout: float = 300.0
    max_ranges: int = 200
    """Ranges per request (the server's limit, read from its info)."""
    range_gap: int = 4096
    """Ranges closer than this are fetched as one, trading a few bytes for fewer parts."""

    @classmethod
    def from_args(
        cls,
        url: str,
        token: str | None = None,
        token_file: str | os.PathLike[str] | None = None,
        **options: Any,
    ) -> ClientSettings:
        if token is None and token_file is not None:
            token = _read_token_file(Path(token_file).expanduser())
        if token is None:
            token = os.environ.get("BUTLER_TOKEN") or None
        return cls(url=url.rstrip("/") + "/", token=token, **options)


def _abandon_session(session: aiohttp.ClientSession, loop: asyncio.AbstractEventLoop) -> None:
    """Close a session its owner never closed (called by a finalizer: no awaiting here).

    On a loop running in another thread (a sync butler's I/O thread) it is closed there;
    otherwise its connections are closed at once, without the closing handshake that
    ``await session.close()`` would wait for (there may be no loop left to wait on).
    """
    if session.closed:
        return
    with contextlib.suppress(Exception):
        if loop.is_running() and not _in_thread_of(loop):
            asyncio.run_coroutine_threadsafe(session.close(), loop).result(timeout=10)
            return
    connector = session.connector
    session.detach()
    if connector is not None:
        with contextlib.suppress(Exception):
            # aiohttp's synchronous part of ``connector.close()``: marks it closed (so it
            # does not warn) and closes the transports (the loop, if it runs again,
            # finishes closing the sockets).
            connector._close()


async def _closed_with_loop(session: aiohttp.ClientSession) -> AsyncGenerator[None, None]:
    """Suspended while ``session`` lives. When its event loop ends first (``asyncio.run``
    closes suspended async generators then), it closes the session on that loop, cleanly:
    an async client a script never closed leaves no connection open behind it."""
    try:
        yield
    finally:
        await session.close()


def _in_thread_of(loop: asyncio.AbstractEventLoop) -> bool:
    try:
        return asyncio.get_running_loop() is loop
    except RuntimeError:
        return False


class _Counts:
    """Connections opened and requests sent by one client's sessions."""

    def __init__(self) -> None:
        self.connections = 0
        self.requests = 0

    async def count_connection(self, *_: Any) -> None:
        self.connections += 1

    async def count_request(self, *_: Any) -> None:
        self.requests += 1


class RepositoryClient:
    """Requests to one server, on one session bound to the running event loop."""

    def __init__(self, settings: ClientSettings) -> None:
        self.settings = settings
        self._session: aiohttp.ClientSession | None = None
        self._session_lock = asyncio.Lock()
        self._finalizer: weakref.finalize[Any, Any] | None = None
        self._keeper: AsyncGenerator[None, None] | None = None
        # Counted by the session's trace callbacks; kept apart from ``self`` so that the
        # session (held by the finalizer) does not keep this client alive.
        self._counts = _Counts()

    @property
    def connections_opened(self) -> int:
        """TCP connections opened so far (requests beyond that reused a kept-alive one)."""
        return self._counts.connections

    @property
    def requests_sent(self) -> int:
        return self._counts.requests

    @property
    def base_url(self) -> str:
        return self.settings.url

    def url(self, path: str) -> str:
        return self.settings.url + path.lstrip("/")

    async def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            async with self._session_lock:
                if self._session is None or self._session.closed:
                    headers = header_fields(USER_AGENT, self.settings.token)
                    trace = aiohttp.TraceConfig()
                    trace.on_connection_create_end.append(self._counts.count_connection)
                    trace.on_request_start.append(self._counts.count_request)
                    self._session = aiohttp.ClientSession(
                        headers=headers,
                        trace_configs=[trace],
                        connector=aiohttp.TCPConnector(
                            limit=self.settings.max_connections, ttl_dns_cache=300
                        ),
                        timeout=aiohttp.ClientTimeout(
                            total=None,
                            sock_connect=self.settings.connect_timeout,
                            sock_read=self.settings.read_timeout,
                        ),
                        raise_for_status=False,
                    )
                    # A client nobody closed still closes its connections when it is
                    # collected or the interpreter exits (no "Unclosed client session").
                    if self._finalizer is not None:  # the last session was closed already
                        self._finalizer.detach()
                    self._finalizer = weakref.finalize(
                        self, _abandon_session, self._session, asyncio.get_running_loop()
                    )
                    self._keeper = _closed_with_loop(self._session)
                    await anext(self._keeper)
        return self._session

    async def close(self) -> None:
        if self._finalizer is not None:
            self._finalizer.detach()
            self._finalizer = None
        if self._keeper is not None:
            keeper, self._keeper = self._keeper, None
            await keeper.aclose()  # closes the session
        if self._session is not None and not self._session.closed:
            await self._session.close()
        self._session = None

    @asynccontextmanager
    async def request(
        self, method: str, path: str, *, passing: Collection[int] = (), **kwargs: Any
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        """One request; an error status raises (the server's own class), but for those in
        ``passing``, which the caller reads as an answer."""
        url = path if path.startswith(("http://", "https://")) else self.url(path)
        session = await self.session()
        try:
            async with session.request(method, url, **kwargs) as response:
                if response.status >= 400 and response.status not in passing:
                    raise_for_error(response.status, await read_answer(response, url), url)
                yield response
        except aiohttp.ClientConnectionError as exc:
            raise unreachable(self.base_url, exc) from exc
        except TimeoutError as exc:
            raise timed_out(self.base_url, method, url) from exc

    # -- the API (a transport of butler.remote.api.RepositoryAPI) ----------------------------

    async def get_json(self, path: str, params: Params | None = None) -> Any:
        async with self.request("GET", API + path, params=list(params or [])) as response:
            return await json_answer(response)

    async def post_json(self, path: str, body: Any) -> Any:
        async with self.request("POST", API + path, json=body) as response:
            return await json_answer(response)

    async def delete(self, path: str) -> None:
        async with self.request("DELETE", API + path):
            pass

    async def upload(self, path: str, file: Path, checksum: str) -> Any:
        headers = {"X-Checksum": checksum, "Content-Type": "application/octet-stream"}
        with open(file, "rb") as body:  # noqa: ASYNC230 - aiohttp streams it in its executor
            async with self.request("PUT", API + path, data=body, headers=headers) as resp:
                return await json_answer(resp)

    # -- file bytes -----------------------------------------------------------------------

    async def fetch_ranges(self, file_path: str, ranges: Sequence[ByteRange]) -> list[bytes]:
        """Bytes of sorted, disjoint ``(offset, length)`` ranges of one file.

        Nearby ranges are merged (``range_gap``), then sent as few multi-range requests as
        the server's ``max_ranges`` allows, concurrently.
        """
        wanted = merge_ranges(ranges, gap=self.settings.range_gap)
        batches = [
            wanted[i : i + self.settings.max_ranges]
            for i in range(0, len(wanted), self.settings.max_ranges)
        ]
        fetched: dict[int, bytes] = {}
        for result in await asyncio.gather(*(self._fetch_batch(file_path, b) for b in batches)):
            fetched.update(result)
        out = []
        for offset, length in ranges:
            for start, length_merged in wanted:
                if start <= offset and offset + length <= start + length_merged:
                    chunk = fetched[start]
                    out.append(chunk[offset - start : offset - start + length])
                    break
        return out

    async def _fetch_batch(self, file_path: str, batch: Sequence[ByteRange]) -> dict[int, bytes]:
        spec = ",".join(f"{o}-{o + n - 1}" for o, n in batch)
        url = "files/" + file_path
        async with self.request("GET", url, headers={"Range": f"bytes={spec}"}) as response:
            if response.status == 200:
                return await _cut_from_whole(response, batch, url)
            content_type = response.headers.get("Content-Type", "")
            if content_type.startswith("multipart/byteranges"):
                return await _read_multipart(response, batch, url)
            content_range = parse_content_range(response.headers.get("Content-Range", ""))
            if content_range is None or content_range.start is None:
                raise CorruptFileError(f"{url}: 206 without a usable Content-Range")
            body = await response.read()
            return _assign_parts([(content_range.start, body)], batch, url)

    async def file_served(self, file_path: str) -> bool:
        """Whether the server serves a file now (a HEAD request: no bytes move)."""
        async with self.request("HEAD", "files/" + file_path, passing=(404, 410)) as response:
            return response.status < 400

    async def download(self, file_path: str, destination: Path) -> str:
        """Stream a whole file to ``destination``; returns its ``sha256:`` checksum."""
        import hashlib

        import aiofiles

        digest = hashlib.sha256()
        async with (
            self.request("GET", "files/" + file_path) as response,
            aiofiles.open(destination, "wb") as out,
        ):
            async for chunk in response.content.iter_chunked(1 << 20):
                digest.update(chunk)
                await out.write(chunk)
        return "sha256:" + digest.hexdigest()


async def read_answer(response: aiohttp.ClientResponse, url: str) -> bytes:
    """The body of an API answer, refused past ``limits.MAX_ANSWER_BYTES`` (before reading
    it, when its length is declared): a server must not make the client hold what it likes."""
    limit = limits.MAX_ANSWER_BYTES
    declared = response.content_length
    if declared is not None and declared > limit:
        raise limits.answer_too_large(url, limit)
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.content.iter_any():
        size += len(chunk)
        if size > limit:
            raise limits.answer_too_large(url, limit)
        chunks.append(chunk)
    return b"".join(chunks)


async def json_answer(response: aiohttp.ClientResponse) -> Any:
    """The JSON of an API answer (see :func:`read_answer`)."""
    url = str(response.url)
    body = await read_answer(response, url)
    try:
        return json.loads(body)
    except ValueError:
        raise RemoteUnavailableError(
            f"{url} answered {response.status} with no JSON; is it a butler server?"
        ) from None


async def _read_multipart(
    response: aiohttp.ClientResponse, batch: Sequence[ByteRange], url: str
) -> dict[int, bytes]:
    """The parts of a multipart/byteranges answer, read whole and cut by their
    Content-Range lengths (aiohttp's MultipartReader relies on a deprecated stream call,
    and the parts are held in memory all the same)."""
    boundary = multipart_boundary(response.headers.get("Content-Type", ""))
    if boundary is None:
        raise CorruptFileError(f"{url}: a multipart answer without its boundary")
    try:
        found = multipart_parts(boundary, await response.read())
    except MultipartError as exc:
        raise CorruptFileError(f"{url}: {exc}") from None
    return _assign_parts([(r.start, data) for r, data in found], batch, url)


async def _cut_from_whole(
    response: aiohttp.ClientResponse, batch: Sequence[ByteRange], url: str
) -> dict[int, bytes]:
    """The ranges of ``batch`` cut from a whole file, as it streams: the answer of a server
    (or a proxy in between) that ignored the Range header. Only the bytes asked for are
    kept, and reading stops after the last of them, so a cutout of a huge file costs the
    client no more memory than the cutout."""
    kept = {offset: bytearray() for offset, _ in batch}
    last = max(offset + length for offset, length in batch)
    position = 0
    async for chunk in response.content.iter_any():
        end = position + len(chunk)
        for offset, length in batch:
            lo, hi = max(offset, position), min(offset + length, end)
            if lo < hi:
                kept[offset] += chunk[lo - position : hi - position]
        position = end
        if position >= last:
            response.close()  # the rest is not needed: do not read it to reuse the connection
            break
    for offset, length in batch:
        if len(kept[offset]) < length:
            raise CorruptFileError(f"{url}: the server did not send bytes {offset}+{length}")
    return {offset: bytes(data) for offset, data in kept.items()}


def _assign_parts(
    parts: Sequence[tuple[int, bytes]], batch: Sequence[ByteRange], url: str
) -> dict[int, bytes]:
    """Map each requested range to its bytes from the parts received (servers may coalesce)."""
    result: dict[int, bytes] = {}
    for offset, length in batch:
        for start, data in parts:
            if start <= offset and offset + length <= start + len(data):
                result[offset] = data[offset - start : offset - start + length]
                break
        else:
            raise CorruptFileError(f"{url}: the server did not send bytes {offset}+{length}")
    return result
