"""The mirror and the remote butler against a hostile or faulty server and a full disk.

- A redirect to another origin (scheme, host, port) never carries the bearer token; a
  redirect within the origin does (``mirror pull``, ``mirror verify --repair``, the remote
  butler's queries, reads and downloads), against a real ``butler serve`` that wants a token,
  behind a front door that redirects, and a second origin that records what it is sent.
- Pages that never end (a repeated page token, empty pages, the same rows again, fresh rows
  for ever) stop with a clear error after a bounded number of requests.
- A destination disk that fills up during a pull (a real tmpfs, filled by another writer
  once the downloads begin) ends with a clear message, what was committed stays valid, and
  a re-run resumes; so does a full disk with nothing left to fetch. The remote butler's
  file cache on a full disk says so too.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest
import yaml
from aiohttp import web
from conftest import populate_dimensions, unavailable
from servers import READ_TOKEN, ButlerServer, served_app
from yarl import URL

from butler import Butler
from butler.direct_butler import DirectButler
from butler.errors import CorruptFileError, ServerError
from butler.remote.async_butler import AsyncButler, CacheFullError
from butler.remote.client import ClientSettings, RepositoryClient
from butler.universe import default_universe_path
from mirror.connections import redirected_headers
from mirror.source import HttpSource

HSC = {"instrument": "HSC"}
ARRAY_BYTES = 256 * 1024
DATASETS = 20
BEARER = f"Bearer {READ_TOKEN}"


def add_arrays(repo: Path, visits: range) -> None:
    rng = np.random.default_rng(visits.start)
    with Butler(repo, run="raw") as butler, butler.transaction():
        for visit in visits:
            for detector in range(4):
                butler.put(
                    rng.random(ARRAY_BYTES // 8), "flux", HSC, visit=visit, detector=detector
                )


@pytest.fixture(scope="module")
def source_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("source") / "repo"
    with Butler.create(root) as butler:
        populate_dimensions(butler)
        butler.register_dataset_type("flux", ["visit", "detector"], "Array")
    add_arrays(root, range(100, 105))
    return root


@pytest.fixture(scope="module")
def server(source_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ButlerServer]:
    """``butler serve`` that answers reads only with a token."""
    srv = ButlerServer(source_repo, tmp_path_factory.mktemp("server"), "--read-access", "token")
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture
def token_file(tmp_path: Path) -> Path:
    path = tmp_path / "token"
    path.write_text(READ_TOKEN)
    return path


def run_mirror(
    *args: str, limit_pages: int = 0, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """``mirror ARGS`` in a child process; ``limit_pages``: a lower MAX_PAGES, so that a
    pagination that never ends reaches it in a few requests."""
    script = (
        "import sys, butler.remote.limits as limits\n"
        "if int(sys.argv[1]): limits.MAX_PAGES = int(sys.argv[1])\n"
        "sys.argv = ['mirror', *sys.argv[2:]]\n"
        "from mirror.cli import main\n"
        "main()\n"
    )
    return subprocess.run(
        [sys.executable, "-c", script, str(limit_pages), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env={k: v for k, v in os.environ.items() if k != "BUTLER_TOKEN"},
    )


def pull_args(url: str, dest: Path, token_file: Path | None, *extra: str) -> list[str]:
    token = ["--token-file", str(token_file)] if token_file else []
    return [
        "pull",
        url,
        "--dest",
        str(dest),
        "--dataset-type",
        "flux",
        "--collections",
        "raw",
        "--quiet",
        *token,
        *extra,
    ]


# -- a front door that redirects, and another origin that records ---------------------------

REQUEST_FIELDS = ("Range", "If-Range", "Content-Type", "Accept")
ANSWER_FIELDS = ("Content-Type", "Content-Range", "ETag", "Last-Modified", "Accept-Ranges")


async def forward(
    session: aiohttp.ClientSession,
    request: web.Request,
    upstream: str,
    raw_path: str,
    authorization: str | None,
) -> web.Response:
    """``request`` sent on to ``upstream`` (with ``authorization``), its answer returned."""
    headers = {k: request.headers[k] for k in REQUEST_FIELDS if k in request.headers}
    if authorization:
        headers["Authorization"] = authorization
    async with session.request(
        request.method,
        URL(upstream.rstrip("/") + raw_path, encoded=True),
        headers=headers,
        data=await request.read(),
        allow_redirects=False,
    ) as answer:
        body = await answer.read()
        kept = {k: answer.headers[k] for k in ANSWER_FIELDS if k in answer.headers}
        return web.Response(status=answer.status, body=body, headers=kept)


@dataclass
class Seen:
    method: str
    path: str
    authorization: str | None
    cookie: str | None


def seen(request: web.Request) -> Seen:
    return Seen(
        request.method,
        request.path,
        request.headers.get("Authorization"),
        request.headers.get("Cookie"),
    )


class Origins:
    """The front door a client is given, which answers every request with a 307: to the
    other origin (``cross``, another port), or to its own ``/same/`` (``same``), where it
    passes the request on to the server with the client's own Authorization. The other
    origin records what it receives and passes it on with a token of its own (as a CDN
    holding its own credential would), so the client's work succeeds either way."""

    def __init__(self, upstream: str, mode: str) -> None:
        self.upstream = upstream
        self.mode = mode
        self.front_seen: list[Seen] = []
        self.other_seen: list[Seen] = []
        self.other_url = ""
        self.session: aiohttp.ClientSession | None = None

    async def front(self, request: web.Request) -> web.StreamResponse:
        assert self.session is not None
        if request.path.startswith("/same/"):
            self.front_seen.append(seen(request))
            raw = request.raw_path.removeprefix("/same")
            return await forward(
                self.session, request, self.upstream, raw, request.headers.get("Authorization")
            )
        base = self.other_url.rstrip("/") if self.mode == "cross" else "/same"
        # 307 keeps the method and body: the POSTed queries are redirected too.
        raise web.HTTPTemporaryRedirect(base + request.raw_path)

    async def other(self, request: web.Request) -> web.StreamResponse:
        assert self.session is not None
        self.other_seen.append(seen(request))
        return await forward(self.session, request, self.upstream, request.raw_path, BEARER)


