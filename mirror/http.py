"""HTTP downloads for the mirror: one blocking connection per worker thread.

A download appends to ``<dest>/.mirror-partial/<uuid>.part``; after an interruption the next
pull resumes it with a Range request guarded by ``If-Range`` (a changed file restarts from
zero instead of splicing versions). Bytes are hashed as they are written and the file is
handed on only when its SHA-256 equals the registry's; transient failures (connection
errors, timeouts, 408, 425, 429, 5xx) are retried with exponential backoff, honouring
Retry-After.

Why threads and not the event loop: on the mirror bench (2,000 x 1 MiB from a local
server, 8 at a time, 2 cores shared with the server) the pull is CPU-bound, and an event
loop runs Python for every readable event (aiohttp: its protocol, parser, stream reader, a
future and a task step per chunk, and two copies of each chunk; libcurl through pycurl: a
Python callback per 16 KiB piece). Here each of ``jobs`` threads owns a keep-alive
``http.client`` connection and a page-aligned 1 MiB buffer, and
:meth:`HTTPResponse.readinto` fills the buffer straight from the socket in C, with the GIL
released during each ``recv``: one Python call per MiB. The thread then hashes the MiB and
writes it to disk (both release the GIL too). The event loop only hands out files and
receives them done.

Small fresh files go several to a request, in bundles (:mod:`butler.http.bundle`), where the
server offers them: a request costs the server about a millisecond of CPU whatever the size,
and on the bench one request per 1 MiB file made the server the busiest process (3.2-4.5 s
of CPU per 2,000 files, against 1.4-2.9 s for bundles of 4 to 32 files). Through a caching
proxy (``--via``, or one that marks its answers) each file is one GET, which the proxy
caches; :attr:`mirror.source.HttpSource.bundle_files` decides. The measurements are in
``bench/RESULTS.md``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import http.client
import json
import random
import socket
import struct
import threading
import time
from collections.abc import Collection, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urljoin

from butler.http.bundle import CONTENT_TYPE as BUNDLE_CONTENT_TYPE
from butler.http.bundle import MAX_FILES as MAX_BUNDLE_FILES
from butler.http.bundle import MAX_HEADER as MAX_BUNDLE_HEADER
from butler.http.bundle import BundleEntry, BundleFormatError
from butler.http.conditional import parse_http_date
from butler.remote.api import header_fields
from butler.remote.limits import is_disk_full
from mirror.connections import (
    MAX_REDIRECTS,
    NETWORK_ERRORS,
    REDIRECT_STATUSES,
    USER_AGENT,
    KeptAlive,
    UnsupportedURLError,
    redirected_headers,
)
from mirror.partfile import PartFile, aligned_buffer
from mirror.plan import Item
from mirror.transfer import (
    BundleResult,
    Progress,
    TransferError,
    TransferSettings,
    complete,
    disk_failure,
    partial_path,
    resume_point,
)

RETRYABLE_STATUSES = {408, 425, 429, 500, 502, 503, 504}
ERROR_TEXT = 200
"""Bytes of an error answer's body kept for the message."""
GATHER = 1 << 20
"""Body bytes gathered before they are hashed and written (see :meth:`HttpFetcher._receive`)."""
REPORT_BYTES = 8 << 20
REPORT_SECONDS = 0.25
BUNDLE_PATH = "api/v1/files/bundle"
BUNDLE_FILE_BYTES = 4 << 20
"""Files up to this size are fetched in bundles (several to a request); larger ones alone."""
BUNDLE_BYTES = 8 << 20
"""Bytes of files in one bundle (at most; a bundle has at least one file).

Bigger bundles save requests, smaller ones keep the downloads balanced at the end of a pull
and lose less when a connection breaks. On the bench (2,000 files of 1 MiB, a bare client,
three rounds each) bundles of 4 files took 3.6-3.9 s, of 8 files 3.3-3.4 s, of 16 files
3.1-3.7 s and of 32 files 3.0-3.4 s."""


class Retry(Exception):
    """A transient failure: try again after ``after`` seconds (None: the usual backoff)."""

    def __init__(self, error: Exception, after: float | None) -> None:
        self.error = error
        self.after = after
        super().__init__(str(error))


def retry_after(value: str | None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or an HTTP date)."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:  # not delta-seconds: an HTTP-date
        when = parse_http_date(value.strip())
        return None if when is None else max(0.0, when - time.time())


