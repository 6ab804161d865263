"""``butler serve`` and the remote butler: bytes on the wire, auth, caching headers, errors,
OpenAPI, async concurrency and remote transactions (including a server killed mid-way)."""

from __future__ import annotations

import asyncio
import json
import re
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import jsonschema
import numpy as np
import pytest
from astropy.table import Table
from conftest import populate_dimensions, raw_registry
from servers import READ_TOKEN, WRITE_TOKEN, ButlerServer

from butler import (
    Box,
    Butler,
    DatasetNotFoundError,
    Image,
    TransactionError,
)
from butler.errors import AuthenticationError, AuthorizationError, DataIdError, ServerError
from butler.http.bundle import BundleEntry
from butler.remote.async_butler import AsyncButler
from butler.sample_data import synthetic_calexp
from butler.server.openapi import build_openapi

REGISTRY_BACKENDS = ("sqlite", "postgresql")  # one suite, both registry engines

HSC = {"instrument": "HSC"}


def make_repo(root: Path, registry: str | None = None) -> Path:
    with Butler.create(root, registry=registry) as butler:
        populate_dimensions(butler)
        butler.register_dataset_type("summary", ["visit", "detector"], "Dict")
        butler.register_dataset_type("calexp", ["visit", "detector"], "Image")
        butler.register_dataset_type("src", ["visit", "detector"], "Table")
    return root


@pytest.fixture
def repo(tmp_path: Path, registry_url: str | None) -> Path:
    return make_repo(tmp_path / "repo", registry_url)


@pytest.fixture
def server(repo: Path, tmp_path: Path) -> Iterator[ButlerServer]:
    srv = ButlerServer(repo, tmp_path).start()
    yield srv
    srv.stop()


def http(
    method: str, url: str, headers: dict[str, str] | None = None, body: bytes | None = None
) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, data=body, method=method, headers=headers or {})  # noqa: S310
    try:
        with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


# -- bytes on the wire ------------------------------------------------------------------


def test_partial_reads_cost_only_the_needed_bytes(
    repo: Path, server: ButlerServer, tmp_path: Path
) -> None:
    big = Image(np.random.default_rng(0).normal(size=(4096, 4096)).astype(np.float32))
    with Butler(repo, run="run1") as local:
        local.put(big, "calexp", HSC, visit=100, detector=0)
        rng = np.random.default_rng(1)
        n = 200_000
        local.put(
            Table({"a": rng.normal(size=n), "b": rng.normal(size=n), "c": np.arange(n)}),
            "src",
            HSC,
            visit=100,
            detector=0,
        )
    with Butler(server.url, collections="run1", cache_dir=tmp_path / "c") as remote:
        info = remote.get_file_info("calexp", HSC, visit=100, detector=0)
        # metadata: one ranged request of exactly the PRIMARY header (from the offset index)
        mark = server.mark()
        header = remote.get("calexp.metadata", HSC, visit=100, detector=0)
        assert "NAXIS" not in header
        requests = server.file_requests(mark)
        assert len(requests) == 1
        assert requests[0]["status"] == "206"
        assert server.file_bytes_sent(mark) == info.hdu(0)["header_size"]
        # a 100x100 cutout of the 4096x4096 float32 image: one request, under 100 KB
        mark = server.mark()
        cut = remote.get(
            "calexp.image",
            HSC,
            visit=100,
            detector=0,
            parameters={"bbox": Box(2000, 3000, 100, 100)},
        )
        np.testing.assert_array_equal(cut, big.data[3000:3100, 2000:2100])
        assert len(server.file_requests(mark)) == 1
        # its 100 rows of 100 float32 pixels, and little more
        assert 100 * 100 * 4 <= server.file_bytes_sent(mark) < 100_000
        # one Parquet column: its chunks plus the footer, not the other columns
        src = remote.get_file_info("src", HSC, visit=100, detector=0)
        mark = server.mark()
        column = remote.get("src", HSC, visit=100, detector=0, parameters={"columns": ["b"]})
        assert column.colnames == ["b"]
        sent = server.file_bytes_sent(mark)
        import pyarrow.parquet as pq

        meta = pq.ParquetFile(repo / src.path).metadata
        chunks = [meta.row_group(g).column(1) for g in range(meta.num_row_groups)]
        assert all(c.path_in_schema == "b" for c in chunks)
        column_bytes = sum(c.total_compressed_size for c in chunks)
        footer = src.index["footer_size"] + 8
        # the column's chunks and the footer, plus at most a little multipart framing
        assert column_bytes + footer <= sent <= column_bytes + footer + 2000, (sent, column_bytes)
        assert sent < src.size / 2


