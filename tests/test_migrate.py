"""A repository made by the previous release opens unchanged, and `butler migrate` brings it
to the universe that holds the LSST butler's data without changing what it held."""

from __future__ import annotations

import shutil
import sqlite3
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
import pytest
import yaml

from butler import Butler
from butler.errors import RepositoryConfigError
from butler.migrate import upgrade_universe

OLD_REPO = Path(__file__).with_name("data") / "repo-0.1.0"
SUMMARY_ID = uuid.UUID("12cfdb4c-336d-41fd-a45e-f803bdd33d8c")
COUNTS_ID = uuid.UUID("1c5738b1-a642-4f60-a69e-6e60ed992e6e")


@pytest.fixture
def old_repo(tmp_path: Path) -> Path:
    root = tmp_path / "old"
    shutil.copytree(OLD_REPO, root)
    return root


def _butler(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "butler.cli.main", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _read_back(root: Path) -> None:
    with Butler(root, collections="old/run") as butler:
        assert butler.get("summary", instrument="HSC", visit=1228, detector=42) == {"seeing": 0.61}
        counts = butler.get("raw_counts", instrument="HSC", exposure=1228, detector=42)
        np.testing.assert_array_equal(counts, np.arange(6, dtype="int16"))
        ids = {ref.id for ref in butler.query_datasets("summary")} | {
            ref.id for ref in butler.query_datasets("raw_counts")
        }
        assert ids == {SUMMARY_ID, COUNTS_ID}
        assert butler.verify() == []


def test_an_old_repository_reads_as_before_without_migration(old_repo: Path) -> None:
    _read_back(old_repo)
    assert yaml.safe_load((old_repo / "dimensions.yaml").read_text())["version"] == 1


def test_migrate_adds_the_new_universe_and_keeps_every_dataset(old_repo: Path) -> None:
    before = sqlite3.connect(old_repo / "registry.sqlite3")
    old_rows = before.execute("SELECT * FROM dim_exposure").fetchall()
    before.close()

    out = _butler("migrate", str(old_repo))
    assert out.returncode == 0, out.stderr
    assert "universe version 1 -> 2" in out.stdout
    assert "visit_detector_region" in out.stdout
    universe = yaml.safe_load((old_repo / "dimensions.yaml").read_text())
    assert universe["version"] == 2
    assert not (old_repo / "dimensions.yaml.upgrade").exists()
    _read_back(old_repo)

    # Old rows keep their values in their old columns; the new ones are null.
    after = sqlite3.connect(old_repo / "registry.sqlite3")
    after.row_factory = sqlite3.Row
    (row,) = after.execute("SELECT * FROM dim_exposure").fetchall()
    assert tuple(row)[: len(old_rows[0])] == old_rows[0]
    assert row["group"] is None
    assert row["timespan_begin"] is None
    meta = dict(after.execute("SELECT key, value FROM butler_meta").fetchall())
    assert meta["universe_version"] == "2"
    after.close()

    # The new elements and fields work: a group, an exposure implying it, a region.
    with Butler(old_repo, run="new/run") as butler:
        butler.insert_dimension_records("group", {"instrument": "HSC", "name": "g7"})
        butler.insert_dimension_records(
            "exposure",
            {"instrument": "HSC", "id": 1229, "physical_filter": "HSC-R", "group": "g7"},
        )
        ref = butler.put(np.ones(3, dtype="int16"), "raw_counts", exposure=1229,
                         instrument="HSC", detector=42)  # fmt: skip
        assert ref.data_id["group"] == "g7"
        found = butler.query_datasets("raw_counts", collections="new/run", where="group = 'g7'")
        assert [r.id for r in found] == [ref.id]
        butler.insert_dimension_records(
            "visit_detector_region", {"instrument": "HSC", "visit": 1228, "detector": 42}
        )
    _read_back(old_repo)

    again = _butler("migrate", str(old_repo))
    assert again.returncode == 0, again.stderr
    assert "nothing to do" in again.stdout


def test_a_migration_that_fails_changes_nothing(old_repo: Path) -> None:
    registry = old_repo / "registry.sqlite3"
    conn = sqlite3.connect(registry)
    # A table in the way of one the migration makes: its CREATE fails half-way through.
    conn.execute("CREATE TABLE dim_visit_detector_region (x INTEGER)")
    conn.commit()
    conn.close()
    with pytest.raises(RepositoryConfigError, match="nothing was changed.*already exists"):
        upgrade_universe(old_repo)
    conn = sqlite3.connect(registry)
    columns = [r[1] for r in conn.execute("PRAGMA table_info(dim_exposure)")]
    assert "group" not in columns
    assert conn.execute(
        "SELECT value FROM butler_meta WHERE key = 'universe_version'"
    ).fetchone() == ("1",)
    conn.close()
    assert yaml.safe_load((old_repo / "dimensions.yaml").read_text())["version"] == 1
    assert not (old_repo / "dimensions.yaml.upgrade").exists()
    _read_back(old_repo)


def test_migrate_refuses_a_url() -> None:
    out = _butler("migrate", "http://127.0.0.1:9/")
    assert out.returncode != 0
    assert "local repository path only" in out.stderr


def test_a_migration_stopped_before_its_file_moved_is_finished_by_the_next(
    old_repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import butler.migrate as migrate_module

    def crash(src: object, dst: object) -> None:
        raise KeyboardInterrupt  # killed after the registry's commit, before the rename

    monkeypatch.setattr(migrate_module.os, "replace", crash)
    with pytest.raises(KeyboardInterrupt):
        upgrade_universe(old_repo)
    monkeypatch.undo()
    # The registry is upgraded, the file not yet: the repository still reads as before.
    assert yaml.safe_load((old_repo / "dimensions.yaml").read_text())["version"] == 1
    assert (old_repo / "dimensions.yaml.upgrade").is_file()
    _read_back(old_repo)
    result = upgrade_universe(old_repo)
    assert (result.from_version, result.to_version) == (1, 2)
    assert yaml.safe_load((old_repo / "dimensions.yaml").read_text())["version"] == 2
    assert not (old_repo / "dimensions.yaml.upgrade").exists()
    _read_back(old_repo)
    with Butler(old_repo, writeable=True) as butler:
        butler.insert_dimension_records("group", {"instrument": "HSC", "name": "g1"})
