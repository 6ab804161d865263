"""SQLite against PostgreSQL as the registry, side by side in one run (issue 21).

Two repositories, identical but for where the registry is: ``registry.sqlite3`` inside the
repository, or a PostgreSQL database (Debian's server, started here on loopback with its
default durability but ``synchronous_commit = off``, the counterpart of SQLite's WAL with
``synchronous = NORMAL``: neither waits for a disk flush at commit).

(a) Bulk load: 1,000,000 datasets (10,000 visits x 100 detectors) with their file records,
    generated inside the database by one INSERT ... SELECT per table (the registry's own
    insert path is what (c) measures; this only makes the million quickly), then ANALYZE.
(b) Selective ``where`` queries over the million through ``Butler.query_datasets``
    (SQL + building refs): median and p95 of 50 runs each.
(c) Concurrent puts: W processes at once, each putting P small dicts (one transaction per
    put: file written and flushed, registry commit) into the million-dataset repository;
    puts/s over the wall time of all of them, for W = 1 and W = 8.

Usage: python bench/bench_registry_backends.py [--datasets 1000000] [--writers 8] [--puts 100]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

from butler import Butler

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from postgres import PostgresServer  # noqa: E402 - the tests' fixture server

N_DETECTORS = 100
QUERIES: list[tuple[str, dict[str, Any]]] = [
    ("visit = 5000 AND detector IN (10..20)", {}),
    ("visit IN (5000..5009) AND band = 'r'", {}),
    ("visit.exposure_time > 298 AND detector = 42 AND visit < 3000", {}),
    ("detector = 7 AND visit > 9990", {}),
    ("", {"visit": 1234, "instrument": "HSC"}),
]

# Rows made by the database itself. The data_id_key is the registry's JSON of the required
# values in the dataset type's order (checked against Registry.data_id_key below).
_ROWS_SQLITE = """
WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i < ? - 1)
SELECT printf('00000000-0000-4000-8000-%012d', i), ?, 'bench',
       '["HSC",' || (i % 100) || ',' || (i / 100) || ']', '2026-01-01T00:00:00.000+00:00',
       'HSC', i % 100, i / 100,
       substr('rig', (i / 100) % 3 + 1, 1), 'HSC-' || upper(substr('rig', (i / 100) % 3 + 1, 1))
FROM n
"""
_ROWS_POSTGRESQL = """
SELECT '00000000-0000-4000-8000-' || lpad(i::text, 12, '0'), ?, 'bench',
       '["HSC",' || (i % 100) || ',' || (i / 100) || ']', '2026-01-01T00:00:00.000+00:00',
       'HSC', i % 100, i / 100,
       substr('rig', (i / 100) % 3 + 1, 1), 'HSC-' || upper(substr('rig', (i / 100) % 3 + 1, 1))
