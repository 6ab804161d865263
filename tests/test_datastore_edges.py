"""Edges of the datastore's staging, recovery and file checks, and of the server's remote
transactions: the cases the end-to-end transaction tests pass through without telling apart
(written for the mutation run of the ``staging`` target, bench/mutation/run.py)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from types import SimpleNamespace
from typing import Any, ClassVar

import numpy as np
import pytest
from astropy.io import fits
from conftest import TextFormatter, new_repo, run_butler

from butler import Butler
from butler.datastore import (
    HASH_CHUNK,
    JOURNAL_NAME,
    LOCK_NAME,
    STAGING_DIR,
    Staging,
    check_file,
    locked_scratch_dir,
    make_locked_dir,
    recover_stale_staging,
    remove_abandoned_dirs,
    render_path,
    sha256_file,
)
from butler.errors import (
    BadRequestError,
    CorruptFileError,
    PayloadTooLargeError,
    ReadOnlyRepositoryError,
    TransactionError,
    TransactionNotFoundError,
    UploadError,
)
from butler.formatters.base import Formatter
from butler.formatters.fits_image import FitsImageFormatter
from butler.io.source import ByteSource
from butler.server import transactions
from butler.server.transactions import (
    REMOTE_STAGING_DIR,
    RemoteTransaction,
    TransactionManager,
    UploadWriter,
)

DATASET = uuid.UUID("12345678-abcd-5678-1234-567812345678")


def dead_pid() -> int:
    """The PID of a process that has exited (reaped, so no process has it now)."""
    done = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],  # noqa: S603
        capture_output=True,
        text=True,
        check=True,
    )
    return int(done.stdout)


def open_descriptors() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def age(path: Path, seconds: float) -> None:
    past = time.time() - seconds
    os.utime(path, (past, past))


# -- file paths from the template -----------------------------------------------------------


VISIT = {"instrument": "Cam", "visit": 42, "detector": 7}


def render(template: str, run: str = "u/alice/run1", data_id: dict[str, object] = VISIT) -> str:
    return render_path(
        template,
        run=run,
        dataset_type="calexp",
        data_id=data_id,
        dimensions=list(data_id),
        dataset_id=DATASET,
        extension=".fits",
    )


def test_every_template_field_renders() -> None:
    assert render("{run}/{dataset_type}/{data_id_path}") == "u/alice/run1/calexp/Cam/42/7.fits"
    assert render("{data_id_parent}/{data_id_flat}") == "Cam/42/Cam_42_7.fits"
    assert render("{dim_visit}-{dim_detector}/{id}") == f"42-7/{DATASET}.fits"


def test_empty_runs_and_data_ids_become_an_underscore() -> None:
    assert render("{run}/{data_id_path}/{data_id_parent}/{data_id_flat}", "///", {}) == (
        "_/_/_/_.fits"
    )
    assert render("{run}/{data_id_parent}", "r", {"only": 1}) == "r/_.fits"


def test_components_cannot_climb_or_hide() -> None:
    assert render("{run}/{dim_x}", "../..", {"x": "../../etc"}) == "_../_../_.._.._etc.fits"
    assert render("{dim_x}", data_id={"x": ".hidden"}) == "_.hidden.fits"
    assert render("{dim_x}", data_id={"x": ""}) == "_.fits"
    assert render("{dim_x}", data_id={"x": "a b/c"}) == "a_b_c.fits"
    # every safe character kept
    assert render("{dim_x}", data_id={"x": "A9._+=-"}) == "A9._+=-.fits"


def test_templates_that_escape_or_name_unknown_fields_are_refused() -> None:
    with pytest.raises(TransactionError, match=r"leaving the repository: '\.\./x\.fits'"):
        render("../x")
    with pytest.raises(TransactionError, match="uses an unknown field 'nope'"):
        render("{nope}")
    with pytest.raises(TransactionError, match="unknown field"):
        render("{0}")
    assert render("./a//./b") == "a/b.fits"  # empty and "." parts dropped, not refused


# -- staging ------------------------------------------------------------------------------


def test_reads_inside_a_transaction_see_its_newest_staged_file(tmp_path: Path) -> None:
    staging = Staging.begin(tmp_path)
    try:
        first, second = staging.new_path(DATASET, ".a"), staging.new_path(DATASET, ".b")
        assert first == staging.directory / f"{DATASET}.a"
        staging.add(DATASET, first, "x/one.a")
        staging.add(DATASET, second, "x/two.b")
        assert staging.staged_path(DATASET) == second
        assert staging.staged_path(uuid.uuid4()) is None
    finally:
        staging.close()


def test_discarding_a_file_never_written_is_fine(tmp_path: Path) -> None:
    staging = Staging.begin(tmp_path)
    try:
        never = staging.new_path(DATASET, ".x")  # the put failed before writing it
        staging.add(DATASET, never, "never.x")
        staging.discard(DATASET)
        assert staging.files == []
    finally:
        staging.close()


def test_discard_forgets_and_deletes_only_that_dataset(tmp_path: Path) -> None:
    other = uuid.uuid4()
    staging = Staging.begin(tmp_path)
    try:
        mine, theirs = staging.new_path(DATASET, ".x"), staging.new_path(other, ".x")
        for path in (mine, theirs):
            path.write_bytes(b"data")
        staging.add(DATASET, mine, "mine.x")
        staging.add(other, theirs, "theirs.x")
        staging.discard(DATASET)
        assert not mine.exists()
        assert theirs.exists()
        assert [s.dataset_id for s in staging.files] == [other]
    finally:
        staging.close()
    assert not staging.directory.exists()


def test_moving_into_place_journals_every_path_and_never_overwrites(tmp_path: Path) -> None:
    staging = Staging.begin(tmp_path)
    new = staging.new_path(DATASET, ".x")
    new.write_bytes(b"new")
    staging.add(DATASET, new, "deep/dir/file.x")
    gone = uuid.uuid4()
    staging.delete_on_commit(gone, tmp_path / "old.x")
    staging.move_into_place()
    assert (tmp_path / "deep/dir/file.x").read_bytes() == b"new"
    journal = json.loads((staging.directory / JOURNAL_NAME).read_text())
    assert journal == [
        {"id": str(DATASET), "path": str(tmp_path / "deep/dir/file.x")},
        {"id": str(gone), "path": str(tmp_path / "old.x")},
    ]
    staging.close()

    again = Staging.begin(tmp_path)
    clash = again.new_path(DATASET, ".x")
    clash.write_bytes(b"other")
    again.add(DATASET, clash, "deep/dir/file.x")
    with pytest.raises(TransactionError, match="refusing to overwrite existing file"):
        again.move_into_place()
    assert (tmp_path / "deep/dir/file.x").read_bytes() == b"new"
    again.close()


def test_many_files_in_many_directories_all_arrive(tmp_path: Path) -> None:
    staging = Staging.begin(tmp_path)
    ids = [uuid.uuid4() for _ in range(20)]  # above SYNC_ALL_THRESHOLD: one syncfs
    for number, dataset_id in enumerate(ids):
        path = staging.new_path(dataset_id, ".x")
        path.write_bytes(bytes([number]))
        staging.add(dataset_id, path, f"d{number}/f.x")
    staging.move_into_place()
    staging.finish(True, lambda found: set(found))
    assert [(tmp_path / f"d{n}/f.x").read_bytes() for n in range(20)] == [
        bytes([n]) for n in range(20)
    ]


def test_a_commit_deletes_replaced_files_and_a_rollback_undoes_unrecorded_ones(
    tmp_path: Path,
) -> None:
    old = tmp_path / "old.x"
    old.write_bytes(b"old")
    committed = Staging.begin(tmp_path)
    committed.delete_on_commit(uuid.uuid4(), old)
    committed.finish(True, lambda ids: set())
    assert not old.exists()
    assert not committed.directory.exists()

    recorded, unrecorded = uuid.uuid4(), uuid.uuid4()
    rolled_back = Staging.begin(tmp_path)
    for dataset_id in (recorded, unrecorded):
        path = rolled_back.new_path(dataset_id, ".x")
        path.write_bytes(b"x")
        rolled_back.add(dataset_id, path, f"{dataset_id}.x")
    kept = tmp_path / "kept.x"
    kept.write_bytes(b"kept")
    replaced = uuid.uuid4()
    rolled_back.delete_on_commit(replaced, kept)
    rolled_back.move_into_place()
    asked: list[list[uuid.UUID]] = []

    def is_recorded(ids: object) -> set[uuid.UUID]:
        asked.append(list(ids))  # type: ignore[call-overload]
        return {recorded}

    rolled_back.finish(False, is_recorded)
    assert (tmp_path / f"{recorded}.x").exists()
    assert not (tmp_path / f"{unrecorded}.x").exists()
    assert not kept.exists()  # journaled for deletion, its dataset not recorded: removed
    assert asked == [[recorded, unrecorded, replaced]]  # one question for the whole journal


def test_a_rollback_before_the_journal_touches_nothing(tmp_path: Path) -> None:
    staging = Staging.begin(tmp_path)
    outside = tmp_path / "outside.x"
    outside.write_bytes(b"x")
    staging.delete_on_commit(uuid.uuid4(), outside)
    staging.finish(False, lambda ids: pytest.fail("no journal: nothing to ask"))
    assert outside.exists()
    assert not staging.directory.exists()


def test_an_unreadable_journal_means_nothing_was_moved(tmp_path: Path) -> None:
    directory, fd = make_locked_dir(tmp_path / STAGING_DIR)
    precious = tmp_path / "precious.x"
    precious.write_bytes(b"x")
    (directory / JOURNAL_NAME).write_text('[{"id": "')
    os.close(fd)
    age(directory, 3600)
    assert recover_stale_staging(tmp_path, lambda ids: set()) == 1
    assert precious.exists()
    assert not directory.exists()


def test_recovery_undoes_a_dead_transactions_journal(tmp_path: Path) -> None:
    directory, fd = make_locked_dir(tmp_path / STAGING_DIR)
    moved, recorded = tmp_path / "moved.x", tmp_path / "recorded.x"
    moved.write_bytes(b"x")
    recorded.write_bytes(b"x")
    keep = uuid.uuid4()
    entries = [
        {"id": str(uuid.uuid4()), "path": str(moved)},
        {"id": str(keep), "path": str(recorded)},
    ]
    (directory / JOURNAL_NAME).write_text(json.dumps(entries))
    assert recover_stale_staging(tmp_path, lambda ids: set()) == 0  # alive: lock held
    assert moved.exists()
    os.close(fd)
    assert recover_stale_staging(tmp_path, lambda ids: {keep} & set(ids)) == 1
    assert not moved.exists()
    assert recorded.exists()


# -- abandoned directories ------------------------------------------------------------------


def test_only_directories_whose_owner_died_are_removed(tmp_path: Path) -> None:
    parent = tmp_path / "p"
    assert remove_abandoned_dirs(parent) == 0  # no directory yet: nothing to do
    live, live_fd = make_locked_dir(parent)
    dead, dead_fd = make_locked_dir(parent)
    os.close(dead_fd)
    (parent / "a-file").write_text("not a directory")
    seen: list[Path] = []
    assert remove_abandoned_dirs(parent, seen.append) == 1
    assert seen == [dead]
    assert live.exists()
    assert not dead.exists()
    assert (parent / "a-file").exists()
    os.close(live_fd)
    assert remove_abandoned_dirs(parent) == 1
    assert not live.exists()


def test_a_lockless_directory_is_kept_while_young_and_removed_when_old(tmp_path: Path) -> None:
    parent = tmp_path / "p"
    lockless = parent / "0123abcd"
    lockless.mkdir(parents=True)
    assert remove_abandoned_dirs(parent) == 0  # being made this instant, perhaps
    age(lockless, 59.5)
    assert remove_abandoned_dirs(parent) == 0  # still within the minute's grace
    age(lockless, 60.5)
    before = open_descriptors()
    assert remove_abandoned_dirs(parent) == 1
    assert not lockless.exists()
    assert open_descriptors() == before  # no descriptor closed that it did not open


def test_a_lock_that_cannot_be_opened_keeps_its_directory(tmp_path: Path) -> None:
    parent = tmp_path / "p"
    odd = parent / "0123abcd"
    (odd / LOCK_NAME).mkdir(parents=True)  # opening it fails, and not as "missing"
    age(odd, 3600)
    assert remove_abandoned_dirs(parent) == 0
    assert odd.exists()


def test_without_syncfs_the_whole_system_is_synced(monkeypatch: pytest.MonkeyPatch) -> None:
    import ctypes

    import butler.datastore as datastore

    def no_libc(*args: object, **kwargs: object) -> None:
        raise OSError("no such library")

    monkeypatch.setattr(ctypes, "CDLL", no_libc)
    assert datastore._syncfs.__wrapped__() is None  # type: ignore[attr-defined]
    monkeypatch.setattr(ctypes, "CDLL", lambda *args, **kwargs: object())  # no syncfs in it
    assert datastore._syncfs.__wrapped__() is None  # type: ignore[attr-defined]
    monkeypatch.setattr(datastore.sys, "platform", "darwin")
    assert datastore._syncfs.__wrapped__() is None  # type: ignore[attr-defined]


def test_a_directory_being_made_by_another_users_live_process_is_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def not_yours(pid: int, signal: int) -> None:
        raise PermissionError("operation not permitted")  # alive, but another user's

    parent = tmp_path / "p"
    (parent / ".new-4242-x").mkdir(parents=True)
    monkeypatch.setattr(os, "kill", not_yours)
    assert remove_abandoned_dirs(parent) == 0
    assert (parent / ".new-4242-x").exists()


def test_closing_a_staging_twice_is_harmless(tmp_path: Path) -> None:
    at_start = open_descriptors()
    staging = Staging.begin(tmp_path)
    staging.close()
    assert open_descriptors() == at_start  # its lock's descriptor is closed
    before = open_descriptors()
    staging.close()
    assert open_descriptors() == before
    assert not staging.directory.exists()


@pytest.mark.parametrize("files", [16, 17])  # up to 16 files: an fsync each
def test_up_to_the_threshold_each_file_is_synced_above_it_the_file_system(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, files: int
) -> None:
    import butler.datastore as datastore

    calls: list[str] = []
    monkeypatch.setattr(datastore, "sync_filesystem", lambda path: calls.append("fs"))
    monkeypatch.setattr(datastore, "fsync_file", lambda path: calls.append("file"))
    monkeypatch.setattr(datastore, "_fsync_dir", lambda path: calls.append("dir"))
    staging = Staging.begin(tmp_path)
    for number in range(files):
        dataset_id = uuid.uuid4()
        path = staging.new_path(dataset_id, ".x")
        path.write_bytes(b"x")
        staging.add(dataset_id, path, f"d{number}/f.x")
    staging.move_into_place()
    staging.close()
    if files <= 16:  # the files, the journal's directory, each new directory
        assert calls == ["file"] * files + ["dir"] + ["dir"] * files
    else:
        assert calls == ["fs", "dir", "fs"]


def test_a_directory_being_made_by_a_dead_process_goes_at_once(tmp_path: Path) -> None:
    parent = tmp_path / "p"
    for name in (f".new-{os.getpid()}-a", f".new-{dead_pid()}-b", ".new-x-c", ".new-"):
        (parent / name).mkdir(parents=True)
    assert remove_abandoned_dirs(parent) == 1
    assert sorted(p.name for p in parent.iterdir()) == [
        ".new-",
        f".new-{os.getpid()}-a",
        ".new-x-c",
    ]


def test_a_directory_that_cannot_be_locked_is_not_left_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import fcntl

    def taken(fd: int, operation: int) -> None:
        raise BlockingIOError("locked elsewhere")

    monkeypatch.setattr(fcntl, "flock", taken)
    with pytest.raises(BlockingIOError):
        make_locked_dir(tmp_path / "p")
    assert list((tmp_path / "p").iterdir()) == []


def test_a_locked_directory_is_made_under_its_final_name(tmp_path: Path) -> None:
    directory, fd = make_locked_dir(tmp_path / "p")
    try:
        assert (directory / LOCK_NAME).is_file()
        umask = os.umask(0)
        os.umask(umask)
        assert stat.S_IMODE((directory / LOCK_NAME).stat().st_mode) == 0o644 & ~umask
        assert not directory.name.startswith(".")
        assert [p.name for p in (tmp_path / "p").iterdir()] == [directory.name]
    finally:
        os.close(fd)


def test_a_directory_that_vanishes_while_being_looked_at_is_left_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another process's recovery may remove or rename a directory between the listing and
    the look at its age: that is no error, and not counted as removed here."""
    parent = tmp_path / "p"
    (parent / "0123abcd").mkdir(parents=True)
    real_stat = Path.stat
    looks: list[str] = []

    def gone(self: Path, *args: object, **kwargs: object) -> os.stat_result:
        if self.name == "0123abcd":
            looks.append(self.name)
            if len(looks) > 1:  # listed as a directory, gone at the look at its age
                raise FileNotFoundError(2, "No such file or directory", str(self))
        return real_stat(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(Path, "stat", gone)
    assert remove_abandoned_dirs(parent) == 0
    assert len(looks) == 2


def test_a_directory_removed_by_its_cleanup_meanwhile_still_counts_once(tmp_path: Path) -> None:
    """The directory may be gone by the time it is removed (another process's recovery got
    there during ``before_removal``): removing it is then done, not an error."""
    parent = tmp_path / "p"
    dead = parent / "0123abcd"
    (dead / LOCK_NAME).parent.mkdir(parents=True)
    (dead / LOCK_NAME).touch()
    seen: list[str] = []

    def removed_meanwhile(directory: Path) -> None:
        seen.append(directory.name)
        for child in directory.iterdir():
            child.unlink()
        directory.rmdir()

    assert remove_abandoned_dirs(parent, removed_meanwhile) == 1
    assert seen == ["0123abcd"]
    assert not dead.exists()


def test_a_failed_syncfs_reports_the_systems_reason() -> None:
    import ctypes
    import errno

    import butler.datastore as datastore

    syncfs = datastore._syncfs.__wrapped__()  # type: ignore[attr-defined]
    assert syncfs is not None  # Linux: the suite runs there
    ctypes.set_errno(0)
    assert syncfs(-1) == -1  # not a descriptor
    assert ctypes.get_errno() == errno.EBADF  # captured (use_errno): the message says why


# -- file checks ----------------------------------------------------------------------------


def test_checksums_cover_files_longer_than_one_chunk(tmp_path: Path) -> None:
    data = os.urandom(HASH_CHUNK * 2 + 7)
    path = tmp_path / "f"
    path.write_bytes(data)
    assert sha256_file(path) == "sha256:" + hashlib.sha256(data).hexdigest()


def test_check_file_names_what_is_wrong(tmp_path: Path) -> None:
    path = tmp_path / "f"
    with pytest.raises(CorruptFileError, match="missing from the datastore"):
        check_file(path, 3)
    path.write_bytes(b"abc")
    with pytest.raises(CorruptFileError, match="has 3 bytes but the registry records 4"):
        check_file(path, 4)
    good = "sha256:" + hashlib.sha256(b"abc").hexdigest()
    check_file(path, 3, good)
    check_file(path, 3)
    with pytest.raises(CorruptFileError, match="does not match its recorded checksum"):
        check_file(path, 3, "sha256:" + "0" * 64)


# -- remote transactions --------------------------------------------------------------------


def test_a_transaction_belongs_to_its_owner_and_expires(tmp_path: Path) -> None:
    manager = TransactionManager(tmp_path, ttl=3600)
    try:
        txn = manager.begin("alice")
        assert txn.directory.parent == manager.directory
        assert json.loads((txn.directory / "transaction.json").read_text())["owner"] == "alice"
        assert manager.get(txn.id, "alice") is txn
        with pytest.raises(TransactionNotFoundError, match="belongs to someone else"):
            manager.get(txn.id, "bob")
        with pytest.raises(TransactionNotFoundError, match="does not exist or has expired"):
            manager.get("../../etc", "alice")
        with pytest.raises(TransactionNotFoundError, match="does not exist"):
            manager.get("short", "alice")
        with pytest.raises(TransactionNotFoundError, match="does not exist"):
            manager.get(txn.id + "\n", "alice")
        assert manager.open_count == 1
        txn.expires = time.time() - 1
        with pytest.raises(TransactionNotFoundError, match="after 3600 s"):
            manager.get(txn.id, "alice")
        live = manager.begin("alice")
        assert manager.expire() == 1
        assert manager.open_count == 1
        assert not txn.directory.exists()
        assert live.directory.exists()
        manager.finish(live)
        assert manager.open_count == 0
        assert not live.directory.exists()
    finally:
        manager.close()
    assert not (tmp_path / REMOTE_STAGING_DIR).exists() or not any(
        (tmp_path / REMOTE_STAGING_DIR).iterdir()
    )


def test_using_a_transaction_pushes_its_expiry_back(tmp_path: Path) -> None:
    manager = TransactionManager(tmp_path, ttl=100)
    try:
        txn = manager.begin("alice")
        txn.expires = time.time() + 1
        manager.get(txn.id, "alice")
        assert txn.expires > time.time() + 50
    finally:
        manager.close()


def test_a_read_only_manager_stages_nothing(tmp_path: Path) -> None:
    manager = TransactionManager(tmp_path, ttl=10, writeable=False)
    assert not (tmp_path / REMOTE_STAGING_DIR).exists()
    with pytest.raises(ReadOnlyRepositoryError, match="--read-only"):
        manager.begin("alice")
    manager.close()


def test_upload_ids_must_be_dataset_uuids(tmp_path: Path) -> None:
    txn = RemoteTransaction("t" * 8, tmp_path, 0.0, "alice")
    assert txn.upload_path(str(DATASET)) == tmp_path / str(DATASET)
    for bad in (
        "../x",
        str(DATASET).upper(),
        str(DATASET) + "/x",
        "x" + str(DATASET),
        f"{DATASET}\n",
    ):
        with pytest.raises(UploadError, match="is not a dataset UUID"):
            txn.upload_path(bad)


def test_uploads_stop_past_the_limit_and_check_their_checksum(tmp_path: Path) -> None:
    exact = UploadWriter(tmp_path / "exact", max_bytes=6)
    exact.write(b"abc")
    exact.write(b"def")  # exactly the limit: accepted
    digest = "sha256:" + hashlib.sha256(b"abcdef").hexdigest()
    assert exact.finish(digest) == digest
    assert (tmp_path / "exact").read_bytes() == b"abcdef"
    assert not (tmp_path / "exact.part").exists()

    over = UploadWriter(tmp_path / "over", max_bytes=6)
    over.write(b"abcdef")
    with pytest.raises(PayloadTooLargeError, match="limit of 6 bytes"):
        over.write(b"g")
    over.abort()
    assert not (tmp_path / "over.part").exists()
    assert not (tmp_path / "over").exists()

    damaged = UploadWriter(tmp_path / "damaged", max_bytes=100)
    damaged.write(b"abc")
    with pytest.raises(UploadError, match=r"checksum mismatch.*\(3 bytes\)"):
        damaged.finish("sha256:" + "0" * 64)
    assert not (tmp_path / "damaged.part").exists()
    assert not (tmp_path / "damaged").exists()

    unchecked = UploadWriter(tmp_path / "unchecked", max_bytes=100)
    unchecked.write(b"abc")
    assert unchecked.finish(None) == "sha256:" + hashlib.sha256(b"abc").hexdigest()


def test_messages_never_show_server_paths(tmp_path: Path) -> None:
    class FakeButler:
        root = tmp_path / "repo"

    upload = tmp_path / "repo" / REMOTE_STAGING_DIR / "s" / "t" / str(DATASET)
    message = f"cannot read {upload}; see {upload.parent}/x and {tmp_path / 'repo'}/y"
    scrubbed = transactions._scrub(message, FakeButler(), upload)  # type: ignore[arg-type]
    assert scrubbed == "cannot read the upload; see staging/x and repository/y"
    assert len(transactions._scrub("x" * 600, FakeButler(), upload)) == 500  # type: ignore[arg-type]


def test_bad_operations_and_refs_are_the_clients_error() -> None:
    with pytest.raises(BadRequestError, match=r"refs\[3\] is not a dataset reference"):
        transactions._ref({"nonsense": True}, 3)
    with pytest.raises(UploadError, match="'nope' is not a dataset UUID"):
        transactions._uuid("nope")
    assert transactions._uuid(str(DATASET)) == DATASET
    with pytest.raises(TransactionError, match="unknown operation 'frobnicate'"):
        transactions._apply(None, {"op": "frobnicate"}, None)  # type: ignore[arg-type]
    with pytest.raises(TransactionError, match="needs a transaction with its upload"):
        transactions._apply(None, {"op": "put"}, None)  # type: ignore[arg-type]


def test_closing_releases_only_the_lock_it_holds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    closed: list[int] = []
    real_close = os.close

    def recording_close(fd: int) -> None:
        closed.append(fd)
        if fd > 2:  # never close the test process's own stdin/stdout/stderr
            real_close(fd)

    monkeypatch.setattr(os, "close", recording_close)
    manager = TransactionManager(tmp_path / "a", ttl=10)
    lock_fd = manager._lock_fd

    def lock_or_standard() -> list[int]:  # rmtree opens and closes descriptors of its own
        return [fd for fd in closed if fd <= 2 or fd == lock_fd]

    manager.close()
    manager.close()  # a second close (shutdown after an error) closes nothing more
    assert lock_or_standard() == [lock_fd]
    TransactionManager(tmp_path / "b", ttl=10, writeable=False).close()
    assert lock_or_standard() == [lock_fd]  # a read-only server holds no lock

    # A server started with stdin closed gets descriptor 0 for its lock: it is released too.
    monkeypatch.setattr(transactions, "make_locked_dir", lambda root: (tmp_path / "c", 0))
    TransactionManager(tmp_path / "c", ttl=10).close()
    assert lock_or_standard() == [lock_fd, 0]


def test_staging_removed_by_someone_else_does_not_break_cleanup(tmp_path: Path) -> None:
    """An operator clearing ``.staging-remote`` by hand must not turn a commit's cleanup, the
    expiry sweep or the shutdown into an error."""
    manager = TransactionManager(tmp_path, ttl=3600)
    finished = manager.begin("alice")
    shutil.rmtree(finished.directory)
    manager.finish(finished)
    expired = manager.begin("alice")
    shutil.rmtree(expired.directory)
    expired.expires = time.time() - 1
    assert manager.expire() == 1
    shutil.rmtree(manager.directory)
    manager.close()
    assert manager.open_count == 0


def test_an_upload_whose_part_file_vanished_still_fails_clearly(tmp_path: Path) -> None:
    damaged = UploadWriter(tmp_path / "damaged", max_bytes=100)
    damaged.write(b"abc")
    damaged.tmp.unlink()
    with pytest.raises(UploadError, match="checksum mismatch"):
        damaged.finish("sha256:" + "0" * 64)
    aborted = UploadWriter(tmp_path / "aborted", max_bytes=100)
    aborted.abort()
    aborted.abort()  # aborting twice (an error path after an error path) is harmless
    assert not aborted.tmp.exists()


class _PickyFormatter(TextFormatter):
    """A plugin whose index accepts any file and whose full read fails as the file says."""

    name: ClassVar[str] = "picky-test"

    def read(self, source: ByteSource, index: Any, **kwargs: Any) -> Any:
        text = source.read(0, source.size).decode()
        failures: dict[str, Exception] = {
            "value": ValueError(f"pixel 7 of {source.name} is not a number"),
            "key": KeyError(f"secret key of {source.name}"),
            "odd": _OddParserError("odd"),
        }
        if text in failures:
            raise failures[text]
        return text


class _OddParserError(Exception):
    """What a plugin's parser might raise: no ButlerError, ValueError or OSError."""


def _picky_butler(root: Path, formatter: Formatter | None = None) -> Any:
    """Just what checked_upload asks of a butler, with one formatter for every type."""
    chosen = formatter or _PickyFormatter()
    dataset_type = SimpleNamespace(storage_class=chosen.storage_class, formatter=chosen.name)
    return SimpleNamespace(
        root=root,
        registry=SimpleNamespace(get_dataset_type=lambda name: dataset_type),
        formatters=SimpleNamespace(
            storage_class=lambda name: SimpleNamespace(default_formatter=chosen.name),
            formatter=lambda name: chosen,
        ),
    )


def _check(tmp_path: Path, content: str) -> dict[str, Any]:
    upload = tmp_path / "repo" / REMOTE_STAGING_DIR / str(DATASET)
    upload.parent.mkdir(parents=True, exist_ok=True)
    upload.write_text(content)
    return dict(
        transactions.checked_upload(_picky_butler(tmp_path / "repo"), "summary", upload, "d1")
    )


def test_uploads_up_to_the_limit_are_read_whole_larger_ones_only_indexed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(transactions, "FULL_READ_LIMIT", len("value"))
    with pytest.raises(UploadError) as refused:
        _check(tmp_path, "value")  # exactly the limit: read whole, and the read fails
    assert "(ValueError: pixel 7 of the upload is not a number)" in str(refused.value)
    assert "picky-test" in str(refused.value)
    assert str(tmp_path) not in str(refused.value)
    assert _check(tmp_path, "fine") == {"format": "picky-test"}
    monkeypatch.setattr(transactions, "FULL_READ_LIMIT", len("value") - 1)
    assert _check(tmp_path, "value") == {"format": "picky-test"}  # only indexed


def test_a_parsers_unexpected_exception_is_named_not_quoted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(transactions, "FULL_READ_LIMIT", 100)
    with pytest.raises(UploadError) as unknown:
        _check(tmp_path, "key")  # its message may hold anything: only the type is shown
    assert "(KeyError)" in str(unknown.value)
    assert "secret" not in str(unknown.value)
    with pytest.raises(UploadError, match=r"\(_OddParserError\);"):
        _check(tmp_path, "odd")


def test_the_full_read_limit_is_the_one_the_security_guide_states() -> None:
    guide = " ".join((Path(__file__).parents[1] / "docs" / "security.md").read_text().split())
    limit = transactions.FULL_READ_LIMIT
    assert isinstance(limit, int)
    assert limit % 2**20 == 0
    assert f"for files up to {limit // 2**20} MiB, a full read" in guide


def test_a_commit_refuses_a_put_whose_file_differs_from_what_the_client_declared(
    butler: Any, tmp_path: Path
) -> None:
    txn = RemoteTransaction("t" * 8, tmp_path / "txn", time.time() + 60, "alice")
    txn.directory.mkdir()
    lock = threading.Lock()

    def put(content: bytes, checksum: str | None) -> dict[str, Any]:
        dataset_id = str(uuid.uuid4())
        txn.upload_path(dataset_id).write_bytes(content)
        op: dict[str, Any] = {
            "op": "put",
            "id": dataset_id,
            "dataset_type": "summary",
            "data_id": {"instrument": "HSC", "visit": 100, "detector": len(content) % 4},
            "run": "run1",
        }
        if checksum is not None:
            op["checksum"] = checksum
        return transactions.apply_operations(butler, lock, [op], txn)[0]

    body = b'{"a": 1}'
    right = "sha256:" + hashlib.sha256(body).hexdigest()
    assert put(body, right)["file"]["checksum"] == right
    assert put(b'{"b": 22}', None)["file"]["size"] == 9  # no declared checksum: not compared
    with pytest.raises(UploadError, match="checksum changed between upload and commit"):
        put(b'{"c": 3333}', "sha256:" + "0" * 64)
    assert butler.registry.count_datasets() == 2  # the refused put left nothing behind


class _CountingImageFormatter(FitsImageFormatter):
    """The real FITS image formatter, counting whole reads."""

    reads = 0

    def read(self, source: ByteSource, index: Any, **kwargs: Any) -> Any:
        type(self).reads += 1
        return super().read(source, index, **kwargs)


def test_an_upload_that_decodes_to_more_than_the_limit_is_only_indexed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A few kilobytes of tile-compressed zeros can stand for gigabytes of pixels (a 1.5 MB
    file of a 20,000 x 20,000 image took a commit 17 s and 4.8 GB): the file's size alone
    must not decide the full read."""
    upload = tmp_path / "repo" / REMOTE_STAGING_DIR / str(DATASET)
    upload.parent.mkdir(parents=True)
    pixels = np.zeros((512, 512), dtype=np.int32)
    compressed = fits.CompImageHDU(pixels, compression_type="GZIP_1", tile_shape=(64, 512))
    fits.HDUList([fits.PrimaryHDU(), compressed]).writeto(upload)
    assert upload.stat().st_size < 64 * 1024
    decoded = 512 * 512 * (4 + 4 + 4)  # int32 image, float32 variance, int32 mask
    butler = _picky_butler(tmp_path / "repo", _CountingImageFormatter())
    monkeypatch.setattr(_CountingImageFormatter, "reads", 0)

    monkeypatch.setattr(transactions, "FULL_READ_LIMIT", decoded)
    index = transactions.checked_upload(butler, "calexp", upload, "d1")
    assert _CountingImageFormatter.reads == 1  # decodes to exactly the limit: read whole
    monkeypatch.setattr(transactions, "FULL_READ_LIMIT", decoded - 1)
    assert transactions.checked_upload(butler, "calexp", upload, "d1") == index
    assert _CountingImageFormatter.reads == 1  # one byte more than the limit: only indexed


def test_what_a_killed_ingest_zip_extracted_is_removed_by_the_next(tmp_path: Path) -> None:
    root = new_repo(tmp_path / "repo")
    killed = subprocess.run(
        [
            sys.executable,
            "-c",
            "import os, signal, sys\n"
            "from pathlib import Path\n"
            "from butler.datastore import locked_scratch_dir\n"
            "with locked_scratch_dir(Path(sys.argv[1])) as scratch:\n"
            "    (scratch / 'extracted.fits').write_bytes(bytes(100_000))\n"
            "    os.kill(os.getpid(), signal.SIGKILL)\n",
            str(root / ".ingest-zip"),
        ],
        check=False,
    )
    assert killed.returncode == -signal.SIGKILL
    (left,) = (root / ".ingest-zip").iterdir()
    assert (left / "extracted.fits").stat().st_size == 100_000
    with locked_scratch_dir(root / ".ingest-zip") as live:  # a live one is left alone
        not_a_zip = tmp_path / "plain.zip"
        not_a_zip.write_text("hello")
        out = run_butler("ingest-zip", str(root), str(not_a_zip))
        assert out.returncode == 1
        assert "is not a zip archive" in out.stderr
        assert list((root / ".ingest-zip").iterdir()) == [live]
    assert list((root / ".ingest-zip").iterdir()) == []


def test_removing_datasets_whose_file_is_already_gone_commits(tmp_path: Path) -> None:
    """A dataset whose file was lost (or deleted by hand) can still be removed: the commit
    deletes what is there, and neither fails after the registry committed nor leaves its
    staging directory behind."""
    root = new_repo(tmp_path / "repo")
    with Butler(root, run="run1") as butler:
        butler.register_dataset_type("note", [], "Dict")
        refs = [butler.put({"n": n}, "note", {}, run=f"run{n}") for n in range(3)]
        paths = [butler.get_local_path(ref) for ref in refs]
        paths[0].unlink()  # lost before the removal
        assert butler.remove(refs[:2]) == 2
        assert not paths[1].exists()
        assert paths[2].exists()
        assert [r.id for r in butler.query_datasets("note", collections=["run2"])] == [refs[2].id]
        assert butler.query_datasets("note", collections=["run0", "run1"]) == []
    staging = root / STAGING_DIR
    assert not staging.exists() or list(staging.iterdir()) == []
