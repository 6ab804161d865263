"""proxyd's pure HTTP policy: routing, keys, RFC 9111 freshness, block planning, access."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from butler.http.conditional import format_http_date
from butler.http.ranges import (
    ByteRange,
    RangeOutcome,
    RangeSpec,
    parse_range_header,
    parse_range_specs,
)
from proxyd.policy import field_value, field_values, header_pairs
from proxyd.policy.access import (
    Access,
    AuthDecisionCache,
    AuthEntry,
    AuthOutcome,
    access_decision,
    access_without_origin,
    auth_check_headers,
    authorization_needed,
    interpret_auth_response,
    requires_authorization,
)
from proxyd.policy.blocks import (
    BlockSlice,
    FetchProblem,
    FetchResult,
    RunPlan,
    block_count,
    block_span,
    blocks_for,
    initial_fetch,
    interpret_fetch_response,
    missing_runs,
    run_request_headers,
    slice_plan,
)
from proxyd.policy.freshness import (
    MAX_DELTA_SECONDS,
    CacheRequest,
    Outcome,
    StoredMeta,
    after_revalidation,
    age_field,
    current_age,
    decide,
    freshen,
    freshness_lifetime,
    headers_to_store,
    invalidation_targets,
    is_fresh,
    not_storable_reason,
    on_origin_error,
    parse_cache_control,
    stale_if_error_window,
    storable,
    vary_fields,
    vary_matches,
)
from proxyd.policy.keys import (
    cache_key,
    credential_fingerprint,
    is_signing_param,
    normalise_percent_encoding,
    split_signing_params,
)
from proxyd.policy.requests import (
    ALLOWED_METHODS,
    VIA,
    Refusal,
    RequestLimits,
    Route,
    forward_request_headers,
    forward_response_headers,
    passed_through,
    route,
    strip_hop_by_hop,
    via_entry,
    with_via,
)
from proxyd.settings import ProxySettings

UPSTREAMS = {"repo": "http://origin.example/base", "s3": "https://bucket.s3.example"}
LIMITS = RequestLimits(max_url_bytes=300, max_header_bytes=300, max_headers_total_bytes=1000)
SIGNING = ("X-Amz-*",)
SETTINGS = ProxySettings()
T0 = 1_700_000_000.0  # a fixed "now"


def http_date(t: float) -> str:
    return format_http_date(t)


def routed(target: str, method: str = "GET", headers: dict[str, str] | None = None) -> Route:
    result = route(method, target, headers or {}, UPSTREAMS, LIMITS, signing_params=SIGNING)
    assert isinstance(result, Route), result
    return result


def refused(target: str, method: str = "GET", headers: dict[str, str] | None = None) -> Refusal:
    result = route(method, target, headers or {}, UPSTREAMS, LIMITS, signing_params=SIGNING)
    assert isinstance(result, Refusal), result
    return result


# == routing ================================================================================


@pytest.mark.parametrize(
    ("target", "upstream_url", "path", "query"),
    [
        ("/repo/files/a.fits", "http://origin.example/base/files/a.fits", "/files/a.fits", ""),
        ("/repo/", "http://origin.example/base/", "/", ""),
        ("/repo", "http://origin.example/base", "", ""),
        ("/repo?x=1", "http://origin.example/base?x=1", "", "x=1"),
        ("/repo/api/v1/q?where=a%3D1&b", "http://origin.example/base/api/v1/q?where=a%3D1&b",
         "/api/v1/q", "where=a%3D1&b"),
        ("/s3/k/x%20y.fits", "https://bucket.s3.example/k/x%20y.fits", "/k/x%20y.fits", ""),
        ("/repo/a..b/.hidden/...", "http://origin.example/base/a..b/.hidden/...",
         "/a..b/.hidden/...", ""),
        ("/repo/a//b", "http://origin.example/base/a//b", "/a//b", ""),
        ("/repo/q?path=../../etc", "http://origin.example/base/q?path=../../etc", "/q",
         "path=../../etc"),
    ],
)  # fmt: skip
def test_route_accepts(target: str, upstream_url: str, path: str, query: str) -> None:
    r = routed(target)
    assert (r.upstream_url, r.path, r.query) == (upstream_url, path, query)
    assert r.upstream == target.split("/")[1].split("?")[0]
    assert r.credential is None
    assert r.cacheable_method


@pytest.mark.parametrize("method", ALLOWED_METHODS)
def test_route_allowed_methods(method: str) -> None:
    r = routed("/repo/x", method)
    assert r.method == method
    assert r.cacheable_method == (method in ("GET", "HEAD"))


LONG = "/repo/" + "a" * 300


@pytest.mark.parametrize(
    ("method", "target", "headers", "status", "message"),
    [
        ("CONNECT", "origin.example:443", {}, 405, "CONNECT is not supported"),
        ("CONNECT", "/repo/x", {}, 405, "not a tunnel"),
        ("TRACE", "/repo/x", {}, 405, "method TRACE is not allowed"),
        ("PROPFIND", "/repo/x", {}, 405, "method PROPFIND is not allowed"),
        ("get", "/repo/x", {}, 405, "method get is not allowed"),
        ("G\nET", "/repo/x", {}, 405, "'G\\nET'"),
        ("GET", "http://evil.example/", {}, 400, "not a forward proxy"),
        ("GET", "https://origin.example/base/x", {}, 400, "absolute-form"),
        ("GET", "HTTP://evil/", {}, 400, "absolute-form"),
        ("GET", "evil.example:80", {}, 400, "authority-form"),
        ("OPTIONS", "*", {}, 400, "asterisk-form"),
        ("GET", "", {}, 400, "must be a path starting with '/'"),
        ("GET", "/nope/x", {}, 404, "no upstream named nope"),
        ("GET", "/", {}, 404, "no upstream named in the path"),
        ("GET", "/?x=1", {}, 404, "configured upstreams: /repo/, /s3/"),
        ("GET", "/REPO/x", {}, 404, "no upstream named REPO"),
        ("GET", "/repo/../etc/passwd", {}, 400, "dot-segments"),
        ("GET", "/repo/a/..", {}, 400, "dot-segments"),
        ("GET", "/repo/./x", {}, 400, "dot-segments"),
        ("GET", "/../repo/x", {}, 400, "dot-segments"),
        ("GET", "/repo/%2e%2e/x", {}, 400, "dot-segments"),
        ("GET", "/repo/%2E%2E/x", {}, 400, "dot-segments"),
        ("GET", "/repo/.%2e/x", {}, 400, "dot-segments"),
        ("GET", "/repo/%2e/x", {}, 400, "dot-segments"),
        ("GET", "/repo/..;/x", {}, 400, "dot-segments"),
        ("GET", "/repo/..%3bx=1/x", {}, 400, "dot-segments"),
        ("GET", "/repo/a%2fb", {}, 400, "encoded slash"),
        ("GET", "/repo/..%2f..%2fetc", {}, 400, "encoded slash"),
        ("GET", "/repo/a%2Fb", {}, 400, "encoded slash"),
        ("GET", "/repo/a\\b", {}, 400, "backslash"),
        ("GET", "/repo/..\\..\\etc", {}, 400, "backslash"),
        ("GET", "/repo/a%5cb", {}, 400, "backslash"),
        ("GET", "/repo/a%00b", {}, 400, "NUL"),
        ("GET", "/repo/a\x00b", {}, 400, "control or non-ASCII"),
        ("GET", "/repo/a%0d%0aSet-Cookie:x", {}, 400, "control characters"),
        ("GET", "/repo/a b", {}, 400, "spaces"),
        ("GET", "/repo/é", {}, 400, "non-ASCII"),
        ("GET", "/repo/a#frag", {}, 400, "fragment"),
        ("GET", "/repo/a%zz", {}, 400, "malformed percent-encoding"),
        ("GET", "/repo/a%2", {}, 400, "malformed percent-encoding"),
        ("GET", LONG, {}, 414, "at most 300 bytes"),
        ("GET", "/repo/x", {"X-Big": "v" * 300}, 431, "X-Big is 309 bytes"),
        ("GET", "/repo/x", {f"X-{i}": "v" * 200 for i in range(5)}, 431, "total 1035 bytes"),
        ("GET", "/repo/x", {"X-A": "a\r\nInjected: 1"}, 400, "malformed request header"),
        ("GET", "/repo/x", {"Bad Name": "1"}, 400, "malformed request header"),
    ],
)
def test_route_refuses(
    method: str, target: str, headers: dict[str, str], status: int, message: str
) -> None:
    r = refused(target, method, headers)
    assert r.status == status
    assert message in r.message
    if status == 405:
        assert dict(r.headers)["Allow"] == ", ".join(ALLOWED_METHODS)


def test_route_unknown_upstream_with_none_configured() -> None:
    r = route("GET", "/x/y", {}, {}, LIMITS, signing_params=())
    assert isinstance(r, Refusal)
    assert r.status == 404
    assert "configured upstreams: none" in r.message


def test_route_cache_key_and_credentials() -> None:
    signed = routed(
        "/s3/obj?X-Amz-Signature=abc&versionId=2&X-Amz-Date=20240101T000000Z",
        headers={"Authorization": "Bearer t"},
    )
    # The signed URL is forwarded intact; the key leaves the signature out.
    assert "X-Amz-Signature=abc" in signed.upstream_url
    assert signed.cache_key == "https://bucket.s3.example/obj?versionId=2"
    assert signed.credential is not None
    other_signature = routed("/s3/obj?versionId=2&X-Amz-Signature=zzz")
    assert other_signature.cache_key == signed.cache_key
    assert other_signature.credential not in (None, signed.credential)
    anonymous = routed("/s3/obj?versionId=2")
    assert anonymous.cache_key == signed.cache_key
    assert anonymous.credential is None


def test_request_limits_from_settings() -> None:
    s = ProxySettings(max_url_bytes=1000, max_header_bytes=2000, max_headers_total_bytes=3000)
    assert RequestLimits.from_settings(s) == RequestLimits(1000, 2000, 3000)


# == hop-by-hop =============================================================================


def test_strip_hop_by_hop_rfc9110_7_6_1() -> None:
    headers = [
        ("Connection", "close, X-Private-Hop"),
        ("Connection", "Foo"),
        ("Keep-Alive", "timeout=5"),
        ("Proxy-Connection", "keep-alive"),
        ("TE", "trailers"),
        ("Trailer", "X-Checksum"),
        ("Transfer-Encoding", "chunked"),
        ("Upgrade", "websocket"),
        ("Proxy-Authorization", "Basic cHJveHk="),
        ("Proxy-Authenticate", "Basic"),
        ("X-Private-Hop", "1"),
        ("foo", "2"),
        ("Accept", "*/*"),
        ("Authorization", "Bearer t"),
        ("Range", "bytes=0-1"),
        ("accept", "text/plain"),
    ]
    assert strip_hop_by_hop(headers) == (
        ("Accept", "*/*"),
        ("Authorization", "Bearer t"),
        ("Range", "bytes=0-1"),
        ("accept", "text/plain"),
    )
    assert strip_hop_by_hop({"CONNECTION": "x-a", "X-A": "1", "X-B": "2"}) == (("X-B", "2"),)


def test_forward_request_headers() -> None:
    out = forward_request_headers(
        [
            ("Host", "proxy.example"),
            ("Connection", "keep-alive"),
            ("Expect", "100-continue"),
            ("Authorization", "Bearer t"),
            ("Via", "1.0 fred"),
            ("Content-Type", "application/json"),
        ]
    )
    # The client's Via is kept as sent; the proxy's entry is added where every upstream
    # request is sent (fills too), see test_via_names_this_proxy_and_finds_loops.
    assert out == (
        ("Authorization", "Bearer t"),
        ("Via", "1.0 fred"),
        ("Content-Type", "application/json"),
    )


def test_via_names_this_proxy_and_finds_loops() -> None:
    me = "proxyd-0badcafe"
    assert via_entry(me) == "1.1 proxyd-0badcafe"
    assert with_via((("Via", "1.0 fred"), ("X", "1")), via_entry(me)) == (
        ("X", "1"),
        ("Via", "1.0 fred, 1.1 proxyd-0badcafe"),
    )
    assert with_via((("Via", "1.0 a"), ("via", "1.1 b")), "1.1 c") == (
        ("Via", "1.0 a, 1.1 b, 1.1 c"),
    )
    assert with_via((), "1.1 c") == (("Via", "1.1 c"),)
    looped = [
        {"Via": "1.1 proxyd-0badcafe"},
        {"Via": "1.0 fred, 1.1 proxyd-0badcafe (proxyd), 1.1 parent"},
        [("Via", "1.0 fred"), ("via", "HTTP/1.1   proxyd-0badcafe")],
    ]
    for headers in looped:
        assert passed_through(headers, me), headers
    not_looped = [
        {},
        {"Via": "1.1 proxyd-0badcaf"},  # another proxy: a prefix is not the name
        {"Via": "1.1 proxyd-0badcafe1"},
        {"Via": "1.1 fred (saw proxyd-0badcafe)"},  # a comment that mentions it
        {"Via": "proxyd-0badcafe"},  # no protocol: not an entry received by it
        {"X-Via": "1.1 proxyd-0badcafe"},
    ]
    for headers in not_looped:
        assert not passed_through(headers, me), headers


def test_route_refuses_a_request_that_has_been_here_before() -> None:
    me = "proxyd-0badcafe"
    looped = route(
        "GET",
        "/repo/a.fits",
        {"Via": "1.1 edge, 1.1 proxyd-0badcafe"},
        UPSTREAMS,
        LIMITS,
        signing_params=SIGNING,
        via_name=me,
    )
    assert isinstance(looped, Refusal)
    assert looped.status == 508
    assert "forwarding loop" in looped.message
    assert me in looped.message
    through_others = route(
        "GET",
        "/repo/a.fits",
        {"Via": "1.1 edge, 1.1 proxyd-12345678"},
        UPSTREAMS,
        LIMITS,
        signing_params=SIGNING,
        via_name=me,
    )
    assert isinstance(through_others, Route)  # tiers of proxyd are no loop


def test_forward_response_headers() -> None:
    out = forward_response_headers(
        {"Transfer-Encoding": "chunked", "Set-Cookie": "a=1", "Content-Type": "text/plain"}
    )
    assert out == (("Set-Cookie", "a=1"), ("Content-Type", "text/plain"), ("Via", VIA))


def test_header_helpers() -> None:
    pairs = header_pairs([("A", "1"), ("a", "2"), ("B", "3")])
    assert field_values(pairs, "A") == ["1", "2"]
    assert field_value(pairs, "a") == "1, 2"
    assert field_value({"b": "x"}, "B") == "x"
    assert field_value(pairs, "C") is None


# == keys ===================================================================================


@pytest.mark.parametrize(
    ("url", "key"),
    [
        ("http://o/a/b", "http://o/a/b"),
        ("http://o/a/b?", "http://o/a/b"),
        ("http://o/a/b#frag", "http://o/a/b"),
        ("http://o/%7Euser/%41%2f%2F", "http://o/~user/A%2F%2F"),
        # Order is kept: repeated parameters can be an ordered list or read first-wins.
        ("http://o/p?b=2&a=1", "http://o/p?b=2&a=1"),
        ("http://o/p?a=2&a=1&a", "http://o/p?a=2&a=1&a"),
        ("http://o/p?collections=r2&collections=r1", "http://o/p?collections=r2&collections=r1"),
        # Unreserved characters decoded, other triplets upper-cased: in names as in values.
        ("http://o/p?%61=1&a%2f=%7e", "http://o/p?a=1&a%2F=~"),
        ("http://o/p?X-Amz-Date=d&b=2&X-Amz-Signature=s&a=1", "http://o/p?b=2&a=1"),
        ("http://o/p?a=1&&b", "http://o/p?a=1&b"),
        ("http://o/p?q=%7e%2b+x", "http://o/p?q=~%2B+x"),
        ("http://o/p?X-Amz-Signature=s&x-amz-date=d&X-Amz-Credential=c", "http://o/p"),
        ("http://o/p?X-Amz-Signature=s&v=1", "http://o/p?v=1"),
        ("http://o/p?X%2DAmz%2DSignature=s&v=1", "http://o/p?v=1"),
        ("http://o/p?Amz=1", "http://o/p?Amz=1"),
    ],
)
def test_cache_key_normalisation(url: str, key: str) -> None:
    assert cache_key(url, SIGNING) == key


def test_cache_key_without_signing_params_keeps_everything() -> None:
    assert cache_key("http://o/p?X-Amz-Date=1", ()) == "http://o/p?X-Amz-Date=1"
    assert cache_key("http://o/p?sig=1&v=2", ("sig",)) == "http://o/p?v=2"


def test_signing_params() -> None:
    assert is_signing_param("X-Amz-Signature", SIGNING)
    assert is_signing_param("x-amz-expires", SIGNING)
    assert not is_signing_param("versionId", SIGNING)
    kept, signing = split_signing_params("a=1&X-Amz-Signature=s&b", SIGNING)
    assert kept == [("a", "1"), ("b", None)]
    assert signing == [("X-Amz-Signature", "s")]


def test_normalise_percent_encoding() -> None:
    assert normalise_percent_encoding("%7e%2f%41%5a%30%2d") == "~%2FAZ0-"
    assert normalise_percent_encoding("%") == "%"


def test_credential_fingerprint() -> None:
    assert credential_fingerprint({}) is None
    assert credential_fingerprint({"Accept": "*/*", "Proxy-Authorization": "Basic x"}) is None
    a = credential_fingerprint({"Authorization": "Bearer a"})
    b = credential_fingerprint({"authorization": "Bearer a"})
    c = credential_fingerprint({"Authorization": "Bearer b"})
    cookie = credential_fingerprint({"Cookie": "Bearer a"})
    assert a == b
    assert a is not None
    assert cookie is not None  # a cookie is a credential (RFC 6265), not "anonymous"
    assert len(a) == 64
    assert int(a, 16) >= 0
    assert len({a, c, cookie}) == 3
    signed = credential_fingerprint({}, [("X-Amz-Signature", "s"), ("X-Amz-Date", "d")])
    assert signed == credential_fingerprint({}, [("X-Amz-Date", "d"), ("X-Amz-Signature", "s")])
    assert signed is not None
    both = credential_fingerprint({"Authorization": "Bearer a"}, [("X-Amz-Signature", "s")])
    assert both not in (a, signed)


# == Cache-Control ==========================================================================


def test_parse_cache_control() -> None:
    cc = parse_cache_control(
        'public, MAX-AGE=60, s-maxage="120", no-cache="Set-Cookie, X-Foo", x-ext="a,b", immutable'
    )
    assert cc.public
    assert cc.immutable
    assert cc.max_age == 60
    assert cc.s_maxage == 120
    assert not cc.no_cache
    assert cc.no_cache_fields == ("set-cookie", "x-foo")
    assert cc.directives["x-ext"] == "a,b"


@pytest.mark.parametrize(
    ("value", "max_age"),
    [
        ("max-age=10, max-age=20", 10),  # first occurrence (§4.2.1)
        ("max-age=abc", 0),  # invalid: treat as stale (§4.2.1)
        ("max-age=-1", 0),
        ("max-age=", 0),
        ("max-age", 0),
        ("max-age=99999999999999999999", MAX_DELTA_SECONDS),  # §1.2.2
        (",,, max-age = 5 ,", 5),
        ('max-age="7"', 7),
        ('foo="unterminated, max-age=3', None),
        ("=, ;;; , max-age=4", 4),
        ("", None),
    ],
)
def test_parse_cache_control_tolerant(value: str, max_age: int | None) -> None:
    assert parse_cache_control(value).max_age == max_age


def test_parse_cache_control_request_directives() -> None:
    cc = parse_cache_control(["max-stale", "min-fresh=5, only-if-cached, no-store"])
    assert cc.max_stale == math.inf
    assert cc.min_fresh == 5
    assert cc.only_if_cached
    assert cc.no_store
    assert parse_cache_control("max-stale=30").max_stale == 30
    assert parse_cache_control("max-stale=x").max_stale is None
    assert parse_cache_control("min-fresh=x").min_fresh is None
    assert parse_cache_control("private").private
    assert not parse_cache_control('private="X-A"').private
    assert parse_cache_control('private="X-A"').private_fields == ("x-a",)
    assert parse_cache_control("stale-if-error=60").stale_if_error == 60
    assert parse_cache_control("stale-while-revalidate=5").stale_while_revalidate == 5
    assert parse_cache_control(None).directives == {}


def test_parse_cache_control_quoted_strings() -> None:
    # Junk after a closing quote belongs to no directive; the next one still counts.
    cc = parse_cache_control('private="X-A"junk, max-age=5')
    assert cc.directives == {"private": "X-A", "max-age": "5"}
    # A quoted-pair right before the end is unescaped (RFC 9110 §5.6.4), even unterminated.
    assert parse_cache_control('no-cache="x\\"').directives == {"no-cache": 'x"'}
    assert parse_cache_control('no-cache="a\\b"').directives == {"no-cache": "ab"}


# == storing ================================================================================


@pytest.mark.parametrize(
    ("method", "creds", "status", "headers", "reason"),
    [
        ("GET", False, 200, {}, None),  # heuristically cacheable status
        ("GET", False, 200, {"Cache-Control": "max-age=60"}, None),
        ("HEAD", False, 200, {"Cache-Control": "max-age=60"}, None),
        ("GET", False, 404, {}, None),
        ("GET", False, 410, {}, None),
        ("GET", False, 301, {}, None),
        ("GET", False, 302, {}, "not cacheable without explicit freshness"),
        ("GET", False, 302, {"Cache-Control": "max-age=5"}, None),
        ("GET", False, 500, {}, "not cacheable without explicit freshness"),
        ("GET", False, 503, {"Expires": "Thu, 01 Dec 2094 16:00:00 GMT"}, None),
        ("POST", False, 200, {"Cache-Control": "max-age=60"}, "POST responses are not stored"),
        ("PUT", False, 200, {}, "PUT responses are not stored"),
        ("GET", False, 304, {}, "not a storable final response"),
        ("GET", False, 100, {}, "not a storable final response"),
        ("GET", False, 199, {}, "not a storable final response"),  # the last 1xx
        ("GET", False, 200, {"Cache-Control": "no-store"}, "no-store"),
        ("GET", False, 200, {"Cache-Control": "private, max-age=60"}, "private"),
        ("GET", False, 200, {"Cache-Control": 'private="Set-Cookie", max-age=60'}, None),
        ("GET", False, 200, {"Cache-Control": "no-cache"}, None),  # stored, always revalidated
        ("GET", False, 200, {"Vary": "*"}, "Vary: *"),
        ("GET", False, 200, {"Vary": "Accept-Encoding"}, None),
        ("GET", False, 200, {"Set-Cookie": "id=1", "Cache-Control": "max-age=60"}, None),
        # §3.5 Authorization rule
        ("GET", True, 200, {"Cache-Control": "max-age=60"}, "needs public, s-maxage"),
        ("GET", True, 200, {}, "needs public, s-maxage"),
        ("GET", True, 200, {"Cache-Control": "public, max-age=60"}, None),
        ("GET", True, 200, {"Cache-Control": "s-maxage=60"}, None),
        ("GET", True, 200, {"Cache-Control": "must-revalidate"}, None),
        ("GET", True, 200, {"Cache-Control": "private, public"}, "private"),
        # 206 as part of a 200
        ("GET", False, 206, {"Content-Range": "bytes 0-9/100"}, None),
        ("GET", False, 206, {"Content-Range": "bytes 0-9/*"}, "single Content-Range"),
        ("GET", False, 206, {"Content-Type": "multipart/byteranges; boundary=x"}, "single"),
    ],
)
def test_storable(
    method: str, creds: bool, status: int, headers: dict[str, str], reason: str | None
) -> None:
    got = not_storable_reason(method, creds, status, headers)
    if reason is None:
        assert got is None
    else:
        assert got is not None
        assert reason in got
    assert storable(method, creds, status, headers) == (reason is None)


def test_request_no_store_prevents_storing() -> None:
    rq = parse_cache_control("no-store")
    assert not storable("GET", False, 200, {}, request_cache_control=rq)


def test_headers_to_store() -> None:
    stored = headers_to_store(
        [
            ("Content-Type", "image/fits"),
            ("Set-Cookie", "session=secret"),
            ("set-cookie", "other=1"),
            ("Set-Cookie2", "x"),
            ("Connection", "X-Hop"),
            ("X-Hop", "1"),
            ("Keep-Alive", "timeout=5"),
            ("Transfer-Encoding", "chunked"),
            ("Age", "10"),
            ("Content-Length", "100"),
            ("Content-Range", "bytes 0-99/1000"),
            ("Authentication-Info", "nextnonce=x"),
            ("Cache-Control", 'max-age=60, private="X-User", no-cache="X-Debug"'),
            ("X-User", "alice"),
            ("X-Debug", "1"),
            ("ETag", '"v1"'),
            ("Date", "Tue, 14 Nov 2023 22:13:20 GMT"),
        ]
    )
    assert [k for k, _ in stored] == ["Content-Type", "Cache-Control", "ETag", "Date"]


# == freshness lifetime and age (RFC 9111 §4.2) =============================================


def lifetime(headers: dict[str, str], status: int = 200, s: ProxySettings = SETTINGS) -> float:
    return freshness_lifetime(headers, T0, s, status=status)


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"Cache-Control": "max-age=60"}, 60),
        ({"Cache-Control": "max-age=60, s-maxage=10"}, 10),  # s-maxage first (shared)
        ({"Cache-Control": "s-maxage=600, max-age=60"}, 600),
        ({"Cache-Control": "max-age=60", "Expires": http_date(T0 + 3600)}, 60),  # §5.3
        ({"Expires": http_date(T0 + 3600), "Date": http_date(T0)}, 3600),
        ({"Expires": http_date(T0 + 3600), "Date": http_date(T0 + 600)}, 3000),
        ({"Expires": http_date(T0 + 3600)}, 3600),  # no Date: time of receipt
        ({"Expires": http_date(T0 - 10), "Date": http_date(T0)}, 0),
        ({"Expires": "0", "Date": http_date(T0)}, 0),  # invalid = already expired
        ({"Cache-Control": "max-age=abc"}, 0),
        ({}, 0),  # nothing to go on
        ({"Cache-Control": "no-cache"}, 0),
        # heuristic: 10% of (Date - Last-Modified)
        ({"Date": http_date(T0), "Last-Modified": http_date(T0 - 1000)}, 100),
        ({"Last-Modified": http_date(T0 - 1000)}, 100),  # Date from time of receipt
        ({"Date": http_date(T0), "Last-Modified": http_date(T0 - 10**7)}, 86400),  # capped
        ({"Date": http_date(T0), "Last-Modified": http_date(T0 + 50)}, 0),  # future LM
        ({"Date": http_date(T0), "Last-Modified": "garbage"}, 0),
    ],
)
def test_freshness_lifetime(headers: dict[str, str], expected: float) -> None:
    assert lifetime(headers) == expected


def test_heuristic_only_for_heuristically_cacheable_statuses() -> None:
    lm = {"Date": http_date(T0), "Last-Modified": http_date(T0 - 1000)}
    # Without a status, both describe a full 200 representation: heuristics apply.
    assert freshness_lifetime(lm, T0, SETTINGS) == 100
    bare = StoredMeta(headers=tuple(lm.items()), request_time=T0, response_time=T0)
    assert bare.freshness_lifetime(SETTINGS) == 100
    assert lifetime(lm, status=404) == 100
    assert lifetime(lm, status=302) == 0
    assert lifetime({**lm, "Cache-Control": "public"}, status=302) == 100
    tuned = ProxySettings(heuristic_fraction=0.5, heuristic_max=300)
    assert lifetime(lm, s=tuned) == 300
    assert lifetime({"Date": http_date(T0), "Last-Modified": http_date(T0 - 100)}, s=tuned) == 50


def test_current_age_rfc9111_4_2_3() -> None:
    # A response that left the origin at T0 (Date), was requested at T0+1 and received at
    # T0+3 with Age 10 (it sat in another cache): corrected initial age = max(3, 10 + 2) = 12.
    common = {"date_value": T0, "request_time": T0 + 1, "response_time": T0 + 3}
    assert current_age(age_value=10, now=T0 + 3, **common) == 12
    assert current_age(age_value=10, now=T0 + 103, **common) == 112  # + resident time
    # Without Age, the apparent age (clock difference) counts: max(3, 0 + 2) = 3.
    assert current_age(age_value=0, now=T0 + 3, **common) == 3
    # A Date in the future (origin clock ahead) never makes the age negative.
    ahead = {"date_value": T0 + 500, "request_time": T0, "response_time": T0}
    assert current_age(age_value=0, now=T0, **ahead) == 0


def meta(
    headers: dict[str, str] | list[tuple[str, str]],
    *,
    at: float = T0,
    status: int = 200,
    request_headers: dict[str, str] | None = None,
    requires_authorization: bool = False,
) -> StoredMeta:
    pairs = list(headers.items()) if isinstance(headers, dict) else list(headers)
    if not any(k.lower() == "date" for k, _ in pairs):
        pairs.append(("Date", http_date(at)))
    return StoredMeta.from_response(
        status,
        pairs,
        request_time=at,
        response_time=at,
        request_headers=request_headers or {},
        requires_authorization=requires_authorization,
    )


def test_stored_meta_from_response() -> None:
    m = meta(
        {
            "ETag": '"v1"',
            "Last-Modified": http_date(T0 - 100),
            "Content-Length": "1234",
            "Age": "5",
            "Set-Cookie": "x=1",
            "Cache-Control": "max-age=60",
            "Vary": "Accept-Language",
        },
        request_headers={"Accept-Language": "en"},
    )
    assert m.status == 200
    assert m.size == 1234
    assert m.age_value == 5
    assert m.etag == '"v1"'
    assert m.validator == '"v1"'
    assert m.field("Set-Cookie") is None
    assert m.vary_request == (("accept-language", "en"),)
    assert m.current_age(T0) == 5
    assert m.freshness_lifetime(SETTINGS) == 60
    assert is_fresh(m, T0 + 54, SETTINGS)
    assert not is_fresh(m, T0 + 55, SETTINGS)
    assert m.conditional_headers() == (
        ("If-None-Match", '"v1"'),
        ("If-Modified-Since", http_date(T0 - 100)),
    )
    assert StoredMeta.from_json(m.to_json()) == m

    partial = meta({"Content-Range": "bytes 0-9/5000", "ETag": 'W/"w"'}, status=206)
    assert (partial.status, partial.size, partial.etag) == (200, 5000, 'W/"w"')
    assert partial.field("Content-Range") is None
    bad = meta({"ETag": "unquoted", "Last-Modified": "yesterday", "Age": "x"})
    assert (bad.etag, bad.last_modified, bad.validator, bad.age_value) == (None, None, None, 0)
    assert bad.conditional_headers() == ()


def test_age_field() -> None:
    assert age_field(12.7) == "12"
    assert age_field(-3) == "0"
    assert age_field(1e20) == str(MAX_DELTA_SECONDS)


# == decide() ===============================================================================


def req(cache_control: str | None = None, method: str = "GET", **headers: str) -> CacheRequest:
    fields = dict(headers)
    if cache_control is not None:
        fields["Cache-Control"] = cache_control
    return CacheRequest.from_headers(method, fields)


FRESH = {"Cache-Control": "max-age=100", "ETag": '"v1"'}


@pytest.mark.parametrize(
    ("stored_headers", "request_cc", "age", "outcome"),
    [
        (FRESH, None, 10, Outcome.FRESH_HIT),
        (FRESH, None, 100, Outcome.REVALIDATE),  # lifetime == age: stale
        (FRESH, None, 500, Outcome.REVALIDATE),
        (FRESH, "no-cache", 10, Outcome.REVALIDATE),  # §5.2.1.4
        (FRESH, "max-age=0", 10, Outcome.REVALIDATE),  # §5.2.1.1
        (FRESH, "max-age=5", 10, Outcome.REVALIDATE),
        (FRESH, "max-age=50", 10, Outcome.FRESH_HIT),
        (FRESH, "max-age=10", 10, Outcome.FRESH_HIT),  # an age equal to max-age is accepted
        (FRESH, "min-fresh=95", 10, Outcome.REVALIDATE),  # §5.2.1.3
        (FRESH, "min-fresh=50", 10, Outcome.FRESH_HIT),
        (FRESH, "min-fresh=90", 10, Outcome.FRESH_HIT),  # fresh for exactly 90 s more: enough
        (FRESH, "max-stale", 10_000, Outcome.STALE_HIT),  # §5.2.1.2
        (FRESH, "max-stale=50", 140, Outcome.STALE_HIT),
        (FRESH, "max-stale=50", 160, Outcome.REVALIDATE),
        (FRESH, "max-stale=50", 150, Outcome.STALE_HIT),  # stale by exactly 50 s: accepted
        (FRESH, "only-if-cached", 10, Outcome.FRESH_HIT),
        (FRESH, "only-if-cached", 500, Outcome.ONLY_IF_CACHED),  # §5.2.1.7
        (FRESH, "only-if-cached, max-stale", 500, Outcome.STALE_HIT),
        (FRESH, "no-store", 10, Outcome.FRESH_HIT),
        # response directives
        ({**FRESH, "Cache-Control": "max-age=100, no-cache"}, None, 10, Outcome.REVALIDATE),
        ({**FRESH, "Cache-Control": "max-age=100, must-revalidate"}, None, 10, Outcome.FRESH_HIT),
        (
            {**FRESH, "Cache-Control": "max-age=100, must-revalidate"},
            "max-stale",
            500,
            Outcome.REVALIDATE,  # §4.2.4: must-revalidate forbids serving stale
        ),
        ({**FRESH, "Cache-Control": "s-maxage=100"}, "max-stale", 500, Outcome.REVALIDATE),
        ({**FRESH, "Cache-Control": "max-age=9, proxy-revalidate"}, "max-stale", 50,
         Outcome.REVALIDATE),
        # RFC 8246: immutable and fresh is served even on a client reload
        ({**FRESH, "Cache-Control": "max-age=100, immutable"}, "no-cache", 10, Outcome.FRESH_HIT),
        ({**FRESH, "Cache-Control": "max-age=100, immutable"}, "max-age=0", 10, Outcome.FRESH_HIT),
        ({**FRESH, "Cache-Control": "max-age=100, immutable"}, None, 200, Outcome.REVALIDATE),
        ({"Cache-Control": "max-age=100"}, None, 500, Outcome.MISS),  # no validator
        ({"Cache-Control": "max-age=100"}, "only-if-cached", 500, Outcome.ONLY_IF_CACHED),
    ],
)  # fmt: skip
def test_decide(
    stored_headers: dict[str, str], request_cc: str | None, age: float, outcome: Outcome
) -> None:
    stored = meta(stored_headers)
    d = decide(req(request_cc), stored, T0 + age, SETTINGS)
    assert d.outcome is outcome, d.reason
    if outcome is Outcome.REVALIDATE:
        assert d.conditional_headers == (("If-None-Match", '"v1"'),)
    if outcome in (Outcome.FRESH_HIT, Outcome.STALE_HIT, Outcome.REVALIDATE):
        assert d.age == age
    if outcome is Outcome.ONLY_IF_CACHED:
        assert d.status == 504
    assert d.store == (request_cc != "no-store")


def test_decide_says_how_long_a_hit_stays_fresh() -> None:
    d = decide(req(), meta(FRESH), T0 + 30, SETTINGS)
    assert (d.outcome, d.reason) == (Outcome.FRESH_HIT, "fresh for 70s more")


def test_decide_miss_and_forward() -> None:
    assert decide(req(), None, T0, SETTINGS).outcome is Outcome.MISS
    d = decide(req("only-if-cached"), None, T0, SETTINGS)
    assert (d.outcome, d.status) == (Outcome.ONLY_IF_CACHED, 504)
    assert decide(req("no-store"), None, T0, SETTINGS).store is False
    for method in ("POST", "PUT", "DELETE", "PATCH", "OPTIONS"):
        d = decide(req(method=method), meta(FRESH), T0, SETTINGS)
        assert d.outcome is Outcome.FORWARD
        assert d.store is False
    assert decide(req(method="HEAD"), meta(FRESH), T0, SETTINGS).outcome is Outcome.FRESH_HIT


def test_decide_pragma_no_cache_only_without_cache_control() -> None:
    stored = meta(FRESH)
    assert decide(req(Pragma="no-cache"), stored, T0, SETTINGS).outcome is Outcome.REVALIDATE
    d = decide(req("max-age=60", Pragma="no-cache"), stored, T0, SETTINGS)
    assert d.outcome is Outcome.FRESH_HIT


def test_decide_revalidates_with_both_validators() -> None:
    stored = meta({"Last-Modified": http_date(T0 - 1000), "ETag": '"e"'})  # heuristic 100s
    assert decide(req(), stored, T0 + 99, SETTINGS).outcome is Outcome.FRESH_HIT
    d = decide(req(), stored, T0 + 101, SETTINGS)
    assert d.outcome is Outcome.REVALIDATE
    assert d.conditional_headers == (
        ("If-None-Match", '"e"'),
        ("If-Modified-Since", http_date(T0 - 1000)),
    )
    only_date = meta({"Last-Modified": http_date(T0 - 1000)})
    d = decide(req(), only_date, T0 + 101, SETTINGS)
    assert d.conditional_headers == (("If-Modified-Since", http_date(T0 - 1000)),)


def test_decide_vary() -> None:
    stored = meta(
        {**FRESH, "Vary": "Accept-Language, Accept-Encoding, Authorization"},
        request_headers={"Accept-Language": "en, fr"},
    )
    hit = Outcome.FRESH_HIT
    assert decide(req(**{"Accept-Language": "en,fr"}), stored, T0, SETTINGS).outcome is hit
    d = decide(req(**{"Accept-Language": "de"}), stored, T0, SETTINGS)
    assert d.outcome is Outcome.MISS
    assert decide(req(), stored, T0, SETTINGS).outcome is Outcome.MISS  # absent vs present
    gzip_ok = req(**{"Accept-Language": "en, fr", "Accept-Encoding": "gzip, br"})
    assert decide(gzip_ok, stored, T0, SETTINGS).outcome is hit
    no_identity = req(**{"Accept-Language": "en, fr", "Accept-Encoding": "gzip, identity;q=0"})
    assert decide(no_identity, stored, T0, SETTINGS).outcome is Outcome.MISS
    star_zero = req(**{"Accept-Language": "en, fr", "Accept-Encoding": "gzip, *;q=0"})
    assert decide(star_zero, stored, T0, SETTINGS).outcome is Outcome.MISS


def test_vary_on_credentials_does_not_end_the_comparison() -> None:
    # Authorization and Cookie are left to the access policy; the fields named after them
    # (Vary's names are compared in sorted order) still select.
    stored = meta(
        {**FRESH, "Vary": "Authorization, Cookie, X-Zone"}, request_headers={"X-Zone": "north"}
    )
    assert decide(req(**{"X-Zone": "north"}), stored, T0, SETTINGS).outcome is Outcome.FRESH_HIT
    assert decide(req(**{"X-Zone": "south"}), stored, T0, SETTINGS).outcome is Outcome.MISS


def test_vary_helpers() -> None:
    assert vary_fields({"Vary": "Accept, accept-language"}) == ("accept", "accept-language")
    assert vary_fields({"Vary": "Accept, *"}) is None
    assert vary_fields({}) == ()
    star = StoredMeta(headers=(("Vary", "*"),), request_time=T0, response_time=T0)
    assert not vary_matches(star, {})
    plain = meta({"Vary": "X-A"})
    assert vary_matches(plain, {})
    assert not vary_matches(plain, {"X-A": "1"})


def test_after_revalidation_not_modified_freshens() -> None:
    stored = meta({**FRESH, "X-Old": "1", "Content-Type": "image/fits"})
    headers_304 = {
        "ETag": '"v1"',
        "Cache-Control": "max-age=500",
        "Date": http_date(T0 + 1000),
        "X-Old": "2",
        "Content-Type": "text/html",  # not applied: it would describe other bytes
        "Set-Cookie": "x=1",  # never stored
    }
    d = after_revalidation(
        stored,
        304,
        headers_304,
        request=req(),
        request_time=T0 + 999,
        response_time=T0 + 1000,
        now=T0 + 1000,
        settings=SETTINGS,
    )
    assert d.outcome is Outcome.NOT_MODIFIED
    assert d.updated is not None
    assert d.updated.field("X-Old") == "2"
    assert d.updated.field("Content-Type") == "image/fits"
    assert d.updated.field("Set-Cookie") is None
    assert d.updated.freshness_lifetime(SETTINGS) == 500
    assert d.age == 1
    assert decide(req(), d.updated, T0 + 1100, SETTINGS).outcome is Outcome.FRESH_HIT
    assert d.store


def test_after_revalidation_keeps_a_no_store_request_out_of_the_cache() -> None:
    d = after_revalidation(
        meta(FRESH),
        304,
        {"ETag": '"v1"', "Cache-Control": "max-age=500"},
        request=req("no-store"),
        request_time=T0 + 999,
        response_time=T0 + 1000,
        now=T0 + 1000,
        settings=SETTINGS,
    )
    assert (d.outcome, d.store) == (Outcome.NOT_MODIFIED, False)


@pytest.mark.parametrize(
    ("status", "headers", "outcome"),
    [
        (304, {"ETag": '"v2"'}, Outcome.MISS),  # the 304 is about another version
        (304, {"ETag": 'W/"v1"'}, Outcome.NOT_MODIFIED),  # weak comparison selects (§4.3.4)
        (304, {}, Outcome.NOT_MODIFIED),
        (200, {"ETag": '"v2"'}, Outcome.REPLACE),
        (404, {}, Outcome.REPLACE),
        (403, {}, Outcome.REPLACE),
        (503, {}, Outcome.STALE_ON_ERROR),
        (500, {}, Outcome.STALE_ON_ERROR),
    ],
)
def test_after_revalidation(status: int, headers: dict[str, str], outcome: Outcome) -> None:
    d = after_revalidation(
        meta(FRESH),
        status,
        headers,
        request=req(),
        request_time=T0 + 200,
        response_time=T0 + 200,
        now=T0 + 200,
        settings=SETTINGS,
    )
    assert d.outcome is outcome, d.reason


def test_after_revalidation_304_by_last_modified() -> None:
    lm = http_date(T0 - 1000)
    stored = meta({"Last-Modified": lm})

    def outcome(headers_304: dict[str, str]) -> Outcome:
        return after_revalidation(
            stored,
            304,
            headers_304,
            request=req(),
            request_time=T0,
            response_time=T0,
            now=T0,
            settings=SETTINGS,
        ).outcome

    assert outcome({"Last-Modified": lm}) is Outcome.NOT_MODIFIED
    assert outcome({"Last-Modified": http_date(T0 - 5)}) is Outcome.MISS


@pytest.mark.parametrize(
    ("cache_control", "request_cc", "staleness", "outcome"),
    [
        ("max-age=100", None, 1000, Outcome.STALE_ON_ERROR),  # settings default: 1 day
        ("max-age=100", None, 86400, Outcome.STALE_ON_ERROR),
        ("max-age=100", None, 86401, Outcome.ERROR),
        ("max-age=100", "stale-if-error=10", 11, Outcome.ERROR),  # client asks for less
        ("max-age=100, stale-if-error=10", None, 11, Outcome.ERROR),  # RFC 5861
        ("max-age=100, stale-if-error=10", None, 10, Outcome.STALE_ON_ERROR),
        ("max-age=100, must-revalidate", None, 1, Outcome.ERROR),  # RFC 9111 §4.2.4
        ("max-age=100, proxy-revalidate", None, 1, Outcome.ERROR),
        ("s-maxage=100", None, 1, Outcome.ERROR),
        ("max-age=100, no-cache", None, 0, Outcome.ERROR),
        ("max-age=100, must-revalidate, stale-if-error=60", None, 30, Outcome.STALE_ON_ERROR),
    ],
)
def test_on_origin_error(
    cache_control: str, request_cc: str | None, staleness: float, outcome: Outcome
) -> None:
    stored = meta({"Cache-Control": cache_control, "ETag": '"v"'})
    d = on_origin_error(stored, req(request_cc), T0 + 100 + staleness, SETTINGS, status=503)
    assert d.outcome is outcome, d.reason
    if outcome is Outcome.STALE_ON_ERROR:
        assert d.age == 100 + staleness
    else:
        assert d.status == 503


def test_on_origin_error_without_stored_response() -> None:
    d = on_origin_error(None, req(), T0, SETTINGS)
    assert d.outcome is Outcome.ERROR
    assert "unreachable" in d.reason
    assert d.status is None


def test_stale_if_error_window_setting() -> None:
    stored = meta({"Cache-Control": "max-age=1"})
    assert stale_if_error_window(stored, req(), ProxySettings(stale_if_error=0)) == 0
    d = on_origin_error(stored, req(), T0 + 5, ProxySettings(stale_if_error=0))
    assert d.outcome is Outcome.ERROR


def test_freshen_keeps_stored_fields_it_does_not_replace() -> None:
    stored = meta({"ETag": '"v1"', "X-A": "1", "Cache-Control": "max-age=1"})
    updated = freshen(
        stored,
        {"Cache-Control": "max-age=9", "Age": "3"},
        request_time=T0 + 5,
        response_time=T0 + 6,
    )
    assert updated.field("X-A") == "1"
    assert updated.field("Cache-Control") == "max-age=9"
    assert updated.age_value == 3
    assert (updated.request_time, updated.response_time) == (T0 + 5, T0 + 6)


@pytest.mark.parametrize(
    ("method", "status", "headers", "targets"),
    [
        ("GET", 200, {}, ()),
        ("HEAD", 200, {}, ()),
        ("OPTIONS", 200, {}, ()),
        ("POST", 500, {}, ()),
        ("POST", 404, {}, ()),
        ("POST", 201, {}, ("http://o/r/a",)),
        ("DELETE", 204, {}, ("http://o/r/a",)),
        ("PUT", 303, {"Location": "/r/b"}, ("http://o/r/a", "http://o/r/b")),
        ("PATCH", 200, {"Content-Location": "c"}, ("http://o/r/a", "http://o/r/c")),
        ("POST", 201, {"Location": "http://other/x"}, ("http://o/r/a",)),  # other origin
        ("POST", 201, {"Location": "http://o/r/a"}, ("http://o/r/a",)),
    ],
)
def test_invalidation_targets_rfc9111_4_4(
    method: str, status: int, headers: dict[str, str], targets: tuple[str, ...]
) -> None:
    assert invalidation_targets(method, status, "http://o/r/a", headers) == targets


# == blocks =================================================================================

KB = 1024


def test_block_geometry() -> None:
    assert block_count(0, 4) == 0
    assert block_count(1, 4) == 1
    assert block_count(8, 4) == 2
    assert block_count(9, 4) == 3
    assert block_span(2, 9, 4) == ByteRange(8, 8)
    assert block_span(0, 9, 4) == ByteRange(0, 3)
    with pytest.raises(ValueError, match="outside"):
        block_span(3, 9, 4)
    with pytest.raises(ValueError, match="positive"):
        block_count(10, 0)


def test_blocks_for() -> None:
    assert blocks_for([ByteRange(0, 0)], 100, 10) == [0]
    assert blocks_for([ByteRange(9, 10)], 100, 10) == [0, 1]
    assert blocks_for([ByteRange(50, 99), ByteRange(0, 5), ByteRange(55, 56)], 100, 10) == [
        0,
        5,
        6,
        7,
        8,
        9,
    ]
    with pytest.raises(ValueError, match="outside"):
        blocks_for([ByteRange(0, 100)], 100, 10)


def test_missing_runs() -> None:
    runs = missing_runs(range(10), {3, 4}, 10, 95, 1000)
    assert runs == [RunPlan(0, 2, 0, 29), RunPlan(5, 9, 50, 94)]
    assert runs[1].range_header == "bytes=50-94"
    assert runs[1].length == 45
    assert list(runs[0].blocks) == [0, 1, 2]
    assert runs[0].byte_range == ByteRange(0, 29)
    # capped: at most 3 blocks (30 bytes) per run
    assert missing_runs(range(8), set(), 10, 80, 35) == [
        RunPlan(0, 2, 0, 29),
        RunPlan(3, 5, 30, 59),
        RunPlan(6, 7, 60, 79),
    ]
    # a block larger than the cap is still fetched, alone
    assert missing_runs([0, 1], set(), 100, 200, 10) == [
        RunPlan(0, 0, 0, 99),
        RunPlan(1, 1, 100, 199),
    ]
    assert missing_runs([1, 2], {1, 2}, 10, 100, 100) == []
    with pytest.raises(ValueError, match="within"):
        missing_runs([10], set(), 10, 100, 100)


def test_slice_plan() -> None:
    assert slice_plan(ByteRange(5, 24), 10) == [
        BlockSlice(0, 5, 10),
        BlockSlice(1, 0, 10),
        BlockSlice(2, 0, 5),
    ]
    assert slice_plan(ByteRange(10, 10), 10) == [BlockSlice(1, 0, 1)]
    block_index, start, stop = slice_plan(ByteRange(3, 4), 10)[0]
    assert (block_index, start, stop) == (0, 3, 5)


@st.composite
def objects_and_ranges(draw: st.DrawFn) -> tuple[bytes, int, str]:
    size = draw(st.integers(min_value=0, max_value=3000))
    data = draw(st.binary(min_size=size, max_size=size))
    block_size = draw(st.sampled_from([1, 2, 3, 7, 64, 100, 512, 1024, 4096]))
    spec = st.one_of(
        st.tuples(st.integers(0, 3200), st.integers(0, 3200)).map(lambda t: f"{min(t)}-{max(t)}"),
        st.integers(0, 3200).map(lambda n: f"{n}-"),
        st.integers(1, 3200).map(lambda n: f"-{n}"),
    )
    header = "bytes=" + ",".join(draw(st.lists(spec, min_size=1, max_size=6)))
    return data, block_size, header


@settings(max_examples=400, deadline=None)
@given(
    objects_and_ranges(),
    st.sets(st.integers(0, 3100)),
    st.integers(min_value=1, max_value=5000),
)
def test_block_planning_reassembles_requested_bytes(
    case: tuple[bytes, int, str], present_seed: set[int], max_fetch: int
) -> None:
    data, block_size, header = case
    size = len(data)
    decision = parse_range_header(header, size, max_overlapping=6, max_small_unordered=6)
    if decision.outcome is not RangeOutcome.SATISFIABLE:
        return
    count = block_count(size, block_size)
    blocks = {i: data[i * block_size : (i + 1) * block_size] for i in range(count)}
    needed = blocks_for(decision.ranges, size, block_size)
    assert needed == sorted(set(needed))
    assert all(0 <= i < count for i in needed)
    present = {i for i in present_seed if i < count}
    runs = missing_runs(needed, present, block_size, size, max_fetch)

    # Runs cover exactly the missing blocks, each once, in order, contiguous within a run.
    covered = [i for run in runs for i in run.blocks]
    assert covered == sorted(set(needed) - present)
    for run in runs:
        assert run.byte_start == run.first * block_size
        assert run.byte_end == min((run.last + 1) * block_size, size) - 1
        # Never longer than the cap, unless the run is a single block bigger than the cap.
        assert run.length <= max_fetch or run.first == run.last
    # Fetching the runs and slicing the blocks gives back exactly the requested bytes.
    fetched = dict(blocks)
    for run in runs:
        body = data[run.byte_range.as_slice()]
        for i in run.blocks:
            offset = (i - run.first) * block_size
            assert body[offset : offset + block_size] == blocks[i]
    for r in decision.ranges:
        assembled = b"".join(
            fetched[s.block_index][s.start : s.stop] for s in slice_plan(r, block_size)
        )
        assert assembled == data[r.as_slice()]


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.integers(0, 200), max_size=50),
    st.sets(st.integers(0, 200)),
    st.sampled_from([1, 16, 1000]),
    st.integers(1, 20_000),
)
def test_missing_runs_properties(
    needed: list[int], present: set[int], block_size: int, max_fetch: int
) -> None:
    size = 201 * block_size - block_size // 2
    runs = missing_runs(needed, present, block_size, size, max_fetch)
    assert [i for run in runs for i in run.blocks] == sorted(set(needed) - present)
    per_run = max(1, max_fetch // block_size)
    for a, b in zip(runs, runs[1:], strict=False):
        # Runs are maximal: two runs touch only when the first one is full.
        assert a.last < b.first
        if a.last + 1 == b.first:
            assert a.last - a.first + 1 == per_run
    assert all(run.last - run.first + 1 <= per_run for run in runs)


def specs(header: str) -> tuple[RangeSpec, ...]:
    parsed = parse_range_specs(header)
    assert not isinstance(parsed, str)
    return parsed


def test_initial_fetch_for_unknown_size() -> None:
    bs, cap = 1000, 5000
    assert initial_fetch(None, bs, cap) == RunPlan(0, 4, 0, 4999)
    assert initial_fetch(specs("bytes=0-10"), bs, cap) == RunPlan(0, 0, 0, 999)
    assert initial_fetch(specs("bytes=2500-3100"), bs, cap) == RunPlan(2, 3, 2000, 3999)
    assert initial_fetch(specs("bytes=2500-"), bs, cap) == RunPlan(2, 6, 2000, 6999)
    assert initial_fetch(specs("bytes=0-99999"), bs, cap) == RunPlan(0, 4, 0, 4999)
    assert initial_fetch(specs("bytes=-500"), bs, cap) == RunPlan(0, 0, 0, 999)
    assert initial_fetch(specs("bytes=-500,7000-7001"), bs, cap) == RunPlan(7, 7, 7000, 7999)


def test_interpret_fetch_response() -> None:
    run = RunPlan(2, 3, 2000, 3999)
    ok = interpret_fetch_response(run, 206, {"Content-Range": "bytes 2000-3999/10000"})
    assert ok == FetchResult(206, 10000, ByteRange(2000, 3999))
    short = interpret_fetch_response(run, 206, {"Content-Range": "bytes 2000-2499/2500"})
    assert short == FetchResult(206, 2500, ByteRange(2000, 2499))
    beyond = interpret_fetch_response(run, 416, {"Content-Range": "bytes */1500"})
    assert beyond == FetchResult(416, 1500, None)
    whole = interpret_fetch_response(run, 200, {"Content-Length": "10"})
    assert whole == FetchResult(200, 10, ByteRange(0, 9))
    assert interpret_fetch_response(run, 200, {}) == FetchResult(200, None, None)
    assert interpret_fetch_response(run, 200, {"Content-Length": "0"}) == FetchResult(200, 0, None)

    def problem(
        status: int,
        headers: dict[str, str],
        known_size: int | None = None,
        expected_etag: str | None = None,
    ) -> str:
        result = interpret_fetch_response(
            run, status, headers, known_size=known_size, expected_etag=expected_etag
        )
        assert isinstance(result, FetchProblem)
        # Only a size or an ETag that differs from the stored one says the object changed.
        assert result.changed == ("changed" in result.reason)
        return result.reason

    assert "single valid" in problem(206, {})
    assert "complete length" in problem(206, {"Content-Range": "bytes 2000-3999/*"})
    assert "origin sent 0-3999" in problem(206, {"Content-Range": "bytes 0-3999/10000"})
    assert "origin sent 2000-2999" in problem(206, {"Content-Range": "bytes 2000-2999/10000"})
    assert "9000 bytes instead of 10000" in problem(
        206, {"Content-Range": "bytes 2000-3999/9000"}, known_size=10000
    )
    assert "changed" in problem(200, {"Content-Length": "5"}, known_size=10000)
    changed = interpret_fetch_response(run, 200, {"Content-Length": "5"}, known_size=10000)
    assert isinstance(changed, FetchProblem)
    assert changed.changed
    unchanged = interpret_fetch_response(run, 206, {})
    assert isinstance(unchanged, FetchProblem)
    assert not unchanged.changed
    assert "changed" in problem(416, {"Content-Range": "bytes */5"}, known_size=10000)
    assert 'ETag "b" instead of "a"' in problem(
        206, {"Content-Range": "bytes 2000-3999/10000", "ETag": '"b"'}, expected_etag='"a"'
    )
    assert "bytes */size" in problem(416, {})
    assert "unexpected status 412" in problem(412, {})


def test_run_request_headers() -> None:
    run = RunPlan(0, 0, 0, 99)
    lm = http_date(T0)
    assert run_request_headers(run, '"s"', lm) == (
        ("Range", "bytes=0-99"),
        ("Accept-Encoding", "identity"),
        ("If-Match", '"s"'),
    )
    assert run_request_headers(run, 'W/"w"', lm)[-1] == ("If-Unmodified-Since", lm)
    assert run_request_headers(run, None, None) == (
        ("Range", "bytes=0-99"),
        ("Accept-Encoding", "identity"),
    )


# == access =================================================================================

ALICE = credential_fingerprint({"Authorization": "Bearer alice"})
MALLORY = credential_fingerprint({"Authorization": "Bearer mallory"})
KEY = "http://o/r/file.fits"


def private_object() -> StoredMeta:
    return meta(
        {"Cache-Control": "public, max-age=3600, immutable", "ETag": '"v1"'},
        requires_authorization=True,
    )


def test_requires_authorization() -> None:
    assert requires_authorization(True, {"Cache-Control": "public, max-age=60"})
    assert not requires_authorization(False, {"Cache-Control": "public, max-age=60"})
    assert requires_authorization(False, {"Vary": "Accept, Authorization"})
    assert requires_authorization(False, {"Vary": "cookie"})
    assert requires_authorization(False, {"Vary": "*"})
    assert not requires_authorization(False, {"Vary": "Accept-Encoding"})


def test_public_object_is_served_to_anyone() -> None:
    public = meta({"Cache-Control": "max-age=60", "ETag": '"v1"'})
    for credential in (None, ALICE):
        d = access_decision(public, credential, None, T0, 30)
        assert d.access is Access.SERVE
        assert not authorization_needed(public, credential, None, T0, 30)


@pytest.mark.parametrize("credential", [None, ALICE, MALLORY])
def test_object_fetched_with_credentials_needs_a_check_for_everyone(
    credential: str | None,
) -> None:
    obj = private_object()
    assert authorization_needed(obj, credential, None, T0, 30)
    assert access_decision(obj, credential, None, T0, 30).access is Access.CHECK


def test_access_uses_cached_answers_within_ttl_for_the_same_version() -> None:
    obj = private_object()
    allowed = AuthEntry.allow(obj, T0)
    assert access_decision(obj, ALICE, allowed, T0 + 29, 30).access is Access.SERVE
    assert access_decision(obj, ALICE, allowed, T0 + 30, 30).access is Access.CHECK
    other_version = AuthEntry(True, 304, '"v0"', T0)
    assert access_decision(obj, ALICE, other_version, T0 + 1, 30).access is Access.CHECK
    denied = AuthEntry(False, 403, obj.validator, T0, (("WWW-Authenticate", "Bearer"),))
    d = access_decision(obj, MALLORY, denied, T0 + 1, 30)
    assert (d.access, d.status, d.headers) == (Access.DENY, 403, (("WWW-Authenticate", "Bearer"),))


def test_auth_check_headers() -> None:
    obj = meta(
        {"Cache-Control": "public, max-age=60", "ETag": '"v1"', "Last-Modified": http_date(T0)},
        requires_authorization=True,
    )
    client = [("Authorization", "Bearer alice"), ("Cookie", "a=1"), ("Accept", "*/*")]
    assert auth_check_headers(obj, client) == (
        ("Authorization", "Bearer alice"),
        ("Cookie", "a=1"),
        ("If-None-Match", '"v1"'),
        ("If-Modified-Since", http_date(T0)),
        ("Accept-Encoding", "identity"),
    )
    # An anonymous client is checked without credentials.
    assert auth_check_headers(obj, {})[0] == ("If-None-Match", '"v1"')


@pytest.mark.parametrize(
    ("status", "headers", "outcome", "cached_allowed"),
    [
        (304, {}, AuthOutcome.ALLOWED, True),
        (304, {"ETag": '"v1"'}, AuthOutcome.ALLOWED, True),
        (304, {"ETag": '"v2"'}, AuthOutcome.CHANGED, None),
        (200, {"ETag": '"v1"'}, AuthOutcome.ALLOWED, True),
        (206, {"ETag": 'W/"v1"'}, AuthOutcome.ALLOWED, True),
        (200, {"ETag": '"v2"'}, AuthOutcome.CHANGED, None),
        (200, {}, AuthOutcome.CHANGED, None),
        (401, {"WWW-Authenticate": "Bearer"}, AuthOutcome.DENIED, False),
        (403, {}, AuthOutcome.DENIED, False),
        (404, {}, AuthOutcome.DENIED, None),
        (302, {"Location": "/login"}, AuthOutcome.DENIED, None),
        (500, {}, AuthOutcome.UNAVAILABLE, None),
        (504, {}, AuthOutcome.UNAVAILABLE, None),
    ],
)
def test_interpret_auth_response(
    status: int, headers: dict[str, str], outcome: AuthOutcome, cached_allowed: bool | None
) -> None:
    answer = interpret_auth_response(private_object(), status, headers, T0)
    assert answer.outcome is outcome, answer.reason
    if cached_allowed is None:
        assert answer.entry is None
    else:
        assert answer.entry is not None
        assert answer.entry.allowed is cached_allowed
        assert answer.entry.validator == '"v1"'
        assert answer.entry.status == status
        if status == 401:
            assert answer.entry.headers == (("WWW-Authenticate", "Bearer"),)


def test_no_leak_scenario() -> None:
    """Alice warms the cache; Mallory and an anonymous client get the origin's 401/403."""
    cache = AuthDecisionCache()
    obj = private_object()
    cache.put(ALICE, KEY, AuthEntry.allow(obj, T0))
    assert access_decision(obj, ALICE, cache.get(ALICE, KEY, T0 + 1, 30), T0 + 1, 30).access is (
        Access.SERVE
    )
    for who, status in ((MALLORY, 403), (None, 401)):
        d = access_decision(obj, who, cache.get(who, KEY, T0 + 1, 30), T0 + 1, 30)
        assert d.access is Access.CHECK
        answer = interpret_auth_response(obj, status, {}, T0 + 1)
        assert answer.outcome is AuthOutcome.DENIED
        assert answer.entry is not None
        cache.put(who, KEY, answer.entry)
        again = access_decision(obj, who, cache.get(who, KEY, T0 + 2, 30), T0 + 2, 30)
        assert (again.access, again.status) == (Access.DENY, status)
    assert len(cache) == 3


