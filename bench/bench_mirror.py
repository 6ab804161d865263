"""Mirror benchmarks (issue 5), against a real ``butler serve`` on 127.0.0.1.

(a) Pull 2,000 files of 1 MiB: ``mirror pull --jobs 8`` versus what users would do instead,
    ``curl --parallel --parallel-max 8`` over the same files' URL list (no registry, no
    verification). Prints both wall times and the ratio (target: mirror ≤ 1.1 × curl).
(b) 10,000 mirrored datasets and nothing new at the source: a re-pull's wall time
    (target: under 5 s), and the file requests it made (should be none).

Usage: python bench/bench_mirror.py [--files 2000] [--small 10000] [--jobs 8]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from butler import Butler
from butler.server.process import ServerProcess

MiB = 2**20


def make_source(root: Path, files: int, small: int) -> None:
    with Butler.create(root) as butler:
        butler.insert_dimension_records("instrument", {"name": "HSC"})
        butler.insert_dimension_records(
            "detector", *({"instrument": "HSC", "id": d} for d in range(100))
        )
        visits = max(files, small) // 100 + 1
        butler.insert_dimension_records(
            "visit", *({"instrument": "HSC", "id": v} for v in range(visits))
        )
        butler.register_dataset_type("blob", ["visit", "detector"], "Array")
        butler.register_dataset_type("note", ["visit", "detector"], "Dict")
    rng = np.random.default_rng(0)
    payload = rng.random((MiB - 128) // 8)  # 1 MiB with the .npy header
    with Butler(root, run="big") as butler, butler.transaction():
        for i in range(files):
            payload[0] = i
            butler.put(payload, "blob", instrument="HSC", visit=i // 100, detector=i % 100)
    with Butler(root, run="small") as butler, butler.transaction():
        for i in range(small):
            butler.put({"i": i}, "note", instrument="HSC", visit=i // 100, detector=i % 100)


def mirror(*args: str) -> float:
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "mirror.cli", *args], check=True, stdout=subprocess.DEVNULL
    )
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--files", type=int, default=2000)
    parser.add_argument("--small", type=int, default=10_000)
    parser.add_argument("--jobs", type=int, default=8)
    args = parser.parse_args()
    if shutil.which("curl") is None:
        sys.exit("curl is needed for the comparison (apt-get install curl)")
    work = Path(tempfile.mkdtemp(prefix="bench-mirror-"))
    server = None
    try:
        t0 = time.perf_counter()
        make_source(work / "source", args.files, args.small)
        print(
            f"source: {args.files} x 1 MiB + {args.small} small datasets in "
            f"{time.perf_counter() - t0:.0f} s",
            file=sys.stderr,
        )
        server = ServerProcess(work / "source", work / "server.log").start()
        with Butler(server.url, collections="big") as remote:
            paths = [f.path for _, f in remote.query_datasets_with_files("blob")]
        url_list = work / "urls.txt"
        with open(url_list, "w") as out:
            for i, path in enumerate(paths):
                out.write(f'url = "{server.url}files/{path}"\noutput = "{work}/curl/{i}.npy"\n')
        (work / "curl").mkdir()

        curl_times, mirror_times = [], []
        for round_ in range(2):
            shutil.rmtree(work / "curl")
            (work / "curl").mkdir()
            started = time.perf_counter()
            subprocess.run(
                [
                    "curl",
                    "--silent",
                    "--fail",
                    "--parallel",
                    "--parallel-max",
                    str(args.jobs),
                    "--config",
                    str(url_list),
                ],
                check=True,
            )
            curl_times.append(time.perf_counter() - started)
            dest = work / f"mirror-{round_}"
            mirror_times.append(
                mirror(
                    "pull",
                    server.url,
                    "--dest",
                    str(dest),
                    "--dataset-type",
                    "blob",
                    "--collections",
                    "big",
                    "--jobs",
                    str(args.jobs),
                    "--quiet",
                )
            )
        curl_best, mirror_best = min(curl_times), min(mirror_times)
        gib = args.files * MiB / 2**30
        print(f"(a) {args.files} files of 1 MiB ({gib:.2f} GiB), {args.jobs} at a time, best of 2:")
        print(f"    curl --parallel : {curl_best:6.2f} s  {gib * 1024 / curl_best:7.0f} MiB/s")
        print(
            f"    mirror pull     : {mirror_best:6.2f} s  {gib * 1024 / mirror_best:7.0f} MiB/s"
            "  (registry rows, checksums verified, resumable)"
        )
        print(f"    ratio mirror / curl: {mirror_best / curl_best:.2f}  (target <= 1.1)")

        dest = work / "small-mirror"
        first = mirror(
            "pull",
            server.url,
            "--dest",
            str(dest),
            "--dataset-type",
            "note",
            "--collections",
            "small",
            "--jobs",
            str(args.jobs),
            "--quiet",
        )
        mark = len(server.log_path.read_text().splitlines())
        started = time.perf_counter()
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "mirror.cli",
                "pull",
                server.url,
                "--dest",
                str(dest),
                "--dataset-type",
                "note",
                "--collections",
                "small",
                "--json",
            ],
            check=True,
            capture_output=True,
            text=True,
        )
        again = time.perf_counter() - started
        summary = json.loads(result.stdout)
        time.sleep(0.5)
        lines = server.log_path.read_text().splitlines()[mark:]
        file_requests = sum(1 for line in lines if '"GET /files/' in line)
        print(f"(b) {args.small} mirrored datasets, nothing new (first pull {first:.1f} s):")
        print(
            f"    re-pull: {again:.2f} s wall (process start included), "
            f"{summary['skipped']} skipped, {summary['downloaded']} downloaded, "
            f"{file_requests} file requests  (target < 5 s)"
        )
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