@asynccontextmanager
async def origins(upstream: str, mode: str) -> AsyncIterator[tuple[Origins, str]]:
    """The two origins (127.0.0.1, two ports) in front of ``upstream``; the front's URL."""
    state = Origins(upstream, mode)
    front, other = web.Application(), web.Application()
    front.router.add_route("*", "/{tail:.*}", state.front)
    other.router.add_route("*", "/{tail:.*}", state.other)
    async with (
        aiohttp.ClientSession() as session,
        served_app(other) as other_url,
        served_app(front) as front_url,
    ):
        state.session, state.other_url = session, other_url
        assert URL(front_url).origin() != URL(other_url).origin()
        yield state, front_url


def kinds(requests: list[Seen]) -> set[str]:
    """Which kinds of request these were: API questions, file reads."""
    found = set()
    for request in requests:
        path = request.path.removeprefix("/same")
        if path.startswith("/files/"):
            found.add("file")
        elif path.startswith("/api/v1/"):
            found.add("api")
    return found


def corrupt_one(dest: Path) -> tuple[Path, bytes]:
    """Damage one mirrored file; its path and original bytes."""
    with DirectButler(dest, collections="raw") as mirror:
        victim = mirror.query_datasets("flux", visit=100, detector=0)[0]
        path = mirror.get_local_path(victim)
    original = path.read_bytes()
    path.write_bytes(original[:-10] + b"0123456789")
    return path, original


async def test_mirror_sends_the_token_to_no_other_origin(
    server: ButlerServer, tmp_path: Path, token_file: Path
) -> None:
    async with origins(server.url, "cross") as (state, front_url):
        dest = tmp_path / "mirror"
        done = await asyncio.to_thread(run_mirror, *pull_args(front_url, dest, token_file))
        assert done.returncode == 0, done.stderr
        with DirectButler(dest) as mirror:
            assert len(mirror.query_datasets("flux", "raw")) == DATASETS
            assert mirror.verify() == []
        # Every question and every file went to the other origin, none with the token.
        assert kinds(state.other_seen) == {"api", "file"}
        assert [s for s in state.other_seen if s.authorization or s.cookie] == []
        assert state.front_seen == []

        path, original = corrupt_one(dest)
        mark = len(state.other_seen)
        repair = await asyncio.to_thread(
            run_mirror, "verify", str(dest), "--repair", "--token-file", str(token_file)
        )
        assert repair.returncode == 0, repair.stderr
        assert "Repaired 1 file" in repair.stdout
        assert path.read_bytes() == original
        assert kinds(state.other_seen[mark:]) == {"api", "file"}
        assert [s for s in state.other_seen if s.authorization or s.cookie] == []


