"""``mirror``: plan, download, resume after SIGKILL, incremental updates, maintenance,
offline use and sharing — against a real ``butler serve`` (and proxyd for ``--via``)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from conftest import populate_dimensions
from conftest import run_mirror as run_mirror_unchecked
from servers import ButlerServer

from butler import Butler, DatasetNotFoundError
from butler.direct_butler import DirectButler
from butler.errors import RepositoryConfigError
from butler.refs import DatasetRef
from mirror.plan import Item, make_plan
from mirror.pull import NotEnoughSpaceError, PullRequest, pull

HSC = {"instrument": "HSC"}
ARRAY_BYTES = 256 * 1024


def add_arrays(repo: Path, visits: range, run: str = "raw") -> None:
    rng = np.random.default_rng(visits.start)
    with Butler(repo, run=run) as butler, butler.transaction():
        for visit in visits:
            for detector in range(4):
                butler.put(
                    rng.random(ARRAY_BYTES // 8), "flux", HSC, visit=visit, detector=detector
                )


@pytest.fixture
def source_repo(tmp_path: Path) -> Path:
    root = tmp_path / "source"
    with Butler.create(root) as butler:
        populate_dimensions(butler)
        butler.register_dataset_type("flux", ["visit", "detector"], "Array")
        butler.register_dataset_type("summary", ["visit", "detector"], "Dict")
    add_arrays(root, range(100, 105))
    return root


@pytest.fixture
def server(source_repo: Path, tmp_path: Path) -> Iterator[ButlerServer]:
    srv = ButlerServer(source_repo, tmp_path).start()
    yield srv
    srv.stop()


def run_mirror(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = run_mirror_unchecked(*args)
    if check and result.returncode != 0:
        raise AssertionError(f"mirror {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
    return result


def pull_args(url: str, dest: Path, *extra: str) -> list[str]:
    return [
        "pull",
        url,
        "--dest",
        str(dest),
        "--dataset-type",
        "flux",
        "--collections",
        "raw",
        *extra,
    ]


def test_pull_plans_downloads_verifies_and_works_offline(
    server: ButlerServer, source_repo: Path, tmp_path: Path
) -> None:
    dest = tmp_path / "laptop"
    dry = run_mirror(*pull_args(server.url, dest, "--dry-run", "--json"))
    plan = json.loads(dry.stdout)
    assert plan["datasets"] == 20
    assert plan["to_download"] == 20
    assert plan["present"] == 0
    assert plan["download_bytes"] > 20 * ARRAY_BYTES
    assert plan["free_bytes"] > 0
    assert not dest.exists() or not (dest / "butler.yaml").exists()  # a dry run writes nothing

    mark = server.mark()
    out = run_mirror(*pull_args(server.url, dest, "--where", "visit IN (100..102)", "--jobs", "4"))
    assert "12 datasets" in out.stdout
    assert "12 to download" in out.stdout
    assert "Downloaded 12 datasets" in out.stdout
    # The 12 small files came in one bundle: their bytes and a header line each.
    requests = server.file_requests(mark)
    assert [r["target"] for r in requests] == ["/api/v1/files/bundle"]
    with DirectButler(source_repo) as src:
        wanted = sum(
            f.size for _, f in src.query_datasets_with_files("flux", "raw", "visit IN (100..102)")
        )
    assert wanted < server.file_bytes_sent(mark) < wanted + 12 * 200
    server.stop()  # offline from here on
    with Butler(dest, collections="raw") as offline, Butler(source_repo, collections="raw") as src:
        refs = offline.query_datasets("flux")
        assert len(refs) == 12
        for ref in refs:
            np.testing.assert_array_equal(offline.get(ref), src.get(ref))  # same UUIDs
            assert offline.get_file_info(ref).checksum == src.get_file_info(ref).checksum
        assert offline.query_dimension_records("visit", visit=101)[0]["exposure_time"] == 31.0
        assert offline.verify() == []


def test_not_enough_space_is_refused_before_anything_moves(
    server: ButlerServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("mirror.pull.free_bytes", lambda _: 1024)
    dest = tmp_path / "full-disk"
    with pytest.raises(NotEnoughSpaceError, match="not enough space.*1 KiB is free"):
        pull(PullRequest(server.url, dest, ["flux"], ["raw"]), echo=lambda _: None)
    assert not (dest / "registry.sqlite3").exists()


def test_a_directory_of_other_files_is_refused_before_anything_is_written(
    server: ButlerServer, tmp_path: Path
) -> None:
    dest = tmp_path / "papers"
    dest.mkdir()
    (dest / "draft.tex").write_text("mine")
    with pytest.raises(RepositoryConfigError, match="not empty; choose a new or empty"):
        pull(PullRequest(server.url, dest, ["flux"], ["raw"]), echo=lambda _: None)
    assert sorted(p.name for p in dest.iterdir()) == ["draft.tex"]  # no partial downloads


def test_plan_counts_partial_downloads() -> None:
    import uuid

    from butler.refs import DataCoordinate, DatasetRef, DatasetType, FileInfo

    dataset_type = DatasetType("flux", ("instrument",), "Array")

    def item(size: int) -> Item:
        i = uuid.uuid4()
        ref = DatasetRef(
            i, dataset_type, DataCoordinate({"instrument": "HSC"}, ("instrument",)), "raw"
        )
        return Item(ref, FileInfo(i, "p", size, "sha256:0", "npy", "Array", {}))

    a, b, c = item(100), item(200), item(300)
    plan = make_plan([a, b, c, a], {a.ref.id}, {b.ref.id: 50}, free_bytes=10**12)
    assert len(plan.items) == 3
    assert (len(plan.present), len(plan.to_fetch)) == (1, 2)
    assert plan.fetch_bytes == 200 + 300 - 50
    assert plan.partial_ids == {b.ref.id}  # the fetcher looks for b's partial file only
    assert plan.fits
    assert not make_plan([c], set(), {}, free_bytes=10).fits


KILLER = textwrap.dedent(
    """
    import os, signal, sys, threading
    import mirror.partfile as partfile
    from butler.direct_butler import DirectButler
    from butler.registry import Registry
    from mirror.cli import main

    how = getattr(signal, os.environ["KILL_SIGNAL"])
    # Ctrl-C as at a terminal: a job started in the background (`cmd &`) inherits SIGINT
    # ignored, and Python then leaves it so.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    if os.environ["KILL_WHEN"] == "creating":
        # The new mirror's registry is made, its butler.yaml not yet written.
        real_create = Registry.create.__func__

        def create(cls, *args):
            real_create(cls, *args)
            os.kill(os.getpid(), how)

        Registry.create = classmethod(create)
    else:
        # Mid-transfer, once a commit has recorded files: counted where the bytes reach the
        # disk, in the download threads, whatever the grouping of files and of progress.
        # Bundles of 1 MiB (4 files), so that some settle, and are committed, before others.
        import mirror.http
        mirror.http.BUNDLE_BYTES = 1 << 20
        limit = int(os.environ["KILL_AFTER_BYTES"])
        real_write = partfile.PartFile.write
        real_ingest = DirectButler.ingest_many
        lock = threading.Lock()
        committed = threading.Event()
        seen = [0]

        def write(self, data):
            real_write(self, data)
            with lock:
                seen[0] += len(data)
                crossed = seen[0] >= limit and seen[0] - len(data) < limit
            if crossed:
                committed.wait(30)
                os.kill(os.getpid(), how)

        def ingest_many(self, *args, **kwargs):
            result = real_ingest(self, *args, **kwargs)
            committed.set()
            return result

        partfile.PartFile.write = write
        DirectButler.ingest_many = ingest_many
    sys.argv = ["mirror", *sys.argv[1:]]
    main()
    """
)


@pytest.mark.parametrize(
    ("how", "when"),
    [("SIGKILL", "mid-transfer"), ("SIGINT", "mid-transfer"), ("SIGKILL", "creating")],
)
def test_interrupted_mid_pull_then_rerun_fetches_only_what_is_missing(
    server: ButlerServer, source_repo: Path, tmp_path: Path, how: str, when: str
) -> None:
    dest = tmp_path / "interrupted"
    total = sum(
        f.size for _, f in DirectButler(source_repo).query_datasets_with_files("flux", "raw")
    )
    killed = subprocess.run(
        [sys.executable, "-c", KILLER, *pull_args(server.url, dest, "--jobs", "2", "--quiet")],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={
            **os.environ,
            "KILL_AFTER_BYTES": str(total // 2),
            "KILL_SIGNAL": how,
            "KILL_WHEN": when,
        },
    )
    if how == "SIGKILL":
        assert killed.returncode == -signal.SIGKILL, killed.stderr
    else:  # Ctrl-C: a clear word, not a traceback, and the usual status for it
        assert killed.returncode == 130, killed.stderr
        assert "interrupted" in killed.stderr
        assert "Traceback" not in killed.stderr
    committed: list[DatasetRef] = []
    if when == "creating":
        # The new mirror is laid out beside its first downloads and butler.yaml comes last:
        # killed before it, the directory is no repository yet, so it claims nothing.
        assert not (dest / "butler.yaml").exists()
        assert (dest / ".butler-creating").exists()
    else:
        with DirectButler(dest) as partial_mirror:
            committed = partial_mirror.query_datasets("flux", "raw")
            assert partial_mirror.verify() == []  # never claims a file it lacks or holds corrupt
        assert 0 < len(committed) < 20
    with DirectButler(source_repo) as src:
        sizes = {r.id: f.size for r, f in src.query_datasets_with_files("flux", "raw")}
    committed_bytes = sum(sizes[r.id] for r in committed)
    partial_dir = dest / ".mirror-partial"
    in_flight = (
        sum(p.stat().st_size for p in partial_dir.glob("*.part")) if partial_dir.exists() else 0
    )
    mark = server.mark()
    run_mirror(*pull_args(server.url, dest, "--jobs", "2", "--quiet"))
    sent = server.file_bytes_sent(mark)
    remaining = total - committed_bytes
    assert sent <= remaining - in_flight + 2 * 64 * 1024, (sent, remaining, in_flight)
    with DirectButler(dest) as done:
        assert len(done.query_datasets("flux", "raw")) == 20
        assert done.verify() == []
    assert not (dest / ".butler-creating").exists()


def test_incremental_update_fetches_only_new_datasets(
    server: ButlerServer, source_repo: Path, tmp_path: Path
) -> None:
    dest = tmp_path / "incremental"
    run_mirror(*pull_args(server.url, dest, "--quiet"))
    mark = server.mark()
    again = run_mirror(*pull_args(server.url, dest, "--json"))
    summary = json.loads(again.stdout)
    assert summary["downloaded"] == 0
    assert summary["skipped"] == 20
    assert server.file_requests(mark) == []  # only query requests
    add_arrays(source_repo, range(105, 107))
    mark = server.mark()
    update = run_mirror("update", str(dest), "--json")
    results = json.loads(update.stdout)
    assert results[0]["downloaded"] == 8
    assert 8 * ARRAY_BYTES < server.file_bytes_sent(mark) < 8 * (ARRAY_BYTES + 1024)
    status = json.loads(run_mirror("status", str(dest), "--json").stdout)
    assert status["datasets"] == 28
    assert status["sources"] == [server.url]
    assert status["queries"][0]["query"] == "flux in raw"
    assert status["last_pull"]["status"] == "complete"


def test_verify_repair_and_prune(server: ButlerServer, tmp_path: Path) -> None:
    dest = tmp_path / "maintained"
    run_mirror(*pull_args(server.url, dest, "--quiet"))
    with DirectButler(dest, collections="raw") as mirror:
        victim = mirror.query_datasets("flux", visit=100, detector=0)[0]
        path = mirror.get_local_path(victim)
        original = path.read_bytes()
    path.write_bytes(original[:-10] + b"0123456789")
    bad = run_mirror("verify", str(dest), check=False)
    assert bad.returncode == 1
    assert "visit" in bad.stderr
    assert "checksum" in bad.stderr
    fixed = run_mirror("verify", str(dest), "--repair")
    assert "Repaired 1 file" in fixed.stdout
    assert path.read_bytes() == original
    assert run_mirror("verify", str(dest)).stdout.strip() == "All files match their checksums."
    listing = run_mirror("ls", str(dest)).stdout.splitlines()
    assert len(listing) == 20
    pruned = run_mirror("prune", str(dest), "--where", "visit = 104", "--yes")
    assert "Removed 4 dataset(s)" in pruned.stdout
    with DirectButler(dest) as mirror:
        assert len(mirror.query_datasets("flux", "raw")) == 16
        assert mirror.verify() == []
    assert not list((dest / "raw" / "flux").glob("**/*_104_*"))


def test_mirror_first_then_remote_and_a_clear_error_offline(
    server: ButlerServer, source_repo: Path, tmp_path: Path
) -> None:
    dest = tmp_path / "partial-mirror"
    run_mirror(*pull_args(server.url, dest, "--where", "visit = 100", "--quiet"))
    with Butler(server.url, mirror=dest, collections="raw") as both:
        mark = server.mark()
        both.get("flux", HSC, visit=100, detector=1)
        assert server.file_requests(mark) == []  # read from the mirror
        both.get("flux", HSC, visit=101, detector=1)
        assert len(server.file_requests(mark)) == 1  # the rest from the remote
    url = server.url
    server.stop()
    with Butler(url, mirror=dest, collections="raw") as offline:
        assert offline.get("flux", HSC, visit=100, detector=2).shape == (ARRAY_BYTES // 8,)
        with pytest.raises(DatasetNotFoundError) as info:
            offline.get("flux", HSC, visit=102, detector=1)
    message = str(info.value)
    assert "'flux'" in message
    assert "visit=102" in message
    assert str(dest) in message
    assert url in message


def test_mirror_serve_shares_read_only(server: ButlerServer, tmp_path: Path) -> None:
    from butler.errors import ReadOnlyRepositoryError
    from butler.server.process import ChildServer

    dest = tmp_path / "shared"
    run_mirror(*pull_args(server.url, dest, "--quiet"))

    class MirrorServe(ChildServer):
        def command(self) -> list[str]:
            return [
                sys.executable,
                "-m",
                "mirror.cli",
                "serve",
                str(dest),
                "--port",
                str(self.port),
            ]

    with MirrorServe(tmp_path / "mirror-serve.log") as lan:
        with Butler(lan.url, collections="raw") as colleague:
            assert len(colleague.query_datasets("flux")) == 20
            ref = colleague.query_datasets("flux", visit=103, detector=3)[0]
            assert colleague.get(ref).shape == (ARRAY_BYTES // 8,)
        with pytest.raises(ReadOnlyRepositoryError, match="read-only"):
            Butler(lan.url, run="x")  # opening with a RUN registers it: a write


@pytest.mark.parametrize("through", ["via", "via-route", "source"])
def test_pull_via_proxyd_leaves_the_proxy_warm(
    server: ButlerServer, tmp_path: Path, through: str
) -> None:
    """With ``--via PROXY`` (the proxy's base URL, or its route for the source as --via
    took before), or with the proxy as the source (known by its X-Cache marks): one GET per
    file, no bundles, so the proxy keeps every file."""
    from proxyd.process import ProxydProcess

    with ProxydProcess(
        {"other": "http://127.0.0.1:9/", "repo": server.url},
        tmp_path / "proxy-cache",
        tmp_path / "proxyd.log",
    ) as proxy:
        proxied = proxy.upstream_url("repo")

        def args(dest: Path) -> list[str]:
            if through == "via":
                return pull_args(server.url, dest, "--via", proxy.url, "--quiet")
            if through == "via-route":
                return pull_args(server.url, dest, "--via", proxied, "--quiet")
            return pull_args(proxied, dest, "--quiet")

        first = tmp_path / "first"
        run_mirror(*args(first))
        mark = server.mark()
        second = tmp_path / "second"
        run_mirror(*args(second))
        assert server.file_bytes_sent(mark) == 0  # every file came from the proxy's cache
        with DirectButler(second) as mirror:
            assert len(mirror.query_datasets("flux", "raw")) == 20
            assert mirror.verify() == []
        status = json.loads(run_mirror("status", str(second), "--json").stdout)
        # Provenance names the source given, not the proxy used on the way.
        assert status["sources"] == [proxied if through == "source" else server.url]


def test_files_that_cannot_be_made_durable_are_never_recorded(
    server: ButlerServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import butler.datastore
    from mirror.transfer import PARTIAL_DIR

    dest = tmp_path / "laptop"
    real_fsync_file = butler.datastore.fsync_file
    failures: list[Path] = []

    def failing_once(path: Path) -> None:  # the commit syncs each file of a small batch
        if not failures:
            failures.append(path)
            raise OSError(5, "Input/output error")
        real_fsync_file(path)

    monkeypatch.setattr(butler.datastore, "fsync_file", failing_once)
    request = PullRequest(server.url, dest, ["flux"], ["raw"], "visit IN (100, 101)", jobs=2)
    summary = pull(request, lambda _: None)
    # The batch whose sync failed is not recorded; the others are.
    assert failures
    assert 1 <= len(summary.failed) <= 8
    assert summary.downloaded + len(summary.failed) == 8
    assert all("could not write it to disk" in reason for _, reason in summary.failed)
    with DirectButler(dest) as local:
        assert len(local.query_datasets("flux", "raw")) == summary.downloaded
    kept = list((dest / PARTIAL_DIR).glob("*.part"))
    assert len(kept) == len(summary.failed)  # kept, to be verified and resumed

    monkeypatch.undo()
    mark = server.mark()
    again = pull(request, lambda _: None)
    assert (again.downloaded, again.skipped, again.failed) == (
        len(summary.failed),
        summary.downloaded,
        [],
    )
    assert len(server.file_requests(mark)) == 0  # the partial files were whole: no new bytes
    with DirectButler(dest) as local:
        assert len(local.query_datasets("flux", "raw")) == 8
        assert local.verify() == []
