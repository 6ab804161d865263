"""Remote write transactions: uploads staged on the server until one atomic commit.

A client begins a transaction, uploads each new file (the server hashes it while it streams
to disk), then commits a list of operations. The commit runs as one local repository
transaction, so it is all or nothing, and crash safe exactly like a local one; each upload
is checked readable as its storage class before the commit makes it visible.

Staged uploads live in ``<repo>/.staging-remote/<server>/<txn>/`` (same filesystem as the
datastore, so committing links instead of copying). Each server process holds the lock file
of its own ``<server>`` directory (``flock``) while it runs: so several servers can share a
repository, and a starting server removes only what servers that died left behind (their
lock is free), never a live server's uploads. Abandoned transactions expire. A read-only
server stages nothing and writes nothing.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import secrets
import shutil
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from butler.datastore import make_locked_dir, remove_abandoned_dirs
from butler.direct_butler import DirectButler
from butler.errors import (
    BadRequestError,
    ButlerError,
    PayloadTooLargeError,
    ReadOnlyRepositoryError,
    TransactionError,
    TransactionNotFoundError,
    UploadError,
)
from butler.formatters.base import FileIndex, validate_file
from butler.io.source import LocalFileSource
from butler.refs import DatasetRef, split_component

REMOTE_STAGING_DIR = ".staging-remote"
_ID = re.compile(r"^[A-Za-z0-9_-]{8,64}$")
_UPLOAD_ID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


@dataclass
class RemoteTransaction:
    id: str
    directory: Path
    expires: float
    owner: str

    def upload_path(self, upload_id: str) -> Path:
        if not _UPLOAD_ID.fullmatch(upload_id):
            raise UploadError(f"upload id {upload_id!r} is not a dataset UUID")
        return self.directory / upload_id


class TransactionManager:
    """Open remote transactions of one server, their uploads, and their expiry."""

    def __init__(self, repo: Path, ttl: int, *, writeable: bool = True) -> None:
        self.root = repo / REMOTE_STAGING_DIR
        self.ttl = ttl
        self._open: dict[str, RemoteTransaction] = {}
        self._lock = threading.Lock()
        self._directory: Path | None = None
        self._lock_fd = -1
        if writeable:
            # Clean only what dead servers left (a live server holds its directory's lock),
            # then take a locked directory of our own.
            remove_abandoned_dirs(self.root)
            self._directory, self._lock_fd = make_locked_dir(self.root)

    @property
    def directory(self) -> Path:
        """This server's staging directory (a read-only server has none)."""
        if self._directory is None:
            raise ReadOnlyRepositoryError(
                "this server is read-only (started with --read-only); writes are refused"
            )
        return self._directory

    def begin(self, owner: str) -> RemoteTransaction:
        txn_id = secrets.token_urlsafe(18)
        directory = self.directory / txn_id
        directory.mkdir()
        txn = RemoteTransaction(txn_id, directory, time.time() + self.ttl, owner)
        (directory / "transaction.json").write_text(
            json.dumps({"id": txn_id, "owner": owner, "expires": txn.expires})
        )
        with self._lock:
            self._open[txn_id] = txn
        return txn

    def close(self) -> None:
        """Remove this server's staged uploads and release its lock (clean shutdown)."""
        with self._lock:
            self._open.clear()
        if self._directory is not None:
            shutil.rmtree(self._directory, ignore_errors=True)
            self._directory = None
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1

    def get(self, txn_id: str, owner: str) -> RemoteTransaction:
        with self._lock:
            txn = self._open.get(txn_id) if _ID.fullmatch(txn_id) else None
        if txn is None or txn.expires < time.time():
            raise TransactionNotFoundError(
                f"transaction {txn_id!r} does not exist or has expired (after {self.ttl} s "
                "without activity); begin a new one"
            )
        if txn.owner != owner:
            raise TransactionNotFoundError(f"transaction {txn_id!r} belongs to someone else")
        txn.expires = time.time() + self.ttl
        return txn

    def finish(self, txn: RemoteTransaction) -> None:
        with self._lock:
            self._open.pop(txn.id, None)
        shutil.rmtree(txn.directory, ignore_errors=True)

    def expire(self) -> int:
        """Drop transactions past their expiry; returns how many."""
        now = time.time()
        with self._lock:
            stale = [t for t in self._open.values() if t.expires < now]
            for txn in stale:
                self._open.pop(txn.id, None)
        for txn in stale:
            shutil.rmtree(txn.directory, ignore_errors=True)
        return len(stale)

    @property
    def open_count(self) -> int:
        with self._lock:
            return len(self._open)


