"""Validation and change (issue 4, item 5), against nginx.

Freshness per RFC 9111: nginx sends Last-Modified and an ETag and no Cache-Control, so files
with an old mtime are heuristically fresh and files written just now are stale at once (and
revalidated with a 304); extra locations add ``Cache-Control: max-age=0``, ``no-store``,
``private`` and ``Set-Cookie``. An object replaced at the origin, between requests or in the
middle of a long read, never yields a response mixing bytes of two versions.
"""

from __future__ import annotations

import concurrent.futures
import http.client
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fixtures_nginx import write_object
from nginx import Location, NginxOrigin
from proxies import BLOCK, Proxy, running, write_old

SIZE = 6 * BLOCK + 100


@pytest.fixture(scope="module")
def origin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NginxOrigin]:
    base = tmp_path_factory.mktemp("validation")
    with NginxOrigin(
        base / "root",
        base / "nginx",
        locations=[
            Location("/maxage0/", headers={"Cache-Control": "max-age=0"}),
            Location("/nostore/", headers={"Cache-Control": "no-store"}),
            Location("/private-cc/", headers={"Cache-Control": "private, max-age=3600"}),
            Location(
                "/cookie/",
                headers={
                    "Cache-Control": "public, max-age=3600",
                    "Set-Cookie": "session=s3cret-for-the-first-client; Path=/",
                },
            ),
        ],
    ) as nginx:
        yield nginx


@pytest.fixture(scope="module")
def proxy(origin: NginxOrigin, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proxy]:
    config = {"max_fetch_bytes": "256KiB", "readahead_bytes": "256KiB"}
    workdir = tmp_path_factory.mktemp("validation-proxy")
    with running(Proxy({"o": origin.url}, workdir, config=config)) as p:
        yield p


def requests_for(origin: NginxOrigin, mark: int, path: str) -> list[dict[str, Any]]:
    return [e for e in origin.access_log(mark) if e["path"] == path]


def replace(root: Path, name: str, size: int, seed: int, mtime: float) -> bytes:
    """Replace a file atomically (a new inode: nginx never sends a torn file) with another
    mtime, hence another ETag and Last-Modified."""
    tmp = write_object(root, name + ".tmp", size, seed)
    os.utime(root / (name + ".tmp"), (mtime, mtime))
    os.replace(root / (name + ".tmp"), root / name)
    return tmp


def test_stale_object_is_revalidated_with_a_304(origin: NginxOrigin, proxy: Proxy) -> None:
    # max-age=0: stale as soon as it is stored (a file written just now would do too, but
    # its heuristic freshness, a tenth of a second or so, makes for a race).
    data = write_old(origin.root_dir, "new.bin", SIZE, seed=1)
    assert proxy.get("/o/maxage0/new.bin").header("X-Cache") == "MISS"
    mark = origin.mark()
    again = proxy.get("/o/maxage0/new.bin")
    assert (again.status, again.header("X-Cache"), again.body) == (200, "REVALIDATED", data)
    [check] = requests_for(origin, mark, "/maxage0/new.bin")
    assert check["status"] == 304  # a conditional request, answered without a body
    assert check["body_bytes_sent"] == 0


def test_fresh_object_is_served_without_asking(origin: NginxOrigin, proxy: Proxy) -> None:
    data = write_old(origin.root_dir, "old.bin", SIZE, seed=2, days=30)
    assert proxy.get("/o/old.bin").body == data
    mark = origin.mark()
    hit = proxy.get("/o/old.bin")
    assert (hit.header("X-Cache"), hit.body) == ("HIT", data)
    assert int(hit.header("Age") or "-1") >= 0
    assert requests_for(origin, mark, "/old.bin") == []
    # A client that insists (no-cache, a browser's reload) gets a revalidation.
    reload = proxy.get("/o/old.bin", {"Cache-Control": "no-cache"})
    assert (reload.header("X-Cache"), reload.body) == ("REVALIDATED", data)
    assert [e["status"] for e in requests_for(origin, mark, "/old.bin")] == [304]