def test_healthz_says_when_every_request_is_in_the_access_log(server: ButlerServer) -> None:
    """aiohttp writes a request's access-log line after its answer has gone out; /healthz
    reports the requests received (itself included) and the lines written, so a reader
    knows when the log is complete instead of waiting for it to stop growing."""

    def counts() -> tuple[int, int]:
        status, headers, _ = http("GET", server.url + "healthz")
        assert status == 200
        match = re.fullmatch(r"received=(\d+), written=(\d+)", headers.get("X-Access-Log", ""))
        assert match, headers
        return int(match[1]), int(match[2])

    before, _ = counts()
    targets = ["/api/v1/openapi.json", "/nope", "/api/v1/openapi.json?again"]
    assert [http("GET", server.url + t.lstrip("/"))[0] for t in targets] == [200, 404, 200]
    after, written = counts()
    assert after == before + len(targets) + 1  # and the second /healthz itself
    assert written < after  # its own line comes after its answer
    server.sync_log()
    assert [e["target"] for e in server.access_log()][-5:] == ["/healthz", *targets, "/healthz"]


def test_file_responses_carry_exact_http_semantics(repo: Path, server: ButlerServer) -> None:
    with Butler(repo, run="run1") as local:
        ref = local.put({"hello": "world" * 100}, "summary", HSC, visit=100, detector=0)
        info = local.get_file_info(ref)
        data = local.get_local_path(ref).read_bytes()
    url = server.url + "files/" + info.path
    status, headers, body = http("GET", url)
    assert status == 200
    assert body == data
    assert headers["ETag"] == info.etag
    assert headers["Accept-Ranges"] == "bytes"
    assert "immutable" in headers["Cache-Control"]
    assert headers["Cache-Control"].startswith("public")
    assert "Last-Modified" in headers
    status, headers, body = http("GET", url, {"Range": "bytes=-10"})
    assert (status, body) == (206, data[-10:])
    assert headers["Content-Range"] == f"bytes {len(data) - 10}-{len(data) - 1}/{len(data)}"
    status, headers, _ = http("GET", url, {"Range": f"bytes={len(data) + 5}-"})
    assert status == 416
    assert headers["Content-Range"] == f"bytes */{len(data)}"
    status, _, body = http("GET", url, {"Range": "bytes=0-1", "If-Range": '"other"'})
    assert (status, body) == (200, data)
    status, _, _ = http("GET", url, {"If-None-Match": info.etag})
    assert status == 304
    for bad in ("files/../registry.sqlite3", "files/registry.sqlite3", "files/butler.yaml"):
        status, _, _ = http("GET", server.url + bad)
        assert status == 404, bad


def test_api_responses_have_etags_short_freshness_and_304(server: ButlerServer) -> None:
    url = server.url + "api/v1/dataset-types"
    status, headers, body = http("GET", url)
    assert status == 200
    # Revalidated on every use (issue 18): the ETag carries the registry's change count.
    assert headers["Cache-Control"] == "public, no-cache, stale-if-error=86400"
    etag = headers["ETag"]
    status, headers, body = http("GET", url, {"If-None-Match": etag})
    assert status == 304
    assert body == b""


# -- auth -------------------------------------------------------------------------------


