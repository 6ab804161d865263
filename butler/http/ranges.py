"""Byte-range requests (RFC 9110 §14) as pure functions: no I/O, no web framework.

``butler serve`` and proxyd both answer ``Range`` requests; they share this module so that both
agree exactly on which requests are partial (206), which are unsatisfiable or abusive (416) and
which are served whole (200 because the header is ignored).

The pipeline is::

    parse_range_header(value, size) -> RangeRequest
        .outcome SATISFIABLE   -> 206, one part (content_range) or multipart (multipart_layout)
        .outcome UNSATISFIABLE -> 416 with Content-Range: unsatisfied_content_range(size)
        .outcome REJECTED      -> 416 as well (RFC 9110 §15.5.17 names abuse as a 416 cause)
        .outcome IGNORE        -> 200 with the whole representation

Lower-level pieces (:func:`parse_range_specs`, :meth:`RangeSpec.resolve`) are public for a
caller that must parse a ``Range`` before it knows the representation's size (a cache miss in
proxyd), and :func:`parse_content_range` reads the answer of an upstream server.
"""

from __future__ import annotations

import enum
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = [
    "MultipartError",
    "multipart_boundary",
    "multipart_parts",
    "MAX_DIGITS",
    "ByteRange",
    "ContentRange",
    "MultipartLayout",
    "RangeOutcome",
    "RangeRequest",
    "RangeSpec",
    "coalesce_ranges",
    "content_range",
    "make_boundary",
    "multipart_content_type",
    "multipart_layout",
    "parse_content_range",
    "parse_range_header",
    "parse_range_specs",
    "simple_range",
    "unsatisfied_content_range",
]

#: Longest accepted run of digits in a range position. 32 digits (10**32 bytes) is far beyond
#: any real representation yet lets clients that send "0-18446744073709551615" (2**64-1, 20
#: digits) to mean "to the end" work; anything longer is nonsense or an attempt to make the
#: server convert a huge decimal string (CPython caps int() at 4300 digits and then raises), so
#: the whole header is ignored (served as 200) rather than parsed.
MAX_DIGITS = 32

# token = 1*tchar (RFC 9110 §5.6.2); range-unit = token (§14.1).
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
# int-range = first-pos "-" [ last-pos ]; suffix-range = "-" suffix-length (§14.1.1). [0-9]
# rather than \d: \d also matches non-ASCII digits, which are not DIGIT (RFC 5234).
_INT_RANGE = re.compile(r"([0-9]+)-([0-9]*)")
_SUFFIX_RANGE = re.compile(r"-([0-9]+)")
# OWS = *( SP / HTAB ) (RFC 9110 §5.6.3).
_OWS = " \t"


@dataclass(frozen=True, slots=True, order=True)
class ByteRange:
    """A satisfiable range of a representation: ``start`` and ``end`` are inclusive offsets."""

    start: int
    end: int

    def __post_init__(self) -> None:
        if self.start < 0 or self.end < self.start:
            raise ValueError(f"invalid byte range {self.start}-{self.end}")

    @property
    def length(self) -> int:
        """Number of bytes in the range."""
        return self.end - self.start + 1

    def as_slice(self) -> slice:
        """The Python slice selecting this range from the representation's bytes."""
        return slice(self.start, self.end + 1)


@dataclass(frozen=True, slots=True)
class RangeSpec:
    """One syntactically valid ``range-spec`` of the ``bytes`` unit, not yet tied to a size.

    Exactly one form is set: ``first`` (with optional ``last``) for an int-range, or
    ``suffix`` for a suffix-range (RFC 9110 §14.1.1).
    """

    first: int | None = None
    last: int | None = None
    suffix: int | None = None

    def __post_init__(self) -> None:
        int_form = self.first is not None
        if int_form == (self.suffix is not None) or (not int_form and self.last is not None):
            raise ValueError("a RangeSpec is either first[-last] or a suffix")
        if self.first is not None and self.last is not None and self.last < self.first:
            raise ValueError("last-pos before first-pos")

    def resolve(self, size: int) -> ByteRange | None:
        """The satisfiable part of this spec for a representation of ``size`` bytes, or None.

        RFC 9110 §14.1.2: an int-range is satisfiable iff first-pos < size, and a last-pos
        beyond the end means "to the end"; a suffix-range is satisfiable iff its length is
        non-zero, and a suffix longer than the representation means all of it. A non-zero
        suffix of an *empty* representation is satisfiable but selects zero bytes, which no
        ``Content-Range`` can express; it also returns None here and
        :func:`parse_range_header` handles that case (see there).
        """
        if self.first is not None:
            if self.first >= size:
                return None
            end = size - 1 if self.last is None else min(self.last, size - 1)
            return ByteRange(self.first, end)
        assert self.suffix is not None
        if self.suffix == 0 or size == 0:
            return None
        return ByteRange(max(0, size - self.suffix), size - 1)


