"""Edges of the proxy's policy and of the Range parsing it shares with butler serve, found
untested by mutation testing (bench/mutation/run.py): each test here kills mutants that
survived the rest of the suite."""

from __future__ import annotations

import calendar
import dataclasses
import email.utils
import itertools
import tomllib
from pathlib import Path

import pytest

from butler.http.bundle import BundleEntry
from butler.http.conditional import EntityTag, parse_etag_list, parse_http_date
from butler.http.ranges import (
    ByteRange,
    ContentRange,
    MultipartLayout,
    RangeOutcome,
    RangeRequest,
    RangeSpec,
    coalesce_ranges,
    parse_range_header,
)
from proxyd.policy.access import (
    AccessDecision,
    AuthAnswer,
    AuthDecisionCache,
    AuthEntry,
    AuthOutcome,
    access_decision,
    interpret_auth_response,
)
from proxyd.policy.blocks import (
    FetchProblem,
    FetchResult,
    RunPlan,
    block_count,
    block_span,
    cacheable_in_blocks,
    initial_fetch,
    interpret_fetch_response,
    missing_runs,
    needed_in_order,
    shorter_answer,
)
from proxyd.policy.freshness import (
    CacheControl,
    CacheRequest,
    Decision,
    Outcome,
    StoredMeta,
    after_revalidation,
    current_age,
    freshness_lifetime,
    invalidation_targets,
    parse_cache_control,
)
from proxyd.policy.keys import credential_fingerprint, split_signing_params
from proxyd.policy.requests import Refusal, RequestLimits, Route, route
from proxyd.settings import ProxySettings

SIGNING = ("X-Amz-*",)


def fingerprint_of(query: str) -> str | None:
    _, signing = split_signing_params(query, SIGNING)
    return credential_fingerprint({}, signing)


@pytest.mark.parametrize(
    "params",
    [
        # Same value, different names: ordered by name, not by value.
        ["X-Amz-Credential=1", "X-Amz-Date=1", "X-Amz-Signature=1"],
        # Same name, different values: ordered by value too.
        ["X-Amz-Signature=3", "X-Amz-Signature=1", "X-Amz-Signature=2"],
        # A name without "=" beside the same name with values (None cannot be compared
        # with a string: the sort must not try).
        ["X-Amz-Signature", "X-Amz-Signature=b", "X-Amz-Signature=a"],
    ],
)
def test_signing_parameters_in_any_order_are_one_credential(params: list[str]) -> None:
    """A client may send its signing parameters in any order: the credential is the set,
    so every order has one fingerprint (and one authorisation decision)."""
    prints = {fingerprint_of("&".join(order)) for order in itertools.permutations(params)}
    assert len(prints) == 1
    assert None not in prints
    # ... and a different set is a different credential.
    assert fingerprint_of("&".join(params[:-1])) not in prints


# Value objects the policy hands between requests, tasks and threads (the auth cache's
# entries, stored metadata, routes, parsed ranges): one holder must never change what another
# holds, so each must refuse assignment.
VALUE_CLASSES = [
    AccessDecision,
    AuthAnswer,
    AuthEntry,
    RunPlan,
    BundleEntry,
    ByteRange,
    CacheControl,
    CacheRequest,
    ContentRange,
    Decision,
    EntityTag,
    FetchResult,
    MultipartLayout,
    RangeRequest,
    RangeSpec,
    Refusal,
    RequestLimits,
    Route,
    StoredMeta,
]


@pytest.mark.parametrize("cls", VALUE_CLASSES, ids=lambda c: c.__name__)
def test_policy_values_are_immutable(cls: type) -> None:
    assert dataclasses.is_dataclass(cls)
    assert cls.__dataclass_params__.frozen  # type: ignore[attr-defined]


