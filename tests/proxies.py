"""proxyd as a real child process for tests: access-log parsing, metrics, raw-socket requests.

:class:`Proxy` is :class:`proxyd.process.ProxydProcess` plus what the integration tests need
to observe it from outside: its JSON access-log lines (``proxyd.access {...}``), its
Prometheus metrics, and requests sent either with ``http.client`` (no environment proxies,
no redirects, no retries, no normalisation of what we ask for) or as raw bytes on a socket
(for targets and methods that any client library would rewrite or refuse to send).
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from butler.server.process import free_port
from proxyd.process import ProxydProcess

__all__ = ["free_port"]  # re-exported for tests

_ACCESS = re.compile(r"proxyd\.access (\{.*\})\s*$")
BLOCK = 64 * 1024


def wait_until(
    predicate: Callable[[], Any], timeout: float = 10.0, interval: float = 0.02, what: str = ""
) -> Any:
    """Poll ``predicate`` until it returns something truthy (bounded); return that value."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"not true within {timeout} s: {what or predicate}")
        time.sleep(interval)


@dataclass
class Response:
    status: int
    headers: http.client.HTTPMessage
    body: bytes

    def header(self, name: str) -> str | None:
        return self.headers.get(name)


def request(
    base_url: str,
    path: str,
    headers: Mapping[str, str] | None = None,
    method: str = "GET",
    body: bytes | None = None,
    timeout: float = 30.0,
) -> Response:
    """One request with ``http.client`` to ``base_url`` (``http://127.0.0.1:PORT/...``)."""
    match = re.fullmatch(r"http://127\.0\.0\.1:(\d+)(/.*)", base_url)
    assert match, base_url
    conn = http.client.HTTPConnection("127.0.0.1", int(match[1]), timeout=timeout)
    try:
        conn.request(method, match[2] + path, body=body, headers=dict(headers or {}))
        resp = conn.getresponse()
        return Response(resp.status, resp.headers, resp.read())
    finally:
        conn.close()


