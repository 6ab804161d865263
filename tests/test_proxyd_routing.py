"""proxyd is a reverse proxy only (issue 4, item 2), tested on the wire.

Raw sockets send what a client library would normalise or refuse to send (absolute-form
targets, CONNECT, dot-segments, encoded slashes, backslashes); nginx's access log proves none
of it reached the origin. A recording origin shows which fields proxyd forwards and returns
(hop-by-hop ones never), and that unsafe methods pass uncached and invalidate what they touch.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from fixtures_nginx import write_object
from nginx import NginxOrigin
from proxies import Proxy, RecordingOrigin, raw_request, request, running


@pytest.fixture(scope="module")
def origin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NginxOrigin]:
    base = tmp_path_factory.mktemp("routing")
    with NginxOrigin(base / "root", base / "nginx") as nginx:
        yield nginx


@pytest.fixture(scope="module")
def proxy(origin: NginxOrigin, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proxy]:
    with running(Proxy({"o": origin.url}, tmp_path_factory.mktemp("routing-proxy"))) as p:
        yield p


REFUSED = [
    # (raw request line, status, words of the message)
    ("GET http://evil.example/ HTTP/1.1", 400, "absolute-form"),
    ("GET http://127.0.0.1/o/a.bin HTTP/1.1", 400, "absolute-form"),
    ("GET https://evil.example/o/a.bin HTTP/1.1", 400, "absolute-form"),
    ("CONNECT evil.example:443 HTTP/1.1", 405, "CONNECT is not supported"),
    ("CONNECT 127.0.0.1:22 HTTP/1.1", 405, "not a tunnel"),
    ("TRACE /o/a.bin HTTP/1.1", 405, "TRACE is not allowed"),
    ("OPTIONS * HTTP/1.1", 400, "asterisk-form"),
    ("GET /nope/a.bin HTTP/1.1", 404, "no upstream named nope"),
    ("GET /a.bin HTTP/1.1", 404, "no upstream named a.bin"),
    ("GET //o/a.bin HTTP/1.1", 404, "no upstream named in the path"),
    ("GET /o/../a.bin HTTP/1.1", 400, "dot-segments"),
    ("GET /o/sub/../../etc/passwd HTTP/1.1", 400, "dot-segments"),
    ("GET /o/./a.bin HTTP/1.1", 400, "dot-segments"),
    ("GET /o/%2e%2e/a.bin HTTP/1.1", 400, "dot-segments"),
    ("GET /o/.%2E/a.bin HTTP/1.1", 400, "dot-segments"),
    ("GET /o/..;/a.bin HTTP/1.1", 400, "dot-segments"),
    ("GET /o/..%2f..%2fetc%2fpasswd HTTP/1.1", 400, "encoded slash"),
    ("GET /o/x%2Fa.bin HTTP/1.1", 400, "encoded slash"),
    ("GET /o/x\\..\\a.bin HTTP/1.1", 400, "backslash"),
    ("GET /o/x%5c..%5ca.bin HTTP/1.1", 400, "backslash"),
    ("GET /o/a.bin%00.txt HTTP/1.1", 400, "NUL"),
    ("GET /o/a%zz.bin HTTP/1.1", 400, "percent-encoding"),
]


@pytest.mark.parametrize(("line", "status", "words"), REFUSED, ids=[r[0] for r in REFUSED])
def test_refuses_everything_but_configured_upstream_paths(
    origin: NginxOrigin, proxy: Proxy, line: str, status: int, words: str
) -> None:
    write_object(origin.root_dir, "a.bin", 1000)
    mark = origin.mark()
    got, headers, body = raw_request(
        proxy.port, f"{line}\r\nHost: evil.example\r\nConnection: close\r\n\r\n".encode()
    )
    assert got == status, body
    assert words in body.decode(), body
    if status == 405:
        assert "GET" in headers["allow"]
        assert "CONNECT" not in headers["allow"]
    if status == 404:
        assert "/o/" in body.decode()  # the configured upstreams are named
    assert origin.access_log(mark) == []  # nothing reached the origin
    [entry] = [e for e in proxy.settled_access_log() if e["target"] == line.split()[1]][-1:]
    assert entry["cache"] == "REFUSED"
    assert entry["status"] == status


def test_configured_upstream_path_is_forwarded(origin: NginxOrigin, proxy: Proxy) -> None:
    data = write_object(origin.root_dir, "sub/b.bin", 5000, seed=3)
    got, headers, body = raw_request(
        proxy.port, b"GET /o/sub/b.bin HTTP/1.1\r\nHost: evil.example\r\nConnection: close\r\n\r\n"
    )
    assert got == 200
    assert body == data
    # The Host the client sent is not where the request went.
    assert [e["uri"] for e in origin.access_log()][-1] == "/sub/b.bin"


# -- hop-by-hop fields --------------------------------------------------------------------------

CLIENT_HOP = {
    "Connection": "keep-alive, X-Hop-Req",
    "X-Hop-Req": "secret-per-connection",
    "Keep-Alive": "timeout=300",
    "TE": "trailers",
    "Trailer": "X-Checksum",
    "Proxy-Authorization": "Basic cHJveHk6c2VjcmV0",
    "Proxy-Connection": "keep-alive",
    "X-End-To-End": "kept",
}
HOP_REQUEST_FIELDS = {
    "x-hop-req",
    "keep-alive",
    "te",
    "trailer",
    "proxy-authorization",
    "proxy-connection",
}
ORIGIN_HOP = {
    "Connection": "X-Hop-Resp",
    "X-Hop-Resp": "secret-per-connection",
    "Keep-Alive": "timeout=5, max=1000",
    "Proxy-Authenticate": 'Basic realm="origin"',
    "Upgrade": "h2c",
    "Trailer": "X-Checksum",
    "X-Origin-End-To-End": "kept",
}
HOP_RESPONSE_FIELDS = {"x-hop-resp", "proxy-authenticate", "upgrade", "trailer"}


@pytest.fixture
def recording() -> Iterator[RecordingOrigin]:
    with RecordingOrigin() as rec:
        yield rec


def test_hop_by_hop_fields_are_neither_forwarded_nor_returned(
    recording: RecordingOrigin, tmp_path: Path
) -> None:
    recording.response_headers = dict(ORIGIN_HOP)
    recording.put("/cached.bin", b"c" * 200_000)
    recording.put("/nostore.bin", b"n" * 1000)
    recording.headers_for["/nostore.bin"] = {"Cache-Control": "no-store"}
    with running(Proxy({"r": recording.url}, tmp_path / "p")) as proxy:
        cases = [
            ("GET", "cached.bin", None, {"MISS"}),  # probe and block fetch
            ("GET", "cached.bin", None, {"HIT", "REVALIDATED"}),  # from cache
            ("GET", "nostore.bin", None, {"PASS"}),  # forwarded as is
            ("POST", "cached.bin", b"payload", {"PASS"}),
            ("PUT", "put.bin", b"new object", {"PASS"}),
        ]
        for method, name, body, caches in cases:
            before = len(recording.requests)
            response = request(proxy.url, f"r/{name}", CLIENT_HOP, method=method, body=body)
            assert response.status in (200, 204), (method, name, response.status)
            cache = response.header("X-Cache")
            assert cache in caches, (method, name, cache)
            # What went to the origin (nothing for a hit): checked below, request by request.
            assert (len(recording.requests) == before) == (cache == "HIT"), (method, name)
            returned = {k.lower() for k in response.headers}
            assert not returned & HOP_RESPONSE_FIELDS, (method, name, returned)
            assert response.header("Keep-Alive") != ORIGIN_HOP["Keep-Alive"]
            assert "X-Hop-Resp" not in (response.header("Connection") or "")
            # End-to-end fields of the origin are passed on.
            assert response.header("X-Origin-End-To-End") == "kept", (method, name)
            for sent in recording.requests[before:]:
                assert not sent.names() & HOP_REQUEST_FIELDS, (method, name, sent.headers)
                assert "x-hop-req" not in (sent.header("Connection") or "").lower()
                # Host names the upstream, never what the client said.
                assert sent.header("Host") == f"127.0.0.1:{recording.port}"
        # Forwarded requests (not cache fills) carry the client's end-to-end fields and Via.
        post = recording.requests_for("/cached.bin")[-1]
        assert post.method == "POST"
        assert post.body == b"payload"
        assert post.header("X-End-To-End") == "kept"
        assert recording.objects["/put.bin"] == b"new object"
        # Every request to the origin, fills and revalidations too, names this proxy in Via
        # (RFC 9110 §7.6.3), by the same name: how a loop back to it is noticed.
        vias = {sent.header("Via") for sent in recording.requests}
        assert len(vias) == 1, vias
        (via,) = vias
        assert re.fullmatch(r"1\.1 proxyd-[0-9a-f]{8}", via or ""), via


def _looping(workdir: Path, names: list[str]) -> list[Proxy]:
    """Proxies each of whose upstream ``o`` is the next one, the last's the first."""
    proxies = [Proxy({"o": "http://127.0.0.1:9/"}, workdir / name) for name in names]
    for this, following in zip(proxies, [*proxies[1:], proxies[0]], strict=True):
        this.upstreams = {"o": following.upstream_url("o")}
    return proxies


