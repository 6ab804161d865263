"""HTTP downloads for the mirror: libcurl (pycurl) run from the asyncio event loop.

A download appends to ``<dest>/.mirror-partial/<uuid>.part``; after an interruption the next
pull resumes it with a Range request guarded by ``If-Range`` (a changed file restarts from
zero instead of splicing versions). Bytes are hashed as they are written and the file is
handed on only when its SHA-256 equals the registry's; transient failures (connection
errors, timeouts, 408, 425, 429, 5xx) are retried with exponential backoff, honouring
Retry-After.

Why libcurl and not aiohttp: on the mirror bench (2,000 x 1 MiB from a local server, 8 at a
time, 2 cores shared with the server) the pull is CPU-bound, and aiohttp's receive path runs
Python for every socket read (the protocol, the parser's body slice, the stream reader, a
future and a task step per chunk) and copies each chunk twice before we see it. libcurl does
the HTTP in C and hands the body over as a memoryview of its own buffer, which we gather,
hash and write (see :class:`_Receiver`). A bare client that hashes and writes the same
2 GiB took 3.6-4.3 CPU seconds with pycurl and 5.0-5.7 with aiohttp (tmpfs target, same
server; curl itself 2.4-3.0).
``pycurl.AsyncCurlMulti`` drives libcurl's multi-socket API from the running loop: no thread,
no polling.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import mmap
import random
import ssl
import time
from collections.abc import Collection
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pycurl

from butler.http.conditional import parse_http_date
from mirror.partfile import PartFile, aligned_buffer
from mirror.plan import Item
from mirror.transfer import (
    Progress,
    TransferError,
    TransferSettings,
    complete,
    resume_point,
    sync_data,
)

RETRYABLE_STATUSES = {408, 425, 429, 500, 502, 503, 504}
ERROR_TEXT = 200
"""Bytes of an error answer's body kept for the message."""
RECEIVE_BUFFER = 512 * 1024
"""libcurl's receive buffer: one recv() per readable event brings up to this much."""
GATHER = 1 << 20
"""Body bytes gathered before they are hashed and written (see :class:`_Receiver`)."""


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