def test_replaced_object_is_served_new_between_requests(origin: NginxOrigin, proxy: Proxy) -> None:
    root = origin.root_dir
    old = replace(root, "change.bin", SIZE, seed=3, mtime=time.time() - 86400 * 30)
    # max-age=0: the proxy revalidates every request, so it sees the change at once.
    assert proxy.get("/o/maxage0/change.bin").body == old
    first = proxy.get("/o/maxage0/change.bin", {"Range": "bytes=1000-1999"})
    assert first.body == old[1000:2000]
    etag = first.header("ETag")
    for size, seed, days in ((SIZE + 5000, 4, 20), (SIZE, 5, 10), (100, 6, 5)):
        new = replace(root, "change.bin", size, seed=seed, mtime=time.time() - 86400 * days)
        full = proxy.get("/o/maxage0/change.bin")
        assert full.status == 200
        assert full.body == new  # all new bytes, none of the old ones
        assert full.header("Content-Length") == str(size)
        assert full.header("ETag") != etag
        etag = full.header("ETag")
        ranged = proxy.get("/o/maxage0/change.bin", {"Range": "bytes=50-99"})
        assert ranged.body == new[50:100]
        assert ranged.header("Content-Range") == f"bytes 50-99/{size}"
        assert ranged.header("X-Cache") == "REVALIDATED"
    # A heuristically fresh copy is served until it expires (RFC 9111 §4.2.2) ... unless
    # the client asks for a revalidation, which then finds the new version.
    cached = replace(root, "fresh.bin", SIZE, seed=7, mtime=time.time() - 86400 * 30)
    assert proxy.get("/o/fresh.bin").body == cached
    newer = replace(root, "fresh.bin", SIZE + 1, seed=8, mtime=time.time() - 86400 * 29)
    assert proxy.get("/o/fresh.bin").body == cached
    fetched = proxy.get("/o/fresh.bin", {"Cache-Control": "max-age=0"})
    assert fetched.body == newer
    assert proxy.get("/o/fresh.bin").body == newer


def test_replacing_an_object_during_a_long_read_never_mixes_versions(
    origin: NginxOrigin, proxy: Proxy
) -> None:
    """The proxy fetches a 16 MiB object in 256 KiB runs, each only as the client gets near
    it; the client reads slowly, and the file is replaced after 1 MiB. The rest of the
    response can only come from runs of the new version, which the proxy must refuse
    (If-Match on the old ETag gets a 412): the client sees a truncated body, every byte of
    it from the old version, and the next request gets the new version whole.

    The client asks for ``bytes=0-``: a range request is fetched in runs from its first
    block. (A GET without Range is fetched in one request for the whole object since issue
    22, which nginx answers from the file it opened, all of the old version.)"""
    root = origin.root_dir
    size = 16 << 20
    old = replace(root, "long.bin", size, seed=9, mtime=time.time() - 86400 * 30)
    mark = origin.mark()
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=30) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        sock.sendall(
            b"GET /o/long.bin HTTP/1.1\r\nHost: proxy\r\nRange: bytes=0-\r\n"
            b"Connection: close\r\n\r\n"
        )
        received = b""
        new = b""
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            received += chunk
            if not new and len(received) > (1 << 20):
                new = replace(root, "long.bin", size, seed=10, mtime=time.time() - 86400 * 29)
            elif not new:
                time.sleep(0.01)
    head, _, body = received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 206")
    assert f"Content-Length: {size}".encode() in head
    assert body == old[: len(body)]  # nothing but old bytes ...
    assert len(body) < size  # ... and cut short, the only honest way to end it
    statuses = [e["status"] for e in requests_for(origin, mark, "/long.bin")]
    assert 412 in statuses  # the proxy asked for the old version and was refused
    again = proxy.get("/o/long.bin", {"Cache-Control": "no-cache"})
    assert again.status == 200
    assert again.body == new
    assert proxy.get("/o/long.bin").body == new


