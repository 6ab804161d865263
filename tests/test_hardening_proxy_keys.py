"""Hardening: proxyd's cache key keeps the query's order, cookies are credentials, and
malformed Range and conditional fields never make either server fail.

* The key of ``?collections=run1&collections=run2`` is not the key of
  ``?collections=run2&collections=run1``: ``butler serve`` reads them as two search paths,
  and origins that read the first of repeated parameters (nginx's ``$arg_NAME``) give two
  different answers. Checked as pure policy, against ``butler serve`` behind proxyd, and
  against an nginx origin that picks its file by the first ``a=``.
* A response to a request that carried only a Cookie is never served from the cache to a
  client without that cookie (an nginx origin that authorises by ``$cookie_x``).
* Arbitrary text in Range, If-Range, If-None-Match, If-Match, If-Modified-Since,
  If-Unmodified-Since and Cache-Control gets a defined answer from the pure parsers, and
  200/206/304/412/416 -- never a 5xx -- from a real proxyd and a real ``butler serve``.
"""

from __future__ import annotations

import itertools
import json
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import populate_dimensions
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st
from nginx import NginxOrigin
from proxies import Proxy, raw_request, request, running, write_old
from servers import ButlerServer
from test_proxyd_properties import rfc9110_answer

from butler import Butler
from butler.http.conditional import (
    EntityTag,
    evaluate_preconditions,
    if_range_allows_partial,
    parse_etag_list,
    parse_http_date,
)
from butler.http.ranges import RangeOutcome, parse_range_header, parse_range_specs
from proxyd.policy.access import auth_check_headers, requires_authorization
from proxyd.policy.freshness import CacheControl, CacheRequest, StoredMeta, parse_cache_control
from proxyd.policy.keys import CREDENTIAL_FIELDS, cache_key, credential_fingerprint
from proxyd.policy.requests import RequestLimits, Route, route

HSC = {"instrument": "HSC"}
SIGNING = ("X-Amz-*",)
COOKIE = "x=letmein-0123456789"
_names = itertools.count()


# == the cache key, as pure policy =========================================================


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ("collections=run1&collections=run2", "collections=run2&collections=run1"),
        ("a=1&a=2", "a=2&a=1"),
        ("a=1&b=2", "b=2&a=1"),
        ("a&a=", "a=&a"),
        ("x=1&X-Amz-Signature=s&y=2", "y=2&X-Amz-Signature=s&x=1"),
    ],
)
def test_query_order_is_part_of_the_key(first: str, second: str) -> None:
    assert cache_key(f"http://o/p?{first}", SIGNING) != cache_key(f"http://o/p?{second}", SIGNING)


@pytest.mark.parametrize(
    ("url", "key"),
    [
        # Exactly the query as sent, in its order...
        ("http://o/find?c=run2&c=run1&d=%7B%7D", "http://o/find?c=run2&c=run1&d=%7B%7D"),
        # ...minus the signing parameters, wherever they are, the others' order kept.
        (
            "http://o/obj?z=1&X-Amz-Date=d&a=2&x-amz-signature=s&m=3",
            "http://o/obj?z=1&a=2&m=3",
        ),
    ],
)
def test_key_is_the_query_minus_signing_parameters(url: str, key: str) -> None:
    assert cache_key(url, SIGNING) == key


@pytest.mark.parametrize(
    ("spelled", "canonical"),
    [
        # RFC 3986 §6.2.2.2 in a parameter NAME, as in its value: %61 is "a".
        ("http://o/p?%61=1", "http://o/p?a=1"),
        ("http://o/p?%7e%2d%5F%2E=1", "http://o/p?~-_.=1"),
        ("http://o/p?b=%61", "http://o/p?b=a"),
        ("http://o/p?%61=%62&c", "http://o/p?a=b&c"),
    ],
)
def test_percent_encoding_of_names_and_values_is_normalised(spelled: str, canonical: str) -> None:
    assert cache_key(spelled, SIGNING) == canonical
    assert cache_key(canonical, SIGNING) == canonical


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("http://o/p?a%2F=1", "http://o/p?a/=1"),  # a reserved character stays encoded
        ("http://o/p?a%26b=1", "http://o/p?a&b=1"),  # "&" encoded is not a separator
        ("http://o/p?a+b=1", "http://o/p?a%20b=1"),  # "+" is not a space in a generic URI
    ],
)
def test_reserved_characters_stay_distinct(a: str, b: str) -> None:
    assert cache_key(a, SIGNING) != cache_key(b, SIGNING)


