"""The file-bundle framing (butler.http.bundle): header lines and request bodies."""

from __future__ import annotations

import pytest

from butler.http.bundle import (
    MAX_FILES,
    MAX_HEADER,
    BundleEntry,
    BundleFormatError,
    parse_request,
)


def test_entries_round_trip() -> None:
    for entry in (
        BundleEntry("a/b.fits", 2880),
        BundleEntry("a/é.npy", 0),
        BundleEntry("x", error="gone"),
    ):
        line = entry.encode()
        assert line.endswith(b"\n")
        assert line.count(b"\n") == 1
        assert BundleEntry.decode(line) == entry


def test_an_error_entry_has_no_size() -> None:
    assert BundleEntry("x", 5, error="no dataset file at x").encode() == (
        b'{"path":"x","error":"no dataset file at x"}\n'
    )


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (b'{"path":"a","size":3}', "missing its newline"),
        (b"not json\n", "not JSON"),
        (b'["a", 3]\n', "no 'path'"),
        (b'{"size":3}\n', "no 'path'"),
        (b'{"path":"a"}\n', "no valid 'size'"),
        (b'{"path":"a","size":-1}\n', "no valid 'size'"),
        (b'{"path":"a","size":true}\n', "no valid 'size'"),
        (b'{"path":"a","size":"3"}\n', "no valid 'size'"),
    ],
)
def test_broken_header_lines_are_refused_with_the_reason(line: bytes, message: str) -> None:
    with pytest.raises(BundleFormatError, match=message):
        BundleEntry.decode(line)


def test_a_header_longer_than_the_limit_cannot_be_written() -> None:
    with pytest.raises(ValueError, match=f"longer than {MAX_HEADER}"):
        BundleEntry("p" * MAX_HEADER, 1).encode()


def test_requests_name_between_one_and_max_files_paths() -> None:
    assert parse_request({"paths": ["a", "b"]}) == ["a", "b"]
    with pytest.raises(ValueError, match="at least one path"):
        parse_request({"paths": []})
    with pytest.raises(ValueError, match=f"at most {MAX_FILES} files, not {MAX_FILES + 1}"):
        parse_request({"paths": ["a"] * (MAX_FILES + 1)})
    for body in ({"paths": "a"}, {"paths": [1]}, ["a"], {"files": ["a"]}):
        with pytest.raises(ValueError, match='must be {"paths"'):
            parse_request(body)


def test_a_bundle_asks_for_at_most_64_files() -> None:
    """The limit the server's info offers and the README states (64 files per bundle)."""
    assert parse_request({"paths": [f"f{i}" for i in range(64)]}) == [f"f{i}" for i in range(64)]
    with pytest.raises(ValueError, match="at most 64 files, not 65"):
        parse_request({"paths": [f"f{i}" for i in range(65)]})


def test_a_header_line_may_be_4096_bytes_newline_included() -> None:
    overhead = len(BundleEntry("", 0).encode())
    longest = BundleEntry("p" * (4096 - overhead), 0).encode()
    assert len(longest) == 4096
    assert BundleEntry.decode(longest) == BundleEntry("p" * (4096 - overhead), 0)
    with pytest.raises(ValueError, match="longer than 4096 bytes"):
        BundleEntry("p" * (4097 - overhead), 0).encode()
