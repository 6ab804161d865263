"""Requests to upstream origins: one aiohttp session per upstream, capped connections.

Failures are typed (devpi's UpstreamError idea) and turned into 502/504 only at the view
layer: :class:`UpstreamUnavailable` (cannot connect) and :class:`UpstreamTimeout` (no answer
in time) both name the upstream so an operator sees which origin failed.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

import aiohttp

from proxyd.metrics import Metrics
from proxyd.policy.requests import via_entry, with_via
from proxyd.settings import ProxySettings


class UpstreamError(Exception):
    status = 502

    def __init__(self, upstream: str, message: str) -> None:
        self.upstream = upstream
        super().__init__(message)


class UpstreamUnavailable(UpstreamError):
    status = 502


class UpstreamTimeout(UpstreamError):
    status = 504


class UpstreamClients:
    """Sessions to each configured upstream (created lazily on the serving loop)."""

    def __init__(self, settings: ProxySettings, metrics: Metrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self._sessions: dict[str, aiohttp.ClientSession] = {}
        self._via = via_entry(settings.via_name)  # on every request: loops are noticed

    def _session(self, upstream: str) -> aiohttp.ClientSession:
        session = self._sessions.get(upstream)
        if session is None or session.closed:
            s = self.settings
            session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=s.upstream_connections, ttl_dns_cache=300),
                timeout=aiohttp.ClientTimeout(
                    total=None,
                    sock_connect=s.upstream_connect_timeout,
                    sock_read=s.upstream_read_timeout,
                ),
                auto_decompress=False,  # bytes pass through exactly as the origin sent them
                skip_auto_headers=("User-Agent", "Accept-Encoding"),
            )
            self._sessions[upstream] = session
        return session

    @asynccontextmanager
    async def request(
        self,
        upstream: str,
        method: str,
        url: str,
        headers: Mapping[str, str] | list[tuple[str, str]],
        data: Any = None,
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        """Send one request, with this proxy's entry added to its Via; raise
        UpstreamUnavailable/UpstreamTimeout on transport failure."""
        started = time.perf_counter()
        pairs = tuple(headers.items()) if isinstance(headers, Mapping) else tuple(headers)
        try:
            async with self._session(upstream).request(
                method,
                url,
                headers=list(with_via(pairs, self._via)),
                data=data,
                allow_redirects=False,
            ) as response:
                self.metrics.upstream_latency.labels(upstream).observe(
                    time.perf_counter() - started
                )
                yield response
        except (TimeoutError, aiohttp.ServerTimeoutError) as exc:
            self.metrics.errors.labels("upstream_timeout").inc()
            raise UpstreamTimeout(
                upstream, f"upstream {upstream!r} did not answer within the configured timeout"
            ) from exc
        except aiohttp.ClientConnectionError as exc:
            self.metrics.errors.labels("upstream_unavailable").inc()
            raise UpstreamUnavailable(
                upstream, f"upstream {upstream!r} is unreachable: {exc}"
            ) from exc
        except aiohttp.ClientResponseError as exc:
            # Not HTTP (a bad status line, a body longer than its Content-Length spilling
            # into the next response...): the origin's fault, a 502 that says so, not a 500.
            self.metrics.errors.labels("upstream_malformed").inc()
            raise UpstreamError(
                upstream, f"upstream {upstream!r} sent a malformed response: {exc.message}"
            ) from exc

    async def close(self) -> None:
        for session in self._sessions.values():
            await session.close()
        self._sessions.clear()
