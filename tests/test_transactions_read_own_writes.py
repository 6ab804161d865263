"""Transactions read their own writes (locally and through ``butler serve``), show them to
nobody else before the commit, and leave no collection, dataset or file behind when killed."""

from __future__ import annotations

import asyncio
import gc
import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from servers import WRITE_TOKEN, ButlerServer

from butler import Butler, CorruptFileError, DatasetNotFoundError
from butler.butler import QuerySummary
from butler.direct_butler import DirectButler
from butler.errors import (
    ConflictingDefinitionError,
    DataIdError,
    DatasetTypeNotFoundError,
    InvalidQueryError,
    QuerySyntaxError,
)
from butler.image import Image
from butler.remote.async_butler import AsyncButler

REGISTRY_BACKENDS = ("sqlite", "postgresql")  # one suite, both registry engines

HSC = {"instrument": "HSC"}


def sha256(path: Path) -> str:
    return "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()


def repo_files(repo: Path) -> list[Path]:
    """Every dataset file: those in the repository's subdirectories but staging's (the
    registry and configuration files sit at the top)."""
    return sorted(
        p
        for p in repo.rglob("*")
        if p.is_file()
        and len(p.relative_to(repo).parts) > 1
        and not p.relative_to(repo).parts[0].startswith(".")
    )


def staged_files(repo: Path) -> list[Path]:
    staging = repo / ".staging"
    return sorted(p for p in staging.rglob("*") if p.is_file()) if staging.exists() else []


# -- local: read your own writes ---------------------------------------------------------


def test_a_local_transaction_reads_what_it_put_before_the_commit(repo_path: Path) -> None:
    array = np.arange(12, dtype=np.float32).reshape(3, 4)
    image = Image(np.full((4, 5), 187.0, dtype=np.float32), header={"EXPTIME": 30.0})
    before = repo_files(repo_path)
    with Butler(repo_path, run="fresh") as butler, butler.transaction():
        ref = butler.put({"v": 1}, "summary", HSC, visit=100, detector=0)
        flux = butler.put(array, "flux", HSC, visit=100, detector=0)
        calexp = butler.put(image, "calexp", HSC, visit=100, detector=0)
        # By data ID (the butler's own RUN, created by this transaction) and by ref.
        assert butler.get("summary", HSC, visit=100, detector=0) == {"v": 1}
        assert butler.get(ref) == {"v": 1}
        np.testing.assert_array_equal(butler.get(flux), array)
        np.testing.assert_array_equal(butler.get(calexp).data, image.data)
        np.testing.assert_array_equal(butler.memmap(calexp), image.data)
        assert butler.get("calexp.metadata", HSC, visit=100, detector=0)["EXPTIME"] == 30.0
        assert butler.exists(ref)
        assert [r.id for r in butler.query_datasets("summary")] == [ref.id]
        assert butler.verify([ref, flux, calexp]) == []
        # The file itself: a local path, and a lazily read file object, same bytes.
        path = butler.get_local_path(flux)
        info = butler.get_file_info(flux)
        assert sha256(path) == info.checksum
        with butler.open(flux) as f:
            assert f.read() == path.read_bytes()
        # Nobody else sees any of it: not another butler, not the final file paths.
        with DirectButler(repo_path) as other:
            assert "fresh" not in [c["name"] for c in other.query_collections()]
            assert other.registry.count_datasets() == 0
        assert repo_files(repo_path) == before
    with Butler(repo_path, collections="fresh") as after:
        assert after.get("summary", HSC, visit=100, detector=0) == {"v": 1}
        committed = after.get_local_path(flux)
        assert committed == repo_path / info.path
        assert sha256(committed) == info.checksum
    assert staged_files(repo_path) == []


