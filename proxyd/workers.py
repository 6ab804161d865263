"""Worker processes: more cores for hot reads, one process for everything else.

One Python process answers hot small reads at about a third of what nginx does with a
worker per core, because the answering itself is Python. With ``workers = N`` proxyd
forks N - 1 more processes before it starts; all accept connections from the same
listening socket and run the fast lane (:mod:`proxyd.fastlane`) on the shared cache
directory. What a worker's lane does not answer -- a miss, a fill, a revalidation, a
credential check, an unsafe method, proxyd's own endpoints -- it hands over, connection
and all: the socket's descriptor and the bytes read from it go to the main process over a
Unix socket (SCM_RIGHTS), and the main process's full handler serves that connection from
then on. So every fill, its coalescing, the authorisation answers and the in-flight runs
stay in one process, exactly as with one worker.

Workers send their request counts to the main process (every 100 ms, and at once when it
asks, before every /metrics scrape), so ``/metrics`` counts every request; each writes its
own access-log lines. They notice purges, pins and evictions through the store's change
marker, record recency for eviction like the main process, and exit when the main process
goes away.

The channel: frames of ``kind (1 byte) + length (4 bytes) + payload``. ``H``: a handed-over
connection (payload: the unanswered bytes; the descriptor travels with the frame's first
byte). ``C``: counts, JSON. ``F``: the main process asks for counts now.
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
import sqlite3
import struct
import time

from proxyd.fastlane import FastLane, TakeOver
from proxyd.metrics import Metrics
from proxyd.settings import ProxySettings

log = logging.getLogger("proxyd")

_FRAME = struct.Struct(">cI")
HANDOVER, COUNTS, FLUSH = b"H", b"C", b"F"
COUNTS_SECONDS = 0.1
RECENCY_FLUSH_SECONDS = 5.0
"""How often a worker hands its reads to the store's LRU bookkeeping (BlockStore.flush_recency)."""
FLUSH_WAIT = 2.0
"""How long a /metrics scrape waits for a worker's counts before answering without them."""


def listening_socket(host: str, port: int, backlog: int = 128) -> socket.socket:
    """A listening socket on ``host:port``, which other processes may bind as well
    (SO_REUSEPORT: the kernel spreads new connections evenly over them)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if hasattr(socket, "SO_REUSEPORT"):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
        sock.listen(backlog)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


def _frame(kind: bytes, payload: bytes = b"") -> bytes:
    return _FRAME.pack(kind, len(payload)) + payload


class _Frames:
    """Reads frames, and the descriptors that came with them, off a non-blocking channel."""

    def __init__(self, channel: socket.socket) -> None:
        self.channel = channel
        self._buffer = bytearray()
        self._fds: list[int] = []

    def read(self) -> list[tuple[bytes, bytes, int]] | None:
        """The complete frames now available as (kind, payload, fd or -1); None at EOF."""
        try:
            data, ancillary, _, _ = self.channel.recvmsg(
                1 << 20, socket.CMSG_SPACE(64 * 4), socket.MSG_DONTWAIT
            )
        except (BlockingIOError, InterruptedError):
            return []
        for level, kind, raw in ancillary:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds = array.array("i")
                fds.frombytes(raw[: len(raw) - len(raw) % fds.itemsize])
                self._fds.extend(fds)
        if not data:
            return None
        self._buffer += data
        frames = []
        while len(self._buffer) >= _FRAME.size:
            kind, length = _FRAME.unpack_from(self._buffer)
            if len(self._buffer) < _FRAME.size + length:
                break
            payload = bytes(self._buffer[_FRAME.size : _FRAME.size + length])
            del self._buffer[: _FRAME.size + length]
            fd = self._fds.pop(0) if kind == HANDOVER and self._fds else -1
            frames.append((kind, payload, fd))
        return frames

    def close(self) -> None:
        for fd in self._fds:
            os.close(fd)
        self._fds.clear()


# -- the main process's side -------------------------------------------------------------------


class _Adopted(asyncio.Protocol):
    """A connection handed over by a worker: given to the full handler the moment it is
    made, before any more of it is read, so its bytes stay in order."""

    def __init__(self, take_over: TakeOver, pending: bytes) -> None:
        self._take_over = take_over
        self._pending = pending

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._take_over(transport, self._pending)  # type: ignore[arg-type]


class WorkerLink:
    """The main process's end of one worker's channel."""

    def __init__(self, pid: int, channel: socket.socket, metrics: Metrics, take_over: TakeOver):
        self.pid = pid
        self.channel = channel
        self.metrics = metrics
        self.take_over = take_over
        self._frames = _Frames(channel)
        self._counted: asyncio.Event | None = None
        self.alive = True

    def start(self) -> None:
        self.channel.setblocking(False)
        asyncio.get_running_loop().add_reader(self.channel.fileno(), self._readable)

    def _readable(self) -> None:
        frames = self._frames.read()
        if frames is None:
            self._lost()
            return
        for kind, payload, fd in frames:
            if kind == HANDOVER and fd >= 0:
                self._adopt(fd, payload)
            elif kind == COUNTS:
                self.metrics.add_counts(json.loads(payload))
                if self._counted is not None:
                    self._counted.set()

    def _adopt(self, fd: int, pending: bytes) -> None:
        sock = socket.socket(fileno=fd)
        loop = asyncio.get_running_loop()
        adopting = loop.connect_accepted_socket(lambda: _Adopted(self.take_over, pending), sock)
        task = loop.create_task(adopting)
        task.add_done_callback(_report_adoption)

    def _lost(self) -> None:
        if self.alive:
            self.alive = False
            log.error("worker process %d has gone; the main process serves on alone", self.pid)
        with contextlib.suppress(ValueError, OSError):
            asyncio.get_running_loop().remove_reader(self.channel.fileno())

    async def flush(self) -> None:
        """Ask for the worker's counts and wait (briefly) until they are in."""
        if not self.alive:
            return
        self._counted = asyncio.Event()
        try:
            self.channel.sendall(_frame(FLUSH))
            await asyncio.wait_for(self._counted.wait(), FLUSH_WAIT)
        except (OSError, TimeoutError) as exc:
            log.warning("worker process %d did not send its counts: %s", self.pid, exc)
        finally:
            self._counted = None

    def stop(self) -> None:
        self.alive = False  # stopped on purpose: not reported as gone
        self._lost()
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGTERM)
        self.channel.close()
        self._frames.close()