def raw_request(port: int, data: bytes, timeout: float = 10.0) -> tuple[int, dict[str, str], bytes]:
    """Send ``data`` as is on a new connection; parse the first response (status, lower-case
    headers, body per Content-Length, or up to the close)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        received = b""
        while b"\r\n\r\n" not in received:
            chunk = sock.recv(65536)
            if not chunk:
                break
            received += chunk
        head, _, rest = received.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        if "content-length" in headers:
            length = int(headers["content-length"])
            while len(rest) < length:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                rest += chunk
            rest = rest[:length]
        return status, headers, rest


def parse_multipart(content_type: str, body: bytes) -> list[tuple[str, bytes]]:
    """(Content-Range, bytes) of each part of a ``multipart/byteranges`` body, checking the
    framing of RFC 9110 §14.6 strictly."""
    match = re.fullmatch(r"multipart/byteranges; ?boundary=\"?([^\";]+)\"?", content_type)
    assert match, content_type
    delimiter = b"--" + match[1].encode()
    assert body.endswith(delimiter + b"--\r\n"), body[-100:]
    pieces = body[: -len(delimiter + b"--\r\n")].split(b"\r\n" + delimiter + b"\r\n")
    first = pieces[0]
    assert first.startswith(b"\r\n" + delimiter + b"\r\n") or first.startswith(
        delimiter + b"\r\n"
    ), first[:100]
    pieces[0] = first[first.index(b"\r\n", 2 if first.startswith(b"\r\n") else 0) + 2 :]
    parts = []
    for i, piece in enumerate(pieces):
        head, _, data = piece.partition(b"\r\n\r\n")
        if i == len(pieces) - 1:
            assert data.endswith(b"\r\n"), data[-20:]
            data = data[:-2]
        fields = dict(
            (k.strip().lower(), v.strip())
            for k, _, v in (line.partition(":") for line in head.decode().split("\r\n"))
        )
        parts.append((fields["content-range"], data))
    return parts


class Proxy(ProxydProcess):
    """``proxyd serve`` with helpers to read what it logged and counted."""

    def __init__(
        self,
        upstreams: Mapping[str, str],
        workdir: Path,
        *extra: str,
        block_size: str = "64KiB",
        config: Mapping[str, Any] | None = None,
        cache_dir: Path | None = None,
        log_name: str = "proxyd.log",
    ) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        args = ["--block-size", block_size, *extra]
        if config:
            config_path = workdir / "proxyd.toml"
            config_path.write_text(
                "".join(f"{key} = {json.dumps(value)}\n" for key, value in config.items())
            )
            args += ["--config", str(config_path)]
        super().__init__(upstreams, cache_dir or workdir / "cache", workdir / log_name, *args)
        self.workdir = workdir

    @property
    def pid(self) -> int:
        assert self.process is not None, "proxyd is not running"
        return self.process.pid

    def get(self, path: str, headers: Mapping[str, str] | None = None, **kw: Any) -> Response:
        return request(self.url, path.lstrip("/"), headers, **kw)

    # -- access log ------------------------------------------------------------------------
    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def access_log(self) -> list[dict[str, Any]]:
        entries = []
        for line in self.log_text().splitlines():
            match = _ACCESS.search(line)
            if match:
                entries.append(json.loads(match[1]))
        return entries

    def sync_log(self, timeout: float = 10.0) -> None:
        """Wait until every request proxyd has received so far has its line in the access
        log: proxyd writes lines in batches (every 50 ms), after the answer may be out.

        /metrics counts the requests received that get a line (on arrival, before any
        answer) and the lines written out, summed over worker processes; equal counts
        prove every request answered before this call is logged. /metrics itself is
        neither counted nor logged, so no correction for the probe is needed."""
        if self.process is None or self.process.poll() is not None:
            return  # stopped: it flushed its lines on the way out, nothing more will come
        received, lines = "proxyd_requests_received_total", "proxyd_access_log_lines_total"

        def caught_up() -> bool:
            counts = self.metrics()
            assert counts[lines] <= counts[received], counts  # more lines than requests
            return counts[lines] == counts[received]

        wait_until(caught_up, timeout, what="every received request's access-log line")

    def settled_access_log(self, timeout: float = 10.0) -> list[dict[str, Any]]:
        """The access log, once every request received so far has its line in it."""
        self.sync_log(timeout)
        return self.access_log()

    def mark(self) -> int:
        """How many lines the log has, once every request received so far is in it."""
        return len(self.settled_access_log())

    def entries_since(self, mark: int, count: int, timeout: float = 10.0) -> list[dict[str, Any]]:
        """The access-log entries after ``mark``, once there are at least ``count`` of them
        (proxyd logs a request when its response has ended, after the client may have it)."""
        found: list[dict[str, Any]] = wait_until(
            lambda: (e := self.access_log()[mark:]) and len(e) >= count and e,
            timeout,
            what=f"{count} access-log entries after {mark}",
        )
        return found

    # -- metrics ----------------------------------------------------------------------------
    def metrics(self) -> dict[str, float]:
        """Every sample as ``name{label="v",...}`` (labels sorted) -> value; unlabelled
        samples by bare name."""
        text = request(self.url, "metrics").body.decode()
        out: dict[str, float] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
                out[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
        return out

    def metric_sum(self, prefix: str) -> float:
        """Sum of all samples named ``prefix`` (any labels)."""
        return sum(
            v for k, v in self.metrics().items() if k == prefix or k.startswith(prefix + "{")
        )

    def rss(self) -> int:
        """Resident set size of the proxyd process, in bytes."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise RuntimeError("no VmRSS")

    def terminate_quietly(self) -> None:
        """Stop even if start failed half-way (for fixture teardown)."""
        with contextlib.suppress(Exception):
            self.stop()
        if self.process is not None:  # stop() failed
            with contextlib.suppress(Exception):
                self.process.send_signal(signal.SIGKILL)


@contextlib.contextmanager
def running(proxy: Proxy) -> Iterator[Proxy]:
    """Start ``proxy`` and stop it whatever happens."""
    try:
        yield proxy.start()
    finally:
        proxy.terminate_quietly()