# == credentials, as pure policy ===========================================================

UPSTREAMS = {"o": "http://origin.example"}
LIMITS = RequestLimits()


def routed(target: str, headers: dict[str, str]) -> Route:
    result = route("GET", target, headers, UPSTREAMS, LIMITS, signing_params=SIGNING)
    assert isinstance(result, Route), result
    return result


def test_a_cookie_is_a_credential() -> None:
    assert "Cookie" in CREDENTIAL_FIELDS
    with_cookie = credential_fingerprint({"Cookie": COOKIE})
    assert with_cookie is not None
    assert credential_fingerprint({"Cookie": "x=other"}) not in (None, with_cookie)
    assert credential_fingerprint({"cookie": COOKIE}) == with_cookie
    # Routed: the request has a credential, so what it fetches is only served to clients the
    # origin authorises (requires_authorization) and the check carries the cookie.
    target = routed("/o/f.bin", {"Cookie": COOKIE})
    assert target.credential == with_cookie
    assert routed("/o/f.bin", {}).credential is None
    assert requires_authorization(target.credential is not None, [("Content-Length", "1")])
    meta = StoredMeta(headers=(("ETag", '"v1"'),), request_time=0.0, response_time=0.0)
    assert ("Cookie", COOKIE) in auth_check_headers(meta, {"Cookie": COOKIE, "Accept": "*/*"})


# == butler serve behind proxyd: collections are a search path =============================


@pytest.fixture
def two_runs(tmp_path: Path) -> Path:
    """One dataset type and data ID in two RUN collections, with different contents."""
    root = tmp_path / "repo"
    with Butler.create(root) as butler:
        populate_dimensions(butler)
        butler.register_dataset_type("summary", ["visit", "detector"], "Dict")
    for run in ("run1", "run2"):
        with Butler(root, run=run) as butler:
            butler.put({"written_to": run}, "summary", HSC, visit=100, detector=0)
    return root


@pytest.fixture
def butler_server(two_runs: Path, tmp_path: Path) -> Iterator[ButlerServer]:
    workdir = tmp_path / "server"
    workdir.mkdir()
    server = ButlerServer(two_runs, workdir)
    try:
        yield server.start()
    finally:
        server.stop()


def find_and_read(proxy: Proxy, search: tuple[str, ...]) -> tuple[str, bytes]:
    """The dataset the server's find API names for ``search`` (as the remote butler asks
    for it), and its file's bytes, both through the proxy."""
    query = urllib.parse.urlencode(
        [
            ("dataset_type", "summary"),
            ("data_id", json.dumps({**HSC, "visit": 100, "detector": 0})),
            *[("collections", c) for c in search],
        ]
    )
    found = request(proxy.url, f"repo/api/v1/find?{query}")
    assert found.status == 200, found.body
    path = json.loads(found.body)["file"]["path"]
    data = request(proxy.url, "repo/files/" + path)
    assert data.status == 200
    return path, data.body


def test_collection_order_selects_the_dataset_through_the_proxy(
    two_runs: Path, butler_server: ButlerServer, tmp_path: Path
) -> None:
    on_disk = {
        run: next((two_runs / run / "summary").rglob("*.*")).read_bytes()
        for run in ("run1", "run2")
    }
    assert on_disk["run1"] != on_disk["run2"]
    with running(Proxy({"repo": butler_server.url}, tmp_path / "proxy")) as proxy:
        url = proxy.upstream_url("repo")
        # Twice over: the second pass is answered from the cache, entry by entry.
        checked = 0
        for attempt in range(2):
            for search in (("run1", "run2"), ("run2", "run1")):
                cache_dir = tmp_path / f"client-{attempt}-{'-'.join(search)}"
                with Butler(url, collections=list(search), cache_dir=cache_dir) as via:
                    value = via.get("summary", HSC, visit=100, detector=0)
                # The first collection of the search path holds the dataset returned.
                assert value == {"written_to": search[0]}, (attempt, search)
                path, data = find_and_read(proxy, search)
                assert path.startswith(f"{search[0]}/")
                assert data == on_disk[search[0]]
                checked += 1
        assert checked == 4
        # The find answers were cached (one entry per search path), not fetched every time:
        # revalidated each time (``no-cache``, issue 18), the server answering 304.
        finds = [e for e in proxy.settled_access_log() if "/api/v1/find?" in e["target"]]
        assert {e["cache"] for e in finds} >= {"REVALIDATED"}