def test_auth_decisions_cannot_be_changed_once_cached() -> None:
    """A cached decision is shared by every request with that credential: no request may
    alter it in place (turn a denial into an allowance for the next one)."""
    cache = AuthDecisionCache(max_entries=4)
    denial = AuthEntry(allowed=False, status=403, validator='"v1"', decided_at=0.0)
    cache.put("credential", "key", denial)
    with pytest.raises(dataclasses.FrozenInstanceError):
        denial.allowed = True  # type: ignore[misc]
    assert hash(denial) == hash(AuthEntry(False, 403, '"v1"', 0.0))


# -- authorisation answers at the edges of their status classes ----------------------------


@pytest.mark.parametrize(
    ("status", "outcome"),
    [
        (199, AuthOutcome.DENIED),  # informational, no final answer: never an allowance
        (200, AuthOutcome.ALLOWED),
        (299, AuthOutcome.ALLOWED),  # the last 2xx: the stored version, confirmed
        (300, AuthOutcome.DENIED),  # Multiple Choices is no 2xx: forwarded, never served
        (499, AuthOutcome.DENIED),  # a client error, not an outage: forwarded
        (501, AuthOutcome.UNAVAILABLE),  # every 5xx, listed or not, is an outage
    ],
)
def test_auth_answers_at_status_class_edges(status: int, outcome: AuthOutcome) -> None:
    stored = StoredMeta.from_response(
        200,
        [("ETag", '"v1"'), ("Cache-Control", "public, max-age=60")],
        request_time=0.0,
        response_time=0.0,
        requires_authorization=True,
    )
    answer = interpret_auth_response(stored, status, {"ETag": '"v1"'}, 1.0)
    assert answer.outcome is outcome, answer.reason
    assert (answer.entry is not None and answer.entry.allowed) is (outcome is AuthOutcome.ALLOWED)


def stored_with(**fields: str) -> StoredMeta:
    return StoredMeta.from_response(
        200,
        list(fields.items()),
        request_time=0.0,
        response_time=0.0,
        requires_authorization=True,
    )


DAY1, DAY2 = "Sun, 06 Dec 2026 10:00:00 GMT", "Mon, 07 Dec 2026 10:00:00 GMT"


@pytest.mark.parametrize(
    ("stored", "answered", "outcome"),
    [
        ({"Last-Modified": DAY1}, {"Last-Modified": DAY1}, AuthOutcome.ALLOWED),
        ({"Last-Modified": DAY1}, {"Last-Modified": DAY2}, AuthOutcome.CHANGED),
        ({"ETag": '"v1"'}, {"Last-Modified": DAY1}, AuthOutcome.CHANGED),  # nothing to compare
        ({"Last-Modified": DAY1}, {}, AuthOutcome.CHANGED),  # no validator: cannot be the same
    ],
)
def test_a_2xx_without_etag_is_the_stored_version_only_by_its_date(
    stored: dict[str, str], answered: dict[str, str], outcome: AuthOutcome
) -> None:
    answer = interpret_auth_response(stored_with(**stored), 200, answered, 1.0)
    assert answer.outcome is outcome, answer.reason


@pytest.mark.parametrize(("credential", "who"), [(None, "anonymous client"), ("c", "credential")])
def test_access_reasons_name_who_asked(credential: str | None, who: str) -> None:
    """The reason (logged, and shown in a denial) says whether the client had credentials."""
    stored = StoredMeta.from_response(
        200, [("ETag", '"v1"')], request_time=0.0, response_time=0.0, requires_authorization=True
    )
    decision = access_decision(stored, credential, None, 1.0, 30.0)
    assert decision.reason == f"the origin has not yet authorised this {who}"


def test_an_auth_cache_of_one_entry_keeps_the_latest() -> None:
    cache = AuthDecisionCache(max_entries=1)
    first = AuthEntry(allowed=True, status=304, validator='"v1"', decided_at=0.0)
    second = AuthEntry(allowed=False, status=403, validator='"v1"', decided_at=0.0)
    cache.put("a", "k", first)
    cache.put("b", "k", second)
    assert len(cache) == 1
    assert cache.get("a", "k", 1.0, 30.0) is None
    assert cache.get("b", "k", 1.0, 30.0) == second
    with pytest.raises(ValueError, match="at least 1"):
        AuthDecisionCache(max_entries=0)


