"""Timeouts measured on the wall clock: what the tests no longer assert, checked here.

The tests assert what happens (a 504 naming the upstream, a dropped client, a read timeout
reported as such) and bound each wait with the client's own timeout, far below proxyd's
defaults; how long each wait takes is measured here instead, on real servers on 127.0.0.1:

proxyd (upstream_connect_timeout 2 s, upstream_read_timeout 3 s; a second proxyd with
client_timeout 2 s; a third in front of nginx throttled to 1 MiB/s):

- a stuck origin (answers nothing): 504 after one read timeout, or the cached copy served
  STALE after one read timeout;
- an origin that listens but never accepts (the kernel completes the handshake): 504 after
  one read timeout; one whose accept queue is full (the handshake never completes): 504
  after one connect timeout; a refused connection: 502 at once;
- a client that sends half a request, or nothing, is closed after client_timeout; one that
  stops reading its answer (being filled from the origin, or sent from the cache) is dropped
  after client_timeout;
- a client that hangs up after 512 KiB of an 8 MiB object at 1 MiB/s: the upstream fetch is
  cut (nginx logs it unfinished) within 4 s of the hang-up, not after the 8 s it would take.

mirror (its downloader against an aiohttp fake origin):

- two 503 answers with ``Retry-After: 0``: no backoff wait (the usual backoff is set to
  2 s, so ignoring the header would cost about 6 s);
- an answer that stalls half-way: reported as a read timeout after ``read_timeout`` (0.5 s),
  what arrived kept, while the server would stall for 15 s.

Each case runs ``--rounds`` times; the table gives min/median/max seconds and whether every
round had the expected outcome within [configured, configured + margin]. The exit status is
1 if any did not, so the bench is a check too. Every wait is bounded (client timeouts of at
most 15 s); a full run takes about a minute.

Usage: python bench/bench_timeouts.py [--rounds 3] [--margin 1.5]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import hashlib
import math
import socket
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web
from harness import MiB  # also puts tests/ on sys.path, for the server helpers below
from nginx import NginxOrigin
from proxies import Proxy, RecordingOrigin, running, wait_until, write_old
from servers import served_app

from butler.refs import DataCoordinate, DatasetRef, DatasetType, FileInfo
from mirror.http import HttpFetcher
from mirror.plan import Item
from mirror.transfer import TransferError, TransferSettings

CONNECT_TIMEOUT = 2.0
READ_TIMEOUT = 3.0
CLIENT_TIMEOUT = 2.0
MIRROR_READ_TIMEOUT = 0.5
MIRROR_BACKOFF = 2.0
#: The longest any client here waits for an answer: far below proxyd's defaults (60 s), far
#: above every configured timeout, so a wait that ignored the configuration ends here.
CLIENT_BOUND = 15.0
#: "At once": a refused connection, and Retry-After: 0, may take this long at most.
AT_ONCE = 1.0
#: The old test's bound on cutting an abandoned upstream fetch (nginx's limit_rate sends a
#: second's worth at a time, so it notices the closed connection up to a second late).
ABANDON_BOUND = 4.0

Measure = Callable[[int], tuple[float, str]]
"""One round (numbered from 0) of a case: (seconds, outcome)."""


@dataclass
class Case:
    name: str
    configured: str
    low: float
    high: float
    expected: str
    measure: Measure
    seconds: list[float] = field(default_factory=list)
    outcomes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return bool(self.seconds) and all(
            self.low <= s <= self.high and o == self.expected
            for s, o in zip(self.seconds, self.outcomes, strict=True)
        )


def run_rounds(case: Case, rounds: int) -> None:
    for i in range(rounds):
        seconds, outcome = case.measure(i)
        case.seconds.append(seconds)
        case.outcomes.append(outcome)
        print(f"   {case.name} #{i + 1}: {seconds:.3f} s, {outcome}", file=sys.stderr)


def timed_get(proxy: Proxy, path: str) -> tuple[float, str]:
    """Seconds until the proxy answers ``path``; outcome ``STATUS`` (plus ``X-Cache``)."""
    started = time.monotonic()
    try:
        response = proxy.get(path, timeout=CLIENT_BOUND)
    except TimeoutError:
        return time.monotonic() - started, "no answer"
    seconds = time.monotonic() - started
    cache = response.header("X-Cache")
    return seconds, f"{response.status} {cache}" if cache else str(response.status)


# -- proxyd: upstream timeouts -----------------------------------------------------------------


@contextlib.contextmanager
def silent_listener(backlog: int) -> Iterator[str]:
    """A listening socket that never accepts; yields its URL. With ``backlog`` 0 one held
    connection fills its accept queue, so further handshakes never complete (Linux drops
    their SYNs) and a connect waits for its timeout."""
    with socket.socket() as listener, contextlib.ExitStack() as held:
        listener.bind(("127.0.0.1", 0))
        listener.listen(backlog)
        port = listener.getsockname()[1]
        if backlog == 0:
            held.enter_context(socket.create_connection(("127.0.0.1", port), timeout=5))
        yield f"http://127.0.0.1:{port}/"


def quiet_origin(stack: contextlib.ExitStack, headers: dict[str, str]) -> RecordingOrigin:
    """A started :class:`RecordingOrigin` that does not print a traceback for each client
    gone mid-answer: here that is the proxy giving up on purpose, every round."""
    recording = stack.enter_context(RecordingOrigin(headers))
    recording.server.handle_error = lambda request, client_address: None  # type: ignore[method-assign]
    return recording


def refused_url() -> str:
    """A loopback port nobody listens on (bound, then closed: connecting is refused)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{probe.getsockname()[1]}/"