class RangeOutcome(enum.Enum):
    """What a server does with a ``Range`` header (RFC 9110 §14.2)."""

    #: Invalid syntax or a unit other than bytes: ignore the header, send 200 with everything.
    IGNORE = "ignore"
    #: Valid, but no range overlaps the representation: 416 with ``bytes */SIZE``.
    UNSATISFIABLE = "unsatisfiable"
    #: Valid but abusive (§14.2 and §17.15 denial-of-service note): 416 with the reason.
    REJECTED = "rejected"
    #: At least one satisfiable range: 206.
    SATISFIABLE = "satisfiable"


@dataclass(frozen=True, slots=True)
class RangeRequest:
    """The decision for one ``Range`` header against one representation size.

    ``ranges`` is non-empty only for SATISFIABLE and lists the satisfiable ranges in the
    order requested (§14.6: parts SHOULD follow request order), clipped to the size, with
    unsatisfiable members dropped. ``reason`` is a human-readable explanation for every
    outcome other than SATISFIABLE, suitable for a response body or a debug log.
    """

    outcome: RangeOutcome
    ranges: tuple[ByteRange, ...] = ()
    reason: str = ""


def parse_range_specs(value: str) -> tuple[RangeSpec, ...] | str:
    """Parse a ``Range`` field value of the ``bytes`` unit into its range-specs.

    Returns the specs in request order, or a string saying why the header must be ignored
    (invalid syntax, another unit, absurd numbers). Never raises for any input.

    Grammar (RFC 9110 §14.1.1): ``ranges-specifier = range-unit "=" range-set`` with
    ``range-set = 1#range-spec``. The unit is a case-insensitive token; the list rule
    (§5.6.1) lets elements be separated by OWS "," OWS and obliges recipients to skip empty
    elements, and the RFC's own example ``bytes= 0-999, 4500-5499, -1000`` has OWS after the
    "=", so OWS around every element is accepted. Anything else — whitespace inside a spec or
    before "=", signs, non-ASCII digits, last-pos < first-pos — makes the ranges-specifier
    invalid, and "a ranges-specifier is invalid if it contains any range-spec that is invalid"
    (§14.1.1), so the whole header is ignored, never partly honoured.
    """
    unit, eq, range_set = value.strip(_OWS).partition("=")
    if not eq or not _TOKEN.fullmatch(unit):
        return "Range header is not of the form unit=range-set"
    if unit.lower() != "bytes":
        # §14.2: "An origin server MUST ignore a Range header field that contains a range
        # unit it does not understand."
        return f"unsupported range unit {unit!r}"
    specs: list[RangeSpec] = []
    for raw in range_set.split(","):
        element = raw.strip(_OWS)
        if not element:
            continue  # empty list element (§5.6.1)
        spec = _parse_spec(element)
        if isinstance(spec, str):
            return spec
        specs.append(spec)
    if not specs:
        return "Range header has an empty range-set"
    return tuple(specs)


def _parse_spec(element: str) -> RangeSpec | str:
    m = _INT_RANGE.fullmatch(element)
    if m is not None:
        first_s, last_s = m.groups()
        if len(first_s) > MAX_DIGITS or len(last_s) > MAX_DIGITS:
            return f"range position longer than {MAX_DIGITS} digits"
        first = int(first_s)
        last = int(last_s) if last_s else None
        if last is not None and last < first:
            # §14.1.1: "An int-range is invalid if the last-pos value is present and less
            # than the first-pos."
            return f"range {element!r} ends before it starts"
        return RangeSpec(first=first, last=last)
    m = _SUFFIX_RANGE.fullmatch(element)
    if m is not None:
        if len(m.group(1)) > MAX_DIGITS:
            return f"suffix length longer than {MAX_DIGITS} digits"
        return RangeSpec(suffix=int(m.group(1)))
    return f"invalid byte range-spec {element[:40]!r}"


_SIMPLE_RANGE = re.compile(r"bytes=([0-9]{1,18})-([0-9]{0,18})")


