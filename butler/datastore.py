"""Files of a local repository: where they go, how they are staged, and crash recovery.

A write transaction stages new files in ``.staging/<txn>/`` (same filesystem as the
datastore, so moving them into place is an atomic rename). Its ``lock`` file is held with
``flock`` while the owning process lives, so any later open can tell a live transaction from
one whose process died. Before files are moved into place a ``journal.json`` lists every
(dataset id, final path) the transaction touches; the registry commit happens after the
moves. Recovery of a dead transaction's directory deletes each journaled path whose dataset
id is not in the registry, then the directory. So a crash at any point leaves either all of
a transaction's datasets visible with their files, or none of them and no stray files.
"""

from __future__ import annotations

import ctypes
import fcntl
import functools
import hashlib
import json
import os
import re
import shutil
import sys
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from butler.errors import CorruptFileError, TransactionError

STAGING_DIR = ".staging"
JOURNAL_NAME = "journal.json"
LOCK_NAME = "lock"
_UNSAFE = re.compile(r"[^A-Za-z0-9._+=-]")
HASH_CHUNK = 1 << 20
NEW_DIR_GRACE_SECONDS = 60


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(HASH_CHUNK):
            digest.update(chunk)
    return "sha256:" + digest.hexdigest()


def _safe_component(value: object) -> str:
    """A path component that cannot climb out of its directory or hide as a dotfile."""
    text = _UNSAFE.sub("_", str(value))
    if not text or text.startswith("."):
        text = "_" + text
    return text


def render_path(
    template: str,
    *,
    run: str,
    dataset_type: str,
    data_id: Mapping[str, Any],
    dimensions: Iterable[str],
    dataset_id: uuid.UUID,
    extension: str,
) -> str:
    """Relative POSIX path of a dataset's file from the repository's file template."""
    dims = list(dimensions)
    run_parts = [_safe_component(p) for p in run.split("/") if p]
    fields = {
        "run": "/".join(run_parts) or "_",
        "dataset_type": _safe_component(dataset_type),
        "data_id_path": "/".join(_safe_component(data_id[d]) for d in dims) or "_",
        "data_id_parent": "/".join(_safe_component(data_id[d]) for d in dims[:-1]) or "_",
        "data_id_flat": "_".join(_safe_component(data_id[d]) for d in dims) or "_",
        "id": str(dataset_id),
    }
    fields.update({f"dim_{d}": _safe_component(v) for d, v in data_id.items()})
    try:
        path = template.format(**fields) + extension
    except (KeyError, IndexError) as exc:
        raise TransactionError(f"file_template {template!r} uses an unknown field {exc}") from exc
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if any(p == ".." for p in parts):
        raise TransactionError(f"file_template produced a path leaving the repository: {path!r}")
    return "/".join(parts)


@dataclass
class StagedFile:
    dataset_id: uuid.UUID
    staged: Path
    final: Path


