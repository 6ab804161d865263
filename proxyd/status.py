"""The operator's status page (``/status``): one self-contained HTML page, no scripts and no
external assets (inline CSS and SVG), built from the same counters as ``/metrics``.

:func:`collect` reads a :class:`~proxyd.metrics.Metrics` registry (after the caller has
settled the workers' counts into it) into a :class:`Status`; :func:`render` turns that into
HTML. Both are pure: no I/O, so the page is easy to test and cheap to draw.

Every number shown carries its exact value in a ``data-value`` attribute (the text shows it
for people: sizes in KiB/MiB/GiB), so a test or a script can read the page unambiguously.
"""

from __future__ import annotations

import html
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from yarl import URL

from proxyd.metrics import Metrics, Sample

__all__ = ["Status", "UpstreamRow", "collect", "human_bytes", "render"]

TOP_OBJECTS_SHOWN = 10
CHART_WIDTH, CHART_HEIGHT = 640, 140


@dataclass(frozen=True)
class UpstreamRow:
    name: str
    url: str
    bytes_from: int
    responses: int
    """Upstream answers (headers received): the latency histogram's count."""
    mean_latency: float | None


@dataclass(frozen=True)
class Status:
    now: Sample
    samples: Sequence[Sample]
    upstreams: Sequence[UpstreamRow]
    errors: Mapping[str, int]
    top_objects: Sequence[tuple[str, int, int]]
    """(request target, requests, body bytes sent), most requested first."""
    coalesced_waits: int
    stale_served: int
    evictions: int
    store_failures: int
    cache_limit: int
    problems: Sequence[str] = field(default_factory=list)


def shown_origin(url: str) -> str:
    """An upstream's URL as the page shows it: without user, password or query, where an
    operator may have put a credential (the page is answered to anyone who reaches the port)."""
    return str(URL(url).with_user(None).with_query(None).with_fragment(None))


def collect(
    metrics: Metrics,
    cache_bytes: int,
    cache_limit: int,
    upstreams: Mapping[str, str],
    problems: Sequence[str],
) -> Status:
    """What the page shows, read from ``metrics`` (settled by the caller). The current
    counters are the last point of the charts; the samples before it come from the ring
    (:meth:`~proxyd.metrics.Metrics.sample`), oldest first."""
    now = metrics.current(cache_bytes)
    rows = []
    for name, url in sorted(upstreams.items()):
        count = metrics.value("proxyd_upstream_latency_seconds_count", {"upstream": name})
        total = metrics.value("proxyd_upstream_latency_seconds_sum", {"upstream": name})
        rows.append(
            UpstreamRow(
                name=name,
                url=shown_origin(url),
                bytes_from=int(metrics.value("proxyd_bytes_from_origin_total", {"upstream": name})),
                responses=int(count),
                mean_latency=total / count if count else None,
            )
        )
    errors = {}
    for family in metrics.errors.collect():
        for sample in family.samples:
            if sample.name.endswith("_total") and sample.value:
                errors[sample.labels["kind"]] = int(sample.value)
    top = sorted(metrics.top_objects.items(), key=lambda item: (-item[1][0], item[0]))
    return Status(
        now=now,
        samples=list(metrics.samples),
        upstreams=rows,
        errors=dict(sorted(errors.items())),
        top_objects=[(target, n, sent) for target, (n, sent) in top[:TOP_OBJECTS_SHOWN]],
        coalesced_waits=int(metrics.value("proxyd_coalesced_waits_total")),
        stale_served=int(metrics.value("proxyd_stale_served_total")),
        evictions=int(metrics.value("proxyd_evictions_total")),
        store_failures=int(metrics.value("proxyd_store_failures_total")),
        cache_limit=cache_limit,
        problems=list(problems),
    )


def human_bytes(n: float) -> str:
    """Sizes in one style: B below a KiB, else KiB/MiB/GiB/TiB with one decimal."""
    if n < 1024:
        return f"{int(n)} B"
    value = float(n)
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        value /= 1024
        if value < 1024 or unit == "TiB":
            break
    return f"{value:.1f} {unit}"


def _ratio(part: float, whole: float) -> float | None:
    return part / whole if whole else None


def _percent(ratio: float | None) -> str:
    return "–" if ratio is None else f"{100 * ratio:.1f} %"


def _exact(value: float) -> str:
    """A number for a ``data-value`` attribute: whole numbers without a fraction, others in
    full (``{:g}`` would round a byte count to six digits)."""
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def _num(ident: str, value: float, text: str) -> str:
    return f'<span id="{ident}" data-value="{_exact(value)}">{html.escape(text)}</span>'


def _stat(label: str, ident: str, value: float, text: str) -> str:
    return f'<div class="stat"><div class="label">{label}</div>{_num(ident, value, text)}</div>'


def _served(sample: Sample) -> float:
    return sample.hits + sample.misses + sample.partial_hits


