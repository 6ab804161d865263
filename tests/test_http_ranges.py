"""Pure RFC 9110 semantics: byte ranges (§14), multipart/byteranges, preconditions (§13)."""

from __future__ import annotations

import email.parser
import email.policy
import re

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from butler.http.conditional import (
    EntityTag,
    evaluate_preconditions,
    format_http_date,
    if_range_allows_partial,
    parse_etag_list,
    parse_http_date,
    strong_match,
    weak_match,
)
from butler.http.ranges import (
    MAX_DIGITS,
    ByteRange,
    ContentRange,
    MultipartError,
    RangeOutcome,
    RangeSpec,
    coalesce_ranges,
    content_range,
    make_boundary,
    multipart_boundary,
    multipart_content_type,
    multipart_layout,
    multipart_parts,
    parse_content_range,
    parse_range_header,
    parse_range_specs,
    simple_range,
    unsatisfied_content_range,
)

DATA = bytes(i * 7 % 251 for i in range(10000))  # the RFC's 10000-byte representation


def ranges_of(value: str, size: int = 10000, **limits: int) -> list[tuple[int, int]]:
    decision = parse_range_header(value, size, **limits)
    assert decision.outcome is RangeOutcome.SATISFIABLE, decision
    return [(r.start, r.end) for r in decision.ranges]


def outcome(value: str, size: int = 10000, **limits: int) -> RangeOutcome:
    return parse_range_header(value, size, **limits).outcome


# --- RFC 9110 §14.1.2 examples ---------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("bytes=0-499", [(0, 499)]),  # the first 500 bytes
        ("bytes=500-999", [(500, 999)]),  # the second 500 bytes
        ("bytes=-500", [(9500, 9999)]),  # the final 500 bytes
        ("bytes=9500-", [(9500, 9999)]),  # the final 500 bytes, open-ended
        ("bytes=0-0,-1", [(0, 0), (9999, 9999)]),  # first and last bytes only
        ("bytes= 0-999, 4500-5499, -1000", [(0, 999), (4500, 5499), (9000, 9999)]),
        ("bytes=500-600,601-999", [(500, 600), (601, 999)]),  # non-canonical second 500
        ("bytes=500-700,601-999", [(500, 700), (601, 999)]),  # overlapping, still legal
    ],
)
def test_rfc9110_examples(header: str, expected: list[tuple[int, int]]) -> None:
    assert ranges_of(header) == expected


@pytest.mark.parametrize("header", ["bytes=500-600,601-999", "bytes=500-700,601-999"])
def test_rfc9110_second_500_bytes(header: str) -> None:
    # Both "legal but not canonical specifications of the second 500 bytes".
    decision = parse_range_header(header, len(DATA))
    union: set[int] = set()
    for r in decision.ranges:
        union.update(range(r.start, r.end + 1))
    assert union == set(range(500, 1000))
    assert coalesce_ranges(decision.ranges) == (ByteRange(500, 999),)


# --- syntax ------------------------------------------------------------------------------


@pytest.mark.parametrize("header", ["BYTES=0-1", "Bytes=0-1", "bYtEs=0-1"])
def test_unit_is_case_insensitive(header: str) -> None:
    assert ranges_of(header) == [(0, 1)]


@pytest.mark.parametrize(
    "header",
    [
        "bytes=0-1 , 3-4",
        "bytes=0-1,\t3-4",
        "bytes=0-1,,3-4",  # empty list elements must be accepted (§5.6.1)
        "bytes=,0-1, ,3-4,",
        " bytes=0-1,3-4 ",
    ],
)
def test_list_whitespace_and_empty_elements(header: str) -> None:
    assert ranges_of(header) == [(0, 1), (3, 4)]


@pytest.mark.parametrize(
    "header",
    [
        "",
        "bytes",
        "bytes=",
        "bytes=,",
        "bytes= , ",
        "=0-1",
        "bytes =0-1",  # no whitespace allowed before "="
        "by tes=0-1",
        "bytes=0 -1",  # nor inside a range-spec
        "bytes=0- 1",
        "bytes=abc",
        "bytes=5-1",  # last-pos < first-pos: invalid, the whole header is ignored
        "bytes=0-1,5-1",
        "bytes=0-1;2-3",
        "bytes=--1",
        "bytes=-",
        "bytes=1-2-3",
        "bytes=+1-2",
        "bytes=1-+2",
        "bytes=0x1-2",
        "bytes=1e3-",
        "bytes=\u0661-\u0662",  # Arabic-Indic digits are not DIGIT
        "bytes=\uff11-\uff12",  # fullwidth digits neither
        "bytes=1_000-",  # int() would accept this; the grammar does not
        "bytes=0-1, x",
        "bytes=0-1,other",
        "items=0-1",  # a unit we do not understand MUST be ignored
        "none=0-1",
        "bytes=0-1\r\nX: y",
        "bytes=" + "9" * (MAX_DIGITS + 1) + "-",
        "bytes=0-" + "9" * (MAX_DIGITS + 1),
        "bytes=-" + "1" * (MAX_DIGITS + 1),
        "bytes=" + "1" * 5000 + "-",  # int() would raise past 4300 digits
    ],
)
def test_invalid_headers_are_ignored(header: str) -> None:
    decision = parse_range_header(header, 10000)
    assert decision.outcome is RangeOutcome.IGNORE
    assert decision.ranges == ()
    assert decision.reason


