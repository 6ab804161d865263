"""Serve one file over HTTP with RFC 9110 ranges and preconditions; the body goes by sendfile.

:func:`send_file` is the one place where a file's bytes leave the server. It knows nothing of
registries or datasets: the caller resolves the path and supplies the validators and the
``Cache-Control`` policy. The HTTP decisions come from the pure :mod:`butler.http` modules,
shared with proxyd; this module only turns them into an aiohttp response and moves bytes.

Status codes (GET; HEAD the same with no body):

* 200 whole file; also when ``Range`` is invalid or uses another unit (ignored, §14.2),
  when If-Range does not match (§13.1.5), or for a suffix range of an empty file;
* 206 one range with ``Content-Range``, or several as ``multipart/byteranges`` (§14.6);
* 304 / 412 from preconditions (§13.2.2);
* 416 with ``Content-Range: bytes */SIZE`` when no range is satisfiable, and also when the
  range set is rejected as abusive (too many, overlapping, or small and out of order): RFC
  9110 §15.5.17 names "an excessive number of small or overlapping ranges" as a 416 cause,
  so clients already treat it as "ask differently", and the body states the reason and limit;
* 404 when the file does not exist at request time, 405 for other methods.
"""

from __future__ import annotations

import asyncio
import logging
import os
import pathlib
import stat
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import BinaryIO, TypeVar

from aiohttp import web
from multidict import CIMultiDict

from butler.http.bundle import CONTENT_TYPE as BUNDLE_CONTENT_TYPE
from butler.http.bundle import BundleEntry
from butler.http.conditional import (
    EntityTag,
    evaluate_preconditions,
    format_http_date,
    if_range_allows_partial,
)
from butler.http.ranges import (
    ByteRange,
    RangeOutcome,
    content_range,
    make_boundary,
    multipart_content_type,
    multipart_layout,
    parse_range_header,
    unsatisfied_content_range,
)

__all__ = [
    "USE_SENDFILE",
    "OpenedFile",
    "open_in_thread",
    "open_regular_file",
    "close_bundle",
    "send_bundle",
    "send_file",
]

logger = logging.getLogger(__name__)

#: Send bodies with ``loop.sendfile``. Follows aiohttp's own switch (``AIOHTTP_NOSENDFILE``),
#: for file systems or kernels where sendfile misbehaves; tests flip it to cover the fallback.
USE_SENDFILE: bool = not os.environ.get("AIOHTTP_NOSENDFILE")

#: Read size of the fallback path (no sendfile): big enough for few executor round trips,
#: small enough that a slow client holds little memory.
FALLBACK_CHUNK = 256 * 1024

# Errors describe the request, not the file, and a 416 depends on the Range header, which is
# not part of a cache key: never let a shared cache store them, whatever the file's policy.
_ERROR_CACHE_CONTROL = "no-store"

# Fields send_file computes itself; letting extra_headers set them would break framing or
# contradict the validators used for the precondition decisions.
_RESERVED_FIELDS = frozenset(
    {
        "accept-ranges",
        "cache-control",
        "content-length",
        "content-range",
        "content-type",
        "etag",
        "last-modified",
        "transfer-encoding",
    }
)

_CONDITION_FIELDS = ("If-Match", "If-None-Match", "If-Modified-Since", "If-Unmodified-Since")


class _FileShrank(Exception):
    """The file ended before the promised bytes were sent (it was truncated meanwhile)."""


