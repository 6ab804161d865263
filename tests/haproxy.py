"""Debian's HAProxy as a real load balancer for tests and benchmarks.

:class:`HAProxy` runs ``haproxy -db -f CONFIG`` (foreground, one process) with a configuration
*rendered from a shipped file*: :func:`render` substitutes exact pieces of text (addresses,
the stats socket, the log target) and refuses to render when a piece does not occur exactly
once, so the test runs the file as shipped and breaks loudly when the file drifts from what
the test expects. The stats socket answers ``show stat`` (:meth:`HAProxy.server_states`), the
log goes to a file the test can read. Like tests/nginx.py, it runs in its own session with
``setpriv --pdeathsig`` so a killed pytest takes it down, and stopping kills the group.
"""

from __future__ import annotations

import contextlib
import csv
import io
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterable, Mapping
from pathlib import Path

from nginx import free_port


class HAProxyNotFound(RuntimeError):
    """No haproxy binary; install Debian's ``haproxy`` (scripts/test.sh does, as root)."""


def haproxy_binary() -> str:
    found = shutil.which("haproxy") or (
        "/usr/sbin/haproxy" if Path("/usr/sbin/haproxy").exists() else None
    )
    if found is None:
        raise HAProxyNotFound(
            "haproxy not found on PATH or at /usr/sbin/haproxy (apt-get install haproxy)"
        )
    return found


def render(text: str, substitutions: Mapping[str, str], drop_lines: Iterable[str] = ()) -> str:
    """``text`` with each key of ``substitutions`` replaced by its value and each line equal
    to one of ``drop_lines`` (stripped) removed; every key and dropped line must occur
    exactly once, so a config that no longer has what the test replaces fails here."""
    for old, new in substitutions.items():
        count = text.count(old)
        if count != 1:
            raise ValueError(f"{old!r} occurs {count} times in the config, not once")
        text = text.replace(old, new)
    lines = text.splitlines(keepends=True)
    for dropped in drop_lines:
        matching = [line for line in lines if line.strip() == dropped]
        if len(matching) != 1:
            raise ValueError(f"line {dropped!r} occurs {len(matching)} times, not once")
        lines.remove(matching[0])
    return "".join(lines)


class HAProxy:
    """``haproxy -db -f CONFIG`` on a config rendered by the caller.

    ``config_text`` must put the stats socket at :attr:`stats_socket` and may log to
    ``stdout`` (captured in :attr:`log_path`). :attr:`port` is the frontend port the caller
    chose (use :func:`free_port`), :attr:`url` its base URL.
    """

    def __init__(self, config_text: str, workdir: Path, port: int) -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = port
        self.url = f"http://127.0.0.1:{port}/"
        self.config_path = self.workdir / "haproxy.cfg"
        self.config_path.write_text(config_text)
        self.log_path = self.workdir / "haproxy.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.process is not None, "haproxy is not running"
        return self.process.pid

    @property
    def stats_socket(self) -> Path:
        return self.workdir / "admin.sock"

    def check(self) -> None:
        """``haproxy -c``: the configuration is valid (raises with HAProxy's message)."""
        result = subprocess.run(  # noqa: S603 - fixed binary, our config
            [haproxy_binary(), "-c", "-f", str(self.config_path)],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(f"haproxy -c failed: {result.stdout}{result.stderr}")

    def start(self, timeout: float = 15.0) -> HAProxy:
        if self.process is not None:
            raise RuntimeError("already started")
        pdeath = ["setpriv", "--pdeathsig", "KILL"] if shutil.which("setpriv") else []
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(  # noqa: S603 - fixed argv, no shell
                [*pdeath, haproxy_binary(), "-db", "-f", str(self.config_path)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,  # own process group: stop() kills all of it
            )
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                log_text = self.log_path.read_text(errors="replace")
                self.process = None
                raise RuntimeError(f"haproxy exited at start: {log_text[-3000:]}")
            if self.stats_socket.exists() and self._listening():
                return self
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"haproxy not listening on {self.port} within {timeout} s")
            time.sleep(0.05)

    def _listening(self) -> bool:
        with socket.socket() as sock:
            sock.settimeout(1)
            return sock.connect_ex(("127.0.0.1", self.port)) == 0

    def command(self, line: str, timeout: float = 5.0) -> str:
        """One command on the stats socket (``show stat``, ``show servers state`` ...)."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(str(self.stats_socket))
            sock.sendall(line.encode() + b"\n")
            chunks = []
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        return b"".join(chunks).decode()

    def stats(self) -> list[dict[str, str]]:
        """``show stat`` as rows (keys: pxname, svname, status, scur, stot, ...)."""
        text = self.command("show stat").lstrip("# ")
        return [row for row in csv.DictReader(io.StringIO(text)) if row.get("pxname")]

    def server_states(self, backend: str) -> dict[str, str]:
        """Server name -> status (``UP``, ``DOWN``, ``UP 1/3`` while rising ...)."""
        return {
            row["svname"]: row["status"]
            for row in self.stats()
            if row["pxname"] == backend and row["svname"] not in ("FRONTEND", "BACKEND")
        }

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM (immediate stop), then SIGKILL for the whole group; idempotent."""
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
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)

    def __enter__(self) -> HAProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


__all__ = ["HAProxy", "HAProxyNotFound", "free_port", "haproxy_binary", "render"]