def simple_range(value: str, size: int) -> ByteRange | None:
    """The range ``Range: value`` selects when it is the common simple form
    ``bytes=FIRST-[LAST]`` and satisfiable; None for every other value (then ask
    :func:`parse_range_header`, which handles them all).

    A shortcut for hot paths that answers most real requests with one regular-expression
    match: whenever it returns a range, :func:`parse_range_header` would answer SATISFIABLE
    with exactly that one range (tests/test_http_ranges.py checks this).
    """
    m = _SIMPLE_RANGE.fullmatch(value)
    if m is None:
        return None
    first = int(m[1])
    last = int(m[2]) if m[2] else size - 1
    if first >= size or last < first:
        return None
    return ByteRange(first, min(last, size - 1))


def parse_range_header(
    value: str,
    size: int,
    *,
    max_ranges: int = 64,
    max_overlapping: int = 2,
    small_range_bytes: int = 1024,
    max_small_unordered: int = 16,
) -> RangeRequest:
    """Decide how to answer ``Range: value`` for a representation of ``size`` bytes.

    Never raises for any ``value``. The abuse limits implement the RFC 9110 §14.2 allowance
    to "ignore or reject a Range header field that contains ... more than two overlapping
    ranges, or a set of many small ranges that are not listed in ascending order, since these
    are indications of either a broken client or a deliberate denial-of-service attack"
    (§17.15); they are applied to the satisfiable ranges, clipped to the size, because that
    is what would be sent:

    * more than ``max_ranges`` range-specs in the header (counted before resolution: the
      count alone bounds the parsing and per-part overhead a client can cause);
    * more than ``max_overlapping`` ranges that each share a byte with another range (two
      are fine: the RFC itself lists ``bytes=500-700,601-999`` as a legal request). This
      bounds the amplification a client can get from one request to about twice the size;
    * ranges not in ascending order of start offset, more than ``max_small_unordered`` of
      which are shorter than ``small_range_bytes`` (each costs a seek and a part header).

    A zero-length representation: RFC 9110 §14.1.2 says "the only satisfiable form of
    range-spec is a suffix-range with a non-zero suffix-length", and such a suffix selects the
    entire (empty) representation. No 206 can express an empty range (``Content-Range`` needs
    first <= last), so that case is reported as IGNORE: the server sends 200 with the
    empty representation, which is what the client asked for. Other ranges of an empty
    representation are UNSATISFIABLE (416 ``bytes */0``).
    """
    if size < 0:
        raise ValueError("size must be >= 0")
    parsed = parse_range_specs(value)
    if isinstance(parsed, str):
        return RangeRequest(RangeOutcome.IGNORE, reason=parsed)
    if len(parsed) > max_ranges:
        return RangeRequest(
            RangeOutcome.REJECTED,
            reason=f"{len(parsed)} ranges requested; at most {max_ranges} are allowed",
        )
    ranges: list[ByteRange] = []
    empty_suffix_satisfiable = False
    for spec in parsed:
        r = spec.resolve(size)
        if r is not None:
            ranges.append(r)
        elif size == 0 and spec.suffix:
            empty_suffix_satisfiable = True
    if not ranges:
        if empty_suffix_satisfiable:
            return RangeRequest(
                RangeOutcome.IGNORE,
                reason="suffix range of an empty representation selects all of it (0 bytes)",
            )
        return RangeRequest(
            RangeOutcome.UNSATISFIABLE,
            reason=f"none of the requested ranges overlaps the representation of {size} bytes",
        )
    overlapping = _count_overlapping(ranges)
    if overlapping > max_overlapping:
        return RangeRequest(
            RangeOutcome.REJECTED,
            reason=(
                f"{overlapping} of the requested ranges overlap each other; at most "
                f"{max_overlapping} overlapping ranges are allowed"
            ),
        )
    if any(b.start < a.start for a, b in zip(ranges, ranges[1:], strict=False)):
        small = sum(1 for r in ranges if r.length < small_range_bytes)
        if small > max_small_unordered:
            return RangeRequest(
                RangeOutcome.REJECTED,
                reason=(
                    f"{small} ranges shorter than {small_range_bytes} bytes requested out of "
                    f"ascending order; at most {max_small_unordered} such ranges are allowed "
                    "unless the ranges are listed in ascending order"
                ),
            )
    return RangeRequest(RangeOutcome.SATISFIABLE, ranges=tuple(ranges))


