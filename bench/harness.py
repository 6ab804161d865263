"""Reusable benchmark pieces for issue 4, item 12: proxyd against nginx on the same workloads.

Every workload takes a proxy *base URL* (``BASE + object_name`` is the object through the
proxy; for proxyd that is ``http://127.0.0.1:PORT/<upstream-name>/``), so nginx's slice cache
and proxyd run through identical code. Clients are ``curl`` and ``wrk`` processes (C, not
Python) so that the client is not the bottleneck being measured. Only 127.0.0.1 is used, and
every workload is bounded both in count and in wall time.

Workloads (issue 4, item 12):

(a) :func:`hot_throughput` - aggregate MiB/s of 8 clients downloading a hot object fully.
(b) :func:`hot_small_ranges` - requests/s and p50/p99 latency of random 2,880-byte ranges.
(c) :func:`cold_coalescing` - origin bytes / object size for 32 simultaneous cold GETs.
(d) :func:`peak_rss` - peak resident memory of the proxy serving 32 concurrent downloads.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# The nginx helpers live with the tests (tests/ is not a package; pytest puts it on sys.path).
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from nginx import NginxCachingProxy, NginxOrigin  # noqa: E402

MiB = 1 << 20
GiB = 1 << 30

Figures = dict[str, Any]


# -- data and servers ------------------------------------------------------------------------


def make_object(path: Path, size: int, seed: int = 0) -> None:
    """Write ``size`` real (non-sparse) bytes quickly.

    A random 1 MiB buffer is repeated, and each MiB is stamped with its index and the seed, so
    the file is cheap to make (about 1 s per GiB) yet no two blocks are equal: a proxy that
    mixes up blocks cannot pass a checksum by luck.
    """
    rng_buffer = bytearray(os.urandom(MiB))
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        written = 0
        index = 0
        while written < size:
            rng_buffer[:16] = index.to_bytes(8, "little") + seed.to_bytes(8, "little")
            chunk = min(MiB, size - written)
            f.write(memoryview(rng_buffer)[:chunk])
            written += chunk
            index += 1


@dataclass
class BenchOrigin:
    """An nginx origin serving generated objects; ``objects`` maps name -> size."""

    origin: NginxOrigin
    objects: dict[str, int] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return self.origin.url

    def add(self, name: str, size: int, seed: int = 0) -> str:
        make_object(self.origin.root_dir / name, size, seed)
        self.objects[name] = size
        return name

    def stop(self) -> None:
        self.origin.stop()


def start_origin(workdir: Path, objects: Mapping[str, int] | None = None) -> BenchOrigin:
    """Start an nginx origin in ``workdir/origin`` serving freshly generated ``objects``.

    One worker: the origin stands for a far repository, not for the thing being measured.
    """
    origin = NginxOrigin(workdir / "origin-root", workdir / "origin", worker_processes=1)
    bench = BenchOrigin(origin)
    for seed, (name, size) in enumerate((objects or {}).items()):
        bench.add(name, size, seed)
    origin.start()
    return bench


def start_nginx_peer(
    upstream_url: str, workdir: Path, block_size: int = MiB, worker_processes: int | str = "auto"
) -> NginxCachingProxy:
    """Start nginx (proxy_cache + slice + cache lock) with an empty cache in ``workdir``."""
    proxy = NginxCachingProxy(
        upstream_url,
        workdir / "nginx-cache",
        workdir / "nginx-peer",
        block_size,
        worker_processes=worker_processes,
    )
    return proxy.start()


# -- clients ---------------------------------------------------------------------------------


@dataclass
class Download:
    status: int
    size: int
    seconds: float
    error: str = ""


def curl_get(url: str, *, max_time: float, headers: Sequence[str] = ()) -> Download:
    """One GET with curl (body discarded, bytes counted); never longer than ``max_time``."""
    if not url.startswith("http://127.0.0.1:"):
        raise ValueError(f"benchmarks talk to 127.0.0.1 only: {url}")
    args = [
        "curl",
        "--silent",
        "--noproxy",
        "*",  # an http_proxy in the environment must not capture loopback traffic
        "--output",
        "/dev/null",
        "--write-out",
        "%{http_code} %{size_download} %{time_total}",
        "--max-time",
        f"{max(max_time, 0.1):.3f}",
    ]
    for header in headers:
        args += ["--header", header]
    try:
        done = subprocess.run(  # noqa: S603 - fixed argv, no shell
            [*args, url], capture_output=True, text=True, timeout=max_time + 10
        )
    except subprocess.TimeoutExpired:
        return Download(0, 0, max_time, "curl did not exit")
    status, size, seconds = done.stdout.split()
    error = "" if done.returncode == 0 else f"curl exit {done.returncode}"
    return Download(int(status), int(size), float(seconds), error)


def _run_clients(n: int, target: Any) -> None:
    """Run ``target(i)`` in ``n`` threads released together by a barrier; join them."""
    barrier = threading.Barrier(n, timeout=30)

    def run(i: int) -> None:
        barrier.wait()
        target(i)

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def warm(url: str, size: int, time_limit: float = 120.0) -> float:
    """Download ``url`` once so a proxy holds it; seconds taken. Raises if incomplete.

    Then ``sync()`` (untimed): the cache's new files reach the disk now, not in the kernel's
    writeback during the timed workload that follows (up to 30 s later, a GiB per cache
    here, with its CPU taken from the 2 cores the workload runs on), whichever cache goes
    first.
    """
    d = curl_get(url, max_time=time_limit)
    if d.status != 200 or d.size != size:
        raise RuntimeError(f"warming {url}: status {d.status}, {d.size}/{size} bytes {d.error}")
    os.sync()
    return d.seconds


# -- (a) hot full-object throughput ----------------------------------------------------------


def hot_throughput(
    proxy_url: str,
    object_name: str,
    object_size: int,
    *,
    clients: int = 8,
    rounds: int = 3,
    time_limit: float = 60.0,
    warm_first: bool = True,
) -> Figures:
    """(a) ``clients`` concurrent clients each download the object fully ``rounds`` times.

    The object is warmed first (not timed). No new download starts after ``time_limit``, and
    running ones are cut at it, so the figure is bytes received / wall time either way.
    """
    url = proxy_url + object_name
    if warm_first:
        warm(url, object_size)
    deadline = time.monotonic() + time_limit
    results: list[Download] = []
    lock = threading.Lock()

    def client(_i: int) -> None:
        for _ in range(rounds):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            d = curl_get(url, max_time=remaining)
            with lock:
                results.append(d)

    start = time.monotonic()
    _run_clients(clients, client)
    seconds = time.monotonic() - start
    total = sum(d.size for d in results)
    complete = sum(1 for d in results if d.status == 200 and d.size == object_size)
    return {
        "throughput_mib_s": total / MiB / seconds,
        "bytes": total,
        "seconds": seconds,
        "downloads_complete": complete,
        "downloads_incomplete": len(results) - complete,
        "clients": clients,
        "object_mib": object_size / MiB,
    }


# -- (b) hot small ranges with wrk -----------------------------------------------------------

_WRK_SCRIPT = """
-- Random {length}-byte ranges of a {size}-byte object; each wrk thread its own sequence.
local counter = 0
function setup(thread)
  counter = counter + 1
  thread:set("thread_id", counter)