# == an nginx origin that reads the first of repeated parameters, or authorises by cookie ====


class PickyOrigin(NginxOrigin):
    """:class:`NginxOrigin` plus two locations a shared cache must not confuse:

    * ``/pick?a=N`` serves the file ``pick-N.bin``; nginx's ``$arg_a`` is the *first* ``a``
      of the query, so ``?a=1&a=2`` and ``?a=2&a=1`` are different files;
    * ``/cookie/NAME`` serves ``NAME`` only to a request with the cookie ``x`` of
      :data:`COOKIE` (403 otherwise), as ``public`` and fresh for an hour, which lets a
      shared cache store it (RFC 9111 §3.5).
    """

    def _http_block(self) -> str:
        block = super()._http_block()
        root = str(self.root_dir)
        cookie_name, _, cookie_value = COOKIE.partition("=")
        extra = f"""        location = /pick {{
            add_header Cache-Control "max-age=3600" always;
            try_files /pick-$arg_a.bin =404;
        }}
        location /cookie/ {{
            alias "{root}/";
            if ($cookie_{cookie_name} != "{cookie_value}") {{ return 403; }}
            add_header Cache-Control "public, max-age=3600" always;
        }}
"""
        head, _, tail = block.rpartition("}")  # the end of the server block
        return f"{head}{extra}    }}{tail}"


@pytest.fixture(scope="module")
def picky(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PickyOrigin]:
    base = tmp_path_factory.mktemp("picky")
    origin = PickyOrigin(base / "root", base / "nginx")
    origin.start()
    try:
        yield origin
    finally:
        origin.stop()


@pytest.fixture(scope="module")
def picky_proxy(picky: PickyOrigin, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proxy]:
    with running(Proxy({"o": picky.url}, tmp_path_factory.mktemp("picky-proxy"))) as proxy:
        yield proxy


def test_first_parameter_origin_gets_one_entry_per_order(
    picky: PickyOrigin, picky_proxy: Proxy
) -> None:
    one = write_old(picky.root_dir, "pick-1.bin", 5000, seed=1)
    two = write_old(picky.root_dir, "pick-2.bin", 5000, seed=2)
    assert one != two
    # The origin itself answers by the first "a".
    assert request(picky.url, "pick?a=1&a=2").body == one
    assert request(picky.url, "pick?a=2&a=1").body == two
    seen = []
    for _ in range(2):  # the second round is served from the cache
        for query, expected in (("a=1&a=2", one), ("a=2&a=1", two)):
            response = request(picky_proxy.url, f"o/pick?{query}")
            assert (response.status, response.body) == (200, expected), query
            seen.append(response.header("X-Cache"))
    assert seen == ["MISS", "MISS", "HIT", "HIT"]


def test_cookie_authorised_response_is_not_served_without_the_cookie(
    picky: PickyOrigin, picky_proxy: Proxy
) -> None:
    name = f"secret-{next(_names)}.bin"
    data = write_old(picky.root_dir, name, 3000, seed=3)
    leak = data[1000:1064]
    assert request(picky.url, f"cookie/{name}").status == 403  # the origin's own policy
    path = f"o/cookie/{name}"
    # A client with the cookie fills the cache.
    first = request(picky_proxy.url, path, {"Cookie": COOKIE})
    assert (first.status, first.body) == (200, data)
    mark = picky.mark()
    for headers in ({}, {"Range": "bytes=0-99"}, {"Cookie": "x=wrong"}, {"Cookie": "y=1"}):
        denied = request(picky_proxy.url, path, headers)
        assert denied.status == 403, headers
        assert leak not in denied.body
        assert data[:100] not in denied.body
    # The origin was asked, and refused them.
    asked = [e for e in picky.access_log(mark) if e["path"] == f"/cookie/{name}"]
    assert asked
    assert {e["status"] for e in asked} == {403}
    # The client with the cookie is still served, from the cache.
    again = request(picky_proxy.url, path, {"Cookie": COOKIE})
    assert (again.status, again.body) == (200, data)
    assert again.header("X-Cache") == "HIT"


# == fuzzing: Range and conditional fields, pure ==========================================