@pytest.mark.timeout(60)
@pytest.mark.parametrize("hops", [1, 2])
def test_a_forwarding_loop_is_refused_not_waited_on(tmp_path: Path, hops: int) -> None:
    """An upstream URL that leads back to the proxy (itself, or through another proxyd):
    before, the fill waited on itself until the client gave up."""
    proxies = _looping(tmp_path, [f"p{i}" for i in range(hops)])
    with contextlib.ExitStack() as stack:
        for proxy in proxies:
            stack.enter_context(running(proxy))
        for method in ("GET", "POST"):
            response = request(proxies[0].url, "o/a.fits", {"Range": "bytes=0-9"}, method=method)
            assert response.status == 508, (method, response.status)
            assert b"forwarding loop" in response.body
            assert b"an upstream URL in the configuration leads back" in response.body
        refused = [e for p in proxies for e in p.settled_access_log() if e["status"] == 508]
        # Each request went round the loop once: one refusal, and each proxy in between
        # passed the 508 back (not stored: a refusal says no-store).
        assert sum(e["cache"] == "REFUSED" for e in refused) == 2
        assert len(refused) == 2 * (hops + 1)


def test_tiers_of_proxyd_are_no_loop(recording: RecordingOrigin, tmp_path: Path) -> None:
    recording.put("/a.bin", b"a" * 1000)
    parent = Proxy({"r": recording.url}, tmp_path / "parent")
    with running(parent):
        child = Proxy({"r": parent.upstream_url("r")}, tmp_path / "child")
        with running(child):
            response = request(child.url, "r/a.bin")
            assert (response.status, response.body) == (200, b"a" * 1000)
    (via,) = {sent.header("Via") for sent in recording.requests}
    names = re.fullmatch(r"1\.1 (proxyd-[0-9a-f]{8}), 1\.1 (proxyd-[0-9a-f]{8})", via or "")
    assert names is not None, via
    assert names[1] != names[2]  # each proxy draws its own name