# -- Range sets at the edges of their limits ------------------------------------------------


def test_unordered_ranges_exactly_the_small_size_are_not_small() -> None:
    """Ranges *shorter* than ``small_range_bytes`` count towards the unordered limit; one of
    exactly that length does not."""
    value = "bytes=100-109,0-9"  # descending, each 10 bytes long
    at_size = parse_range_header(value, 1000, small_range_bytes=10, max_small_unordered=1)
    assert at_size.outcome is RangeOutcome.SATISFIABLE
    above = parse_range_header(value, 1000, small_range_bytes=11, max_small_unordered=1)
    assert above.outcome is RangeOutcome.REJECTED


def test_the_default_coalescing_gap_is_the_rfcs_80_bytes() -> None:
    """RFC 9110 §14.6 names ~80 bytes as a part's overhead: gaps shorter than that merge."""
    assert len(coalesce_ranges([ByteRange(0, 9), ByteRange(90, 99)])) == 2
    assert coalesce_ranges([ByteRange(0, 9), ByteRange(89, 99)]) == (ByteRange(0, 99),)


def test_ranges_are_coalesced_across_gaps_shorter_than_the_gap() -> None:
    # 0-9 and 90-99 leave 80 bytes between them (10..89): not fewer than 80.
    assert coalesce_ranges([ByteRange(0, 9), ByteRange(90, 99)], gap=80) == (
        ByteRange(0, 9),
        ByteRange(90, 99),
    )
    # 79 bytes between them (10..88): merged.
    assert coalesce_ranges([ByteRange(0, 9), ByteRange(89, 99)], gap=80) == (ByteRange(0, 99),)


def test_positions_of_up_to_32_digits_are_read() -> None:
    """32 digits are a position (clipped to the size); 33 make the header ignored."""
    read = parse_range_header("bytes=10-" + "9" * 32, 100)
    assert read.outcome is RangeOutcome.SATISFIABLE
    assert read.ranges == (ByteRange(10, 99),)
    assert parse_range_header("bytes=10-" + "9" * 33, 100).outcome is RangeOutcome.IGNORE


# -- more Range and request-header edges -------------------------------------------------------


def test_ranges_with_equal_starts_are_in_ascending_order() -> None:
    """Non-decreasing starts are ascending order: only a range that starts *before* the one
    listed ahead of it makes the set unordered."""
    same_start = parse_range_header("bytes=0-9,0-19", 100, max_small_unordered=0)
    assert same_start.outcome is RangeOutcome.SATISFIABLE
    descending = parse_range_header("bytes=10-19,0-9", 100, max_small_unordered=1)
    assert descending.outcome is RangeOutcome.REJECTED
    # The third range is out of order with the second, not the first.
    later = parse_range_header("bytes=0-9,50-59,20-29", 100, max_small_unordered=2)
    assert later.outcome is RangeOutcome.REJECTED


@pytest.mark.parametrize("value", ["bytes", "=0-9", "bytes 0-9"])
def test_a_range_header_without_unit_and_equals_says_so(value: str) -> None:
    parsed = parse_range_header(value, 100)
    assert parsed.outcome is RangeOutcome.IGNORE
    assert parsed.reason == "Range header is not of the form unit=range-set"


@pytest.mark.parametrize("bad", ["a\rb", "a\nb", "a\0b", "a\r\nb"])
def test_header_values_with_cr_lf_or_nul_are_refused(bad: str) -> None:
    """Each of CR, LF and NUL alone splits or ends a field at some server behind the proxy
    (request smuggling, RFC 9110 §5.5): any one is enough to refuse the request."""
    limits = RequestLimits()
    refused = route(
        "GET", "/o/x", [("X-Test", bad)], {"o": "http://127.0.0.1:1/"}, limits, signing_params=()
    )
    assert isinstance(refused, Refusal)
    assert refused.status == 400