# Text near the grammar (digits, "-", ",", "=", OWS, quotes, W/, date words) and anything.
near_range = st.text(alphabet="bytesBYTES=0123456789-,;* \t", max_size=60)
near_validators = st.text(alphabet='W/"*, \tabc09-:SunNovGMT', max_size=60)
any_text = st.text(max_size=80)
field_text = st.one_of(near_range, near_validators, any_text)


@settings(max_examples=600, database=None)
@given(value=st.one_of(near_range, any_text), size=st.integers(0, 20_000))
def test_range_parsing_agrees_with_the_rfc_oracle(value: str, size: int) -> None:
    """Any text: parse_range_header gives what RFC 9110 says (200 ignored, 206 with exactly
    these ranges, 416), computed by the independent oracle of test_proxyd_properties. Inputs
    are at most 60-80 characters, too short to reach the count limits the oracle lacks."""
    status, ranges = rfc9110_answer(value, size)
    decision = parse_range_header(value, size)
    outcome = {
        200: RangeOutcome.IGNORE,
        206: RangeOutcome.SATISFIABLE,
        416: (RangeOutcome.UNSATISFIABLE, RangeOutcome.REJECTED),
    }[status]
    if isinstance(outcome, tuple):
        assert decision.outcome in outcome, value
    else:
        assert decision.outcome is outcome, value
    assert [(r.start, r.end) for r in decision.ranges] == ranges
    if status != 200:  # valid syntax: the specs parse, whatever the size
        assert isinstance(parse_range_specs(value), tuple)


@settings(max_examples=400, database=None)
@given(
    name=st.sampled_from(["If-Match", "If-None-Match", "If-Modified-Since", "If-Unmodified-Since"]),
    value=field_text,
    method=st.sampled_from(["GET", "HEAD", "PUT", "DELETE"]),
    etag=st.sampled_from([None, '"v1"', 'W/"v1"']),
    modified=st.one_of(st.none(), st.integers(0, 2**33)),
)
def test_preconditions_have_a_defined_answer(
    name: str, value: str, method: str, etag: str | None, modified: int | None
) -> None:
    """RFC 9110 §13.2.2 on any text: each field can only give its own answer or none."""
    status = evaluate_preconditions(method, {name: value}, etag, modified)
    safe = method in ("GET", "HEAD")
    possible = {
        "If-Match": {None, 412},
        "If-Unmodified-Since": {None, 412},
        "If-None-Match": {None, 304} if safe else {None, 412},
        "If-Modified-Since": {None, 304} if safe else {None},
    }[name]
    assert status in possible, (name, value)
    tags = parse_etag_list(value)
    assert tags is None or tags == "*" or (isinstance(tags, tuple) and tags)
    date = parse_http_date(value)
    assert date is None or isinstance(date, int)
    if name in ("If-Modified-Since", "If-Unmodified-Since") and date is None:
        assert status is None  # an invalid date is ignored (§13.1.3, §13.1.4)


EPOCH = "Thu, 01 Jan 1970 00:00:00 GMT"


@settings(max_examples=400, database=None)
@given(
    # The validators themselves too: random text is next to never exactly one of them.
    value=st.one_of(field_text, st.sampled_from(['"v1"', 'W/"v1"', EPOCH])),
    etag=st.sampled_from([None, '"v1"', 'W/"v1"']),
    modified=st.one_of(st.none(), st.just(0), st.integers(0, 2**33)),
)
@example(value='"v1"', etag='"v1"', modified=None)
@example(value=EPOCH, etag=None, modified=0)
def test_if_range_is_true_or_false(value: str, etag: str | None, modified: int | None) -> None:
    answer = if_range_allows_partial(value, etag, modified, now=2**34)
    assert answer in (True, False)
    if value == etag == '"v1"' or (value == EPOCH and modified == 0):
        assert answer  # the current strong validator (a date long past is strong)
    if answer:  # only the current validator, strongly, makes it true (§13.1.5)
        tag = EntityTag.parse(value)
        if tag is not None:
            assert not tag.weak
            assert etag == str(tag)
        else:
            assert parse_http_date(value) == modified