end
function init(args)
  math.randomseed(os.time() * 1000 + thread_id * 7919)
end
function request()
  local first = math.random(0, {size} - {length})
  return wrk.format("GET", nil, {{["Range"] = "bytes=" .. first .. "-" .. (first + {length} - 1)}})
end
"""

_TIME_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_SIZE_UNITS = {"B": 1, "KB": 1 << 10, "MB": 1 << 20, "GB": 1 << 30, "TB": 1 << 40}


def _seconds(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m|h)", text)
    if not m:
        raise ValueError(f"unparsed wrk time {text!r}")
    return float(m[1]) * _TIME_UNITS[m[2]]


def parse_wrk(output: str) -> Figures:
    """Figures from ``wrk --latency`` output: requests/s, latency percentiles, errors."""
    figures: Figures = {}
    for pct, value in re.findall(r"^\s+(50|75|90|99)%\s+(\S+)$", output, re.M):
        figures[f"p{pct}_ms"] = _seconds(value) * 1e3
    m = re.search(r"(\d+) requests in ([\d.]+\w+), ([\d.]+)(\w+) read", output)
    if not m or "p99_ms" not in figures:
        raise ValueError(f"unparsed wrk output:\n{output}")
    figures["requests"] = int(m[1])
    figures["seconds"] = _seconds(m[2])
    figures["bytes_read"] = int(float(m[3]) * _SIZE_UNITS[m[4]])
    rps = re.search(r"Requests/sec:\s+([\d.]+)", output)
    figures["requests_per_s"] = float(rps[1]) if rps else figures["requests"] / figures["seconds"]
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    figures["non_2xx"] = int(bad[1]) if bad else 0
    sock = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    )
    figures["socket_errors"] = sum(int(x) for x in sock.groups()) if sock else 0
    return figures


def hot_small_ranges(
    proxy_url: str,
    object_name: str,
    object_size: int,
    *,
    range_size: int = 2880,
    connections: int = 32,
    duration: float = 10.0,
    threads: int | None = None,
    warm_first: bool = True,
    warmup: float = 5.0,
) -> Figures:
    """(b) wrk: ``connections`` keep-alive connections asking random ``range_size`` ranges.

    The object is warmed first so every range is a cache hit. ``bytes_per_request`` shows
    whether the proxy answered with ranges (about ``range_size`` + headers) or whole objects.
    The same wrk run goes first for ``warmup`` seconds, untimed, as is usual for a steady
    state: each server's caches (for proxyd: every worker process's check of each block it
    reads, once) are then as they would be after the first seconds of real use.
    """
    url = proxy_url + object_name
    if warm_first:
        warm(url, object_size)
    threads = threads or min(connections, os.cpu_count() or 1)
    with tempfile.TemporaryDirectory(prefix="bench-wrk-") as tmp:
        script = Path(tmp) / "ranges.lua"
        script.write_text(_WRK_SCRIPT.format(size=object_size, length=range_size))
        if warmup > 0:
            warm_args = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{max(1, round(warmup))}s"]
            subprocess.run(  # noqa: S603 - fixed argv, no shell
                [*warm_args, "-s", str(script), url],
                capture_output=True,
                timeout=warmup + 30,
                check=False,
            )
        args = [
            "wrk",
            f"-t{threads}",
            f"-c{connections}",
            f"-d{max(1, round(duration))}s",
            "--timeout",
            "5s",
            "--latency",
            "-s",
            str(script),
            url,
        ]
        done = subprocess.run(  # noqa: S603 - fixed argv, no shell
            args, capture_output=True, text=True, timeout=duration + 30
        )
    if done.returncode != 0:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stderr}{done.stdout}")
    figures = parse_wrk(done.stdout)
    figures["bytes_per_request"] = figures["bytes_read"] / max(1, figures["requests"])
    figures["connections"] = connections
    figures["range_size"] = range_size
    return figures


# -- (c) cold coalescing ---------------------------------------------------------------------


def _settled_log(origin: NginxOrigin, since: int, quiet: float = 0.5, limit: float = 10.0) -> int:
    """Mark once the origin's log stopped growing: nginx logs a request when it ends."""
    deadline = time.monotonic() + limit
    last = origin.mark()
    while time.monotonic() < deadline:
        time.sleep(quiet)
        now = origin.mark()
        if now == last:
            break
        last = now
    return last - since