FROM generate_series(0, ? - 1) AS i
"""

WRITER = textwrap.dedent(
    """
    import sys, time
    from butler import Butler
    repo, worker, puts = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    start_at = float(sys.argv[4])
    with Butler(repo, run=f"writer{worker}") as butler:
        butler.registry.collection_type("bench")  # connected and warm before the start
        while time.time() < start_at:
            time.sleep(0.005)
        for i in range(puts):
            butler.put({"w": worker, "i": i, "note": "x" * 160}, "summary",
                       instrument="HSC", visit=i, detector=worker)
    """
)


def populate(root: Path, n_visits: int, registry: str | None) -> tuple[Butler, float]:
    butler = Butler.create(root, registry=registry)
    butler.insert_dimension_records("instrument", {"name": "HSC"})
    butler.insert_dimension_records("band", *({"name": b} for b in "rig"))
    butler.insert_dimension_records(
        "physical_filter",
        *({"instrument": "HSC", "name": f"HSC-{b.upper()}", "band": b} for b in "rig"),
    )
    butler.insert_dimension_records(
        "detector", *({"instrument": "HSC", "id": d} for d in range(N_DETECTORS))
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
    calexp = butler.register_dataset_type("calexp", ["visit", "detector"], "Image")
    butler.register_dataset_type("summary", ["visit", "detector"], "Dict")
    butler.register_run("bench")
    registry = butler.registry
    type_id, _ = registry._dataset_type_row("calexp")
    sample = registry.expand_data_id(calexp, {"instrument": "HSC", "visit": 7, "detector": 3})
    assert registry.data_id_key(calexp, sample) == '["HSC",3,7]', "data_id_key changed shape"
    rows = _ROWS_SQLITE if registry.dialect == "sqlite" else _ROWS_POSTGRESQL
    n = n_visits * N_DETECTORS
    t0 = time.perf_counter()
    with registry.transaction():
        registry.conn.execute(
            "INSERT INTO dataset (id, dataset_type_id, run, data_id_key, ingest_date, "
            '"instrument", "detector", "visit", "band", "physical_filter") ' + rows,
            (n, type_id) if registry.dialect == "sqlite" else (type_id, n),
        )
        registry.conn.execute(
            "INSERT INTO file (dataset_id, path, size, checksum, formatter, storage_class, "
            "file_index) SELECT id, 'bench/calexp/' || id || '.fits', 1, 'sha256:0', "
            "'fits-image', 'Image', '{}' FROM dataset WHERE run = 'bench'"
        )
    registry.conn.execute("ANALYZE")
    return butler, time.perf_counter() - t0


def time_query(butler: Butler, where: str, data_id: dict[str, Any]) -> tuple[float, float, int]:
    samples = []
    n = 0
    for _ in range(50):
        t0 = time.perf_counter()
        n = len(butler.query_datasets("calexp", collections="bench", where=where, **data_id))
        samples.append((time.perf_counter() - t0) * 1000)
    samples.sort()
    return statistics.median(samples), samples[int(len(samples) * 0.95) - 1], n


def concurrent_puts(root: Path, writers: int, puts: int, offset: int) -> float:
    start_at = time.time() + 3.0  # every writer imported and connected by then
    procs = [
        subprocess.Popen(  # noqa: S603 - our interpreter, fixed script
            [sys.executable, "-c", WRITER, str(root), str(offset + w), str(puts), str(start_at)],
            stderr=subprocess.PIPE,
            text=True,
        )
        for w in range(writers)
    ]
    for proc in procs:
        _, err = proc.communicate(timeout=900)
        if proc.returncode != 0:
            raise RuntimeError(f"writer failed: {err}")
    elapsed = time.time() - start_at
    with Butler(root) as butler:
        stored = sum(
            len(butler.query_datasets("summary", collections=f"writer{offset + w}"))
            for w in range(writers)
        )
    if stored != writers * puts:
        raise RuntimeError(f"{stored} datasets stored, {writers * puts} put")
    return writers * puts / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--datasets", type=int, default=1_000_000)
    parser.add_argument("--writers", type=int, default=8)
    parser.add_argument("--puts", type=int, default=100)
    parser.add_argument("--workdir", type=Path)
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench-backends-"))
    workdir.mkdir(parents=True, exist_ok=True)
    server = PostgresServer(workdir / "postgres", durable=True)
    results: dict[str, dict[str, Any]] = {}
    try:
        server.start()
        n_visits = max(1, args.datasets // N_DETECTORS)
        backends = {"sqlite": None, "postgresql": server.new_database("bench")}
        for name, registry in backends.items():
            root = workdir / f"repo-{name}"
            butler, load = populate(root, n_visits, registry)
            out: dict[str, Any] = {"load": load, "queries": []}
            for where, data_id in QUERIES:
                out["queries"].append(time_query(butler, where, data_id))
            butler.close()
            out["puts1"] = concurrent_puts(root, 1, args.puts, 0)
            out["putsW"] = concurrent_puts(root, args.writers, args.puts, 1)
            results[name] = out
    finally:
        server.stop()
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    s, p = results["sqlite"], results["postgresql"]
    n = n_visits * N_DETECTORS
    print(f"bulk load of {n:,} datasets + file records (INSERT ... SELECT, ANALYZE):")
    print(f"  sqlite {s['load']:7.1f} s   postgresql {p['load']:7.1f} s")
    print(f"selective queries over {n:,} datasets, median / p95 of 50 (ms):")
    print(f"  {'where':<62} {'rows':>5}  {'sqlite':>15}  {'postgresql':>15}  pg/sqlite")
    for (where, data_id), sq, pq in zip(QUERIES, s["queries"], p["queries"], strict=True):
        shown = where or " AND ".join(f"{k}={v!r}" for k, v in data_id.items())
        assert sq[2] == pq[2], f"{shown}: {sq[2]} rows on sqlite, {pq[2]} on postgresql"
        print(
            f"  {shown:<62} {sq[2]:>5}  {sq[0]:6.2f} / {sq[1]:6.2f}  {pq[0]:6.2f} / {pq[1]:6.2f}"
            f"  {pq[0] / sq[0]:5.2f}"
        )
    print(f"puts (one transaction each, small dict) into the {n:,}-dataset repository:")
    for key, label in (("puts1", "1 writer"), ("putsW", f"{args.writers} writers at once")):
        print(
            f"  {label:<20} sqlite {s[key]:7.1f} puts/s   postgresql {p[key]:7.1f} puts/s"
            f"   pg/sqlite {p[key] / s[key]:.2f}"
        )


if __name__ == "__main__":
    main()
