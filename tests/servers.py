"""Real servers for tests: ``butler serve`` in a subprocess on 127.0.0.1 and a free port."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

WRITE_TOKEN = "writer-token-0123456789abcdef"
READ_TOKEN = "reader-token-0123456789abcdef"
TOKENS_YAML = f"""
tokens:
  - name: writer
    token: "{WRITE_TOKEN}"
    scopes: [read, write]
  - name: reader
    token: "{READ_TOKEN}"
    scopes: [read]
"""
_ACCESS = re.compile(
    r'"(?P<method>[A-Z]+) (?P<target>\S+) HTTP/[\d.]+" (?P<status>\d{3}) body=(?P<bytes>\d+|-)'
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_http(
    url: str, timeout: float = 30.0, process: subprocess.Popen[bytes] | None = None
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"server exited with status {process.returncode} before answering")
        try:
            with urllib.request.urlopen(url, timeout=2):  # noqa: S310 - loopback test server
                return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(f"{url} did not answer within {timeout} s")


class ButlerServer:
    """``butler serve REPO`` as a child process; its access log is kept for byte counting."""

    def __init__(self, repo: Path, workdir: Path, *extra: str, tokens: bool = True) -> None:
        self.repo = repo
        self.workdir = workdir
        self.extra = list(extra)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        self.log_path = workdir / f"server-{self.port}.log"
        self.tokens_file: Path | None = None
        if tokens:
            self.tokens_file = workdir / "tokens.yaml"
            self.tokens_file.write_text(TOKENS_YAML)
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> ButlerServer:
        args = [
            sys.executable,
            "-m",
            "butler.cli.main",
            "serve",
            str(self.repo),
            "--port",
            str(self.port),
            *self.extra,
        ]
        if self.tokens_file:
            args += ["--tokens", str(self.tokens_file)]
        log = open(self.log_path, "ab")  # noqa: SIM115 - owned by the child process
        self.process = subprocess.Popen(args, stdout=log, stderr=log, env={**os.environ})
        log.close()
        wait_for_http(self.url + "healthz", process=self.process)
        return self

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def kill(self) -> None:
        assert self.process is not None
        self.process.kill()
        self.process.wait()
        self.process = None

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def access_log(self) -> list[dict[str, str]]:
        return [m.groupdict() for m in _ACCESS.finditer(self.log_text())]

    def mark(self) -> int:
        """Position in the access log, to count only what follows."""
        return len(self.access_log())

    def file_requests(self, since: int = 0) -> list[dict[str, str]]:
        return [e for e in self.access_log()[since:] if e["target"].startswith("/files/")]

    def file_bytes_sent(self, since: int = 0) -> int:
        """Body bytes the server sent for /files/ requests after ``since``."""
        return sum(int(e["bytes"]) for e in self.file_requests(since) if e["bytes"] != "-")
