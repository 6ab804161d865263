"""send_file over a real aiohttp server on 127.0.0.1: statuses, headers and bytes on the wire."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from butler.http.conditional import format_http_date, parse_http_date
from butler.server import files
from butler.server.files import send_file

ETAG = '"sha256-0123abcd"'
OLD_MTIME = 1_600_000_000.25  # well in the past, so a Last-Modified date is a strong validator
CACHE_CONTROL = "public, max-age=31536000, immutable"
CONTENT_TYPE = "application/fits"
SIZE = 10000
DATA = bytes((i * 7 + i // 256) % 256 for i in range(SIZE))


@dataclass
class Served:
    """A running server plus the knobs its handler passes to send_file."""

    base: str
    port: int
    root: Path
    session: aiohttp.ClientSession
    options: dict[str, Any] = field(default_factory=dict)
    finished: list[str] = field(default_factory=list)  # names whose handler returned
    handler_done: asyncio.Event = field(default_factory=asyncio.Event)

    def url(self, name: str = "data.fits") -> str:
        return f"{self.base}/files/{name}"

    async def get(
        self, name: str = "data.fits", method: str = "GET", **headers: str
    ) -> tuple[int, Any, bytes]:
        async with self.session.request(
            method, self.url(name), headers={k.replace("_", "-"): v for k, v in headers.items()}
        ) as resp:
            return resp.status, resp.headers, await resp.read()


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[Served]:
    (tmp_path / "data.fits").write_bytes(DATA)
    (tmp_path / "empty.fits").write_bytes(b"")
    (tmp_path / "subdir").mkdir()
    holder: list[Served] = []

    async def handler(request: web.Request) -> web.StreamResponse:
        state = holder[0]
        name = request.match_info["name"]
        kwargs: dict[str, Any] = {
            "etag": ETAG,
            "last_modified": OLD_MTIME,
            "content_type": CONTENT_TYPE,
            "cache_control": CACHE_CONTROL,
        }
        kwargs.update(state.options)
        before = kwargs.pop("before", None)
        try:
            if before is not None:
                await before(request)
            return await send_file(request, tmp_path / name, **kwargs)
        finally:
            state.finished.append(name)
            state.handler_done.set()

    app = web.Application()
    app.router.add_route("*", "/files/{name}", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    session = aiohttp.ClientSession(auto_decompress=False)
    holder.append(Served(f"http://127.0.0.1:{port}", port, tmp_path, session))
    try:
        yield holder[0]
    finally:
        await session.close()
        await runner.cleanup()


async def raw_exchange(port: int, request: bytes) -> bytes:
    """Send bytes, read until the server closes: exactly what went over the wire."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        await writer.drain()
        return await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
        await writer.wait_closed()