# -- conditional fields ------------------------------------------------------------------------


@pytest.mark.parametrize("value", ['"abc', '"a", "b', 'W/"x', ',"a', "W/", '"a", W/', 'a"b"'])
def test_an_unterminated_entity_tag_makes_the_list_invalid(value: str) -> None:
    """Unterminated, cut after ``W/``, or not starting with a quote: the list is invalid
    (and is never scanned again from its start)."""
    assert parse_etag_list(value) is None


def test_two_digit_years_are_read_against_the_given_now() -> None:
    """RFC 9110 §5.6.7: an RFC 850 year more than 50 years ahead is in the past century,
    judged from "now" — the caller's when given, so the answer does not drift with the
    clock."""
    rfc850 = "Sunday, 06-Nov-94 08:49:37 GMT"
    in_2100 = calendar.timegm((2100, 1, 1, 0, 0, 0))
    assert parse_http_date(rfc850, now=in_2100) == calendar.timegm((2094, 11, 6, 8, 49, 37))
    in_2026 = calendar.timegm((2026, 12, 6, 0, 0, 0))
    assert parse_http_date(rfc850, now=in_2026) == calendar.timegm((1994, 11, 6, 8, 49, 37))


@pytest.mark.parametrize(("yy", "year"), [("76", 2076), ("77", 1977)])
def test_a_two_digit_year_exactly_50_years_ahead_is_still_ahead(yy: str, year: int) -> None:
    """ "More than 50 years in the future" is the past century: 2076 seen from 2026 is 50
    years ahead (kept), 2077 is more (read as 1977)."""
    in_2026 = calendar.timegm((2026, 12, 6, 0, 0, 0))
    parsed = parse_http_date(f"Friday, 06-Nov-{yy} 08:49:37 GMT", now=in_2026)
    assert parsed == calendar.timegm((year, 11, 6, 8, 49, 37))


def test_a_leap_second_is_a_date_and_61_is_not() -> None:
    """RFC 9110 §5.6.7's time-of-day allows second 60 (a leap second), nothing beyond."""
    assert parse_http_date("Sun, 06 Nov 1994 08:49:60 GMT") == calendar.timegm(
        (1994, 11, 6, 8, 50, 0)
    )
    assert parse_http_date("Sun, 06 Nov 1994 08:49:61 GMT") is None
    assert parse_http_date("Sun, 06 Nov 1994 24:00:00 GMT") is None
    assert parse_http_date("Sun, 06 Nov 1994 08:60:00 GMT") is None


@pytest.mark.parametrize(
    ("value", "tags"),
    [
        ('"a"', ("a",)),
        ('"a",W/"b"', ("a", "b")),
        ('"",  "c" ,', ("", "c")),
    ],
)
def test_entity_tag_lists_read_every_tag(value: str, tags: tuple[str, ...]) -> None:
    parsed = parse_etag_list(value)
    assert isinstance(parsed, tuple)
    assert tuple(t.opaque for t in parsed) == tags


# -- what refusals quote of a hostile request ----------------------------------------------------

LONG = "\x01" * 100  # no token: quoted with repr, and cut


def refusal_of(method: str, target: str, headers: list[tuple[str, str]]) -> Refusal:
    refused = route(
        method, target, headers, {"o": "http://127.0.0.1:1/"}, RequestLimits(), signing_params=()
    )
    assert isinstance(refused, Refusal)
    return refused


