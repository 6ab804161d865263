"""A registry kept in PostgreSQL: creation, what the repository records, errors, the where
language's PostgreSQL forms, and migrations. The behaviour shared with SQLite is tested by
the suites that run on both engines (``REGISTRY_BACKENDS`` in test_butler_local.py,
test_transactions.py, test_transactions_read_own_writes.py, test_server.py)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import VISITS, make_summary_repo, populate_dimensions, raw_registry, run_butler
from postgres import PostgresServer

from butler import Butler
from butler.errors import BadRequestError, RegistryConnectionError, RepositoryConfigError
from butler.migrate import upgrade_universe
from butler.registry_db import to_pyformat

REGISTRY_BACKENDS = ("sqlite", "postgresql")
OLD_UNIVERSE = Path(__file__).with_name("data") / "repo-0.1.0" / "dimensions.yaml"
HSC = {"instrument": "HSC"}


def test_cli_create_keeps_the_registry_in_postgresql(
    tmp_path: Path, postgres_server: PostgresServer
) -> None:
    url = postgres_server.new_registry()
    root = tmp_path / "repo"
    out = run_butler("create", str(root), "--registry", url)
    assert out.returncode == 0, out.stderr
    assert url in out.stdout
    assert yaml.safe_load((root / "butler.yaml").read_text())["registry"] == url
    assert not (root / "registry.sqlite3").exists()
    with Butler(root, writeable=True) as butler:
        populate_dimensions(butler)
        butler.register_dataset_type("summary", ["visit", "detector"], "Dict")
        butler.put({"x": 1}, "summary", HSC, visit=100, detector=2, run="r")
    # The rows are in the database, the file under the repository.
    with raw_registry(root) as conn:
        (path,) = conn.execute("SELECT path FROM file").fetchone()
        assert conn.execute("SELECT COUNT(*) FROM dim_visit").fetchone()[0] == len(VISITS)
    assert (root / path).is_file()
    info = run_butler("info", str(root), "--json")
    assert info.returncode == 0, info.stderr
    assert json.loads(info.stdout)["datasets"] == 1
    assert json.loads(info.stdout)["registry"] == url  # where the registry is, said


def test_a_password_in_the_url_is_refused_before_anything_is_made(
    tmp_path: Path, postgres_server: PostgresServer
) -> None:
    url = postgres_server.new_registry().replace("@", ":secret@", 1)
    out = run_butler("create", str(tmp_path / "repo"), "--registry", url)
    assert out.returncode != 0
    assert "PGPASSWORD" in out.stderr
    assert "secret" not in out.stderr  # the password is never echoed
    assert "Traceback" not in out.stderr
    assert not (tmp_path / "repo").exists()


def test_a_database_holding_a_registry_is_not_taken_twice(
    tmp_path: Path, postgres_server: PostgresServer
) -> None:
    url = postgres_server.new_registry()
    Butler.create(tmp_path / "one", registry=url).close()
    with pytest.raises(RepositoryConfigError, match="holds a butler registry already"):
        Butler.create(tmp_path / "two", registry=url)
    assert not (tmp_path / "two").exists()
    with Butler(tmp_path / "one") as butler:  # the first is untouched
        assert butler.registry.count_datasets() == 0


def test_an_unreachable_registry_is_a_clear_error(tmp_path: Path) -> None:
    root = tmp_path / "repo"
    root.mkdir()
    (root / "butler.yaml").write_text(
        yaml.safe_dump(
            {
                "format_version": 1,
                "name": "x",
                "registry": "postgresql://nobody@127.0.0.1:9/none",
            }
        )
    )
    (root / "dimensions.yaml").write_text(OLD_UNIVERSE.read_text())
    out = run_butler("info", str(root))
    assert out.returncode != 0
    assert "cannot connect to the registry database" in out.stderr
    assert "Traceback" not in out.stderr


def test_where_forms_agree_on_both_engines(butler: Butler) -> None:
    # Long IN lists (one JSON parameter), mixed int and float values, strings with quotes
    # and a percent sign, ranges with strides, modulo: computed here from the records.
    rng = random.Random(21)
    for visit in VISITS:
        for detector in range(4):
            butler.put({"v": visit}, "summary", HSC, visit=visit, detector=detector)
    long_list = sorted(rng.sample(range(0, 1000), 150)) + [101, 105]
    found = butler.query_datasets(
        "summary", where="visit IN (:visits) AND detector IN (1, 2.0)", bind={"visits": long_list}
    )
    assert sorted((r.data_id["visit"], r.data_id["detector"]) for r in found) == [
        (v, d) for v in (101, 105) for d in (1, 2)
    ]
    names = [f"x'{i}%" for i in range(120)] + ["COSMOS"]
    found = butler.query_datasets(
        "summary", where="visit.target_name IN (:names) AND detector = 0", bind={"names": names}
    )
    assert sorted(r.data_id["visit"] for r in found) == [v for v in VISITS if v < 103]
    found = butler.query_datasets("summary", where="visit IN (100..109:3) AND detector = 3")
    assert sorted(r.data_id["visit"] for r in found) == [100, 103, 106, 109]
    records = butler.query_dimension_records("visit", where="visit.exposure_time > 35.5")
    assert [r["id"] for r in records] == [v for v in VISITS if 30.0 + v - 100 > 35.5]
    values = butler.query_data_ids(["visit"], where="band = 'r'", limit=2, offset=1)
    assert [d["visit"] for d in values] == [v for v in VISITS if v % 2][1:3]


def test_placeholders_become_psycopg_ones_outside_quotes_only() -> None:
    assert to_pyformat("SELECT ? WHERE a = '?' AND b % ? = 0") == (
        "SELECT %s WHERE a = '?' AND b %% %s = 0"
    )
    assert to_pyformat('SELECT "?" FROM t WHERE x = ?') == 'SELECT "?" FROM t WHERE x = %s'


def test_migrate_upgrades_a_postgresql_registry(
    tmp_path: Path, postgres_server: PostgresServer
) -> None:
    root = tmp_path / "repo"
    url = postgres_server.new_registry()
    with Butler.create(root, universe=OLD_UNIVERSE, registry=url) as butler:
        butler.insert_dimension_records("instrument", {"name": "HSC"})
        butler.insert_dimension_records("band", {"name": "r"})
        butler.insert_dimension_records(
            "physical_filter", {"instrument": "HSC", "name": "HSC-R", "band": "r"}
        )
        butler.insert_dimension_records("detector", {"instrument": "HSC", "id": 42})
        butler.insert_dimension_records(
            "exposure", {"instrument": "HSC", "id": 1228, "physical_filter": "HSC-R"}
        )
        butler.register_dataset_type("raw_counts", ["exposure", "detector"], "Array")
        butler.put(np.arange(3, dtype="int16"), "raw_counts", HSC, exposure=1228, detector=42,
                   run="old")  # fmt: skip
    result = upgrade_universe(root)
    assert (result.from_version, result.to_version) == (1, 2)
    assert "exposure.group" in result.new_columns
    with raw_registry(root) as conn:
        meta = dict(conn.execute("SELECT key, value FROM butler_meta").fetchall())
    assert meta["universe_version"] == "2"
    with Butler(root, run="new") as butler:
        butler.insert_dimension_records("group", {"instrument": "HSC", "name": "g7"})
        butler.insert_dimension_records(
            "exposure",
            {"instrument": "HSC", "id": 1229, "physical_filter": "HSC-R", "group": "g7"},
        )
        ref = butler.put(np.ones(3, dtype="int16"), "raw_counts", HSC, exposure=1229,
                         detector=42)  # fmt: skip
        found = butler.query_datasets("raw_counts", collections="new", where="group = 'g7'")
        assert [r.id for r in found] == [ref.id]
        old = butler.get("raw_counts", HSC, exposure=1228, detector=42, collections="old")
        np.testing.assert_array_equal(old, np.arange(3, dtype="int16"))


def test_a_nul_character_is_bad_input_on_postgresql(
    tmp_path: Path, postgres_server: PostgresServer
) -> None:
    # SQLite stores and matches "\x00"; PostgreSQL's text cannot hold it: a clear refusal,
    # and the transaction around it goes on.
    with Butler.create(tmp_path / "repo", registry=postgres_server.new_registry()) as butler:
        populate_dimensions(butler)
        butler.register_dataset_type("summary", ["visit", "detector"], "Dict")
        butler.put({"x": 1}, "summary", HSC, visit=100, detector=0, run="r")
        for where, bind in (("band = :b", {"b": "r\x00"}), ("band IN (:b)", {"b": ["\x00"] * 150})):
            with pytest.raises(BadRequestError, match="NUL character"):
                butler.query_datasets("summary", collections="r", where=where, bind=bind)
        with butler.transaction():
            with pytest.raises(BadRequestError, match="NUL character"):
                butler.insert_dimension_records("band", {"name": "z\x00"})
            butler.insert_dimension_records("band", {"name": "z"})
        assert [r["name"] for r in butler.query_dimension_records("band")] == ["i", "r", "z"]


def test_a_lost_session_reconnects_between_transactions_and_fails_inside_one(
    tmp_path: Path, postgres_server: PostgresServer
) -> None:
    root = make_summary_repo(tmp_path / "repo", postgres_server.new_registry())
    with Butler(root, run="run2") as butler:
        assert len(butler.query_datasets("summary", collections="run1")) == 2
        postgres_server.restart()  # every session is lost
        assert len(butler.query_datasets("summary", collections="run1")) == 2
        butler.put({"x": 1}, "summary", HSC, visit=101, detector=0)
        with pytest.raises(RegistryConnectionError, match="rolled it back"), butler.transaction():
            butler.put({"x": 2}, "summary", HSC, visit=102, detector=0)
            postgres_server.restart()
            butler.put({"x": 3}, "summary", HSC, visit=103, detector=0)
        # Nothing of the lost transaction, neither rows nor files; the next one works.
        butler.put({"x": 4}, "summary", HSC, visit=104, detector=0)
        refs = butler.query_datasets("summary", collections="run2")
        assert sorted(r.data_id["visit"] for r in refs) == [101, 104]
    assert len(list((root / "run2").rglob("*.json"))) == 2


def test_the_cli_works_the_same_on_both_engines(tmp_path: Path, registry_url: str | None) -> None:
    root = tmp_path / "repo"

    def butler(*args: str) -> str:
        out = run_butler(*args)
        assert out.returncode == 0, (args, out.stderr)
        return out.stdout

    create = ["create", str(root)] + (["--registry", registry_url] if registry_url else [])
    butler(*create)
    records = {
        "instrument": [{"name": "HSC"}],
        "band": [{"name": "r"}],
        "physical_filter": [{"instrument": "HSC", "name": "HSC-R", "band": "r"}],
        "detector": [{"instrument": "HSC", "id": d} for d in (0, 1)],
        "visit": [{"instrument": "HSC", "id": v, "physical_filter": "HSC-R"} for v in (1, 2)],
    }
    for element, rows in records.items():
        path = tmp_path / f"{element}.yaml"
        path.write_text(yaml.safe_dump(rows))
        butler("insert-dimension-records", str(root), element, str(path))
    again = run_butler("insert-dimension-records", str(root), "band", str(tmp_path / "band.yaml"))
    assert again.returncode != 0
    assert "exists already" in again.stderr
    assert "Traceback" not in again.stderr
    butler("insert-dimension-records", str(root), "band", str(tmp_path / "band.yaml"),
           "--skip-existing")  # fmt: skip
    butler("register-dataset-type", str(root), "summary", "Dict", "visit", "detector")
    for visit, detector in ((1, 0), (2, 1), (2, 0)):
        source = tmp_path / f"s{visit}{detector}.json"
        source.write_text(json.dumps({"v": visit, "d": detector}))
        butler("ingest", str(root), "summary", str(source), "--run", "r",
               "--data-id", "instrument=HSC", "--data-id", f"visit={visit}",
               "--data-id", f"detector={detector}")  # fmt: skip
    rows = json.loads(
        butler(
            "query-datasets",
            str(root),
            "summary",
            "--collections",
            "r",
            "--where",
            "visit = 2 AND detector > 0",
            "--json",
        )  # fmt: skip
    )
    assert [(r["visit"], r["detector"]) for r in rows] == [(2, 1)]
    butler("set-chain", str(root), "everything", "r")
    collections = json.loads(butler("query-collections", str(root), "--json"))
    assert {c["name"] for c in collections} == {"r", "everything"}
    butler("remove", str(root), "summary", "--collections", "everything",
           "--where", "visit = 2", "--yes")  # fmt: skip
    left = json.loads(
        butler("query-datasets", str(root), "summary", "--collections", "everything", "--json")
    )
    assert [(r["visit"], r["detector"]) for r in left] == [(1, 0)]
    ids = json.loads(butler("query-data-ids", str(root), "visit", "detector", "--json"))
    assert sorted((d["visit"], d["detector"]) for d in ids) == [(1, 0), (1, 1), (2, 0), (2, 1)]
    butler("verify", str(root))
    assert json.loads(butler("info", str(root), "--json"))["datasets"] == 1