def range_start(content_range: str | None) -> int | None:
    """The first byte of a ``Content-Range: bytes a-b/n`` answer (None if it has none)."""
    if not content_range or not content_range.startswith("bytes "):
        return None
    first = content_range[6:].split("-", 1)[0].strip()
    return int(first) if first.isdigit() else None


class Tally:
    """Byte counts from a download thread, handed to the event loop's ``progress`` a few at
    a time: every REPORT_BYTES, or REPORT_SECONDS, and at the end (:meth:`flush`).

    Each hand-over wakes the loop and takes the GIL from the downloads; one per MiB was
    2,000 wake-ups per pull on the bench.
    """

    def __init__(self, progress: Progress) -> None:
        self._loop = asyncio.get_running_loop()
        self._progress = progress
        self._pending = 0
        self._last = time.monotonic()

    def __call__(self, count: int) -> None:
        self._pending += count
        if abs(self._pending) >= REPORT_BYTES or time.monotonic() - self._last >= REPORT_SECONDS:
            self.flush()

    def flush(self) -> None:
        if self._pending:
            self._loop.call_soon_threadsafe(self._progress, self._pending)
            self._pending = 0
        self._last = time.monotonic()


@dataclass
class Download:
    """One attempt's state: the bytes on disk so far and their running hash."""

    item: Item
    target: Path
    have: int
    digest: hashlib._Hash
    report: Tally
    """Told (in the thread) counts of new bytes; negative: bytes discounted."""


@dataclass
class _Worker:
    """What one download thread keeps between files: its connections and its buffer."""

    connections: KeptAlive
    buffer: memoryview = field(default_factory=lambda: memoryview(aligned_buffer(GATHER)))


