"""Issue 4, item 12: proxyd against the peer users would pick instead, side by side.

Both run in front of the same nginx origin (Debian's nginx serving generated objects, all on
127.0.0.1): proxyd, and nginx with ``proxy_cache`` + ``slice`` (slice = proxyd's block size)
+ ``proxy_cache_lock``. Workloads (bench/harness.py):

(a) hot full-object throughput: 1 GiB object, 8 clients            target ≥ 0.9 × nginx
(b) hot 2,880-byte ranges at random offsets, 32 connections (wrk)   target ≥ 0.5 × nginx
(c) cold coalescing: origin bytes ÷ object size, 32 clients         target exactly 1.0
(d) proxyd peak RSS while serving 32 concurrent 1 GiB downloads     target under 200 MB

Then workload (b) once more against a bare aiohttp app (bench/aiohttp_ceiling.py) that
answers every request with fixed bytes: the most any aiohttp server can do here.

Usage: python bench/bench_proxy.py [--quick] [--block-size 1048576] [--json FILE]
                                   [--processes N]

``--processes N`` runs both sides with N processes (proxyd ``workers = N``, nginx
``worker_processes N``); by default both use one per core.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import harness
from harness import GiB, MiB

from butler.server.process import ChildServer
from proxyd.process import ProxydProcess


class AiohttpCeiling(ChildServer):
    """bench/aiohttp_ceiling.py: an aiohttp app answering every GET with 2,880 fixed bytes."""

    health_path = ""

    def command(self) -> list[str]:
        script = Path(__file__).with_name("aiohttp_ceiling.py")
        return [sys.executable, str(script), str(self.port)]


def workloads(
    url: str,
    pid: int,
    origin: Any,
    hot: int,
    cold: int,
    duration: float,
    rounds: int,
    limit: float,
    cold_name: str,
) -> dict[str, Any]:
    figures: dict[str, Any] = {}
    print("   (c) cold coalescing ...", file=sys.stderr)
    figures["c_cold_coalescing"] = harness.cold_coalescing(
        url, origin, cold_name, cold, clients=32, time_limit=limit
    )
    print("   (a) hot throughput ...", file=sys.stderr)
    figures["a_hot_throughput"] = harness.hot_throughput(
        url, "hot.bin", hot, clients=8, rounds=rounds, time_limit=limit
    )
    print("   (b) hot small ranges ...", file=sys.stderr)
    figures["b_hot_ranges"] = harness.hot_small_ranges(
        url, "hot.bin", hot, connections=32, duration=duration, warm_first=False
    )
    print("   (d) peak RSS ...", file=sys.stderr)
    figures["d_peak_rss"] = harness.peak_rss(url, pid, "hot.bin", hot, clients=32, time_limit=limit)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small objects, 3 s durations")
    parser.add_argument("--block-size", type=int, default=MiB)
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    parser.add_argument(
        "--workers", type=int, default=0, help="proxyd's workers setting (0: one per core)"
    )
    parser.add_argument(
        "--processes",
        type=int,
        help="processes on both sides: proxyd's workers and nginx's worker_processes",
    )
    args = parser.parse_args()
    if args.processes is not None:
        args.workers = args.processes
    nginx_processes: int | str = "auto" if args.processes is None else args.processes
    harness.require_tools()
    hot = 64 * MiB if args.quick else GiB
    cold = 16 * MiB if args.quick else 64 * MiB
    duration = 3.0 if args.quick else 10.0
    rounds = 2 if args.quick else 3
    limit = 30.0 if args.quick else 90.0
    work = Path(tempfile.mkdtemp(prefix="bench-proxy-"))
    origin = harness.start_origin(work, {"hot.bin": hot, "cold-a.bin": cold, "cold-b.bin": cold})
    # Objects last modified a month ago, as archive files are: without Cache-Control from
    # the origin, both caches then treat them as fresh (RFC 9111 heuristic freshness, which
    # nginx replaces with proxy_cache_valid) instead of revalidating every request.
    month_ago = time.time() - 30 * 86400
    for path in origin.origin.root_dir.iterdir():
        os.utime(path, (month_ago, month_ago))
    results: dict[str, Any] = {}
    try:
        print("proxyd:", file=sys.stderr)
        block = f"{args.block_size}B"
        # One process per core, as nginx's worker_processes auto (the peer's setting).
        config = work / "proxyd.toml"
        config.write_text(f"workers = {args.workers}\n")
        with ProxydProcess(
            {"origin": origin.url},
            work / "proxyd-cache",
            work / "proxyd.log",
            "--block-size",
            block,
            "--cache-size",
            "8GiB",
            "--config",
            str(config),
        ) as proxy:
            assert proxy.process is not None
            time.sleep(0.5)
            results["proxyd"] = workloads(
                proxy.upstream_url("origin"),
                proxy.process.pid,
                origin.origin,
                hot,
                cold,
                duration,
                rounds,
                limit,
                "cold-a.bin",
            )
        print("nginx slice cache:", file=sys.stderr)
        peer = harness.start_nginx_peer(
            origin.url, work, args.block_size, worker_processes=nginx_processes
        )
        try:
            results["nginx"] = workloads(
                peer.url, peer.pid, origin.origin, hot, cold, duration, rounds, limit, "cold-b.bin"
            )
        finally:
            peer.stop()
        print("bare aiohttp (the framework's ceiling on (b)):", file=sys.stderr)
        with AiohttpCeiling(work / "ceiling.log") as ceiling:
            results["aiohttp_ceiling"] = harness.hot_small_ranges(
                ceiling.url, "hot.bin", hot, connections=32, duration=duration, warm_first=False
            )
    finally:
        origin.stop()
        shutil.rmtree(work, ignore_errors=True)
    print(
        f"proxyd vs nginx slice cache ({'quick' if args.quick else 'full'} run, "
        f"block {args.block_size // 1024} KiB; proxyd workers = {args.workers or 'one per core'}, "
        f"nginx worker_processes {nginx_processes})"
    )
    harness.compare(results["proxyd"], results["nginx"], names=("proxyd", "nginx"))
    ceiling = results["aiohttp_ceiling"]["requests_per_s"]
    proxyd_rps = results["proxyd"]["b_hot_ranges"]["requests_per_s"]
    nginx_rps = results["nginx"]["b_hot_ranges"]["requests_per_s"]
    print(
        f"(b) bare aiohttp, fixed 2,880-byte answer, same wrk run: {ceiling:,.0f} requests/s "
        f"= {ceiling / nginx_rps:.2f} x nginx; proxyd reaches {proxyd_rps / ceiling:.2f} "
        "of that ceiling"
    )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