async def send_file(
    request: web.Request,
    file: pathlib.Path | OpenedFile,
    *,
    etag: str | None,
    last_modified: float | None,
    content_type: str,
    cache_control: str,
    max_ranges: int = 64,
    extra_headers: Mapping[str, str] | None = None,
) -> web.StreamResponse:
    """Answer a GET or HEAD for ``file`` and return the (finished) response.

    ``file`` is a path, opened here in a worker thread, or a file the caller opened with
    :func:`open_regular_file` in a thread hop it made anyway (one hop per request instead of
    two); either way it is closed. ``etag`` is a complete ETag field value (``'"abc"'``; a
    strong one, for ranges and If-Range to work), ``last_modified`` POSIX seconds,
    ``cache_control`` the policy for successful responses. ``extra_headers`` are added to
    every response (e.g. ``Vary`` or CORS fields) but may not set the fields this function
    owns (ValueError).

    The file is served from one open descriptor, so a concurrent replace of the path cannot
    mix two versions; its size is taken from the open descriptor. Range data is sent with
    ``loop.sendfile`` (zero-copy on plain TCP), falling back to chunked reads in a thread
    where the loop cannot sendfile (uvloop); on TLS transports asyncio's own sendfile does
    that fallback. A client that disconnects mid-body only produces a debug log line.
    """
    opened = file if isinstance(file, OpenedFile) else None
    try:
        extra = _checked_extra_headers(extra_headers)
        if etag is not None and EntityTag.parse(etag) is None:
            raise ValueError(f"etag must be a quoted entity-tag such as '\"abc\"', got {etag!r}")
        if request.method not in ("GET", "HEAD"):
            return _text_response(
                405,
                f"Method {request.method} is not allowed here; use GET or HEAD.",
                extra,
                Allow="GET, HEAD",
            )
        if opened is None:
            assert isinstance(file, pathlib.Path)
            opened = await open_in_thread(
                asyncio.to_thread(open_regular_file, file), lambda o: OpenedFile.close_all([o])
            )
            if opened is None:
                return _text_response(404, f"Not found: {request.path}", extra)
        return await _respond(
            request,
            opened.fobj,
            opened.size,
            etag=etag,
            last_modified=last_modified,
            content_type=content_type,
            cache_control=cache_control,
            max_ranges=max_ranges,
            extra=extra,
        )
    finally:
        OpenedFile.close_all([opened])


async def _respond(
    request: web.Request,
    fobj: BinaryIO,
    size: int,
    *,
    etag: str | None,
    last_modified: float | None,
    content_type: str,
    cache_control: str,
    max_ranges: int,
    extra: CIMultiDict[str],
) -> web.StreamResponse:
    now = time.time()
    if last_modified is not None:
        # §8.8.2.1: an origin MUST NOT send a Last-Modified later than its Date; a future
        # mtime (clock skew, a restored backup) is replaced by the current time, and the
        # preconditions are evaluated against the value actually sent.
        last_modified = min(last_modified, now)

    status = evaluate_preconditions(request.method, _condition_fields(request), etag, last_modified)
    if status == 304:
        # §15.4.5: a 304 carries the fields a 200 would have had among ETag, Cache-Control,
        # Date and Vary (Vary comes with extra_headers); Last-Modified only helps a cache
        # when there is no ETag.
        headers = CIMultiDict(extra)
        headers["Cache-Control"] = cache_control
        if etag is not None:
            headers["ETag"] = etag
        elif last_modified is not None:
            headers["Last-Modified"] = format_http_date(last_modified)
        return web.Response(status=304, headers=headers)
    if status == 412:
        # Only If-Match / If-Unmodified-Since can fail for GET and HEAD (§13.2.2 steps 1-2).
        current = [f"ETag {etag}"] if etag is not None else []
        if last_modified is not None:
            current.append(f"Last-Modified {format_http_date(last_modified)}")
        return _text_response(
            412,
            "Precondition failed: the current file"
            + (f" ({', '.join(current)})" if current else "")
            + " does not satisfy If-Match / If-Unmodified-Since.",
            extra,
        )

    headers = CIMultiDict(extra)
    headers["Accept-Ranges"] = "bytes"
    headers["Cache-Control"] = cache_control
    if etag is not None:
        headers["ETag"] = etag
    if last_modified is not None:
        headers["Last-Modified"] = format_http_date(last_modified)

    ranges = _requested_ranges(request, etag, last_modified, now)
    if ranges is not None:
        decision = parse_range_header(ranges, size, max_ranges=max_ranges)
        outcome = decision.outcome
        if outcome in (RangeOutcome.UNSATISFIABLE, RangeOutcome.REJECTED):
            # §15.5.17: a 416 to a byte-range request SHOULD carry the current length.
            return _text_response(
                416,
                f"Range not satisfiable: {decision.reason}.",
                extra,
                **{"Content-Range": unsatisfied_content_range(size), "Accept-Ranges": "bytes"},
            )
        if outcome is RangeOutcome.SATISFIABLE and len(decision.ranges) == 1:
            (only,) = decision.ranges
            headers["Content-Type"] = content_type
            headers["Content-Range"] = content_range(only, size)
            return await _stream(request, 206, headers, only.length, [(fobj, only)])
        if outcome is RangeOutcome.SATISFIABLE:
            # Several satisfiable ranges. When only one of several requested ranges survived,
            # the single-part form above is used: §14.6 permits either, and it is the one
            # every client understands. Parts keep request order and are not coalesced
            # (§14.6 SHOULD); the abuse limits already bound overlap and count.
            boundary = make_boundary()
            layout = multipart_layout(decision.ranges, size, content_type, boundary)
            headers["Content-Type"] = multipart_content_type(boundary)
            segments: list[bytes | FileRange] = []
            for part_header, part_range in layout.parts:
                segments += (part_header, (fobj, part_range))
            segments.append(layout.closing)
            return await _stream(request, 206, headers, layout.content_length, segments)
        # IGNORE: fall through to the whole file (§14.2).

    headers["Content-Type"] = content_type
    whole: list[bytes | FileRange] = [(fobj, ByteRange(0, size - 1))] if size else []
    return await _stream(request, 200, headers, size, whole)