def proxyd_cli(
    *args: str, timeout: float = 60.0, input: str | None = None
) -> subprocess.CompletedProcess[str]:
    """``proxyd ARGS`` in a subprocess (our interpreter), output captured."""
    return subprocess.run(  # noqa: S603 - fixed interpreter, test arguments
        [sys.executable, "-m", "proxyd.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        input=input,
        check=False,
    )


def blocks_touched(ranges: list[tuple[int, int]], block: int = BLOCK) -> set[int]:
    """Indexes of the blocks that byte ranges (inclusive) touch."""
    return {i for start, end in ranges for i in range(start // block, end // block + 1)}


def block_union(ranges: list[tuple[int, int]], size: int, block: int = BLOCK) -> int:
    """Bytes of the union of the blocks that byte ranges (inclusive) touch."""
    return sum(min(block, size - i * block) for i in blocks_touched(ranges, block))


# -- a recording origin ----------------------------------------------------------------------


@dataclass
class Recorded:
    method: str
    target: str
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        for key, value in self.headers:
            if key.lower() == name.lower():
                return value
        return None

    def names(self) -> set[str]:
        return {key.lower() for key, _ in self.headers}


class RecordingOrigin:
    """A small HTTP/1.1 origin in a thread that records every request it gets.

    It serves ``objects`` (path -> bytes) with single-range support, a strong ETag that
    changes when an object is replaced, an old Last-Modified and ``response_headers`` (a
    mapping, or per path in ``headers_for``), and answers PUT (store the body), POST (record
    it) and DELETE (drop the object) with 204, which is what lets tests see what a proxy
    forwards, and with which fields, including hop-by-hop ones nginx would never log.
    """

    def __init__(self, response_headers: Mapping[str, str] | None = None) -> None:
        import http.server
        import threading

        self.objects: dict[str, bytes] = {}
        self.versions: dict[str, int] = {}
        self.requests: list[Recorded] = []
        self.response_headers = dict(response_headers or {})
        self.headers_for: dict[str, dict[str, str]] = {}
        self.fail_with: int | None = None
        """When set, every GET and HEAD is answered with this status (a failing origin)."""
        self.require_query: str | None = None
        """When set, GET and HEAD whose target lacks this text get 403 (a signed URL)."""
        self.hang = False
        """When true, GET and HEAD get no answer until it is false again (a stuck origin)."""
        self.closing = False
        self.active = 0
        """GET/HEAD requests being answered right now; ``peak_active`` is the most so far."""
        self.peak_active = 0
        self._lock = threading.Lock()
        origin = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _record(self) -> Recorded:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                entry = Recorded(self.command, self.path, list(self.headers.items()), body)
                with origin._lock:
                    origin.requests.append(entry)
                return entry

            def _send(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
                self.send_response(status)
                for name, value in headers:
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            def do_GET(self) -> None:
                with origin._lock:
                    origin.active += 1
                    origin.peak_active = max(origin.peak_active, origin.active)
                try:
                    self._answer_get()
                finally:
                    with origin._lock:
                        origin.active -= 1

            def _answer_get(self) -> None:
                self._record()
                while origin.hang and not origin.closing:
                    time.sleep(0.02)
                if origin.fail_with is not None:
                    self._send(origin.fail_with, [], b"origin failure\n")
                    return
                if origin.require_query and origin.require_query not in self.path:
                    self._send(403, [], b"bad signature\n")
                    return
                path = self.path.partition("?")[0]
                data = origin.objects.get(path)
                if data is None:
                    self._send(404, [], b"not found\n")
                    return
                etag = f'"v{origin.versions.get(path, 0)}-{len(data)}"'
                headers = [
                    ("ETag", etag),
                    ("Last-Modified", "Mon, 01 Jan 2024 00:00:00 GMT"),
                    ("Accept-Ranges", "bytes"),
                    ("Content-Type", "application/octet-stream"),
                    *origin.response_headers.items(),
                    *origin.headers_for.get(path, {}).items(),
                ]
                inm = self.headers.get("If-None-Match")
                if inm is not None and inm.strip() == etag:
                    self._send(304, headers, b"")
                    return
                im = self.headers.get("If-Match")
                if im is not None and im.strip() != etag:
                    self._send(412, [], b"")
                    return
                spec = self.headers.get("Range")
                match = re.fullmatch(r"bytes=(\d+)-(\d*)", spec or "")
                if match and int(match[1]) < len(data):
                    start = int(match[1])
                    end = min(int(match[2]) if match[2] else len(data) - 1, len(data) - 1)
                    headers.append(("Content-Range", f"bytes {start}-{end}/{len(data)}"))
                    self._send(206, headers, data[start : end + 1])
                    return
                self._send(200, headers, data)

            do_HEAD = do_GET

            def do_PUT(self) -> None:
                entry = self._record()
                path = self.path.partition("?")[0]
                origin.objects[path] = entry.body
                origin.versions[path] = origin.versions.get(path, 0) + 1
                self._send(204, [*origin.response_headers.items()], b"")

            def do_POST(self) -> None:
                self._record()
                self._send(204, [*origin.response_headers.items()], b"")

            def do_DELETE(self) -> None:
                self._record()
                origin.objects.pop(self.path.partition("?")[0], None)
                self._send(204, [*origin.response_headers.items()], b"")

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = int(self.server.server_address[1])
        self.url = f"http://127.0.0.1:{self.port}/"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def put(self, path: str, data: bytes) -> None:
        self.objects[path] = data
        self.versions[path] = self.versions.get(path, 0) + 1

    def requests_for(self, path: str) -> list[Recorded]:
        with self._lock:
            return [r for r in self.requests if r.target.partition("?")[0] == path]

    def __enter__(self) -> RecordingOrigin:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.closing = True
        self.server.shutdown()
        self.server.server_close()


def age_file(path: Path, days: float = 30.0) -> None:
    """Backdate a file's mtime, so nginx's Last-Modified gives it heuristic freshness
    (10% of its age, at most proxyd's heuristic_max of one day)."""
    old = time.time() - days * 86400
    os.utime(path, (old, old))


def write_old(root: Path, name: str, size: int, seed: int = 0, days: float = 30.0) -> bytes:
    """:func:`fixtures_nginx.write_object` with an old mtime (fresh in proxyd's cache)."""
    from fixtures_nginx import write_object

    data = write_object(root, name, size, seed)
    age_file(root / name, days)
    return data