def cold_coalescing(
    proxy_url: str,
    origin: NginxOrigin,
    object_name: str,
    object_size: int,
    *,
    clients: int = 32,
    time_limit: float = 60.0,
) -> Figures:
    """(c) ``clients`` GET the same cold object at once; origin bytes / object size.

    ``object_name`` must not have been requested through this proxy before. Origin bytes are
    the body bytes its access log records for that path from the start until all clients
    finished (1.0 means the crowd cost the origin exactly one copy).
    """
    url = proxy_url + object_name
    mark = origin.mark()
    deadline = time.monotonic() + time_limit
    results: list[Download] = [Download(0, 0, 0.0, "not run")] * clients

    def client(i: int) -> None:
        results[i] = curl_get(url, max_time=deadline - time.monotonic())

    start = time.monotonic()
    _run_clients(clients, client)
    seconds = time.monotonic() - start
    _settled_log(origin, mark)
    entries = [e for e in origin.access_log(mark) if e["path"].endswith("/" + object_name)]
    origin_bytes = sum(e["body_bytes_sent"] for e in entries)
    # Identical upstream ranges fetched more than once mean the coalescing failed somewhere.
    same_range = Counter(e["range"] for e in entries)
    complete = sum(1 for d in results if d.status == 200 and d.size == object_size)
    return {
        "origin_bytes_ratio": origin_bytes / object_size,
        "origin_bytes": origin_bytes,
        "origin_requests": len(entries),
        "max_fetches_of_one_range": max(same_range.values(), default=0),
        "object_mib": object_size / MiB,
        "clients_complete": complete,
        "clients": clients,
        "seconds": seconds,
        "slowest_client_s": max(d.seconds for d in results),
    }


# -- (d) peak RSS ----------------------------------------------------------------------------