async def test_mirror_keeps_the_token_within_the_origin(
    server: ButlerServer, tmp_path: Path, token_file: Path
) -> None:
    """The server wants the token: the pull and the repair work only if it follows the
    redirects that stay within the origin."""
    async with origins(server.url, "same") as (state, front_url):
        dest = tmp_path / "mirror"
        done = await asyncio.to_thread(run_mirror, *pull_args(front_url, dest, token_file))
        assert done.returncode == 0, done.stderr
        with DirectButler(dest) as mirror:
            assert len(mirror.query_datasets("flux", "raw")) == DATASETS
        assert kinds(state.front_seen) == {"api", "file"}
        assert {s.authorization for s in state.front_seen} == {BEARER}
        corrupt_one(dest)
        mark = len(state.front_seen)
        repair = await asyncio.to_thread(
            run_mirror, "verify", str(dest), "--repair", "--token-file", str(token_file)
        )
        assert "Repaired 1 file" in repair.stdout, repair.stderr
        assert kinds(state.front_seen[mark:]) == {"api", "file"}
        assert {s.authorization for s in state.front_seen} == {BEARER}
        assert state.other_seen == []


@pytest.mark.parametrize("mode", ["cross", "same"])
async def test_remote_butler_sends_the_token_to_its_origin_only(
    server: ButlerServer, source_repo: Path, tmp_path: Path, mode: str
) -> None:
    async with origins(server.url, mode) as (state, front_url):

        def work() -> None:
            with (
                Butler(source_repo, collections="raw") as local,
                Butler(front_url, token=READ_TOKEN, collections="raw", cache_dir=tmp_path) as b,
            ):
                refs = b.query_datasets("flux")  # POSTed, redirected with a 307
                assert len(refs) == DATASETS
                ref = refs[0]
                np.testing.assert_array_equal(b.get(ref), local.get(ref))  # range reads
                assert b.get_local_path(ref).read_bytes() == local.get_local_path(ref).read_bytes()
                assert len(b.query_dimension_records("detector", instrument="HSC")) == 4

        await asyncio.to_thread(work)
    if mode == "cross":
        assert kinds(state.other_seen) == {"api", "file"}
        assert [s for s in state.other_seen if s.authorization or s.cookie] == []
        assert state.front_seen == []
    else:
        assert kinds(state.front_seen) == {"api", "file"}
        assert {s.authorization for s in state.front_seen} == {BEARER}
        assert state.other_seen == []


@pytest.mark.parametrize(
    ("url", "target", "kept"),
    [
        ("https://repo.example/a", "https://repo.example/b?x=1", True),
        ("https://repo.example/a", "https://REPO.example:443/b", True),  # default port, case
        ("http://repo.example/a", "http://repo.example:80/b", True),
        ("https://repo.example/a", "http://repo.example/b", False),  # a downgrade to clear text
        ("http://repo.example/a", "https://repo.example/b", False),  # another scheme all the same
        ("https://repo.example/a", "https://repo.example:8443/b", False),  # another port
        ("https://repo.example/a", "https://cdn.example/b", False),  # another host
        ("https://repo.example/a", "https://repo.example.evil/b", False),
        ("https://repo.example/a", "https://repo.example:notaport/b", False),
    ],
)
def test_credentials_follow_a_redirect_only_within_the_origin(
    url: str, target: str, kept: bool
) -> None:
    headers = {
        "User-Agent": "butler-mirror/1",
        "authorization": BEARER,  # any case
        "Cookie": "session=1",
        "Proxy-Authorization": "Basic eDp5",
        "Range": "bytes=5-",
    }
    expected = dict(headers)
    if not kept:
        expected = {"User-Agent": "butler-mirror/1", "Range": "bytes=5-"}
    assert redirected_headers(url, target, headers) == expected


# -- pages that never end --------------------------------------------------------------------


