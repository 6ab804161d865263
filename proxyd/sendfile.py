"""Send file bytes to a client socket from worker threads (sendfile), several at once.

asyncio's ``loop.sendfile`` makes every ``sendfile(2)`` call on the event loop's thread, so
all downloads share one core for the kernel's copying: on a hot object read by a handful of
clients that core, not the disk or the network, is the limit. Here the calls run in a small
pool of threads (``sendfile`` releases the GIL), so copies to different clients proceed in
parallel, while the event loop only waits for sockets to become writable again.

Pieces (a response's blocks, one file each) are queued, and one thread job sends them one
after the other while the loop queues the next ones: the socket never waits between blocks
for the loop to notice that a piece is done and hand over the next. (Sending each 1 MiB block
in a job of its own cost a hot 8-client download about 15 % of its throughput: the gap
between blocks, a wake-up of the loop and a thread hop, left the socket idle.)

Safety: the threads write to a duplicate of the connection's descriptor. If the connection
is closed meanwhile (client gone, timeout), the duplicate still names that same connection
-- never a new one that reused the number -- and the thread's next call fails or finishes;
the duplicate is closed, and each piece's file released, only once no thread uses them.
Nothing else writes to the socket while pieces are sent: the request's handler is the only
writer, and it calls :meth:`FileSender.flush` before writing bytes of its own; bytes the
transport still buffers are flushed first.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import select
import socket
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import cast

SENDERS = ThreadPoolExecutor(max_workers=2 * max(2, os.cpu_count() or 2), thread_name_prefix="send")
"""Threads doing the copying (the kernel's CPU work): enough to keep every core busy while
some wait a moment for their clients."""
THREAD_WAIT_MS = 20
"""How long a sending thread waits for a client's socket before leaving it to the loop."""
JOB_PIECES = 4
"""Pieces one thread job sends at most before it lets the jobs of other connections have the
thread (fairness: there are fewer threads than busy downloads)."""
AHEAD = 2
"""Pieces queued beyond the one being sent: enough that the sending thread always has the
next one at hand, few enough that a response holds few open block files."""


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


Piece = tuple[int, int, int, Callable[[], None]]
"""(file descriptor, offset, count, release): bytes of a file to send, and what to call once
no thread reads the file any more."""


def _send_queued(
    sock_fd: int,
    queue: deque[Piece],
    finished: deque[Piece],
    stop: list[bool],
    notify: Callable[[], object],
) -> bool:
    """In a sending thread: send the queued pieces in order, taking new ones as the loop
    adds them, until the queue is empty, ``JOB_PIECES`` are sent, ``stop`` is set or the
    client stalls; ``notify`` the loop of each piece sent. Returns whether the client
    stalled (the piece left at the head of the queue is then what remains of it)."""
    for _ in range(JOB_PIECES):
        if not queue or stop[0]:
            break
        fd, offset, count, release = queue[0]
        sent = _send_some(sock_fd, fd, offset, count)
        if sent < count:
            queue[0] = (fd, offset + sent, count - sent, release)
            return True
        finished.append(queue.popleft())
        notify()
    return False


class FileSender:
    """Sends file pieces on one client connection, in order; :meth:`flush` before writing
    anything else to it, :meth:`close` when the response ends.

    The connection's descriptor is duplicated once, at the first piece."""

    def __init__(self, transport: asyncio.BaseTransport | None, idle_limit: float) -> None:
        self.transport = transport
        self.idle_limit = idle_limit
        self._sock: socket.socket | None = None
        """A duplicate of the connection's socket, for the sending threads."""
        self._fd = -1
        self._queue: deque[Piece] = deque()
        self._finished: deque[Piece] = deque()
        """Pieces sent, to release on the loop (the store's descriptor counts are its)."""
        self._stop = [False]
        """Set at close: a running job stops after its current piece."""
        self._pump: asyncio.Task[None] | None = None
        self._room = asyncio.Event()
        """Set when a piece has been sent (or the sending stopped): room in the queue."""

    async def send(
        self, fd: int, offset: int, count: int, release: Callable[[], None] = lambda: None
    ) -> None:
        """Send ``count`` bytes of the file open as ``fd`` from ``offset``; ``release`` is
        called once the file is no longer read.

        Returns once the piece is queued, at most ``AHEAD`` pieces behind the socket; the
        errors of sending (TimeoutError if the client accepts nothing for ``idle_limit``
        seconds, ConnectionError if the connection is gone) are raised by this or a later
        call, or by :meth:`flush`. Where the socket cannot be written directly (TLS), the
        piece is sent with ``loop.sendfile`` before this returns."""
        # Duck-typed: uvloop's transports are not subclasses of asyncio's classes.
        transport = cast(asyncio.WriteTransport | None, self.transport)
        if transport is None or transport.is_closing():
            release()
            raise ConnectionError("the client closed the connection")
        sock = transport.get_extra_info("socket")
        if sock is None or transport.get_extra_info("sslcontext") is not None:
            try:
                await self.flush()
                with io.FileIO(fd, "rb", closefd=False) as file:  # wraps fd: opens nothing
                    sending = asyncio.get_running_loop().sendfile(transport, file, offset, count)
                    await asyncio.wait_for(sending, self.idle_limit)
            finally:
                release()
            return
        pump = self._pump
        if pump is not None and pump.done() and not pump.cancelled() and pump.exception():
            release()
            pump.result()  # a failure of earlier pieces: raise it here
        self._queue.append((fd, offset, count, release))
        if pump is None or pump.done():
            if self._sock is None:
                self._sock = socket.socket(fileno=os.dup(sock.fileno()))
                self._fd = self._sock.fileno()
            pump = self._pump = asyncio.create_task(self._run(transport))
            pump.add_done_callback(lambda _: self._room.set())
        while len(self._queue) > AHEAD and not pump.done():
            self._room.clear()
            if len(self._queue) > AHEAD and not pump.done():  # (the thread may have just sent)
                await self._room.wait()
            self._release_finished()
        if pump.done():
            pump.result()

    async def flush(self) -> None:
        """Wait until every queued piece is sent (raising what sending met)."""
        if self._pump is not None:
            try:
                await asyncio.shield(self._pump)
            finally:
                self._release_finished()

    async def _run(self, transport: asyncio.WriteTransport) -> None:
        """Keeps a thread job sending while pieces are queued; waits for the socket (on
        the loop) whenever the client stalls."""
        loop = asyncio.get_running_loop()
        # Bytes the transport holds (headers, a part header) go first, by the transport.
        waited = 0.0
        while transport.get_write_buffer_size():
            if transport.is_closing() or waited > self.idle_limit:
                raise ConnectionError("the client stopped reading")
            await asyncio.sleep(0.001)
            waited += 0.001
        self._coalesce(True)
        try:
            await self._pump_jobs(loop, transport)
        finally:
            self._coalesce(False)

    def _coalesce(self, on: bool) -> None:
        """Let the kernel gather the body into full segments while pieces go out (Nagle's
        algorithm: TCP_NODELAY off), and send what it holds at once afterwards (turning
        TCP_NODELAY back on pushes it). asyncio turns Nagle off for every connection, which
        suits small answers; during a large body it made the kernel send whatever each
        sendfile call added as its own segments, and the client woke for each: hot 8-client
        downloads were 15 % slower on average (paired runs; nginx does the same, setting
        TCP_NODELAY only between responses)."""
        if self._sock is None:
            return
        with contextlib.suppress(OSError):  # not TCP (a Unix socket): nothing to gather
            self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, int(not on))

    async def _pump_jobs(
        self, loop: asyncio.AbstractEventLoop, transport: asyncio.WriteTransport
    ) -> None:
        while self._queue and not self._stop[0]:
            if transport.is_closing():
                raise ConnectionError("the client closed the connection")
            job = loop.run_in_executor(
                SENDERS,
                _send_queued,
                self._fd,
                self._queue,
                self._finished,
                self._stop,
                lambda: loop.call_soon_threadsafe(self._room.set),
            )
            try:
                stalled = await asyncio.shield(job)
            except asyncio.CancelledError:
                # The thread goes on until its current piece is sent or stalls: wait for
                # it, so that the descriptors it uses are not closed (and reused) under it.
                self._stop[0] = True
                await asyncio.wait({job})
                raise
            self._release_finished()
            if stalled and not self._stop[0]:
                await _writable(loop, self._fd, self.idle_limit)

    def _release_finished(self) -> None:
        while self._finished:
            self._finished.popleft()[3]()

    def close(self) -> None:
        """The response is over (or abandoned): release every piece and the duplicate of the
        connection's descriptor, now or as soon as a running thread job has stopped."""
        stopping, self._stop[0] = self._stop[0], True
        pump = self._pump
        if pump is None or pump.done():
            self._close_now()
        elif not stopping:  # cancelled once: a second cancel would cut its wait for the thread
            pump.cancel()
            pump.add_done_callback(lambda _: self._close_now())

    def _close_now(self) -> None:
        if self._pump is not None and self._pump.done() and not self._pump.cancelled():
            self._pump.exception()  # retrieved: reported by send or flush, or moot
        self._release_finished()
        while self._queue:
            self._queue.popleft()[3]()
        if self._sock is not None:
            self._sock.close()
            self._sock = None
            self._fd = -1