@settings(max_examples=400, database=None)
@given(
    value=st.one_of(
        st.text(alphabet='max-age=s,"\\ \tno-cachepublic0123456789', max_size=60), any_text
    )
)
def test_cache_control_parses_to_defined_values(value: str) -> None:
    cc = parse_cache_control(value)
    assert isinstance(cc, CacheControl)
    for age in (
        cc.max_age,
        cc.s_maxage,
        cc.min_fresh,
        cc.stale_if_error,
        cc.stale_while_revalidate,
    ):
        assert age is None or 0 <= age <= 2**31
    assert cc.max_stale is None or cc.max_stale >= 0
    for names in (cc.no_cache_fields, cc.private_fields):
        assert all(isinstance(n, str) and n == n.lower() for n in names)
    request = CacheRequest.from_headers("GET", {"Cache-Control": value, "Pragma": value})
    assert request.method == "GET"


# == fuzzing: the same fields over HTTP, through a real proxyd and a real butler serve =====


@dataclass(frozen=True)
class Served:
    """One dataset file as served by ``butler serve`` and by proxyd in front of it."""

    relative: str
    data: bytes
    ports: dict[str, int]
    etag: str
    last_modified: str

    def target(self, server: str) -> str:
        prefix = "" if server == "butler serve" else "/repo"
        return f"{prefix}/files/{self.relative}"


