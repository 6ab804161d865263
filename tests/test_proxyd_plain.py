"""proxyd.policy.plain: which requests the fast lane may answer, and until when.

The fast lane (proxyd.fastlane) answers without the full handler, so its two decisions must
never differ from the full policy's: a request it recognises must be one the full handler
would read the same way, and "a fresh hit for anyone" must be exactly what
freshness.decide and access.access_decision say for such a request.
"""

from __future__ import annotations

import math
import re
from email.utils import formatdate

import pytest
from hypothesis import assume, example, given, settings
from hypothesis import strategies as st

from proxyd.policy import access, freshness
from proxyd.policy.plain import PlainGet, Recogniser, plain_hit_until, recognise
from proxyd.settings import ProxySettings

HEAD = b"GET /o/big.bin HTTP/1.1\r\nHost: 127.0.0.1:8080"


def test_a_plain_get_is_recognised() -> None:
    assert recognise(HEAD, 8190) == PlainGet("/o/big.bin", None)
    head = HEAD + b"\r\nRange: bytes=0-99\r\nUser-Agent: wrk\r\nAccept: */*"
    assert recognise(head, 8190) == PlainGet("/o/big.bin", "bytes=0-99")
    head = HEAD + b"\r\nConnection: Keep-Alive\r\nAccept-Encoding: gzip"
    assert recognise(head, 8190) == PlainGet("/o/big.bin", None)
    assert recognise(b"GET /o/a?b=c HTTP/1.1\r\nhost: x", 8190) == PlainGet("/o/a?b=c", None)
    forwarded = HEAD + b"\r\nX-Forwarded-For: 203.0.113.7, 10.0.0.9"
    assert recognise(forwarded, 8190) == PlainGet("/o/big.bin", None, "203.0.113.7, 10.0.0.9")
    twice = forwarded + b"\r\nX-Forwarded-For: 10.0.0.1"
    assert recognise(twice, 8190) is None  # each field at most once: the full handler joins
    ranged = forwarded + b"\r\nRange: bytes=0-9"
    assert Recogniser(8190)(ranged) == PlainGet("/o/big.bin", "bytes=0-9", "203.0.113.7, 10.0.0.9")


@pytest.mark.parametrize(
    "head",
    [
        b"HEAD /o/big.bin HTTP/1.1\r\nHost: x",  # only GET
        b"POST /o/big.bin HTTP/1.1\r\nHost: x\r\nContent-Length: 0",
        b"GET /o/big.bin HTTP/1.0\r\nHost: x",  # HTTP/1.0: keep-alive rules differ
        b"GET /o/big.bin HTTP/1.1",  # no Host
        b"GET http://evil/o/big.bin HTTP/1.1\r\nHost: x",  # absolute form
        b"GET /o/big.bin HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer t",
        b"GET /o/big.bin HTTP/1.1\r\nHost: x\r\nCookie: a=b",
        b'GET /o/big.bin HTTP/1.1\r\nHost: x\r\nIf-None-Match: "a"',
        b'GET /o/big.bin HTTP/1.1\r\nHost: x\r\nIf-Range: "a"\r\nRange: bytes=0-1',
        b"GET /o/big.bin HTTP/1.1\r\nHost: x\r\nCache-Control: no-cache",
        b"GET /o/big.bin HTTP/1.1\r\nHost: x\r\nPragma: no-cache",
        b"GET /o/big.bin HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked",
        b"GET /o/big.bin HTTP/1.1\r\nHost: x\r\nConnection: close",
        b"GET /o/big.bin HTTP/1.1\r\nHost: x\r\nRange: bytes=0-1\r\nRange: bytes=5-6",
        b"GET /o/big.bin HTTP/1.1\r\nHost: x\r\nHost: y",
        b"GET /o/big.bin HTTP/1.1\r\nHost: x\r\n folded: line",
        b"GET /o/big.bin HTTP/1.1\r\nHost: x\r\nX-Unknown: 1",
        b"GET /o/big.bin HTTP/1.1\r\nHost: \xff",  # obs-text
        b"GET /o/big.bin HTTP/1.1\nHost: x",  # bare LF
        b"GET /o/b\x00g HTTP/1.1\r\nHost: x",
        b"GET  /o/big.bin HTTP/1.1\r\nHost: x",
    ],
)
def test_anything_else_goes_to_the_full_handler(head: bytes) -> None:
    assert recognise(head, 8190) is None


