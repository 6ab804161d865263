"""The nginx fixtures are trustworthy instruments: what they serve, log and count is exact."""

from __future__ import annotations

import http.client
import os
import re
import threading
import time
from collections import Counter
from pathlib import Path

import fixtures_nginx
import pytest
from fixtures_nginx import TEST_BLOCK_SIZE, write_object
from nginx import GOOD_TOKEN, Location, NginxCachingProxy, NginxOrigin

# pytest finds fixtures by name in the module namespace. Binding them by assignment (rather
# than ``from fixtures_nginx import nginx_origin``) keeps ruff's F811 quiet on the arguments.
nginx_origin = fixtures_nginx.nginx_origin
nginx_caching_proxy = fixtures_nginx.nginx_caching_proxy


def fetch(
    base_url: str, path: str, headers: dict[str, str] | None = None, method: str = "GET"
) -> tuple[int, http.client.HTTPMessage, bytes]:
    """One request with http.client: no environment proxies, no redirects, no retries."""
    match = re.fullmatch(r"http://127\.0\.0\.1:(\d+)(/.*)", base_url)
    assert match, base_url
    conn = http.client.HTTPConnection("127.0.0.1", int(match[1]), timeout=30)
    try:
        conn.request(method, match[2] + path, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, resp.headers, resp.read()
    finally:
        conn.close()


def test_full_get_has_validators(nginx_origin: NginxOrigin) -> None:
    data = write_object(nginx_origin.root_dir, "a.bin", 300_000)
    status, headers, body = fetch(nginx_origin.url, "a.bin")
    assert status == 200
    assert body == data
    assert headers["Accept-Ranges"] == "bytes"
    assert headers["ETag"].startswith('"')
    assert headers["Last-Modified"]
    [entry] = nginx_origin.access_log()
    assert entry["method"] == "GET"
    assert entry["uri"] == "/a.bin"
    assert entry["status"] == 200
    assert entry["body_bytes_sent"] == len(data)
    assert entry["range"] == ""
    assert entry["authorization"] is False
    assert entry["completion"] == "OK"


def test_single_range(nginx_origin: NginxOrigin) -> None:
    data = write_object(nginx_origin.root_dir, "a.bin", 10_000)
    status, headers, body = fetch(nginx_origin.url, "a.bin", {"Range": "bytes=100-2979"})
    assert status == 206
    assert headers["Content-Range"] == "bytes 100-2979/10000"
    assert body == data[100:2980]
    [entry] = nginx_origin.access_log()
    assert entry["range"] == "bytes=100-2979"
    assert entry["body_bytes_sent"] == 2880


def test_multi_range(nginx_origin: NginxOrigin) -> None:
    data = write_object(nginx_origin.root_dir, "a.bin", 10_000)
    status, headers, body = fetch(nginx_origin.url, "a.bin", {"Range": "bytes=0-9,5000-5099"})
    assert status == 206
    boundary = re.fullmatch(r"multipart/byteranges; boundary=(\S+)", headers["Content-Type"])
    assert boundary
    parts = body.split(b"--" + boundary[1].encode())
    assert len(parts) == 4  # preamble, two parts, closing "--"
    assert b"Content-Range: bytes 0-9/10000\r\n\r\n" + data[0:10] + b"\r\n" in parts[1]
    assert b"Content-Range: bytes 5000-5099/10000\r\n\r\n" + data[5000:5100] in parts[2]


def test_bytes_sent_equals_bytes_received(nginx_origin: NginxOrigin) -> None:
    write_object(nginx_origin.root_dir, "a.bin", 123_456)
    write_object(nginx_origin.root_dir, "b.bin", 7, seed=1)
    fetch(nginx_origin.url, "a.bin")  # before the mark: not counted
    mark = nginx_origin.mark()
    received = 0
    for path, headers, method in [
        ("a.bin", {}, "GET"),
        ("a.bin", {"Range": "bytes=1000-"}, "GET"),
        ("a.bin", {"Range": "bytes=-500"}, "GET"),
        ("a.bin", {"Range": "bytes=0-0,10-19,100000-100099"}, "GET"),
        ("a.bin", {"Range": "bytes=999999-"}, "GET"),  # 416: an error page body
        ("a.bin", {}, "HEAD"),
        ("b.bin", {}, "GET"),
        ("missing.bin", {}, "GET"),
    ]:
        _status, _headers, body = fetch(nginx_origin.url, path, headers, method)
        received += len(body)
    entries = nginx_origin.access_log(mark)
    assert [e["status"] for e in entries] == [200, 206, 206, 206, 416, 200, 200, 404]
    assert nginx_origin.bytes_sent(since=mark) == received
    assert nginx_origin.bytes_sent(since=mark, path_prefix="/b.bin") == 7


def test_token_location(nginx_origin: NginxOrigin) -> None:
    data = write_object(nginx_origin.root_dir, "secret.bin", 5_000)
    status, headers, body = fetch(nginx_origin.url, "private/secret.bin")
    assert status == 401
    assert headers["WWW-Authenticate"] == "Bearer"
    assert data not in body
    status, _, body = fetch(
        nginx_origin.url, "private/secret.bin", {"Authorization": "Bearer bad-token"}
    )
    assert status == 403
    assert data not in body
    good = {"Authorization": f"Bearer {GOOD_TOKEN}"}
    status, _, body = fetch(nginx_origin.url, "private/secret.bin", good)
    assert status == 200
    assert body == data
    log = nginx_origin.access_log()
    assert [(e["status"], e["authorization"]) for e in log] == [
        (401, False),
        (403, True),
        (200, True),
    ]
    # The public location serves the same file without a token.
    assert fetch(nginx_origin.url, "secret.bin")[0] == 200


def test_extra_headers_and_reload(nginx_origin: NginxOrigin) -> None:
    write_object(nginx_origin.root_dir, "a.bin", 100)
    assert fetch(nginx_origin.url, "nostore/a.bin")[0] == 404  # plain root has no such dir
    nginx_origin.locations.append(
        Location("/nostore/", headers={"Cache-Control": "no-store", "Set-Cookie": "s=1; Path=/"})
    )
    nginx_origin.locations.append(
        Location("/immutable/", headers={"Cache-Control": "public, max-age=31536000, immutable"})
    )
    nginx_origin.reload()
    _, headers, _ = fetch(nginx_origin.url, "nostore/a.bin", {"Cookie": "x=1"})
    assert headers["Cache-Control"] == "no-store"
    assert headers["Set-Cookie"] == "s=1; Path=/"
    _, headers, _ = fetch(nginx_origin.url, "immutable/a.bin")
    assert headers["Cache-Control"] == "public, max-age=31536000, immutable"
    assert "Set-Cookie" not in headers
    assert nginx_origin.access_log()[-2]["cookie"] is True


def test_throttled_location_makes_reads_observable(nginx_origin: NginxOrigin) -> None:
    # /slow/ sends 256 KiB/s: 384 KiB takes about 1 s (the first 256 KiB are not free).
    data = write_object(nginx_origin.root_dir, "a.bin", 384 * 1024)
    mark = nginx_origin.mark()
    result: list[bytes] = []
    reader = threading.Thread(
        target=lambda: result.append(fetch(nginx_origin.url, "slow/a.bin")[2])
    )
    reader.start()
    time.sleep(0.3)
    assert nginx_origin.access_log(mark) == []  # still sending: nginx logs at the end
    reader.join(timeout=10)
    assert not reader.is_alive()
    assert result == [data]
    assert nginx_origin.bytes_sent(since=mark) == len(data)


def test_caching_proxy_hits_and_fetches_each_slice_once(
    nginx_origin: NginxOrigin, nginx_caching_proxy: NginxCachingProxy
) -> None:
    size = 3 * TEST_BLOCK_SIZE + TEST_BLOCK_SIZE // 2
    data = write_object(nginx_origin.root_dir, "obj.bin", size)
    status, headers, body = fetch(nginx_caching_proxy.url, "obj.bin")
    assert (status, headers["X-Cache-Status"], body) == (200, "MISS", data)
    status, headers, body = fetch(nginx_caching_proxy.url, "obj.bin")
    assert (status, headers["X-Cache-Status"], body) == (200, "HIT", data)
    status, headers, body = fetch(
        nginx_caching_proxy.url, "obj.bin", {"Range": "bytes=70000-72879"}
    )
    assert (status, headers["X-Cache-Status"], body) == (206, "HIT", data[70000:72880])

    fetches = Counter(e["range"] for e in nginx_origin.access_log() if e["path"] == "/obj.bin")
    slices = {f"bytes={i * TEST_BLOCK_SIZE}-{(i + 1) * TEST_BLOCK_SIZE - 1}" for i in range(4)}
    assert set(fetches) == slices
    assert max(fetches.values()) == 1
    assert nginx_origin.bytes_sent(path_prefix="/obj.bin") == size


def test_caching_proxy_lock_coalesces_concurrent_misses(
    nginx_origin: NginxOrigin, nginx_caching_proxy: NginxCachingProxy
) -> None:
    size = 8 * TEST_BLOCK_SIZE
    data = write_object(nginx_origin.root_dir, "cold.bin", size, seed=3)
    barrier = threading.Barrier(8, timeout=10)
    bodies: list[bytes] = []

    def client() -> None:
        barrier.wait()
        bodies.append(fetch(nginx_caching_proxy.url, "cold.bin")[2])

    threads = [threading.Thread(target=client) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert bodies == [data] * 8
    fetches = Counter(e["range"] for e in nginx_origin.access_log() if e["path"] == "/cold.bin")
    assert len(fetches) == 8
    assert max(fetches.values()) == 1


def test_stop_leaves_no_process(tmp_path: Path) -> None:
    origin = NginxOrigin(tmp_path / "root", tmp_path / "work", worker_processes=2).start()
    pgid = origin.pid
    origin.stop()
    origin.stop()  # idempotent
    with pytest.raises(ProcessLookupError):
        os.killpg(pgid, 0)


def test_several_workers_log_every_answered_request(tmp_path: Path) -> None:
    """With two workers, access_log() waits for nginx's own request count (stub_status) to
    match the lines in the log: each answered request is there at once, and the helpers'
    own requests (health, sync, counts) never are."""
    with NginxOrigin(tmp_path / "root", tmp_path / "work", worker_processes=2) as origin:
        data = write_object(origin.root_dir, "a.bin", 100_000)
        for i in range(20):
            assert fetch(origin.url, "a.bin")[2] == data
            log = origin.access_log()
            assert [(e["path"], e["body_bytes_sent"]) for e in log] == [("/a.bin", 100_000)] * (
                i + 1
            )