def test_token_only_reads_and_scopes(repo: Path, tmp_path: Path) -> None:
    srv = ButlerServer(repo, tmp_path, "--read-access", "token").start()
    try:
        status, headers, body = http("GET", srv.url + "api/v1/dataset-types")
        assert status == 401
        assert headers["WWW-Authenticate"].startswith("Bearer")
        error = json.loads(body)
        assert error["error_type"] == "AuthenticationRequired"
        assert "token" in error["message"]
        status, _, body = http(
            "GET",
            srv.url + "api/v1/dataset-types",
            {"Authorization": "Bearer wrong-token-xxxxxxxxxxxx"},
        )
        assert status == 401
        assert json.loads(body)["error_type"] == "InvalidToken"
        with pytest.raises(AuthenticationError):
            Butler(srv.url)
        with Butler(srv.url, run="r", token=WRITE_TOKEN) as writer:
            ref = writer.put({"a": 1}, "summary", HSC, visit=100, detector=0)
        with Butler(srv.url, collections="r", token=READ_TOKEN, writeable=True) as reader:
            assert reader.get(ref) == {"a": 1}
            with pytest.raises(AuthorizationError, match="'reader' lacks the 'write' scope"):
                reader.put({"a": 2}, "summary", HSC, visit=101, detector=0, run="r")
            info = reader.get_file_info(ref)
        status, headers, _ = http(
            "GET", srv.url + "files/" + info.path, {"Authorization": f"Bearer {READ_TOKEN}"}
        )
        assert status == 200
        assert headers["Cache-Control"].startswith("public, no-cache")  # shared after a check
        status, _, body = http("GET", srv.url + "files/" + info.path)
        assert status == 401
        assert b'"a"' not in body
        log = srv.log_text()
        assert WRITE_TOKEN not in log
        assert READ_TOKEN not in log
    finally:
        srv.stop()


def test_writes_need_a_token(repo: Path, tmp_path: Path) -> None:
    srv = ButlerServer(repo, tmp_path, tokens=False).start()
    try:
        with (
            Butler(srv.url, writeable=True) as butler,
            pytest.raises(AuthorizationError, match="--tokens"),
        ):
            butler.register_run("nope")
    finally:
        srv.stop()


# -- errors -----------------------------------------------------------------------------


def test_server_bugs_are_500s_with_a_request_id(repo: Path, server: ButlerServer) -> None:
    with Butler(repo, run="run1") as local:
        ref = local.put({"a": 1}, "summary", HSC, visit=100, detector=0)
    with raw_registry(repo) as conn:
        conn.execute("UPDATE file SET file_index = 'not json' WHERE dataset_id = ?", (str(ref.id),))
    with Butler(server.url, collections="run1") as remote, pytest.raises(ServerError) as info:
        remote.get("summary", HSC, visit=100, detector=0)
    match = __import__("re").search(r"request ID ([0-9a-f]+)", str(info.value))
    assert match, str(info.value)
    assert match.group(1) in server.log_text()  # the operator finds the traceback by its ID
    assert "Traceback" in server.log_text()


def test_openapi_describes_every_route_and_responses_validate(
    repo: Path, server: ButlerServer, tmp_path: Path
) -> None:
    from openapi_spec_validator import validate

    from butler.server.app import create_app
    from butler.server.settings import ServerSettings

    spec = build_openapi()
    validate(spec)
    status, _, body = http("GET", server.url + "api/v1/openapi.json")
    assert json.loads(body) == json.loads(json.dumps(spec))
    from butler.server.api import POOL

    app = create_app(ServerSettings(repo=make_repo(tmp_path / "routes-only")))
    described = {(path, method.upper()) for path, ops in spec["paths"].items() for method in ops}
    for route in app.router.routes():
        if route.method == "HEAD":
            continue
        path = route.resource.canonical.replace("{name:.+}", "{name}").replace(
            "{path:.+}", "{path}"
        )
        assert (path, route.method) in described, (path, route.method)
    app[POOL].close()

    with Butler(repo, run="run1") as local:
        ref = local.put({"a": 1}, "summary", HSC, visit=100, detector=0)

    def check(path: str, params: str = "", status_code: str = "200") -> None:
        status, _, body = http("GET", server.url + "api/v1/" + path + params)
        assert str(status) == status_code, (path, body)
        template = {
            "dataset-types/summary": "dataset-types/{name}",
            "dataset-types/nope": "dataset-types/{name}",
            "collections/run1": "collections/{name}",
            f"datasets/{ref.id}": "datasets/{id}",
            "dimensions/visit/records": "dimensions/{element}/records",
            "dimensions/visit/values": "dimensions/{element}/values",
        }.get(path, path)
        schema = spec["paths"]["/api/v1/" + template]["get"]["responses"][status_code]
        schema = schema["content"]["application/json"]["schema"]
        jsonschema.validate(json.loads(body), {"components": spec["components"], "allOf": [schema]})

    check("")
    check("universe")
    check("dataset-types")
    check("dataset-types/summary")
    check("dataset-types/nope", status_code="404")
    check("collections")
    check("collections/run1")
    check("dimensions/visit/records", "?where=band%3D'r'")
    check("dimensions/visit/values", "?where=band%3D'r'")
    check("datasets", "?dataset_type=summary&collections=run1")
    check("datasets", "?dataset_type=summary&where=visit%3E", status_code="400")
    check(f"datasets/{ref.id}")
    check("find", '?dataset_type=summary&data_id={"instrument":"HSC","visit":100,"detector":0}')
    check("data-ids", "?dimensions=visit&dimensions=detector&limit=5")
    check("datasets/summary", "?dataset_type=summary&collections=run1&where=visit%3D100")
    check("datasets/summary", "?dataset_type=nope", status_code="404")
    check("dimensions/visit/values", "?dataset_type=summary&collections=run1")


