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
import os
from concurrent.futures import ThreadPoolExecutor
from typing import BinaryIO

SENDERS = ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2), thread_name_prefix="send")
"""Threads doing the copying: as many as cores (the copy is the kernel's CPU work)."""


def _send_some(sock_fd: int, file_fd: int, offset: int, count: int) -> int:
    """Send up to ``count`` bytes until the socket's buffer is full; bytes sent."""
    total = 0
    while total < count:
        try:
            sent = os.sendfile(sock_fd, file_fd, offset + total, count - total)
        except BlockingIOError:
            break
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


async def send_file_piece(
    transport: asyncio.BaseTransport,
    file: BinaryIO,
    offset: int,
    count: int,
    *,
    idle_limit: float,
) -> None:
    """Send ``count`` bytes of ``file`` from ``offset`` on the connection of ``transport``.

    Raises TimeoutError if the client accepts nothing for ``idle_limit`` seconds, and
    ConnectionError if the connection is gone. Falls back to ``loop.sendfile`` where the
    socket cannot be written directly (TLS)."""
    loop = asyncio.get_running_loop()
    sock = transport.get_extra_info("socket")
    if sock is None or transport.get_extra_info("sslcontext") is not None:
        send = loop.sendfile(transport, file, offset, count)  # type: ignore[arg-type]
        await asyncio.wait_for(send, idle_limit)
        return
    if not isinstance(transport, asyncio.WriteTransport):
        raise ConnectionError("the connection cannot be written to")
    # Bytes the transport holds (headers, a part header) go first, by the transport.
    waited = 0.0
    while transport.get_write_buffer_size():
        if transport.is_closing() or waited > idle_limit:
            raise ConnectionError("the client stopped reading")
        await asyncio.sleep(0.001)
        waited += 0.001
    fd = os.dup(sock.fileno())
    try:
        done = 0
        while done < count:
            if transport.is_closing():
                raise ConnectionError("the client closed the connection")
            done += await loop.run_in_executor(
                SENDERS, _send_some, fd, file.fileno(), offset + done, count - done
            )
            if done < count:
                await _writable(loop, fd, idle_limit)
    finally:
        os.close(fd)