def test_longest_accepted_numbers_clip_to_the_end() -> None:
    big = "9" * MAX_DIGITS
    assert ranges_of(f"bytes=0-{big}") == [(0, 9999)]
    assert ranges_of(f"bytes=-{big}") == [(0, 9999)]
    assert outcome(f"bytes={big}-") is RangeOutcome.UNSATISFIABLE
    assert ranges_of("bytes=0-18446744073709551615") == [(0, 9999)]


def test_parse_range_specs_keeps_unresolved_form() -> None:
    assert parse_range_specs("bytes=0-4, 10-, -3") == (
        RangeSpec(first=0, last=4),
        RangeSpec(first=10),
        RangeSpec(suffix=3),
    )
    assert isinstance(parse_range_specs("bytes=x"), str)


def test_range_spec_rejects_mixed_forms() -> None:
    with pytest.raises(ValueError, match="either"):
        RangeSpec(first=1, suffix=2)
    with pytest.raises(ValueError, match="either"):
        RangeSpec()
    with pytest.raises(ValueError, match="either"):
        RangeSpec(last=3, suffix=2)
    with pytest.raises(ValueError, match="last-pos"):
        RangeSpec(first=3, last=2)


# --- satisfiability ------------------------------------------------------------------------


def test_last_pos_beyond_end_is_clipped() -> None:
    assert ranges_of("bytes=9000-20000") == [(9000, 9999)]
    assert ranges_of("bytes=-20000") == [(0, 9999)]  # suffix longer than the file: all of it


@pytest.mark.parametrize(
    "header",
    ["bytes=10000-", "bytes=10000-10005", "bytes=20000-30000", "bytes=-0", "bytes=-0,10000-"],
)
def test_unsatisfiable(header: str) -> None:
    decision = parse_range_header(header, 10000)
    assert decision.outcome is RangeOutcome.UNSATISFIABLE
    assert "10000 bytes" in decision.reason


def test_unsatisfiable_members_of_a_set_are_dropped() -> None:
    assert ranges_of("bytes=20000-,0-1,-0,9999-") == [(0, 1), (9999, 9999)]


def test_zero_length_representation() -> None:
    # §14.1.2: only a suffix-range with a non-zero length is satisfiable; it selects the
    # whole (empty) representation, which is served as a 200.
    assert outcome("bytes=0-0", 0) is RangeOutcome.UNSATISFIABLE
    assert outcome("bytes=0-", 0) is RangeOutcome.UNSATISFIABLE
    assert outcome("bytes=-0", 0) is RangeOutcome.UNSATISFIABLE
    for header in ("bytes=-1", "bytes=-500", "bytes=0-0,-1"):
        decision = parse_range_header(header, 0)
        assert decision.outcome is RangeOutcome.IGNORE
        assert "empty" in decision.reason
    assert outcome("bytes=x", 0) is RangeOutcome.IGNORE


def test_one_byte_representation() -> None:
    assert ranges_of("bytes=0-0", 1) == [(0, 0)]
    assert ranges_of("bytes=-1", 1) == [(0, 0)]
    assert ranges_of("bytes=-5", 1) == [(0, 0)]
    assert ranges_of("bytes=0-0,-1", 1) == [(0, 0), (0, 0)]  # two overlapping ranges: legal
    assert outcome("bytes=1-", 1) is RangeOutcome.UNSATISFIABLE


def test_negative_size_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="size"):
        parse_range_header("bytes=0-1", -1)


# --- abuse limits (§14.2, §17.15) --------------------------------------------------------


def test_max_ranges() -> None:
    sixty_four = ",".join(f"{i * 10}-{i * 10 + 4}" for i in range(64))
    assert len(ranges_of("bytes=" + sixty_four)) == 64
    decision = parse_range_header("bytes=" + sixty_four + ",700-701", 10000)
    assert decision.outcome is RangeOutcome.REJECTED
    assert decision.reason == "65 ranges requested; at most 64 are allowed"
    assert outcome("bytes=0-1,3-4,6-7", max_ranges=2) is RangeOutcome.REJECTED
    # Counted before resolution: unsatisfiable members count too.
    assert outcome("bytes=0-1,20000-,30000-", max_ranges=2) is RangeOutcome.REJECTED


def test_more_than_two_overlapping_ranges_are_rejected() -> None:
    decision = parse_range_header("bytes=0-10,5-15,8-20", 10000)
    assert decision.outcome is RangeOutcome.REJECTED
    assert "3 of the requested ranges overlap" in decision.reason
    assert "at most 2" in decision.reason
    # Two pairs of overlapping ranges are four overlapping ranges.
    assert outcome("bytes=0-10,5-15,100-110,105-115") is RangeOutcome.REJECTED
    # The same range asked three times (bytes=0-0,0-0,0-0) is the cheapest amplification.
    assert outcome("bytes=0-0,0-0,0-0") is RangeOutcome.REJECTED
    # Overlap is judged after clipping: these only overlap within the file's last bytes.
    assert outcome("bytes=9990-20000,-5,9000-9100") is RangeOutcome.SATISFIABLE
    assert outcome("bytes=9990-20000,-5,-2") is RangeOutcome.REJECTED
    # Adjacent is not overlapping.
    assert len(ranges_of("bytes=0-9,10-19,20-29,30-39")) == 4
    assert outcome("bytes=0-10,5-15,8-20", max_overlapping=3) is RangeOutcome.SATISFIABLE