@dataclass
class Staging:
    """One transaction's staging directory, held locked while the transaction lives."""

    root: Path
    directory: Path
    files: list[StagedFile] = field(default_factory=list)
    deletions: list[tuple[uuid.UUID, Path]] = field(default_factory=list)
    _lock_fd: int = -1

    @classmethod
    def begin(cls, root: Path) -> Staging:
        directory, fd = make_locked_dir(root / STAGING_DIR)
        return cls(root=root, directory=directory, _lock_fd=fd)

    def new_path(self, dataset_id: uuid.UUID, extension: str) -> Path:
        return self.directory / f"{dataset_id}{extension}"

    def add(self, dataset_id: uuid.UUID, staged: Path, final_relative: str) -> None:
        self.files.append(StagedFile(dataset_id, staged, self.root / final_relative))

    def staged_path(self, dataset_id: uuid.UUID) -> Path | None:
        """The staged file of a dataset this transaction wrote, for reads inside it (read
        your own writes); None if it wrote no file for that dataset."""
        for staged in reversed(self.files):  # the newest first: reads follow writes
            if staged.dataset_id == dataset_id:
                return staged.staged
        return None

    def discard(self, dataset_id: uuid.UUID) -> None:
        """Forget a staged file (its put failed) and delete it."""
        for staged in [s for s in self.files if s.dataset_id == dataset_id]:
            self.files.remove(staged)
            staged.staged.unlink(missing_ok=True)

    def delete_on_commit(self, dataset_id: uuid.UUID, path: Path) -> None:
        self.deletions.append((dataset_id, path))

    def move_into_place(self) -> None:
        """Make staged files durable, journal, then rename each to its final path.

        Runs just before the registry commit, so a committed dataset's bytes are on disk.
        """
        _sync_files([s.staged for s in self.files])
        entries = [{"id": str(s.dataset_id), "path": str(s.final)} for s in self.files]
        entries += [{"id": str(i), "path": str(p)} for i, p in self.deletions]
        journal = self.directory / JOURNAL_NAME
        tmp = journal.with_suffix(".tmp")
        with open(tmp, "w") as f:
            f.write(json.dumps(entries))  # one write; json.dump makes one per token
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, journal)
        _fsync_dir(self.directory)
        parents: set[Path] = set()
        for staged in self.files:
            if staged.final.parent not in parents:  # files share directories: one mkdir each
                staged.final.parent.mkdir(parents=True, exist_ok=True)
            if staged.final.exists():
                raise TransactionError(f"refusing to overwrite existing file {staged.final}")
            os.rename(staged.staged, staged.final)
            parents.add(staged.final.parent)
        if len(parents) > SYNC_ALL_THRESHOLD:
            # One flush of the file system, not one per directory: with a directory per
            # dataset (a template ending in data_id_path) a batch of 200 datasets cost 200
            # device flushes. It also covers the directories made for them, in their parents.
            sync_filesystem(self.root)
            return
        for parent in parents:
            _fsync_dir(parent)

    def finish(
        self, committed: bool, is_recorded: Callable[[Iterable[uuid.UUID]], set[uuid.UUID]]
    ) -> None:
        """After the registry committed or rolled back: settle files, drop the staging dir."""
        if committed:
            for _, path in self.deletions:
                path.unlink(missing_ok=True)
        else:
            journal = self.directory / JOURNAL_NAME
            if journal.exists():
                _undo_journal(journal, is_recorded)
        self.close()

    def close(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1


def _undo_journal(
    journal: Path, is_recorded: Callable[[Iterable[uuid.UUID]], set[uuid.UUID]]
) -> None:
    try:
        entries = json.loads(journal.read_text())
    except (OSError, ValueError):
        return  # written atomically: an unreadable journal means no file was moved yet
    ids = [uuid.UUID(e["id"]) for e in entries]
    recorded = is_recorded(ids)
    for entry in entries:
        if uuid.UUID(entry["id"]) not in recorded:
            Path(entry["path"]).unlink(missing_ok=True)


def make_locked_dir(parent: Path) -> tuple[Path, int]:
    """A new directory under ``parent`` whose ``lock`` file this process holds (``flock``)
    until it closes the returned descriptor: :func:`remove_abandoned_dirs` in any process
    leaves it alone while the lock is held."""
    # Lock first, then make the directory visible under its final name: recovery in
    # another process must never delete a live directory. Until the rename, the hidden name
    # carries this process's ID, which recovery checks: the lock file exists a moment
    # before it is locked.
    name = uuid.uuid4().hex
    hidden = parent / f".new-{os.getpid()}-{name}"
    hidden.mkdir(parents=True)
    fd = os.open(hidden / LOCK_NAME, os.O_CREAT | os.O_RDWR, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        directory = hidden.with_name(name)
        os.rename(hidden, directory)
    except BaseException:
        os.close(fd)
        shutil.rmtree(hidden, ignore_errors=True)
        raise
    return directory, fd


@contextmanager
def locked_scratch_dir(parent: Path) -> Iterator[Path]:
    """A scratch directory under ``parent`` for this process alone, removed on exit.

    What a killed process left under ``parent`` (its lock is free) is removed first, so an
    interrupted job's files do not stay in the repository for good.
    """
    remove_abandoned_dirs(parent)
    directory, fd = make_locked_dir(parent)
    try:
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)
        os.close(fd)


def recover_stale_staging(
    root: Path, is_recorded: Callable[[Iterable[uuid.UUID]], set[uuid.UUID]]
) -> int:
    """Clean staging directories whose process died. Returns how many were cleaned."""

    def undo(directory: Path) -> None:
        journal = directory / JOURNAL_NAME
        if journal.exists():
            _undo_journal(journal, is_recorded)

    return remove_abandoned_dirs(root / STAGING_DIR, undo)


def remove_abandoned_dirs(
    parent: Path, before_removal: Callable[[Path], None] | None = None
) -> int:
    """Remove the directories under ``parent`` made by :func:`make_locked_dir` whose owner
    died (their lock is free); ``before_removal`` runs on each first, with the lock taken.
    Live directories (lock held, or being made by a live process) are never touched.
    Returns how many were removed."""
    if not parent.is_dir():
        return 0
    cleaned = 0
    for directory in parent.iterdir():
        if directory.is_dir() and _remove_if_abandoned(directory, before_removal):
            cleaned += 1
    return cleaned


def _remove_if_abandoned(directory: Path, before_removal: Callable[[Path], None] | None) -> bool:
    maker_alive = _maker_alive(directory.name)
    if maker_alive:
        return False  # a directory being made this instant
    try:
        young = time.time() - directory.stat().st_mtime < NEW_DIR_GRACE_SECONDS
    except OSError:
        return False  # renamed or removed meanwhile
    try:
        fd = os.open(directory / LOCK_NAME, os.O_RDWR)
    except FileNotFoundError:
        # The lock is taken right after the directory is made; without one, the directory
        # is either being made this instant or its process died in between.
        if young and maker_alive is None:
            return False
        fd = -1
    except OSError:
        return False
    try:
        if fd >= 0:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False  # alive
        if before_removal is not None:
            before_removal(directory)
        shutil.rmtree(directory, ignore_errors=True)
        return True
    finally:
        if fd >= 0:
            os.close(fd)


def _maker_alive(name: str) -> bool | None:
    """For a staging directory being made (``.new-<pid>-<id>``): whether the process
    making it still runs; None for other names."""
    pid_text = name.removeprefix(".new-").split("-", 1)[0]
    if not name.startswith(".new-") or not pid_text.isdigit():
        return None
    try:
        os.kill(int(pid_text), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # alive, another user's
    return True


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_file(path: Path) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


SYNC_ALL_THRESHOLD = 16
"""Above this many files or directories, one flush of the whole file system beats an
fsync() of each."""


def sync_filesystem(path: Path) -> None:
    """Make everything written to ``path``'s file system durable: ``syncfs`` on Linux (only
    that file system, not every disk as ``sync()`` does), ``sync()`` elsewhere."""
    syncfs = _syncfs()
    if syncfs is None:
        os.sync()
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        if syncfs(fd) != 0:
            error = ctypes.get_errno()
            raise OSError(error, f"syncfs failed: {os.strerror(error)}", str(path))
    finally:
        os.close(fd)


@functools.cache
def _syncfs() -> Callable[[int], int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        function: Callable[[int], int] = ctypes.CDLL(None, use_errno=True).syncfs
    except (OSError, AttributeError):  # a libc without it
        return None
    return function


def _sync_files(paths: list[Path]) -> None:
    if not paths:
        return
    # Deferred to commit time: writing many datasets then syncing once is much faster than
    # an fsync per put, and the registry commit still never precedes the bytes it names.
    if len(paths) > SYNC_ALL_THRESHOLD:
        sync_filesystem(paths[0].parent)
        return
    for path in paths:
        fsync_file(path)


def check_file(path: Path, size: int, checksum: str | None = None) -> None:
    """Raise :class:`CorruptFileError` if a stored file is missing, resized or altered."""
    try:
        actual = path.stat().st_size
    except FileNotFoundError:
        raise CorruptFileError(
            f"{path} is missing from the datastore; the repository is damaged"
        ) from None
    if actual != size:
        raise CorruptFileError(f"{path} has {actual} bytes but the registry records {size}")
    if checksum is not None and sha256_file(path) != checksum:
        raise CorruptFileError(f"{path} does not match its recorded checksum {checksum}")
