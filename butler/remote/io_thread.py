"""Coroutines run for a blocking caller: an event loop in a thread of its own.

:class:`~butler.remote.butler.RemoteButler` runs the async client's coroutines on the loop of
an :class:`IOThread`, so it works the same from a script, a thread, or a Jupyter cell whose
own event loop is already running. While a coroutine runs, its blocking work (a formatter
decoding bytes, which fetches more through the loop) comes back to the caller's thread, which
waits anyway: a blocking read uses no thread more than the I/O thread, and runs its
formatter where a local read would (:data:`CALLER`).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import contextvars
import queue
import threading
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from butler.errors import ButlerError

T = TypeVar("T")

CALLER: contextvars.ContextVar[concurrent.futures.Executor | None] = contextvars.ContextVar(
    "butler_blocking_caller", default=None
)
"""Where a coroutine's blocking work runs: the thread of the blocking caller waiting for
it, or (None) the loop's worker threads, for an async caller that must not be blocked."""


class _CallerThread(concurrent.futures.Executor):
    """Runs the work submitted to it in the thread that waits for a coroutine's end."""

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[
            tuple[concurrent.futures.Future[Any], Callable[[], Any]] | None
        ]
        self._queue = queue.SimpleQueue()

    def submit(
        self, fn: Callable[..., T], /, *args: Any, **kwargs: Any
    ) -> concurrent.futures.Future[T]:
        future: concurrent.futures.Future[T] = concurrent.futures.Future()
        self._queue.put((future, lambda: fn(*args, **kwargs)))
        return future

    def serve_until(self, done: concurrent.futures.Future[T]) -> T:
        """Run submitted work until ``done`` is; its result."""
        done.add_done_callback(lambda _: self._queue.put(None))
        while (item := self._queue.get()) is not None:
            future, work = item
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(work())
                except BaseException as exc:  # noqa: BLE001 - handed to the coroutine
                    future.set_exception(exc)
        return done.result()


async def _with_caller(coro: Coroutine[Any, Any, T], caller: _CallerThread) -> T:
    token = CALLER.set(caller)
    try:
        return await coro
    finally:
        CALLER.reset(token)


class IOThread:
    """An event loop running in a daemon thread, for blocking callers."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self.loop.run_forever, name="butler-http", daemon=True
        )
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` on the loop to its end, serving its blocking work meanwhile."""
        if threading.current_thread() is self._thread:
            coro.close()
            raise ButlerError("a RemoteButler method was called from its own I/O thread")
        caller = _CallerThread()
        done = asyncio.run_coroutine_threadsafe(_with_caller(coro, caller), self.loop)
        try:
            return caller.serve_until(done)
        except BaseException:
            done.cancel()  # interrupted (Ctrl-C): nobody would serve its work any more
            raise

    def stop(self) -> None:
        if threading.current_thread() is self._thread:
            # Collected on its own thread: stop after this callback, nothing to wait for.
            self.loop.call_soon(self.loop.stop)
            return
        if self.loop.is_running():
            # Worker threads an async caller's work started end here, not left behind.
            done = asyncio.run_coroutine_threadsafe(
                self.loop.shutdown_default_executor(), self.loop
            )
            with contextlib.suppress(Exception):
                done.result(timeout=10)
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(timeout=10)
        if not self.loop.is_running():
            self.loop.close()
