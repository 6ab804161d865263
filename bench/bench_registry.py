"""Registry and put benchmarks (issue 2).

(a) Selective ``where`` queries over 1,000,000 registered datasets (10,000 visits x 100
    detectors), median and p95 latency of ``Butler.query_datasets`` (SQL + building refs).
    Target: the selective query under 50 ms median.
(b) ``put`` throughput for small datasets (a 200-byte dict): one transaction per put (durable
    each time: fsync of file and directory, SQLite commit) and 1,000 puts in one transaction,
    against the floor of writing the same JSON files with fsync and no registry at all.

Usage: python bench/bench_registry.py [--datasets 1000000] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
import uuid
from pathlib import Path

from butler import Butler
from butler.refs import DataCoordinate, DatasetRef, FileInfo


def populate(root: Path, n_visits: int, n_detectors: int) -> Butler:
    butler = Butler.create(root)
    butler.insert_dimension_records("instrument", {"name": "HSC"})
    butler.insert_dimension_records("band", {"name": "r"}, {"name": "i"}, {"name": "g"})
    butler.insert_dimension_records(
        "physical_filter",
        *({"instrument": "HSC", "name": f"HSC-{b.upper()}", "band": b} for b in "rig"),
    )
    butler.insert_dimension_records(
        "detector", *({"instrument": "HSC", "id": d} for d in range(n_detectors))
    )
    butler.insert_dimension_records(
        "visit",
        *(
            {
                "instrument": "HSC",
                "id": v,
                "physical_filter": f"HSC-{'rig'[v % 3].upper()}",
                "exposure_time": 30.0 + v % 270,
            }
            for v in range(n_visits)
        ),
    )
    dataset_type = butler.register_dataset_type("calexp", ["visit", "detector"], "Image")
    run = "bench"
    butler.register_run(run)
    t0 = time.perf_counter()
    batch: list[tuple[DatasetRef, FileInfo]] = []
    with butler.transaction():
        for v in range(n_visits):
            band = "rig"[v % 3]
            for d in range(n_detectors):
                ref = DatasetRef(
                    uuid.uuid4(),
                    dataset_type,
                    DataCoordinate(
                        {
                            "instrument": "HSC",
                            "detector": d,
                            "visit": v,
                            "band": band,
                            "physical_filter": f"HSC-{band.upper()}",
                        },
                        dataset_type.dimensions,
                    ),
                    run,
                )
                batch.append(
                    (
                        ref,
                        FileInfo(
                            ref.id,
                            f"{run}/calexp/{v}/{d}/{ref.id}.fits",
                            1,
                            "sha256:0",
                            "fits-image",
                            "Image",
                            {},
                        ),
                    )
                )
            if len(batch) >= 50_000:
                butler.registry.insert_datasets(batch)
                batch.clear()
        butler.registry.insert_datasets(batch)
    butler.registry.conn.execute("ANALYZE")
    print(f"registered {n_visits * n_detectors:,} datasets in {time.perf_counter() - t0:.1f} s")
    return butler


def time_query(
    butler: Butler, where: str, repeat: int = 50, **data_id: object
) -> tuple[float, float, int]:
    samples = []
    n = 0
    for _ in range(repeat):
        t0 = time.perf_counter()
        n = len(butler.query_datasets("calexp", collections="bench", where=where, **data_id))
        samples.append((time.perf_counter() - t0) * 1000)
    samples.sort()
    return statistics.median(samples), samples[int(len(samples) * 0.95) - 1], n


def bench_put(workdir: Path, n: int) -> None:
    payload = {"visit": 1, "note": "x" * 160}
    root = workdir / "put-repo"
    with Butler.create(root) as butler:
        butler.insert_dimension_records("instrument", {"name": "HSC"})
        butler.insert_dimension_records(
            "detector", *({"instrument": "HSC", "id": d} for d in range(100))
        )
        butler.insert_dimension_records(
            "visit", *({"instrument": "HSC", "id": v} for v in range(2 * n // 100 + 2))
        )
        butler.register_dataset_type("summary", ["visit", "detector"], "Dict")
    with Butler(root, run="single") as butler:
        t0 = time.perf_counter()
        for i in range(n):
            butler.put(payload, "summary", instrument="HSC", visit=i // 100, detector=i % 100)
        single = n / (time.perf_counter() - t0)
    with Butler(root, run="batched") as butler:
        t0 = time.perf_counter()
        with butler.transaction():
            for i in range(n):
                butler.put(payload, "summary", instrument="HSC", visit=i // 100, detector=i % 100)
        batched = n / (time.perf_counter() - t0)
    floor_dir = workdir / "plain-files"
    floor_dir.mkdir()
    t0 = time.perf_counter()
    for i in range(n):
        path = floor_dir / f"{i}.json"
        with open(path, "w") as f:
            json.dump(payload, f)
            f.flush()
            os.fsync(f.fileno())
    floor = n / (time.perf_counter() - t0)
    print(f"put, small dict, {n} datasets:")
    print(f"  one transaction per put : {single:8.0f} puts/s")
    print(f"  {n} puts in one transaction: {batched:8.0f} puts/s")
    print(f"  plain json.dump + fsync (no registry, floor): {floor:8.0f} files/s")
    print(f"  ratio batched / floor: {batched / floor:.2f}   per-put / floor: {single / floor:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--datasets", type=int, default=1_000_000)
    parser.add_argument("--puts", type=int, default=1000)
    parser.add_argument("--workdir", type=Path)
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench-registry-"))
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        n_detectors = 100
        n_visits = max(1, args.datasets // n_detectors)
        butler = populate(workdir / "repo", n_visits, n_detectors)
        size = (workdir / "repo" / "registry.sqlite3").stat().st_size
        print(f"registry size: {size / 2**20:.0f} MiB")
        queries = [
            ("visit = 5000 AND detector IN (10..20)", {}),
            ("visit IN (5000..5009) AND band = 'r'", {}),
            ("visit.exposure_time > 298 AND detector = 42 AND visit < 3000", {}),
            ("detector = 7 AND visit > 9990", {}),
            ("", {"visit": 1234, "instrument": "HSC"}),
        ]
        print(f"selective queries over {n_visits * n_detectors:,} datasets (50 runs each):")
        for where, data_id in queries:
            median, p95, n = time_query(butler, where, **data_id)
            shown = where or " AND ".join(f"{k}={v!r}" for k, v in data_id.items())
            print(f"  {shown:<62} {n:>5} rows  median {median:6.2f} ms  p95 {p95:6.2f} ms")
        butler.close()
        bench_put(workdir, args.puts)
    finally:
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
