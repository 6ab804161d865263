"""Queries through proxyd are cached and consistent (issue 18, item 3).

The read-only API answers carry the registry's change count in their ETag and say
``public, no-cache``: proxyd stores them and asks the server each time, which answers 304
without a body while nothing was committed. Dataset queries are GETs, so they are cached
too; after a write, ``query.count()`` and ``query_datasets()`` through the proxy agree at once.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import make_summary_repo
from proxies import Proxy, running
from servers import WRITE_TOKEN, ButlerServer, served

from butler import Butler

HSC = {"instrument": "HSC"}


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    return make_summary_repo(tmp_path / "repo")


@pytest.fixture
def server(repo: Path, tmp_path: Path) -> Iterator[ButlerServer]:
    with served(repo, tmp_path / "server") as server:
        yield server


@pytest.fixture
def proxy(server: ButlerServer, tmp_path: Path) -> Iterator[Proxy]:
    with running(Proxy({"repo": server.url}, tmp_path / "proxy")) as p:
        yield p


def api_entries(server: ButlerServer, mark: int) -> list[dict[str, str]]:
    return [e for e in server.access_log()[mark:] if e["target"].startswith("/api/v1/datasets")]


def test_count_and_query_agree_right_after_a_write(
    server: ButlerServer, proxy: Proxy, tmp_path: Path
) -> None:
    url = proxy.upstream_url("repo")
    with Butler(url, collections="run1", cache_dir=tmp_path / "c") as via:
        assert via.query.summary.count() == 2
        assert len(via.query_datasets("summary")) == 2
        # The same questions again: the server answers 304s, no query body goes out.
        mark = server.mark()
        assert via.query.summary.count() == 2
        assert len(via.query_datasets("summary")) == 2
        again = api_entries(server, mark)
        assert [e["method"] for e in again] == ["GET", "GET"]
        assert {e["status"] for e in again} == {"304"}

        with Butler(server.url, run="run1", token=WRITE_TOKEN) as writer:
            writer.put({"d": 2}, "summary", HSC, visit=100, detector=2)
        # No waiting: the next answers through the proxy already include the new dataset.
        assert via.query.summary.count() == 3
        assert len(via.query_datasets("summary")) == 3
    entries = [e for e in proxy.settled_access_log() if "/api/v1/datasets" in e["target"]]
    assert {e["method"] for e in entries} == {"GET"}
    assert "REVALIDATED" in {e["cache"] for e in entries}


def test_the_etag_carries_the_registry_change_count(server: ButlerServer, proxy: Proxy) -> None:
    path = "repo/api/v1/datasets?dataset_type=summary&collections=run1"
    before = proxy.get(path)
    assert before.status == 200
    assert before.header("Cache-Control") == "public, no-cache, stale-if-error=86400"
    count, _, _ = (before.header("ETag") or "").strip('"').partition("-")
    with Butler(server.url, run="run1", token=WRITE_TOKEN) as writer:
        writer.register_run("another")  # a write that changes no dataset query's answer
    after = proxy.get(path)
    assert after.status == 200
    assert after.body == before.body
    assert (after.header("ETag") or "").strip('"').partition("-")[0] == str(int(count) + 1)