def render(status: Status) -> str:
    """The whole page, as HTML text."""
    now = status.now
    ratio = _ratio(now.hits, _served(now))
    from_origin = sum(row.bytes_from for row in status.upstreams)
    disk = _ratio(now.cache_bytes, status.cache_limit)
    health = "degraded" if status.problems else "ok"
    parts = [
        _HEAD,
        f'<h1>proxyd status <span class="badge {health}" id="health">{health}</span></h1>',
        f'<p class="when">{time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(now.at))}'
        " · counts since the proxy started · reload for fresh numbers</p>",
        *(f'<p class="problem">{html.escape(p)}</p>' for p in status.problems),
        '<section class="stats">',
        _stat("hit ratio", "hit-ratio", ratio or 0, _percent(ratio)),
        _stat("hits", "hits", now.hits, f"{int(now.hits):,}"),
        _stat("misses", "misses", now.misses, f"{int(now.misses):,}"),
        _stat("partial hits", "partial-hits", now.partial_hits, f"{int(now.partial_hits):,}"),
        _stat(
            "bytes from cache (saved)",
            "bytes-from-cache",
            now.bytes_from_cache,
            human_bytes(now.bytes_from_cache),
        ),
        _stat("bytes from upstreams", "bytes-from-origin", from_origin, human_bytes(from_origin)),
        _stat(
            "bytes to clients",
            "bytes-to-clients",
            now.bytes_to_clients,
            human_bytes(now.bytes_to_clients),
        ),
        _stat(
            "coalesced waits",
            "coalesced-waits",
            status.coalesced_waits,
            f"{status.coalesced_waits:,}",
        ),
        "</section>",
        "<h2>Over time</h2>",
        _charts([*status.samples, now]),
        "<h2>Disk</h2>",
        _disk(now.cache_bytes, status.cache_limit, disk, status),
        "<h2>Upstreams</h2>",
        _upstreams(status.upstreams),
        "<h2>Errors</h2>",
        _errors(status.errors),
        "<h2>Top objects</h2>",
        _top(status.top_objects),
        "</body></html>\n",
    ]
    return "\n".join(parts)


def _disk(used: int, limit: int, ratio: float | None, status: Status) -> str:
    width = 0.0 if ratio is None else min(ratio, 1.0) * 100
    return (
        f'<div class="meter"><div class="fill" style="width:{width:.1f}%"></div></div>'
        f"<p>{_num('cache-bytes', used, human_bytes(used))} of "
        f"{_num('cache-limit', limit, human_bytes(limit))} "
        f"({_num('disk-ratio', ratio or 0, _percent(ratio))}) · "
        f"evictions {_num('evictions', status.evictions, f'{status.evictions:,}')} · "
        f"failed writes "
        f"{_num('store-failures', status.store_failures, f'{status.store_failures:,}')} · "
        f"served stale {_num('stale-served', status.stale_served, f'{status.stale_served:,}')}</p>"
    )


def _upstreams(rows: Sequence[UpstreamRow]) -> str:
    if not rows:
        return "<p>No upstreams configured.</p>"
    body = []
    for row in rows:
        latency = "–" if row.mean_latency is None else f"{1000 * row.mean_latency:.1f} ms"
        state = "answering" if row.responses else "no answers yet"
        body.append(
            f'<tr data-upstream="{html.escape(row.name)}"><td>/{html.escape(row.name)}/</td>'
            f"<td>{html.escape(row.url)}</td>"
            f'<td class="n" data-value="{row.bytes_from}">{human_bytes(row.bytes_from)}</td>'
            f'<td class="n" data-value="{row.responses}">{row.responses:,}</td>'
            f'<td class="n">{latency}</td><td>{state}</td></tr>'
        )
    return (
        '<table id="upstreams"><tr><th>upstream</th><th>origin</th><th>bytes from it</th>'
        "<th>responses</th><th>mean time to headers</th><th>state</th></tr>"
        + "".join(body)
        + "</table>"
    )


def _errors(errors: Mapping[str, int]) -> str:
    if not errors:
        return '<p id="errors">None.</p>'
    rows = "".join(
        f'<tr data-kind="{html.escape(kind)}"><td>{html.escape(kind)}</td>'
        f'<td class="n" data-value="{n}">{n:,}</td></tr>'
        for kind, n in errors.items()
    )
    return f'<table id="errors"><tr><th>kind</th><th>count</th></tr>{rows}</table>'


def _top(objects: Sequence[tuple[str, int, int]]) -> str:
    if not objects:
        return '<p id="top-objects">None yet.</p>'
    rows = "".join(
        f'<tr><td class="target">{html.escape(target)}</td>'
        f'<td class="n" data-value="{n}">{n:,}</td>'
        f'<td class="n" data-value="{sent}">{human_bytes(sent)}</td></tr>'
        for target, n, sent in objects
    )
    return (
        '<table id="top-objects"><tr><th>target</th><th>requests</th><th>bytes sent</th></tr>'
        f"{rows}</table>"
    )