class EndlessPages:
    """A server whose paged answers always name a next page, as ``mode`` says:

    - ``repeat``: the same next offset every time (a server that ignores the offset);
    - ``same-rows``: the offset moves on, the rows are those of the first page;
    - ``empty``: the offset moves on, the pages bring no rows;
    - ``fresh``: the offset moves on, every page brings new rows;
    - ``garbled``: the answer has a next offset but no rows at all (no list of them).
    """

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.pages = 0

    def page(self, key: str, limit: int, offset: int) -> dict[str, Any]:
        self.pages += 1
        if self.mode == "empty":
            rows: list[Any] = []
        elif self.mode == "fresh":
            rows = [{"row": str(uuid.uuid4())} for _ in range(limit)]
        else:
            rows = [{"row": i} for i in range(limit)]
        following = limit if self.mode == "repeat" else offset + limit
        if self.mode == "garbled":
            return {key: "rows", "next_offset": following}
        return {key: rows, "next_offset": following}

    async def info(self, request: web.Request) -> web.Response:
        universe = yaml.safe_load(default_universe_path().read_text())
        return web.json_response({"universe": universe, "max_page_size": 2})

    async def datasets(self, request: web.Request) -> web.Response:
        body = await request.json()
        return web.json_response(self.page("datasets", body["limit"], body["offset"]))

    async def listing(self, request: web.Request) -> web.Response:
        key = {"records": "records", "datasets": "datasets"}.get(
            request.path.rsplit("/", 1)[-1], "data_ids"
        )
        limit, offset = int(request.query["limit"]), int(request.query["offset"])
        return web.json_response(self.page(key, limit, offset))


@asynccontextmanager
async def endless(mode: str) -> AsyncIterator[tuple[EndlessPages, str]]:
    fake = EndlessPages(mode)
    app = web.Application()
    app.router.add_get("/api/v1/", fake.info)
    app.router.add_post("/api/v1/datasets/query", fake.datasets)
    app.router.add_get("/api/v1/datasets", fake.listing)  # what clients ask first
    app.router.add_get("/api/v1/dimensions/{element}/records", fake.listing)
    app.router.add_get("/api/v1/data-ids", fake.listing)
    async with served_app(app) as url:
        yield fake, url


LIMITED_PAGES = 25
"""MAX_PAGES in the tests of fresh rows for ever (the real limit is far higher)."""
ENDLESS = [  # mode, what the error says, pages asked for
    ("repeat", "named offset 2 as the next page after the page at 2", 2),
    ("same-rows", "brought the same rows again", 2),
    ("empty", "brought no rows", 1),
    ("fresh", f"went on past {LIMITED_PAGES} pages", LIMITED_PAGES),
    ("garbled", "answer is not a page of", 1),
]


@pytest.mark.timeout(60)  # the safety net: before the fix, the pull never ended
@pytest.mark.parametrize(("mode", "reason", "pages"), ENDLESS)
async def test_mirror_pull_stops_pages_that_never_end(
    tmp_path: Path, mode: str, reason: str, pages: int
) -> None:
    async with endless(mode) as (fake, url):
        dest = tmp_path / "mirror"
        limit = LIMITED_PAGES if mode == "fresh" else 0
        done = await asyncio.to_thread(
            run_mirror, *pull_args(url, dest, None), limit_pages=limit, timeout=30
        )
    assert done.returncode == 1
    assert reason in done.stderr
    if mode != "garbled":
        assert f"the server's pagination did not end after {pages} pages" in done.stderr
    assert "Traceback" not in done.stderr
    assert fake.pages == pages
    assert not (dest / "butler.yaml").exists()  # stopped before anything was written


@pytest.mark.timeout(60)
@pytest.mark.parametrize(("mode", "reason", "pages"), ENDLESS)
async def test_remote_butler_and_mirror_source_stop_pages_that_never_end(
    monkeypatch: pytest.MonkeyPatch, mode: str, reason: str, pages: int
) -> None:
    monkeypatch.setattr("butler.remote.limits.MAX_PAGES", LIMITED_PAGES)
    async with endless(mode) as (fake, url), AsyncButler(url) as remote:
        questions = [
            remote.query_datasets_with_files("flux", ["raw"]),
            remote.query_dimension_records("visit"),
            remote.query_data_ids(["visit"]),
        ]
        for question in questions:
            before = fake.pages
            with pytest.raises(ServerError) as info:
                await question
            assert reason in str(info.value)
            if mode != "garbled":
                assert f"pagination did not end after {pages} pages" in str(info.value)
            assert fake.pages - before == pages
        source = await asyncio.to_thread(HttpSource, url)
        try:
            before = fake.pages
            with pytest.raises(ServerError, match=reason):
                await asyncio.to_thread(source.query_dimension_records, "visit")
            assert fake.pages - before == pages
        finally:
            source.close()