def test_access_without_origin() -> None:
    obj = private_object()
    recent = AuthEntry.allow(obj, T0)
    d = access_without_origin(obj, ALICE, recent, T0 + 3600, 86400)
    assert d.access is Access.SERVE
    d = access_without_origin(obj, MALLORY, None, T0, 86400)
    assert (d.access, d.status) == (Access.DENY, 502)
    public = meta({"Cache-Control": "max-age=60"})
    assert access_without_origin(public, None, None, T0, 0).access is Access.SERVE


def test_auth_decision_cache_expiry_and_lru() -> None:
    cache = AuthDecisionCache(max_entries=2)
    entry = AuthEntry(True, 304, '"v"', T0)
    cache.put(ALICE, "a", entry)
    cache.put(None, "a", entry)
    assert cache.get(ALICE, "a", T0 + 10, 30) == entry
    assert cache.get(ALICE, "a", T0 + 30, 30) is None  # expired for this ttl ...
    assert cache.get(ALICE, "a", T0 + 30, 60) == entry  # ... but not for a longer one
    assert cache.get(MALLORY, "a", T0, 30) is None  # keyed by credential
    assert cache.get(None, "a", T0, 30) == entry  # anonymous has its own entry
    cache.put(ALICE, "b", entry)  # evicts the least recently used: (ALICE, "a")
    assert len(cache) == 2
    assert cache.get(ALICE, "a", T0, 30) is None
    assert cache.get(None, "a", T0, 30) == entry
    cache.discard(None, "a")
    assert cache.get(None, "a", T0, 30) is None
    cache.put(MALLORY, "b", entry)
    cache.forget_object("b")
    assert len(cache) == 0
    with pytest.raises(ValueError, match="at least 1"):
        AuthDecisionCache(0)
