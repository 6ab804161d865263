"""``mirror pull --via PROXY`` in front of a private repository (issue 18, item 5).

``butler serve --read-access token`` with proxyd in front; two colleagues, each with their
own token, pull the same query through the proxy, given its base URL (the proxy says its
path for the source in /healthz?route=SOURCE). The second pull costs the server no file bytes (a 304
per file, counted from the server's access log); a wrong, missing or revoked token gets a
clear error and no files; resuming and verifying work through the proxy; with the server
stopped, what was pulled through the proxy can be pulled again from it, and what never was
is a clear error. A proxy with no route to the source is a clear error too.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from conftest import populate_dimensions, run_mirror
from proxies import Proxy, RecordingOrigin, running
from servers import ALICE, BOB, PRIVATE_TOKENS, ButlerServer, served

from butler import Butler
from butler.direct_butler import DirectButler
from butler.errors import ButlerError, RemoteUnavailableError
from mirror.plan import Item
from mirror.pull import PullRequest, pull
from mirror.transfer import PARTIAL_DIR, partial_path

HSC = {"instrument": "HSC"}
ARRAY_BYTES = 200 * 1024
VISITS = (100, 101)
DETECTORS = range(4)


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    with Butler.create(root) as butler:
        populate_dimensions(butler)
        butler.register_dataset_type("flux", ["visit", "detector"], "Array")
    rng = np.random.default_rng(18)
    with Butler(root, run="raw") as butler:
        for visit in VISITS:
            for detector in DETECTORS:
                data = rng.random(ARRAY_BYTES // 8)
                butler.put(data, "flux", HSC, visit=visit, detector=detector)
    return root


@pytest.fixture
def source_files(repo: Path) -> dict[str, bytes]:
    """Each dataset's file as the repository holds it, by dataset ID (read from disk)."""
    with DirectButler(repo) as butler:
        return {
            str(ref.id): butler.get_local_path(ref).read_bytes()
            for ref in butler.query_datasets("flux", "raw")
        }


@pytest.fixture
def server(repo: Path, tmp_path: Path) -> Iterator[ButlerServer]:
    with served(
        repo, tmp_path / "server", "--read-access", "token", tokens_yaml=PRIVATE_TOKENS
    ) as server:
        yield server


@pytest.fixture
def proxy(server: ButlerServer, tmp_path: Path) -> Iterator[Proxy]:
    # Another route first: the pull must pick the one that serves its source.
    upstreams = {"elsewhere": "http://127.0.0.1:9/", "repo": server.url}
    with running(Proxy(upstreams, tmp_path / "proxy")) as p:
        yield p


def token_file(directory: Path, token: str) -> Path:
    path = directory / f"token-{token[:5]}"
    path.write_text(token + "\n")
    return path


def pull_args(source: str, dest: Path, *extra: str) -> list[str]:
    return [
        "pull",
        source,
        "--dest",
        str(dest),
        "--dataset-type",
        "flux",
        "--collections",
        "raw",
        "--quiet",
        "--jobs",
        "2",
        *extra,
    ]


def pull_through(
    proxy: Proxy, server: ButlerServer, dest: Path, token: str | None, *extra: str
) -> tuple[int, str]:
    """``mirror pull SOURCE --via PROXY`` with ``token`` (in a token file); exit status and
    what it wrote to stderr."""
    tokens = ["--token-file", str(token_file(dest.parent, token))] if token else []
    done = run_mirror(*pull_args(server.url, dest, "--via", proxy.url, *tokens, *extra))
    return done.returncode, done.stderr


def mirrored(dest: Path) -> dict[str, bytes]:
    """The mirror's files by dataset ID, once it verified them all."""
    with DirectButler(dest) as mirror:
        assert mirror.verify() == []
        return {
            str(ref.id): mirror.get_local_path(ref).read_bytes()
            for ref in mirror.query_datasets("flux", "raw")
        }


def file_entries(proxy: Proxy, mark: int) -> list[dict[str, object]]:
    return [e for e in proxy.settled_access_log()[mark:] if "/files/" in str(e["target"])]


def no_files(dest: Path) -> bool:
    """Nothing of the source's files is at ``dest``: no repository, no partial download."""
    return not (dest / "butler.yaml").exists() and not any(
        p.stat().st_size for p in dest.rglob("*.part")
    )