class _Receiver:
    """One response, its body hashed and appended to the partial file.

    libcurl calls :meth:`body` for every piece of the body it reads, at most 16 KiB each
    (CURL_MAX_WRITE_SIZE; a larger receive buffer does not change it), with a memoryview of
    its own buffer that is valid only during the call. The pieces are gathered into a 1 MiB
    buffer, and each full MiB is hashed and written by a job in the fetcher's writer threads
    while the next MiB gathers in a second buffer. The event loop thus never waits for the
    disk, nor spends its time on SHA-256 (1.4 s of CPU per 2 GiB): hashlib and os.write
    release the GIL, so the jobs run beside the loop. A download has at most one job at a
    time, which keeps its bytes in order; if the next MiB is full before the disk took the
    last one, the loop waits for that job (the disk being slower than the network).

    Hashing and writing a MiB at a time, not each 16 KiB piece, saved about a CPU second per
    pull of 2 GiB: 16 x fewer write calls, 32 x fewer GIL releases. A gathered MiB lost to a
    crash is simply fetched again by the next pull. See :mod:`mirror.partfile` for how the
    bytes reach the disk.

    Header lines are only collected (``list.append`` is the callback: no Python runs per
    line) and read once. Only a 200 or 206 answer reaches the file; of anything else the
    start of the body is kept for the error message.
    """

    def __init__(
        self,
        target: Path,
        have: int,
        digest: hashlib._Hash,
        progress: Progress,
        buffers: tuple[mmap.mmap, mmap.mmap],
        writers: ThreadPoolExecutor,
    ) -> None:
        self.target = target
        self.have = have
        self.digest = digest
        self.progress = progress
        self.header_lines: list[bytes] = []
        self.error_text = b""
        self.failure: OSError | None = None
        self.written = 0
        """Body bytes handed to the file (a failed write sets ``failure``)."""
        self._writers = writers
        self._views = (memoryview(buffers[0]), memoryview(buffers[1]))
        self._view = self._views[0]
        self._fill = 0
        self._file: PartFile | None = None
        self._append: bool | None = None
        """None until the status is known; then whether the body continues the file."""
        self._job: Future[None] | None = None

    def body(self, data: memoryview) -> int | None:
        fill = self._fill
        end = fill + len(data)
        if end <= len(self._view):  # the usual case: one copy, nothing else
            self._view[fill:end] = data
            self._fill = end
            return None
        start = 0
        while start < len(data):  # fill the buffer, hand it over, go on with the rest
            room = len(self._view) - self._fill
            if room == 0:
                if not self._flush():
                    return 0  # any count but len(data) makes libcurl abort the transfer
                continue
            piece = data[start : start + room]
            self._view[self._fill : self._fill + len(piece)] = piece
            self._fill += len(piece)
            start += len(piece)
        return None

    def _flush(self) -> bool:
        """Hand what is gathered to a writer job; False (``failure`` set) if the disk failed."""
        fill, self._fill = self._fill, 0
        if not self._accepts(fill):
            return True
        if not self._wait():
            return False
        self._job = self._writers.submit(self._store, self._view[:fill], False)
        self._view = self._views[self._view is self._views[0]]  # gather into the other one
        self._handed(fill)
        return True

    def _handed(self, count: int) -> None:
        if count:
            self.written += count
            self.progress(count)

    def _accepts(self, fill: int) -> bool:
        """Whether the body goes to the file: only that of a 200 or 206 answer does."""
        if self._append is None:
            status = self.status()
            if status not in (200, 206):
                if not self.error_text:
                    self.error_text = bytes(self._view[: min(fill, ERROR_TEXT)])
                return False
            self._append = status == 206
            if not self._append and self.have:  # the whole file: what was there is replaced
                self.digest = hashlib.sha256()
                self.progress(-self.have)
                self.have = 0
        return True

    def _store(self, chunk: memoryview, last: bool) -> None:
        """(In a writer thread.) Hash ``chunk`` and append it to the partial file."""
        if self._file is None:
            self._file = PartFile(self.target, append=bool(self._append))
        if chunk:
            self.digest.update(chunk)
            self._file.write(chunk)
        if last:  # the file is durable before the download counts as done
            self._file.close(sync=True)

    def _wait(self) -> bool:
        """Wait for the running job; False (and ``failure`` set) if it failed."""
        job, self._job = self._job, None
        if job is not None:
            try:
                job.result()
            except OSError as exc:
                self.failure = exc
        return self.failure is None

    async def finish(self) -> None:
        """Write out what is gathered, even of an interrupted answer (its bytes resume), and
        close the file; after this the digest covers every byte written."""
        fill, self._fill = self._fill, 0
        if self._wait() and self._accepts(fill):
            self._handed(fill)
            last = self._writers.submit(self._store, self._view[:fill], True)
            try:
                await asyncio.wrap_future(last)
            except OSError as exc:
                self.failure = exc
        if self._file is not None:
            self._file.close()

    def adopt(self, sink: io.BytesIO) -> None:
        """Take the body that libcurl wrote to ``sink`` (from its start to its position)."""
        count = sink.tell()
        with sink.getbuffer() as data:
            self.body(data[:count])

    def status(self) -> int:
        """The status code of the latest response (pycurl's getinfo is barred mid-transfer)."""
        for line in reversed(self.header_lines):
            if line.startswith(b"HTTP/"):
                fields = line.split(None, 2)
                if len(fields) > 1 and fields[1].isdigit():
                    return int(fields[1])
                break
        return 0

    def header(self, name: str) -> str | None:
        """The last value of header ``name`` in the final response (after any redirect)."""
        wanted = name.lower().encode() + b":"
        value = None
        for line in self.header_lines:
            if line.startswith(b"HTTP/"):  # a new response: forget the previous one's
                value = None
            elif line.lower().startswith(wanted):
                value = line[len(wanted) :].strip().decode("latin-1")
        return value


class _Slot:
    """What one transfer in flight uses, kept for the next: two page-aligned gather buffers,
    and a sink for bodies that fit one."""

    def __init__(self) -> None:
        self.buffers = (aligned_buffer(GATHER), aligned_buffer(GATHER))
        self.sink = io.BytesIO(bytes(GATHER))


