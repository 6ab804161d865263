"""Debian's nginx as a real, independent HTTP peer for tests and benchmarks.

Two roles:

- :class:`NginxOrigin` serves a directory of files on 127.0.0.1 (static files get RFC 9110
  ranges, strong-ish ETags and Last-Modified from nginx itself) with a JSON-lines access log,
  so tests can count exactly what the origin sent.
- :class:`NginxCachingProxy` is nginx configured the way a site would put it in front of a far
  repository instead of proxyd: ``proxy_cache`` + ``slice`` + ``proxy_cache_lock``. It is the
  peer of issue 4's benchmarks.

Both run ``nginx -p PREFIX -c CONF -e ERRLOG -g 'daemon off;'`` in a new session, with every
path nginx writes (pid, logs, temp directories) inside ``workdir``, so they run unprivileged.
Under root the workers keep root's identity (``user root;``), because the default ``nobody``
could not read pytest's 0700 temporary directories. Stopping kills the whole process group,
so no worker survives its master.
"""

from __future__ import annotations

import contextlib
import http.client
import itertools
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
import urllib.parse
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: Tokens the origin's ``/private/`` location accepts by default.
GOOD_TOKEN = "good-token-0123456789abcdef"

#: Path of the health location (logged, like every request, but hidden from ``access_log()``).
HEALTH_PATH = "/__nginx_health"

#: Path of the log-sync location: logged (as a marker), but hidden from :meth:`access_log`.
SYNC_PATH = "/__nginx_sync"

#: Path of nginx's request counts (``stub_status``): logged, but hidden from ``access_log()``.
STATUS_PATH = "/__nginx_status"

#: The helpers' own requests, which :meth:`_NginxProcess.access_log` leaves out.
_OWN_PATHS = frozenset({HEALTH_PATH, SYNC_PATH, STATUS_PATH})

# One JSON object per request. ``escape=json`` makes arbitrary header values safe to embed;
# numbers stay strings in nginx and are converted by :func:`parse_access_log`.
_LOG_FORMAT = (
    "log_format jsonl escape=json '{"
    '"time":"$msec",'
    '"method":"$request_method",'
    '"uri":"$request_uri",'
    '"status":"$status",'
    '"body_bytes_sent":"$body_bytes_sent",'
    '"bytes_sent":"$bytes_sent",'
    '"range":"$http_range",'
    '"if_range":"$http_if_range",'
    '"authorization":"$auth_present",'
    '"cookie":"$cookie_present",'
    '"completion":"$request_completion",'
    '"request_time":"$request_time",'
    '"connection":"$connection",'
    '"cache":"$upstream_cache_status"'
    "}';"
)
_INT_FIELDS = ("status", "body_bytes_sent", "bytes_sent", "connection")


class NginxNotFound(RuntimeError):
    """No nginx binary; install Debian's ``nginx`` (``.ci/run`` does)."""


def nginx_binary() -> str:
    found = shutil.which("nginx") or (
        "/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None
    )
    if found is None:
        raise NginxNotFound("nginx not found on PATH or at /usr/sbin/nginx (apt-get install nginx)")
    return found


def _die_with_parent() -> list[str]:
    """Command prefix making nginx's master get SIGTERM when its parent dies.

    nginx runs in its own session (so stop() can kill the group), which also shields it from
    a Ctrl-C or a killed pytest; ``setpriv --pdeathsig`` (util-linux) ties the master's life
    to ours without a preexec_fn, and the master takes its workers down on SIGTERM.
    """
    return ["setpriv", "--pdeathsig", "TERM"] if shutil.which("setpriv") else []


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _children(pid: int) -> set[int]:
    """PIDs whose parent is ``pid`` (nginx's workers and cache processes)."""
    found = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            # The command name may contain spaces or parentheses: split after the last ')'.
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.add(int(entry))
    return found


def parse_access_log(text: str) -> list[dict[str, Any]]:
    """Entries of a ``jsonl`` access log; a trailing partial line (being written) is ignored."""
    entries: list[dict[str, Any]] = []
    for line in text.splitlines(keepends=True):
        if not line.endswith("\n") or not line.strip():
            continue
        entry: dict[str, Any] = json.loads(line)
        for key in _INT_FIELDS:
            value = entry.get(key, "")
            entry[key] = int(value) if value.isdigit() else 0
        entry["authorization"] = entry.get("authorization") == "1"
        entry["cookie"] = entry.get("cookie") == "1"
        entry["path"] = urllib.parse.urlsplit(entry["uri"]).path
        entries.append(entry)
    return entries