def test_a_second_colleague_costs_the_server_no_file_bytes(
    server: ButlerServer, proxy: Proxy, source_files: dict[str, bytes], tmp_path: Path
) -> None:
    total = sum(len(data) for data in source_files.values())
    mark = server.mark()
    assert pull_through(proxy, server, tmp_path / "alice", ALICE) == (0, "")
    assert mirrored(tmp_path / "alice") == source_files
    assert server.file_bytes_sent(mark) == total  # the first pull fills the proxy's cache

    mark, proxy_mark = server.mark(), proxy.mark()
    assert pull_through(proxy, server, tmp_path / "bob", BOB) == (0, "")
    assert mirrored(tmp_path / "bob") == source_files
    # Each of bob's files cost the server one revalidation with bob's token, without a body.
    assert server.file_bytes_sent(mark) == 0
    answers = server.file_requests(mark)
    assert [(e["status"], e["bytes"]) for e in answers] == [("304", "-")] * len(source_files)
    served_by_proxy = file_entries(proxy, proxy_mark)
    assert {e["cache"] for e in served_by_proxy} == {"REVALIDATED"}
    assert sum(int(str(e["bytes_from_cache"])) for e in served_by_proxy) == total
    assert sum(int(str(e["bytes_from_origin"])) for e in served_by_proxy) == 0
    # Provenance names the source, not the proxy on the way; `mirror update --via` finds the
    # route for it again, and has nothing to fetch.
    status = json.loads(run_mirror("status", str(tmp_path / "bob"), "--json").stdout)
    assert status["sources"] == [server.url]
    bob = str(token_file(tmp_path, BOB))
    proxy_mark = proxy.mark()
    update = run_mirror(
        "update", str(tmp_path / "bob"), "--via", proxy.url, "--token-file", bob, "--json"
    )
    assert update.returncode == 0, update.stderr
    [summary] = json.loads(update.stdout)
    assert (summary["downloaded"], summary["skipped"]) == (0, len(source_files))
    asked = [str(e["target"]) for e in proxy.settled_access_log()[proxy_mark:]]
    assert any(target.startswith("/repo/api/v1/datasets") for target in asked), asked


@pytest.mark.parametrize("who", ["no token", "a wrong token", "a revoked token"])
def test_a_token_the_server_refuses_gets_a_clear_error_and_no_files(
    server: ButlerServer, proxy: Proxy, tmp_path: Path, who: str
) -> None:
    assert pull_through(proxy, server, tmp_path / "alice", ALICE)[0] == 0  # the cache is warm
    token = {"no token": None, "a wrong token": "wrong-token-0123456789abcdef"}.get(who, BOB)
    if who == "a revoked token":
        assert pull_through(proxy, server, tmp_path / "bob-before", BOB)[0] == 0
        # Bob's entry removed: the server reads the file again when it changes.
        (server.log_path.parent / "tokens.yaml").write_text(
            PRIVATE_TOKENS.split("  - name: bob")[0]
        )
    mark, proxy_mark = server.mark(), proxy.mark()
    dest = tmp_path / "refused"
    status, stderr = pull_through(proxy, server, dest, token)
    assert status == 1
    assert "Traceback" not in stderr
    said = "requires a bearer token" if token is None else "bearer token is not valid"
    assert said in stderr, stderr  # the server's 401, passed on by the proxy
    assert no_files(dest)
    assert server.file_bytes_sent(mark) == 0
    assert sum(int(str(e["bytes_from_cache"])) for e in file_entries(proxy, proxy_mark)) == 0


def test_resuming_and_verifying_work_through_the_proxy(
    repo: Path,
    server: ButlerServer,
    proxy: Proxy,
    source_files: dict[str, bytes],
    tmp_path: Path,
) -> None:
    """Bob's pull finds two partial downloads: one a true first half, resumed with a Range
    request; one whose bytes were damaged, which fails its checksum and is fetched again
    whole. Both come from the proxy's cache, and so does a repair of a file damaged later."""
    assert pull_through(proxy, server, tmp_path / "alice", ALICE)[0] == 0
    with DirectButler(repo) as source:
        items = [Item(r, f) for r, f in source.query_datasets_with_files("flux", "raw")]
    good, damaged = items[0], items[1]
    dest = tmp_path / "bob"
    (dest / PARTIAL_DIR).mkdir(parents=True)
    half = len(source_files[str(good.ref.id)]) // 2
    partial_path(dest, good).write_bytes(source_files[str(good.ref.id)][:half])
    wrong = bytes(b ^ 0xFF for b in source_files[str(damaged.ref.id)][:half])
    partial_path(dest, damaged).write_bytes(wrong)

    mark, proxy_mark = server.mark(), proxy.mark()
    request = PullRequest(server.url, dest, ["flux"], ["raw"], jobs=2, via=proxy.url, token=BOB)
    summary = pull(request, lambda _: None)
    assert summary.plan.partial_ids == {good.ref.id, damaged.ref.id}
    assert (summary.downloaded, summary.failed) == (len(source_files), [])
    assert mirrored(dest) == source_files
    assert server.file_bytes_sent(mark) == 0
    entries = file_entries(proxy, proxy_mark)

    def answers(item: Item) -> list[tuple[int, int]]:
        return [
            (int(str(e["status"])), int(str(e["bytes_from_cache"])))
            for e in entries
            if str(e["target"]).endswith(item.file.path)
        ]

    size = len(source_files[str(good.ref.id)])
    assert answers(good) == [(206, size - half)]
    assert answers(damaged) == [(206, size - half), (200, size)]
    assert not (dest / PARTIAL_DIR).exists()

    # A file of the mirror damaged later: `mirror verify --repair --via` fetches it again
    # through the proxy, from its cache.
    with DirectButler(dest) as mirror:
        target = mirror.get_local_path(good.ref)
    target.write_bytes(b"\0" * size)
    mark = server.mark()
    bob = str(token_file(tmp_path, BOB))
    repair = run_mirror("verify", str(dest), "--repair", "--via", proxy.url, "--token-file", bob)
    assert repair.returncode == 0, repair.stderr
    assert "Repaired 1 file(s); 0 could not be repaired" in repair.stdout
    assert mirrored(dest) == source_files
    assert server.file_bytes_sent(mark) == 0


