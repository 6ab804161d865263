"""Issue 21, items 4-5: the site deployment (docs/deployment.md) under load, 1 vs N children.

Starts the deployment the way tests/test_proxy_tiers.py does (Debian's nginx as the far
repository, the parent proxyd, child proxyd nodes and Debian's HAProxy, all from the files in
config/, on 127.0.0.1) once per number of children, and measures:

(cold) 16 clients read the same 8 cold objects at once through HAProxy: bytes and requests
       the origin sent, divided by the objects' size (1.00 = each object crossed once), and
       the parent's upstream bytes;
(ranges) wrk: random 2,880-byte ranges of random hot objects (so the URI hash spreads them
       over the children) through HAProxy: requests/s, p50/p99;
(whole) wrk: whole hot 4 MiB objects through HAProxy: MiB/s;
(direct) the same range workload straight to one child (children = 1 only): what HAProxy
       costs.

Each wrk run also reports the CPU each part used (seconds of CPU per 10,000 requests, and cores
busy: CPU seconds / wall seconds) from /proc, for wrk itself (so a saturated load generator
shows), HAProxy, the children and the whole machine (other jobs on it included). On a machine
with fewer cores than parts, requests/s says where the CPU went, not how far the tier scales:
the CPU per request is the figure that sizes a deployment (docs/deployment.md, "Sizing").

Usage: cd bench && python bench_tiers.py [--children 1 2] [--duration 10] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import harness
from harness import MiB

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from fixtures_nginx import write_object  # noqa: E402
from nginx import NginxOrigin  # noqa: E402
from proxies import age_file  # noqa: E402
from tiers import BACKEND, UPSTREAM, Site  # noqa: E402

CLK_TCK = os.sysconf("SC_CLK_TCK")
RANGE = 2880
HOT_OBJECTS = 48
HOT_SIZE = 4 * MiB
COLD_OBJECTS = 8
COLD_SIZE = 8 * MiB
COLD_CLIENTS = 16

_WRK_SCRIPT = """
-- A random object of the list each request; with `ranged`, a random {length}-byte range.
local names = {{{names}}}
local counter = 0
function setup(thread)
  counter = counter + 1
  thread:set("thread_id", counter)
end
function init(args)
  math.randomseed(os.time() * 1000 + thread_id * 7919)