def split_response(raw: bytes) -> tuple[str, dict[str, str], bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines:
        name, _, value = line.partition(":")
        assert name.lower() not in headers, f"duplicate {name}"
        headers[name.lower()] = value.strip()
    return status_line, headers, body


def parse_byteranges(body: bytes, boundary: str) -> list[tuple[dict[str, str], bytes]]:
    """Strict RFC 2046 / RFC 9110 §14.6 parsing: CRLF belongs to the next delimiter."""
    delimiter = b"\r\n--" + boundary.encode()
    assert body.startswith(delimiter[2:] + b"\r\n")
    assert body.endswith(delimiter + b"--\r\n")
    parts = []
    for chunk in body[len(delimiter) - 2 : -len(delimiter) - 4].split(delimiter):
        head, sep, payload = chunk.removeprefix(b"\r\n").partition(b"\r\n\r\n")
        assert sep
        headers = dict(
            (k.lower(), v)
            for k, _, v in (line.partition(": ") for line in head.decode().split("\r\n"))
        )
        parts.append((headers, payload))
    return parts


def boundary_of(content_type: str) -> str:
    media, _, param = content_type.partition("; ")
    assert media == "multipart/byteranges"
    name, _, value = param.partition("=")
    assert name == "boundary"
    return value


# --- whole file ------------------------------------------------------------------------------


async def test_full_get(served: Served) -> None:
    status, headers, body = await served.get()
    assert status == 200
    assert body == DATA
    assert headers["Content-Length"] == str(SIZE)
    assert headers["Content-Type"] == CONTENT_TYPE
    assert headers["Accept-Ranges"] == "bytes"
    assert headers["ETag"] == ETAG
    assert headers["Last-Modified"] == format_http_date(OLD_MTIME)
    assert headers["Cache-Control"] == CACHE_CONTROL
    assert "Content-Range" not in headers
    assert "Transfer-Encoding" not in headers


async def test_head_has_get_headers_and_no_body(served: Served) -> None:
    _, get_headers, _ = await served.get()
    status, headers, body = await served.get(method="HEAD")
    assert status == 200
    assert body == b""
    for name in (
        "Content-Length",
        "Content-Type",
        "Accept-Ranges",
        "ETag",
        "Last-Modified",
        "Cache-Control",
    ):
        assert headers[name] == get_headers[name]
    # On the wire: nothing after the header section even though Content-Length is 10000.
    raw = await raw_exchange(
        served.port, b"HEAD /files/data.fits HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    status_line, wire_headers, wire_body = split_response(raw)
    assert status_line == "HTTP/1.1 200 OK"
    assert wire_headers["content-length"] == str(SIZE)
    assert wire_body == b""


async def test_head_ignores_range(served: Served) -> None:
    # Range handling is defined for GET only; other methods MUST ignore it (§14.2).
    status, headers, body = await served.get(method="HEAD", Range="bytes=0-9")
    assert status == 200
    assert headers["Content-Length"] == str(SIZE)
    assert "Content-Range" not in headers
    status, headers, _ = await served.get(method="HEAD", Range="bytes=50000-")
    assert status == 200


async def test_empty_file(served: Served) -> None:
    status, headers, body = await served.get("empty.fits")
    assert (status, headers["Content-Length"], body) == (200, "0", b"")
    status, headers, body = await served.get("empty.fits", Range="bytes=0-0")
    assert status == 416
    assert headers["Content-Range"] == "bytes */0"
    # A suffix of an empty file is satisfiable and selects all of it: 200 with nothing.
    status, headers, body = await served.get("empty.fits", Range="bytes=-1")
    assert (status, headers["Content-Length"], body) == (200, "0", b"")


async def test_missing_file_and_directory_are_404(served: Served) -> None:
    for name in ("nope.fits", "subdir"):
        status, headers, body = await served.get(name)
        assert status == 404
        assert headers["Cache-Control"] == "no-store"
        assert body.decode().startswith("Not found: /files/")
    # A file deleted between two requests.
    (served.root / "gone.fits").write_bytes(b"x")
    assert (await served.get("gone.fits"))[0] == 200
    (served.root / "gone.fits").unlink()
    assert (await served.get("gone.fits"))[0] == 404


async def test_other_methods_are_405(served: Served) -> None:
    status, headers, body = await served.get(method="POST")
    assert status == 405
    assert headers["Allow"] == "GET, HEAD"
    assert b"GET or HEAD" in body


async def test_future_last_modified_is_clamped_to_date(served: Served) -> None:
    served.options["last_modified"] = time.time() + 86400
    _, headers, _ = await served.get()
    last_modified = parse_http_date(headers["Last-Modified"])
    date = parse_http_date(headers["Date"])
    assert last_modified is not None
    assert date is not None
    assert last_modified <= date


async def test_extra_headers(served: Served) -> None:
    served.options["extra_headers"] = {"Vary": "Authorization", "X-Checksum": "sha256:00"}
    for extra in ({}, {"Range": "bytes=0-1"}, {"If-None-Match": ETAG}, {"Range": "bytes=9999999-"}):
        _, headers, _ = await served.get(**extra)
        assert headers["Vary"] == "Authorization"
        assert headers["X-Checksum"] == "sha256:00"


async def test_reserved_extra_headers_and_bad_etag_are_rejected(tmp_path: Path) -> None:
    request = make_mocked_request("GET", "/files/x")
    path = tmp_path / "x"
    common: dict[str, Any] = {
        "last_modified": None,
        "content_type": "text/plain",
        "cache_control": "no-cache",
    }
    with pytest.raises(ValueError, match="Content-Length"):
        await send_file(request, path, etag=None, extra_headers={"Content-Length": "1"}, **common)
    with pytest.raises(ValueError, match="etag"):
        await send_file(request, path, etag="unquoted", **common)


# --- single ranges ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "start", "end"),
    [
        ("bytes=0-499", 0, 499),
        ("bytes=500-999", 500, 999),
        ("bytes=-500", 9500, 9999),  # suffix
        ("bytes=9500-", 9500, 9999),  # open-ended
        ("bytes=9990-20000", 9990, 9999),  # clipped
        ("bytes=-20000", 0, 9999),  # suffix longer than the file
        ("bytes=0-0", 0, 0),
        ("BYTES=1-1", 1, 1),
        ("bytes=20000-,5-9", 5, 9),  # one of two satisfiable: single-part
    ],
)
async def test_single_range(served: Served, header: str, start: int, end: int) -> None:
    status, headers, body = await served.get(Range=header)
    assert status == 206
    assert headers["Content-Range"] == f"bytes {start}-{end}/{SIZE}"
    assert headers["Content-Length"] == str(end - start + 1)
    assert headers["Content-Type"] == CONTENT_TYPE
    assert headers["ETag"] == ETAG
    assert headers["Cache-Control"] == CACHE_CONTROL
    assert headers["Accept-Ranges"] == "bytes"
    assert body == DATA[start : end + 1]


async def test_single_range_on_the_wire(served: Served) -> None:
    raw = await raw_exchange(
        served.port,
        b"GET /files/data.fits HTTP/1.1\r\nHost: x\r\nRange: bytes=-3\r\nConnection: close\r\n\r\n",
    )
    status_line, headers, body = split_response(raw)
    assert status_line == "HTTP/1.1 206 Partial Content"
    assert headers["content-range"] == "bytes 9997-9999/10000"
    assert headers["content-length"] == "3"
    assert body == DATA[-3:]


@pytest.mark.parametrize(
    "header", ["bytes=5-1", "bytes=abc", "items=0-10", "bytes 0-10", "bytes=0-1;2-3", ""]
)
async def test_invalid_range_is_ignored(served: Served, header: str) -> None:
    status, headers, body = await served.get(Range=header)
    assert status == 200
    assert body == DATA
    assert "Content-Range" not in headers


# --- multiple ranges -------------------------------------------------------------------------


async def test_multipart_byteranges(served: Served) -> None:
    header = "bytes= 0-999, 4500-5499, -1000"
    status, headers, body = await served.get(Range=header)
    assert status == 206
    assert "Content-Range" not in headers  # MUST NOT at the top of a multipart response
    assert headers["Content-Length"] == str(len(body))
    boundary = boundary_of(headers["Content-Type"])
    parts = parse_byteranges(body, boundary)
    expected = [(0, 999), (4500, 5499), (9000, 9999)]
    assert len(parts) == len(expected)
    for (part_headers, payload), (start, end) in zip(parts, expected, strict=True):
        assert part_headers["content-type"] == CONTENT_TYPE
        assert part_headers["content-range"] == f"bytes {start}-{end}/{SIZE}"
        assert payload == DATA[start : end + 1]


async def test_multipart_parts_follow_request_order_and_aiohttp_can_read_them(
    served: Served,
) -> None:
    header = "bytes=0-0,-1,500-700,601-999"
    async with served.session.get(served.url(), headers={"Range": header}) as resp:
        assert resp.status == 206
        reader = aiohttp.MultipartReader.from_response(resp)
        seen = []
        while (part := await reader.next()) is not None:
            assert isinstance(part, aiohttp.BodyPartReader)
            seen.append((part.headers["Content-Range"], bytes(await part.read())))
    assert seen == [
        ("bytes 0-0/10000", DATA[0:1]),
        ("bytes 9999-9999/10000", DATA[9999:]),
        ("bytes 500-700/10000", DATA[500:701]),
        ("bytes 601-999/10000", DATA[601:1000]),
    ]


async def test_multipart_on_the_wire(served: Served) -> None:
    raw = await raw_exchange(
        served.port,
        b"GET /files/data.fits HTTP/1.1\r\nHost: x\r\nRange: bytes=0-1,-2\r\n"
        b"Connection: close\r\n\r\n",
    )
    status_line, headers, body = split_response(raw)
    assert status_line == "HTTP/1.1 206 Partial Content"
    assert "transfer-encoding" not in headers
    assert int(headers["content-length"]) == len(body)
    boundary = boundary_of(headers["content-type"])
    first = f"--{boundary}\r\nContent-Type: {CONTENT_TYPE}\r\nContent-Range: bytes 0-1/10000"
    second = f"--{boundary}\r\nContent-Type: {CONTENT_TYPE}\r\nContent-Range: bytes 9998-9999/10000"
    expected = (
        f"{first}\r\n\r\n".encode()
        + DATA[:2]
        + f"\r\n{second}\r\n\r\n".encode()
        + DATA[-2:]
        + f"\r\n--{boundary}--\r\n".encode()
    )
    assert body == expected


# --- 416 and abuse limits --------------------------------------------------------------------


@pytest.mark.parametrize("header", ["bytes=10000-", "bytes=20000-30000", "bytes=-0"])
async def test_unsatisfiable_is_416(served: Served, header: str) -> None:
    status, headers, body = await served.get(Range=header)
    assert status == 416
    assert headers["Content-Range"] == f"bytes */{SIZE}"
    assert headers["Cache-Control"] == "no-store"
    assert headers["Content-Type"] == "text/plain; charset=utf-8"
    assert body.decode() == (
        "Range not satisfiable: none of the requested ranges overlaps the representation "
        "of 10000 bytes.\n"
    )


async def test_too_many_ranges_is_416_with_reason(served: Served) -> None:
    many = ",".join(f"{i * 100}-{i * 100 + 10}" for i in range(65))
    status, headers, body = await served.get(Range="bytes=" + many)
    assert status == 416
    assert headers["Content-Range"] == f"bytes */{SIZE}"
    assert body.decode() == (
        "Range not satisfiable: 65 ranges requested; at most 64 are allowed.\n"
    )
    sixty_four = ",".join(f"{i * 100}-{i * 100 + 10}" for i in range(64))
    assert (await served.get(Range="bytes=" + sixty_four))[0] == 206
    served.options["max_ranges"] = 2
    status, _, body = await served.get(Range="bytes=0-1,5-6,9-10")
    assert status == 416
    assert b"at most 2 are allowed" in body


async def test_overlapping_and_unordered_abuse_is_416(served: Served) -> None:
    status, _, body = await served.get(Range="bytes=0-,0-,0-")
    assert status == 416
    assert b"3 of the requested ranges overlap each other; at most 2" in body
    descending = ",".join(f"{i * 100}-{i * 100 + 9}" for i in range(40, 0, -1))
    status, _, body = await served.get(Range="bytes=" + descending)
    assert status == 416
    assert b"ascending order" in body


# --- If-Range --------------------------------------------------------------------------------


async def test_if_range_etag(served: Served) -> None:
    status, headers, body = await served.get(Range="bytes=0-9", If_Range=ETAG)
    assert (status, headers["Content-Range"], body) == (206, "bytes 0-9/10000", DATA[:10])
    for stale in ('"something-else"', f"W/{ETAG}", "garbage"):
        status, headers, body = await served.get(Range="bytes=0-9", If_Range=stale)
        assert status == 200, stale
        assert body == DATA
        assert "Content-Range" not in headers
    # An If-Range whose Range is unsatisfiable still gets the whole file when it fails...
    status, _, body = await served.get(Range="bytes=99999-", If_Range='"old"')
    assert (status, body) == (200, DATA)
    # ...and the 416 when it holds.
    assert (await served.get(Range="bytes=99999-", If_Range=ETAG))[0] == 416


async def test_if_range_date(served: Served) -> None:
    last_modified = format_http_date(OLD_MTIME)
    status, _, body = await served.get(Range="bytes=-5", If_Range=last_modified)
    assert (status, body) == (206, DATA[-5:])
    other = format_http_date(OLD_MTIME + 1)
    status, _, body = await served.get(Range="bytes=-5", If_Range=other)
    assert (status, body) == (200, DATA)
    earlier = format_http_date(OLD_MTIME - 1)
    assert (await served.get(Range="bytes=-5", If_Range=earlier))[0] == 200


async def test_if_range_date_of_a_just_modified_file_is_weak(
    served: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The server's clock, as send_file reads it, frozen within the Last-Modified second: the
    # date cannot be a strong validator yet (§8.8.2.2), so the whole file comes back.
    clock = [OLD_MTIME + 0.5]
    monkeypatch.setattr(files, "time", SimpleNamespace(time=lambda: clock[0]))
    if_range = format_http_date(OLD_MTIME)
    status, _, body = await served.get(Range="bytes=0-3", If_Range=if_range)
    assert (status, body) == (200, DATA)
    clock[0] = int(OLD_MTIME) + 1.0  # that second is over: the date is strong now
    status, _, body = await served.get(Range="bytes=0-3", If_Range=if_range)
    assert (status, body) == (206, DATA[:4])


async def test_if_range_date_of_a_future_mtime_is_weak(served: Served) -> None:
    # A future mtime is clamped to the response time, which makes it weak by construction.
    served.options["last_modified"] = time.time() + 3600
    status, headers, body = await served.get(Range="bytes=0-3")
    assert status == 206
    status, _, body = await served.get(Range="bytes=0-3", If_Range=headers["Last-Modified"])
    assert (status, body) == (200, DATA)


async def test_if_range_without_etag(served: Served) -> None:
    served.options["etag"] = None
    status, headers, _ = await served.get(Range="bytes=0-3", If_Range=ETAG)
    assert status == 200
    assert "ETag" not in headers


# --- preconditions ---------------------------------------------------------------------------


async def test_if_none_match_304(served: Served) -> None:
    for value in (ETAG, f"W/{ETAG}", f'"x", {ETAG}', "*"):
        status, headers, body = await served.get(If_None_Match=value)
        assert status == 304, value
        assert body == b""
        assert headers["ETag"] == ETAG
        assert headers["Cache-Control"] == CACHE_CONTROL
        assert "Content-Length" not in headers
        assert "Last-Modified" not in headers  # only useful without an ETag (§15.4.5)
    status, _, body = await served.get(If_None_Match='"x"')
    assert (status, body) == (200, DATA)
    # Preconditions come before Range (§13.2.2): a cached copy is still current.
    assert (await served.get(If_None_Match=ETAG, Range="bytes=0-1"))[0] == 304
    assert (await served.get(method="HEAD", If_None_Match=ETAG))[0] == 304


async def test_if_none_match_on_several_lines(served: Served) -> None:
    raw = await raw_exchange(
        served.port,
        b'GET /files/data.fits HTTP/1.1\r\nHost: x\r\nIf-None-Match: "a"\r\n'
        b"If-None-Match: " + ETAG.encode() + b"\r\nConnection: close\r\n\r\n",
    )
    status_line, headers, body = split_response(raw)
    assert status_line == "HTTP/1.1 304 Not Modified"
    assert body == b""


async def test_if_modified_since(served: Served) -> None:
    status, headers, body = await served.get(If_Modified_Since=format_http_date(OLD_MTIME))
    assert (status, body) == (304, b"")
    assert headers["ETag"] == ETAG
    status, _, body = await served.get(If_Modified_Since=format_http_date(OLD_MTIME - 60))
    assert (status, body) == (200, DATA)
    # Without an ETag the 304 carries Last-Modified instead.
    served.options["etag"] = None
    status, headers, _ = await served.get(If_Modified_Since=format_http_date(OLD_MTIME))
    assert status == 304
    assert headers["Last-Modified"] == format_http_date(OLD_MTIME)


async def test_if_match_412(served: Served) -> None:
    status, headers, body = await served.get(If_Match='"other"')
    assert status == 412
    assert headers["Cache-Control"] == "no-store"
    assert body.decode() == (
        f"Precondition failed: the current file (ETag {ETAG}, Last-Modified "
        f"{format_http_date(OLD_MTIME)}) does not satisfy If-Match / If-Unmodified-Since.\n"
    )
    # 412 wins over a Range and over If-None-Match.
    assert (await served.get(If_Match='"other"', Range="bytes=0-1"))[0] == 412
    assert (await served.get(If_Match='"other"', If_None_Match=ETAG))[0] == 412
    status, _, body = await served.get(If_Match=ETAG, Range="bytes=0-1")
    assert (status, body) == (206, DATA[:2])
    earlier = format_http_date(OLD_MTIME - 60)
    assert (await served.get(If_Unmodified_Since=earlier))[0] == 412
    assert (await served.get(If_Unmodified_Since=format_http_date(OLD_MTIME)))[0] == 200


# --- how the bytes are sent ------------------------------------------------------------------

SendfileSpy = list[tuple[int, int]]


def spy_on_sendfile(
    monkeypatch: pytest.MonkeyPatch,
    wrap: Callable[..., Awaitable[int]] | None = None,
) -> SendfileSpy:
    loop = asyncio.get_running_loop()
    original = loop.sendfile
    calls: SendfileSpy = []

    async def sendfile(
        transport: Any, file: Any, offset: int = 0, count: int | None = None, **kwargs: Any
    ) -> int:
        assert count is not None
        calls.append((offset, count))
        if wrap is not None:
            return await wrap(original, transport, file, offset, count, **kwargs)
        return await original(transport, file, offset, count, **kwargs)

    monkeypatch.setattr(loop, "sendfile", sendfile)
    return calls


async def test_body_goes_through_loop_sendfile(
    served: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = spy_on_sendfile(monkeypatch)
    assert (await served.get())[2] == DATA
    assert calls == [(0, SIZE)]
    calls.clear()
    assert (await served.get(Range="bytes=10-19"))[2] == DATA[10:20]
    assert calls == [(10, 10)]
    calls.clear()
    status, _, _ = await served.get(Range="bytes=0-99,-100,5000-5099")
    assert status == 206
    assert calls == [(0, 100), (9900, 100), (5000, 100)]
    calls.clear()
    await served.get(method="HEAD")
    await served.get(If_None_Match=ETAG)
    await served.get("empty.fits")
    assert calls == []


async def test_large_file_is_one_sendfile_call(
    served: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    big = 64 * 1024 * 1024
    block = os.urandom(1024 * 1024)
    with (served.root / "big.bin").open("wb") as f:
        for _ in range(64):
            f.write(block)
    calls = spy_on_sendfile(monkeypatch)
    digest = hashlib.sha256()
    received = 0
    async with served.session.get(served.url("big.bin")) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Length"] == str(big)
        async for chunk in resp.content.iter_chunked(1 << 20):
            digest.update(chunk)
            received += len(chunk)
    assert received == big
    assert digest.hexdigest() == hashlib.sha256(block * 64).hexdigest()
    # The whole body in one zero-copy call: never read into the server's memory.
    assert calls == [(0, big)]


@pytest.mark.parametrize("mode", ["disabled", "not-implemented"])
async def test_fallback_without_sendfile(
    served: Served, monkeypatch: pytest.MonkeyPatch, mode: str
) -> None:
    monkeypatch.setattr(files, "FALLBACK_CHUNK", 4096)  # several chunks per range
    reads: list[int] = []
    original_read_at = files._read_at

    def read_at(fobj: Any, offset: int, size: int) -> bytes:
        reads.append(size)
        return original_read_at(fobj, offset, size)

    monkeypatch.setattr(files, "_read_at", read_at)
    if mode == "disabled":
        monkeypatch.setattr(files, "USE_SENDFILE", False)

        async def unavailable(*args: Any, **kwargs: Any) -> int:
            raise AssertionError("sendfile must not be called")
    else:

        async def unavailable(*args: Any, **kwargs: Any) -> int:
            raise NotImplementedError  # what uvloop's loops do

    monkeypatch.setattr(asyncio.get_running_loop(), "sendfile", unavailable)
    assert (await served.get())[2] == DATA
    assert max(reads) == 4096
    assert sum(reads) == SIZE
    status, headers, body = await served.get(Range="bytes=0-5000,-5000")
    assert status == 206
    parts = parse_byteranges(body, boundary_of(headers["Content-Type"]))
    assert [p for _, p in parts] == [DATA[:5001], DATA[-5000:]]


async def test_client_disconnect_mid_download_is_quiet(
    served: Served, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    loop_errors: list[dict[str, Any]] = []
    # Unhandled errors in callbacks and tasks end up here; monkeypatch restores it afterwards.
    monkeypatch.setattr(asyncio.get_running_loop(), "call_exception_handler", loop_errors.append)
    with (served.root / "big.bin").open("wb") as f:
        f.truncate(64 * 1024 * 1024)  # sparse: quick to make, still 64 MiB to send
    calls = spy_on_sendfile(monkeypatch)
    reader, writer = await asyncio.open_connection("127.0.0.1", served.port)
    writer.write(b"GET /files/big.bin HTTP/1.1\r\nHost: x\r\n\r\n")
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK")
    await reader.readexactly(1024 * 1024)
    # Closing with unread data makes the kernel reset the connection under the sendfile.
    writer.transport.abort()
    await asyncio.wait_for(served.handler_done.wait(), 10)
    assert served.finished == ["big.bin"]
    assert calls == [(0, 64 * 1024 * 1024)]
    problems = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert problems == [], [r.getMessage() for r in problems]
    assert any("client disconnected" in r.getMessage() for r in caplog.records)
    assert loop_errors == []
    # The server carries on.
    assert (await served.get())[2] == DATA


async def test_client_gone_before_headers_is_quiet(
    served: Served, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)

    async def wait_for_disconnect(request: web.Request) -> None:
        for _ in range(500):
            if request.transport is None or request.transport.is_closing():
                return
            await asyncio.sleep(0.01)
        raise AssertionError("the client did not disconnect")

    served.options["before"] = wait_for_disconnect
    reader, writer = await asyncio.open_connection("127.0.0.1", served.port)
    writer.write(b"GET /files/data.fits HTTP/1.1\r\nHost: x\r\n\r\n")
    await writer.drain()
    writer.transport.abort()
    await asyncio.wait_for(served.handler_done.wait(), 10)
    problems = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert problems == [], [r.getMessage() for r in problems]
    assert any("client disconnected" in r.getMessage() for r in caplog.records)


async def test_file_truncated_while_sending_closes_connection(
    served: Served, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    victim = served.root / "shrinking.bin"
    victim.write_bytes(DATA)

    async def truncate_first(
        original: Any, transport: Any, file: Any, offset: int, count: int, **kwargs: Any
    ) -> int:
        os.truncate(victim, 100)
        return int(await original(transport, file, offset, count, **kwargs))

    spy_on_sendfile(monkeypatch, truncate_first)
    with pytest.raises(aiohttp.ClientPayloadError):
        await served.get("shrinking.bin")
    await asyncio.wait_for(served.handler_done.wait(), 10)
    assert any("shrank" in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
