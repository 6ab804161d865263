"""proxyd in front of ``butler serve`` (issue 4, items 2, 3 and 9 with the real upstream).

A remote butler through the proxy gets the same objects as one talking to the server
directly, and a second pass costs the server no file bytes; a remote transaction (POST/PUT)
passes through uncached; ``proxyd warm`` from a butler query fills the cache with exactly the
files of the selected datasets.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from astropy.table import Table
from conftest import populate_dimensions
from proxies import Proxy, proxyd_cli, running, wait_until
from servers import WRITE_TOKEN, ButlerServer, served

from butler import Box, Butler, Image
from butler.errors import AuthenticationError, AuthorizationError

HSC = {"instrument": "HSC"}


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    rng = np.random.default_rng(7)
    with Butler.create(root) as butler:
        populate_dimensions(butler)
        butler.register_dataset_type("summary", ["visit", "detector"], "Dict")
        butler.register_dataset_type("calexp", ["visit", "detector"], "Image")
        butler.register_dataset_type("src", ["visit", "detector"], "Table")
    with Butler(root, run="run1") as butler:
        for visit in (100, 101):
            for detector in (0, 1):
                ids = {"visit": visit, "detector": detector}
                butler.put({"visit": visit, "detector": detector}, "summary", HSC, **ids)
                image = rng.normal(size=(512, 512)).astype(np.float32)
                butler.put(Image(image), "calexp", HSC, **ids)
                n = 5000
                table = Table({"a": rng.normal(size=n), "b": np.arange(n)})
                butler.put(table, "src", HSC, **ids)
    return root


@pytest.fixture
def server(repo: Path, tmp_path: Path) -> Iterator[ButlerServer]:
    with served(repo, tmp_path / "server") as server:
        yield server


@pytest.fixture
def proxy(server: ButlerServer, tmp_path: Path) -> Iterator[Proxy]:
    with running(Proxy({"repo": server.url}, tmp_path / "proxy")) as p:
        yield p


def read_everything(butler: Butler) -> list[object]:
    out: list[object] = []
    for visit in (100, 101):
        for detector in (0, 1):
            ids = {"visit": visit, "detector": detector}
            out.append(butler.get("summary", HSC, **ids))
            out.append(np.asarray(butler.get("calexp", HSC, **ids).data))
            out.append(butler.get("src", HSC, **ids))
            cut = butler.get("calexp.image", HSC, **ids, parameters={"bbox": Box(100, 200, 50, 40)})
            out.append(np.asarray(cut))
            out.append(butler.get("src", HSC, **ids, parameters={"columns": ["b"]}))
    return out


def assert_same(a: list[object], b: list[object]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        if isinstance(x, np.ndarray):
            np.testing.assert_array_equal(x, y)
        elif isinstance(x, Table):
            assert isinstance(y, Table)
            assert x.colnames == y.colnames
            for name in x.colnames:
                np.testing.assert_array_equal(x[name], y[name])
        else:
            assert x == y


def test_remote_butler_through_the_proxy(
    server: ButlerServer, proxy: Proxy, tmp_path: Path
) -> None:
    with Butler(server.url, collections="run1", cache_dir=tmp_path / "c1") as direct:
        expected = read_everything(direct)
    url = proxy.upstream_url("repo")
    with Butler(url, collections="run1", cache_dir=tmp_path / "c2") as via:
        assert via.url == url
        cold = read_everything(via)
    assert_same(cold, expected)
    mark = server.mark()
    with Butler(url, collections="run1", cache_dir=tmp_path / "c3") as via:
        warm = read_everything(via)
    assert_same(warm, expected)
    # The second pass came from the proxy's cache: dataset files are immutable and fresh
    # for a year, so the server sent no file bytes at all.
    assert server.file_bytes_sent(mark) == 0
    assert server.file_requests(mark) == []
    files = [e for e in proxy.settled_access_log() if e["target"].startswith("/repo/files/")]
    assert files
    assert {e["cache"] for e in files[-10:]} <= {"HIT"}


def test_remote_transaction_through_the_proxy_is_not_cached(
    server: ButlerServer, proxy: Proxy, tmp_path: Path
) -> None:
    url = proxy.upstream_url("repo")
    mark = proxy.mark()
    with Butler(url, run="txn", token=WRITE_TOKEN, cache_dir=tmp_path / "c") as writer:
        with writer.transaction():
            writer.put({"new": 1}, "summary", HSC, visit=105, detector=2)
            writer.put(Image(np.ones((64, 64), np.float32)), "calexp", HSC, visit=105, detector=2)
        assert writer.get("summary", HSC, visit=105, detector=2, collections="txn") == {"new": 1}
    logged = proxy.entries_since(mark, 1)
    unsafe = [e for e in logged if e["method"] in ("POST", "PUT", "DELETE", "PATCH")]
    assert unsafe, [e["method"] for e in logged]
    assert {e["cache"] for e in unsafe} == {"PASS"}
    assert all(e["bytes_from_cache"] == 0 for e in unsafe)
    assert {e["status"] for e in unsafe} <= {200, 201, 204}
    # The server saw every one of them.
    methods = [e["method"] for e in server.access_log()]
    assert methods.count("PUT") + methods.count("POST") >= len(unsafe)
    with Butler(server.url, collections="txn", cache_dir=tmp_path / "d") as direct:
        assert direct.get("summary", HSC, visit=105, detector=2) == {"new": 1}
        np.testing.assert_array_equal(
            np.asarray(direct.get("calexp", HSC, visit=105, detector=2).data), 1.0
        )
    # Writing without a token is refused by the server, through the proxy, uncached.
    with (
        Butler(url, cache_dir=tmp_path / "e", writeable=True) as anonymous,
        pytest.raises((AuthenticationError, AuthorizationError)),
    ):
        anonymous.register_run("nope")
    [refused] = wait_until(
        lambda: [e for e in proxy.access_log()[mark:] if e["status"] == 401], what="the 401"
    )
    assert (refused["method"], refused["cache"]) == ("POST", "PASS")


def test_warm_from_a_butler_query(server: ButlerServer, proxy: Proxy, tmp_path: Path) -> None:
    warmed = proxyd_cli(
        "warm",
        "--proxy",
        proxy.url,
        "--upstream",
        "repo",
        "--dataset-type",
        "calexp",
        "--collections",
        "run1",
        "--where",
        "visit = 100",
    )
    assert warmed.returncode == 0, warmed.stderr
    assert warmed.stdout.startswith("Warmed 2 of 2 URL(s)")
    warmed_files = {
        e["target"] for e in proxy.settled_access_log() if e["target"].startswith("/repo/files/")
    }
    assert len(warmed_files) == 2
    assert all("calexp" in f for f in warmed_files)
    # Reading those datasets through the proxy now costs the server no file bytes; the
    # others (visit 101) still come from the server.
    url = proxy.upstream_url("repo")
    mark = server.mark()
    with Butler(url, collections="run1", cache_dir=tmp_path / "c") as via:
        for detector in (0, 1):
            via.get("calexp", HSC, visit=100, detector=detector)
        assert server.file_bytes_sent(mark) == 0
        via.get("calexp", HSC, visit=101, detector=0)
        assert server.file_bytes_sent(mark) > 0
