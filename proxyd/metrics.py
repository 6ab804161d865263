"""Prometheus metrics of one proxyd instance (its own registry, so tests can run several)."""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

__all__ = ["CONTENT_TYPE_LATEST", "Metrics", "Sample"]

SAMPLE_SECONDS = 10.0
"""How often the main process records a :class:`Sample` for the status page (``/status``)."""
SAMPLES_KEPT = 360
"""Samples kept in memory: an hour at one per ``SAMPLE_SECONDS``."""
TOP_OBJECTS_KEPT = 1000
"""Targets whose requests are counted for the status page's top objects; past this many the
least requested are dropped (so a scan of unique URLs cannot grow the table without bound)."""
TARGET_CHARS = 300
"""Longer request targets are cut to this for the top-objects table."""


@dataclass(frozen=True)
class Sample:
    """The cumulative counters at one moment: the status page draws differences of these."""

    at: float
    """Wall-clock time (seconds since the epoch)."""
    hits: float
    misses: float
    partial_hits: float
    bytes_from_cache: float
    bytes_to_clients: float
    cache_bytes: int


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "proxyd_requests",
            "Client requests by method, status and cache outcome",
            ["method", "status", "cache"],
            registry=r,
        )
        self._request_counts: dict[tuple[str, int, str], Any] = {}
        self._pending_requests: dict[tuple[str, int, str], int] = {}
        self._pending_from_cache = 0
        self._pending_to_clients = 0
        self._pending_handovers: dict[str, int] = {}
        self._pending_received = 0
        self._pending_logged = 0
        self._pending_objects: dict[str, list[int]] = {}
        self.top_objects: dict[str, list[int]] = {}
        """Request target -> [requests, body bytes sent], for the status page (main process)."""
        self.samples: deque[Sample] = deque(maxlen=SAMPLES_KEPT)
        # Together these two say when the access log is complete (tests wait for that
        # instead of for the log to stop growing): every request counted as received gets
        # one line, so when the lines written equal the requests received, each request
        # answered before the scrape is in the log.
        self.requests_received = Counter(
            "proxyd_requests_received",
            "Client requests received that get an access-log line (counted on arrival)",
            registry=r,
        )
        self.access_log_lines = Counter(
            "proxyd_access_log_lines",
            "Access-log lines written out (to the log file or stderr)",
            registry=r,
        )
        self.hits = Counter("proxyd_cache_hits", "Requests answered wholly from cache", registry=r)
        self.misses = Counter(
            "proxyd_cache_misses", "Requests answered wholly from the origin", registry=r
        )
        self.partial_hits = Counter(
            "proxyd_cache_partial_hits",
            "Requests answered partly from cache, partly fetched",
            registry=r,
        )
        self.bytes_from_cache = Counter(
            "proxyd_bytes_from_cache", "Body bytes sent to clients from stored blocks", registry=r
        )
        self.bytes_from_origin = Counter(
            "proxyd_bytes_from_origin",
            "Body bytes received from upstream origins",
            ["upstream"],
            registry=r,
        )
        self.bytes_to_clients = Counter(
            "proxyd_bytes_to_clients", "Body bytes sent to clients", registry=r
        )
        self.coalesced_waits = Counter(
            "proxyd_coalesced_waits",
            "Block reads that joined an upstream fetch already in flight",
            registry=r,
        )
        self.upstream_latency = Histogram(
            "proxyd_upstream_latency_seconds",
            "Time to upstream response headers",
            ["upstream"],
            registry=r,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
        )
        self.errors = Counter("proxyd_errors", "Errors by kind", ["kind"], registry=r)
        self.cache_size = Gauge(
            "proxyd_cache_size_bytes", "Bytes held by the block cache", registry=r
        )
        self.evictions = Counter("proxyd_evictions", "Cache entries evicted (LRU)", registry=r)
        self.store_failures = Counter(
            "proxyd_store_failures",
            "Writes the cache could not make (file system full or read-only): the responses "
            "were answered all the same, without storing",
            registry=r,
        )
        self.store_degraded = Gauge(
            "proxyd_store_degraded",
            "1 while the cache cannot store (misses pass through; see /healthz), else 0",
            registry=r,
        )
        self.fast_lane_handovers = Counter(
            "proxyd_fast_lane_handovers",
            "Connections the fast lane handed to the full handler, by the first request it "
            "did not answer itself",
            ["reason"],
            registry=r,
        )
        self.stale_served = Counter(
            "proxyd_stale_served", "Responses served stale because the origin failed", registry=r
        )
        self.auth_checks = Counter(
            "proxyd_auth_checks",
            "Authorisation checks sent to origins, by answer",
            ["result"],
            registry=r,
        )

    def count_request(
        self, method: str, status: int, cache: str, from_cache: int, from_origin: int
    ) -> None:
        """One answered request: added up here, and into the Prometheus counters by
        :meth:`settle` (before every scrape). A busy proxy answers tens of thousands of
        requests a second; five locked counter increments each would be a tenth of the
        work of answering one. Event loop only, like :meth:`settle`."""
        key = (method, status, cache)
        self._pending_requests[key] = self._pending_requests.get(key, 0) + 1
        self._pending_from_cache += from_cache
        self._pending_to_clients += from_cache + from_origin

    def count_object(self, target: str, sent: int) -> None:
        """One answered request for ``target`` that sent ``sent`` body bytes (top objects).
        Event loop only; unsettled targets are capped too, new ones past the cap not counted.
        The query is left out: it may carry a signature or token (the page is for operators,
        not for handing out signed URLs), and the path names the object."""
        target = target.partition("?")[0][:TARGET_CHARS]
        counts = self._pending_objects.get(target)
        if counts is None:
            if len(self._pending_objects) >= TOP_OBJECTS_KEPT:
                return
            counts = self._pending_objects[target] = [0, 0]
        counts[0] += 1
        counts[1] += sent

    def count_received(self) -> None:
        """One request that will get an access-log line has arrived (see count_request)."""
        self._pending_received += 1

    def count_logged(self, lines: int) -> None:
        """``lines`` access-log lines have been written out (see count_request)."""
        self._pending_logged += lines

    def count_handover(self, reason: str) -> None:
        """One connection the fast lane handed to the full handler (see count_request)."""
        self._pending_handovers[reason] = self._pending_handovers.get(reason, 0) + 1

    def take_counts(self) -> dict[str, Any]:
        """The counts not settled yet, as plain JSON data, and forget them: a worker process
        sends them to the main one (:mod:`proxyd.workers`), which adds them with
        :meth:`add_counts`."""
        counts = {
            "requests": [[*key, n] for key, n in self._pending_requests.items()],
            "from_cache": self._pending_from_cache,
            "to_clients": self._pending_to_clients,
            "handovers": self._pending_handovers,
            "received": self._pending_received,
            "logged": self._pending_logged,
            "objects": self._pending_objects,
        }
        self._pending_objects = {}
        self._pending_requests, self._pending_handovers = {}, {}
        self._pending_from_cache = self._pending_to_clients = 0
        self._pending_received = self._pending_logged = 0
        return counts

    def add_counts(self, counts: dict[str, Any]) -> None:
        for method, status, cache, n in counts["requests"]:
            key = (str(method), int(status), str(cache))
            self._pending_requests[key] = self._pending_requests.get(key, 0) + int(n)
        self._pending_from_cache += int(counts["from_cache"])
        self._pending_to_clients += int(counts["to_clients"])
        for reason, n in counts["handovers"].items():
            self._pending_handovers[reason] = self._pending_handovers.get(reason, 0) + int(n)
        self._pending_received += int(counts["received"])
        self._pending_logged += int(counts["logged"])
        for target, (n, sent) in counts.get("objects", {}).items():
            mine = self._pending_objects.setdefault(str(target)[:TARGET_CHARS], [0, 0])
            mine[0] += int(n)
            mine[1] += int(sent)

    def settle(self) -> None:
        """Move the counts of :meth:`count_request` into the Prometheus counters."""
        pending, self._pending_requests = self._pending_requests, {}
        for (method, status, cache), count in pending.items():
            child = self._request_counts.get((method, status, cache))
            if child is None:
                child = self.requests.labels(method, str(status), cache)
                self._request_counts[(method, status, cache)] = child
            child.inc(count)
            if cache in ("HIT", "STALE", "REVALIDATED"):
                self.hits.inc(count)
            elif cache == "MISS":
                self.misses.inc(count)
            elif cache == "PARTIAL":
                self.partial_hits.inc(count)
        self.bytes_from_cache.inc(self._pending_from_cache)
        self.bytes_to_clients.inc(self._pending_to_clients)
        self._pending_from_cache = self._pending_to_clients = 0
        handovers, self._pending_handovers = self._pending_handovers, {}
        for reason, count in handovers.items():
            self.fast_lane_handovers.labels(reason).inc(count)
        self.requests_received.inc(self._pending_received)
        self.access_log_lines.inc(self._pending_logged)
        self._pending_received = self._pending_logged = 0
        self._settle_objects()

    def _settle_objects(self) -> None:
        pending, self._pending_objects = self._pending_objects, {}
        top = self.top_objects
        for target, (n, sent) in pending.items():
            mine = top.setdefault(target, [0, 0])
            mine[0] += n
            mine[1] += sent
        if len(top) > TOP_OBJECTS_KEPT:
            # Keep the most requested half: room for new targets without re-sorting often.
            kept = sorted(top.items(), key=lambda item: item[1][0], reverse=True)
            self.top_objects = dict(kept[: TOP_OBJECTS_KEPT // 2])

    def value(self, name: str, labels: dict[str, str] | None = None) -> float:
        """A metric's current value as /metrics shows it (0 when it has none yet)."""
        return self.registry.get_sample_value(name, labels) or 0.0

    def current(self, cache_bytes: int, at: float | None = None) -> Sample:
        """The counters now, as a sample (call :meth:`settle` first)."""
        return Sample(
            at=time.time() if at is None else at,
            hits=self.value("proxyd_cache_hits_total"),
            misses=self.value("proxyd_cache_misses_total"),
            partial_hits=self.value("proxyd_cache_partial_hits_total"),
            bytes_from_cache=self.value("proxyd_bytes_from_cache_total"),
            bytes_to_clients=self.value("proxyd_bytes_to_clients_total"),
            cache_bytes=cache_bytes,
        )

    def sample(self, cache_bytes: int, at: float | None = None) -> Sample:
        """Record the counters now in the ring of samples (call :meth:`settle` first)."""
        sample = self.current(cache_bytes, at)
        self.samples.append(sample)
        return sample

    def render(self) -> bytes:
        return bytes(generate_latest(self.registry))
