"""The access log: one JSON line per request, written in batches from the event loop.

A busy proxy answers tens of thousands of requests a second. Handing each line to the
logging module costs a record object, a formatter and a lock per request; handing it to a
writer thread costs worse, because that thread then competes with the event loop for the
GIL -- every system call the loop makes (each send to a client) lets the writer in, and the
loop waits for it to let go. So lines are collected in memory and written together: one
``write(2)`` every ``FLUSH_SECONDS`` (or sooner, when ``FLUSH_BYTES`` have gathered). A
write of a batch to the page cache takes microseconds, so it is done in the loop itself.

Lines keep the format they had through the logging module, so tools and tests read them the
same way: on stderr ``2026-11-27 16:46:57,991 proxyd.access {...}``, in a file the JSON alone.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

from butler.http.redact import redact_target

FLUSH_SECONDS = 0.05
FLUSH_BYTES = 256 * 1024
PIPE_ATOMIC = 4096
"""Writes to a pipe up to this size are never interleaved with other writers' (POSIX
PIPE_BUF): stderr batches are cut at line boundaries below it, so the proxy's other log
lines, written by another thread to the same stderr, never land inside an access line."""

log = logging.getLogger("proxyd")

# JSON string literals of the values that repeat (cache statuses), and the start of the
# line up to the status for each (client, method, target) seen lately: worked out once,
# not once per request.
_json_text = functools.lru_cache(maxsize=64)(json.dumps)


@functools.lru_cache(maxsize=4096)
def _line_start(client: str | None, method: str, target: str) -> str:
    # A signed URL's signature (and any other credential in the query) never reaches the log.
    return (
        f'{{"client":{json.dumps(client)},"method":{json.dumps(method)},'
        f'"target":{json.dumps(redact_target(target)[:500])},"status":'
    )


class AccessLog:
    """Where the lines go: a file (``path``), stderr (``path`` None) or nowhere
    (``enabled`` False). ``written`` is told how many lines each batch wrote out, once they
    are in the file (``Metrics.count_logged``: what tells a reader the log is complete)."""

    def __init__(
        self,
        enabled: bool,
        path: Path | None = None,
        written: Callable[[int], None] | None = None,
    ) -> None:
        self.enabled = enabled
        self._path = path
        self._written = written
        self._fd: int | None = None
        self._lines: list[str] = []
        self._size = 0
        self._timer: asyncio.TimerHandle | None = None
        self._stamp_second = -1
        self._stamp_prefix = ""
        self._stamp_millisecond = -1
        self._stamp = ""
        self._failed = False

    def request(
        self,
        client: str | None,
        method: str,
        target: str,
        status: int,
        cache: str,
        from_cache: int,
        from_origin: int,
        seconds: float,
    ) -> None:
        """The line of one answered request (a JSON object, fields always in this order)."""
        if not self.enabled:
            return
        line = (
            f'{_line_start(client, method, target)}{status},"cache":{_json_text(cache)},'
            f'"bytes_from_cache":{from_cache},"bytes_from_origin":{from_origin},'
            f'"seconds":{round(seconds, 4)!r}}}'
        )
        if self._path is None:
            line = f"{self._timestamp()} proxyd.access {line}"
        self._lines.append(line)
        self._size += len(line) + 1
        if self._size >= FLUSH_BYTES:
            self.flush()
        elif self._timer is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:  # not in the event loop (a tool, a test): write now
                self.flush()
                return
            self._timer = loop.call_later(FLUSH_SECONDS, self.flush)

    def flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        lines, self._lines, self._size = self._lines, [], 0
        if not lines:
            return
        try:
            if self._path is None:
                self._write_pipe_safe(lines)
            else:
                self._write_all(self._file(), "".join(f"{line}\n" for line in lines).encode())
        except OSError as exc:
            # A full disk or a closed stderr must not stop the proxy; say so once.
            if not self._failed:
                self._failed = True
                log.error("cannot write the access log (%s); lines are being dropped", exc)
        else:
            self._failed = False
            if self._written is not None:
                self._written(len(lines))

    def close(self) -> None:
        self.flush()
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def _file(self) -> int:
        if self._fd is None:
            assert self._path is not None
            self._fd = os.open(self._path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        return self._fd

    def _write_pipe_safe(self, lines: list[str]) -> None:
        fd = sys.stderr.fileno()
        chunk: list[bytes] = []
        size = 0
        for line in lines:
            data = f"{line}\n".encode()
            if size + len(data) > PIPE_ATOMIC and chunk:
                self._write_all(fd, b"".join(chunk))
                chunk, size = [], 0
            chunk.append(data)
            size += len(data)
        if chunk:
            self._write_all(fd, b"".join(chunk))

    @staticmethod
    def _write_all(fd: int, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]

    def _timestamp(self) -> str:
        """``logging``'s default asctime: local time with milliseconds."""
        millisecond = int(time.time() * 1000)
        if millisecond != self._stamp_millisecond:
            self._stamp_millisecond = millisecond
            second, milli = divmod(millisecond, 1000)
            if second != self._stamp_second:
                self._stamp_second = second
                self._stamp_prefix = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(second))
            self._stamp = f"{self._stamp_prefix},{milli:03d}"
        return self._stamp