def _charts(points: Sequence[Sample]) -> str:
    """Per interval between consecutive samples: the hit ratio (a line) and the bytes
    served from cache (bars)."""
    if len(points) < 2:
        return '<p id="charts">Collecting samples (one every few seconds).</p>'
    ratios: list[float | None] = []
    saved: list[float] = []
    for before, after in zip(points, points[1:], strict=False):
        ratios.append(_ratio(after.hits - before.hits, _served(after) - _served(before)))
        saved.append(max(after.bytes_from_cache - before.bytes_from_cache, 0.0))
    span = max(points[-1].at - points[0].at, 1.0)
    minutes = f"last {span / 60:.0f} min" if span >= 60 else f"last {span:.0f} s"
    return (
        '<div id="charts" class="charts">'
        f"<figure><figcaption>hit ratio per interval ({minutes})</figcaption>"
        f"{_line_chart(ratios)}</figure>"
        f"<figure><figcaption>bytes saved per interval ({minutes}; "
        f"peak {human_bytes(max(saved))})</figcaption>{_bar_chart(saved)}</figure>"
        "</div>"
    )


def _line_chart(values: Sequence[float | None]) -> str:
    step = CHART_WIDTH / max(len(values), 1)
    known = [(i, value) for i, value in enumerate(values) if value is not None]
    coords = [
        ((i + 0.5) * step, CHART_HEIGHT - value * (CHART_HEIGHT - 4) - 2) for i, value in known
    ]
    line = " ".join(f"{x:.1f},{y:.1f}" for x, y in coords)
    dots = "".join(
        f'<circle cx="{x:.1f}" cy="{y:.1f}" r="2" data-value="{_exact(value)}"/>'
        for (x, y), (_, value) in zip(coords, known, strict=True)
    )
    return (
        f'<svg id="chart-hit-ratio" viewBox="0 0 {CHART_WIDTH} {CHART_HEIGHT}" '
        f'width="{CHART_WIDTH}" height="{CHART_HEIGHT}" role="img" aria-label="hit ratio">'
        f'<line x1="0" y1="2" x2="{CHART_WIDTH}" y2="2" class="grid"/>'
        f'<line x1="0" y1="{CHART_HEIGHT / 2}" x2="{CHART_WIDTH}" y2="{CHART_HEIGHT / 2}" '
        'class="grid"/>'
        '<text x="4" y="14">100 %</text>'
        f'<text x="4" y="{CHART_HEIGHT / 2 - 4}">50 %</text>'
        f'<polyline points="{line}" class="line"/>{dots}</svg>'
    )


def _bar_chart(values: Sequence[float]) -> str:
    top = max(values) or 1.0
    step = CHART_WIDTH / max(len(values), 1)
    bars = "".join(
        f'<rect x="{i * step + step * 0.1:.1f}" y="{CHART_HEIGHT - height:.1f}" '
        f'width="{max(step * 0.8, 1):.1f}" height="{height:.1f}" data-value="{_exact(value)}">'
        f"<title>{human_bytes(value)}</title></rect>"
        for i, value in enumerate(values)
        for height in [value / top * (CHART_HEIGHT - 4)]
    )
    return (
        f'<svg id="chart-bytes-saved" viewBox="0 0 {CHART_WIDTH} {CHART_HEIGHT}" '
        f'width="{CHART_WIDTH}" height="{CHART_HEIGHT}" role="img" aria-label="bytes saved">'
        f"{bars}</svg>"
    )


_HEAD = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>proxyd status</title>
<style>
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5em; color: #1d232a; background: #fafbfc; }
h1 { font-size: 1.5em; margin: 0; } h2 { font-size: 1.1em; margin: 1.4em 0 .4em; }
.when { color: #5b6770; margin: .2em 0 1em; }
.badge { font-size: .6em; padding: .15em .6em; border-radius: 1em; vertical-align: middle; }
.badge.ok { background: #d9f2df; color: #17612c; }
.badge.degraded { background: #fde2c8; color: #8a3b00; }
.problem { background: #fde2c8; padding: .4em .8em; border-radius: 4px; }
.stats { display: flex; flex-wrap: wrap; gap: .6em; }
.stat { background: #fff; border: 1px solid #dde3e8; border-radius: 6px; padding: .5em .9em;
  min-width: 9em; }
.stat .label { color: #5b6770; font-size: .85em; }
.stat span { font-size: 1.4em; font-weight: 600; }
.charts { display: flex; flex-wrap: wrap; gap: 1em; }
figure { margin: 0; background: #fff; border: 1px solid #dde3e8; border-radius: 6px;
  padding: .5em; }
figcaption { color: #5b6770; font-size: .85em; }
svg text { font-size: 10px; fill: #8a959e; }
svg .grid { stroke: #e6eaee; } svg .line { fill: none; stroke: #2b6cb0; stroke-width: 2; }
svg circle { fill: #2b6cb0; } svg rect { fill: #38a169; }
.meter { width: 40em; max-width: 100%; height: 1em; background: #e6eaee; border-radius: 4px; }
.meter .fill { height: 100%; background: #2b6cb0; border-radius: 4px; }
table { border-collapse: collapse; background: #fff; }
th, td { border: 1px solid #dde3e8; padding: .25em .6em; text-align: left; }
td.n { text-align: right; font-variant-numeric: tabular-nums; }
td.target { font-family: ui-monospace, monospace; word-break: break-all; }
</style></head><body>"""