def _process_tree(pid: int) -> list[int]:
    """``pid`` and its descendants (nginx serves from worker children of the master)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        # The command name may contain spaces and parentheses: parse after the last ')'.
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    tree, todo = [], [pid]
    while todo:
        p = todo.pop()
        tree.append(p)
        todo.extend(children.get(p, []))
    return tree


def _status_kib(pid: int, key: str, file: str = "status") -> int:
    """A ``kB`` field of ``/proc/PID/status`` (or ``smaps_rollup``); 0 if the process is gone."""
    try:
        for line in Path(f"/proc/{pid}/{file}").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def peak_rss(
    proxy_url: str,
    pid: int,
    object_name: str,
    object_size: int,
    *,
    clients: int = 32,
    time_limit: float = 60.0,
    interval: float = 0.05,
) -> Figures:
    """(d) Peak resident memory of process ``pid`` (and its children) during ``clients``
    concurrent full downloads of the object.

    Sampled every ``interval`` during the workload over the process tree:
    ``peak_rss_mib`` is the largest sum of VmRSS (pages shared between processes, such as
    nginx's cache zone, count once per process, so it errs high for multi-process servers);
    ``peak_pss_mib`` the largest sum of Pss (shared pages split between their users: the
    fair figure for a process tree); ``peak_rss_single_mib`` the largest VmRSS of one process.
    ``vmhwm_mib`` is the kernel's high-water mark of ``pid`` itself since it started.
    For a single-process server all of these agree.
    """
    url = proxy_url + object_name
    stop = threading.Event()
    peak = {"rss": 0, "pss": 0, "single": 0, "samples": 0}

    def sampler() -> None:
        while not stop.is_set():
            tree = _process_tree(pid)
            rss = [_status_kib(p, "VmRSS") for p in tree]
            pss = sum(_status_kib(p, "Pss", "smaps_rollup") for p in tree)
            peak["rss"] = max(peak["rss"], sum(rss))
            peak["pss"] = max(peak["pss"], pss)
            peak["single"] = max([peak["single"], *rss])
            peak["samples"] += 1
            stop.wait(interval)

    rss_before = sum(_status_kib(p, "VmRSS") for p in _process_tree(pid))
    deadline = time.monotonic() + time_limit
    results: list[Download] = [Download(0, 0, 0.0, "not run")] * clients

    def client(i: int) -> None:
        results[i] = curl_get(url, max_time=deadline - time.monotonic())

    watcher = threading.Thread(target=sampler, daemon=True)
    watcher.start()
    start = time.monotonic()
    try:
        _run_clients(clients, client)
    finally:
        stop.set()
        watcher.join(timeout=5)
    seconds = time.monotonic() - start
    complete = sum(1 for d in results if d.status == 200 and d.size == object_size)
    return {
        "peak_rss_mib": peak["rss"] / 1024,
        "peak_pss_mib": peak["pss"] / 1024,
        "peak_rss_single_mib": peak["single"] / 1024,
        "rss_before_mib": rss_before / 1024,
        "vmhwm_mib": _status_kib(pid, "VmHWM") / 1024,
        "processes": len(_process_tree(pid)),
        "samples": peak["samples"],
        "clients_complete": complete,
        "clients": clients,
        "object_mib": object_size / MiB,
        "seconds": seconds,
        "throughput_mib_s": sum(d.size for d in results) / MiB / seconds,
    }


# -- reporting -------------------------------------------------------------------------------


def _flatten(figures: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    flat: dict[str, float] = {}
    for key, value in figures.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(_flatten(value, name + "."))
        elif isinstance(value, int | float) and not isinstance(value, bool):
            flat[name] = float(value)
    return flat


def _fmt(value: float | None) -> str:
    if value is None:
        return "-"
    if value != 0 and (abs(value) >= 1e6 or abs(value) < 1e-2):
        return f"{value:.3g}"
    return f"{value:,.2f}"


def compare(
    figures_a: Mapping[str, Any],
    figures_b: Mapping[str, Any],
    names: tuple[str, str] = ("proxyd", "nginx"),
    file: Any = None,
) -> list[tuple[str, float | None, float | None, float | None]]:
    """Print a table of every numeric figure (nested dicts flattened as ``workload.key``)
    with the ratio a / b; returns the rows ``(key, a, b, ratio)``."""
    flat_a, flat_b = _flatten(figures_a), _flatten(figures_b)
    keys = list(flat_a) + [k for k in flat_b if k not in flat_a]
    rows: list[tuple[str, float | None, float | None, float | None]] = []
    for key in keys:
        a, b = flat_a.get(key), flat_b.get(key)
        ratio = a / b if a is not None and b not in (None, 0.0) else None
        rows.append((key, a, b, ratio))
    width = max([len(k) for k in keys] + [6])
    out = file or sys.stdout
    print(f"{'figure':<{width}}  {names[0]:>14}  {names[1]:>14}  {'ratio':>8}", file=out)
    for key, a, b, ratio in rows:
        print(f"{key:<{width}}  {_fmt(a):>14}  {_fmt(b):>14}  {_fmt(ratio):>8}", file=out)
    return rows


def print_figures(figures: Mapping[str, Any], file: Any = None) -> None:
    """One line per figure, for a single run (no peer to compare with)."""
    flat = _flatten(figures)
    width = max([len(k) for k in flat] + [6])
    for key, value in flat.items():
        print(f"{key:<{width}}  {_fmt(value):>14}", file=file or sys.stdout)


def require_tools() -> None:
    """Fail early, with the package to install, if a client tool is missing."""
    missing = [tool for tool in ("curl", "wrk") if shutil.which(tool) is None]
    if missing:
        raise SystemExit(
            f"missing tools: {', '.join(missing)} (apt-get install {' '.join(missing)})"
        )
