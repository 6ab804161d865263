"""Real servers for tests: ``butler serve`` in a subprocess on 127.0.0.1 and a free port."""

from __future__ import annotations

import http.client
import re
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

from aiohttp import web
from proxies import wait_until

from butler.server.app import ACCESS_COUNTS_FIELD
from butler.server.process import ServerProcess

WRITE_TOKEN = "writer-token-0123456789abcdef"
READ_TOKEN = "reader-token-0123456789abcdef"
SYNC_TARGET = "/healthz?log-sync"

# Two colleagues with read tokens of their own, and a writer: a private repository's tokens
# (butler serve --tokens FILE --read-access token).
ALICE = "alice-token-0123456789abcdef"
BOB = "bob-token-0123456789abcdef01"
PRIVATE_TOKENS = f"""
tokens:
  - name: writer
    token: "{WRITE_TOKEN}"
    scopes: [read, write]
  - name: alice
    token: "{ALICE}"
    scopes: [read]
  - name: bob
    token: "{BOB}"
    scopes: [read]
"""
"""What :meth:`ButlerServer.sync_log` asks for: logged, but left out of ``access_log()``."""
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
        """The access log's request lines, once every request answered so far is in it
        (without the lines of :meth:`sync_log`'s own probes)."""
        self.sync_log()
        entries = [m.groupdict() for m in _ACCESS.finditer(self.log_text())]
        return [e for e in entries if e["target"] != SYNC_TARGET]

    def sync_log(self, timeout: float = 10.0) -> None:
        """Wait until every request the server has received has its access-log line:
        aiohttp writes a line only after the response has gone out, so a client can be
        faster than the line it caused. /healthz reports requests received (itself
        included) and lines written (its own not yet): one apart, every other request
        is logged."""
        if self.process is None or self.process.poll() is not None:
            return  # stopped: nothing more will be written

        def caught_up() -> bool:
            received, written = self._access_counts()
            assert written < received, (received, written)  # the probe is never logged yet
            return written == received - 1

        wait_until(caught_up, timeout, what="every received request's access-log line")

    def _access_counts(self) -> tuple[int, int]:
        """(requests received, access-log lines written), from /healthz's X-Access-Log."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            conn.request("GET", SYNC_TARGET)
            response = conn.getresponse()
            response.read()
        finally:
            conn.close()
        field = response.getheader(ACCESS_COUNTS_FIELD) or ""
        match = re.fullmatch(r"received=(\d+), written=(\d+)", field)
        assert match, f"/healthz answered {response.status} without access-log counts: {field!r}"
        return int(match[1]), int(match[2])

    def mark(self) -> int:
        """Position in the access log, to count only what follows."""
        return len(self.access_log())

    def file_requests(self, since: int = 0) -> list[dict[str, str]]:
        return [e for e in self.access_log()[since:] if _is_file_request(e["target"])]

    def file_bytes_sent(self, since: int = 0) -> int:
        """Body bytes the server sent for file requests (and bundles) after ``since``."""
        return sum(int(e["bytes"]) for e in self.file_requests(since) if e["bytes"] != "-")


@contextmanager
def served(
    repo: Path, workdir: Path, *extra: str, tokens_yaml: str | None = None
) -> Iterator[ButlerServer]:
    """``butler serve`` of ``repo`` for the block, its files in ``workdir``; ``tokens_yaml``
    replaces the default tokens file (it is read at start, so it is written before)."""
    workdir.mkdir(parents=True, exist_ok=True)
    server = ButlerServer(repo, workdir, *extra)
    if tokens_yaml is not None:
        (workdir / "tokens.yaml").write_text(tokens_yaml)
    try:
        yield server.start()
    finally:
        server.stop()


def bearer(token: str) -> dict[str, str]:
    """The Authorization field of a request made with ``token``."""
    return {"Authorization": f"Bearer {token}"}