def test_unsafe_methods_pass_uncached_and_invalidate(
    recording: RecordingOrigin, tmp_path: Path
) -> None:
    recording.response_headers = {"Cache-Control": "public, max-age=3600"}
    old, new = b"old-" * 50_000, b"new!" * 60_000
    recording.put("/obj.bin", old)
    with running(Proxy({"r": recording.url}, tmp_path / "p")) as proxy:
        first = proxy.get("/r/obj.bin")
        assert (first.status, first.header("X-Cache"), first.body) == (200, "MISS", old)
        count = len(recording.requests)
        second = proxy.get("/r/obj.bin")
        assert (second.header("X-Cache"), second.body) == ("HIT", old)
        assert len(recording.requests) == count  # fresh (max-age=3600): no origin contact

        # PUT through the proxy: forwarded with its body, not cached, and it invalidates.
        put = request(proxy.url, "r/obj.bin", method="PUT", body=new)
        assert (put.status, put.header("X-Cache")) == (204, "PASS")
        assert recording.requests[-1].method == "PUT"
        assert recording.requests[-1].body == new
        third = proxy.get("/r/obj.bin")
        assert (third.header("X-Cache"), third.body) == ("MISS", new)

        # POST invalidates too (RFC 9111 §4.4), although the object did not change here.
        assert proxy.get("/r/obj.bin").header("X-Cache") == "HIT"
        post = request(proxy.url, "r/obj.bin", method="POST", body=b"{}")
        assert (post.status, post.header("X-Cache")) == (204, "PASS")
        again = proxy.get("/r/obj.bin")
        assert (again.header("X-Cache"), again.body) == ("MISS", new)

        # DELETE: forwarded, and the cached copy is gone (no stale 200 for a deleted object).
        delete = request(proxy.url, "r/obj.bin", method="DELETE")
        assert (delete.status, delete.header("X-Cache")) == (204, "PASS")
        gone = proxy.get("/r/obj.bin")
        assert gone.status == 404
        # Recreated at the origin: cached afresh.
        recording.put("/obj.bin", old)
        assert proxy.get("/r/obj.bin").body == old
        assert proxy.get("/r/obj.bin").header("X-Cache") == "HIT"
        methods = [r.method for r in recording.requests_for("/obj.bin")]
        assert methods.count("PUT") == 1
        assert methods.count("POST") == 1
        assert methods.count("DELETE") == 1


def test_a_trusted_balancers_clients_are_logged(recording: RecordingOrigin, tmp_path: Path) -> None:
    recording.put("/a.bin", b"a" * 1000)
    forwarded = {"X-Forwarded-For": "198.51.100.1, 203.0.113.7"}
    trusting = Proxy(
        {"r": recording.url}, tmp_path / "trusting", config={"trusted_proxies": ["127.0.0.1"]}
    )
    with running(trusting):
        mark = trusting.mark()
        assert request(trusting.url, "r/a.bin", forwarded).status == 200  # a miss
        hit = request(trusting.url, "r/a.bin", forwarded)  # the fast lane's hit
        assert (hit.status, hit.header("X-Cache")) == (200, "HIT")
        assert request(trusting.url, "r/a.bin").status == 200
        clients = [e["client"] for e in trusting.entries_since(mark, 3)]
        # The balancer's (127.0.0.1) nearest address; what the client wrote is not believed.
        assert clients == ["203.0.113.7", "203.0.113.7", "127.0.0.1"]
    with running(Proxy({"r": recording.url}, tmp_path / "plain")) as plain:
        mark = plain.mark()
        assert request(plain.url, "r/a.bin", forwarded).status == 200
        assert [e["client"] for e in plain.entries_since(mark, 1)] == ["127.0.0.1"]