def test_rolled_back_writes_are_unreadable_at_once(butler: Butler) -> None:
    with butler.transaction():
        kept = butler.put({"v": 1}, "summary", HSC, visit=100, detector=0)
        with pytest.raises(RuntimeError, match="inner"), butler.transaction():
            dropped = butler.put({"v": 2}, "summary", HSC, visit=101, detector=0)
            assert butler.get(dropped) == {"v": 2}
            raise RuntimeError("inner")
        with pytest.raises(DatasetNotFoundError):
            butler.get(dropped)
        assert butler.get(kept) == {"v": 1}
        removed = butler.put({"v": 3}, "summary", HSC, visit=102, detector=0)
        butler.remove(removed)
        with pytest.raises(DatasetNotFoundError):
            butler.get("summary", HSC, visit=102, detector=0)
    assert [r.data_id["visit"] for r in butler.query_datasets("summary")] == [100]
    with pytest.raises(RuntimeError, match="outer"), butler.transaction():
        late = butler.put({"v": 4}, "summary", HSC, visit=103, detector=0)
        assert butler.get(late) == {"v": 4}
        raise RuntimeError("outer")
    with pytest.raises(DatasetNotFoundError):
        butler.get(late)


def test_a_missing_file_is_one_clear_error_and_nothing_at_exit(
    repo_path: Path, butler: Butler, monkeypatch: pytest.MonkeyPatch
) -> None:
    unraisable: list[Any] = []
    monkeypatch.setattr(sys, "unraisablehook", unraisable.append)
    ref = butler.put({"v": 1}, "summary", HSC, visit=100, detector=0)
    (repo_path / butler.get_file_info(ref).path).unlink()
    with pytest.raises(CorruptFileError, match="missing from the datastore"):
        butler.get(ref)
    gc.collect()
    assert unraisable == []  # was: AttributeError in LocalFileSource.__del__


def test_opening_to_write_creates_the_run_only_with_the_first_write(repo_path: Path) -> None:
    with Butler(repo_path, run="later") as butler:
        assert butler.query_datasets("summary") == []
        with pytest.raises(DatasetNotFoundError):
            butler.get("summary", HSC, visit=100, detector=0)
        assert "later" not in [c["name"] for c in butler.query_collections()]
        butler.put({"v": 1}, "summary", HSC, visit=100, detector=0)
        assert "later" in [c["name"] for c in butler.query_collections()]


# -- local: killed at any point -----------------------------------------------------------

# A child process that writes a transaction of puts and one ingest, and SIGKILLs itself at
# the point named by BUTLER_TEST_KILL_AT (its hooks patch the datastore's own functions).
KILLED_WRITER = textwrap.dedent(
    """
    import json, os, shutil, signal, sys
    from pathlib import Path
    import butler.datastore as datastore
    import butler.direct_butler as direct
    from butler import Butler

    repo, source = sys.argv[1], Path(sys.argv[2])
    point = os.environ["BUTLER_TEST_KILL_AT"]

    def die():
        os.kill(os.getpid(), signal.SIGKILL)

    if point == "mid-ingest-copy":
        def half_copy(src, dst):
            with open(src, "rb") as f, open(dst, "wb") as g:
                g.write(f.read(10))
            die()
        direct.shutil.copyfile = half_copy
    if point == "mid-move":
        # Counts only the renames of files into place (staging directories are renamed too).
        real_rename, real_move = os.rename, datastore.Staging.move_into_place
        moving, moved = [False], [0]
        def rename(src, dst):
            if moving[0]:
                if moved[0] == 2:
                    die()
                moved[0] += 1
            real_rename(src, dst)
        def move(self):
            moving[0] = True
            real_move(self)
        datastore.os.rename = rename
        datastore.Staging.move_into_place = move
    if point == "journaled":
        real_replace = os.replace
        def replace(src, dst):
            real_replace(src, dst)
            if str(dst).endswith(datastore.JOURNAL_NAME):
                die()
        datastore.os.replace = replace
    if point == "moved-before-commit":
        real_move = datastore.Staging.move_into_place
        def move(self):
            real_move(self)
            die()
        datastore.Staging.move_into_place = move

    butler = Butler(repo, run="crash")
    if point == "opened":
        die()
    with butler.transaction():
        for i in range(4):
            butler.put({"i": i}, "summary", instrument="HSC", visit=100 + i, detector=0)
            if point == "staged" and i == 2:
                die()
        butler.ingest(source, "summary", instrument="HSC", visit=105, detector=0)
    print("finished without dying", file=sys.stderr)
    sys.exit(3)
    """
)

KILL_POINTS = [
    "opened",
    "staged",
    "mid-ingest-copy",
    "journaled",
    "mid-move",
    "moved-before-commit",
]


