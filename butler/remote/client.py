"""HTTP access to a repository server (or a proxy in front of one): one aiohttp session.

Requests share one session per event loop with a bounded connection pool, so hundreds of
concurrent reads reuse a few keep-alive connections. Server errors come back as the same
exception classes the server raised (their ``error_type`` crosses the wire); transport
failures become :class:`~butler.errors.RemoteUnavailableError` naming the server.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from multidict import CIMultiDict

from butler.errors import CorruptFileError, RemoteUnavailableError
from butler.http.errors import raise_for_error
from butler.http.ranges import parse_content_range
from butler.io.source import ByteRange, merge_ranges
from butler.remote.limits import Pages

API = "api/v1"


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
    page_size: int = 1000
    """Rows per page of a listing or query (the server's largest page, read from its info):
    a page is a request, and the server runs the query again for each."""
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
            token = Path(token_file).read_text().strip()
        if token is None:
            token = os.environ.get("BUTLER_TOKEN") or None
        return cls(url=url.rstrip("/") + "/", token=token, **options)


class RepositoryClient:
    """Requests to one server, on one session bound to the running event loop."""

    def __init__(self, settings: ClientSettings) -> None:
        self.settings = settings
        self._session: aiohttp.ClientSession | None = None
        self._session_lock = asyncio.Lock()
        self.connections_opened = 0
        """TCP connections opened so far (requests beyond that reused a kept-alive one)."""
        self.requests_sent = 0

    @property
    def base_url(self) -> str:
        return self.settings.url

    def url(self, path: str) -> str:
        return self.settings.url + path.lstrip("/")

    async def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            async with self._session_lock:
                if self._session is None or self._session.closed:
                    headers = {"User-Agent": "butler-client/1"}
                    if self.settings.token:
                        headers["Authorization"] = f"Bearer {self.settings.token}"
                    trace = aiohttp.TraceConfig()
                    trace.on_connection_create_end.append(self._count_connection)
                    trace.on_request_start.append(self._count_request)
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
        return self._session

    async def _count_connection(self, *_: Any) -> None:
        self.connections_opened += 1

    async def _count_request(self, *_: Any) -> None:
        self.requests_sent += 1

    async def close(self) -> None:
        if self._session is not None and not self._session.closed:
            await self._session.close()
        self._session = None

    @asynccontextmanager
    async def request(
        self, method: str, path: str, **kwargs: Any
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        url = path if path.startswith(("http://", "https://")) else self.url(path)
        session = await self.session()
        try:
            async with session.request(method, url, **kwargs) as response:
                if response.status >= 400:
                    raise_for_error(response.status, await response.read(), url)
                yield response
        except aiohttp.ClientConnectionError as exc:
            raise RemoteUnavailableError(
                f"cannot reach the repository at {self.base_url}: {exc}"
            ) from exc
        except TimeoutError as exc:
            raise RemoteUnavailableError(
                f"the repository at {self.base_url} did not answer in time ({method} {url})"
            ) from exc

    async def get_json(self, path: str, params: Sequence[tuple[str, str]] | None = None) -> Any:
        async with self.request("GET", f"{API}/{path}", params=list(params or [])) as response:
            return await response.json()

    async def post_json(self, path: str, body: Any) -> Any:
        async with self.request("POST", f"{API}/{path}", json=body) as response:
            return await response.json()

    async def delete(self, path: str) -> None:
        async with self.request("DELETE", f"{API}/{path}"):
            pass

    async def upload(self, path: str, file: Path, checksum: str) -> Any:
        headers = {"X-Checksum": checksum, "Content-Type": "application/octet-stream"}
        with open(file, "rb") as body:  # noqa: ASYNC230 - aiohttp streams it in its executor
            async with self.request("PUT", f"{API}/{path}", data=body, headers=headers) as resp:
                return await resp.json()

    async def paginate(
        self, path: str, key: str, params: Sequence[tuple[str, str]], limit: int | None
    ) -> list[Any]:
        """Every item of a paginated listing (up to ``limit``)."""
        items: list[Any] = []
        pages = Pages(self.url(f"{API}/{path}"))
        while True:
            page_size = self.settings.page_size
            if limit is not None:
                page_size = min(page_size, limit - len(items))
            page = await self.get_json(
                path, [*params, ("limit", str(page_size)), ("offset", str(pages.offset))]
            )
            rows = pages.rows_of(page, key)
            items.extend(rows)
            if (limit is not None and len(items) >= limit) or not pages.follow(
                page, rows, page_size
            ):
                return items

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
                # The server ignored the Range header: slice what was asked from the whole.
                body = await response.read()
                return {o: body[o : o + n] for o, n in batch}
            content_type = response.headers.get("Content-Type", "")
            if content_type.startswith("multipart/byteranges"):
                return await _read_multipart(response, batch, url)
            content_range = parse_content_range(response.headers.get("Content-Range", ""))
            if content_range is None or content_range.start is None:
                raise CorruptFileError(f"{url}: 206 without a usable Content-Range")
            body = await response.read()
            return _assign_parts([(content_range.start, body)], batch, url)

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


async def _read_multipart(
    response: aiohttp.ClientResponse, batch: Sequence[ByteRange], url: str
) -> dict[int, bytes]:
    reader = aiohttp.MultipartReader(CIMultiDict(response.headers), response.content)
    parts: list[tuple[int, bytes]] = []
    while True:
        part = await reader.next()
        if part is None:
            break
        assert isinstance(part, aiohttp.BodyPartReader)
        content_range = parse_content_range(part.headers.get("Content-Range", ""))
        if content_range is None or content_range.start is None:
            raise CorruptFileError(f"{url}: a multipart part lacks its Content-Range")
        parts.append((content_range.start, bytes(await part.read(decode=False))))
    return _assign_parts(parts, batch, url)


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


def data_id_json(data_id: Mapping[str, Any]) -> str:
    """A data ID as JSON, with numpy scalars turned into plain numbers."""
    return json.dumps({k: (v.item() if hasattr(v, "item") else v) for k, v in data_id.items()})
