"""Run ``butler serve`` as a child process (for the demo, benchmarks and tests)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Self


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_http(
    url: str, timeout: float = 30.0, process: subprocess.Popen[bytes] | None = None
) -> None:
    """Poll ``url`` until it answers (any status below 500 counts as up)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"server exited with status {process.returncode} before answering")
        try:
            with urllib.request.urlopen(url, timeout=2):  # noqa: S310 - our own loopback server
                return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(f"{url} did not answer within {timeout} s")


class ChildServer:
    """An HTTP server of ours run as a child process on 127.0.0.1 and a free port."""

    health_path = "healthz"

    def __init__(self, log_path: Path) -> None:
        self.log_path = log_path
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        self.process: subprocess.Popen[bytes] | None = None

    def command(self) -> list[str]:
        raise NotImplementedError(f"{type(self).__name__} must say how it is started")

    def start(self) -> Self:
        args = self.command()
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(  # noqa: S603 - our interpreter, fixed argv
                args, stdout=log, stderr=log, env={**os.environ}, start_new_session=True
            )
        wait_for_http(self.url + self.health_path, process=self.process)
        return self

    def stop(self) -> None:
        """Shut down cleanly (SIGINT), or kill after 15 s."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def kill(self) -> None:
        """SIGKILL, as a crash would."""
        if self.process is not None:
            self.process.kill()
            self.process.wait()
        self.process = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class ServerProcess(ChildServer):
    """``butler serve REPO`` on 127.0.0.1 and a free port, logging to ``log_path``."""

    def __init__(self, repo: Path, log_path: Path, *extra: str) -> None:
        super().__init__(log_path)
        self.repo = repo
        self.extra = list(extra)

    def command(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "butler.cli.main",
            "serve",
            str(self.repo),
            "--port",
            str(self.port),
            *self.extra,
        ]