@pytest.mark.parametrize("point", KILL_POINTS)
def test_a_killed_local_transaction_leaves_nothing_behind(
    repo_path: Path, tmp_path: Path, point: str
) -> None:
    source = tmp_path / "ingest-me.json"
    source.write_text('{"ingested": true}')
    with Butler(repo_path) as butler:
        collections = butler.query_collections()
    files = repo_files(repo_path)
    result = subprocess.run(  # noqa: S603 - our interpreter, fixed argv
        [sys.executable, "-c", KILLED_WRITER, str(repo_path), str(source)],
        env={**os.environ, "BUTLER_TEST_KILL_AT": point},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == -signal.SIGKILL, result.stderr
    if point in ("staged", "mid-ingest-copy"):
        assert staged_files(repo_path) != []  # killed with files staged: a real test
    if point in ("mid-move", "moved-before-commit"):
        # Killed with files moved into place: 2 of them, or all 5 (4 puts and an ingest).
        moved = len(repo_files(repo_path)) - len(files)
        assert moved == (2 if point == "mid-move" else 5)
    with DirectButler(repo_path, writeable=True) as butler:  # the next open recovers
        assert butler.query_collections() == collections
        assert butler.registry.count_datasets() == 0
        assert repo_files(repo_path) == files
        assert staged_files(repo_path) == []
        butler.put({"ok": True}, "summary", HSC, visit=100, detector=0, run="crash")
        assert butler.get("summary", HSC, visit=100, detector=0, collections="crash") == {
            "ok": True
        }
    assert source.read_text() == '{"ingested": true}'


# -- remote: read your own writes through ``butler serve`` --------------------------------


@pytest.fixture
def server(repo_path: Path, tmp_path: Path) -> Iterator[ButlerServer]:
    srv = ButlerServer(repo_path, tmp_path).start()
    yield srv
    srv.stop()


@pytest.fixture
def expiring_server(repo_path: Path, tmp_path: Path) -> Iterator[ButlerServer]:
    """A server that drops a transaction's staged uploads after 1 s without activity."""
    srv = ButlerServer(repo_path, tmp_path, "--staging-ttl", "1").start()
    yield srv
    srv.stop()


def staged_uploads(repo: Path) -> list[Path]:
    """Files staged by the server's transactions (``.staging-remote/<server>/<txn>/``)."""
    root = repo / ".staging-remote"
    return sorted(
        p for p in root.rglob("*") if p.is_file() and p.name not in ("lock", "transaction.json")
    )


def test_a_remote_transaction_reads_what_it_put_before_the_commit(
    repo_path: Path, server: ButlerServer
) -> None:
    array = np.arange(12, dtype=np.float32).reshape(3, 4)
    image = Image(np.full((4, 5), 187.0, dtype=np.float32), header={"EXPTIME": 30.0})
    with Butler(server.url, run="txn", token=WRITE_TOKEN) as butler:
        with butler.transaction():
            ref = butler.put({"v": 1}, "summary", HSC, visit=100, detector=0)
            flux = butler.put(array, "flux", HSC, visit=100, detector=0)
            butler.put(image, "calexp", HSC, visit=100, detector=0)
            assert butler.get("summary", HSC, visit=100, detector=0) == {"v": 1}
            assert butler.get(ref) == {"v": 1}
            assert butler.exists("summary", HSC, visit=100, detector=0)
            np.testing.assert_array_equal(butler.get(flux), array)
            got = butler.get("calexp", HSC, visit=100, detector=0)
            np.testing.assert_array_equal(got.data, image.data)
            np.testing.assert_array_equal(
                butler.memmap("calexp", HSC, visit=100, detector=0), image.data
            )
            assert butler.get("calexp.metadata", HSC, visit=100, detector=0)["EXPTIME"] == 30.0
            staged_info = butler.get_file_info(flux)
            path = butler.get_local_path(flux)
            assert sha256(path) == staged_info.checksum
            with butler.open(flux) as f:
                assert f.read() == path.read_bytes()
            # Nobody else sees it: another client (not even the RUN, which the commit
            # creates), or the repository itself.
            with Butler(server.url) as other:
                assert "txn" not in [c["name"] for c in other.query_collections()]
                assert other.find_dataset("summary", HSC, visit=100, detector=0) is None
            with DirectButler(repo_path) as local:
                assert local.registry.count_datasets() == 0
            assert len(staged_uploads(repo_path)) == 3
        with Butler(server.url, collections="txn") as other:
            assert other.get("summary", HSC, visit=100, detector=0) == {"v": 1}
            assert other.get_file_info("flux", HSC, visit=100, detector=0).checksum == (
                staged_info.checksum
            )
            np.testing.assert_array_equal(other.get("flux", HSC, visit=100, detector=0), array)


async def test_an_async_transaction_reads_what_it_put(server: ButlerServer) -> None:
    array = np.arange(6, dtype=np.float64)
    async with AsyncButler(server.url, run="txn", token=WRITE_TOKEN) as butler:
        async with butler.transaction():  # "txn" is created by this commit
            ref = await butler.put(array, "flux", HSC, visit=100, detector=0)
            np.testing.assert_array_equal(await butler.get(ref), array)
            got = await butler.get("flux", HSC, visit=100, detector=0)
            np.testing.assert_array_equal(got, array)
            staged = sha256(await butler.get_local_path(ref))
            assert staged == (await butler.get_file_info(ref)).checksum
        # Committed: now the server's copy, with the same bytes.
        committed = await butler.get_file_info("flux", HSC, visit=100, detector=0)
        assert committed.checksum == staged
        np.testing.assert_array_equal(await butler.get("flux", HSC, visit=100, detector=0), array)


def test_remote_reads_in_a_transaction_keep_the_search_order(server: ButlerServer) -> None:
    with Butler(server.url, run="first", token=WRITE_TOKEN) as first:
        first.put({"run": "first"}, "summary", HSC, visit=100, detector=0)
    with (
        Butler(
            server.url, run="second", collections=["first", "second"], token=WRITE_TOKEN
        ) as butler,
        butler.transaction(),
    ):
        butler.put({"run": "second"}, "summary", HSC, visit=100, detector=0)
        butler.put({"run": "second"}, "summary", HSC, visit=101, detector=0)
        # "first" is searched first: its committed dataset wins where both have one.
        assert butler.get("summary", HSC, visit=100, detector=0) == {"run": "first"}
        assert butler.get("summary", HSC, visit=101, detector=0) == {"run": "second"}
        get = butler.get
        assert get("summary", HSC, visit=100, detector=0, collections=["second", "first"]) == {
            "run": "second"
        }
        with pytest.raises(DatasetNotFoundError):
            butler.get("summary", HSC, visit=101, detector=0, collections="first")


def test_remote_rollbacks_and_removals_are_seen_at_once(server: ButlerServer) -> None:
    with Butler(server.url, run="txn", token=WRITE_TOKEN) as butler:
        committed = butler.put({"v": 0}, "summary", HSC, visit=100, detector=0)
        with butler.transaction():
            kept = butler.put({"v": 1}, "summary", HSC, visit=101, detector=0)
            with pytest.raises(RuntimeError, match="inner"), butler.transaction():
                dropped = butler.put({"v": 2}, "summary", HSC, visit=102, detector=0)
                assert butler.get(dropped) == {"v": 2}
                raise RuntimeError("inner")
            with pytest.raises(DatasetNotFoundError):
                butler.get(dropped)
            with pytest.raises(DatasetNotFoundError):
                butler.get("summary", HSC, visit=102, detector=0)
            butler.remove(committed)
            with pytest.raises(DatasetNotFoundError):
                butler.get("summary", HSC, visit=100, detector=0)
            assert butler.get(kept) == {"v": 1}
        assert [r.data_id["visit"] for r in butler.query_datasets("summary")] == [101]


# -- remote: killed at any point -----------------------------------------------------------

# A client that SIGKILLs itself inside a remote transaction: after its uploads, or in the
# middle of one (half the body sent). BUTLER_TEST_OPEN_WITH says how it names its RUN:
# opened with run=, or opened writeable and naming it in each put.
KILLED_CLIENT = textwrap.dedent(
    """
    import os, signal, sys
    import numpy as np
    from butler import Butler
    from butler.remote.client import RepositoryClient

    url, token, point = sys.argv[1], sys.argv[2], os.environ["BUTLER_TEST_KILL_AT"]

    def die():
        os.kill(os.getpid(), signal.SIGKILL)

    if point == "mid-upload":
        real_upload = RepositoryClient.upload
        async def upload(self, path, file, checksum):
            data = file.read_bytes()
            async def body():
                yield data[: len(data) // 2]
                die()
            headers = {"X-Checksum": checksum, "Content-Type": "application/octet-stream"}
            async with self.request("PUT", "api/v1/" + path, data=body(), headers=headers):
                pass
        RepositoryClient.upload = upload

    if os.environ["BUTLER_TEST_OPEN_WITH"] == "run":
        butler, put_run = Butler(url, run="killed", token=token), None
    else:
        butler, put_run = Butler(url, writeable=True, token=token), "killed"
    with butler, butler.transaction():
        for visit in (100, 101, 102):
            butler.put(np.zeros(50_000), "flux", instrument="HSC", visit=visit, detector=0,
                       run=put_run)
            if point == "uploaded" and visit == 101:
                die()
    print("finished without dying", file=sys.stderr)
    sys.exit(3)
    """
)


def open_transactions(server: ButlerServer) -> int:
    with urllib.request.urlopen(server.url + "healthz", timeout=10) as response:  # noqa: S310
        return int(json.loads(response.read())["open_transactions"])


def wait_for(condition: Callable[[], bool], seconds: float = 20.0) -> bool:
    """Poll ``condition`` (bounded: at most ``seconds``)."""
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


@pytest.mark.parametrize("open_with", ["run", "writeable"])
@pytest.mark.parametrize("point", ["uploaded", "mid-upload"])
def test_a_killed_remote_client_leaves_nothing_behind(
    repo_path: Path, expiring_server: ButlerServer, point: str, open_with: str
) -> None:
    """Opened with ``run="killed"`` (or naming it in its puts), killed before its commit:
    no RUN "killed" on the server, no dataset, no file, no staged upload."""
    server = expiring_server
    with Butler(repo_path) as local:
        collections = local.query_collections()
    assert "killed" not in [c["name"] for c in collections]
    result = subprocess.run(  # noqa: S603 - our interpreter, fixed argv
        [sys.executable, "-c", KILLED_CLIENT, server.url, WRITE_TOKEN],
        env={**os.environ, "BUTLER_TEST_KILL_AT": point, "BUTLER_TEST_OPEN_WITH": open_with},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == -signal.SIGKILL, result.stderr
    writes = [e for e in server.access_log() if e["method"] in ("POST", "PUT")]
    began = [e for e in writes if e["target"] == "/api/v1/transactions"]
    uploaded = [e for e in writes if "/uploads/" in e["target"] and e["status"] == "200"]
    assert [e["status"] for e in began] == ["200"]
    assert len(uploaded) == (2 if point == "uploaded" else 0)  # killed where it was meant to
    assert not [e for e in writes if e["target"].endswith("/commit")]
    # The server drops the dead client's transaction (--staging-ttl 1) and its uploads;
    # nothing else was ever written.
    assert wait_for(lambda: open_transactions(server) == 0)
    assert wait_for(lambda: staged_uploads(repo_path) == [])
    with Butler(server.url) as remote:
        assert remote.query_collections() == collections
    with DirectButler(repo_path) as local:
        assert local.registry.collection_type("killed", missing_ok=True) is None
        assert local.registry.count_datasets() == 0
    assert repo_files(repo_path) == []


# Loaded by the server's interpreter (``sitecustomize`` on its PYTHONPATH): SIGKILLs the
# server inside a commit, at the point BUTLER_TEST_KILL_AT names.
SERVER_HOOK = textwrap.dedent(
    """
    import os
    import signal

    point = os.environ.get("BUTLER_TEST_KILL_AT")
    if point:
        import butler.datastore as datastore

        def die():
            os.kill(os.getpid(), signal.SIGKILL)

        if point == "server-mid-move":
            # Counts only renames of files into place (staging directories are renamed too).
            real_rename, real_move = os.rename, datastore.Staging.move_into_place
            moving, moved = [False], [0]
            def rename(src, dst):
                if moving[0]:
                    if moved[0] == 2:
                        die()
                    moved[0] += 1
                real_rename(src, dst)
            def move(self):
                moving[0] = True
                real_move(self)
            datastore.os.rename = rename
            datastore.Staging.move_into_place = move
        elif point == "server-moved":
            real_move = datastore.Staging.move_into_place
            def move(self):
                real_move(self)
                die()
            datastore.Staging.move_into_place = move
    """
)


@pytest.mark.parametrize("point", ["server-mid-move", "server-moved"])
def test_a_server_killed_during_a_commit_leaves_nothing_behind(
    repo_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, point: str
) -> None:
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    (hooks / "sitecustomize.py").write_text(SERVER_HOOK)
    with Butler(repo_path) as local:
        collections = local.query_collections()
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(hooks), *sys.path]))
    monkeypatch.setenv("BUTLER_TEST_KILL_AT", point)
    server = ButlerServer(repo_path, tmp_path).start()
    monkeypatch.delenv("BUTLER_TEST_KILL_AT")  # the restart below runs unhooked
    try:
        with Butler(server.url, writeable=True, token=WRITE_TOKEN) as butler:
            with pytest.raises(Exception), butler.transaction():  # noqa: B017, PT011
                for visit in (100, 101, 102):
                    butler.put({"v": visit}, "summary", HSC, visit=visit, detector=0, run="new")
            assert server.process is not None
            assert server.process.wait(timeout=60) == -signal.SIGKILL
            # Killed in the commit: 2 of the 3 files moved into place, or all of them.
            assert len(repo_files(repo_path)) == (2 if point == "server-mid-move" else 3)
        server.process = None
        server.start()  # the restart recovers what the dead commit left
        with Butler(server.url) as remote:
            assert remote.query_collections() == collections
            assert remote.query_datasets("summary", find_first=False) == []
    finally:
        server.stop()
    assert repo_files(repo_path) == []
    assert staged_files(repo_path) == []
    assert staged_uploads(repo_path) == []