def test_refusals_quote_at_most_a_bounded_prefix_of_what_was_sent() -> None:
    """An error echoes part of a hostile name so a person can see what was wrong, but never
    all of it: 32 characters of a method, 64 of a field or upstream name."""
    method = "M" * 40
    assert repr(method[:32]) in refusal_of(method, "/o/x", []).message
    assert repr(method[:33]) not in refusal_of(method, "/o/x", []).message
    bad_field = refusal_of("GET", "/o/x", [(LONG, "v")])
    assert bad_field.message == f"malformed request header field {LONG[:64]!r}"
    big_field = refusal_of("GET", "/o/x", [(LONG, "v" * 9000)])
    assert f"request header field {LONG[:64]!r} is " in big_field.message
    assert repr(LONG[:65]) not in big_field.message
    upstream = "!" * 100  # allowed in a path, not in an upstream's name: quoted with repr
    unknown = refusal_of("GET", f"/{upstream}/x", [])
    assert unknown.status == 404
    assert f"no upstream named {upstream[:64]!r};" in unknown.message


def test_a_target_of_exactly_the_limit_is_accepted() -> None:
    limits = RequestLimits(max_url_bytes=20)
    at = "/o/" + "a" * 17  # 20 bytes
    assert isinstance(route("GET", at, [], {"o": "http://h/"}, limits, signing_params=()), Route)
    over = route("GET", at + "a", [], {"o": "http://h/"}, limits, signing_params=())
    assert isinstance(over, Refusal)
    assert over.status == 414


# -- freshness at the edges of its numbers -----------------------------------------------------


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("max-age=2147483647", 2**31 - 1),
        ("max-age=2147483648", 2**31),
        ("max-age=99999999999", 2**31),  # 11 digits: capped at 2^31 (RFC 9111 §1.2.2)
        ("max-age=999999999999999999999", 2**31),
    ],
)
def test_delta_seconds_are_capped_at_2_to_the_31(value: str, seconds: int) -> None:
    assert parse_cache_control(value).max_age == seconds


@pytest.mark.parametrize(
    ("value", "max_age", "fields"),
    [
        ('private="a\\"b", max-age=5', 5, ('a"b',)),  # an escaped quote inside the value
        ('private="x,y", max-age=7', 7, ("x", "y")),  # a comma inside the quoted value
        ('private="ends with \\\\", max-age=9', 9, ("ends with \\",)),
    ],
)
def test_quoted_directive_values_do_not_swallow_what_follows(
    value: str, max_age: int, fields: tuple[str, ...]
) -> None:
    parsed = parse_cache_control(value)
    assert parsed.max_age == max_age
    assert parsed.private_fields == fields


def test_names_that_are_tokens_are_shown_as_sent_up_to_their_bound() -> None:
    """A method of 32 token characters is shown whole and unquoted, one of 33 is cut and
    quoted; field and upstream names that are tokens are shown unquoted, 64 characters."""
    assert refusal_of("M" * 32, "/o/x", []).message.startswith(f"method {'M' * 32} is not")
    assert refusal_of("M" * 33, "/o/x", []).message.startswith(f"method {'M' * 32!r} is not")
    name = "X-" + "f" * 98
    big_field = refusal_of("GET", "/o/x", [(name, "v" * 9000)])
    assert big_field.message.startswith(f"request header field {name[:64]} is ")
    upstream = "u" * 100
    unknown = refusal_of("GET", f"/{upstream}/x", [])
    assert f"no upstream named {upstream[:64]};" in unknown.message


def test_header_fields_of_exactly_the_limits_are_accepted() -> None:
    """A field of max_header_bytes (name, ": ", value, CRLF) and fields totalling
    max_headers_total_bytes pass; one byte more is a 431."""
    limits = RequestLimits(max_header_bytes=100, max_headers_total_bytes=250)

    def answer(headers: list[tuple[str, str]]) -> Route | Refusal:
        return route("GET", "/o/x", headers, {"o": "http://h/"}, limits, signing_params=())

    field = ("X-A", "v" * (100 - 3 - 4))  # 100 bytes on the wire
    assert isinstance(answer([field]), Route)
    refused = answer([("X-A", "v" * (100 - 3 - 3))])
    assert isinstance(refused, Refusal)
    assert refused.status == 431
    # 100 + 100 + 50 = 250 in all
    fields = [field, ("X-B", field[1]), ("X-C", "w" * (50 - 3 - 4))]
    assert isinstance(answer(fields), Route)
    over = answer([*fields[:2], ("X-C", "w" * (50 - 3 - 3))])
    assert isinstance(over, Refusal)
    assert over.status == 431
    assert "total 251 bytes" in over.message