# -- async ------------------------------------------------------------------------------


async def test_async_gather_of_200_gets_reuses_connections(
    repo: Path, server: ButlerServer
) -> None:
    with Butler(repo, run="run1") as local, local.transaction():
        for i in range(200):
            local.put(
                {"i": i},
                "summary",
                HSC,
                visit=100 + i % 10,
                detector=i // 10 % 4,
                run=f"run{i // 40}",
            )
    async with AsyncButler(server.url, max_connections=8) as butler:
        results = await asyncio.gather(
            *(
                butler.get(
                    "summary",
                    HSC,
                    visit=100 + i % 10,
                    detector=i // 10 % 4,
                    collections=f"run{i // 40}",
                )
                for i in range(200)
            )
        )
        assert [r["i"] for r in results] == list(range(200))
        assert butler.client.requests_sent >= 400  # a find and a file request per get
        assert butler.client.connections_opened <= 8


async def test_sync_api_works_inside_a_running_event_loop(repo: Path, server: ButlerServer) -> None:
    with Butler(repo, run="run1") as local:
        local.put({"in": "loop"}, "summary", HSC, visit=100, detector=0)
    asyncio.get_running_loop()  # as in Jupyter: a loop is running in this thread
    with Butler(server.url, collections="run1") as remote:
        assert remote.get("summary", HSC, visit=100, detector=0) == {"in": "loop"}


# -- remote transactions ----------------------------------------------------------------


def staged_dirs(repo: Path) -> list[Path]:
    """Staged transactions' directories: ``.staging-remote/<server>/<transaction>/``."""
    root = repo / ".staging-remote"
    servers = [p for p in root.iterdir() if p.is_dir()] if root.exists() else []
    return [p for server in servers for p in server.iterdir() if p.is_dir()]


def test_remote_transaction_commits_once(repo: Path, server: ButlerServer) -> None:
    with Butler(server.url, run="txn", token=WRITE_TOKEN) as butler:
        mark = server.mark()
        with butler.transaction():
            for visit in range(100, 105):
                butler.put({"v": visit}, "summary", HSC, visit=visit, detector=0)
            # nothing is visible before the commit, not even the RUN (the commit creates it)
            with Butler(repo) as local:
                assert "txn" not in [c["name"] for c in local.query_collections()]
        commits = [e for e in server.access_log()[mark:] if e["target"].endswith("/commit")]
        assert len(commits) == 1
        assert len(butler.query_datasets("summary")) == 5
    assert staged_dirs(repo) == []


