"""No leaks (issue 4, item 7): cached bytes fetched with credentials reach only clients the
origin has authorised for that object.

nginx's token location answers 401 without a token and 403 with a wrong one; its responses
say ``Cache-Control: public, must-revalidate`` so a shared cache may store them (RFC 9111
§3.5). A recording origin plays an S3-like origin whose URLs carry their signature.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from nginx import GOOD_TOKEN, Location, NginxOrigin
from proxies import BLOCK, Proxy, RecordingOrigin, running, write_old

OTHER_TOKEN = "second-good-token-fedcba9876543210"
SIZE = 4 * BLOCK + 10


@pytest.fixture
def origin(tmp_path: Path) -> Iterator[NginxOrigin]:
    with NginxOrigin(
        tmp_path / "root",
        tmp_path / "nginx",
        tokens=[GOOD_TOKEN, OTHER_TOKEN],
        locations=[
            Location(
                "/auth/", require_token=True, headers={"Cache-Control": "public, must-revalidate"}
            )
        ],
    ) as nginx:
        yield nginx


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_only_clients_the_origin_authorises_get_cached_bytes(
    origin: NginxOrigin, tmp_path: Path
) -> None:
    data = write_old(origin.root_dir, "secret.bin", SIZE, seed=1)
    leak = data[1000:1064]  # any 64 bytes of the object
    with running(Proxy({"o": origin.url}, tmp_path / "p", config={"auth_ttl": 1})) as proxy:

        def log_since(mark: int) -> list[tuple[int, bool, int]]:
            return [
                (e["status"], e["authorization"], e["body_bytes_sent"])
                for e in origin.access_log(mark)
                if e["path"] == "/auth/secret.bin"
            ]

        # A client with a good token fills the cache.
        warm = proxy.get("/o/auth/secret.bin", bearer(GOOD_TOKEN))
        assert (warm.status, warm.header("X-Cache"), warm.body) == (200, "MISS", data)

        # No token: the origin's 401 (with its challenge), none of the bytes.
        mark = origin.mark()
        for headers, method in (({}, "GET"), ({"Range": "bytes=0-99"}, "GET"), ({}, "HEAD")):
            denied = proxy.get("/o/auth/secret.bin", headers, method=method)
            assert denied.status == 401, (headers, method)
            assert denied.header("X-Cache") == "DENIED"
            assert leak not in denied.body
            assert data[:100] not in denied.body
            assert denied.header("Content-Length") != str(SIZE)
            assert denied.header("Content-Range") is None
        assert proxy.get("/o/auth/secret.bin").header("WWW-Authenticate") == "Bearer"
        # The origin was asked (without credentials, as the client asked); its answer is
        # remembered for auth_ttl, so the requests right after cost it nothing more.
        assert log_since(mark)[0][:2] == (401, False)

        # A wrong token: 403, none of the bytes; the origin saw that token.
        mark = origin.mark()
        bad = proxy.get("/o/auth/secret.bin", bearer("not-a-valid-token"))
        assert (bad.status, bad.header("X-Cache")) == (403, "DENIED")
        assert leak not in bad.body
        bad_range = proxy.get("/o/auth/secret.bin", {**bearer("nope"), "Range": "bytes=-64"})
        assert bad_range.status == 403
        assert data[-64:] not in bad_range.body
        assert [s[:2] for s in log_since(mark)] == [(403, True), (403, True)]

        # The good token again: served from the cache after the origin said yes (a 304:
        # no body bytes), or straight from the cache while that yes is recent.
        mark = origin.mark()
        again = proxy.get("/o/auth/secret.bin", bearer(GOOD_TOKEN))
        assert again.status == 200
        assert again.header("X-Cache") in ("HIT", "REVALIDATED")
        assert again.body == data
        # Revalidated: the origin's yes, one 304 to the request with the token; a hit: nothing.
        vouched = [] if again.header("X-Cache") == "HIT" else [(304, True, 0)]
        assert log_since(mark) == vouched

        # Another good token: the origin vouches for it with a 304; bytes from the cache.
        mark = origin.mark()
        other = proxy.get("/o/auth/secret.bin", {**bearer(OTHER_TOKEN), "Range": "bytes=5-9"})
        assert (other.status, other.header("X-Cache"), other.body) == (
            206,
            "REVALIDATED",
            data[5:10],
        )
        assert log_since(mark) == [(304, True, 0)]

        # The origin revokes that token: once the remembered yes expires (auth_ttl = 1 s),
        # the token gets the origin's 403 and none of the bytes.
        origin.tokens = [GOOD_TOKEN]
        origin.reload()
        time.sleep(1.1)  # let the authorisation answer expire (not synchronisation)
        revoked = proxy.get("/o/auth/secret.bin", bearer(OTHER_TOKEN))
        assert (revoked.status, revoked.header("X-Cache")) == (403, "DENIED")
        assert leak not in revoked.body

        assert proxy.get("/o/auth/secret.bin", bearer(GOOD_TOKEN)).body == data
        metrics = proxy.metrics()
        assert metrics['proxyd_auth_checks_total{result="denied"}'] >= 3
        assert metrics['proxyd_auth_checks_total{result="allowed"}'] >= 2


def test_signed_urls_share_the_cache_but_each_signature_is_checked(tmp_path: Path) -> None:
    """S3-style pre-signed URLs: X-Amz-* parameters are left out of the cache key (every
    signature for an object shares its bytes) and count as credentials (each signature is
    checked with the origin before it is served)."""
    with RecordingOrigin() as recording:
        data = bytes(range(256)) * 1000
        recording.put("/bucket/obj.bin", data)
        recording.headers_for["/bucket/obj.bin"] = {"Cache-Control": "public, max-age=3600"}
        recording.require_query = "X-Amz-Signature=good"
        with running(Proxy({"s3": recording.url}, tmp_path / "p")) as proxy:
            first = proxy.get("/s3/bucket/obj.bin?X-Amz-Date=1&X-Amz-Signature=good1")
            assert (first.status, first.header("X-Cache"), first.body) == (200, "MISS", data)
            count = len(recording.requests)

            bad = proxy.get("/s3/bucket/obj.bin?X-Amz-Date=2&X-Amz-Signature=forged")
            assert (bad.status, bad.header("X-Cache")) == (403, "DENIED")
            assert data[:256] not in bad.body
            unsigned = proxy.get("/s3/bucket/obj.bin")
            assert (unsigned.status, unsigned.header("X-Cache")) == (403, "DENIED")
            assert data[:256] not in unsigned.body

            second = proxy.get("/s3/bucket/obj.bin?X-Amz-Signature=good2&X-Amz-Date=3")
            assert (second.status, second.body) == (200, data)
            assert second.header("X-Cache") == "REVALIDATED"
            checks = recording.requests[count:]
            # Each signature went to the origin as sent, in a conditional request for one
            # byte: the cached body was reused, not fetched again.
            assert [c.target.partition("?")[2] for c in checks] == [
                "X-Amz-Date=2&X-Amz-Signature=forged",
                "",
                "X-Amz-Signature=good2&X-Amz-Date=3",
            ]
            assert all(c.header("If-None-Match") for c in checks)
            assert all(c.header("Range") == "bytes=0-0" for c in checks)
