"""ACID transactions: all or nothing, crash safety under SIGKILL, concurrent writers."""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import DETECTORS, VISITS

from butler import Butler, DatasetExistsError

REGISTRY_BACKENDS = ("sqlite", "postgresql")  # one suite, both registry engines

HSC = {"instrument": "HSC"}

# A child process that writes datasets and kills itself with SIGKILL at a chosen point.
CHILD = textwrap.dedent(
    """
    import os, signal, sys
    from butler import Butler
    import butler.datastore as datastore

    repo, mode, point = sys.argv[1], sys.argv[2], int(sys.argv[3])

    def die():
        os.kill(os.getpid(), signal.SIGKILL)

    if mode == "rename":
        real_rename = os.rename
        count = [0]
        def rename(src, dst):
            if count[0] == point:
                die()
            count[0] += 1
            real_rename(src, dst)
        datastore.os.rename = rename
    elif mode == "before-commit":
        real_move = datastore.Staging.move_into_place
        def move(self):
            real_move(self)
            die()
        datastore.Staging.move_into_place = move
    elif mode == "after-commit":
        def finish(self, committed, is_recorded):
            die()
        datastore.Staging.finish = finish

    butler = Butler(repo, run="crash")
    if mode == "remove":
        refs = butler.query_datasets("summary", collections="run1")
        def finish(self, committed, is_recorded):
            die()
        datastore.Staging.finish = finish
        butler.remove(refs)
    with butler.transaction():
        for i in range(10):
            butler.put({"i": i}, "summary", instrument="HSC", visit=100 + i, detector=0)
            if mode == "staging" and i == point:
                die()
    print("finished without dying", file=sys.stderr)
    sys.exit(3)
    """
)


def run_child(repo: Path, mode: str, point: int) -> None:
    result = subprocess.run(
        [sys.executable, "-c", CHILD, str(repo), mode, str(point)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == -signal.SIGKILL, result.stderr


def files_of_run(repo: Path, run: str) -> list[Path]:
    return (
        sorted(p for p in (repo / run).rglob("*") if p.is_file()) if (repo / run).exists() else []
    )


def test_exception_rolls_back_files_and_rows(butler: Butler) -> None:
    with pytest.raises(RuntimeError, match="boom"), butler.transaction():
        for visit in (100, 101, 102):
            butler.put({"v": visit}, "summary", HSC, visit=visit, detector=0)
        raise RuntimeError("boom")
    assert butler.query_datasets("summary") == []
    assert files_of_run(butler.root, "run1") == []
    assert list((butler.root / ".staging").iterdir()) == []


def test_dimension_records_and_types_roll_back_too(butler: Butler) -> None:
    with pytest.raises(RuntimeError), butler.transaction():
        butler.insert_dimension_records("band", {"name": "z"})
        butler.register_dataset_type("newtype", ["visit"], "Dict")
        raise RuntimeError("boom")
    assert [r["name"] for r in butler.query_dimension_records("band")] == ["i", "r"]
    assert "newtype" not in [t.name for t in butler.dataset_types()]


def test_nested_transaction_failure_undoes_only_the_inner_block(butler: Butler) -> None:
    with butler.transaction():
        butler.put({"v": 1}, "summary", HSC, visit=100, detector=0)
        with pytest.raises(DatasetExistsError), butler.transaction():
            butler.put({"v": 2}, "summary", HSC, visit=101, detector=0)
            butler.put({"v": 3}, "summary", HSC, visit=100, detector=0)
        butler.put({"v": 4}, "summary", HSC, visit=102, detector=0)
    visits = sorted(r.data_id["visit"] for r in butler.query_datasets("summary"))
    assert visits == [100, 102]
    assert len(files_of_run(butler.root, "run1")) == 2


@pytest.mark.parametrize(
    ("mode", "point"),
    [("staging", 0), ("staging", 6), ("rename", 0), ("rename", 5), ("before-commit", 0)],
)
def test_sigkill_before_commit_leaves_nothing_visible(
    repo_path: Path, mode: str, point: int
) -> None:
    run_child(repo_path, mode, point)
    # Files may be half moved; the next open must undo them.
    with Butler(repo_path, writeable=True) as butler:
        assert butler.registry.count_datasets() == 0
        assert files_of_run(repo_path, "crash") == []
        assert list((repo_path / ".staging").iterdir()) == []
        # And the repository is fully usable afterwards.
        butler.put({"ok": True}, "summary", HSC, visit=100, detector=0, run="crash")
        assert butler.get("summary", HSC, visit=100, detector=0, collections="crash") == {
            "ok": True
        }


def test_sigkill_after_commit_keeps_everything(repo_path: Path) -> None:
    run_child(repo_path, "after-commit", 0)
    with Butler(repo_path, collections="crash") as butler:
        refs = butler.query_datasets("summary")
        assert len(refs) == 10
        for ref in refs:
            assert butler.get(ref) == {"i": ref.data_id["visit"] - 100}
        assert list((repo_path / ".staging").iterdir()) == []


def test_sigkill_after_remove_commit_deletes_files_on_next_open(repo_path: Path) -> None:
    with Butler(repo_path, run="run1") as butler:
        for visit in (100, 101):
            butler.put({"v": visit}, "summary", HSC, visit=visit, detector=1)
    assert len(files_of_run(repo_path, "run1")) == 2
    run_child(repo_path, "remove", 0)
    with Butler(repo_path) as butler:
        assert butler.query_datasets("summary", collections="run1") == []
    assert files_of_run(repo_path, "run1") == []


WRITER = textwrap.dedent(
    """
    import json, sys
    from butler import Butler, DatasetExistsError
    repo, worker, mode, puts = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
    ok = dup = 0
    with Butler(repo, run="shared") as butler:
        for i in range(puts):
            if mode == "distinct":
                # 40 distinct data IDs per run; every (run, data ID) distinct.
                visit, detector = 100 + i % 10, i // 10 % 4
                data = {"worker": worker, "i": i}
                run = f"w{worker}_{i // 40}"
            else:
                visit, detector, run = 100 + i % 10, i // 10 % 4, "race"
                data = {"worker": worker, "i": i}
            try:
                butler.put(
                    data, "summary", instrument="HSC", visit=visit, detector=detector, run=run
                )
                ok += 1
            except DatasetExistsError:
                dup += 1
    print(json.dumps({"ok": ok, "dup": dup}))
    """
)


def run_writers(repo: Path, mode: str, workers: int, puts: int) -> list[dict[str, int]]:
    """``workers`` processes putting ``puts`` datasets each into ``repo``, all at once."""
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, str(repo), str(w), mode, str(puts)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for w in range(workers)
    ]
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=240)
        assert proc.returncode == 0, err
        results.append(json.loads(out))
    return results