def test_a_head_over_the_limit_goes_to_the_full_handler() -> None:
    head = HEAD + b"\r\nUser-Agent: " + b"a" * 200
    assert recognise(head, len(head)) is not None
    assert recognise(head, len(head) - 1) is None


# -- plain_hit_until is decide() + access_decision() for a plain request --------------------

SETTINGS = ProxySettings()
T0 = 1_790_000_000.0


def _http_date(t: float) -> str:
    return formatdate(t, usegmt=True)


stored_responses = st.builds(
    lambda cc, expires, date_off, lm_off, age, vary, auth, delay: (
        freshness.StoredMeta.from_response(
            200,
            [
                *([("Cache-Control", cc)] if cc else []),
                *([("Expires", _http_date(T0 + expires))] if expires is not None else []),
                *([("Date", _http_date(T0 + date_off))] if date_off is not None else []),
                *([("Last-Modified", _http_date(T0 - lm_off))] if lm_off is not None else []),
                *([("Age", str(age))] if age is not None else []),
                *([("Vary", vary)] if vary else []),
                ("Content-Length", "100"),
            ],
            request_time=T0 - delay,
            response_time=T0,
            requires_authorization=auth,
        )
    ),
    cc=st.sampled_from(
        [
            "",
            "max-age=60",
            "max-age=0",
            "s-maxage=30, max-age=600",
            "no-cache",
            "public, max-age=100",
            "max-age=3600, immutable",
            "max-age=60, must-revalidate",
            "private",
            "no-store",
        ]
    ),
    expires=st.one_of(st.none(), st.integers(-100, 10_000)),
    date_off=st.one_of(st.none(), st.integers(-50, 50)),
    lm_off=st.one_of(st.none(), st.integers(0, 10**7)),
    age=st.one_of(st.none(), st.integers(0, 500)),
    vary=st.sampled_from(["", "Accept-Encoding", "*", "Origin"]),
    auth=st.booleans(),
    delay=st.floats(0, 5),
)


@settings(max_examples=600)
@given(stored=stored_responses, later=st.floats(0, 20_000))
def test_plain_hit_until_is_exactly_the_full_policy(
    stored: freshness.StoredMeta, later: float
) -> None:
    now = T0 + later
    until = plain_hit_until(stored, SETTINGS)
    if abs(until - now) < 1e-6:
        return  # the boundary itself: floating-point rounding may fall either way
    plain = freshness.CacheRequest("GET")
    decision = freshness.decide(plain, stored, now, SETTINGS)
    verdict = access.access_decision(stored, None, None, now, SETTINGS.auth_ttl)
    full_policy_serves = (
        decision.outcome is freshness.Outcome.FRESH_HIT and verdict.access is access.Access.SERVE
    )
    if stored.field("Vary"):
        # Left to the full handler, which compares the request's fields: the lane only
        # ever answers responses that do not vary.
        assert until == -math.inf
    else:
        assert (now < until) == full_policy_serves, (decision, verdict, until - now)


def test_never_for_responses_that_need_the_origin() -> None:
    fetched_with_credentials = freshness.StoredMeta.from_response(
        200,
        [("Cache-Control", "max-age=600")],
        request_time=T0,
        response_time=T0,
        requires_authorization=True,
    )
    assert plain_hit_until(fetched_with_credentials, SETTINGS) == -math.inf
    fresh = freshness.StoredMeta.from_response(
        200, [("Cache-Control", "max-age=600")], request_time=T0, response_time=T0
    )
    assert plain_hit_until(fresh, SETTINGS) == pytest.approx(T0 + 600)