def test_the_default_request_limits_are_the_documented_ones() -> None:
    """RequestLimits() (what the policy uses when no settings are given) holds the values
    docs/security.md and the commented config/proxyd.toml promise."""
    root = Path(__file__).resolve().parents[1]
    row = next(
        line
        for line in (root / "docs" / "security.md").read_text().splitlines()
        if line.startswith("|") and "`max_header_bytes`, `max_headers_total_bytes`" in line
    )
    documented = [int(v) for v in row.rstrip(" |").rsplit("|", 1)[1].split(",")]
    config = tomllib.loads((root / "config" / "proxyd.toml").read_text())
    flat = {k: v for table in config.values() if isinstance(table, dict) for k, v in table.items()}
    flat.update({k: v for k, v in config.items() if not isinstance(v, dict)})
    defaults = RequestLimits()
    names = ("max_header_bytes", "max_headers_total_bytes", "max_url_bytes")
    values = [getattr(defaults, name) for name in names]
    assert values == documented
    assert values == [flat[name] for name in names]


def test_a_tag_followed_by_one_space_then_a_comma_is_read() -> None:
    parsed = parse_etag_list('"a" ,"b"')
    assert isinstance(parsed, tuple)
    assert [t.opaque for t in parsed] == ["a", "b"]


# -- freshness: the RFC's lists and the defaults of stored metadata -----------------------------

T0 = 1_700_000_000.0
RFC9110_HEURISTICALLY_CACHEABLE = {200, 203, 204, 206, 300, 301, 308, 404, 405, 410, 414, 501}
"""RFC 9110 §15.1, as the RFC lists them (not taken from the code under test)."""


def http_date(when: float) -> str:
    return email.utils.formatdate(when, usegmt=True)


def test_heuristic_freshness_applies_to_exactly_the_rfcs_statuses() -> None:
    headers = [("Date", http_date(T0)), ("Last-Modified", http_date(T0 - 1000))]
    settings = ProxySettings()
    fresh_for = {
        status
        for status in range(100, 600)
        if freshness_lifetime(headers, T0, settings, status=status) > 0
    }
    assert fresh_for == RFC9110_HEURISTICALLY_CACHEABLE


@pytest.mark.parametrize(
    ("status", "outcome"),
    [
        (500, Outcome.STALE_ON_ERROR),
        (501, Outcome.REPLACE),
        (502, Outcome.STALE_ON_ERROR),
        (503, Outcome.STALE_ON_ERROR),
        (504, Outcome.STALE_ON_ERROR),
        (505, Outcome.REPLACE),
    ],
)
def test_stale_if_error_covers_500_502_503_504_only(status: int, outcome: Outcome) -> None:
    """RFC 5861 §4: an "error" is 500, 502, 503 or 504."""
    stored = StoredMeta.from_response(
        200,
        [("Cache-Control", "max-age=10, stale-if-error=600"), ("ETag", '"a"')],
        request_time=T0,
        response_time=T0,
    )
    later = T0 + 20
    decision = after_revalidation(
        stored,
        status,
        [],
        request=CacheRequest.from_headers("GET", []),
        request_time=later,
        response_time=later,
        now=later,
        settings=ProxySettings(),
    )
    assert decision.outcome is outcome


def test_directives_separated_by_a_bare_comma_are_all_read() -> None:
    parsed = parse_cache_control("no-store,max-age=5,s-maxage=7")
    assert parsed.no_store
    assert parsed.max_age == 5
    assert parsed.s_maxage == 7