def _requested_ranges(
    request: web.Request, etag: str | None, last_modified: float | None, now: float
) -> str | None:
    """The Range field value to honour, or None to send the whole file."""
    # §14.2: "A server MUST ignore a Range header field received with a request method
    # that is unrecognized or for which range handling is not defined", and GET is the only
    # such method. So HEAD never gets 206/416: it answers with the 200 a plain GET would get.
    if request.method != "GET":
        return None
    values = request.headers.getall("Range", [])
    if not values:
        return None
    # §13.1.5: If-Range is evaluated only with a Range; when false the Range is ignored.
    if_range = request.headers.getall("If-Range", [])
    if if_range and not if_range_allows_partial(", ".join(if_range), etag, last_modified, now=now):
        return None
    # Several Range lines would make an invalid list ("bytes=..., bytes=...") and so get the
    # header ignored, which is the safe reading of a request no client should send.
    return ", ".join(values)


def _condition_fields(request: web.Request) -> dict[str, str]:
    # Several lines of a list-based field are one comma-separated list (§5.3). For the date
    # fields that makes a list, which §13.1.3/§13.1.4 say to ignore.
    fields: dict[str, str] = {}
    for name in _CONDITION_FIELDS:
        values = request.headers.getall(name, [])
        if values:
            fields[name] = ", ".join(values)
    return fields


FileRange = tuple[BinaryIO, ByteRange]
"""A range of an open file, sent by sendfile."""


async def send_bundle(
    request: web.Request, entries: Sequence[tuple[BundleEntry, OpenedFile | None]]
) -> web.StreamResponse:
    """Answer a file-bundle request (see :mod:`butler.http.bundle`): each entry's header line,
    then the bytes of its opened file; closes the files."""
    try:
        segments: list[bytes | FileRange] = []
        for entry, opened in entries:
            segments.append(entry.encode())
            if opened is not None and entry.size:
                segments.append((opened.fobj, ByteRange(0, entry.size - 1)))
        headers = CIMultiDict({"Content-Type": BUNDLE_CONTENT_TYPE})
        headers["Cache-Control"] = _ERROR_CACHE_CONTROL  # an answer to one client's list
        length = sum(len(s) if isinstance(s, bytes) else s[1].length for s in segments)
        return await _stream(request, 200, headers, length, segments)
    finally:
        close_bundle(entries)


def close_bundle(entries: Sequence[tuple[BundleEntry, OpenedFile | None]]) -> None:
    OpenedFile.close_all(opened for _, opened in entries)


async def _stream(
    request: web.Request,
    status: int,
    headers: CIMultiDict[str],
    content_length: int,
    segments: Sequence[bytes | FileRange],
) -> web.StreamResponse:
    """Send headers, then each segment: literal bytes by write(), file ranges by sendfile."""
    response = web.StreamResponse(status=status, headers=headers)
    response.content_length = content_length
    try:
        # prepare() writes the header section, so a client gone already fails here too.
        await response.prepare(request)
        if request.method == "HEAD":
            segments = ()
        for segment in segments:
            if isinstance(segment, bytes):
                await response.write(segment)
            else:
                await _send_range(request, response, *segment)
        await response.write_eof()
    except ConnectionError as exc:
        # The client went away (reset, broken pipe, closed transport). Nothing can be sent
        # any more, and it is routine for range clients and download managers: not an error.
        logger.debug("client disconnected during %s %s: %r", request.method, request.path, exc)
        response.force_close()
    except _FileShrank:
        # The promised Content-Length can no longer be met. Closing the connection is the
        # only way left to tell the client the body is incomplete (RFC 9112 §8).
        logger.warning("file shrank while being sent for %s; closing connection", request.path)
        response.force_close()
        if request.transport is not None:
            request.transport.close()
    return response