def upstream_cases(stack: contextlib.ExitStack, workdir: Path, margin: float) -> list[Case]:
    recording = quiet_origin(stack, {"Cache-Control": "max-age=0"})
    never_accepts = stack.enter_context(silent_listener(64))
    queue_full = stack.enter_context(silent_listener(0))
    upstreams = {
        "r": recording.url,
        "dead": never_accepts,
        "full": queue_full,
        "gone": refused_url(),
    }
    config = {"upstream_connect_timeout": CONNECT_TIMEOUT, "upstream_read_timeout": READ_TIMEOUT}
    proxy = stack.enter_context(
        running(Proxy(upstreams, workdir / "upstream-proxy", config=config))
    )
    data = b"x" * (5 * 64 * 1024 + 300)

    def stuck(cached: bool) -> Measure:
        def measure(i: int) -> tuple[float, str]:
            name = f"/{'cached' if cached else 'uncached'}-{i}.bin"
            recording.put(name, data)
            if cached:
                assert proxy.get(f"/r{name}").body == data  # cached, and stale at once
            recording.hang = True
            try:
                return timed_get(proxy, f"/r{name}")
            finally:
                recording.hang = False

        return measure

    read = f"upstream_read_timeout {READ_TIMEOUT:g} s"
    connect = f"upstream_connect_timeout {CONNECT_TIMEOUT:g} s"
    return [
        Case(
            "stuck origin, uncached",
            read,
            READ_TIMEOUT,
            READ_TIMEOUT + margin,
            "504 ERROR",
            stuck(cached=False),
        ),
        Case(
            "stuck origin, cached (stale)",
            read,
            READ_TIMEOUT,
            READ_TIMEOUT + margin,
            "200 STALE",
            stuck(cached=True),
        ),
        Case(
            "listener never accepts",
            read,
            READ_TIMEOUT,
            READ_TIMEOUT + margin,
            "504 ERROR",
            lambda i: timed_get(proxy, f"/dead/x{i}.bin"),
        ),
        Case(
            "accept queue full",
            connect,
            CONNECT_TIMEOUT,
            CONNECT_TIMEOUT + margin,
            "504 ERROR",
            lambda i: timed_get(proxy, f"/full/x{i}.bin"),
        ),
        Case(
            "connection refused",
            f"at once ({connect})",
            0.0,
            AT_ONCE,
            "502 ERROR",
            lambda i: timed_get(proxy, f"/gone/x{i}.bin"),
        ),
    ]


