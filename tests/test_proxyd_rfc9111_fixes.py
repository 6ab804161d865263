"""RFC 9111 cases the public conformance suite found proxyd getting wrong (issue 22, item 3):
storing responses of other statuses than 200, the Age of a list, CDN-Cache-Control.

Pure policy tests where the policy decides; a small scripted aiohttp origin where the
shell carries it out (nginx cannot send a 404 with max-age and a body of our choosing)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from aiohttp import web
from proxies import Proxy, Response, free_port, request, running

from proxyd.policy import freshness
from proxyd.policy.cdn import cdn_cache_control
from proxyd.settings import ProxySettings

SETTINGS = ProxySettings()

# -- Age: the first member of a list ------------------------------------------------------------


@pytest.mark.parametrize(
    ("lines", "age"),
    [
        (["7200, 0"], 7200),  # old: stale, not fresh (age-parse-suffix)
        (["0, 7200"], 0),
        (["7200", "0"], 7200),  # two field lines
        (["0", "7200"], 0),
        (["x, 5"], 0),  # an invalid first member: no Age
        (["-1"], 0),
    ],
)
def test_age_of_a_list_is_its_first_member(lines: list[str], age: int) -> None:
    headers = [("Cache-Control", "max-age=3600"), *(("Age", line) for line in lines)]
    stored = freshness.StoredMeta.from_response(200, headers, request_time=0, response_time=0)
    assert stored.age_value == age


# -- CDN-Cache-Control (RFC 9213) ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "obeyed"),
    [
        ("max-age=3600", "max-age=3600"),
        ("MaX-aGe=3600", "max-age=3600"),
        ("foobar, max-age=3600", "foobar, max-age=3600"),
        ("private", "private"),
        ('max-age=10, x="a,b"', 'max-age=10, x="a,b"'),
        ("max-age =100", None),  # not a Structured Field: ignored as a whole
        ("max-age= 100", None),
        ("max-age=10000, &&&&&", None),
        ('max-age="10000"', None),  # max-age must be an Integer
        ('x="open', None),
        # Escapes inside strings: an escaped quote does not end the string (the comma in it
        # is not a separator), an escaped backslash does not escape the closing quote.
        ('a="x\\",y", max-age=10', 'a="x\\",y", max-age=10'),
        ('a="x\\\\", max-age=10', 'a="x\\\\", max-age=10'),
    ],
)
def test_cdn_cache_control_is_parsed_as_a_structured_dictionary(
    value: str, obeyed: str | None
) -> None:
    assert cdn_cache_control({"CDN-Cache-Control": value}) == obeyed


def test_cdn_cache_control_replaces_cache_control() -> None:
    fresh_cdn = [("Cache-Control", "no-store"), ("CDN-Cache-Control", "max-age=600")]
    assert freshness.storable("GET", False, 200, fresh_cdn)
    assert freshness.freshness_lifetime(fresh_cdn, 0.0, SETTINGS) == 600
    private_cdn = [("Cache-Control", "max-age=600"), ("CDN-Cache-Control", "private")]
    assert not freshness.storable("GET", False, 200, private_cdn)
    no_store_cdn = [("Cache-Control", "max-age=600"), ("CDN-Cache-Control", "no-store")]
    assert not freshness.storable("GET", False, 200, no_store_cdn)
    # An invalid CDN-Cache-Control is ignored: Cache-Control applies.
    invalid = [("Cache-Control", "no-store"), ("CDN-Cache-Control", 'max-age="1"')]
    assert not freshness.storable("GET", False, 200, invalid)
    # Short CDN lifetime wins over a long Cache-Control one.
    short = [("Cache-Control", "max-age=3600"), ("CDN-Cache-Control", "max-age=1")]
    assert freshness.freshness_lifetime(short, 0.0, SETTINGS) == 1


# -- other statuses -----------------------------------------------------------------------------


@dataclass
class ScriptedOrigin:
    """Answers each path with a fixed (status, headers, body), counting requests."""

    answers: dict[str, tuple[int, dict[str, str], bytes]] = field(default_factory=dict)
    count: dict[str, int] = field(default_factory=dict)
    url: str = ""

    async def handle(self, request: web.Request) -> web.Response:
        self.count[request.path] = self.count.get(request.path, 0) + 1
        status, headers, body = self.answers[request.path]
        return web.Response(status=status, headers=headers, body=body or None)


@pytest.fixture
async def scripted() -> AsyncIterator[ScriptedOrigin]:
    origin = ScriptedOrigin()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", origin.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    origin.url = f"http://127.0.0.1:{port}/"
    try:
        yield origin
    finally:
        await runner.cleanup()


async def test_responses_of_other_statuses_are_stored_and_replayed_with_their_status(
    scripted: ScriptedOrigin, tmp_path: Path
) -> None:
    fresh = {"Cache-Control": "max-age=600", "Content-Type": "text/plain"}
    scripted.answers = {
        "/gone": (404, fresh, b"no such dataset\n"),
        "/moved": (301, {**fresh, "Location": "/elsewhere"}, b"moved\n"),
        "/empty": (204, {"Cache-Control": "max-age=600"}, b""),
        "/broken": (500, fresh, b"origin trouble\n"),
        "/plain404": (404, {"Content-Type": "text/plain"}, b"nothing to reuse it by\n"),
    }
    with running(Proxy({"o": scripted.url}, tmp_path / "proxy")) as proxy:

        def get(path: str, fields: dict[str, str] | None = None) -> Response:
            return request(proxy.url, "o" + path, fields or {})

        for path, (status, _, body) in scripted.answers.items():
            first = await asyncio.to_thread(get, path)
            assert (first.status, first.body) == (status, body), path
        for path in ("/gone", "/moved", "/empty", "/broken"):
            status, headers, body = scripted.answers[path]
            # Plain GETs (the fast lane's shape) and a ranged one: the stored status and
            # the whole body, never a 200 or a 206 made of a 404's bytes.
            for fields in ({}, {"Range": "bytes=0-2"}):
                again = await asyncio.to_thread(get, path, fields)
                assert (again.status, again.body) == (status, body), (path, fields)
                assert again.header("X-Cache") == "HIT"
                assert again.header("Content-Range") is None
            if "Location" in headers:
                assert again.header("Location") == headers["Location"]
            assert scripted.count[path] == 1, path
        # Neither fresh nor with a validator: never stored, the origin answers each time.
        await asyncio.to_thread(get, "/plain404")
        assert scripted.count["/plain404"] == 2


@pytest.mark.parametrize("directive", ["no-cache", "private"])
async def test_fields_a_qualified_directive_keeps_out_of_the_cache_reach_the_first_client(
    scripted: ScriptedOrigin, tmp_path: Path, directive: str
) -> None:
    headers = {
        "Cache-Control": f'{directive}="X-Secret", max-age=600',
        "X-Secret": "for the first client",
        "X-Public": "for everyone",
    }
    scripted.answers = {"/q": (200, headers, b"payload\n")}
    with running(Proxy({"o": scripted.url}, tmp_path / "proxy")) as proxy:
        first = await asyncio.to_thread(request, proxy.url, "o/q", {})
        assert (first.status, first.body, first.header("X-Cache")) == (200, b"payload\n", "MISS")
        assert first.header("X-Secret") == "for the first client"
        assert first.header("X-Public") == "for everyone"
        hit = await asyncio.to_thread(request, proxy.url, "o/q", {})
        assert (hit.body, hit.header("X-Cache")) == (b"payload\n", "HIT")
        assert hit.header("X-Secret") is None  # never stored (RFC 9111 §5.2.2.4, §5.2.2.7)
        assert hit.header("X-Public") == "for everyone"
        assert scripted.count["/q"] == 1


# -- an origin that does not speak HTTP ---------------------------------------------------------


async def test_a_malformed_answer_from_the_origin_is_a_502_not_a_500(tmp_path: Path) -> None:
    """The suite's origin once answered with a body longer than its Content-Length, whose
    tail became the next "status line": aiohttp refuses it, and proxyd answered 500 with a
    traceback in its log. It is the origin's fault: 502, naming the upstream."""

    async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"b06a4c96-fd4e not a status line\r\n\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(garbage, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        upstream = f"http://127.0.0.1:{port}/"
        with running(Proxy({"o": upstream}, tmp_path / "proxy")) as proxy:
            for path in ("o/a", "o/b"):
                got = await asyncio.to_thread(request, proxy.url, path, {})
                assert got.status == 502
                assert b"'o' sent a malformed response" in got.body
            assert "Traceback" not in proxy.log_text()
    finally:
        server.close()
        await server.wait_closed()