async def _send_range(
    request: web.Request, response: web.StreamResponse, fobj: BinaryIO, r: ByteRange
) -> None:
    offset, count = r.start, r.length
    if USE_SENDFILE:
        transport = request.transport
        # loop.sendfile raises RuntimeError on a closing transport; that is a disconnect.
        if transport is None or transport.is_closing():
            raise ConnectionResetError("connection closed by the client")
        loop = asyncio.get_running_loop()
        try:
            # Waits until everything already written (headers, part header) has left the
            # transport buffer, then hands the range to the kernel: no copy into Python.
            sent = await loop.sendfile(transport, fobj, offset, count)
        except NotImplementedError:
            pass  # the loop cannot sendfile at all (e.g. uvloop): copy in chunks below
        else:
            if sent != count:
                raise _FileShrank
            return
    await _copy_chunks(response, fobj, offset, count)


async def _copy_chunks(
    response: web.StreamResponse, fobj: BinaryIO, offset: int, count: int
) -> None:
    while count > 0:
        chunk = await asyncio.to_thread(_read_at, fobj, offset, min(FALLBACK_CHUNK, count))
        if not chunk:
            raise _FileShrank
        await response.write(chunk)  # drains: memory stays at about one chunk per response
        offset += len(chunk)
        count -= len(chunk)


def _read_at(fobj: BinaryIO, offset: int, size: int) -> bytes:
    fobj.seek(offset)
    return fobj.read(size)


@dataclass(frozen=True)
class OpenedFile:
    """A regular file opened for sending, with what its descriptor says of it."""

    fobj: BinaryIO
    size: int
    mtime: float

    @staticmethod
    def close_all(files: Iterable[OpenedFile | None]) -> None:
        """Close the files that were opened (a read-only descriptor: closing does no I/O)."""
        for opened in files:
            if opened is not None:
                opened.fobj.close()


T = TypeVar("T")


async def open_in_thread(start: Awaitable[T], close: Callable[[T], None]) -> T:
    """Await ``start``, a thread's work that opens files, without ever leaking them.

    Shielded so that a cancelled request cannot abandon descriptors the thread is about to
    return: ``close`` is called on the result instead.
    """
    task = asyncio.ensure_future(start)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:

        def close_abandoned(done: asyncio.Future[T]) -> None:
            if not done.cancelled() and done.exception() is None:
                close(done.result())

        task.add_done_callback(close_abandoned)
        raise


def open_regular_file(path: pathlib.Path) -> OpenedFile | None:
    """(Blocking.) Open ``path`` for reading; None if it is missing or not a regular file."""
    # O_NONBLOCK so that a FIFO planted at the path cannot hang the thread in open(); it
    # changes nothing for regular files. O_CLOEXEC keeps the descriptor out of subprocesses.
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            os.close(fd)
            return None
        os.set_blocking(fd, True)  # back to normal for reads and sendfile
        return OpenedFile(os.fdopen(fd, "rb"), st.st_size, st.st_mtime)
    except BaseException:
        os.close(fd)
        raise


def _checked_extra_headers(extra_headers: Mapping[str, str] | None) -> CIMultiDict[str]:
    headers: CIMultiDict[str] = CIMultiDict(extra_headers or {})
    clash = sorted({name for name in headers if name.lower() in _RESERVED_FIELDS})
    if clash:
        raise ValueError(f"extra_headers may not set {', '.join(clash)}; send_file sets them")
    return headers


def _text_response(
    status: int, message: str, extra: CIMultiDict[str], **fields: str
) -> web.Response:
    headers = CIMultiDict(extra)
    headers.update(fields)
    headers["Cache-Control"] = _ERROR_CACHE_CONTROL
    return web.Response(
        status=status,
        text=message + "\n",
        content_type="text/plain",
        charset="utf-8",
        headers=headers,
    )