def test_many_small_out_of_order_ranges_are_rejected() -> None:
    descending = ",".join(f"{i * 100}-{i * 100 + 9}" for i in range(17, 0, -1))
    decision = parse_range_header("bytes=" + descending, 10000)
    assert decision.outcome is RangeOutcome.REJECTED
    assert "17 ranges shorter than 1024 bytes" in decision.reason
    assert "ascending" in decision.reason
    # Sixteen are fine, and so are any number in ascending order...
    sixteen = ",".join(f"{i * 100}-{i * 100 + 9}" for i in range(16, 0, -1))
    assert outcome("bytes=" + sixteen) is RangeOutcome.SATISFIABLE
    ascending = ",".join(f"{i * 100}-{i * 100 + 9}" for i in range(1, 60))
    assert outcome("bytes=" + ascending) is RangeOutcome.SATISFIABLE
    # ...and large ranges in any order.
    big = ",".join(f"{i * 5000}-{i * 5000 + 2000}" for i in range(19, -1, -1))
    assert outcome("bytes=" + big, 100000) is RangeOutcome.SATISFIABLE
    assert outcome("bytes=" + descending, small_range_bytes=5) is RangeOutcome.SATISFIABLE
    assert outcome("bytes=" + descending, max_small_unordered=17) is RangeOutcome.SATISFIABLE


@given(st.lists(st.tuples(st.integers(0, 60), st.integers(0, 20)), min_size=1, max_size=30))
def test_overlap_count_matches_brute_force(pairs: list[tuple[int, int]]) -> None:
    ranges = [ByteRange(a, a + n) for a, n in pairs]
    header = "bytes=" + ",".join(f"{r.start}-{r.end}" for r in ranges)
    brute = sum(
        1
        for i, r in enumerate(ranges)
        if any(j != i and r.start <= o.end and o.start <= r.end for j, o in enumerate(ranges))
    )
    decision = parse_range_header(
        header, 1000, max_ranges=100, max_overlapping=brute, max_small_unordered=100
    )
    assert decision.outcome is RangeOutcome.SATISFIABLE
    if brute:
        tighter = parse_range_header(
            header, 1000, max_ranges=100, max_overlapping=brute - 1, max_small_unordered=100
        )
        assert tighter.outcome is RangeOutcome.REJECTED
        assert tighter.reason.startswith(f"{brute} of the requested ranges overlap")


# --- properties ----------------------------------------------------------------------------

# A range-spec as (first, last) for an int-range (last may be None) or (None, suffix).
spec_strategy = st.one_of(
    st.tuples(st.integers(0, 5000), st.none() | st.integers(0, 5000)).map(
        lambda t: (t[0], None if t[1] is None else t[0] + t[1])
    ),
    st.tuples(st.none(), st.integers(0, 5000)),
)


def render(spec: tuple[int | None, int | None]) -> str:
    first, second = spec
    if first is None:
        return f"-{second}"
    return f"{first}-" + ("" if second is None else str(second))


def reference_slice(data: bytes, spec: tuple[int | None, int | None]) -> bytes:
    """What the RFC says a range-spec selects, written with plain Python slicing."""
    first, second = spec
    if first is None:
        assert second is not None
        return data[-second:] if second else b""
    return data[first:] if second is None else data[first : second + 1]


@settings(max_examples=400)
@given(
    size=st.integers(0, 3000),
    specs=st.lists(spec_strategy, min_size=1, max_size=12),
    separator=st.sampled_from([",", ", ", " ,", ",\t", ",,"]),
    unit=st.sampled_from(["bytes", "BYTES", "Bytes"]),
)
def test_satisfiable_ranges_match_slicing(
    size: int,
    specs: list[tuple[int | None, int | None]],
    separator: str,
    unit: str,
) -> None:
    data = bytes(i % 251 for i in range(size))
    header = f"{unit}=" + separator.join(render(s) for s in specs)
    # No abuse limits here: this property is about what the ranges select.
    decision = parse_range_header(
        header, size, max_ranges=100, max_overlapping=100, max_small_unordered=100
    )
    expected_parts = [reference_slice(data, s) for s in specs]
    expected_parts = [p for p in expected_parts if p]
    if decision.outcome is RangeOutcome.SATISFIABLE:
        for r in decision.ranges:
            assert 0 <= r.start <= r.end < size
        assert [data[r.as_slice()] for r in decision.ranges] == expected_parts
        assert b"".join(data[r.start : r.end + 1] for r in decision.ranges) == b"".join(
            expected_parts
        )
    elif decision.outcome is RangeOutcome.IGNORE:
        # Only a non-zero suffix of an empty representation: "all of it" is zero bytes.
        assert size == 0
        assert any(s[0] is None and s[1] for s in specs)
    else:
        assert decision.outcome is RangeOutcome.UNSATISFIABLE
        assert expected_parts == []
        assert not (size == 0 and any(s[0] is None and s[1] for s in specs))


