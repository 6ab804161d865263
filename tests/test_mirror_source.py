"""A pull's questions to a server over http.client (mirror.source.HttpSource): the same
answers as the repository itself gives, pages followed, redirects followed, a stale
kept-alive connection replaced, failures said as the remote butler says them, and bundles
asked for only where offered with no cache in between."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from aiohttp import web
from servers import READ_TOKEN, ButlerServer, served_app

from butler import Butler
from butler.direct_butler import DirectButler
from butler.errors import (
    AuthenticationError,
    DatasetTypeNotFoundError,
    InvalidQueryError,
    RemoteUnavailableError,
)
from butler.universe import default_universe_path
from mirror.source import HttpSource

HSC = {"instrument": "HSC"}


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("source") / "repo"
    with Butler.create(root) as butler:
        butler.insert_dimension_records("instrument", {"name": "HSC"})
        butler.insert_dimension_records(
            "detector", *({"instrument": "HSC", "id": d} for d in range(3))
        )
        butler.insert_dimension_records(
            "visit", *({"instrument": "HSC", "id": v} for v in range(100, 104))
        )
        butler.register_dataset_type("flux", ["visit", "detector"], "Array")
    with Butler(root, run="raw") as butler:
        for visit in range(100, 104):
            for detector in range(3):
                butler.put(np.full(4, visit), "flux", HSC, visit=visit, detector=detector)
    with Butler(root, writeable=True) as butler:
        butler.register_run("extra")
        butler.set_collection_chain("all", ["raw", "extra"])
    return root


@pytest.fixture(scope="module")
def server(repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ButlerServer]:
    srv = ButlerServer(repo, tmp_path_factory.mktemp("server")).start()
    yield srv
    srv.stop()


def test_answers_as_the_repository_does(repo: Path, server: ButlerServer) -> None:
    source = HttpSource(server.url)
    with DirectButler(repo) as local:
        assert source.universe.config == local.universe.config
        expected = local.query_datasets_with_files("flux", ["all"], "visit >= 102", {})
        got = source.query_datasets_with_files("flux", ["all"], "visit >= :v", {"v": 102})
        assert sorted((r.id, f.checksum, f.size, f.path) for r, f in got) == sorted(
            (r.id, f.checksum, f.size, f.path) for r, f in expected
        )
        assert {r.data_id["visit"] for r, _ in got} == {102, 103}
        records = source.query_dimension_records(
            "detector", "detector IN (:values)", {"values": [0, 2]}, instrument="HSC"
        )
        assert sorted(r["id"] for r in records) == [0, 2]
        assert {c["name"]: c["type"] for c in source.query_collections()} == {
            c["name"]: c["type"] for c in local.query_collections()
        }
        assert source.get_collection_chain("all") == ["raw", "extra"]
    source.close()


def test_failures_are_said_as_the_remote_butler_says_them(
    repo: Path, server: ButlerServer, tmp_path: Path
) -> None:
    source = HttpSource(server.url)
    with pytest.raises(DatasetTypeNotFoundError, match="nope"):
        source.query_datasets_with_files("nope", ["raw"])
    with pytest.raises(InvalidQueryError):
        source.query_datasets_with_files("flux", ["raw"], "visit >>> 3")
    source.close()
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{probe.getsockname()[1]}/"
    with pytest.raises(RemoteUnavailableError, match="cannot reach the repository at"):
        HttpSource(dead)
    private = ButlerServer(repo, tmp_path, "--read-access", "token").start()
    try:
        with pytest.raises(AuthenticationError):
            HttpSource(private.url)
        with_token = HttpSource(private.url, READ_TOKEN)
        assert len(with_token.query_datasets_with_files("flux", ["raw"])) == 12
        with_token.close()
    finally:
        private.stop()


class FakeServer:
    """Pages of rows, a redirect, an answer that is no JSON; idle connections are closed
    after 0.2 s (the runner's keep-alive timeout)."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str, dict[str, Any]]] = []
        self.rows = [{"name": f"r{i}"} for i in range(7)]
        self.transports: list[Any] = []
        self.info_fields: dict[str, Any] = {"max_page_size": 3}
        self.info_headers: dict[str, str] = {}
        """Fields added to the info answer (a cache's marks)."""

    def _record(self, request: web.Request, body: dict[str, Any] | None = None) -> None:
        self.requests.append((request.method, request.path_qs, body or {}))
        if request.transport is not None and request.transport not in self.transports:
            self.transports.append(request.transport)

    async def info(self, request: web.Request) -> web.Response:
        self._record(request)
        info = {"universe": _universe(), **self.info_fields}
        return web.json_response(info, headers=self.info_headers)

    async def old_records(self, request: web.Request) -> web.Response:
        self._record(request)
        raise web.HTTPTemporaryRedirect("/api/v1/dimensions/thing/records?" + request.query_string)

    async def records(self, request: web.Request) -> web.Response:
        self._record(request)
        limit, offset = int(request.query["limit"]), int(request.query["offset"])
        page = self.rows[offset : offset + limit]
        following = offset + limit if offset + limit < len(self.rows) else None
        return web.json_response({"records": page, "next_offset": following})

    async def not_json(self, request: web.Request) -> web.Response:
        self._record(request)
        return web.Response(text="<html>a web site</html>", content_type="text/html")


def _universe() -> dict[str, Any]:
    return dict(yaml.safe_load(default_universe_path().read_text()))


@pytest.fixture
async def fake() -> AsyncIterator[tuple[FakeServer, str]]:
    server = FakeServer()
    app = web.Application()
    app.router.add_get("/api/v1/", server.info)
    app.router.add_get("/api/v1/dimensions/old/records", server.old_records)
    app.router.add_get("/api/v1/dimensions/thing/records", server.records)
    app.router.add_get("/api/v1/collections", server.not_json)
    async with served_app(app, keepalive_timeout=0.2) as url:
        yield server, url


async def test_pages_redirects_and_dropped_connections(fake: tuple[FakeServer, str]) -> None:
    server, url = fake
    source = await asyncio.to_thread(HttpSource, url)
    records = await asyncio.to_thread(
        source.query_dimension_records, "old", "x = :v", {"v": 1}, instrument="HSC"
    )
    assert records == server.rows  # three pages of the server's largest page (3 rows)
    pages = [qs for _, qs, _ in server.requests if "thing" in qs]
    assert [qs.split("limit=")[1] for qs in pages] == ["3&offset=0", "3&offset=3", "3&offset=6"]
    assert all("bind=" in qs and "instrument" in qs for qs in pages)  # kept through the redirect
    assert len(server.transports) == 1  # one kept-alive connection for all of it
    # The server closes the idle connection; the client finds out when it sends on it, and
    # sends again on a new one.
    await asyncio.sleep(0.6)
    again = await asyncio.to_thread(source.query_dimension_records, "thing")
    assert again == server.rows
    assert len(server.transports) == 2
    with pytest.raises(RemoteUnavailableError, match="is .* a butler server"):
        await asyncio.to_thread(source.query_collections)
    source.close()


@pytest.mark.parametrize(
    ("offered", "marks", "expected"),
    [
        (None, {}, 0),  # a server without bundles (an older one)
        (64, {}, 64),
        (16, {}, 16),  # the server's own limit
        (64, {"Via": "1.1 site-cache"}, 0),  # a cache in between keeps one GET per file
        (64, {"X-Cache": "MISS"}, 0),  # proxyd's mark
    ],
)
async def test_bundles_where_offered_and_no_cache_is_in_between(
    fake: tuple[FakeServer, str], offered: int | None, marks: dict[str, str], expected: int
) -> None:
    server, url = fake
    server.info_fields["max_bundle_files"] = offered
    server.info_headers = marks
    source = await asyncio.to_thread(HttpSource, url)
    assert source.bundle_files == expected
    assert source.cache_in_between == bool(marks)
    source.close()
