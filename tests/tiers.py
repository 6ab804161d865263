"""The site deployment of docs/deployment.md, started on loopback from the shipped files.

:class:`Site` starts, in this order: a parent proxyd (``config/proxyd-parent.toml``) whose
upstream is the far origin; child proxyd nodes (``config/proxyd-child.toml``) whose upstream
is the parent; HAProxy with ``config/haproxy/site.cfg``. Only what cannot be the same on one
machine is changed: every address becomes 127.0.0.1 and a free port, every cache directory
and log a temporary one, cache sizes fit a test, HAProxy's stats socket and log go to its
work directory, and chroot/user/group (which need root and a packaged layout) are dropped.
Everything else — hashing, health checks, retries, timeouts, block sizes, tier timeouts,
workers — runs as shipped. Used by tests/test_proxy_tiers.py and bench/bench_tiers.py.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import tomllib
import urllib.parse
from pathlib import Path
from types import TracebackType
from typing import Any

from haproxy import HAProxy, free_port, render
from proxies import Proxy, wait_until

ROOT = Path(__file__).resolve().parents[1]
SITE_CFG = ROOT / "config" / "haproxy" / "site.cfg"
CHILD_TOML = ROOT / "config" / "proxyd-child.toml"
PARENT_TOML = ROOT / "config" / "proxyd-parent.toml"

#: The backend of site.cfg whose servers are the child nodes.
BACKEND = "proxyd_nodes"
#: The upstream name both tiers use (the first path segment of every URL).
UPSTREAM = "far"
#: Response header site.cfg sets to the name of the node that answered.
NODE_HEADER = "X-Proxyd-Node"

#: Address of the nth child (from 1) in site.cfg: "server childN 10.0.0.1N:8080".
_SERVER_LINE = re.compile(r"^\s*server (child\d+) (\S+)", re.MULTILINE)


def shipped_toml(path: Path) -> dict[str, Any]:
    with open(path, "rb") as f:
        return tomllib.load(f)


def shipped_children() -> list[tuple[str, str]]:
    """(name, address) of every child node listed in site.cfg, in order."""
    return _SERVER_LINE.findall(SITE_CFG.read_text())


def render_site_cfg(
    frontend_port: int, child_ports: list[int], stats_socket: Path, *, text: str | None = None
) -> str:
    """site.cfg (or ``text``, a variant of it) with loopback addresses and test paths."""
    text = SITE_CFG.read_text() if text is None else text
    children = _SERVER_LINE.findall(text)
    if len(children) != len(child_ports):
        raise ValueError(f"site.cfg lists {len(children)} children, {len(child_ports)} ports given")
    substitutions = {
        "    bind :8080\n": f"    bind 127.0.0.1:{frontend_port}\n",
        "    log /dev/log local0\n": "    log stdout format raw local0\n",
        "stats socket /run/haproxy/admin.sock ": f"stats socket {stats_socket} ",
    }
    for (name, address), port in zip(children, child_ports, strict=True):
        substitutions[f"server {name} {address}"] = f"server {name} 127.0.0.1:{port}"
    return render(
        text, substitutions, drop_lines=("chroot /var/lib/haproxy", "user haproxy", "group haproxy")
    )


def _local_upstream(shipped_url: str, port: int) -> str:
    """The shipped upstream URL with its authority replaced by 127.0.0.1:``port``."""
    parts = urllib.parse.urlsplit(shipped_url)
    return urllib.parse.urlunsplit(("http", f"127.0.0.1:{port}", parts.path, "", ""))


class Site:
    """Parent, children and HAProxy, started from the shipped files; stopped on exit, even
    when starting fails half-way.

    ``origin_url`` is the far repository (``http://127.0.0.1:PORT/``). ``children`` defaults
    to the number of servers site.cfg lists; fewer keep only the first ones (benchmarks).
    ``cfg_text`` replaces site.cfg's text (tests that break it on purpose).
    """

    def __init__(
        self,
        origin_url: str,
        workdir: Path,
        *,
        children: int | None = None,
        cache_size: str = "2GiB",
        cfg_text: str | None = None,
    ) -> None:
        self.origin_url = origin_url
        self.workdir = workdir
        self.cache_size = cache_size
        text = SITE_CFG.read_text() if cfg_text is None else cfg_text
        listed = _SERVER_LINE.findall(text)
        count = len(listed) if children is None else children
        if not 1 <= count <= len(listed):
            raise ValueError(f"site.cfg lists {len(listed)} children; asked for {count}")
        for name, address in listed[count:]:  # benchmarks with fewer nodes: drop the rest
            text = re.sub(rf"^\s*server {name} {re.escape(address)}( .*)?\n", "", text, flags=re.M)
        self.cfg_text = text
        self.child_names = [name for name, _ in listed[:count]]
        self.parent: Proxy | None = None
        self.children: dict[str, Proxy] = {}
        self.haproxy: HAProxy | None = None
        self._stack = contextlib.ExitStack()

    # -- lifecycle ------------------------------------------------------------------------
    def _proxy(self, name: str, toml: Path, upstream_url: str) -> Proxy:
        block_size = str(shipped_toml(toml)["block_size"])
        proxy = Proxy(
            {UPSTREAM: upstream_url},
            self.workdir / name,
            "--config",
            str(toml),
            "--cache-size",
            self.cache_size,
            block_size=block_size,
        )
        self._stack.callback(proxy.terminate_quietly)
        return proxy.start()

    def start(self) -> Site:
        try:
            parent_far = shipped_toml(PARENT_TOML)["upstreams"][UPSTREAM]
            assert urllib.parse.urlsplit(parent_far).path in ("", "/"), parent_far
            self.parent = self._proxy("parent", PARENT_TOML, self.origin_url)
            child_far = shipped_toml(CHILD_TOML)["upstreams"][UPSTREAM]
            for name in self.child_names:
                self.children[name] = self._proxy(
                    name, CHILD_TOML, _local_upstream(child_far, self.parent.port)
                )
            port = free_port()
            haproxy_dir = self.workdir / "haproxy"
            haproxy_dir.mkdir(parents=True, exist_ok=True)
            text = render_site_cfg(
                port,
                [self.children[n].port for n in self.child_names],
                haproxy_dir / "admin.sock",
                text=self.cfg_text,
            )
            self.haproxy = HAProxy(text, haproxy_dir, port)
            self._stack.callback(self.haproxy.stop)
            self.haproxy.check()
            self.haproxy.start()
            # HAProxy starts every server "UP 1/2": assumed up, one failed check from down,
            # until its first check passes. Serve only once every node has passed one.
            haproxy = self.haproxy
            wait_until(
                lambda: set(haproxy.server_states(BACKEND).values()) == {"UP"},
                timeout=15,
                interval=0.1,
                what="every child node passes HAProxy's first health check",
            )
        except BaseException:
            self._stack.close()
            raise
        return self

    def stop(self) -> None:
        self._stack.close()

    def __enter__(self) -> Site:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- use --------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        """Base URL of the objects through HAProxy: ``url + name`` is an object."""
        assert self.haproxy is not None
        return f"{self.haproxy.url}{UPSTREAM}/"

    def kill(self, name: str) -> None:
        """SIGKILL node ``name`` (a child's name, or "parent"): its whole process group, its
        fast-lane workers too, as a host crash would take it down; no clean shutdown, no
        goodbye to HAProxy."""
        proxy = self.parent if name == "parent" else self.children[name]
        assert proxy is not None, "the site is not started"
        process = proxy.process
        assert process is not None, f"{name} is not running"
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)
        proxy.process = None

    def restart(self, name: str) -> None:
        """Start a killed child again: same port, same cache directory (what survived)."""
        proxy = self.children[name]
        assert proxy.process is None, f"{name} is still running"
        proxy.start()
