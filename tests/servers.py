"""Real servers for tests: ``butler serve`` in a subprocess on 127.0.0.1 and a free port."""

from __future__ import annotations

import re
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from aiohttp import web

from butler.server.process import ServerProcess

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


@asynccontextmanager
async def served_app(app: web.Application, **runner_options: Any) -> AsyncIterator[str]:
    """Serve a fake origin's ``app`` on 127.0.0.1 and a free port; yields its base URL."""
    runner = web.AppRunner(app, **runner_options)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}/"
    finally:
        await runner.cleanup()


_ACCESS = re.compile(
    r'"(?P<method>[A-Z]+) (?P<target>\S+) HTTP/[\d.]+" (?P<status>\d{3}) body=(?P<bytes>\d+|-)'
)


def _is_file_request(target: str) -> bool:
    """A request for dataset files: one file (GET /files/...) or a bundle of them."""
    return target.startswith("/files/") or target == "/api/v1/files/bundle"


class ButlerServer(ServerProcess):
    """``butler serve REPO`` as a child process; its access log is kept for byte counting."""

    def __init__(self, repo: Path, workdir: Path, *extra: str, tokens: bool = True) -> None:
        args = list(extra)
        if tokens:
            tokens_file = workdir / "tokens.yaml"
            tokens_file.write_text(TOKENS_YAML)
            args += ["--tokens", str(tokens_file)]
        super().__init__(repo, workdir / "server.log", *args)

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def access_log(self) -> list[dict[str, str]]:
        self._settle()
        return [m.groupdict() for m in _ACCESS.finditer(self.log_text())]

    def _settle(self, quiet: float = 0.15, limit: float = 3.0) -> None:
        """Wait until the log stops growing: aiohttp writes an access-log line only after the
        response has gone out, so a client can be faster than the line it caused."""
        deadline = time.monotonic() + limit
        size = -1
        while time.monotonic() < deadline:
            current = self.log_path.stat().st_size if self.log_path.exists() else 0
            if current == size:
                return
            size = current
            time.sleep(quiet)

    def mark(self) -> int:
        """Position in the access log, to count only what follows."""
        return len(self.access_log())

    def file_requests(self, since: int = 0) -> list[dict[str, str]]:
        return [e for e in self.access_log()[since:] if _is_file_request(e["target"])]

    def file_bytes_sent(self, since: int = 0) -> int:
        """Body bytes the server sent for file requests (and bundles) after ``since``."""
        return sum(int(e["bytes"]) for e in self.file_requests(since) if e["bytes"] != "-")