# -- answers longer than any answer of the API ----------------------------------------------

ANSWER_LIMIT = 1 << 20
"""MAX_ANSWER_BYTES in these tests (the real limit is 512 MiB)."""
OVERSIZED = 8 << 20
"""What the server below sends at most, whatever the client does (the test is bounded)."""


class Oversized:
    """A server whose listings are longer than any API answer: ``declared`` says its length
    (Content-Length) and sends it; ``streamed`` sends it chunked, its length unknown."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.sent = 0

    async def info(self, request: web.Request) -> web.Response:
        universe = yaml.safe_load(default_universe_path().read_text())
        return web.json_response({"universe": universe, "max_page_size": 1000})

    async def listing(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        if self.mode == "declared":
            response.content_length = OVERSIZED
        else:
            response.enable_chunked_encoding()
        await response.prepare(request)
        row = b'{"row": "' + b"x" * 1000 + b'"},'
        try:
            key = b"records" if request.path.endswith("/records") else b"data_ids"
            await response.write(b'{"' + key + b'": [')
            while self.sent < OVERSIZED - 64 * 1024:
                await response.write(row * 64)
                self.sent += len(row) * 64
        except ConnectionError:
            return response  # the client hung up: what it should do
        return response


@pytest.mark.timeout(60)
@pytest.mark.parametrize("mode", ["declared", "streamed"])
async def test_an_answer_longer_than_any_of_the_api_is_refused_not_held(
    monkeypatch: pytest.MonkeyPatch, mode: str
) -> None:
    monkeypatch.setattr("butler.remote.limits.MAX_ANSWER_BYTES", ANSWER_LIMIT)
    fake = Oversized(mode)
    app = web.Application()
    app.router.add_get("/api/v1/", fake.info)
    app.router.add_get("/api/v1/data-ids", fake.listing)
    app.router.add_get("/api/v1/dimensions/{element}/records", fake.listing)
    async with served_app(app) as url, AsyncButler(url) as remote:
        with pytest.raises(ServerError) as info:
            await remote.query_data_ids(["visit"])
        assert f"the server's answer is longer than {ANSWER_LIMIT:,} bytes" in str(info.value)
        assert "/api/v1/data-ids" in str(info.value)
        if mode == "streamed":  # read up to the limit, not past it (a chunk of slack)
            assert ANSWER_LIMIT <= fake.sent < OVERSIZED
        sent_before, fake.sent = fake.sent, 0
        source = await asyncio.to_thread(HttpSource, url)
        try:
            with pytest.raises(ServerError, match=f"longer than {ANSWER_LIMIT:,} bytes"):
                await asyncio.to_thread(source.query_dimension_records, "visit")
        finally:
            source.close()
        assert sent_before > 0
        assert fake.sent > 0


FILE_SIZE = 64 * 2**20


def file_byte(i: int) -> int:
    return i % 251  # a prime period: a slice from the wrong offset cannot match


class IgnoresRange:
    """A server (or a proxy in front of one) that answers every file request whole."""

    def __init__(self) -> None:
        self.sent = 0
        self.pattern = bytes(file_byte(i) for i in range(251)) * (2**18 // 251 + 2)

    async def whole_file(self, request: web.Request) -> web.StreamResponse:
        size = FILE_SIZE if request.match_info["name"] == "big.fits" else 1000
        response = web.StreamResponse(headers={"Content-Type": "application/fits"})
        response.content_length = size
        await response.prepare(request)
        chunk = 2**18 // 251 * 251  # whole periods: every chunk starts the pattern again
        try:
            while self.sent < size:
                piece = self.pattern[: min(chunk, size - self.sent)]
                await response.write(piece)
                self.sent += len(piece)
        except ConnectionError:
            pass  # the client hung up once it had what it asked for
        return response


@pytest.mark.timeout(60)
async def test_ranges_from_a_server_that_ignores_range_keep_only_what_was_asked() -> None:
    fake = IgnoresRange()
    app = web.Application()
    app.router.add_get("/files/{name}", fake.whole_file)
    wanted = [(10, 5), (300_000, 3), (2 * 2**20 + 7, 4096)]
    async with served_app(app) as url:
        client = RepositoryClient(ClientSettings.from_args(url, range_gap=0))
        try:
            got = await client.fetch_ranges("big.fits", wanted)
            assert got == [bytes(file_byte(i) for i in range(o, o + n)) for o, n in wanted]
            # Reading stopped after the last byte asked for, not at the end of 64 MiB.
            assert fake.sent < 16 * 2**20
            fake.sent = 0
            with pytest.raises(CorruptFileError, match=r"did not send bytes 990\+20"):
                await client.fetch_ranges("small.fits", [(0, 4), (990, 20)])
        finally:
            await client.close()


async def test_pages_that_end_are_followed_to_their_end(server: ButlerServer) -> None:
    """The checks leave a real server's pages alone (pages of 8 rows: 8, 8, 4)."""
    async with AsyncButler(server.url, token=READ_TOKEN, collections="raw") as remote:
        await remote.info()
        remote.api.page_size = 8
        assert len(await remote.query_datasets("flux")) == DATASETS
        assert len(await remote.query_data_ids(["visit", "detector"], dataset_type="flux")) == (
            DATASETS
        )
        assert len(await remote.query_datasets("flux", limit=12)) == 12
        assert remote.client.requests_sent == 1 + 3 + 3 + 2