@pytest.mark.parametrize("location", ["nostore", "private-cc"])
def test_no_store_and_private_responses_are_not_cached(
    origin: NginxOrigin, proxy: Proxy, location: str
) -> None:
    data = write_old(origin.root_dir, f"{location}.bin", SIZE, seed=11)
    path = f"/{location}/{location}.bin"
    mark = origin.mark()
    for _ in range(3):
        response = proxy.get(f"/o{path}")
        assert (response.status, response.header("X-Cache"), response.body) == (200, "PASS", data)
    ranged = proxy.get(f"/o{path}", {"Range": "bytes=10-19"})
    assert (ranged.status, ranged.body) == (206, data[10:20])
    seen = requests_for(origin, mark, path)
    # Every request went to the origin, once each (issue 22): a miss for a small range asks
    # for exactly that range (issue 17: kept as an extent, not a block), and an answer that
    # may not be stored is relayed, cut to what the client asked for.
    assert len(seen) == 4
    assert seen[-1]["range"] == "bytes=10-19"
    out = proxy.settled_access_log()
    assert [e["cache"] for e in out if e["target"] == f"/o{path}"] == ["PASS"] * 4


def test_set_cookie_is_never_replayed_from_cache(origin: NginxOrigin, proxy: Proxy) -> None:
    data = write_old(origin.root_dir, "cookie.bin", SIZE, seed=12)
    first = proxy.get("/o/cookie/cookie.bin")
    assert (first.header("X-Cache"), first.body) == ("MISS", data)
    # The client whose request reached the origin gets the origin's cookie ...
    assert first.header("Set-Cookie") == "session=s3cret-for-the-first-client; Path=/"
    mark = origin.mark()
    # ... nobody answered from the cache does, whatever they ask for.
    for headers, method in (
        ({}, "GET"),
        ({"Range": "bytes=0-99"}, "GET"),
        ({"Range": "bytes=0-9,100-109"}, "GET"),
        ({}, "HEAD"),
        ({"Cookie": "other=1"}, "GET"),
    ):
        response = proxy.get("/o/cookie/cookie.bin", headers, method=method)
        assert response.status in (200, 206)
        assert response.header("Set-Cookie") is None, (headers, method)
        assert response.header("X-Cache") in ("HIT", "REVALIDATED")
    stored = [f for f in proxy.cache_dir.rglob("*") if f.is_file()]
    assert stored
    assert not [f for f in stored if b"s3cret" in f.read_bytes()]  # not on disk either
    # None of them went to the origin, the one with a Cookie included: the object was
    # fetched without credentials and does not vary on Cookie, so it is anyone's
    # (proxyd.policy.access.requires_authorization).
    assert requests_for(origin, mark, "/cookie/cookie.bin") == []


def test_concurrent_readers_of_a_changing_object_never_mix(
    origin: NginxOrigin, proxy: Proxy
) -> None:
    """Readers of version 1 in flight when the object is replaced, then readers of version
    2: every response is one version byte for byte (the first ones possibly cut short), and
    those that started after the change get all of version 2."""
    root = origin.root_dir
    size = 2 << 20
    v1 = replace(root, "race.bin", size, seed=20, mtime=time.time() - 86400 * 30)

    def read() -> bytes:
        """The body, or as much of it as came before the proxy cut the response short."""
        conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=30)
        try:
            conn.request("GET", "/o/maxage0/race.bin")
            response = conn.getresponse()
            try:
                return response.read()
            except http.client.IncompleteRead as exc:
                return exc.partial
        finally:
            conn.close()

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        first = [pool.submit(read) for _ in range(6)]
        time.sleep(0.02)  # let them start (not synchronisation: any interleaving is valid)
        v2 = replace(root, "race.bin", size + 1, seed=21, mtime=time.time() - 86400 * 29)
        second = [pool.submit(read) for _ in range(6)]
        before = [f.result(timeout=60) for f in first]
        after = [f.result(timeout=60) for f in second]
    for body in before:
        assert body == v1[: len(body)] or body == v2[: len(body)]
    assert after == [v2] * 6
    assert read() == v2