def test_remote_transaction_errors_surface_at_commit_and_write_nothing(
    server: ButlerServer, repo: Path
) -> None:
    with Butler(server.url, run="bad", token=WRITE_TOKEN) as butler:
        with pytest.raises(DataIdError, match="no detector record"), butler.transaction():
            butler.put({"v": 1}, "summary", HSC, visit=100, detector=0)
            butler.put({"v": 2}, "summary", HSC, visit=100, detector=99)
        assert butler.query_datasets("summary", collections="bad") == []
        with pytest.raises(RuntimeError), butler.transaction():
            butler.put({"v": 1}, "summary", HSC, visit=100, detector=0)
            raise RuntimeError("client changed its mind")
        assert butler.query_datasets("summary", collections="bad") == []
    assert staged_dirs(repo) == []
    assert not list((repo / "bad").rglob("*.json")) if (repo / "bad").exists() else True


def test_server_killed_mid_transaction_shows_nothing_after_restart(
    repo: Path, server: ButlerServer
) -> None:
    butler = Butler(server.url, run="killed", token=WRITE_TOKEN)
    try:
        with pytest.raises(Exception), butler.transaction():  # noqa: B017, PT011
            for visit in range(100, 104):
                butler.put({"v": visit}, "summary", HSC, visit=visit, detector=1)
            assert len(staged_dirs(repo)) == 1
            assert len(list(staged_dirs(repo)[0].glob("*-*"))) == 4
            server.kill()
    finally:
        butler.close()
    server.start()
    assert staged_dirs(repo) == []
    # The RUN the client was opened with was never created: only a commit would have.
    with Butler(server.url) as remote:
        assert "killed" not in [c["name"] for c in remote.query_collections()]
    with Butler(repo) as local:
        assert "killed" not in [c["name"] for c in local.query_collections()]


def test_abandoned_staging_expires(repo: Path, tmp_path: Path) -> None:
    srv = ButlerServer(repo, tmp_path, "--staging-ttl", "1").start()
    try:

        async def abandon() -> None:
            async with AsyncButler(srv.url, run="gone", token=WRITE_TOKEN) as butler:
                txn_id = (await butler.client.post_json("transactions", {}))["id"]
                path = tmp_path / "payload.json"
                path.write_text("{}")
                await butler.client.upload(
                    f"transactions/{txn_id}/uploads/12345678-1234-1234-1234-123456789abc",
                    path,
                    "",
                )

        asyncio.run(abandon())
        assert len(staged_dirs(repo)) == 1
        deadline = time.monotonic() + 15
        while staged_dirs(repo) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert staged_dirs(repo) == []
    finally:
        srv.stop()


def test_two_clients_committing_concurrently_both_land(repo: Path, server: ButlerServer) -> None:
    errors: list[BaseException] = []

    def client(run: str) -> None:
        try:
            with Butler(server.url, run=run, token=WRITE_TOKEN) as butler, butler.transaction():
                for i in range(20):
                    butler.put(
                        {"run": run, "i": i}, "summary", HSC, visit=100 + i % 10, detector=i // 10
                    )
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=client, args=(f"c{n}",)) for n in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert errors == []
    with Butler(repo) as local:
        for run in ("c0", "c1"):
            refs = local.query_datasets("summary", collections=run)
            assert len(refs) == 20
            assert {local.get(r)["i"] for r in refs} == set(range(20))


def test_put_outside_a_transaction_is_atomic_and_checked(server: ButlerServer) -> None:
    with Butler(server.url, run="one", token=WRITE_TOKEN) as butler:
        ref = butler.put({"x": 1}, "summary", HSC, visit=100, detector=0)
        assert ref.data_id["band"] == "i"  # expanded by the server
        with pytest.raises(DatasetNotFoundError):
            butler.get("summary", HSC, visit=101, detector=0)
    with (
        Butler(server.url, writeable=True, token=WRITE_TOKEN) as runless,
        pytest.raises(TransactionError, match="no RUN"),
    ):
        runless.put({}, "summary", HSC, visit=1, detector=0)


