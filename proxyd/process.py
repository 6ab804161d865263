"""Run ``proxyd serve`` as a child process (for the demo, benchmarks and tests)."""

from __future__ import annotations

import sys
from collections.abc import Mapping
from pathlib import Path

from butler.server.process import ChildServer


class ProxydProcess(ChildServer):
    """``proxyd serve`` for ``upstreams`` on 127.0.0.1 and a free port."""

    def __init__(
        self, upstreams: Mapping[str, str], cache_dir: Path, log_path: Path, *extra: str
    ) -> None:
        super().__init__(log_path)
        self.upstreams = dict(upstreams)
        self.cache_dir = cache_dir
        self.extra = list(extra)

    def command(self) -> list[str]:
        args = [
            sys.executable,
            "-m",
            "proxyd.cli",
            "serve",
            "--listen",
            f"127.0.0.1:{self.port}",
            "--cache-dir",
            str(self.cache_dir),
        ]
        for name, url in self.upstreams.items():
            args += ["--upstream", f"{name}={url}"]
        return [*args, *self.extra]

    def upstream_url(self, name: str) -> str:
        return f"{self.url}{name}/"