# -- proxyd: slow clients ----------------------------------------------------------------------


def closed_after(port: int, opening: bytes) -> tuple[float, str]:
    """Send ``opening`` and wait for the proxy to close the connection."""
    with socket.create_connection(("127.0.0.1", port), timeout=CLIENT_BOUND) as sock:
        sock.sendall(opening)
        started = time.monotonic()
        try:
            received = sock.recv(100)
        except TimeoutError:
            return time.monotonic() - started, "still open"
        seconds = time.monotonic() - started
        return seconds, "closed" if received == b"" else f"answered {received[:12]!r}"


def client_cases(stack: contextlib.ExitStack, workdir: Path, margin: float) -> list[Case]:
    recording = quiet_origin(stack, {"Cache-Control": "max-age=3600"})
    config = {"client_timeout": CLIENT_TIMEOUT}
    proxy = stack.enter_context(
        running(Proxy({"r": recording.url}, workdir / "client-proxy", config=config))
    )
    # Far more than the socket buffers hold (16 KiB asked of the client's, a few MiB at most
    # of the proxy's), so a client that reads nothing stalls the answer. One object, shared.
    big = bytes(range(256)) * (32 * MiB // 256)
    kind = 'proxyd_errors_total{kind="client_timeout"}'

    def not_reading(cached: bool) -> Measure:
        def measure(i: int) -> tuple[float, str]:
            name = f"/unread-{'cached' if cached else 'filling'}-{i}.bin"
            recording.objects[name] = big
            if cached:
                assert proxy.get(f"/r{name}").status == 200
            dropped = proxy.metrics().get(kind, 0)
            with socket.create_connection(("127.0.0.1", proxy.port), timeout=CLIENT_BOUND) as s:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * 1024)
                s.sendall(f"GET /r{name} HTTP/1.1\r\nHost: p\r\n\r\n".encode())
                started = time.monotonic()
                try:
                    wait_until(
                        lambda: proxy.metrics().get(kind, 0) > dropped,
                        timeout=CLIENT_BOUND,
                        interval=0.05,
                    )
                except TimeoutError:
                    return time.monotonic() - started, "not dropped"
                return time.monotonic() - started, "dropped"

        return measure

    setting = f"client_timeout {CLIENT_TIMEOUT:g} s"
    high = CLIENT_TIMEOUT + margin
    half = b"GET /r/a.bin HTTP/1.1\r\nHost: p\r\n"
    return [
        Case(
            "client sends half a request",
            setting,
            CLIENT_TIMEOUT,
            high,
            "closed",
            lambda i: closed_after(proxy.port, half),
        ),
        Case(
            "client sends nothing",
            setting,
            CLIENT_TIMEOUT,
            high,
            "closed",
            lambda i: closed_after(proxy.port, b""),
        ),
        Case(
            "client stops reading, filling",
            setting,
            CLIENT_TIMEOUT,
            high,
            "dropped",
            not_reading(cached=False),
        ),
        Case(
            "client stops reading, cached",
            setting,
            CLIENT_TIMEOUT,
            high,
            "dropped",
            not_reading(cached=True),
        ),
    ]


# -- proxyd: an abandoned download -------------------------------------------------------------


