"""Larger than memory (issue 16): reduce a 1 GiB float32 image with a lazy read.

A 16384 x 16384 float32 image (1 GiB of pixels, PRIMARY HDU only, written row by row so this
script never holds it) is ingested into a fresh repository. Then, each in a fresh Python
process, ``butler.get(..., parameters={"lazy": True}).data.sum().compute()`` runs on the
local repository and through ``butler serve``; the child reports its peak resident memory
(``ru_maxrss``), the sum and the time. The sum is checked against the value the file was
written with (every row ``r`` holds ``r % 8`` in every pixel), and the peak against 400 MiB.

Usage: python bench/bench_lazy.py [--side 16384] [--limit-mib 400]
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
from astropy.io import fits

from butler import Butler
from butler.server.process import ServerProcess

DATA_ID = {"instrument": "BENCH", "visit": 1, "detector": 0}

_CHILD = """
import json, resource, sys, time
t0 = time.perf_counter()
from butler import Butler
remote = sys.argv[1].startswith("http")
options = {"cache_dir": sys.argv[2]} if remote else {}
with Butler(sys.argv[1], collections="bench", **options) as butler:
    image = butler.get("big", json.loads(sys.argv[3]), parameters={"lazy": True})
    total = float(image.data.sum(dtype="float64").compute())
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({"sum": total, "peak": peak, "seconds": time.perf_counter() - t0,
                  "chunks": len(image.data.chunks[0])}))
"""


def write_image(path: Path, side: int) -> float:
    """The image file; returns the exact sum of its pixels."""
    header = fits.Header(
        [("SIMPLE", True), ("BITPIX", -32), ("NAXIS", 2), ("NAXIS1", side), ("NAXIS2", side)]
    )
    rows = [np.full(side, r, dtype=">f4").tobytes() for r in range(8)]
    with path.open("wb") as out:
        out.write(header.tostring().encode("ascii"))
        for r in range(side):
            out.write(rows[r % 8])
        out.write(b"\0" * (-out.tell() % 2880))
    return float(sum((r % 8) * side for r in range(side)))


def build_repo(root: Path, image: Path) -> None:
    with Butler.create(root) as butler:
        butler.insert_dimension_records("instrument", {"name": "BENCH"})
        butler.insert_dimension_records("detector", {"instrument": "BENCH", "id": 0})
        butler.insert_dimension_records("visit", {"instrument": "BENCH", "id": 1})
        butler.register_dataset_type("big", ["visit", "detector"], "Image", "fits-image")
    with Butler(root, run="bench") as butler:
        butler.ingest(image, "big", DATA_ID, transfer="move")


def measure(target: str, cache: Path) -> dict[str, float]:
    done = subprocess.run(
        [sys.executable, "-c", _CHILD, target, str(cache), json.dumps(DATA_ID)],
        capture_output=True,
        text=True,
        timeout=1800,
        check=False,
    )
    if done.returncode != 0:
        raise SystemExit(f"the measuring process failed:\n{done.stderr[-3000:]}")
    result: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--side", type=int, default=16384, help="image is side x side float32")
    parser.add_argument("--limit-mib", type=float, default=400.0)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="bench-lazy-"))
    ok = True
    try:
        t0 = time.perf_counter()
        expected = write_image(workdir / "big.fits", args.side)
        repo = workdir / "repo"
        build_repo(repo, workdir / "big.fits")
        size = args.side * args.side * 4
        print(
            f"image {args.side} x {args.side} float32: {size / 2**30:.2f} GiB of pixels "
            f"(written and ingested in {time.perf_counter() - t0:.1f} s)"
        )
        server = ServerProcess(repo, workdir / "server.log").start()
        try:
            targets = {"local": str(repo), "remote (butler serve)": server.url}
            print(f"{'where':24} {'peak RSS MiB':>12} {'seconds':>8} {'chunks':>6}  sum ok")
            for name, target in targets.items():
                got = measure(target, workdir / f"cache-{len(name)}")
                peak = got["peak"] / 2**20
                right = got["sum"] == expected
                ok = ok and right and peak < args.limit_mib
                print(
                    f"{name:24} {peak:12.1f} {got['seconds']:8.1f} {int(got['chunks']):6d}  "
                    f"{'yes' if right else 'NO: ' + str(got['sum'])}"
                )
        finally:
            server.stop()
        print(f"limit {args.limit_mib:.0f} MiB: {'met' if ok else 'NOT MET'}")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
