"""Remote butler benchmarks (issue 3), against a real ``butler serve`` on 127.0.0.1.

(a) 1,000 small datasets fetched with AsyncButler (asyncio.gather, 32 connections) versus one
    by one with the synchronous remote butler; datasets/s and the ratio.
(b) Metadata-read latency: ``calexp.metadata`` of a 4096x4096 image (one ranged request of
    the header bytes) versus fetching the whole 200 MB file, p50/p95 over repeated reads;
    and the same metadata read on the local repository for reference.

Usage: python bench/bench_remote.py [--datasets 1000] [--repeat 30]
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from butler import Butler, Image
from butler.remote.async_butler import AsyncButler
from butler.server.process import ServerProcess


def build_repo(root: Path, n: int) -> None:
    with Butler.create(root) as butler:
        butler.insert_dimension_records("instrument", {"name": "HSC"})
        butler.insert_dimension_records(
            "detector", *({"instrument": "HSC", "id": d} for d in range(100))
        )
        butler.insert_dimension_records(
            "visit", *({"instrument": "HSC", "id": v} for v in range(n // 100 + 1))
        )
        butler.register_dataset_type("summary", ["visit", "detector"], "Dict")
        butler.register_dataset_type("calexp", ["visit", "detector"], "Image")
    with Butler(root, run="bench") as butler, butler.transaction():
        for i in range(n):
            butler.put(
                {"i": i, "note": "x" * 100},
                "summary",
                instrument="HSC",
                visit=i // 100,
                detector=i % 100,
            )
        rng = np.random.default_rng(0)
        butler.put(
            Image(rng.normal(size=(4096, 4096)).astype(np.float32)),
            "calexp",
            instrument="HSC",
            visit=0,
            detector=0,
        )


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--datasets", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=30)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="bench-remote-"))
    server = None
    try:
        repo = workdir / "repo"
        build_repo(repo, args.datasets)
        server = ServerProcess(repo, workdir / "server.log").start()
        url = server.url
        data_ids = [
            {"instrument": "HSC", "visit": i // 100, "detector": i % 100}
            for i in range(args.datasets)
        ]

        with Butler(url, collections="bench") as remote:
            t0 = time.perf_counter()
            for data_id in data_ids:
                remote.get("summary", data_id)
            one_by_one = time.perf_counter() - t0

        async def gather_all() -> tuple[float, int, int]:
            async with AsyncButler(url, collections="bench", max_connections=32) as butler:
                await butler.info()
                t0 = time.perf_counter()
                results = await asyncio.gather(*(butler.get("summary", d) for d in data_ids))
                elapsed = time.perf_counter() - t0
                assert [r["i"] for r in results] == list(range(args.datasets))
                return elapsed, butler.client.connections_opened, butler.client.requests_sent

        gathered, connections, requests = asyncio.run(gather_all())
        n = args.datasets
        print(f"(a) {n} small datasets over HTTP (butler serve, loopback):")
        print(
            f"    one by one (sync RemoteButler): {one_by_one:6.2f} s  "
            f"{n / one_by_one:7.0f} datasets/s"
        )
        print(
            f"    AsyncButler gather, 32 conns  : {gathered:6.2f} s  {n / gathered:7.0f} datasets/s"
            f"  ({requests} requests on {connections} connections)"
        )
        print(f"    speed-up async / one-by-one   : {one_by_one / gathered:.1f}x")

        with (
            Butler(url, collections="bench", cache_dir=workdir / "cache") as remote,
            Butler(repo, collections="bench") as local,
        ):
            size = remote.get_file_info("calexp", instrument="HSC", visit=0, detector=0).size
            remote_meta, local_meta, whole = [], [], []
            for _ in range(args.repeat):
                remote.io_stats.reset()
                t0 = time.perf_counter()
                remote.get("calexp.metadata", instrument="HSC", visit=0, detector=0)
                remote_meta.append((time.perf_counter() - t0) * 1000)
                header_bytes = remote.io_stats.bytes_read
                t0 = time.perf_counter()
                local.get("calexp.metadata", instrument="HSC", visit=0, detector=0)
                local_meta.append((time.perf_counter() - t0) * 1000)
            for _ in range(max(3, args.repeat // 10)):
                t0 = time.perf_counter()
                remote.get("calexp", instrument="HSC", visit=0, detector=0)
                whole.append((time.perf_counter() - t0) * 1000)
        print(
            f"(b) metadata of a 4096x4096 calexp ({size / 2**20:.0f} MiB file), "
            f"{args.repeat} reads:"
        )
        print(
            f"    remote calexp.metadata: p50 {statistics.median(remote_meta):6.2f} ms  "
            f"p95 {percentile(remote_meta, 0.95):6.2f} ms  ({header_bytes} bytes moved, "
            "find + one range request)"
        )
        print(
            f"    local  calexp.metadata: p50 {statistics.median(local_meta):6.2f} ms  "
            f"p95 {percentile(local_meta, 0.95):6.2f} ms"
        )
        print(
            f"    remote whole calexp    : p50 {statistics.median(whole):6.0f} ms  "
            f"(metadata is {statistics.median(whole) / statistics.median(remote_meta):.0f}x faster)"
        )
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