def _count_overlapping(ranges: Sequence[ByteRange]) -> int:
    """How many ranges share at least one byte with another range of the set.

    O(n log n): after sorting by start, a range overlaps an earlier one iff it starts at or
    before the largest end seen so far, and overlaps a later one iff the next start (the
    smallest start among the later ranges) is at or before its end.
    """
    ordered = sorted(ranges)
    flagged = [False] * len(ordered)
    max_end = -1
    for i, r in enumerate(ordered):
        if r.start <= max_end:
            flagged[i] = True
        if i + 1 < len(ordered) and ordered[i + 1].start <= r.end:
            flagged[i] = True
        max_end = max(max_end, r.end)
    return sum(flagged)


def coalesce_ranges(ranges: Sequence[ByteRange], *, gap: int = 80) -> tuple[ByteRange, ...]:
    """Merge ranges that overlap or are separated by fewer than ``gap`` bytes, in offset order.

    RFC 9110 §14.6 allows a server to coalesce such ranges "regardless of the order" they were
    requested; the default gap is the ~80 bytes the RFC gives as typical multipart overhead
    per part. Useful for a cache turning a client's ranges into few upstream fetches.
    """
    merged: list[ByteRange] = []
    for r in sorted(ranges):
        if merged and r.start - merged[-1].end - 1 < gap:
            last = merged[-1]
            merged[-1] = ByteRange(last.start, max(last.end, r.end))
        else:
            merged.append(r)
    return tuple(merged)


def content_range(r: ByteRange, size: int) -> str:
    """``Content-Range`` value of a 206 part: ``bytes FIRST-LAST/SIZE`` (RFC 9110 §14.4)."""
    if r.end >= size:
        raise ValueError(f"range {r.start}-{r.end} is outside a representation of {size} bytes")
    return f"bytes {r.start}-{r.end}/{size}"


def unsatisfied_content_range(size: int) -> str:
    """``Content-Range`` value of a 416: ``bytes */SIZE`` (RFC 9110 §14.4, §15.5.17)."""
    return f"bytes */{size}"


@dataclass(frozen=True, slots=True)
class ContentRange:
    """A parsed ``Content-Range``; ``start``/``end`` are None for ``bytes */SIZE`` and
    ``size`` is None for an unknown complete length (``bytes A-B/*``)."""

    start: int | None
    end: int | None
    size: int | None


_CONTENT_RANGE = re.compile(r"bytes +(?:([0-9]{1,32})-([0-9]{1,32})|\*)/([0-9]{1,32}|\*)", re.I)


def parse_content_range(value: str) -> ContentRange | None:
    """Parse a ``Content-Range`` of the bytes unit, or None if invalid (RFC 9110 §14.4).

    A range whose last-pos precedes its first-pos, or which lies beyond a known complete
    length, is invalid ("A Content-Range field value is invalid if it contains a range-resp
    that has a last-pos value less than its first-pos value, or a complete-length value less
    than or equal to its last-pos value"), as is ``bytes */*``.
    """
    m = _CONTENT_RANGE.fullmatch(value.strip(_OWS))
    if m is None:
        return None
    first_s, last_s, size_s = m.groups()
    size = None if size_s == "*" else int(size_s)
    if first_s is None:
        return None if size is None else ContentRange(None, None, size)
    first, last = int(first_s), int(last_s)
    if last < first or (size is not None and size <= last):
        return None
    return ContentRange(first, last, size)


# bchars from RFC 2046 §5.1.1; a boundary is 1-70 of them and must not end in a space.
_BOUNDARY = re.compile(r"[0-9A-Za-z'()+_,\-./:=? ]{0,69}[0-9A-Za-z'()+_,\-./:=?]")


# A media type is ASCII (RFC 9110 §8.3.1); allowing only visible ASCII, SP and HTAB also rules
# out header injection through the part headers, which are written into the body by hand.
_FIELD_VALUE = re.compile(r"[\x20-\x7e\t]*")


def make_boundary() -> str:
    """A fresh multipart boundary: 32 random hex digits.

    128 random bits make a collision with the enclosed bytes negligible, so the body need not
    be scanned. Hex digits form an HTTP token, so the ``boundary`` parameter never needs
    quoting, which some byteranges clients mishandle.
    """
    return secrets.token_hex(16)


def multipart_content_type(boundary: str) -> str:
    """The response ``Content-Type`` of a multipart/byteranges 206 (RFC 9110 §14.6)."""
    return f"multipart/byteranges; boundary={boundary}"