class UploadWriter:
    """Receives one upload's bytes into the staging directory, hashing as they arrive."""

    def __init__(self, path: Path, max_bytes: int) -> None:
        self.path = path
        self.tmp = path.with_suffix(".part")
        self.max_bytes = max_bytes
        self.size = 0
        self._hash = hashlib.sha256()
        self._file = open(self.tmp, "wb")  # noqa: SIM115 - closed in finish/abort

    def write(self, chunk: bytes) -> None:
        self.size += len(chunk)
        if self.size > self.max_bytes:
            raise PayloadTooLargeError(
                f"upload exceeds the server's limit of {self.max_bytes} bytes (--max-upload-bytes)"
            )
        self._hash.update(chunk)
        self._file.write(chunk)

    def finish(self, expected_checksum: str | None) -> str:
        self._file.flush()
        self._file.close()
        checksum = "sha256:" + self._hash.hexdigest()
        if expected_checksum and expected_checksum != checksum:
            self.tmp.unlink(missing_ok=True)
            raise UploadError(
                f"upload checksum mismatch: client said {expected_checksum}, server received "
                f"{checksum} ({self.size} bytes); the upload was damaged in transit, retry it"
            )
        self.tmp.replace(self.path)
        return checksum

    def abort(self) -> None:
        self._file.close()
        self.tmp.unlink(missing_ok=True)


@contextmanager
def _writing(butler: DirectButler, lock: threading.Lock) -> Iterator[None]:
    with lock, butler.transaction():
        yield


def apply_operations(
    butler: DirectButler,
    lock: threading.Lock,
    operations: Sequence[Mapping[str, Any]],
    txn: RemoteTransaction | None,
) -> list[dict[str, Any]]:
    """Apply a commit's operations in one local transaction; returns one result per operation."""
    results: list[dict[str, Any]] = []
    with _writing(butler, lock):
        for number, op in enumerate(operations):
            try:
                results.append(_apply(butler, op, txn))
            except KeyError as exc:
                raise TransactionError(
                    f"operation {number} ({op.get('op')!r}) lacks the field {exc}"
                ) from exc
    return results


def _apply(
    butler: DirectButler, op: Mapping[str, Any], txn: RemoteTransaction | None
) -> dict[str, Any]:
    kind = op.get("op")
    if kind == "put":
        if txn is None:
            raise TransactionError("a 'put' operation needs a transaction with its upload")
        upload = txn.upload_path(str(op["id"]))
        if not upload.is_file():
            raise UploadError(f"no upload for dataset {op['id']} in this transaction")
        ref = butler.ingest(
            upload,
            op["dataset_type"],
            dict(op["data_id"]),
            run=op["run"],
            transfer="move",
            dataset_id=_uuid(op["id"]),
            index=checked_upload(butler, op["dataset_type"], upload, str(op["id"])),
        )
        file = butler.get_file_info(ref)
        if op.get("checksum") and op["checksum"] != file.checksum:
            raise UploadError(f"dataset {op['id']}: checksum changed between upload and commit")
        return {"ref": ref.to_dict(), "file": file.to_dict()}
    if kind == "remove":
        return {"removed": butler.remove([_ref(r, n) for n, r in enumerate(op["refs"])])}
    if kind == "insert_dimension_records":
        added = butler.insert_dimension_records(
            op["element"], *op["records"], skip_existing=bool(op.get("skip_existing"))
        )
        return {"inserted": added}
    if kind == "register_dataset_type":
        dataset_type = butler.register_dataset_type(
            op["name"], op["dimensions"], op["storage_class"], op.get("formatter")
        )
        return {"dataset_type": dataset_type.to_dict()}
    if kind == "register_run":
        return {"created": butler.register_run(op["name"], op.get("doc", ""))}
    if kind == "set_collection_chain":
        butler.set_collection_chain(op["name"], op["children"], op.get("doc", ""))
        return {}
    raise TransactionError(
        f"unknown operation {kind!r}; expected put, remove, insert_dimension_records, "
        "register_dataset_type, register_run or set_collection_chain"
    )