@settings(max_examples=500)
@given(value=st.text(max_size=200), size=st.integers(0, 10**15))
def test_parse_never_raises_on_arbitrary_text(value: str, size: int) -> None:
    for candidate in (value, "bytes=" + value, "bytes=0-1," + value):
        decision = parse_range_header(candidate, size)
        assert isinstance(decision.outcome, RangeOutcome)
        for r in decision.ranges:
            assert 0 <= r.start <= r.end < size
        if decision.outcome is not RangeOutcome.SATISFIABLE:
            assert decision.ranges == ()
            assert decision.reason


@settings(max_examples=300)
@given(
    value=st.text(alphabet="bytes=0123456789-, \t*", max_size=60),
    size=st.integers(0, 100),
)
def test_parse_never_raises_on_near_miss_headers(value: str, size: int) -> None:
    decision = parse_range_header(value, size)
    for r in decision.ranges:
        assert 0 <= r.start <= r.end < size


@given(
    st.lists(st.tuples(st.integers(0, 500), st.integers(0, 60)), min_size=1, max_size=20),
    st.integers(0, 100),
)
def test_coalesce_preserves_bytes(pairs: list[tuple[int, int]], gap: int) -> None:
    ranges = [ByteRange(a, a + n) for a, n in pairs]
    merged = coalesce_ranges(ranges, gap=gap)
    covered = {b for r in ranges for b in range(r.start, r.end + 1)}
    merged_covered = {b for r in merged for b in range(r.start, r.end + 1)}
    assert covered <= merged_covered
    for a, b in zip(merged, merged[1:], strict=False):
        assert b.start - a.end - 1 >= gap  # anything closer would have been merged
    # Whatever coalescing added lies in gaps shorter than `gap`.
    assert all(any(abs(x - c) <= gap for c in covered) for x in merged_covered - covered)


# --- Content-Range -------------------------------------------------------------------------


def test_content_range_values() -> None:
    assert content_range(ByteRange(0, 499), 10000) == "bytes 0-499/10000"
    assert content_range(ByteRange(9999, 9999), 10000) == "bytes 9999-9999/10000"
    assert unsatisfied_content_range(10000) == "bytes */10000"
    assert unsatisfied_content_range(0) == "bytes */0"
    with pytest.raises(ValueError, match="outside"):
        content_range(ByteRange(0, 10000), 10000)


def test_byte_range_validation() -> None:
    assert ByteRange(3, 7).length == 5
    assert DATA[ByteRange(3, 7).as_slice()] == DATA[3:8]
    with pytest.raises(ValueError, match="invalid byte range"):
        ByteRange(5, 4)
    with pytest.raises(ValueError, match="invalid byte range"):
        ByteRange(-1, 4)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("bytes 0-499/10000", ContentRange(0, 499, 10000)),
        ("bytes 21010-47021/47022", ContentRange(21010, 47021, 47022)),
        ("bytes 0-499/*", ContentRange(0, 499, None)),
        ("bytes */10000", ContentRange(None, None, 10000)),
        ("BYTES 1-1/2", ContentRange(1, 1, 2)),
        ("bytes */*", None),
        ("bytes 500-499/1000", None),  # last-pos < first-pos
        ("bytes 0-1000/1000", None),  # complete-length <= last-pos
        ("bytes 0-1", None),
        ("bytes=0-1/2", None),
        ("items 0-1/2", None),
        ("bytes 0-" + "9" * 40 + "/1", None),
        ("", None),
    ],
)
def test_parse_content_range(value: str, expected: ContentRange | None) -> None:
    assert parse_content_range(value) == expected


# --- multipart/byteranges --------------------------------------------------------------------


def test_multipart_layout_exact_bytes() -> None:
    layout = multipart_layout(
        [ByteRange(500, 999), ByteRange(7000, 7999)], 8000, "application/pdf", "SEP"
    )
    assert layout.parts == (
        (
            b"--SEP\r\nContent-Type: application/pdf\r\nContent-Range: bytes 500-999/8000\r\n\r\n",
            ByteRange(500, 999),
        ),
        (
            b"\r\n--SEP\r\nContent-Type: application/pdf\r\n"
            b"Content-Range: bytes 7000-7999/8000\r\n\r\n",
            ByteRange(7000, 7999),
        ),
    )
    assert layout.closing == b"\r\n--SEP--\r\n"
    body = assemble(layout, bytes(8000))
    assert layout.content_length == len(body)


def assemble(layout: object, data: bytes) -> bytes:
    from butler.http.ranges import MultipartLayout

    assert isinstance(layout, MultipartLayout)
    out = b"".join(header + data[r.as_slice()] for header, r in layout.parts)
    return out + layout.closing