def test_concurrent_writers_lose_and_duplicate_nothing(repo_path: Path) -> None:
    workers, puts = 8, 100
    results = run_writers(repo_path, "distinct", workers, puts)
    assert [r["ok"] for r in results] == [puts] * workers
    with Butler(repo_path) as butler:
        refs = butler.query_datasets("summary", find_first=False)
        assert len(refs) == workers * puts
        assert len({(r.run, r.data_id) for r in refs}) == workers * puts
        assert len({r.id for r in refs}) == workers * puts
        contents = [(d["worker"], d["i"]) for d in (butler.get(r) for r in refs)]
        assert sorted(contents) == [(w, i) for w in range(workers) for i in range(puts)]
        runs = {r.run for r in refs}
        assert runs == {f"w{w}_{c}" for w in range(workers) for c in range(3)}
        assert sum(1 for p in repo_path.rglob("*.json") if p.is_file()) == workers * puts


def test_concurrent_puts_of_the_same_data_ids_keep_exactly_one_each(repo_path: Path) -> None:
    results = run_writers(repo_path, "race", 4, 50)
    assert sum(r["ok"] for r in results) == 40
    assert sum(r["dup"] for r in results) == 160
    with Butler(repo_path, collections="race") as butler:
        assert len(butler.query_datasets("summary")) == 40
    assert len(files_of_run(repo_path, "race")) == 40
    assert os.listdir(repo_path / ".staging") == []


def test_recovery_leaves_a_staging_directory_being_made_alone(tmp_path: Path) -> None:
    # Staging.begin makes ".new-<pid>-<id>", creates its lock file, then locks it: recovery
    # in another process that looks in between must not take the lock and delete it.
    from butler.datastore import LOCK_NAME, STAGING_DIR, recover_stale_staging

    being_made = tmp_path / STAGING_DIR / f".new-{os.getpid()}-0123"
    being_made.mkdir(parents=True)
    (being_made / LOCK_NAME).touch()
    assert recover_stale_staging(tmp_path, lambda ids: set()) == 0
    assert being_made.exists()
    # The same directory left by a process that has died is cleaned at once.
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],  # noqa: S603
        capture_output=True,
        text=True,
        check=True,
    )
    orphan = being_made.rename(being_made.with_name(f".new-{dead.stdout.strip()}-0123"))
    assert recover_stale_staging(tmp_path, lambda ids: set()) == 1
    assert not orphan.exists()


def test_a_big_commit_flushes_the_file_system_once_a_small_one_each_path(
    butler: Butler, monkeypatch: pytest.MonkeyPatch
) -> None:
    import butler.datastore as datastore

    calls: list[str] = []
    real_sync_filesystem, real_fsync_dir = datastore.sync_filesystem, datastore._fsync_dir
    monkeypatch.setattr(
        datastore, "sync_filesystem", lambda p: (calls.append("fs"), real_sync_filesystem(p))
    )
    monkeypatch.setattr(datastore, "fsync_file", lambda p: calls.append("file"))
    monkeypatch.setattr(datastore, "_fsync_dir", lambda p: (calls.append("dir"), real_fsync_dir(p)))
    monkeypatch.setattr(datastore, "SYNC_ALL_THRESHOLD", 2)
    with butler.transaction():  # 12 files in 4 new directories (one per detector)
        for visit, detector in itertools.product(VISITS[:3], DETECTORS):
            butler.put({"d": detector}, "summary", HSC, visit=visit, detector=detector)
    # The files, then (after the journal's directory) the new directories: one flush each.
    assert calls == ["fs", "dir", "fs"]
    calls.clear()
    with butler.transaction():
        for detector in DETECTORS[:2]:
            butler.put({"d": detector}, "summary", HSC, visit=VISITS[5], detector=detector)
    assert calls == ["file", "file", "dir", "dir", "dir"]  # the journal's, then each parent
    assert len(butler.query_datasets("summary")) == 14


def test_syncing_a_missing_file_system_path_is_an_error(tmp_path: Path) -> None:
    import butler.datastore as datastore

    datastore.sync_filesystem(tmp_path)  # succeeds: Linux syncfs, or sync() elsewhere
    with pytest.raises(FileNotFoundError):
        datastore.sync_filesystem(tmp_path / "missing")