def test_with_the_server_stopped_what_was_pulled_through_the_proxy_is_pulled_again(
    server: ButlerServer, proxy: Proxy, source_files: dict[str, bytes], tmp_path: Path
) -> None:
    assert pull_through(proxy, server, tmp_path / "alice", ALICE)[0] == 0
    server.stop()
    # Alice's token was authorised for every answer of her query: served stale.
    assert pull_through(proxy, server, tmp_path / "alice-offline", ALICE) == (0, "")
    assert mirrored(tmp_path / "alice-offline") == source_files
    # Bob's never was: the proxy cannot ask the server, so it gives him nothing.
    status, stderr = pull_through(proxy, server, tmp_path / "bob", BOB)
    assert status == 1
    assert "Traceback" not in stderr
    assert "cannot be reached: a proxy answered 502" in stderr, stderr
    assert f"the source {server.url}, pulled through the proxy at {proxy.url}" in stderr
    assert no_files(tmp_path / "bob")
    # A query nobody made through the proxy: a clear error too.
    status, stderr = pull_through(
        proxy, server, tmp_path / "alice-new", ALICE, "--where", "visit = 101"
    )
    assert status == 1
    assert "Traceback" not in stderr
    assert "upstream 'repo' is unreachable" in stderr, stderr
    assert f"the source {server.url}, pulled through the proxy at {proxy.url}" in stderr
    assert no_files(tmp_path / "alice-new")


def test_a_proxy_without_a_route_to_the_source_is_a_clear_error(
    server: ButlerServer, tmp_path: Path
) -> None:
    with running(Proxy({"other": "http://127.0.0.1:9/"}, tmp_path / "proxy")) as proxy:
        status, stderr = pull_through(proxy, server, tmp_path / "dest", ALICE)
    assert status == 1
    assert "Traceback" not in stderr
    assert f"no route in proxy {proxy.url} serves {server.url}" in stderr, stderr
    assert f"--upstream NAME={server.url.rstrip('/')}" in stderr
    assert "The proxy's routes: /other/" in stderr  # their names, not their URLs
    assert "127.0.0.1:9" not in stderr
    assert not (tmp_path / "dest").exists()


def test_a_via_that_is_no_proxyd_or_a_local_source_is_a_clear_error(
    server: ButlerServer, proxy: Proxy, repo: Path, tmp_path: Path
) -> None:
    # butler serve's /healthz answers no route question: it is no proxy.
    done = run_mirror(*pull_args(server.url, tmp_path / "a", "--via", server.url))
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    assert "cannot say which of its paths serves" in done.stderr, done.stderr
    done = run_mirror(*pull_args(str(repo), tmp_path / "b", "--via", proxy.url))
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    assert "--via needs the source repository's URL" in done.stderr, done.stderr
    with pytest.raises(RemoteUnavailableError, match="cannot reach the proxy"):
        pull(PullRequest(server.url, tmp_path / "c", ["flux"], via="http://127.0.0.1:9/"), print)


def test_the_token_goes_to_the_proxys_path_for_the_source_only(tmp_path: Path) -> None:
    """The question for the way (the proxy's /healthz?route=SOURCE) carries no token; the
    repository's questions go to the proxy's path for the source, with it; the source itself
    (nothing listens there) is never asked."""
    source = "http://127.0.0.1:9/butler/"
    with RecordingOrigin() as fake_proxy:
        health = {"status": "ok", "upstreams": ["repo"], "route": "/repo/butler/"}
        fake_proxy.put("/healthz", json.dumps(health).encode())
        request = PullRequest(source, tmp_path / "dest", ["flux"], via=fake_proxy.url, token=ALICE)
        with pytest.raises(ButlerError):  # the fake answers 404 to the repository's questions
            pull(request, lambda _: None)
        asked = [
            (r.target.partition("?")[0], r.header("Authorization")) for r in fake_proxy.requests
        ]
        question = fake_proxy.requests[0].target
    assert asked[0] == ("/healthz", None)
    assert question == "/healthz?route=http%3A%2F%2F127.0.0.1%3A9%2Fbutler%2F"
    assert len(asked) > 1
    assert all(target.startswith("/repo/") for target, _ in asked[1:]), asked
    assert {authorization for _, authorization in asked[1:]} == {f"Bearer {ALICE}"}