def _report_adoption(task: asyncio.Task[object]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.warning("could not take over a connection from a worker: %s", task.exception())


def reap(links: list[WorkerLink], timeout: float = 5.0) -> None:
    """Wait for stopped workers to exit (then make sure they have)."""
    deadline = time.monotonic() + timeout
    for link in links:
        while time.monotonic() < deadline:
            try:
                done, _ = os.waitpid(link.pid, os.WNOHANG)
            except ChildProcessError:
                break
            if done:
                break
            time.sleep(0.02)
        else:
            with contextlib.suppress(ProcessLookupError):
                os.kill(link.pid, signal.SIGKILL)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(link.pid, 0)


def fork_workers(
    settings: ProxySettings, listener: socket.socket, count: int
) -> list[tuple[int, socket.socket]]:
    """Fork ``count`` worker processes (before any thread or event loop exists); returns
    (pid, channel) for each. The children never return from here."""
    made: list[tuple[int, socket.socket]] = []
    for _ in range(count):
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        pid = os.fork()
        if pid == 0:  # the worker
            ours.close()
            for _, channel in made:
                channel.close()
            code = 0
            try:
                port = listener.getsockname()[1]
                listener.close()  # each process accepts on its own socket: even spreading
                _run_worker(settings, listening_socket(settings.listen_host, port), theirs)
            except BaseException:  # noqa: BLE001 - a worker must never return into main's code
                log.exception("worker process %d failed", os.getpid())
                code = 1
            finally:
                logging.shutdown()
                os._exit(code)
        theirs.close()
        made.append((pid, ours))
    return made


# -- a worker's side ---------------------------------------------------------------------------


def _run_worker(settings: ProxySettings, listener: socket.socket, channel: socket.socket) -> None:
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        loop.run_until_complete(_worker_main(settings, listener, channel))
    finally:
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()


async def _worker_main(
    settings: ProxySettings, listener: socket.socket, channel: socket.socket
) -> None:
    from proxyd.state import ProxyState  # after the fork: the main process's is not ours

    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    state = ProxyState(settings)
    channel.setblocking(True)  # a frame is written whole; the main process reads at once
    lane = FastLane(state, _send_to_main(channel))
    server = await loop.create_server(lane.connection, sock=listener)
    frames = _Frames(channel)

    def send_counts() -> None:
        with contextlib.suppress(OSError):
            channel.sendall(_frame(COUNTS, json.dumps(state.metrics.take_counts()).encode()))

    def readable() -> None:
        got = frames.read()
        if got is None:  # the main process has gone
            stopping.set()
            return
        if any(kind == FLUSH for kind, _, _ in got):
            send_counts()

    loop.add_reader(channel.fileno(), readable)

    async def counting() -> None:
        while True:
            await asyncio.sleep(COUNTS_SECONDS)
            send_counts()

    async def recency() -> None:  # the main process's evictor does this for its own reads
        while True:
            await asyncio.sleep(RECENCY_FLUSH_SECONDS)
            try:
                await asyncio.to_thread(state.store.flush_recency)
            except (OSError, sqlite3.Error) as exc:  # a full or read-only cache: next time
                log.warning("worker %d: cache maintenance failed: %s", os.getpid(), exc)
            state.store.on_loop.close_stale_files()

    chores = [loop.create_task(counting()), loop.create_task(recency())]
    try:
        await stopping.wait()
    finally:
        for chore in chores:
            chore.cancel()
        server.close()
        lane.close_all()
        send_counts()
        loop.remove_reader(channel.fileno())
        await asyncio.to_thread(state.store.flush_recency)
        await state.close()
        channel.close()


def _send_to_main(channel: socket.socket) -> TakeOver:
    """Hand a connection to the main process: once what this process has written to it has
    gone out, its descriptor and the bytes not answered go over the channel, and this
    process lets go of it (the main process's copy of the descriptor keeps it open)."""

    def take_over(transport: asyncio.Transport, pending: bytes) -> None:
        transport.pause_reading()
        loop = asyncio.get_running_loop()

        def send_when_drained() -> None:
            if transport.is_closing():
                return
            if transport.get_write_buffer_size():
                loop.call_later(0.001, send_when_drained)
                return
            sock = transport.get_extra_info("socket")
            data = _frame(HANDOVER, pending)
            try:
                sent = socket.send_fds(channel, [data], [sock.fileno()])
                if sent < len(data):
                    channel.sendall(data[sent:])
            except OSError as exc:
                log.warning("could not hand a connection to the main process: %s", exc)
            transport.abort()  # closes only this process's descriptor

        send_when_drained()

    return take_over
