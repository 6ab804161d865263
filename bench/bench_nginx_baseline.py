"""Issue 4, item 12 baseline: the four proxy workloads against nginx's slice cache alone.

nginx (``proxy_cache`` + ``slice`` + ``proxy_cache_lock``, block size = slice size) runs in
front of an nginx origin serving generated objects, all on 127.0.0.1. Figures are printed
and, with ``--json``, saved so a later proxyd run can be put side by side with
``harness.compare``.

Usage: python bench/bench_nginx_baseline.py [--quick] [--block-size 1048576] [--json FILE]
                                             [--workdir DIR]

``--quick`` shrinks objects (64 MiB hot, 16 MiB cold) and durations (3 s) to check that the
harness works; the full run uses the issue's sizes (1 GiB hot, 64 MiB cold, 10 s of ranges).
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


def run(workdir: Path, quick: bool, block_size: int) -> dict[str, Any]:
    hot_size = 64 * MiB if quick else GiB
    cold_size = 16 * MiB if quick else 64 * MiB
    duration = 3.0 if quick else 10.0
    rounds = 2 if quick else 3
    limit = 20.0 if quick else 60.0

    t0 = time.monotonic()
    origin = harness.start_origin(workdir, {"hot.bin": hot_size, "cold.bin": cold_size})
    print(f"objects generated and origin up in {time.monotonic() - t0:.1f} s", file=sys.stderr)
    peer = None
    try:
        peer = harness.start_nginx_peer(origin.url, workdir, block_size)
        figures: dict[str, Any] = {
            "setup": {
                "block_size": block_size,
                "hot_object_mib": hot_size / MiB,
                "cold_object_mib": cold_size / MiB,
                "cpus": os.cpu_count() or 0,
            }
        }
        # (c) first: the cold object must not have been touched through the peer.
        print("(c) cold coalescing ...", file=sys.stderr)
        figures["c_cold_coalescing"] = harness.cold_coalescing(
            peer.url, origin.origin, "cold.bin", cold_size, clients=32, time_limit=limit
        )
        print("(a) hot throughput ...", file=sys.stderr)
        figures["a_hot_throughput"] = harness.hot_throughput(
            peer.url, "hot.bin", hot_size, clients=8, rounds=rounds, time_limit=limit
        )
        print("(b) hot small ranges ...", file=sys.stderr)
        figures["b_hot_ranges"] = harness.hot_small_ranges(
            peer.url, "hot.bin", hot_size, connections=32, duration=duration, warm_first=False
        )
        print("(d) peak RSS ...", file=sys.stderr)
        figures["d_peak_rss"] = harness.peak_rss(
            peer.url, peer.pid, "hot.bin", hot_size, clients=32, time_limit=limit
        )
        return figures
    finally:
        if peer is not None:
            peer.stop()
        origin.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small objects, 3 s durations")
    parser.add_argument("--block-size", type=int, default=MiB, help="slice size in bytes")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    parser.add_argument("--workdir", type=Path, help="keep objects, cache and logs here")
    args = parser.parse_args()
    harness.require_tools()

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench-nginx-"))
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        figures = run(workdir, args.quick, args.block_size)
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    print(f"nginx slice-cache baseline ({'quick' if args.quick else 'full'} run)")
    harness.print_figures(figures)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