@pytest.fixture(scope="module")
def served_file(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """``butler serve`` of a repository with one ~40 KB dataset file, and proxyd in front of
    it (its cache filled with the file)."""
    base = tmp_path_factory.mktemp("fuzz")
    root = base / "repo"
    with Butler.create(root) as butler:
        populate_dimensions(butler)
        butler.register_dataset_type("summary", ["visit", "detector"], "Dict")
    with Butler(root, run="run1") as butler:
        butler.put({"values": list(range(8000))}, "summary", HSC, visit=100, detector=0)
    [stored] = [p for p in (root / "run1").rglob("*") if p.is_file()]
    relative = stored.relative_to(root).as_posix()
    (base / "server").mkdir()
    server = ButlerServer(root, base / "server")
    try:
        server.start()
        with running(Proxy({"repo": server.url}, base / "proxy")) as proxy:
            warm = request(proxy.url, f"repo/files/{relative}")
            assert (warm.status, warm.body) == (200, stored.read_bytes())
            etag, last_modified = warm.header("ETag"), warm.header("Last-Modified")
            assert etag is not None
            assert last_modified is not None
            ports = {"butler serve": server.port, "proxyd": proxy.port}
            yield Served(relative, warm.body, ports, etag, last_modified)
    finally:
        server.stop()


def raw_get(
    port: int, path: str, fields: list[tuple[str, str]]
) -> tuple[int, dict[str, str], bytes]:
    """GET ``path`` with ``fields`` sent as bytes (Latin-1: obs-text is sent as such)."""
    head = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n".encode()
    head += b"".join(f"{n}: {v}\r\n".encode("latin-1") for n, v in fields)
    return raw_request(port, head + b"\r\n")


# A field value as a client could send it (RFC 9110 §5.5: VCHAR, SP, HTAB, obs-text).
latin_text = st.text(
    alphabet=st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f"),
    max_size=60,
)
ows = st.sampled_from(["", " ", "\t", "  "])


@st.composite
def position(draw: st.DrawFn) -> int | str:
    """Mostly a number around the file's size; one time in ten absurd or not a number."""
    if draw(st.integers(0, 9)):
        return draw(st.integers(0, 50_000))
    odd: list[int | str] = [10**40, "", "x", "+1", "0x10", "1.5"]
    return draw(st.sampled_from(odd))


@st.composite
def range_values(draw: st.DrawFn) -> str:
    """Range values near the grammar: specs of every form with some junk in some places."""
    elements = []
    for _ in range(draw(st.integers(0, 5))):
        kind = draw(
            st.sampled_from(
                ["int"] * 6 + ["backwards", "open", "suffix", "suffix", "empty", "junk"]
            )
        )
        first, last = draw(position()), draw(position())
        if isinstance(first, int) and isinstance(last, int) and kind == "int":
            last = first + last // 8  # mostly in order; "backwards" has its own kind
        element = {
            "int": f"{first}-{last}",
            "backwards": f"{last}-{first}",
            "open": f"{first}-",
            "suffix": f"-{last}",
            "empty": "",
            "junk": draw(latin_text.filter(lambda t: "," not in t)),
        }[kind]
        elements.append(draw(ows) + element + draw(ows))
    unit = draw(st.sampled_from(["bytes"] * 6 + ["BYTES", "bytes ", "items", "", "bytes\t"]))
    return f"{unit}={','.join(elements)}"


wire_text = st.one_of(range_values(), range_values(), near_range, near_validators, latin_text)


@st.composite
def validator_values(draw: st.DrawFn, served: Served) -> str:
    """Validators around the real ones: the current ETag and date, weak, mangled, listed."""
    good = [served.etag, "W/" + served.etag, served.last_modified, '"other"', "*"]
    pieces = draw(st.lists(st.one_of(st.sampled_from(good), latin_text), min_size=1, max_size=3))
    return draw(st.sampled_from([", ", ",", " "])).join(pieces)


@settings(
    max_examples=150,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(value=wire_text, server=st.sampled_from(["butler serve", "proxyd", "proxyd, cold"]))
def test_malformed_range_over_http_is_200_206_or_416(
    served_file: Served, picky: PickyOrigin, picky_proxy: Proxy, value: str, server: str
) -> None:
    data = served_file.data
    if server == "proxyd, cold":
        # A new object of an nginx origin: the Range is planned before the size is known.
        name = f"cold-{next(_names)}.bin"
        (picky.root_dir / name).write_bytes(data)
        port, target = picky_proxy.port, f"/o/{name}"
    else:
        port, target = served_file.ports[server], served_file.target(server)
    status, headers, body = raw_get(port, target, [("Range", value)])
    # What the server sees: HTTP strips OWS around a field value (RFC 9110 §5.5).
    expected, ranges = rfc9110_answer(value.strip(" \t"), len(data))
    event(f"{server}: {status}")
    assert status == expected, (server, value, body[:200])
    if status == 200:
        assert body == data
    elif status == 416:
        assert headers["content-range"] == f"bytes */{len(data)}"
    elif len(ranges) == 1:
        [(start, end)] = ranges
        assert body == data[start : end + 1]
        assert headers["content-range"] == f"bytes {start}-{end}/{len(data)}"
    else:
        assert headers["content-type"].startswith("multipart/byteranges")
        assert all(data[a : b + 1] in body for a, b in ranges)


CONDITIONAL_FIELDS = [
    "If-Range",
    "If-None-Match",
    "If-Match",
    "If-Modified-Since",
    "If-Unmodified-Since",
    "Cache-Control",
    "Pragma",
]


@settings(
    max_examples=150,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(
    data=st.data(),
    names=st.lists(st.sampled_from(CONDITIONAL_FIELDS), min_size=1, max_size=3),
    range_value=st.sampled_from([None, "bytes=0-99", "bytes=100-", "bytes=-10,0-0"]),
    server=st.sampled_from(["butler serve", "proxyd"]),
)
def test_malformed_conditionals_over_http_get_a_defined_status(
    served_file: Served,
    data: st.DataObject,
    names: list[str],
    range_value: str | None,
    server: str,
) -> None:
    values = st.one_of(validator_values(served_file), wire_text)
    fields = [(name, data.draw(values, label=name)) for name in names]
    sent = fields + ([("Range", range_value)] if range_value else [])
    status, _, body = raw_get(served_file.ports[server], served_file.target(server), sent)
    event(f"{server}: {status}")
    allowed = {200, 206, 304, 412}
    if server == "proxyd" and any(
        n == "Cache-Control" and "only-if-cached" in v.lower() for n, v in fields
    ):
        allowed.add(504)  # RFC 9111 §5.2.1.7, when the cached copy does not satisfy the request
    assert status in allowed, (server, sent, body[:200])
    if status == 200:
        assert body == served_file.data
    if status == 206 and range_value == "bytes=0-99":
        assert body == served_file.data[:100]


@pytest.mark.parametrize("server", ["butler serve", "proxyd"])
def test_two_range_lines_are_one_invalid_field_for_both_servers(
    served_file: Served, server: str
) -> None:
    """Range is a singleton field: two lines of it join into "bytes=0-9, bytes=20-29", which
    is not a valid range set, so the whole representation is sent (RFC 9110 §5.3, §14.2). A
    proxy that read only the first line would answer 206 where its origin answers 200."""
    data = served_file.data
    fields = [("Range", "bytes=0-9"), ("Range", "bytes=20-29")]
    status, _, body = raw_get(served_file.ports[server], served_file.target(server), fields)
    assert (status, body) == (200, data)
    # One line of either range is honoured: the join, not the field, was refused.
    status, headers, body = raw_get(
        served_file.ports[server], served_file.target(server), fields[:1]
    )
    assert (status, body, headers["content-range"]) == (206, data[:10], f"bytes 0-9/{len(data)}")