class HttpFetcher:
    """Downloads files from ``<base>files/<path>`` with resume and verification."""

    def __init__(
        self,
        base_url: str,
        token: str | None,
        settings: TransferSettings,
        partials: Collection[str] | None = None,
    ) -> None:
        """``partials``: names of the partial files there are (None: unknown, look for each).

        Knowing them spares the event loop a ``stat`` of each new target: in a directory
        where the writer threads create files, a lookup waits for their creations (the
        directory's lock), measured at ~100 us each on the bench.
        """
        self.base_url = base_url.rstrip("/") + "/"
        self.settings = settings
        self._may_exist = None if partials is None else set(partials)
        self._headers = [f"Authorization: Bearer {token}"] if token else []
        self._multi: pycurl.AsyncCurlMulti | None = None
        self._idle: list[pycurl.Curl] = []
        self._slots: list[_Slot] = []
        self._writers: ThreadPoolExecutor | None = None
        self.requests = 0

    async def __aenter__(self) -> HttpFetcher:
        multi = pycurl.AsyncCurlMulti()
        # At most ``jobs`` connections, all kept open between requests.
        multi.setopt(pycurl.M_MAX_TOTAL_CONNECTIONS, self.settings.jobs)
        multi.setopt(pycurl.M_MAXCONNECTS, self.settings.jobs)
        self._multi = multi
        # A download has at most one job (hash and write a MiB) at a time.
        self._writers = ThreadPoolExecutor(self.settings.jobs, thread_name_prefix="mirror-write")
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._multi is not None:
            await self._multi.aclose()
            self._multi = None
        for handle in self._idle:
            handle.close()
        self._idle.clear()
        if self._writers is not None:  # the jobs of cancelled downloads end first
            await asyncio.to_thread(self._writers.shutdown)
            self._writers = None

    def _handle(self) -> pycurl.Curl:
        if self._idle:
            return self._idle.pop()
        handle = pycurl.Curl()
        handle.setopt(pycurl.NOSIGNAL, 1)
        handle.setopt(pycurl.USERAGENT, "butler-mirror/1")
        handle.setopt(pycurl.PROTOCOLS, pycurl.PROTO_HTTP | pycurl.PROTO_HTTPS)
        handle.setopt(pycurl.FOLLOWLOCATION, 1)
        handle.setopt(pycurl.MAXREDIRS, 10)
        handle.setopt(pycurl.HTTP_VERSION, pycurl.CURL_HTTP_VERSION_1_1)
        handle.setopt(pycurl.PROXY, "")  # like aiohttp's default: no proxy from the environment
        handle.setopt(pycurl.DNS_CACHE_TIMEOUT, 300)
        handle.setopt(pycurl.BUFFERSIZE, RECEIVE_BUFFER)
        handle.setopt(pycurl.CONNECTTIMEOUT_MS, int(self.settings.connect_timeout * 1000))
        # No byte for read_timeout seconds ends the attempt (aiohttp's sock_read).
        handle.setopt(pycurl.LOW_SPEED_LIMIT, 1)
        handle.setopt(pycurl.LOW_SPEED_TIME, max(1, round(self.settings.read_timeout)))
        # The same certificates Python's ssl module trusts (SSL_CERT_FILE / SSL_CERT_DIR too).
        paths = ssl.get_default_verify_paths()
        if paths.cafile:
            handle.setopt(pycurl.CAINFO, paths.cafile)
        if paths.capath:
            handle.setopt(pycurl.CAPATH, paths.capath)
        return handle

    async def fetch(self, item: Item, target: Path, progress: Progress) -> None:
        """Bring ``target`` to the complete, verified file of ``item`` (resuming it)."""
        last_error: Exception | None = None
        for attempt in range(self.settings.attempts):
            try:
                await self._attempt(item, target, progress)
                return
            except Retry as retry:
                last_error = retry.error
                delay = retry.after
                if delay is None:
                    delay = min(
                        self.settings.max_backoff, self.settings.backoff * 2**attempt
                    ) * random.uniform(0.8, 1.2)  # noqa: S311
                await asyncio.sleep(delay)
        raise TransferError(f"gave up after {self.settings.attempts} attempts: {last_error}")

    async def _attempt(self, item: Item, target: Path, progress: Progress) -> None:
        assert self._multi is not None, "use the fetcher as an async context manager"
        size = item.file.size
        if self._may_exist is None or target.name in self._may_exist:
            have, digest = await resume_point(target, size)
        else:
            have, digest = 0, hashlib.sha256()
        on_disk = have
        if have < size:
            digest, on_disk = await self._get(item, target, have, digest, progress)
        else:  # finished by an earlier pull, which may have stopped before syncing it
            await asyncio.to_thread(sync_data, target)
        if not complete(target, size, on_disk, digest, item.file.checksum):
            raise Retry(
                TransferError(
                    f"{item.file.path}: the downloaded bytes do not match the recorded checksum; "
                    "fetching it again"
                ),
                None,
            )

    async def _get(
        self, item: Item, target: Path, have: int, digest: hashlib._Hash, progress: Progress
    ) -> tuple[hashlib._Hash, int]:
        """One request for the rest of the file; the running hash of all its bytes and their
        count (the file's size)."""
        assert self._multi is not None
        assert self._writers is not None
        url = self.base_url + "files/" + item.file.path
        headers = list(self._headers)
        if have:
            headers += [f"Range: bytes={have}-", f"If-Range: {item.file.etag}"]
        handle = self._handle()
        # Buffers per transfer in flight, reused: no allocation per file.
        slot = self._slots.pop() if self._slots else _Slot()
        receiver = _Receiver(target, have, digest, progress, slot.buffers, self._writers)
        handle.setopt(pycurl.URL, url)
        if headers:
            handle.setopt(pycurl.HTTPHEADER, headers)
        else:  # an empty list would leave the previous request's headers in place
            handle.unsetopt(pycurl.HTTPHEADER)
        handle.setopt(pycurl.HEADERFUNCTION, receiver.header_lines.append)
        # A whole file that fits one buffer goes to the slot's sink by its C write method (no
        # Python runs per 16 KiB piece: a third of a CPU second per 2,000 files of 1 MiB)
        # and is handed over at the end; libcurl stops any answer longer than the buffer.
        whole = not have and item.file.size <= GATHER
        if whole:
            slot.sink.seek(0)
            handle.setopt(pycurl.WRITEFUNCTION, slot.sink.write, use_memoryview=True)
            handle.setopt(pycurl.MAXFILESIZE_LARGE, GATHER)
        else:
            handle.setopt(pycurl.WRITEFUNCTION, receiver.body, use_memoryview=True)
            handle.setopt(pycurl.MAXFILESIZE_LARGE, 0)  # no limit: it streams to the file
        self.requests += 1
        if self._may_exist is not None:
            self._may_exist.add(target.name)
        error: pycurl.error | None = None
        try:
            await self._multi.perform(handle)
        except pycurl.error as exc:
            error = exc
        finally:
            if whole:
                receiver.adopt(slot.sink)
            await receiver.finish()
        # Reused only after a finished transfer: a cancelled one may still be in the multi,
        # or its last job still writing from its buffer.
        self._idle.append(handle)
        self._slots.append(slot)
        if receiver.failure is not None:  # the destination's own failure: not retried
            raise receiver.failure
        if error is not None:
            if error.args[0] == pycurl.E_FILESIZE_EXCEEDED:
                raise TransferError(
                    f"{url} is larger than the {item.file.size} bytes its registry entry "
                    "records: the file changed at the source; query again"
                ) from error
            raise Retry(TransferError(f"{url}: {error.args[-1]}"), None) from error
        status = handle.getinfo(pycurl.RESPONSE_CODE)
        if status in RETRYABLE_STATUSES:
            raise Retry(
                TransferError(f"{url} answered {status}"),
                retry_after(receiver.header("Retry-After")),
            )
        if status not in (200, 206):
            text = receiver.error_text.decode(errors="replace")
            raise TransferError(f"{url} answered {status}: {text}")
        return receiver.digest, receiver.have + receiver.written