def test_a_mirrored_butler_reads_its_transaction_s_writes(
    server: ButlerServer, tmp_path: Path
) -> None:
    Butler.create(tmp_path / "mirror").close()  # an empty mirror: every read goes remote
    with Butler(server.url, mirror=tmp_path / "mirror", run="txn", token=WRITE_TOKEN) as butler:
        with butler.transaction():
            ref = butler.put({"v": 1}, "summary", HSC, visit=100, detector=0)
            assert butler.get("summary", HSC, visit=100, detector=0) == {"v": 1}
            assert butler.get(ref) == {"v": 1}
        assert butler.get("summary", HSC, visit=100, detector=0) == {"v": 1}


# -- remote: the RUN a butler is opened with is created by its first write ----------------


def collection_names(butler: Butler) -> list[str]:
    return [c["name"] for c in butler.query_collections()]


@pytest.mark.parametrize("where", ["local", "remote"])
def test_a_run_not_yet_written_reads_as_an_empty_run(
    repo_path: Path, server: ButlerServer, where: str
) -> None:
    """Locally and remotely alike: until the first write, the butler's own RUN is searched
    as an empty RUN in its place (no CollectionNotFoundError), and reads create nothing."""
    with Butler(repo_path, run="first") as first:
        first.put({"run": "first"}, "summary", HSC, visit=100, detector=0)
    target = str(repo_path) if where == "local" else server.url
    options: dict[str, Any] = {} if where == "local" else {"token": WRITE_TOKEN}
    with Butler(target, run="later", **options) as butler:
        assert collection_names(butler) == ["first"]
        with pytest.raises(DatasetNotFoundError, match="later"):
            butler.get("summary", HSC, visit=100, detector=0)
        assert butler.find_dataset("summary", HSC, visit=100, detector=0) is None
        assert not butler.exists("summary", HSC, visit=100, detector=0)
        assert butler.query_datasets("summary") == []
        assert butler.query_summary("summary") == QuerySummary(count=0, size=0)
        assert butler.query_data_ids(["visit"], dataset_type="summary") == []
        assert butler.query_dimension_values("visit", dataset_type="summary") == []
        # Searched in its place, before or after another RUN: find-first sees "first"'s.
        both = ["later", "first"]
        assert butler.get("summary", HSC, visit=100, detector=0, collections=both) == {
            "run": "first"
        }
        assert [r.run for r in butler.query_datasets("summary", collections=both)] == ["first"]
        values = butler.query_dimension_values("visit", dataset_type="summary", collections=both)
        assert values == [100]
        # Bad requests fail as they do over any collection, not as an empty answer.
        with pytest.raises(DatasetTypeNotFoundError, match="'nope'"):
            butler.get("nope", HSC, visit=100, detector=0)
        with pytest.raises(DatasetTypeNotFoundError, match="'nope'"):
            butler.query_datasets("nope")
        with pytest.raises(QuerySyntaxError):
            butler.query_datasets("summary", where="visit > 100 AND (band = 'r'")
        with pytest.raises(InvalidQueryError, match="does not apply"):
            butler.query_summary("summary", where="tract = 1")
        with pytest.raises(DataIdError):
            butler.get("summary", HSC, visit=100)
        assert collection_names(butler) == ["first"]  # no read created it
        # The first write creates it, and reads find what it wrote.
        ref = butler.put({"run": "later"}, "summary", HSC, visit=101, detector=0)
        assert collection_names(butler) == ["first", "later"]
        assert butler.get("summary", HSC, visit=101, detector=0) == {"run": "later"}
        assert butler.exists(ref)
        assert [r.id for r in butler.query_datasets("summary")] == [ref.id]
    with DirectButler(repo_path) as local:
        assert local.registry.collection_type("later") == "RUN"


