"""A private repository (``--read-access token``) shared through proxyd (issue 18, item 1).

Two colleagues each with their own token: the second one's read of what the first read costs
the server no file bytes (a 304 to a conditional request carrying the second token); no
token, a wrong one, or a token removed from the tokens file gets the server's 401 and none
of the bytes, for GET, ranges and HEAD, the moment the file no longer lists it.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from conftest import populate_dimensions
from proxies import Proxy, running
from servers import ALICE, BOB, PRIVATE_TOKENS, ButlerServer, bearer, served

from butler import Butler, Image

HSC = {"instrument": "HSC"}


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    rng = np.random.default_rng(3)
    with Butler.create(root) as butler:
        populate_dimensions(butler)
        butler.register_dataset_type("calexp", ["visit", "detector"], "Image")
    with Butler(root, run="run1") as butler:
        image = rng.normal(size=(300, 300)).astype(np.float32)
        butler.put(Image(image), "calexp", HSC, visit=100, detector=0)
    return root


@pytest.fixture
def server(repo: Path, tmp_path: Path) -> Iterator[ButlerServer]:
    with served(
        repo, tmp_path / "server", "--read-access", "token", tokens_yaml=PRIVATE_TOKENS
    ) as server:
        yield server


@pytest.fixture
def proxy(server: ButlerServer, tmp_path: Path) -> Iterator[Proxy]:
    with running(Proxy({"repo": server.url}, tmp_path / "proxy")) as p:
        yield p


def file_path(server: ButlerServer) -> str:
    with Butler(server.url, collections="run1", token=ALICE) as butler:
        [ref] = butler.query_datasets("calexp")
        return butler.get_file_info(ref).path


def test_colleagues_share_the_cache_and_strangers_get_nothing(
    server: ButlerServer, proxy: Proxy, tmp_path: Path
) -> None:
    path = "repo/files/" + file_path(server)
    mark = server.mark()
    first = proxy.get(path, bearer(ALICE))
    assert first.status == 200
    size = len(first.body)
    assert size > 300 * 300 * 4
    # The server says how a shared cache may keep it: stored, revalidated with each client.
    assert first.header("Cache-Control") == "public, no-cache, stale-if-error=86400"
    assert server.file_bytes_sent(mark) == size

    mark = server.mark()
    second = proxy.get(path, bearer(BOB))
    assert (second.status, second.body) == (200, first.body)
    ranged = proxy.get(path, {**bearer(BOB), "Range": "bytes=1000-1999"})
    assert (ranged.status, ranged.body) == (206, first.body[1000:2000])
    head = proxy.get(path, bearer(BOB), method="HEAD")
    assert (head.status, head.body, head.header("Content-Length")) == (200, b"", str(size))
    # Bob's reads cost the server revalidations without a body, never the file's bytes.
    assert server.file_bytes_sent(mark) == 0
    checks = server.file_requests(mark)
    assert checks
    assert {e["status"] for e in checks} == {"304"}

    mark = server.mark()
    strangers = [{}, bearer("wrong-token-0123456789abcdef")]
    for headers in strangers:
        for extra, method in (({}, "GET"), ({"Range": "bytes=0-99"}, "GET"), ({}, "HEAD")):
            denied = proxy.get(path, {**headers, **extra}, method=method)
            assert denied.status == 401, (headers, extra, method)
            assert first.body[:64] not in denied.body
            assert len(denied.body) < 1000

    # Bob's entry is removed from the tokens file: the server reloads it, and the very
    # next read through the proxy (whose cached file says no-cache) is refused.
    tokens_file = server.log_path.parent / "tokens.yaml"
    tokens_file.write_text(PRIVATE_TOKENS.split("  - name: bob")[0])
    for extra, method in (({}, "GET"), ({"Range": "bytes=0-99"}, "GET"), ({}, "HEAD")):
        revoked = proxy.get(path, {**bearer(BOB), **extra}, method=method)
        assert revoked.status == 401, (extra, method)
        assert first.body[:64] not in revoked.body
    again = proxy.get(path, bearer(ALICE))
    assert (again.status, again.body) == (200, first.body)
    # The server sent its short 401 answers and 304s, never a byte of the file.
    answers = server.file_requests(mark)
    assert {e["status"] for e in answers} == {"401", "304"}
    assert sum(int(e["bytes"]) for e in answers if e["status"] != "401" and e["bytes"] != "-") == 0
    assert all(int(e["bytes"]) < 1000 for e in answers if e["status"] == "401")
    log = server.log_text() + proxy.log_text()
    assert ALICE not in log
    assert BOB not in log


def test_without_stale_if_error_nothing_private_is_served_while_the_server_is_down(
    repo: Path, tmp_path: Path
) -> None:
    """``--stale-if-error 0``, for deployments behind caches that would serve stale answers
    without checking tokens: proxyd then serves no private byte while the server is down."""
    workdir = tmp_path / "server0"
    workdir.mkdir()
    server = ButlerServer(repo, workdir, "--read-access", "token", "--stale-if-error", "0")
    (workdir / "tokens.yaml").write_text(PRIVATE_TOKENS)
    server.start()
    try:
        with running(Proxy({"repo": server.url}, tmp_path / "proxy0")) as proxy:
            path = "repo/files/" + file_path(server)
            first = proxy.get(path, bearer(ALICE))
            assert first.status == 200
            assert first.header("Cache-Control") == "public, no-cache"
            server.stop()
            down = proxy.get(path, bearer(ALICE))
            assert down.status == 502
            assert first.body[:64] not in down.body
    finally:
        server.stop()