@settings(max_examples=400)
@given(
    fields=st.lists(
        st.tuples(
            st.sampled_from(["Host", "Range", "Accept", "Authorization", "X-A", "cookie", "Host "]),
            st.text(alphabet=st.characters(min_codepoint=9, max_codepoint=127), max_size=12),
        ),
        max_size=5,
    )
)
@example(fields=[("Host", "h"), ("Range", " bytes=0-9 "), ("Accept", "*/*")])  # plain
@example(fields=[("Host", "h"), ("cookie", "a=1")])  # not plain
def test_recognised_requests_carry_no_field_but_the_plain_ones(
    fields: list[tuple[str, str]],
) -> None:
    # A value holding CR LF would be two field lines, not the field drawn.
    assume(all("\r\n" not in v for _, v in fields))
    head = "GET /o/x HTTP/1.1" + "".join(f"\r\n{n}: {v}" for n, v in fields)
    names = [n.lower() for n, _ in fields]
    # Worked out here: only Host (required), Range and Accept, each once ("host " is no
    # token), and values of visible ASCII and spaces after leading blanks (RFC 9110 §5.5).
    plain_form = (
        set(names) <= {"host", "range", "accept"}
        and len(names) == len(set(names))
        and "host" in names
        and all(re.fullmatch(r"[ \t]*[ -~]*", v) for _, v in fields)
    )
    ranges = [v.strip(" \t") for n, v in fields if n == "Range"]
    expected = PlainGet("/o/x", ranges[0] if ranges else None) if plain_form else None
    assert recognise(head.encode(), 8190) == expected


# -- Recogniser: recognise(), remembered per request shape ------------------------------------

_field_lines = st.lists(
    st.tuples(
        st.sampled_from(["Host", "Range", "range", "Accept", "User-Agent", "Cookie", "X-A"]),
        st.one_of(
            st.builds(lambda a, b: f"bytes={a}-{b}", st.integers(0, 99), st.integers(0, 99)),
            st.sampled_from(["x", "bytes=0-", "bytes=-5", "bytes=1-2, 4-5", " bytes=1-2", ""]),
            st.text(alphabet=st.characters(min_codepoint=9, max_codepoint=127), max_size=8),
        ),
    ),
    max_size=5,
)


@settings(max_examples=600)
@given(requests=st.lists(_field_lines, min_size=1, max_size=6), limit=st.sampled_from([60, 8190]))
def test_the_recogniser_answers_exactly_as_recognise(
    requests: list[list[tuple[str, str]]], limit: int
) -> None:
    recogniser = Recogniser(limit, memory=3)  # small: the table is also emptied on the way
    for fields in requests * 2:  # each shape asked twice: the second answer is remembered
        head = ("GET /o/x HTTP/1.1" + "".join(f"\r\n{n}: {v}" for n, v in fields)).encode()
        assert recogniser(head) == recognise(head, limit)


def test_the_recogniser_remembers_a_shape_whatever_its_range() -> None:
    recogniser = Recogniser(8190)
    for first in range(100):
        head = HEAD + b"\r\nRange: bytes=%d-%d\r\nAccept: */*" % (first, first + 9)
        assert recogniser(head) == PlainGet("/o/big.bin", f"bytes={first}-{first + 9}")
    assert len(recogniser._shapes) == 1
    twice = HEAD + b"\r\nRange: bytes=0-1\r\nRange: bytes=5-6"
    assert recogniser(twice) is None
    assert recogniser(twice) is None


def test_a_head_of_exactly_the_limit_is_recognised() -> None:
    head = b"GET /o/x HTTP/1.1\r\nHost: h\r\nRange: bytes=0-9"
    assert recognise(head, len(head)) == PlainGet("/o/x", "bytes=0-9")
    assert Recogniser(len(head))(head) == PlainGet("/o/x", "bytes=0-9")
    assert Recogniser(len(head) - 1)(head) is None


def test_the_recogniser_remembers_at_most_memory_shapes() -> None:
    recogniser = Recogniser(8190, memory=3)
    heads = [f"GET /o/{i} HTTP/1.1\r\nHost: h".encode() for i in range(10)]
    for head in heads:
        assert recogniser(head) is not None
        assert len(recogniser._shapes) <= 3


def test_the_recogniser_remembers_shapes_up_to_its_memory() -> None:
    heads = [f"GET /o/{name} HTTP/1.1\r\nHost: h".encode() for name in "abcde"]
    remembering = Recogniser(8190, memory=10)
    for head in heads[:3]:
        remembering(head)
    assert len(remembering._shapes) == 3  # each shape worked out once, then looked up
    bounded = Recogniser(8190, memory=2)
    for head in heads:
        assert bounded(head) == recognise(head, 8190)
        assert len(bounded._shapes) <= 2  # emptied when full: memory stays bounded