def abandon_cases(stack: contextlib.ExitStack, workdir: Path) -> list[Case]:
    origin = stack.enter_context(
        NginxOrigin(workdir / "origin-root", workdir / "origin", slow_rate="1m")
    )
    config = {"readahead_bytes": "256KiB"}
    proxy = stack.enter_context(
        running(Proxy({"o": origin.url}, workdir / "abandon-proxy", config=config))
    )
    size = 8 * MiB

    def measure(i: int) -> tuple[float, str]:
        name = f"abandon-{i}.bin"
        write_old(origin.root_dir, name, size, seed=10 + i)
        mark = origin.mark()
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=CLIENT_BOUND) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
            sock.sendall(f"GET /o/slow/{name} HTTP/1.1\r\nHost: p\r\n\r\n".encode())
            received = 0
            while received < 512 * 1024:
                chunk = sock.recv(65536)
                if not chunk:
                    return 0.0, "closed early"
                received += len(chunk)
            # Taken before the hang-up, on nginx's scale: $msec (when the request ended) is
            # the epoch truncated to milliseconds, so the difference is never negative.
            hung_up = math.floor(time.time() * 1000) / 1000
        [entry] = wait_until(
            lambda: [e for e in origin.access_log(mark) if e["path"] == f"/slow/{name}"],
            timeout=CLIENT_BOUND,
            interval=0.1,
            what="the upstream request to end",
        )
        outcome = "cut" if entry["completion"] != "OK" else "fetched whole"
        return float(entry["time"]) - hung_up, outcome

    return [
        Case(
            "abandoned download: fetch cut",
            "client gone (8 s at 1 MiB/s)",
            0.0,
            ABANDON_BOUND,
            "cut",
            measure,
        ),
    ]


# -- mirror ------------------------------------------------------------------------------------

PAYLOAD = bytes(range(256)) * 4096  # 1 MiB