class HttpFetcher:
    """Downloads files from ``<base>files/<path>`` with resume and verification."""

    def __init__(
        self,
        base_url: str,
        token: str | None,
        settings: TransferSettings,
        partials: Collection[str] | None = None,
        bundle_files: int = 0,
    ) -> None:
        """``partials``: names of the partial files there are (None: unknown, look for each).
        Knowing them spares the event loop a ``stat`` of each new target: in a directory
        where the download threads create files, a lookup waits for their creations (the
        directory's lock), measured at ~100 us each on the bench.

        ``bundle_files``: small files to ask for per request, as the server offers (see
        :attr:`mirror.source.HttpSource.bundle_files`); 0 for one request per file.
        """
        self.base_url = base_url.rstrip("/") + "/"
        self.settings = settings
        self._may_exist = None if partials is None else set(partials)
        self._headers = header_fields(USER_AGENT, token)
        self._threads: ThreadPoolExecutor | None = None
        self._local = threading.local()
        self._open: set[http.client.HTTPConnection] = set()
        self._open_lock = threading.Lock()
        self._closing = False
        self._bundle_files = min(bundle_files, MAX_BUNDLE_FILES)
        """Files per bundle (0: one request per file; also once a bundle was refused)."""
        self.requests = 0

    async def __aenter__(self) -> HttpFetcher:
        self._closing = False
        self._threads = ThreadPoolExecutor(self.settings.jobs, thread_name_prefix="mirror-http")
        return self

    async def __aexit__(self, *exc: object) -> None:
        # Downloads cancelled by an interruption may still be reading: shutting their sockets
        # down ends each read at once, and the thread keeps what it received for the resume.
        with self._open_lock:
            self._closing = True
            for connection in self._open:
                if connection.sock is not None:
                    with contextlib.suppress(OSError):
                        connection.sock.shutdown(socket.SHUT_RDWR)
        if self._threads is not None:
            await asyncio.to_thread(self._threads.shutdown)
            self._threads = None
        with self._open_lock:
            for connection in self._open:
                connection.close()
            self._open.clear()

    #: How the fetcher waits between attempts (a test sees the delays through it).
    _wait = staticmethod(asyncio.sleep)

    async def fetch(self, item: Item, target: Path, progress: Progress) -> None:
        """Bring ``target`` to the complete, verified file of ``item`` (resuming it)."""
        last_error: Exception | None = None
        for attempt in range(self.settings.attempts):
            try:
                await self._attempt(item, target, progress)
                return
            except Retry as retry:
                last_error = retry.error
                if attempt + 1 == self.settings.attempts:
                    break  # no wait before giving up
                delay = retry.after
                if delay is None:
                    delay = min(
                        self.settings.max_backoff, self.settings.backoff * 2**attempt
                    ) * random.uniform(0.8, 1.2)  # noqa: S311
                await self._wait(delay)
        raise TransferError(f"gave up after {self.settings.attempts} attempts: {last_error}")

    async def _attempt(self, item: Item, target: Path, progress: Progress) -> None:
        assert self._threads is not None, "use the fetcher as an async context manager"
        size = item.file.size
        if self._may_exist is None or target.name in self._may_exist:
            have, digest = await resume_point(target, size)
        else:
            have, digest = 0, hashlib.sha256()
        on_disk = have
        if have < size:  # else finished by an earlier pull: only verified again below
            if self._may_exist is not None:
                self._may_exist.add(target.name)
            loop = asyncio.get_running_loop()
            self.requests += 1
            download = Download(item, target, have, digest, Tally(progress))
            on_disk = await loop.run_in_executor(self._threads, self._download, download)
            digest = download.digest
        if not complete(target, size, on_disk, digest, item.file.checksum):
            progress(-on_disk)  # deleted, to be fetched again: its bytes are not progress
            raise Retry(
                TransferError(
                    f"{item.file.path}: the downloaded bytes do not match the recorded checksum; "
                    "fetching it again"
                ),
                None,
            )

    def bundles(self, items: Sequence[Item], dest: Path) -> list[list[Item]]:
        """The items grouped for :meth:`fetch_bundle`: fresh files up to BUNDLE_FILE_BYTES
        go several to a request (see :mod:`butler.http.bundle`), others alone."""
        groups: list[list[Item]] = []
        group: list[Item] = []
        group_bytes = 0
        for item in items:
            size = item.file.size
            if (
                not self._bundle_files
                or self._may_exist is None  # partial files unknown: each may need a Range
                or partial_path(dest, item).name in self._may_exist
                or size > BUNDLE_FILE_BYTES
            ):
                groups.append([item])
                continue
            full = len(group) == self._bundle_files or group_bytes + size > BUNDLE_BYTES
            if group and full:
                groups.append(group)
                group, group_bytes = [], 0
            group.append(item)
            group_bytes += size
        if group:
            groups.append(group)
        return groups

    async def fetch_bundle(
        self, items: list[Item], targets: list[Path], progress: Progress
    ) -> BundleResult:
        """Fetch fresh files in one request; those it does not bring (the server has no
        bundles, the connection broke, a file differs) are for :meth:`fetch`."""
        assert self._threads is not None, "use the fetcher as an async context manager"
        if not self._bundle_files:
            return BundleResult()
        if self._may_exist is not None:  # from now on these may have partial files to resume
            self._may_exist.update(target.name for target in targets)
        loop = asyncio.get_running_loop()
        self.requests += 1
        return await loop.run_in_executor(
            self._threads, self._download_bundle, items, targets, Tally(progress)
        )

    # --- in a download thread -----------------------------------------------------------

    def _download_bundle(
        self, items: list[Item], targets: list[Path], report: Tally
    ) -> BundleResult:
        try:
            return self._receive_bundle(items, targets, report)
        finally:
            report.flush()

    def _receive_bundle(
        self, items: list[Item], targets: list[Path], report: Tally
    ) -> BundleResult:
        url = self.base_url + BUNDLE_PATH
        body = json.dumps({"paths": [item.file.path for item in items]}).encode()
        headers = {**self._headers, "Content-Type": "application/json"}
        try:
            response = self._request(url, headers, body)
        except Retry:
            return BundleResult()  # each file's own request retries
        media_type = (response.getheader("Content-Type") or "").split(";")[0].strip()
        if response.status != 200 or media_type != BUNDLE_CONTENT_TYPE:
            if response.status in (200, 404, 405, 501):  # a server without bundles
                self._bundle_files = 0
            self._finish(url, response)
            return BundleResult()
        result = BundleResult()
        try:
            for item, target in zip(items, targets, strict=True):
                if self._closing or not self._bundle_file(
                    url, response, item, target, report, result
                ):
                    break
        finally:
            if not response.isclosed():  # stopped early: the rest of the body is unread
                self._forget(url)
        return result

    def _bundle_file(
        self,
        url: str,
        response: http.client.HTTPResponse,
        item: Item,
        target: Path,
        report: Tally,
        result: BundleResult,
    ) -> bool:
        """Receive a bundle's next file (into ``result``); False if the rest cannot be read."""
        try:
            entry = BundleEntry.decode(response.readline(MAX_BUNDLE_HEADER))
        except (*NETWORK_ERRORS, BundleFormatError):
            return False
        if entry.path != item.file.path:
            return False  # not the file asked for: a broken answer
        if entry.error is not None:
            return True  # its own request will tell why
        if entry.size != item.file.size:
            return False  # changed at the source: its own request will tell
        download = Download(item, target, 0, hashlib.sha256(), report)
        try:
            on_disk = self._receive(url, response, download, entry.size, exact=True)
        except Retry:
            return False  # what arrived is kept: its own request resumes it
        except OSError as exc:
            result.failed.append((item, disk_failure(exc)))
            if is_disk_full(exc):
                result.disk_full = exc
            return False
        if complete(target, item.file.size, on_disk, download.digest, item.file.checksum):
            result.done.append(item)
        else:  # deleted, to be fetched on its own: its bytes are not progress
            report(-on_disk)
        return True

    def _download(self, download: Download) -> int:
        """One request for the rest of the file, following redirects; the bytes on disk after
        it (``download.digest`` covers them all)."""
        try:
            return self._download_file(download)
        finally:
            download.report.flush()

    def _download_file(self, download: Download) -> int:
        url = self.base_url + "files/" + download.item.file.path
        headers = dict(self._headers)
        for _ in range(MAX_REDIRECTS + 1):
            sent = dict(headers)
            if download.have:
                sent["Range"] = f"bytes={download.have}-"
                sent["If-Range"] = download.item.file.etag
            response = self._request(url, sent)
            location = response.getheader("Location")
            if response.status in REDIRECT_STATUSES and location:
                self._finish(url, response)
                target = urljoin(url, location)
                headers = redirected_headers(url, target, headers)
                url = target
                continue
            return self._answer(url, response, download)
        raise TransferError(f"{url}: more than {MAX_REDIRECTS} redirects")

    def _request(
        self, url: str, headers: dict[str, str], body: bytes | None = None
    ) -> http.client.HTTPResponse:
        """Send a GET (a POST of ``body``) on this thread's connection to the server, and
        read the answer's head; a failure is for the caller's retries."""
        try:
            response, _ = self._worker().connections.request(
                "GET" if body is None else "POST", url, headers, body
            )
        except UnsupportedURLError as exc:
            raise TransferError(str(exc)) from None
        except NETWORK_ERRORS as exc:
            raise Retry(TransferError(f"{url}: {_describe(exc)}"), None) from exc
        return response

    def _answer(
        self,
        url: str,
        response: http.client.HTTPResponse,
        download: Download,
    ) -> int:
        status = response.status
        if status in RETRYABLE_STATUSES:
            self._finish(url, response)
            raise Retry(
                TransferError(f"{url} answered {status}"),
                retry_after(response.getheader("Retry-After")),
            )
        if status not in (200, 206):
            try:
                text = response.read(ERROR_TEXT).decode(errors="replace")
            except NETWORK_ERRORS:
                text = ""
            self._forget(url)
            raise TransferError(f"{url} answered {status}: {text}")
        if status == 206 and range_start(response.getheader("Content-Range")) != download.have:
            self._forget(url)
            download.target.unlink(missing_ok=True)  # start over rather than splice bytes
            raise Retry(TransferError(f"{url} answered another range than asked for"), None)
        if status == 200 and download.have:  # the whole file: what was there is replaced
            download.report(-download.have)
            download.have = 0
            download.digest = hashlib.sha256()
        expected = download.item.file.size - download.have
        if response.length is not None and response.length > expected:
            self._forget(url)
            raise _larger_than_recorded(url, download.item)
        return self._receive(url, response, download, expected)

    def _receive(
        self,
        url: str,
        response: http.client.HTTPResponse,
        download: Download,
        expected: int,
        exact: bool = False,
    ) -> int:
        """Append the body to the partial file, a gathered MiB at a time.

        A MiB is read into the thread's page-aligned buffer (``readinto`` loops over
        ``recv`` in C), hashed, and written with :class:`~mirror.partfile.PartFile`. Bytes
        received before a failure are written too, so the next attempt resumes after them.
        ``exact``: the body goes on past this file (a bundle), so read ``expected`` bytes and
        not one more.
        """
        view = self._worker().buffer
        part = PartFile(download.target, append=response.status == 206)
        written = 0
        try:
            while not (exact and written == expected):
                # Otherwise one byte more than expected is asked for: getting it shows excess.
                limit = min(len(view), expected - written + (0 if exact else 1))
                fill, error = _fill(response, view[:limit])
                if written + fill > expected:
                    self._forget(url)
                    raise _larger_than_recorded(url, download.item)
                if fill:
                    download.digest.update(view[:fill])
                    part.write(view[:fill])
                    written += fill
                    download.report(fill)
                if error is not None or self._closing:
                    self._forget(url)
                    reason = _describe(error) if error else "the pull is stopping"
                    raise Retry(TransferError(f"{url}: {reason}"), None) from error
                if fill < limit:
                    break
            if written < expected:
                self._forget(url)
                raise Retry(
                    TransferError(f"{url}: the answer ended after {written} of {expected} bytes"),
                    None,
                )
        finally:
            part.close()
            if not exact and not response.isclosed():  # stopped mid-body: not reusable
                self._forget(url)
        return download.have + written

    def _worker(self) -> _Worker:
        worker: _Worker | None = getattr(self._local, "worker", None)
        if worker is None:
            connections = KeptAlive(self.settings.connect_timeout, self._connected, self._closed)
            worker = self._local.worker = _Worker(connections)
        return worker

    def _connected(self, connection: http.client.HTTPConnection) -> None:
        with self._open_lock:  # the lock the closing shutdown holds
            if self._closing:
                raise ConnectionAbortedError("the pull is stopping")
            self._open.add(connection)
        assert connection.sock is not None
        set_io_timeout(connection.sock, self.settings.read_timeout)

    def _closed(self, connection: http.client.HTTPConnection) -> None:
        with self._open_lock:
            self._open.discard(connection)

    def _finish(self, url: str, response: http.client.HTTPResponse) -> None:
        """Read out a short answer's body so the connection can be used again."""
        with contextlib.suppress(*NETWORK_ERRORS):
            response.read(64 * 1024)
        if not response.isclosed():
            self._forget(url)

    def _forget(self, url: str) -> None:
        """Close this thread's connection to ``url``'s server, whose state is unknown."""
        self._worker().connections.forget(url)