def test_multipart_without_content_type() -> None:
    layout = multipart_layout([ByteRange(0, 0), ByteRange(2, 2)], 3, None, "b")
    assert layout.parts[0][0] == b"--b\r\nContent-Range: bytes 0-0/3\r\n\r\n"


@settings(max_examples=200)
@given(
    size=st.integers(1, 2000),
    picks=st.lists(st.tuples(st.integers(0, 1999), st.integers(0, 300)), min_size=1, max_size=8),
    content_type=st.sampled_from(["application/fits", "text/plain; charset=utf-8", None]),
    data_seed=st.integers(0, 255),
)
def test_multipart_body_parses_back(
    size: int, picks: list[tuple[int, int]], content_type: str | None, data_seed: int
) -> None:
    # Data full of CR, LF and dashes: framing must not depend on what the ranges contain.
    data = bytes((i * 31 + data_seed) % 256 for i in range(size)).replace(b"\x00", b"\r\n--")[:size]
    data = data.ljust(size, b"-")
    ranges = [ByteRange(a % size, min(size - 1, a % size + n)) for a, n in picks]
    boundary = make_boundary()
    layout = multipart_layout(ranges, size, content_type, boundary)
    body = assemble(layout, data)
    assert len(body) == layout.content_length
    parts = parse_multipart(body, boundary)
    assert len(parts) == len(ranges)
    for (headers, payload), r in zip(parts, ranges, strict=True):
        assert headers["content-range"] == f"bytes {r.start}-{r.end}/{size}"
        assert headers.get("content-type") == content_type
        assert payload == data[r.as_slice()]
    # The standard library's MIME parser agrees on the framing.
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        f"Content-Type: {multipart_content_type(boundary)}\r\n\r\n".encode() + body
    )
    mime_parts = list(message.iter_parts())
    assert [p["Content-Range"] for p in mime_parts] == [
        f"bytes {r.start}-{r.end}/{size}" for r in ranges
    ]


def parse_multipart(body: bytes, boundary: str) -> list[tuple[dict[str, str], bytes]]:
    """A strict RFC 2046 splitter: every delimiter is CRLF--boundary (the first has no CRLF)."""
    delimiter = b"\r\n--" + boundary.encode()
    assert body.startswith(delimiter[2:] + b"\r\n")
    assert body.endswith(delimiter + b"--\r\n")
    inner = body[len(delimiter) - 2 : -len(delimiter + b"--\r\n")]
    parts = []
    for chunk in inner.split(delimiter):
        assert chunk.startswith(b"\r\n")
        head, sep, payload = chunk[2:].partition(b"\r\n\r\n")
        assert sep
        headers = {}
        for line in head.split(b"\r\n"):
            name, _, value = line.decode().partition(": ")
            headers[name.lower()] = value
        parts.append((headers, payload))
    return parts


def test_multipart_validation() -> None:
    with pytest.raises(ValueError, match="at least one"):
        multipart_layout([], 10, "text/plain", "b")
    for bad in ("", "x" * 71, "ends with space ", "semi;colon", 'quote"', "nl\r\n"):
        with pytest.raises(ValueError, match="boundary"):
            multipart_layout([ByteRange(0, 1)], 10, "text/plain", bad)
    with pytest.raises(ValueError, match="content type"):
        multipart_layout([ByteRange(0, 1)], 10, "text/plain\r\nX-Evil: 1", "b")
    with pytest.raises(ValueError, match="content type"):
        multipart_layout([ByteRange(0, 1)], 10, "text/plain; name=\u00e9", "b")
    with pytest.raises(ValueError, match="outside"):
        multipart_layout([ByteRange(0, 10)], 10, "text/plain", "b")


def test_make_boundary() -> None:
    boundaries = {make_boundary() for _ in range(100)}
    assert len(boundaries) == 100
    for b in boundaries:
        assert re.fullmatch(r"[0-9a-f]{32}", b)
    assert multipart_content_type("abc") == "multipart/byteranges; boundary=abc"


# --- entity tags (§8.8.3) ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("a", "b", "strong", "weak"),
    [
        # The comparison table of RFC 9110 §8.8.3.2.
        ('W/"1"', 'W/"1"', False, True),
        ('W/"1"', 'W/"2"', False, False),
        ('W/"1"', '"1"', False, True),
        ('"1"', '"1"', True, True),
    ],
)
def test_etag_comparison_table(a: str, b: str, strong: bool, weak: bool) -> None:
    ta, tb = EntityTag.parse(a), EntityTag.parse(b)
    assert ta is not None
    assert tb is not None
    assert strong_match(ta, tb) is strong
    assert weak_match(ta, tb) is weak


def test_entity_tag_parse_and_str() -> None:
    assert EntityTag.parse('"xyzzy"') == EntityTag("xyzzy")
    assert EntityTag.parse(' W/"xyzzy" ') == EntityTag("xyzzy", weak=True)
    assert EntityTag.parse('""') == EntityTag("")
    assert str(EntityTag("a", weak=True)) == 'W/"a"'
    assert str(EntityTag("a")) == '"a"'
    for bad in ("xyzzy", 'w/"x"', '"x', '"a"b"', '"a", "b"', '"sp ace"', "*", ""):
        assert EntityTag.parse(bad) is None, bad
    with pytest.raises(ValueError, match="entity-tag"):
        EntityTag('has"quote')