@dataclass(frozen=True)
class Location:
    """An extra origin location serving the same root under ``prefix`` with its own policy.

    ``prefix`` must start and end with ``/``; ``/nocache/a.bin`` serves ``root_dir/a.bin``.
    ``headers`` are added to every response (``add_header ... always``), e.g.
    ``{"Cache-Control": "no-store"}`` or ``{"Set-Cookie": "session=1"}``.
    ``require_token`` answers 401 without ``Authorization``, 403 for a token not in the
    origin's ``tokens``. ``limit_rate`` (nginx syntax, e.g. ``"256k"``) throttles each response
    so long reads can be observed mid-flight.
    """

    prefix: str
    headers: Mapping[str, str] = field(default_factory=dict)
    require_token: bool = False
    limit_rate: str | None = None

    def __post_init__(self) -> None:
        if not (self.prefix.startswith("/") and self.prefix.endswith("/")):
            raise ValueError(f"location prefix must start and end with '/': {self.prefix!r}")


def _quote(value: str) -> str:
    """An nginx string literal; refuses what could end it early or interpolate variables."""
    if any(c in value for c in '"\\\n\r$'):
        raise ValueError(f"unsupported character in nginx config value: {value!r}")
    return f'"{value}"'


class _NginxProcess:
    """Shared lifecycle: config file, start in a new session, health wait, group kill."""

    def __init__(self, workdir: Path, worker_processes: int | str) -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.worker_processes = worker_processes
        self.port = 0
        self.conf_path = self.workdir / "nginx.conf"
        self.error_log_path = self.workdir / "error.log"
        self.access_log_path = self.workdir / "access.log"
        self.stderr_path = self.workdir / "stderr.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.generation = 0

    # -- to be provided by subclasses -------------------------------------------------------
    def _http_block(self) -> str:
        raise NotImplementedError

    # -- config -----------------------------------------------------------------------------
    def _config(self) -> str:
        w = self.workdir
        temp = "\n".join(
            f"    {kind}_temp_path {_quote(str(w / 'tmp' / kind))};"
            for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
        )
        user = "user root;\n" if os.geteuid() == 0 else ""
        return f"""# generated by tests/nginx.py (generation {self.generation})
{user}worker_processes {self.worker_processes};
pid {_quote(str(w / "nginx.pid"))};
error_log {_quote(str(self.error_log_path))} warn;
events {{
    worker_connections 1024;
}}
http {{
    default_type application/octet-stream;
    sendfile on;
    tcp_nopush on;
    keepalive_timeout 65s;
    keepalive_requests 100000;
    server_tokens off;
{temp}
    map $http_authorization $auth_present {{ "" 0; default 1; }}
    map $http_cookie $cookie_present {{ "" 0; default 1; }}
    {_LOG_FORMAT}
    access_log {_quote(str(self.access_log_path))} jsonl;
{self._http_block()}
}}
"""

    def _health_location(self) -> str:
        # Generation header: after a reload, lets us wait until new workers answer. Every
        # request is logged, these too: sync_log compares nginx's request count with the
        # lines in the log.
        return (
            f"        location = {HEALTH_PATH} {{ "
            f'add_header X-Generation "{self.generation}" always; return 204; }}\n'
            f"        location = {SYNC_PATH} {{ return 204; }}\n"
            f"        location = {STATUS_PATH} {{ stub_status; }}\n"
        )

    # -- lifecycle --------------------------------------------------------------------------
    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    @property
    def pid(self) -> int:
        """PID of the nginx master (its workers are its children)."""
        if self.process is None:
            raise RuntimeError("nginx is not running")
        return self.process.pid

    def start(self, timeout: float = 15.0) -> _NginxProcess:
        if self.process is not None:
            raise RuntimeError("already started")
        for sub in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
            (self.workdir / "tmp" / sub).mkdir(parents=True, exist_ok=True)
        # A free port can be taken between probe and bind; retry a few times on that race.
        last_error = ""
        for _attempt in range(5):
            self.port = free_port()
            self.conf_path.write_text(self._config())
            stderr = open(self.stderr_path, "wb")  # noqa: SIM115 - handed to the child
            self.process = subprocess.Popen(  # noqa: S603 - fixed argv, no shell
                [
                    *_die_with_parent(),
                    nginx_binary(),
                    "-p",
                    str(self.workdir),
                    "-c",
                    str(self.conf_path),
                    "-e",
                    str(self.error_log_path),
                    "-g",
                    "daemon off;",
                ],
                stdin=subprocess.DEVNULL,
                # A file, not a pipe: nothing would drain a pipe while nginx runs.
                stdout=stderr,
                stderr=stderr,
                start_new_session=True,  # own process group: stop() kills workers too
            )
            stderr.close()
            try:
                self._wait_healthy(timeout)
                return self
            except RuntimeError as exc:
                last_error = str(exc)
                self.stop()
                if "Address already in use" not in last_error:
                    break
        raise RuntimeError(f"nginx did not start: {last_error}")

    def _probe(self) -> int | None:
        """Generation the running workers answer with, or None while not listening."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
        try:
            conn.request("GET", HEALTH_PATH)
            resp = conn.getresponse()
            resp.read()
            return int(resp.getheader("X-Generation", "-1"))
        except OSError:
            return None
        finally:
            conn.close()

    def _wait_healthy(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        assert self.process is not None
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                stderr = self.stderr_path.read_text(errors="replace")
                errlog = (
                    self.error_log_path.read_text(errors="replace")
                    if self.error_log_path.exists()
                    else ""
                )
                raise RuntimeError(
                    f"nginx exited with status {self.process.returncode}: {stderr}{errlog[-2000:]}"
                )
            if self._probe() == self.generation:
                return
            time.sleep(0.05)
        raise RuntimeError(f"nginx on port {self.port} not healthy within {timeout} s")

    def reload(self, timeout: float = 15.0) -> None:
        """Rewrite the config and SIGHUP the master; returns once only new workers run.

        New workers answering is not enough: an old worker still accepts connections for a
        moment after the new ones start, so we also wait for every old worker to exit (idle
        keep-alive connections are closed at once; an unfinished response delays this).
        """
        if self.process is None:
            raise RuntimeError("nginx is not running")
        old_workers = _children(self.process.pid)
        self.generation += 1
        self.conf_path.write_text(self._config())
        self.process.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + timeout
        self._wait_healthy(timeout)
        while old_workers & _children(self.process.pid):
            if time.monotonic() > deadline:
                raise RuntimeError(f"old nginx workers still running after {timeout} s")
            time.sleep(0.05)

    def stop(self, timeout: float = 10.0) -> None:
        """Fast shutdown (SIGTERM), then SIGKILL for the whole process group; idempotent."""
        proc = self.process
        if proc is None:
            return
        self.process = None
        try:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=timeout)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=timeout)
        finally:
            # Workers may outlive a killed master; the group id is the master's pid.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)

    def __enter__(self) -> _NginxProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- access log -------------------------------------------------------------------------
    def sync_log(self, timeout: float = 5.0) -> None:
        """Wait until every request answered so far is in the access log.

        nginx writes a request's line when it finalises the request, in the same event
        handler call that sent the response's last bytes (ngx_http_finalize_request ->
        ngx_http_set_keepalive or ngx_http_close_request -> ngx_http_log_request); but a
        client on another core can hold those bytes a moment before the line exists.
        One worker handles its events one after another, so a marker request it answers
        comes after every line of the requests answered before it (unlike a wait for the
        log to stop growing, this also lets a long read still in flight stay unlogged).
        With several workers another worker may still be finalising; then nginx's own
        request count (stub_status) must equal the lines in the log (see
        :meth:`_sync_by_counts`).
        """
        if self.process is None or self.process.poll() is not None:
            return  # stopped: nothing more will be written
        if self.worker_processes == 1:
            self._sync_by_marker(timeout)
        else:
            self._sync_by_counts(timeout)

    def _get(self, target: str, timeout: float) -> bytes:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            conn.request("GET", target)
            response = conn.getresponse()
            body = response.read()
        finally:
            conn.close()
        assert response.status in (200, 204), (target, response.status)
        return body

    def _sync_by_marker(self, timeout: float) -> None:
        marker = uuid.uuid4().hex
        self._get(f"{SYNC_PATH}?{marker}", timeout)
        deadline = time.monotonic() + timeout
        while marker not in self._log_text():
            if time.monotonic() > deadline:
                raise TimeoutError(f"nginx did not log the sync marker within {timeout} s")
            time.sleep(0.005)

    def _sync_by_counts(self, timeout: float) -> None:
        """Wait until the log has a line for every request nginx has received (stub_status
        counts them, in all workers) but our own count probes: their lines may lag. Strict,
        so a request still in flight holds this up until it ends."""
        marker = uuid.uuid4().hex
        deadline = time.monotonic() + timeout
        for probes in itertools.count(1):
            status = self._get(f"{STATUS_PATH}?{marker}", timeout).decode()
            counts = re.search(r"accepts handled requests\s+(\d+) (\d+) (\d+)", status)
            assert counts, status
            received = int(counts[3])
            lines = [
                line
                for line in self._log_text().splitlines(keepends=True)
                if line.endswith("\n") and marker not in line
            ]
            if len(lines) == received - probes:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"nginx logged {len(lines)} of {received - probes} requests in {timeout} s"
                )
            time.sleep(0.005)

    def _log_text(self) -> str:
        if not self.access_log_path.exists():
            return ""
        return self.access_log_path.read_text(errors="replace")

    def access_log(self, since: int = 0, *, sync: bool = True) -> list[dict[str, Any]]:
        """Logged requests (oldest first) after mark ``since``.

        Keys: method, uri, path, status (int), body_bytes_sent (int), bytes_sent (int, with
        headers), range, if_range (raw header values, "" if absent), authorization and cookie
        (bool: header present), completion ("OK" if the response was sent completely),
        request_time, connection (int), cache ($upstream_cache_status, proxies only), time.
        nginx logs a request when it ends, so an unfinished long read is not there yet;
        finished ones are, because we first :meth:`sync_log` (unless ``sync=False``).
        """
        if sync:
            self.sync_log()
        entries = parse_access_log(self._log_text())
        return [e for e in entries if e["path"] not in _OWN_PATHS][since:]

    def mark(self) -> int:
        """Position in the access log; pass it as ``since`` to count only what follows."""
        return len(self.access_log())

    def bytes_sent(self, since: int = 0, path_prefix: str | None = None) -> int:
        """Body bytes sent (``$body_bytes_sent``) after ``since``, optionally under a path."""
        return sum(
            e["body_bytes_sent"]
            for e in self.access_log(since)
            if path_prefix is None or e["path"].startswith(path_prefix)
        )


class NginxOrigin(_NginxProcess):
    """nginx serving ``root_dir`` at ``/`` on 127.0.0.1 and a free port.

    Built-in locations (each an ``alias`` of the same root, so one file is reachable under
    every policy): ``/`` plain; ``/private/`` requires ``Authorization: Bearer <token>`` with a
    token from ``tokens`` (401 without, 403 with a wrong one); ``/slow/`` is throttled to
    ``slow_rate`` per response. ``locations`` adds more (see :class:`Location`); change
    ``self.locations`` and call :meth:`reload` to alter policy while running.
    """

    def __init__(
        self,
        root_dir: Path,
        workdir: Path,
        *,
        tokens: Sequence[str] = (GOOD_TOKEN,),
        locations: Sequence[Location] = (),
        slow_rate: str = "256k",
        worker_processes: int | str = 1,
    ) -> None:
        super().__init__(workdir, worker_processes)
        self.root_dir = Path(root_dir).resolve()
        self.root_dir.mkdir(parents=True, exist_ok=True)
        self.tokens = list(tokens)
        self.locations: list[Location] = [
            Location("/private/", require_token=True),
            Location("/slow/", limit_rate=slow_rate),
            *locations,
        ]

    def _location_block(self, loc: Location) -> str:
        lines = [
            f"        location {loc.prefix} {{",
            f"            alias {_quote(f'{self.root_dir}/')};",
        ]
        if loc.require_token:
            lines += [
                "            if ($token_status = 401) {",
                '                add_header WWW-Authenticate "Bearer" always;',
                "                return 401;",
                "            }",
                "            if ($token_status = 403) { return 403; }",
            ]
        if loc.limit_rate:
            lines.append(f"            limit_rate {loc.limit_rate};")
        for name, value in loc.headers.items():
            if not re.fullmatch(r"[A-Za-z0-9-]+", name):
                raise ValueError(f"invalid header name: {name!r}")
            lines.append(f"            add_header {name} {_quote(value)} always;")
        lines.append("        }")
        return "\n".join(lines) + "\n"

    def _http_block(self) -> str:
        # A map rather than a chain of ifs: one lookup, and it is the shape of a real config.
        token_map = "".join(f"        {_quote('Bearer ' + t)} 200;\n" for t in self.tokens)
        locations = "".join(self._location_block(loc) for loc in self.locations)
        return f"""    map $http_authorization $token_status {{
        "" 401;
{token_map}        default 403;
    }}
    server {{
        listen 127.0.0.1:{self.port};
        root {_quote(str(self.root_dir))};
{self._health_location()}{locations}    }}"""

    def start(self, timeout: float = 15.0) -> NginxOrigin:
        super().start(timeout)
        return self

    def __enter__(self) -> NginxOrigin:
        return self.start()


class NginxCachingProxy(_NginxProcess):
    """nginx as the caching reverse proxy a site would deploy instead of proxyd.

    ``/<name>/<path>`` is proxied to ``upstream_url + <path>`` (the same layout as proxyd's
    upstreams, so benchmarks use one URL scheme), through a slice cache: each ``block_size``
    slice is fetched with its own upstream Range request and cached under
    ``$uri$is_args$args$slice_range``, ``proxy_cache_lock`` makes concurrent misses of one
    slice wait for a single fetch, and upstream connections are kept alive. Every response
    carries ``X-Cache-Status`` ($upstream_cache_status). :attr:`url` is the proxied base URL.
    """

    def __init__(
        self,
        upstream_url: str,
        cache_dir: Path,
        workdir: Path,
        block_size: int = 1 << 20,
        *,
        name: str = "origin",
        worker_processes: int | str = "auto",
        cache_max_size: str = "64g",
        lock_timeout: str = "60s",
    ) -> None:
        super().__init__(workdir, worker_processes)
        parts = urllib.parse.urlsplit(upstream_url)
        if parts.scheme != "http" or parts.hostname != "127.0.0.1" or parts.port is None:
            raise ValueError(f"upstream must be http://127.0.0.1:PORT/...: {upstream_url!r}")
        if block_size <= 0 or block_size % 1024:
            raise ValueError("block_size must be a positive multiple of 1024")
        self.upstream_host = f"127.0.0.1:{parts.port}"
        self.upstream_path = parts.path if parts.path.endswith("/") else parts.path + "/"
        self.cache_dir = Path(cache_dir)
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        self.block_size = block_size
        self.name = name
        self.cache_max_size = cache_max_size
        self.lock_timeout = lock_timeout

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/{self.name}/"

    def _http_block(self) -> str:
        return f"""    upstream upstream_origin {{
        server {self.upstream_host};
        keepalive 64;
    }}
    proxy_cache_path {_quote(str(self.cache_dir))} levels=1:2 keys_zone=blocks:64m
                     max_size={self.cache_max_size} inactive=7d use_temp_path=off;
    server {{
        listen 127.0.0.1:{self.port};
{self._health_location()}        location /{self.name}/ {{
            slice {self.block_size};
            proxy_cache blocks;
            proxy_cache_key $uri$is_args$args$slice_range;
            proxy_set_header Range $slice_range;
            proxy_cache_valid 200 206 1h;
            # Coalesce concurrent misses of one slice. The default 5 s timeout would let a
            # crowd bypass the lock (and the cache) under load; waiting is what users want.
            proxy_cache_lock on;
            proxy_cache_lock_timeout {self.lock_timeout};
            proxy_cache_lock_age {self.lock_timeout};
            proxy_cache_revalidate on;
            proxy_cache_use_stale error timeout updating http_502 http_503 http_504;
            # Keepalive to the origin needs HTTP/1.1 and no "Connection: close".
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            # Buffers of a tuned deployment (defaults are 8 x 4k, slow for GiB objects).
            proxy_buffer_size 64k;
            proxy_buffers 32 64k;
            proxy_busy_buffers_size 256k;
            add_header X-Cache-Status $upstream_cache_status always;
            proxy_pass http://upstream_origin{self.upstream_path};
        }}
        location / {{ return 404; }}
    }}"""

    def start(self, timeout: float = 15.0) -> NginxCachingProxy:
        super().start(timeout)
        return self

    def __enter__(self) -> NginxCachingProxy:
        return self.start()
