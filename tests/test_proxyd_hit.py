"""proxyd.hit: the one piece of code that lays out an answer from a stored version, for both
lanes (the full handler and the fast lane; tests/test_proxyd_fastlane.py compares their
bytes on the wire). Expected values are written out by hand from RFC 9110 §14.4 and §14.6."""

from __future__ import annotations

import re
from pathlib import Path

from butler.http.ranges import ByteRange
from proxyd.hit import Layout, layout, small_pieces, stored_answer
from proxyd.policy.freshness import StoredMeta

DATA = bytes(range(256)) * 4  # 1,024 bytes
STORED = StoredMeta(
    headers=(
        ("Content-Type", "image/fits"),
        ("ETag", '"v1"'),
        ("Content-Length", "1024"),  # proxyd frames each answer itself
        ("X-Cache", "MISS"),
        ("Age", "7"),
        ("X-Request-ID", "origin-42"),
    ),
    request_time=1000.0,
    response_time=1002.0,
    age_value=7,
)


def body(out: Layout) -> bytes:
    return b"".join([*(head + DATA[r.start : r.end + 1] for head, r in out.parts), out.closing])


def test_the_stored_fields_are_replayed_without_the_framing_ones() -> None:
    answer = stored_answer(STORED)
    assert answer.status == 200
    assert answer.fields == (
        ("Content-Type", "image/fits"),
        ("ETag", '"v1"'),
        ("Via", "1.1 proxyd"),  # RFC 9110 §7.6.3: an intermediary says it was there
        ("Accept-Ranges", "bytes"),
    )
    # received 7 s old plus 2 s on the way (RFC 9111 §4.2.3), then 10 s resident
    assert answer.age(1012.0) == "19"


def test_a_whole_object_is_one_part_with_its_length() -> None:
    out = layout(stored_answer(STORED), len(DATA), None)
    assert (out.status, out.fields, out.length) == (200, (), 1024)
    assert body(out) == DATA


def test_a_stored_404_keeps_its_status_and_an_empty_object_has_no_part() -> None:
    missing = StoredMeta(headers=(), request_time=0.0, response_time=0.0, status=404)
    out = layout(stored_answer(missing), 0, None)
    assert (out.status, out.fields, out.length, out.parts) == (404, (), 0, ())


def test_one_range_is_a_206_with_its_content_range() -> None:
    out = layout(stored_answer(STORED), len(DATA), [ByteRange(10, 19)])
    assert (out.status, out.fields, out.length) == (
        206,
        (("Content-Range", "bytes 10-19/1024"),),
        10,
    )
    assert body(out) == DATA[10:20]


def test_several_ranges_are_a_multipart_answer_of_the_announced_length() -> None:
    out = layout(stored_answer(STORED), len(DATA), [ByteRange(0, 1), ByteRange(1020, 1023)])
    [(name, value)] = out.fields
    match = re.fullmatch(r"multipart/byteranges; boundary=(\S+)", value)
    assert name == "Content-Type"
    assert match is not None
    b = match.group(1)
    part = "Content-Type: image/fits\r\nContent-Range: bytes {}/1024\r\n\r\n"
    expected = (
        f"--{b}\r\n{part.format('0-1')}".encode()
        + DATA[0:2]
        + f"\r\n--{b}\r\n{part.format('1020-1023')}".encode()
        + DATA[1020:1024]
        + f"\r\n--{b}--\r\n".encode()
    )
    assert out.status == 206
    assert body(out) == expected
    assert out.length == len(expected)


def test_small_ranges_are_cut_at_block_boundaries_and_long_ones_left_to_sendfile() -> None:
    assert small_pieces(100, ByteRange(95, 204)) == [(0, 95, 100), (1, 0, 100), (2, 0, 5)]
    assert small_pieces(1 << 20, ByteRange(0, (128 << 10) - 1)) is None


def test_neither_lane_frames_a_range_of_its_own() -> None:
    """Content-Range, the multipart layout and the replayed fields are proxyd.hit's: the
    lanes only write them."""
    package = Path(__file__).resolve().parents[1] / "proxyd"
    for name in ("fastlane.py", "reading.py"):
        source = (package / name).read_text()
        assert "from proxyd.hit import" in source, name
        for own in (r"\bcontent_range\(", r"multipart_layout\(", "NOT_REPLAYED", r"current_age\("):
            assert re.search(own, source) is None, f"{name} does {own} itself"