# -- a full disk -----------------------------------------------------------------------------


@contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Path]:
    """A small tmpfs mounted at ``path`` (root only), unmounted at the end."""
    if os.geteuid() != 0:
        unavailable("mounting a small tmpfs needs root")
    path.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    if mounted.returncode:
        unavailable(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill(disk: Path, name: str, leave: int) -> int:
    """Take all of ``disk``'s free space but ``leave`` bytes with a file; its size."""
    size = max(0, shutil.disk_usage(disk).free - leave)
    with open(disk / name, "wb") as filler:
        if size:
            os.posix_fallocate(filler.fileno(), 0, size)
    return size


class Filler:
    """Passes every request on to the server, and fills the destination's disk (as another
    writer would) when the first file request comes: after the pull's plan found room."""

    def __init__(self, upstream: str, disk: Path, leave: int) -> None:
        self.upstream = upstream
        self.disk = disk
        self.leave = leave
        self.filled = 0
        self.session: aiohttp.ClientSession | None = None

    async def handle(self, request: web.Request) -> web.StreamResponse:
        assert self.session is not None
        is_file = request.path.startswith("/files/") or request.path.endswith("/files/bundle")
        if is_file and not self.filled:
            self.filled = fill(self.disk, "other-writer", self.leave)
        return await forward(
            self.session,
            request,
            self.upstream,
            request.raw_path,
            request.headers.get("Authorization"),
        )


def assert_clear_disk_full_message(stderr: str, dest: Path) -> None:
    assert "Traceback" not in stderr
    assert f"the destination {dest} is full" in stderr
    assert "is free" in stderr
    assert "are recorded and valid" in stderr
    assert "run the same command again" in stderr


async def test_a_destination_that_fills_up_says_so_keeps_what_is_committed_and_resumes(
    server: ButlerServer, tmp_path: Path, token_file: Path
) -> None:
    total = DATASETS * ARRAY_BYTES
    # Room for the plan (the files and its 64 MiB margin), until the other writer comes.
    with tmpfs(tmp_path / "disk", "80m") as disk:
        dest = disk / "mirror"
        first = await asyncio.to_thread(
            run_mirror, *pull_args(server.url, dest, token_file, "--where", "visit IN (100, 101)")
        )
        assert first.returncode == 0, first.stderr
        filler = Filler(server.url, disk, leave=total // 2)
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", filler.handle)
        async with aiohttp.ClientSession() as session, served_app(app) as front_url:
            filler.session = session
            full = await asyncio.to_thread(run_mirror, *pull_args(front_url, dest, token_file))
        assert filler.filled > 0
        assert full.returncode == 1
        assert_clear_disk_full_message(full.stderr, dest)

        # What was committed is whole; nothing is claimed that is not there.
        verify = await asyncio.to_thread(run_mirror, "verify", str(dest))
        assert verify.returncode == 0, verify.stderr
        with DirectButler(dest) as mirror:
            committed = len(mirror.query_datasets("flux", "raw"))
            assert mirror.verify() == []
        assert 8 <= committed < DATASETS  # the first pull's 8, at least
        assert f"The {committed} datasets mirrored so far are recorded" in full.stderr

        # Room again: the same command resumes and completes.
        (disk / "other-writer").unlink()
        again = await asyncio.to_thread(run_mirror, *pull_args(server.url, dest, token_file))
        assert again.returncode == 0, again.stderr
        with DirectButler(dest) as mirror:
            assert len(mirror.query_datasets("flux", "raw")) == DATASETS
            assert mirror.verify() == []

        # A disk full to the last byte, with nothing to fetch: the pull's own records do
        # not fit, and it says so too.
        fill(disk, "other-writer", 0)
        nothing = await asyncio.to_thread(
            run_mirror, *pull_args(server.url, dest, token_file, "--json")
        )
        assert nothing.returncode == 1
        assert_clear_disk_full_message(nothing.stderr, dest)
        assert f"The {DATASETS} datasets mirrored so far" in nothing.stderr
        assert "no file left to fetch" in nothing.stderr
        # So does any command that meets the full disk (even a read needs room for SQLite's
        # shared-memory file); with room again, the mirror is whole.
        verify = await asyncio.to_thread(run_mirror, "verify", str(dest))
        assert "Traceback" not in verify.stderr
        if verify.returncode:
            assert f"the disk under {dest} is full" in verify.stderr
        # A repair on a disk with room for the databases but not for a file says so once,
        # and leaves the damaged file as it was.
        (disk / "other-writer").unlink()
        fill(disk, "other-writer", ARRAY_BYTES // 2)
        with DirectButler(dest) as mirror:
            ref = mirror.query_datasets("flux", "raw")[0]
            damaged = mirror.root / mirror.get_file_info(ref).path
        original = damaged.read_bytes()
        bad = bytes(b ^ 0xFF for b in original[:64]) + original[64:]  # same size: fits
        damaged.write_bytes(bad)
        repair = await asyncio.to_thread(
            run_mirror, "verify", str(dest), "--repair", "--token-file", str(token_file)
        )
        assert repair.returncode == 1
        assert "Traceback" not in repair.stderr
        assert f"the disk under {dest} is full" in repair.stderr, repair.stderr
        assert "0 file(s) repaired before it filled" in repair.stderr
        assert "run the same command again" in repair.stderr
        assert damaged.read_bytes() == bad
        assert not list(damaged.parent.glob(".repair-*"))
        (disk / "other-writer").unlink()
        repair = await asyncio.to_thread(
            run_mirror, "verify", str(dest), "--repair", "--token-file", str(token_file)
        )
        assert repair.returncode == 0, repair.stderr
        assert "Repaired 1 file(s); 0 could not be repaired" in repair.stdout
        assert damaged.read_bytes() == original
        verify = await asyncio.to_thread(run_mirror, "verify", str(dest))
        assert verify.returncode == 0, verify.stderr
        with DirectButler(dest) as mirror:
            assert len(mirror.query_datasets("flux", "raw")) == DATASETS


def test_a_full_disk_under_the_remote_file_cache_is_said_clearly(
    server: ButlerServer, tmp_path: Path
) -> None:
    with tmpfs(tmp_path / "disk", "384k") as disk:
        cache = disk / "cache"
        with Butler(server.url, token=READ_TOKEN, collections="raw", cache_dir=cache) as remote:
            ref = remote.query_datasets("flux", visit=100, detector=0)[0]
            with pytest.raises(CacheFullError) as info:
                remote.get_local_path(ref)
            message = str(info.value)
            assert f"the file cache at {cache} is full" in message
            assert "cache_dir=" in message
            assert not list(cache.glob("download-*"))  # no half-written download is left
            assert remote.get(ref).shape == (ARRAY_BYTES // 8,)  # reads need no cache
        with Butler(
            server.url, token=READ_TOKEN, collections="raw", cache_dir=tmp_path / "roomy"
        ) as remote:
            assert remote.get_local_path(ref).stat().st_size > ARRAY_BYTES