async def test_async_butler_offers_the_reading_methods(
    repo: Path, server: ButlerServer, tmp_path: Path
) -> None:
    image = synthetic_calexp(size=64)
    with Butler(repo, run="run1") as local:
        local.put(image, "calexp", HSC, visit=100, detector=0)
    async with AsyncButler(server.url, collections="run1", cache_dir=tmp_path / "c") as butler:
        uri = await butler.get_uri("calexp", HSC, visit=100, detector=0)
        assert uri.startswith(server.url + "files/run1/calexp/")
        mapped = await butler.memmap("calexp", HSC, visit=100, detector=0, hdu="IMAGE")
        np.testing.assert_array_equal(mapped, image.data)
        path = await butler.get_local_path("calexp", HSC, visit=100, detector=0)
        assert (
            path.stat().st_size
            == (await butler.get_file_info("calexp", HSC, visit=100, detector=0)).size
        )
        f = await butler.open("calexp", HSC, visit=100, detector=0)
        first = await asyncio.to_thread(f.read, 80)
        assert first.startswith(b"SIMPLE  =")
        assert await butler.exists("calexp", HSC, visit=100, detector=0)
        assert not await butler.exists("calexp", HSC, visit=101, detector=0)


# -- file bundles -----------------------------------------------------------------------


def read_bundle(body: bytes) -> list[tuple[BundleEntry, bytes]]:
    """Split a bundle answer into its entries and their bytes (and check nothing is left)."""
    entries: list[tuple[BundleEntry, bytes]] = []
    while body:
        line, body = body.split(b"\n", 1)
        entry = BundleEntry.decode(line + b"\n")
        entries.append((entry, body[: entry.size]))
        body = body[entry.size :]
    return entries


def test_a_bundle_answers_many_files_in_order_with_errors_in_place(
    repo: Path, server: ButlerServer
) -> None:
    with Butler(repo, run="r") as butler:
        refs = [butler.put({"i": i}, "summary", HSC, visit=100, detector=i) for i in range(3)]
        paths = [butler.get_file_info(ref).path for ref in refs]
    asked = [paths[0], "r/summary/none.json", paths[2], "../../etc/passwd", paths[1]]
    status, headers, body = http(
        "POST",
        server.url + "api/v1/files/bundle",
        {"Content-Type": "application/json"},
        json.dumps({"paths": asked}).encode(),
    )
    assert status == 200
    assert headers["Content-Type"] == "application/x-butler-file-bundle"
    assert headers["Cache-Control"] == "no-store"
    assert int(headers["Content-Length"]) == len(body)
    entries = read_bundle(body)
    assert [e.path for e, _ in entries] == asked
    for (entry, data), path in zip(
        [entries[0], entries[2], entries[4]], [paths[0], paths[2], paths[1]], strict=True
    ):
        assert entry.error is None
        assert data == (repo / path).read_bytes()
    assert entries[1][0].error == "no dataset file at r/summary/none.json"
    assert entries[3][0].error == "no dataset file at ../../etc/passwd"  # never leaves the repo
    assert entries[1][1] == entries[3][1] == b""


def test_a_bad_bundle_request_says_what_is_wrong(server: ButlerServer) -> None:
    for body, message in (
        ({"paths": ["a"] * 65}, "at most 64 files, not 65"),
        ({"paths": []}, "at least one path"),
        ({"files": ["a"]}, 'must be {"paths"'),
    ):
        status, _, answer = http(
            "POST",
            server.url + "api/v1/files/bundle",
            {"Content-Type": "application/json"},
            json.dumps(body).encode(),
        )
        assert status == 400
        assert message in json.loads(answer)["message"]


def test_bundles_need_read_access(repo: Path, tmp_path: Path) -> None:
    with Butler(repo, run="r") as butler:
        path = butler.get_file_info(
            butler.put({"a": 1}, "summary", HSC, visit=100, detector=0)
        ).path
    srv = ButlerServer(repo, tmp_path, "--read-access", "token").start()
    try:
        request = json.dumps({"paths": [path]}).encode()
        json_type = {"Content-Type": "application/json"}
        status, _, body = http("POST", srv.url + "api/v1/files/bundle", json_type, request)
        assert status == 401
        assert b'"a"' not in body
        reader = {**json_type, "Authorization": f"Bearer {READ_TOKEN}"}
        status, _, body = http("POST", srv.url + "api/v1/files/bundle", reader, request)
        assert status == 200
        assert read_bundle(body)[0][1] == (repo / path).read_bytes()
    finally:
        srv.stop()