end
function request()
  local path = "{prefix}" .. names[math.random(#names)]
  if {ranged} then
    local first = math.random(0, {size} - {length})
    local range = "bytes=" .. first .. "-" .. (first + {length} - 1)
    return wrk.format("GET", path, {{["Range"] = range}})
  end
  return wrk.format("GET", path)
end
"""


# -- CPU accounting --------------------------------------------------------------------------


def _descendants(pid: int) -> set[int]:
    """``pid`` and every process below it (proxyd's fast-lane workers are its children)."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            parents[int(entry)] = int(stat.rsplit(")", 1)[1].split()[1])
    found, frontier = {pid}, [pid]
    while frontier:
        current = frontier.pop()
        for child, parent in parents.items():
            if parent == current and child not in found:
                found.add(child)
                frontier.append(child)
    return found


def _cpu_seconds(pids: set[int]) -> float:
    total = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # exited: its time is lost, which the caller's sampling avoids
        total += (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime
    return total


def _machine_cpu_seconds() -> float:
    """CPU seconds the whole machine spent busy (all cores, every process)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return (sum(fields[:8]) - idle) / CLK_TCK


@contextmanager
def cpu_meter(parts: dict[str, int]) -> Iterator[dict[str, float]]:
    """CPU seconds used by each process tree in ``parts`` (name -> pid), by the processes this
    one waits for meanwhile (``wrk``), and by the whole machine, over the ``with`` block."""
    trees = {name: _descendants(pid) for name, pid in parts.items()}
    before = {name: _cpu_seconds(pids) for name, pids in trees.items()}
    children_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    machine_before, wall_before = _machine_cpu_seconds(), time.monotonic()
    used: dict[str, float] = {}
    yield used
    for name, pids in trees.items():
        used[name] = _cpu_seconds(pids) - before[name]
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    used["wrk"] = (children.ru_utime + children.ru_stime) - (
        children_before.ru_utime + children_before.ru_stime
    )
    used["machine"] = _machine_cpu_seconds() - machine_before
    used["wall"] = time.monotonic() - wall_before


# -- workloads --------------------------------------------------------------------------------


def run_wrk(
    url_base: str, names: Sequence[str], *, ranged: bool, connections: int, duration: float
) -> dict[str, Any]:
    """wrk (2 threads) on random objects of ``names`` under ``url_base``; an untimed 3 s
    warm-up of the same run first."""
    parts = url_base.split("/", 3)
    server, prefix = "/".join(parts[:3]), "/" + parts[3]
    with tempfile.TemporaryDirectory(prefix="bench-tiers-") as tmp:
        script = Path(tmp) / "tiers.lua"
        script.write_text(
            _WRK_SCRIPT.format(
                names=", ".join(f'"{n}"' for n in names),
                prefix=prefix,
                ranged="true" if ranged else "false",
                size=HOT_SIZE,
                length=RANGE,
            )
        )
        base = ["wrk", "-t2", f"-c{connections}", "--timeout", "10s", "-s", str(script)]
        subprocess.run(  # noqa: S603 - fixed argv
            [*base, "-d3s", server + "/"], capture_output=True, timeout=60, check=False
        )
        done = subprocess.run(  # noqa: S603 - fixed argv
            [*base, f"-d{round(duration)}s", "--latency", server + "/"],
            capture_output=True,
            text=True,
            timeout=duration + 60,
            check=False,
        )
    if done.returncode != 0:
        raise RuntimeError(f"wrk failed: {done.stderr}{done.stdout}")
    figures = harness.parse_wrk(done.stdout)
    if figures["non_2xx"] or figures["socket_errors"]:
        raise RuntimeError(f"wrk saw errors: {done.stdout}")
    return figures


def cold_read(site: Site, origin: NginxOrigin, names: Sequence[str]) -> dict[str, Any]:
    """16 clients read every cold object at once (each in its own order); origin and parent
    bytes after, as multiples of the objects' bytes."""
    import http.client
    import random

    assert site.parent is not None
    assert site.haproxy is not None
    port = site.haproxy.port
    mark = origin.mark()
    start = threading.Barrier(COLD_CLIENTS)
    errors: list[str] = []

    def client(number: int) -> None:
        order = list(names)
        random.Random(number).shuffle(order)
        start.wait(timeout=30)
        for name in order:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
            try:
                conn.request("GET", f"/{UPSTREAM}/{name}")
                response = conn.getresponse()
                got = 0
                while chunk := response.read(1 << 20):
                    got += len(chunk)
                if response.status != 200 or got != COLD_SIZE:
                    errors.append(f"{name}: {response.status}, {got} bytes")
            finally:
                conn.close()

    began = time.monotonic()
    threads = [threading.Thread(target=client, args=(n,)) for n in range(COLD_CLIENTS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=600)
    seconds = time.monotonic() - began
    if errors:
        raise RuntimeError(f"cold reads failed: {errors[:5]}")
    log = origin.access_log(mark)
    total = COLD_SIZE * len(names)
    parent_bytes = site.parent.metric_sum("proxyd_bytes_from_origin_total")
    return {
        "origin_requests_per_object": len(log) / len(names),
        "origin_bytes_ratio": sum(e["body_bytes_sent"] for e in log) / total,
        "parent_upstream_bytes_ratio": parent_bytes / total,
        "client_mib": COLD_CLIENTS * total / MiB,
        "seconds": seconds,
        "client_mib_s": COLD_CLIENTS * total / MiB / seconds,
    }


def share_of_requests(site: Site) -> dict[str, int]:
    assert site.haproxy is not None
    return {
        row["svname"]: int(row["stot"])
        for row in site.haproxy.stats()
        if row["pxname"] == BACKEND and row["svname"] not in ("FRONTEND", "BACKEND")
    }


def measure(children: int, origin: NginxOrigin, workdir: Path, duration: float) -> dict[str, Any]:
    hot = [f"hot/obj{i:02d}.bin" for i in range(HOT_OBJECTS)]
    cold = [f"cold{children}/obj{i:02d}.bin" for i in range(COLD_OBJECTS)]
    for i, name in enumerate(cold):
        write_object(origin.root_dir, name, COLD_SIZE, seed=1000 * children + i)
        age_file(origin.root_dir / name)
    figures: dict[str, Any] = {"children": children}
    with Site(origin.url, workdir / f"site{children}", children=children) as site:
        assert site.haproxy is not None
        assert site.parent is not None
        print(f"== {children} child node(s): cold read ...", file=sys.stderr)
        figures["cold"] = cold_read(site, origin, cold)
        for name in hot:  # warm: every hot object into its child's cache, then to disk
            harness.warm(site.url + name, HOT_SIZE)
        parts = {"haproxy": site.haproxy.pid, "parent": site.parent.pid}
        parts.update({name: proxy.pid for name, proxy in site.children.items()})
        runs: list[tuple[str, str, bool, int]] = [
            ("ranges", site.url, True, 32),
            ("whole", site.url, False, 16),
        ]
        if children == 1:
            only = next(iter(site.children.values()))
            runs.append(("direct", only.upstream_url(UPSTREAM), True, 32))
        for label, base, ranged, connections in runs:
            print(f"   {label} (wrk, {duration:.0f} s) ...", file=sys.stderr)
            before = share_of_requests(site)
            with cpu_meter(parts) as cpu:
                result = run_wrk(
                    base, hot, ranged=ranged, connections=connections, duration=duration
                )
            after = share_of_requests(site)
            result["node_share"] = {n: after[n] - before.get(n, 0) for n in after}
            result["cpu_s_per_10k_requests"] = {
                name: 1e4 * seconds / result["requests"]
                for name, seconds in cpu.items()
                if name != "wall"
            }
            result["cores_busy"] = {
                name: seconds / cpu["wall"] for name, seconds in cpu.items() if name != "wall"
            }
            if not ranged:
                result["mib_s"] = result["bytes_read"] / MiB / result["seconds"]
            figures[label] = result
    return figures


def report(all_figures: list[dict[str, Any]]) -> str:
    lines = []
    for f in all_figures:
        n = f["children"]
        c = f["cold"]
        lines.append(
            f"{n} child node(s): cold, {COLD_CLIENTS} clients x {COLD_OBJECTS} objects of "
            f"{COLD_SIZE // MiB} MiB: origin {c['origin_requests_per_object']:.2f} requests and "
            f"{c['origin_bytes_ratio']:.2f} x the bytes per object, parent upstream "
            f"{c['parent_upstream_bytes_ratio']:.2f} x; {c['client_mib']:.0f} MiB to clients in "
            f"{c['seconds']:.1f} s ({c['client_mib_s']:.0f} MiB/s)"
        )
        for label in ("ranges", "whole", "direct"):
            if label not in f:
                continue
            r = f[label]
            rate = (
                f"{r['mib_s']:8.0f} MiB/s" if "mib_s" in r else f"{r['requests_per_s']:8.0f} req/s"
            )
            cpu = r["cpu_s_per_10k_requests"]
            busy = r["cores_busy"]
            kids = sum(v for k, v in cpu.items() if k.startswith("child"))
            kids_busy = sum(v for k, v in busy.items() if k.startswith("child"))
            lines.append(
                f"  {label:7s} {rate}  p50 {r['p50_ms']:6.2f} ms  p99 {r['p99_ms']:6.2f} ms  "
                f"split {sorted(r['node_share'].values(), reverse=True)}"
            )
            lines.append(
                f"          CPU s/10k req: children {kids:.2f}  haproxy {cpu['haproxy']:.2f}  "
                f"wrk {cpu['wrk']:.2f}  machine {cpu['machine']:.2f};  cores busy: children "
                f"{kids_busy:.2f} haproxy {busy['haproxy']:.2f} wrk {busy['wrk']:.2f} "
                f"machine {busy['machine']:.2f} of {os.cpu_count()}"
            )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--children", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    print(f"load average before: {Path('/proc/loadavg').read_text().strip()}", file=sys.stderr)
    with tempfile.TemporaryDirectory(prefix="bench-tiers-") as tmp:
        root = Path(tmp)
        with NginxOrigin(root / "origin-root", root / "origin", worker_processes=1) as origin:
            for i in range(HOT_OBJECTS):
                write_object(origin.root_dir, f"hot/obj{i:02d}.bin", HOT_SIZE, seed=i)
                age_file(origin.root_dir / f"hot/obj{i:02d}.bin")
            results = [measure(n, origin, root, args.duration) for n in args.children]
    print(report(results))
    print(f"load average after: {Path('/proc/loadavg').read_text().strip()}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