class FakeOrigin:
    """/files/blob with scripted answers: ``busy`` (503, Retry-After: 0), ``stall`` (the
    head and half the body, then nothing until released or 15 s), else the whole body."""

    def __init__(self) -> None:
        self.script: list[str] = []
        self.requests = 0
        self.release = asyncio.Event()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.requests += 1
        action = self.script.pop(0) if self.script else "ok"
        if action == "busy":
            return web.Response(status=503, headers={"Retry-After": "0"})
        if action == "stall":
            response = web.StreamResponse(headers={"Content-Length": str(len(PAYLOAD))})
            await response.prepare(request)
            await response.write(PAYLOAD[: len(PAYLOAD) // 2])
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.release.wait(), CLIENT_BOUND)
            return response
        return web.Response(body=PAYLOAD)


def blob_item() -> Item:
    dataset_id = uuid.uuid4()
    dataset_type = DatasetType("blob", ("instrument",), "Array")
    ref = DatasetRef(
        dataset_id, dataset_type, DataCoordinate({"instrument": "HSC"}, ("instrument",)), "raw"
    )
    checksum = "sha256:" + hashlib.sha256(PAYLOAD).hexdigest()
    return Item(ref, FileInfo(dataset_id, "blob", len(PAYLOAD), checksum, "npy", "Array", {}))


async def mirror_round(fake: FakeOrigin, url: str, target: Path, stall: bool) -> tuple[float, str]:
    fake.requests = 0
    fake.release.clear()
    fake.script = ["stall"] if stall else ["busy", "busy"]
    settings = TransferSettings(
        jobs=2,
        attempts=1 if stall else 5,
        # With a single attempt the fetcher still sleeps one backoff before it gives up, so
        # the stall round keeps the tests' 0.01 s: what is measured is the read timeout.
        backoff=0.01 if stall else MIRROR_BACKOFF,
        read_timeout=MIRROR_READ_TIMEOUT if stall else CLIENT_BOUND,
    )
    await asyncio.to_thread(target.unlink, missing_ok=True)
    started = time.monotonic()
    try:
        async with HttpFetcher(url, None, settings) as fetcher:
            await asyncio.wait_for(fetcher.fetch(blob_item(), target, lambda n: None), 30)
    except TransferError as error:
        seconds = time.monotonic() - started
        kept = await asyncio.to_thread(target.read_bytes) == PAYLOAD[: len(PAYLOAD) // 2]
        timed_out = "no data within the read timeout" in str(error)
        return seconds, ("read timeout" if timed_out else str(error)) + (
            ", half kept" if kept else ", partial lost"
        )
    finally:
        fake.release.set()
    seconds = time.monotonic() - started
    complete = await asyncio.to_thread(target.read_bytes) == PAYLOAD
    return seconds, f"{fake.requests} requests" + (", complete" if complete else ", wrong bytes")


async def mirror_measurements(workdir: Path, rounds: int) -> dict[bool, list[tuple[float, str]]]:
    """Both mirror cases, ``rounds`` each, on one fake origin (keyed by ``stall``)."""
    fake = FakeOrigin()
    app = web.Application()
    app.router.add_get("/files/{name}", fake.handle)
    results: dict[bool, list[tuple[float, str]]] = {False: [], True: []}
    async with served_app(app) as url:
        for stall in (False, True):
            for _ in range(rounds):
                results[stall].append(await mirror_round(fake, url, workdir / "blob.part", stall))
    return results


def mirror_cases(workdir: Path, rounds: int, margin: float) -> list[Case]:
    measured = asyncio.run(mirror_measurements(workdir, rounds))
    return [
        Case(
            "mirror: Retry-After 0, no backoff",
            f"backoff {MIRROR_BACKOFF:g} s unused",
            0.0,
            AT_ONCE,
            "3 requests, complete",
            lambda i: measured[False][i],
        ),
        Case(
            "mirror: stalled answer",
            f"read_timeout {MIRROR_READ_TIMEOUT:g} s",
            MIRROR_READ_TIMEOUT,
            MIRROR_READ_TIMEOUT + margin,
            "read timeout, half kept",
            lambda i: measured[True][i],
        ),
    ]


# -- report ------------------------------------------------------------------------------------


def report(cases: list[Case], rounds: int, margin: float) -> None:
    print(f"Timeouts on the wall clock, {rounds} rounds each, margin {margin:g} s (seconds)")
    width = max(len(c.name) for c in cases)
    conf = max(len(c.configured) for c in cases)
    head = f"{'case':<{width}}  {'configured':<{conf}}  {'min':>6} {'median':>6} {'max':>6}"
    print(f"{head}  {'band':>12}  {'ok':<3} outcome")
    for c in cases:
        band = f"[{c.low:g}, {c.high:g}]"
        outcomes = sorted(set(c.outcomes))
        figures = f"{min(c.seconds):6.2f} {statistics.median(c.seconds):6.2f} {max(c.seconds):6.2f}"
        print(
            f"{c.name:<{width}}  {c.configured:<{conf}}  {figures}  {band:>12}  "
            f"{'yes' if c.ok else 'NO':<3} {' / '.join(outcomes)}"
        )
        if not c.ok:
            print(f"{'':<{width}}  expected {c.expected!r} in {band} every round", file=sys.stderr)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="measurements per case (1-10)")
    parser.add_argument("--margin", type=float, default=1.5, help="seconds allowed over a timeout")
    args = parser.parse_args()
    rounds = max(1, min(args.rounds, 10))
    started = time.monotonic()
    cases: list[Case] = []
    with tempfile.TemporaryDirectory(prefix="bench-timeouts-") as tmp:
        workdir = Path(tmp)
        groups: list[Callable[[contextlib.ExitStack], list[Case]]] = [
            functools.partial(upstream_cases, workdir=workdir, margin=args.margin),
            functools.partial(client_cases, workdir=workdir, margin=args.margin),
            functools.partial(abandon_cases, workdir=workdir),
        ]
        for group in groups:
            with contextlib.ExitStack() as stack:  # each group's servers stop after it
                group_cases = group(stack)
                for case in group_cases:
                    run_rounds(case, rounds)
                cases += group_cases
        mirror = mirror_cases(workdir, rounds, args.margin)
        for case in mirror:
            run_rounds(case, rounds)
        cases += mirror
    report(cases, rounds, args.margin)
    print(f"({time.monotonic() - started:.0f} s in all)")
    if not all(c.ok for c in cases):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