@pytest.mark.parametrize(
    ("status", "outcome"),
    [(304, Outcome.MISS), (200, Outcome.REPLACE)],  # a 304 for another version; a new one
)
@pytest.mark.parametrize(("request_cc", "store"), [("", True), ("no-store", False)])
def test_what_a_revalidation_brings_instead_is_stored_unless_the_request_says_no(
    status: int, outcome: Outcome, request_cc: str, store: bool
) -> None:
    stored = StoredMeta.from_response(
        200, [("ETag", '"a"'), ("Cache-Control", "max-age=0")], request_time=T0, response_time=T0
    )
    headers = [("Cache-Control", request_cc)] if request_cc else []
    decision = after_revalidation(
        stored,
        status,
        [("ETag", '"b"')],
        request=CacheRequest.from_headers("GET", headers),
        request_time=T0 + 1,
        response_time=T0 + 1,
        now=T0 + 1,
        settings=ProxySettings(),
    )
    assert decision.outcome is outcome
    assert decision.store is store


def test_stored_metadata_by_default_is_public_and_aged_by_the_round_trip() -> None:
    """The constructor's defaults: no Age field (age_value 0), no authorization needed."""
    meta = StoredMeta(headers=(("Date", http_date(T0)),), request_time=T0 - 3, response_time=T0)
    assert meta.requires_authorization is False
    # RFC 9111 §4.2.3: apparent age 0 (Date = receipt); the 3 s round trip is the age.
    assert meta.current_age(T0) == pytest.approx(3.0)
    made = StoredMeta.from_response(200, [], request_time=T0, response_time=T0)
    assert made.requires_authorization is False


def test_a_fresh_response_is_not_stale_at_all() -> None:
    meta = StoredMeta.from_response(
        200, [("Cache-Control", "max-age=100")], request_time=T0, response_time=T0
    )
    settings = ProxySettings()
    assert meta.staleness(T0 + 10, settings) == 0.0
    assert meta.staleness(T0 + 150, settings) == pytest.approx(50.0)


@pytest.mark.parametrize(
    ("status", "invalidates"), [(199, False), (200, True), (399, True), (400, False)]
)
def test_only_non_error_answers_to_unsafe_methods_invalidate(
    status: int, invalidates: bool
) -> None:
    url = "http://origin.example/o/x"
    expected = (url,) if invalidates else ()
    assert invalidation_targets("POST", status, url, []) == expected


def test_quoted_directive_values_after_spaces_escapes_and_junk_are_read() -> None:
    # Space between "=" and the quoted string: still the quoted string.
    assert parse_cache_control('no-cache= "Set-Cookie, X-A"').no_cache_fields == (
        "set-cookie",
        "x-a",
    )
    # Junk after the closing quote is skipped up to the next comma, not past it.
    assert parse_cache_control('private="X-A"junk,max-age=5').max_age == 5
    assert parse_cache_control('private="X-A"x,max-age=6').max_age == 6
    # A backslash as the very last character is kept, not read past the end.
    assert parse_cache_control('private="X-A\\').private_fields == ("x-a\\",)


def test_a_clock_stepped_back_never_makes_an_age_negative() -> None:
    """Date ahead of the receipt, and the response received "before" the request was sent
    (the system clock stepped back in between): the age is 0, not negative."""
    age = current_age(
        age_value=0, date_value=T0 + 10, request_time=T0 + 5, response_time=T0, now=T0
    )
    assert age == 0.0


# -- block arithmetic at its edges --------------------------------------------------------------


