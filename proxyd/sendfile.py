"""Send file bytes to a client socket from worker threads (sendfile), several at once.

asyncio's ``loop.sendfile`` makes every ``sendfile(2)`` call on the event loop's thread, so
all downloads share one core for the kernel's copying: on a hot object read by a handful of
clients that core, not the disk or the network, is the limit. Here the calls run in a small
pool of threads (``sendfile`` releases the GIL), so copies to different clients proceed in
parallel, while the event loop only waits for sockets to become writable again.

Safety: the threads write to a duplicate of the connection's descriptor. If the connection
is closed meanwhile (client gone, timeout), the duplicate still names that same connection
-- never a new one that reused the number -- and the thread's next call fails or finishes.
Nothing else writes to the socket while a piece is sent: the request's handler is the only
writer, and it waits here; bytes the transport still buffers are flushed first.
"""

from __future__ import annotations

import asyncio
import io
import os
import select
from concurrent.futures import ThreadPoolExecutor
from typing import cast

SENDERS = ThreadPoolExecutor(max_workers=2 * max(2, os.cpu_count() or 2), thread_name_prefix="send")
"""Threads doing the copying (the kernel's CPU work): enough to keep every core busy while
some wait a moment for their clients."""
THREAD_WAIT_MS = 20
"""How long a sending thread waits for a client's socket before leaving it to the loop."""


def _send_some(sock_fd: int, file_fd: int, offset: int, count: int) -> int:
    """Send up to ``count`` bytes; bytes sent. A client that keeps up is served to the end
    of the piece here, waiting for its socket in this thread; one that stalls for
    ``THREAD_WAIT`` hands the wait back to the event loop, so it cannot hold the thread."""
    total = 0
    poller = select.poll()
    poller.register(sock_fd, select.POLLOUT)
    while total < count:
        try:
            sent = os.sendfile(sock_fd, file_fd, offset + total, count - total)
        except BlockingIOError:
            if not poller.poll(THREAD_WAIT_MS):
                break
            continue
        if sent == 0:
            raise ConnectionError("the file ended before the piece did")
        total += sent
    return total


async def _writable(loop: asyncio.AbstractEventLoop, fd: int, idle_limit: float) -> None:
    ready: asyncio.Future[None] = loop.create_future()

    def wake() -> None:
        if not ready.done():
            ready.set_result(None)

    loop.add_writer(fd, wake)
    try:
        await asyncio.wait_for(ready, idle_limit)
    finally:
        loop.remove_writer(fd)


class FileSender:
    """Sends file pieces on one client connection; :meth:`close` when the response ends.

    The connection's descriptor is duplicated once, at the first piece."""

    def __init__(self, transport: asyncio.BaseTransport | None, idle_limit: float) -> None:
        self.transport = transport
        self.idle_limit = idle_limit
        self._fd = -1

    async def send(self, fd: int, offset: int, count: int) -> None:
        """Send ``count`` bytes of the file open as ``fd`` from ``offset``.

        Raises TimeoutError if the client accepts nothing for ``idle_limit`` seconds, and
        ConnectionError if the connection is gone. Falls back to ``loop.sendfile`` where
        the socket cannot be written directly (TLS)."""
        # Duck-typed: uvloop's transports are not subclasses of asyncio's classes.
        transport = cast(asyncio.WriteTransport | None, self.transport)
        if transport is None or transport.is_closing():
            raise ConnectionError("the client closed the connection")
        loop = asyncio.get_running_loop()
        sock = transport.get_extra_info("socket")
        if sock is None or transport.get_extra_info("sslcontext") is not None:
            with io.FileIO(fd, "rb", closefd=False) as file:  # wraps fd: opens nothing
                send = loop.sendfile(transport, file, offset, count)
                await asyncio.wait_for(send, self.idle_limit)
            return
        # Bytes the transport holds (headers, a part header) go first, by the transport.
        waited = 0.0
        while transport.get_write_buffer_size():
            if transport.is_closing() or waited > self.idle_limit:
                raise ConnectionError("the client stopped reading")
            await asyncio.sleep(0.001)
            waited += 0.001
        if self._fd < 0:
            self._fd = os.dup(sock.fileno())
        done = 0
        while done < count:
            if transport.is_closing():
                raise ConnectionError("the client closed the connection")
            done += await loop.run_in_executor(
                SENDERS, _send_some, self._fd, fd, offset + done, count - done
            )
            if done < count:
                await _writable(loop, self._fd, self.idle_limit)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