async def test_an_async_butler_reads_its_run_not_yet_written_as_empty(
    repo_path: Path, server: ButlerServer
) -> None:
    async with AsyncButler(server.url, run="later", token=WRITE_TOKEN) as butler:
        with pytest.raises(DatasetNotFoundError, match="later"):
            await butler.get("summary", HSC, visit=100, detector=0)
        assert not await butler.exists("summary", HSC, visit=100, detector=0)
        assert await butler.query_datasets("summary") == []
        assert await butler.query_summary("summary") == QuerySummary(count=0, size=0)
        assert await butler.query_data_ids(["visit"], dataset_type="summary") == []
        assert await butler.dimension_values("visit", dataset_type="summary") == []
        with DirectButler(repo_path) as local:
            assert local.registry.collection_type("later", missing_ok=True) is None
        await butler.put({"v": 1}, "summary", HSC, visit=100, detector=0)
        assert await butler.get("summary", HSC, visit=100, detector=0) == {"v": 1}
        assert len(await butler.query_datasets("summary")) == 1
    with DirectButler(repo_path) as local:
        assert local.registry.collection_type("later") == "RUN"


@pytest.mark.parametrize("name", ["chain", " padded", "."])
def test_a_run_that_cannot_be_written_is_refused_at_open_as_locally(
    repo_path: Path, server: ButlerServer, tmp_path: Path, name: str
) -> None:
    """A CHAINED collection or a bad name: the same error, class and message, when a local,
    remote, async or mirrored butler opens with it; and nothing is written."""
    with Butler(repo_path, run="first") as first:
        first.put({"v": 1}, "summary", HSC, visit=100, detector=0)
        first.set_collection_chain("chain", ["first"])
    with Butler(repo_path) as local:
        before = local.query_collections()
    with pytest.raises(ConflictingDefinitionError) as local_error:
        Butler(repo_path, run=name)
    with pytest.raises(ConflictingDefinitionError) as remote_error:
        Butler(server.url, run=name, token=WRITE_TOKEN)
    assert str(remote_error.value) == str(local_error.value)
    assert repr(name) in str(local_error.value)

    async def open_async() -> None:
        async with AsyncButler(server.url, run=name, token=WRITE_TOKEN):
            pass

    with pytest.raises(ConflictingDefinitionError) as async_error:
        asyncio.run(open_async())
    assert str(async_error.value) == str(local_error.value)
    Butler.create(tmp_path / "mirror").close()
    with (
        pytest.raises(ConflictingDefinitionError) as mirrored_error,
        Butler(server.url, mirror=tmp_path / "mirror", run=name, token=WRITE_TOKEN) as butler,
    ):
        butler.get("summary", HSC, visit=100, detector=0, collections="first")
    assert str(mirrored_error.value) == str(local_error.value)
    with Butler(repo_path) as local:
        assert local.query_collections() == before
