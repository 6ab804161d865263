"""The operator's status page (/status) as a browser shows it, and the Grafana dashboard.

A real proxyd (two worker processes, so the page must add up the workers' counts as
/metrics does) in front of nginx gets known traffic: misses and hits on two upstreams.
Headless Chromium (Debian's ``chromium``; scripts/test.sh installs it) loads /status; the
numbers in the DOM it dumps are checked against the traffic, computed from the objects'
sizes, and against /metrics. A second run takes a screenshot (set STATUS_SCREENSHOT to a
path to keep it, e.g. docs/status-page.png).

The Grafana dashboard in config/ must query only metrics that /metrics exposes.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator, Mapping
from html.parser import HTMLParser
from pathlib import Path

import pytest
from conftest import unavailable
from nginx import NginxOrigin
from proxies import BLOCK, Proxy, running, write_old

from proxyd import status
from proxyd.metrics import SAMPLES_KEPT, TOP_OBJECTS_KEPT, Metrics

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = ROOT / "config" / "grafana-dashboard.json"
BIG = 3 * BLOCK + 777
SMALL = 4000
BIG_HITS, SMALL_HITS = 3, 2


def chromium() -> str:
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    return unavailable(
        "Debian's chromium is not installed (scripts/test.sh installs it: apt-get install chromium)"
    )


def browse(url: str, profile: Path, *args: str) -> str:
    """Run headless Chromium once on ``url`` (bounded in time), its profile in ``profile``;
    its stdout."""
    done = subprocess.run(
        [
            chromium(),
            "--headless",
            "--no-sandbox",  # as root (CI) Chromium refuses to start sandboxed
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            f"--user-data-dir={profile}",
            *args,
            url,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


class _Values(HTMLParser):
    """Every ``data-value`` in the DOM: by element id, by upstream row, by chart."""

    def __init__(self) -> None:
        super().__init__()
        self.by_id: dict[str, float] = {}
        self.rows: dict[str, list[float]] = {}
        self.objects: list[list[float]] = []
        self.targets: list[str] = []
        self.chart: dict[str, list[float]] = {}
        self._row: str | None = None
        self._svg: str | None = None
        self._table: str | None = None
        self._in_target = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "table":
            self._table = a.get("id")
        if tag == "svg":
            self._svg = a.get("id")
        if tag == "tr":
            self._row = a.get("data-upstream")
            if self._table == "top-objects":
                self.objects.append([])
        if tag == "td" and a.get("class") == "target":
            self._in_target = True
        if "data-value" not in a:
            return
        value = float(a["data-value"])
        if "id" in a:
            self.by_id[a["id"]] = value
        elif self._svg is not None:
            self.chart.setdefault(self._svg, []).append(value)
        elif self._row is not None:
            self.rows.setdefault(self._row, []).append(value)
        elif self._table == "top-objects":
            self.objects[-1].append(value)

    def handle_endtag(self, tag: str) -> None:
        if tag == "svg":
            self._svg = None
        if tag == "td":
            self._in_target = False

    def handle_data(self, data: str) -> None:
        if self._in_target:
            self.targets.append(data)


@pytest.fixture(scope="module")
def origin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NginxOrigin]:
    base = tmp_path_factory.mktemp("status")
    with NginxOrigin(base / "root", base / "nginx") as nginx:
        yield nginx


def test_status_page_shows_the_traffic(origin: NginxOrigin, tmp_path: Path) -> None:
    big = write_old(origin.root_dir, "big.bin", BIG, seed=21)
    small = write_old(origin.root_dir, "small.bin", SMALL, seed=22)
    limit = 256 << 20
    config = {"workers": 2, "fast_lane": True, "cache_size": limit}
    with running(Proxy({"a": origin.url, "b": origin.url}, tmp_path, config=config)) as proxy:
        for _ in range(1 + BIG_HITS):
            assert proxy.get("a/big.bin").body == big
        for _ in range(1 + SMALL_HITS):
            assert proxy.get("b/small.bin").body == small
        proxy.sync_log()
        dom = browse(proxy.url + "status", tmp_path / "chromium", "--dump-dom")
        metrics = proxy.metrics()
        shot = tmp_path / "status.png"
        browse(
            proxy.url + "status",
            tmp_path / "chromium",
            f"--screenshot={shot}",
            "--window-size=1100,1500",
        )

    page = _Values()
    page.feed(dom)
    seen = page.by_id
    hits, misses = BIG_HITS + SMALL_HITS, 2
    from_cache = BIG_HITS * BIG + SMALL_HITS * SMALL
    assert seen["hits"] == hits
    assert seen["misses"] == misses
    assert seen["partial-hits"] == 0
    assert seen["hit-ratio"] == pytest.approx(hits / (hits + misses))
    assert seen["bytes-from-cache"] == from_cache
    assert seen["bytes-from-origin"] == BIG + SMALL
    assert seen["bytes-to-clients"] == (1 + BIG_HITS) * BIG + (1 + SMALL_HITS) * SMALL
    assert seen["coalesced-waits"] == 0
    # Each upstream's row: bytes from it, then the answers it gave (one fill each).
    assert page.rows == {"a": [BIG, 1], "b": [SMALL, 1]}
    # Most requested first: target, requests, bytes sent.
    assert page.targets == ["/a/big.bin", "/b/small.bin"]
    assert [row for row in page.objects if row] == [  # (the heading row has no values)
        [1 + BIG_HITS, (1 + BIG_HITS) * BIG],
        [1 + SMALL_HITS, (1 + SMALL_HITS) * SMALL],
    ]
    assert seen["cache-limit"] == limit
    assert BIG + SMALL <= seen["cache-bytes"] <= metrics["proxyd_cache_size_bytes"]
    # The same counters as /metrics (scraped after the page, with nothing in between).
    assert seen["hits"] == metrics["proxyd_cache_hits_total"]
    assert seen["bytes-from-cache"] == metrics["proxyd_bytes_from_cache_total"]
    # Over time: a sample at start-up (all zero) and the counters now, so the intervals'
    # bytes saved add up to the total, and every hit ratio drawn is a ratio.
    assert sum(page.chart["chart-bytes-saved"]) == from_cache
    ratios = page.chart["chart-hit-ratio"]
    assert ratios
    assert all(0 <= r <= 1 for r in ratios)
    assert re.search(r'<span [^>]*id="health"[^>]*>ok</span>', dom)
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    keep = os.environ.get("STATUS_SCREENSHOT")
    if keep:
        shutil.copyfile(shot, keep)


def _queried_metrics(dashboard: dict[str, object]) -> set[str]:
    names: set[str] = set()
    panels = dashboard["panels"]
    assert isinstance(panels, list)
    assert panels
    for panel in panels:
        targets = panel.get("targets", [])
        for target in targets:
            names |= set(re.findall(r"\bproxyd_[a-z_]+", target["expr"]))
    return names


# The samples a Prometheus metric family of each type has (labelled families that have not
# been used yet show only their # TYPE line, so names come from those lines).
_SUFFIXES = {
    "counter": ("_total", "_created"),
    "gauge": ("",),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
}


def _exposed_names(text: str) -> set[str]:
    names = set()
    for name, kind in re.findall(r"^# TYPE (\S+) (\S+)$", text, re.MULTILINE):
        if kind == "counter":  # its # TYPE line may name it with or without _total
            name = name.removesuffix("_total")
        names |= {name + suffix for suffix in _SUFFIXES[kind]}
    return names


def test_grafana_dashboard_queries_real_metrics(origin: NginxOrigin, tmp_path: Path) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    # The fields Grafana's dashboard import needs, and a Prometheus data source input.
    assert dashboard["title"]
    assert dashboard["uid"]
    assert isinstance(dashboard["schemaVersion"], int)
    assert any(
        i["type"] == "datasource" and i["pluginId"] == "prometheus" for i in dashboard["__inputs"]
    )
    queried = _queried_metrics(dashboard)
    assert queried
    with running(Proxy({"a": origin.url}, tmp_path)) as proxy:
        text = proxy.get("metrics").body.decode()
    names = _exposed_names(text)
    assert "proxyd_cache_hits_total" in names
    assert "proxyd_errors_total" in names
    missing = sorted(queried - names)
    assert not missing, f"the dashboard queries metrics /metrics does not have: {missing}"


def test_top_objects_leave_out_queries_and_stay_bounded() -> None:
    metrics = Metrics()
    metrics.count_object("/a/x.fits?X-Signature=secret", 10)
    metrics.count_object("/a/x.fits", 5)
    other = metrics.take_counts()  # as a worker sends them to the main process
    metrics.add_counts(other)
    metrics.settle()
    assert metrics.top_objects == {"/a/x.fits": [2, 15]}
    assert "secret" not in render_page(metrics)
    targets = [f"/a/{i}" for i in range(3 * TOP_OBJECTS_KEPT)]
    assert len(targets) > TOP_OBJECTS_KEPT
    for start in range(0, len(targets), TOP_OBJECTS_KEPT // 2):
        for target in targets[start : start + TOP_OBJECTS_KEPT // 2]:
            metrics.count_object(target, 1)
        metrics.settle()
        assert len(metrics.top_objects) <= TOP_OBJECTS_KEPT
    assert metrics.top_objects["/a/x.fits"] == [2, 15]  # the most requested one stays


def test_samples_are_a_bounded_ring() -> None:
    metrics = Metrics()
    for i in range(SAMPLES_KEPT + 5):
        metrics.sample(cache_bytes=i, at=float(i))
    assert len(metrics.samples) == SAMPLES_KEPT
    assert metrics.samples[0].cache_bytes == 5


def render_page(metrics: Metrics, upstreams: Mapping[str, str] | None = None) -> str:
    upstreams = {"a": "http://127.0.0.1:1/"} if upstreams is None else upstreams
    return status.render(status.collect(metrics, 0, 1 << 30, upstreams, []))


def test_the_page_never_shows_credentials_of_an_upstream_url() -> None:
    assert status.shown_origin("http://alice:pw@127.0.0.1:8080/repo/?token=abc#x") == (
        "http://127.0.0.1:8080/repo/"
    )
    page = render_page(Metrics(), {"repo": "https://bob:hunter2@far.example/r/?sig=s3cr3t"})
    assert "https://far.example/r/" in page
    assert "hunter2" not in page
    assert "s3cr3t" not in page