def set_io_timeout(sock: socket.socket, seconds: float) -> None:
    """Fail a ``recv`` or ``send`` that moves no byte for ``seconds`` (after the connect,
    which has its own timeout).

    The kernel keeps this timeout (SO_RCVTIMEO, SO_SNDTIMEO) and the socket stays blocking:
    a Python socket timeout instead makes every ``recv`` a ``poll`` then a ``recv``, which
    on the bench cost about 1 s more system time per 2 GiB (3.3-3.4 s of the pull's system
    time against 2.3-2.7 s, two runs each). A kernel timeout surfaces as
    EAGAIN, that is :class:`BlockingIOError`. Where the options are missing, Python's own
    timeout does the job.
    """
    seconds_part = int(seconds)
    value = struct.pack("ll", seconds_part, int((seconds - seconds_part) * 1e6))
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, value)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, value)
    except (OSError, AttributeError):
        sock.settimeout(seconds)
        return
    sock.settimeout(None)


def _fill(response: http.client.HTTPResponse, view: memoryview) -> tuple[int, Exception | None]:
    """Read into ``view`` until it is full or the body ends; the count, and the network
    error that stopped it early (None if none)."""
    fill = 0
    while fill < len(view):
        try:
            count: int | None = response.readinto(view[fill:])
        except NETWORK_ERRORS as exc:
            return fill, exc
        if count is None:  # the kernel's read timeout (EAGAIN), which io reports as None
            return fill, TimeoutError()
        if not count:
            break
        fill += count
        if fill < len(view) and response.length:
            # A short read with body still to come: the buffered reader met the kernel's
            # timeout after some bytes and returned those. Asking again would wait a second
            # timeout before the stall is noticed.
            return fill, TimeoutError()
    return fill, None


def _larger_than_recorded(url: str, item: Item) -> TransferError:
    return TransferError(
        f"{url} is larger than the {item.file.size} bytes its registry entry records: the "
        "file changed at the source; query again"
    )


def _describe(error: BaseException | None) -> str:
    if isinstance(error, TimeoutError | BlockingIOError):
        return "no data within the read timeout"
    return str(error) or type(error).__name__