def test_parse_etag_list() -> None:
    assert parse_etag_list("*") == "*"
    assert parse_etag_list(" * ") == "*"
    assert parse_etag_list('"xyzzy"') == (EntityTag("xyzzy"),)
    # etagc includes ",": a tag with a comma must not be split.
    assert parse_etag_list('"a,b", W/"c" ,, "d"') == (
        EntityTag("a,b"),
        EntityTag("c", weak=True),
        EntityTag("d"),
    )
    assert parse_etag_list('"xyzzy", "r2d2xxxx", "c3piozzzz"') is not None
    # Whitespace before a comma, one character or three (OWS is any run of SP / HTAB).
    for spaced in ('"a" , "b"', '"a"\t,"b"', '"a"   ,"b"'):
        assert parse_etag_list(spaced) == (EntityTag("a"), EntityTag("b")), spaced
    for bad in ("", " , ", "xyzzy", '"a" "b"', '"a",*', '*, "a"', '"a', "W/x", 'w/"a"', '"a"x'):
        assert parse_etag_list(bad) is None, bad


# --- HTTP-date (§5.6.7) ----------------------------------------------------------------------

SUNDAY = 784111777  # Sun, 06 Nov 1994 08:49:37 GMT


@pytest.mark.parametrize(
    "value",
    [
        "Sun, 06 Nov 1994 08:49:37 GMT",  # IMF-fixdate
        "Sunday, 06-Nov-94 08:49:37 GMT",  # obsolete RFC 850 format
        "Sun Nov  6 08:49:37 1994",  # ANSI C's asctime() format
        " Sun, 06 Nov 1994 08:49:37 GMT ",
    ],
)
def test_http_date_formats(value: str) -> None:
    assert parse_http_date(value) == SUNDAY


@pytest.mark.parametrize(
    "value",
    [
        "",
        "yesterday",
        "Sun, 06 Nov 1994 08:49:37 UTC",
        "Sun, 06 Nov 1994 08:49:37",
        "Sun, 6 Nov 1994 08:49:37 GMT",
        "Sun, 06 November 1994 08:49:37 GMT",
        "Sun, 31 Feb 1994 08:49:37 GMT",
        "Sun, 06 Nov 1994 24:00:00 GMT",
        "Sun, 06 Nov 1994 08:60:00 GMT",
        "Sun, 00 Nov 1994 08:49:37 GMT",
        "Sun, 06 Nov 1994 08:49:37 GMT, Mon, 07 Nov 1994 08:49:37 GMT",
        "784111777",
        "1994-11-06T08:49:37Z",
    ],
)
def test_invalid_http_dates(value: str) -> None:
    assert parse_http_date(value) is None


def test_rfc850_two_digit_years() -> None:
    now_2026 = parse_http_date("Fri, 27 Nov 2026 00:00:00 GMT")
    assert now_2026 is not None
    # More than 50 years in the future means the most recent past year with those digits.
    assert parse_http_date("Monday, 01-Jan-24 00:00:00 GMT", now=now_2026) == parse_http_date(
        "Mon, 01 Jan 2024 00:00:00 GMT"
    )
    assert parse_http_date("Sunday, 01-Jan-70 00:00:00 GMT", now=now_2026) == parse_http_date(
        "Sun, 01 Jan 2070 00:00:00 GMT"
    )
    assert parse_http_date("Sunday, 01-Jan-77 00:00:00 GMT", now=now_2026) == parse_http_date(
        "Sun, 01 Jan 1977 00:00:00 GMT"
    )


def test_leap_second_and_format() -> None:
    assert parse_http_date("Sat, 31 Dec 2016 23:59:60 GMT") == parse_http_date(
        "Sun, 01 Jan 2017 00:00:00 GMT"
    )
    assert format_http_date(SUNDAY) == "Sun, 06 Nov 1994 08:49:37 GMT"
    assert format_http_date(SUNDAY + 0.999) == "Sun, 06 Nov 1994 08:49:37 GMT"


@given(st.integers(0, 2**33))
def test_http_date_round_trip(timestamp: int) -> None:
    assert parse_http_date(format_http_date(timestamp)) == timestamp


# --- preconditions (§13.2.2) -----------------------------------------------------------------

ETAG = '"v1"'
MTIME = SUNDAY + 0.5  # sub-second part: compared as whole seconds, like the header
BEFORE = "Sun, 06 Nov 1994 08:49:36 GMT"
AT = "Sun, 06 Nov 1994 08:49:37 GMT"
AFTER = "Sun, 06 Nov 1994 08:49:38 GMT"


def pre(headers: dict[str, str], method: str = "GET", etag: str | None = ETAG) -> int | None:
    return evaluate_preconditions(method, headers, etag, MTIME)