@dataclass(frozen=True, slots=True)
class MultipartLayout:
    """Exact bytes of a multipart/byteranges body except the range data itself.

    Send, in order, for each ``(header, r)`` in ``parts``: ``header`` then the representation
    bytes ``r.start..r.end``; then ``closing``. The total is ``content_length`` bytes, known
    before anything is sent, so the response can carry an exact ``Content-Length`` and the
    range data can go out with sendfile between the small header writes.
    """

    parts: tuple[tuple[bytes, ByteRange], ...]
    closing: bytes
    content_length: int


def multipart_layout(
    ranges: Sequence[ByteRange], size: int, content_type: str | None, boundary: str
) -> MultipartLayout:
    """Lay out a multipart/byteranges body for ``ranges`` of a ``size``-byte representation.

    Framing follows RFC 2046 §5.1.1 as profiled by RFC 9110 §14.6: the CRLF before each
    delimiter belongs to the delimiter, not to the preceding part's data, so part data is sent
    verbatim with no trailing CRLF of its own. The body starts directly with the first
    ``--boundary`` (the preamble is optional; RFC 9110's example has none) and ends with the
    close delimiter ``--boundary--`` plus a CRLF, as nginx and Apache send it. Each part
    carries ``Content-Type`` (when the representation has one, §14.6 SHOULD) and the
    mandatory ``Content-Range``.
    """
    if not ranges:
        raise ValueError("a multipart/byteranges body needs at least one range")
    if not _BOUNDARY.fullmatch(boundary):
        raise ValueError("boundary must be 1-70 RFC 2046 bchars, not ending in a space")
    if content_type is not None and not _FIELD_VALUE.fullmatch(content_type):
        raise ValueError("content type must be printable ASCII (no CR, LF or other controls)")
    delimiter = b"--" + boundary.encode("ascii")
    type_line = b""
    if content_type is not None:
        type_line = b"Content-Type: " + content_type.encode("ascii") + b"\r\n"
    parts: list[tuple[bytes, ByteRange]] = []
    total = 0
    for i, r in enumerate(ranges):
        header = b"".join(
            (
                b"\r\n" if i else b"",
                delimiter,
                b"\r\n",
                type_line,
                b"Content-Range: ",
                content_range(r, size).encode("ascii"),
                b"\r\n\r\n",
            )
        )
        parts.append((header, r))
        total += len(header) + r.length
    closing = b"\r\n" + delimiter + b"--\r\n"
    total += len(closing)
    return MultipartLayout(tuple(parts), closing, total)


class MultipartError(ValueError):
    """A ``multipart/byteranges`` body that cannot be read."""


def multipart_boundary(content_type: str) -> str | None:
    """The boundary parameter of a ``multipart/byteranges`` Content-Type, else None."""
    kind, _, params = content_type.partition(";")
    if kind.strip().lower() != "multipart/byteranges":
        return None
    for param in params.split(";"):
        name, _, value = param.strip().partition("=")
        if name.strip().lower() == "boundary" and value:
            return value.strip().strip('"')
    return None


def multipart_parts(boundary: str, body: bytes) -> list[tuple[ByteRange, bytes]]:
    """The parts of a whole ``multipart/byteranges`` body (RFC 9110 §14.6): each part's range
    (from its Content-Range) and bytes, taken by length, so that a part's data may contain
    anything, the boundary included (:class:`MultipartError` if the body is malformed)."""
    delimiter = b"--" + boundary.encode("latin-1")
    parts: list[tuple[ByteRange, bytes]] = []
    position = body.find(delimiter)
    while position >= 0:
        position += len(delimiter)
        if body[position : position + 2] == b"--":
            return parts  # the closing delimiter
        head_end = body.find(b"\r\n\r\n", position)
        if head_end < 0:
            raise MultipartError("a part without the end of its header fields")
        fields = body[position:head_end].decode("latin-1").split("\r\n")
        value = next(
            (f.partition(":")[2].strip() for f in fields if f.lower().startswith("content-range:")),
            None,
        )
        parsed = None if value is None else parse_content_range(value)
        if parsed is None or parsed.start is None or parsed.end is None:
            raise MultipartError("a part without a valid Content-Range")
        start = head_end + 4
        stop = start + parsed.end - parsed.start + 1
        if stop > len(body):
            raise MultipartError("a part shorter than its Content-Range")
        parts.append((ByteRange(parsed.start, parsed.end), body[start:stop]))
        position = body.find(delimiter, stop)
    raise MultipartError("no closing delimiter")