def test_negative_sizes_and_block_indexes_are_refused() -> None:
    with pytest.raises(ValueError, match="size must be >= 0"):
        block_count(-1, 1024)
    with pytest.raises(ValueError, match="outside an object"):
        block_span(-1, 4096, 1024)
    with pytest.raises(ValueError, match="block indexes must be within 0..3"):
        missing_runs([-1, 2], set(), 1024, 4096, 4096)
    with pytest.raises(ValueError, match="max_fetch_bytes must be positive"):
        missing_runs([0], set(), 1024, 4096, 0)


def test_a_fetch_cap_below_one_block_still_fetches_a_block_at_a_time() -> None:
    runs = missing_runs([0, 1, 2], set(), 1024, 3072, 100)
    assert [(r.first, r.last) for r in runs] == [(0, 0), (1, 1), (2, 2)]
    first = initial_fetch(None, 1024, 100)
    assert (first.first, first.last, first.byte_start, first.byte_end) == (0, 0, 0, 1023)


def test_the_blocks_a_response_needs_come_in_its_order() -> None:
    ranges = [ByteRange(100, 199), ByteRange(0, 9)]
    # 100 bytes from block 1 (64-byte blocks: 100..127 in block 1, 128..191 in 2, 192..199
    # in 3), then 10 bytes from block 0.
    assert list(needed_in_order(ranges, 64)) == [(0, 1), (28, 2), (92, 3), (100, 0)]


# -- blocks: the second run, on issue 17's code (bench/mutation) ---------------------------


def test_only_an_object_with_a_validator_or_of_one_block_is_cached_in_blocks() -> None:
    big, block = 10_000, 1_000
    assert cacheable_in_blocks('"v1"', None, big, block)  # an ETag alone
    assert cacheable_in_blocks(None, "Tue, 14 Nov 2023 22:13:20 GMT", big, block)
    assert not cacheable_in_blocks(None, None, big, block)  # two fetches could mix versions
    assert cacheable_in_blocks(None, None, block, block)  # exactly one block: one fetch
    assert not cacheable_in_blocks(None, None, block + 1, block)


def test_block_indexes_past_the_end_are_refused_wherever_they_are() -> None:
    with pytest.raises(ValueError, match=r"within 0\.\.9"):
        missing_runs([0, 10], set(), 10, 100, 100)  # the first is fine, the last is not
    with pytest.raises(ValueError, match=r"within 0\.\.9"):
        missing_runs([-1, 3], set(), 10, 100, 100)


def test_a_shorter_answer_is_one_that_ends_before_the_run_and_the_object() -> None:
    run = RunPlan(0, 1, 0, 1999)  # bytes 0-1999 asked for

    def answer(content_range: str | None, status: int = 206) -> FetchResult | None:
        headers = {} if content_range is None else {"Content-Range": content_range}
        return shorter_answer(run, status, headers)

    shorter = answer("bytes 0-998/5000")
    assert shorter == FetchResult(206, 5000, ByteRange(0, 998))
    assert answer("bytes 0-1999/5000") is None  # what was asked: not shorter
    assert answer("bytes 0-1499/1500") is None  # the object ends there: not shorter
    assert answer("bytes 0-1498/1500") == FetchResult(206, 1500, ByteRange(0, 1498))
    assert answer("bytes 1-998/5000") is None  # not where the run starts
    assert answer(None) is None
    assert answer("bytes 0-998/*") is None  # no complete length: cannot be kept
    assert answer("bytes */5000") is None
    assert answer("bytes 0-998/5000", status=200) is None


def test_a_416_must_say_the_size_and_nothing_else() -> None:
    run = RunPlan(5, 5, 5000, 5999)
    ok = interpret_fetch_response(run, 416, {"Content-Range": "bytes */4000"})
    assert ok == FetchResult(416, 4000, None)
    for value in ("bytes 0-9/4000", "bytes 0-9/*", "nonsense"):
        result = interpret_fetch_response(run, 416, {"Content-Range": value})
        assert isinstance(result, FetchProblem), value
        assert "bytes */size" in result.reason
    missing = interpret_fetch_response(run, 416, {})
    assert isinstance(missing, FetchProblem)