def test_no_conditions() -> None:
    assert pre({}) is None
    assert evaluate_preconditions("GET", {}, None, None) is None


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ('"v1"', None),
        ('"v0", "v1"', None),
        ("*", None),
        ('"v2"', 412),
        ('W/"v1"', 412),  # If-Match uses the strong comparison
        ("garbage", 412),  # an If-Match we cannot read fails closed
    ],
)
def test_if_match(value: str, expected: int | None) -> None:
    assert pre({"If-Match": value}) == expected
    assert pre({"If-Match": value}, method="PUT") == expected


def test_if_match_against_weak_or_missing_etag() -> None:
    assert pre({"If-Match": 'W/"v1"'}, etag='W/"v1"') == 412
    assert pre({"If-Match": '"v1"'}, etag='W/"v1"') == 412
    assert pre({"If-Match": '"v1"'}, etag=None) == 412
    assert pre({"If-Match": "*"}, etag=None) is None


def test_if_unmodified_since() -> None:
    assert pre({"If-Unmodified-Since": AT}) is None  # equal counts as unmodified
    assert pre({"If-Unmodified-Since": AFTER}) is None
    assert pre({"If-Unmodified-Since": BEFORE}) == 412
    assert pre({"If-Unmodified-Since": "not a date"}) is None  # invalid: ignored
    assert pre({"If-Unmodified-Since": f"{BEFORE}, {AFTER}"}) is None  # a list: ignored
    assert evaluate_preconditions("GET", {"If-Unmodified-Since": BEFORE}, ETAG, None) is None


def test_if_match_overrides_if_unmodified_since() -> None:
    # Step 2 only runs without If-Match.
    assert pre({"If-Match": ETAG, "If-Unmodified-Since": BEFORE}) is None


@pytest.mark.parametrize(
    ("value", "expected_get"),
    [
        ('"v1"', 304),
        ('W/"v1"', 304),  # If-None-Match uses the weak comparison
        ('"v0", W/"v1"', 304),
        ("*", 304),
        ('"v2"', None),
        ("garbage", None),  # unreadable: ignored
    ],
)
def test_if_none_match(value: str, expected_get: int | None) -> None:
    assert pre({"If-None-Match": value}) == expected_get
    assert pre({"If-None-Match": value}, method="HEAD") == expected_get
    # Other methods get 412 instead of 304 (§13.1.2).
    assert pre({"If-None-Match": value}, method="DELETE") == (412 if expected_get else None)


def test_if_none_match_with_weak_current_etag() -> None:
    assert pre({"If-None-Match": '"v1"'}, etag='W/"v1"') == 304
    assert pre({"If-None-Match": '"v1"'}, etag=None) is None


def test_if_modified_since() -> None:
    assert pre({"If-Modified-Since": AT}) == 304
    assert pre({"If-Modified-Since": AFTER}) == 304
    assert pre({"If-Modified-Since": BEFORE}) is None
    assert pre({"If-Modified-Since": AT}, method="HEAD") == 304
    assert pre({"If-Modified-Since": AT}, method="POST") is None  # GET/HEAD only
    assert pre({"If-Modified-Since": "Sunday, 06-Nov-94 08:49:37 GMT"}) == 304
    assert pre({"If-Modified-Since": "nonsense"}) is None
    assert pre({"If-Modified-Since": f"{AT}, {AT}"}) is None
    assert evaluate_preconditions("GET", {"If-Modified-Since": AT}, ETAG, None) is None


def test_if_none_match_overrides_if_modified_since() -> None:
    # A non-matching If-None-Match means "changed": If-Modified-Since MUST be ignored.
    assert pre({"If-None-Match": '"v0"', "If-Modified-Since": AFTER}) is None
    assert pre({"If-None-Match": ETAG, "If-Modified-Since": BEFORE}) == 304
    # An unreadable If-None-Match is ignored altogether, so If-Modified-Since applies.
    assert pre({"If-None-Match": "garbage", "If-Modified-Since": AFTER}) == 304


def test_evaluation_order() -> None:
    # Step 1/2 failures (412) win over a step 3/4 304.
    assert pre({"If-Match": '"v2"', "If-None-Match": ETAG}) == 412
    assert pre({"If-Unmodified-Since": BEFORE, "If-None-Match": ETAG}) == 412
    assert pre({"If-Unmodified-Since": BEFORE, "If-Modified-Since": AFTER}) == 412
    # Passing step 1 moves on to step 3.
    assert pre({"If-Match": ETAG, "If-None-Match": ETAG}) == 304
    assert pre({"If-Match": ETAG, "If-Modified-Since": AT}) == 304
    assert pre({"If-Unmodified-Since": AFTER, "If-Modified-Since": AT}) == 304


def test_header_names_are_case_insensitive() -> None:
    assert pre({"if-none-match": ETAG}) == 304
    assert pre({"IF-MATCH": '"nope"'}) == 412


def test_invalid_current_etag_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="entity-tag"):
        evaluate_preconditions("GET", {}, "v1", None)


# --- If-Range (§13.1.5) ----------------------------------------------------------------------

OLD = SUNDAY + 0.25


