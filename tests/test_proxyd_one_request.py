"""One upstream request per miss, carrying the client's own fields (issue 22, item 1).

A miss used to send the origin a request of proxyd's own first (a block-aligned range,
without the client's fields) and, when the answer could not be stored, the client's request
a second time. Here every origin request is counted per client request: a miss costs one,
it carries the client's end-to-end fields (hop-by-hop ones removed), and its answer is what
the client gets. Origins: :class:`proxies.RecordingOrigin` (records every field of every
request) and, for an origin that ignores Range, a small scripted aiohttp origin.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from aiohttp import web
from proxies import Proxy, RecordingOrigin, free_port, request, running

KiB = 1 << 10
BLOCK = 64 * KiB

CLIENT_FIELDS = {
    "Accept-Language": "fr-CH, fr;q=0.9",
    "X-Butler-Trace": "abc-123",
    "Connection": "keep-alive, X-Hop",
    "X-Hop": "must not cross",
}


def pattern(size: int, seed: int = 7) -> bytes:
    return bytes((i * 31 + seed + i // 251) % 256 for i in range(size))


def assert_client_fields(recorded_headers: list[tuple[str, str]]) -> None:
    names = {k.lower(): v for k, v in recorded_headers}
    assert names.get("accept-language") == "fr-CH, fr;q=0.9"
    assert names.get("x-butler-trace") == "abc-123"
    assert "x-hop" not in names  # named in Connection: hop-by-hop (RFC 9110 §7.6.1)


@pytest.fixture
def recording() -> Iterator[RecordingOrigin]:
    with RecordingOrigin() as origin:
        yield origin


@pytest.fixture
def proxy(recording: RecordingOrigin, tmp_path: Path) -> Iterator[Proxy]:
    with running(Proxy({"o": recording.url}, tmp_path / "proxy")) as p:
        yield p


def test_cold_get_is_one_request_with_the_clients_fields(
    recording: RecordingOrigin, proxy: Proxy
) -> None:
    data = pattern(3 * BLOCK + 100)
    recording.put("/a.bin", data)
    got = proxy.get("o/a.bin", CLIENT_FIELDS)
    assert (got.status, got.body) == (200, data)
    sent = recording.requests_for("/a.bin")
    assert len(sent) == 1
    assert_client_fields(sent[0].headers)
    again = proxy.get("o/a.bin")
    assert (again.status, again.body, again.header("X-Cache")) == (200, data, "HIT")
    assert len(recording.requests_for("/a.bin")) == 1


def test_cold_range_is_one_request_with_the_clients_fields(
    recording: RecordingOrigin, proxy: Proxy
) -> None:
    data = pattern(5 * BLOCK)
    recording.put("/r.bin", data)
    got = proxy.get("o/r.bin", {**CLIENT_FIELDS, "Range": "bytes=70000-70999"})
    assert got.status == 206
    assert got.body == data[70000:71000]
    assert got.header("Content-Range") == f"bytes 70000-70999/{len(data)}"
    sent = recording.requests_for("/r.bin")
    assert len(sent) == 1
    assert_client_fields(sent[0].headers)


def test_cold_head_is_one_request_with_the_clients_fields(
    recording: RecordingOrigin, proxy: Proxy
) -> None:
    data = pattern(2 * BLOCK)
    recording.put("/h.bin", data)
    got = proxy.get("o/h.bin", CLIENT_FIELDS, method="HEAD")
    assert (got.status, got.body, got.header("Content-Length")) == (200, b"", str(len(data)))
    sent = recording.requests_for("/h.bin")
    assert len(sent) == 1
    assert_client_fields(sent[0].headers)


@pytest.mark.parametrize("client_range", [None, "bytes=1000-1999"])
def test_a_no_store_answer_is_relayed_not_asked_for_again(
    recording: RecordingOrigin, proxy: Proxy, client_range: str | None
) -> None:
    data = pattern(BLOCK + 5000)
    recording.put("/n.bin", data)
    recording.headers_for["/n.bin"] = {"Cache-Control": "no-store"}
    fields = {**CLIENT_FIELDS, **({"Range": client_range} if client_range else {})}
    got = proxy.get("o/n.bin", fields)
    if client_range:
        assert (got.status, got.body) == (206, data[1000:2000])
        assert got.header("Content-Range") == f"bytes 1000-1999/{len(data)}"
    else:
        assert (got.status, got.body) == (200, data)
        assert got.header("Content-Range") is None
    assert got.header("Cache-Control") == "no-store"
    sent = recording.requests_for("/n.bin")
    assert len(sent) == 1
    assert_client_fields(sent[0].headers)
    proxy.get("o/n.bin")  # not stored: the origin answers again, once
    assert len(recording.requests_for("/n.bin")) == 2


def test_a_private_answer_to_a_cookie_is_relayed_once_with_the_cookie(
    recording: RecordingOrigin, proxy: Proxy
) -> None:
    data = pattern(300)
    recording.put("/me.json", data)
    recording.headers_for["/me.json"] = {"Cache-Control": "private", "Set-Cookie": "s=2"}
    got = proxy.get("o/me.json", {"Cookie": "session=alice"})
    assert (got.status, got.body, got.header("Set-Cookie")) == (200, data, "s=2")
    sent = recording.requests_for("/me.json")
    assert len(sent) == 1
    assert sent[0].header("Cookie") == "session=alice"


def test_a_vary_answer_is_fetched_with_the_field_it_varies_on(
    recording: RecordingOrigin, proxy: Proxy
) -> None:
    data = pattern(BLOCK // 2)
    recording.put("/v.txt", data)
    recording.headers_for["/v.txt"] = {"Vary": "Accept-Language", "Cache-Control": "max-age=600"}
    french = proxy.get("o/v.txt", {"Accept-Language": "fr"})
    assert (french.status, french.body) == (200, data)
    sent = recording.requests_for("/v.txt")
    assert [r.header("Accept-Language") for r in sent] == ["fr"]
    again = proxy.get("o/v.txt", {"Accept-Language": "fr"})
    assert (again.body, again.header("X-Cache")) == (data, "HIT")
    german = proxy.get("o/v.txt", {"Accept-Language": "de"})
    assert german.body == data
    assert [r.header("Accept-Language") for r in recording.requests_for("/v.txt")] == ["fr", "de"]


def test_a_conditional_miss_is_forwarded_once_and_its_304_relayed(
    recording: RecordingOrigin, proxy: Proxy
) -> None:
    data = pattern(2000)
    recording.put("/c.bin", data)
    etag = '"v1-2000"'  # RecordingOrigin's tag for version 1 of 2,000 bytes
    got = proxy.get("o/c.bin", {"If-None-Match": etag})
    assert (got.status, got.body, got.header("ETag")) == (304, b"", etag)
    sent = recording.requests_for("/c.bin")
    assert len(sent) == 1
    assert sent[0].header("If-None-Match") == etag


# -- an origin without range support ------------------------------------------------------------


@dataclass
class NoRangeOrigin:
    """Answers every GET with 200 and the whole body, whatever Range says (allowed: RFC 9110
    §14.2), with no validator: such an object longer than a block is not kept as blocks."""

    bodies: dict[str, bytes] = field(default_factory=dict)
    seen: list[tuple[str, str, dict[str, str]]] = field(default_factory=list)
    url: str = ""

    async def handle(self, request: web.Request) -> web.Response:
        self.seen.append((request.method, request.path, dict(request.headers)))
        body = self.bodies.get(request.path)
        if body is None:
            return web.Response(status=404)
        # Fresh for a while (no validator: only freshness lets the cache reuse it).
        headers = {"Content-Type": "application/octet-stream", "Cache-Control": "max-age=600"}
        return web.Response(body=body, headers=headers)


@pytest.fixture
async def no_range_origin() -> AsyncIterator[NoRangeOrigin]:
    origin = NoRangeOrigin()
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


async def test_an_origin_without_ranges_is_asked_once_per_miss(
    no_range_origin: NoRangeOrigin, tmp_path: Path
) -> None:
    import asyncio

    data = pattern(3 * BLOCK + 17)
    no_range_origin.bodies["/big.bin"] = data
    small = pattern(900, seed=3)
    no_range_origin.bodies["/small.bin"] = small
    with running(Proxy({"o": no_range_origin.url}, tmp_path / "proxy")) as proxy:

        def get(path: str, fields: dict[str, str]) -> tuple[int, bytes, str | None]:
            got = request(proxy.url, path, fields)
            return got.status, got.body, got.header("X-Cache")

        status, body, _ = await asyncio.to_thread(get, "o/big.bin", CLIENT_FIELDS)
        assert (status, body) == (200, data)
        assert len(no_range_origin.seen) == 1
        assert_client_fields(list(no_range_origin.seen[0][2].items()))
        status, body, _ = await asyncio.to_thread(get, "o/big.bin", {"Range": "bytes=10-19"})
        # Not stored (no validator, several blocks), the origin's whole answer is relayed.
        assert (status, body) == (200, data)
        assert len(no_range_origin.seen) == 2
        # A small object fits one block: stored from its one answer, then served from cache.
        assert (await asyncio.to_thread(get, "o/small.bin", {}))[:2] == (200, small)
        assert len(no_range_origin.seen) == 3
        status, body, cache = await asyncio.to_thread(get, "o/small.bin", {})
        assert (status, body, cache) == (200, small, "HIT")
        assert len(no_range_origin.seen) == 3


def test_a_revalidation_is_one_request_and_a_new_version_is_served_from_it(
    recording: RecordingOrigin, proxy: Proxy
) -> None:
    old, new = pattern(3000, seed=1), pattern(3100, seed=2)
    recording.put("/s.bin", old)
    recording.headers_for["/s.bin"] = {"Cache-Control": "max-age=0"}  # stale at once
    assert proxy.get("o/s.bin").body == old
    confirmed = proxy.get("o/s.bin", CLIENT_FIELDS)
    assert (confirmed.body, confirmed.header("X-Cache")) == (old, "REVALIDATED")
    sent = recording.requests_for("/s.bin")
    assert len(sent) == 2
    assert sent[1].header("If-None-Match") == '"v1-3000"'  # the stored validator
    assert_client_fields(sent[1].headers)
    recording.put("/s.bin", new)
    replaced = proxy.get("o/s.bin", CLIENT_FIELDS)
    assert (replaced.status, replaced.body) == (200, new)
    assert len(recording.requests_for("/s.bin")) == 3  # the new version came with the answer
    again = proxy.get("o/s.bin", {"Range": "bytes=3000-3099"})
    assert (again.body, again.header("X-Cache")) == (new[3000:], "REVALIDATED")
    assert len(recording.requests_for("/s.bin")) == 4


def test_requests_that_joined_a_fetch_not_stored_ask_for_themselves_once(
    recording: RecordingOrigin, proxy: Proxy
) -> None:
    """Eight clients at once for an object the origin says not to store: the first one's
    request is the fetch they all wait for; its answer is relayed to it, and each of the
    seven others (possibly other users) sends its own request, once: 8 in all, not 9."""
    from concurrent.futures import ThreadPoolExecutor

    from proxies import wait_until

    data = pattern(BLOCK + 999)
    recording.put("/crowd.bin", data)
    recording.headers_for["/crowd.bin"] = {"Cache-Control": "no-store"}
    recording.hang = True  # the first request waits until all have joined it
    with ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(proxy.get, "o/crowd.bin") for _ in range(8)]
        wait_until(
            lambda: proxy.metric_sum("proxyd_coalesced_waits_total") >= 7,
            timeout=20,
            what="seven requests joined the first one's fetch",
        )
        assert len(recording.requests_for("/crowd.bin")) == 1
        recording.hang = False
        answers = [f.result(timeout=30) for f in futures]
    assert [(a.status, a.body) for a in answers] == [(200, data)] * 8
    assert len(recording.requests_for("/crowd.bin")) == 8