FULL_READ_LIMIT = 64 * 2**20
"""Uploads up to this size, that decode to no more than this (a tile-compressed image or a
Parquet file may stand for far more than its size), are read back whole before a commit
makes them visible; others are checked through their offset index (a full read would hold
them in memory)."""
log = logging.getLogger("butler.server")


def checked_upload(butler: DirectButler, dataset_type: str, upload: Path, label: str) -> FileIndex:
    """(Blocking.) The offset index of an uploaded file, once its bytes have proved readable
    as its dataset type's storage class; :class:`UploadError` (400) otherwise.

    Uploaded bytes are untrusted: whatever the format's parser raises means "not a valid
    file", and the message names the dataset, never a path on this server.
    """
    resolved = butler.registry.get_dataset_type(split_component(dataset_type)[0])
    storage_class = butler.formatters.storage_class(resolved.storage_class)
    formatter = butler.formatters.formatter(resolved.formatter or storage_class.default_formatter)
    try:
        index = validate_file(formatter, upload)
        decoded = formatter.decoded_bytes(index) or 0
        if max(upload.stat().st_size, decoded) <= FULL_READ_LIMIT:
            source = LocalFileSource(upload)
            try:
                formatter.read(source, index)
            finally:
                source.close()
    except OSError as exc:
        if exc.errno is not None:
            raise  # the server's disk (full, failing), not the upload: not the client's 400
        # Parsers (astropy) say "not a FITS file" as an OSError without an errno.
        raise _invalid_upload(
            exc, butler, upload, label, resolved.storage_class, formatter.name
        ) from None
    except Exception as exc:  # noqa: BLE001 - any parser failure on untrusted bytes
        raise _invalid_upload(
            exc, butler, upload, label, resolved.storage_class, formatter.name
        ) from None
    return index


def _invalid_upload(
    exc: Exception, butler: DirectButler, upload: Path, label: str, storage: str, formatter: str
) -> UploadError:
    log.debug("upload %s refused", label, exc_info=exc)
    known = isinstance(exc, ButlerError | ValueError | OSError)
    reason = _scrub(str(exc) if known else "", butler, upload)
    detail = f"{type(exc).__name__}: {reason}" if reason else type(exc).__name__
    return UploadError(
        f"the upload of dataset {label} is not a valid {storage!r} file for formatter "
        f"{formatter!r} ({detail}); upload the dataset's file in that format"
    )


def _scrub(message: str, butler: DirectButler, upload: Path) -> str:
    """``message`` without server paths (the staged file's, the repository's)."""
    names = {
        str(upload): "the upload",
        str(upload.resolve()): "the upload",
        str(upload.parent): "staging",
        str(butler.root): "repository",
        str(butler.root.resolve()): "repository",
    }
    for path in sorted(names, key=len, reverse=True):  # longest first: files inside dirs
        message = message.replace(path, names[path])
    return message[:500]


def _ref(data: Mapping[str, Any], number: int) -> DatasetRef:
    try:
        return DatasetRef.from_dict(data)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise BadRequestError(
            f"refs[{number}] is not a dataset reference ({type(exc).__name__}: {exc}); send "
            "the 'ref' objects the server returned"
        ) from None


def _uuid(value: Any) -> Any:
    import uuid

    try:
        return uuid.UUID(str(value))
    except ValueError:
        raise UploadError(f"{value!r} is not a dataset UUID") from None