@pytest.mark.parametrize(
    ("if_range", "etag", "expected"),
    [
        ('"v1"', '"v1"', True),
        (' "v1" ', '"v1"', True),
        ('"v2"', '"v1"', False),
        ('W/"v1"', '"v1"', False),  # weak tags never match strongly
        ('"v1"', 'W/"v1"', False),
        ('W/"v1"', 'W/"v1"', False),
        ('"v1"', None, False),
        ('"v1", "v2"', '"v1"', False),  # not a single entity-tag
        ("garbage", '"v1"', False),
        ("", '"v1"', False),
    ],
)
def test_if_range_entity_tags(if_range: str, etag: str | None, expected: bool) -> None:
    assert if_range_allows_partial(if_range, etag, OLD, now=OLD + 1000) is expected


def test_if_range_dates() -> None:
    later = OLD + 1000
    assert if_range_allows_partial(AT, '"v1"', OLD, now=later)
    assert if_range_allows_partial("Sun Nov  6 08:49:37 1994", None, OLD, now=later)
    # Exact match only: a later date does not count (unlike If-Unmodified-Since).
    assert not if_range_allows_partial(AFTER, '"v1"', OLD, now=later)
    assert not if_range_allows_partial(BEFORE, '"v1"', OLD, now=later)
    assert not if_range_allows_partial(AT, '"v1"', None, now=later)
    assert not if_range_allows_partial("garbage", None, OLD, now=later)


def test_if_range_date_must_be_strong() -> None:
    # Modified within the current second: the date is weak, the condition false.
    assert not if_range_allows_partial(AT, None, OLD, now=OLD)
    assert not if_range_allows_partial(AT, None, OLD, now=SUNDAY + 0.999)
    # Once the second named by Last-Modified is over, the date is strong.
    assert if_range_allows_partial(AT, None, OLD, now=SUNDAY + 1)
    assert if_range_allows_partial(AT, None, OLD)  # default clock: 1994 is long over


# -- simple_range: the hot-path shortcut ----------------------------------------------------


@settings(max_examples=500)
@given(
    first=st.integers(0, 10**6),
    last=st.one_of(st.none(), st.integers(0, 10**6)),
    size=st.integers(0, 10**6),
)
def test_simple_range_agrees_with_parse_range_header(
    first: int, last: int | None, size: int
) -> None:
    value = f"bytes={first}-{'' if last is None else last}"
    shortcut = simple_range(value, size)
    full = parse_range_header(value, size)
    # RFC 9110 §14.1.2, worked out here: satisfiable iff first-pos < size and a last-pos, when
    # present, is not before first-pos; last-pos clipped to the end.
    if first < size and (last is None or last >= first):
        end = size - 1 if last is None else min(last, size - 1)
        assert full.ranges == (ByteRange(first, end),)
    else:
        assert full.ranges == ()
    if shortcut is None:  # left to the full parser: never a satisfiable range of this form
        assert full.outcome is not RangeOutcome.SATISFIABLE
    else:
        assert full.outcome is RangeOutcome.SATISFIABLE
        assert full.ranges == (shortcut,)


@settings(max_examples=500)
@given(
    # Range-shaped text too: random text is next to never one the shortcut answers.
    value=st.one_of(
        st.text(max_size=40), st.from_regex(r"bytes=[0-9]{1,4}-[0-9]{0,4}", fullmatch=True)
    ),
    size=st.integers(0, 10**9),
)
@example(value="bytes=5-9", size=100)
def test_simple_range_is_never_wrong_about_any_header(value: str, size: int) -> None:
    shortcut = simple_range(value, size)
    if shortcut is not None:  # None leaves it to the full parser: nothing to compare
        assert parse_range_header(value, size).ranges == (shortcut,)


@pytest.mark.parametrize(
    "value",
    [
        "bytes=5-2",
        "bytes=-5",
        "bytes=1-2,4-5",
        "Bytes=1-2",
        "bytes= 1-2",
        "bytes=1-2 ",
        "items=1-2",
    ],
)
def test_simple_range_leaves_other_forms_to_the_full_parser(value: str) -> None:
    assert simple_range(value, 100) is None


def test_multipart_parts_are_read_back_by_length_whatever_the_data() -> None:
    boundary = "b0und4ry"
    # Part data holding the delimiter itself: only the Content-Range length tells the end.
    data = bytearray(DATA)
    data[100:110] = b"--" + boundary.encode()
    ranges = [ByteRange(95, 120), ByteRange(5000, 5009), ByteRange(9990, 9999)]
    layout = multipart_layout(ranges, len(data), "text/plain", boundary)
    body = b"".join(head + bytes(data[r.start : r.end + 1]) for head, r in layout.parts)
    body += layout.closing
    content_type = multipart_content_type(boundary)
    assert multipart_boundary(content_type) == boundary
    assert multipart_boundary('multipart/byteranges; boundary="q q"') == "q q"
    assert multipart_boundary("text/plain; boundary=x") is None
    parts = multipart_parts(boundary, body)
    assert parts == [(r, bytes(data[r.start : r.end + 1])) for r in ranges]
    with pytest.raises(MultipartError, match="shorter"):
        multipart_parts(boundary, body[: len(body) - len(layout.closing) - 3])
    with pytest.raises(MultipartError, match="closing"):
        multipart_parts(boundary, body[: -len(layout.closing)])
