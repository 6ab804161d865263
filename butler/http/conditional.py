"""Conditional requests (RFC 9110 §8.8 validators, §13 preconditions) as pure functions.

Used by ``butler serve`` for its files and by proxyd when it answers from cache, so that a
client revalidating through the proxy sees exactly what the origin would have said.

Times are POSIX seconds (floats allowed); HTTP-dates have one-second resolution, so a
modification time is always compared after truncation to whole seconds, the same value the
``Last-Modified`` field carries (:func:`format_http_date`).
"""

from __future__ import annotations

import calendar
import datetime
import functools
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from email.utils import formatdate
from typing import Literal

__all__ = [
    "EntityTag",
    "evaluate_preconditions",
    "format_http_date",
    "if_range_allows_partial",
    "parse_etag_list",
    "parse_http_date",
    "strong_match",
    "weak_match",
]


# etagc = %x21 / %x23-7E / obs-text (RFC 9110 §8.8.3); obs-text = %x80-FF.
_ETAGC = re.compile(r"[\x21\x23-\x7e\x80-\xff]*")
_ENTITY_TAG = re.compile(r'(W/)?"([\x21\x23-\x7e\x80-\xff]*)"')
_OWS = " \t"


@dataclass(frozen=True, slots=True)
class EntityTag:
    """An entity-tag: ``opaque`` is the text between the quotes (RFC 9110 §8.8.3)."""

    opaque: str
    weak: bool = False

    def __post_init__(self) -> None:
        if not _ETAGC.fullmatch(self.opaque):
            raise ValueError(f"invalid entity-tag characters in {self.opaque!r}")

    def __str__(self) -> str:
        return f'{"W/" if self.weak else ""}"{self.opaque}"'

    @classmethod
    def parse(cls, value: str) -> EntityTag | None:
        """Parse one entity-tag (``"x"`` or ``W/"x"``, OWS around allowed) or return None."""
        m = _ENTITY_TAG.fullmatch(value.strip(_OWS))
        if m is None:
            return None
        return cls(m.group(2), weak=m.group(1) is not None)


def strong_match(a: EntityTag, b: EntityTag) -> bool:
    """Strong comparison (§8.8.3.2): both strong and character-by-character identical."""
    return not a.weak and not b.weak and a.opaque == b.opaque


def weak_match(a: EntityTag, b: EntityTag) -> bool:
    """Weak comparison (§8.8.3.2): opaque tags identical, weakness ignored."""
    return a.opaque == b.opaque


def parse_etag_list(value: str) -> tuple[EntityTag, ...] | Literal["*"] | None:
    """Parse ``If-Match``/``If-None-Match``: ``"*"``, a tuple of tags, or None if invalid.

    Grammar: ``"*" / #entity-tag`` (§13.1.1, §13.1.2). A list cannot be split on commas
    naively because etagc includes ",", so the value is scanned tag by tag. Empty list
    elements are skipped (§5.6.1); a list with no tag at all is invalid. ``W/`` is
    case-sensitive (``%s"W/"``), so ``w/"x"`` is invalid.
    """
    text = value.strip(_OWS)
    if text == "*":
        return "*"
    tags: list[EntityTag] = []
    pos, n = 0, len(text)
    while True:
        while pos < n and text[pos] in " \t,":
            pos += 1
        if pos == n:
            break
        weak = text.startswith("W/", pos)
        if weak:
            pos += 2
        if pos >= n or text[pos] != '"':
            return None
        close = text.find('"', pos + 1)
        if close < 0:
            return None
        opaque = text[pos + 1 : close]
        if not _ETAGC.fullmatch(opaque):
            return None
        tags.append(EntityTag(opaque, weak))
        pos = close + 1
        while pos < n and text[pos] in _OWS:
            pos += 1
        if pos < n and text[pos] != ",":
            return None  # two tags not separated by a comma, or trailing junk
    return tuple(tags) if tags else None


_MONTHS = {m: i for i, m in enumerate(calendar.month_abbr) if m}
_DAYS = "Mon|Tue|Wed|Thu|Fri|Sat|Sun"
_LONG_DAYS = "Monday|Tuesday|Wednesday|Thursday|Friday|Saturday|Sunday"
_MONTH_RE = "|".join(_MONTHS)
_TIME = r"([0-9]{2}):([0-9]{2}):([0-9]{2})"
# The three HTTP-date forms a recipient MUST accept (RFC 9110 §5.6.7).
_IMF_FIXDATE = re.compile(rf"(?:{_DAYS}), ([0-9]{{2}}) ({_MONTH_RE}) ([0-9]{{4}}) {_TIME} GMT")
_RFC850 = re.compile(rf"(?:{_LONG_DAYS}), ([0-9]{{2}})-({_MONTH_RE})-([0-9]{{2}}) {_TIME} GMT")
_ASCTIME = re.compile(rf"(?:{_DAYS}) ({_MONTH_RE}) ([0-9 ][0-9]) {_TIME} ([0-9]{{4}})")


def parse_http_date(value: str, *, now: float | None = None) -> int | None:
    """Parse an HTTP-date in any of its three forms into POSIX seconds, or None if invalid.

    IMF-fixdate (``Sun, 06 Nov 1994 08:49:37 GMT``), the obsolete RFC 850 form
    (``Sunday, 06-Nov-94 08:49:37 GMT``) and asctime (``Sun Nov  6 08:49:37 1994``) are all
    accepted (§5.6.7 MUST). A two-digit RFC 850 year that would lie more than 50 years in the
    future (relative to ``now``, default the current time) means the most recent past year
    with those digits, as §5.6.7 requires. The weekday name is not checked against the date.
    Several comma-separated dates (a list) are invalid, which is how If-Modified-Since and
    If-Unmodified-Since with more than one member get ignored (§13.1.3, §13.1.4).
    """
    if now is None:
        # Caches look up the same few dates (Last-Modified, Date) on every request.
        return _parse_http_date_now(value)
    return _parse_http_date(value, now)


@functools.lru_cache(maxsize=4096)
def _parse_http_date_now(value: str) -> int | None:
    # Only the RFC 850 form depends on the current year; an entry outlives a new year by
    # at most the cache's turnover, and such dates are obsolete anyway.
    return _parse_http_date(value, None)


def _parse_http_date(value: str, now: float | None) -> int | None:
    text = value.strip(_OWS)
    if m := _IMF_FIXDATE.fullmatch(text):
        day, mon, year, hh, mm, ss = m.groups()
        year_n = int(year)
    elif m := _RFC850.fullmatch(text):
        day, mon, yy, hh, mm, ss = m.groups()
        this_year = time.gmtime(time.time() if now is None else now).tm_year
        year_n = this_year - this_year % 100 + int(yy)
        if year_n > this_year + 50:
            year_n -= 100
    elif m := _ASCTIME.fullmatch(text):
        mon, day, hh, mm, ss, year = m.groups()
        year_n = int(year)
    else:
        return None
    hour, minute, second = int(hh), int(mm), int(ss)
    # second may be 60 (a leap second, §5.6.7); timegm's arithmetic handles it.
    if hour > 23 or minute > 59 or second > 60:
        return None
    try:
        datetime.date(year_n, _MONTHS[mon], int(day))  # rejects Feb 30, day 00, ...
    except ValueError:
        return None
    return calendar.timegm((year_n, _MONTHS[mon], int(day), hour, minute, second, 0, 0, 0))


def format_http_date(timestamp: float) -> str:
    """Format POSIX seconds as an IMF-fixdate (the form senders MUST generate, §5.6.7)."""
    return formatdate(timestamp, usegmt=True)


def _field(headers: Mapping[str, str], name: str) -> str | None:
    """Look a field up case-insensitively (§5.1) whatever kind of mapping was passed."""
    value = headers.get(name)
    if value is not None:
        return value
    lowered = name.lower()
    for key, candidate in headers.items():
        if key.lower() == lowered:
            return candidate
    return None


def _current_tag(etag: str | None) -> EntityTag | None:
    if etag is None:
        return None
    tag = EntityTag.parse(etag)
    if tag is None:
        raise ValueError(f"etag must be a quoted entity-tag such as '\"abc\"', got {etag!r}")
    return tag


def evaluate_preconditions(
    method: str,
    headers: Mapping[str, str],
    etag: str | None,
    last_modified: float | None,
) -> int | None:
    """Evaluate RFC 9110 §13.2.2 steps 1-4 for an existing representation.

    ``etag`` is the current ETag field value (``"x"`` or ``W/"x"``), ``last_modified`` the
    modification time in POSIX seconds; either may be None when the resource has none.
    Returns 412 (Precondition Failed), 304 (Not Modified) or None (perform the method; then
    apply If-Range, step 5, with :func:`if_range_allows_partial`). ``headers`` may be any
    mapping; names are matched case-insensitively. For list-valued fields sent on several
    lines the caller should join the lines with ", " first (§5.3).

    Order (§13.2.2): If-Match, else If-Unmodified-Since (412 if false); then If-None-Match,
    else for GET/HEAD If-Modified-Since (304 for GET/HEAD, 412 otherwise, if false).

    Choices where the RFC is silent about malformed fields:

    * an unparseable If-Match fails (412): the client made its request conditional on a
      state it could not express, and proceeding could return or overwrite the wrong thing;
    * an unparseable If-None-Match is ignored, as an invalid date is for the date fields
      (§13.1.3, §13.1.4 say those MUST be ignored): these conditions only save bandwidth.
    """
    method = method.upper()
    safe_get = method in ("GET", "HEAD")
    current = _current_tag(etag)
    modified = None if last_modified is None else int(last_modified)

    # Step 1: If-Match (§13.1.1), strong comparison; "*" is true as the representation exists.
    if_match = _field(headers, "If-Match")
    if if_match is not None:
        tags = parse_etag_list(if_match)
        if tags is None:
            return 412
        if tags != "*" and (current is None or not any(strong_match(t, current) for t in tags)):
            return 412
    else:
        # Step 2: If-Unmodified-Since (§13.1.4), only without If-Match and only when the
        # resource has a modification date; true iff modified <= the date.
        ius = _field(headers, "If-Unmodified-Since")
        if ius is not None and modified is not None:
            date = parse_http_date(ius)
            if date is not None and modified > date:
                return 412

    # Step 3: If-None-Match (§13.1.2), weak comparison; "*" is false as the representation
    # exists.
    inm = _field(headers, "If-None-Match")
    inm_tags = None if inm is None else parse_etag_list(inm)
    if inm_tags is not None:
        if inm_tags == "*" or (
            current is not None and any(weak_match(t, current) for t in inm_tags)
        ):
            return 304 if safe_get else 412
    elif safe_get:
        # Step 4: If-Modified-Since (§13.1.3), only for GET/HEAD without If-None-Match and
        # when the resource has a modification date; false (304) iff modified <= the date.
        ims = _field(headers, "If-Modified-Since")
        if ims is not None and modified is not None:
            date = parse_http_date(ims)
            if date is not None and modified <= date:
                return 304
    return None


def if_range_allows_partial(
    if_range_value: str,
    etag: str | None,
    last_modified: float | None,
    *,
    now: float | None = None,
) -> bool:
    """Evaluate If-Range (§13.1.5): True to honour Range (206), False to send 200 in full.

    An entity-tag must match the current ETag by *strong* comparison, so a weak tag on
    either side is always false.

    An HTTP-date must equal the current Last-Modified exactly (not "earlier or equal" as for
    If-Unmodified-Since) and counts only if it is a strong validator (§8.8.2.2). An origin
    server cannot know whether a file changed twice within one second, so this module uses
    the rule §8.8.2.2 gives for dates: a Last-Modified is strong when it is at least one
    second older than the Date of the response, i.e. when ``floor(now) - floor(last_modified)
    >= 1``: the second the validator names is over, so a later write would have produced a
    different Last-Modified. A representation modified within the current second therefore
    always gets a full 200. The residual risk (two writes within the same second, one before
    and one after the client's copy) is why clients are told to prefer ETags; butler dataset
    files are immutable once committed, and the server always sends a strong ETag anyway.
    """
    text = if_range_value.strip(_OWS)
    if text.startswith(('"', 'W/"')):
        tag = EntityTag.parse(text)
        current = _current_tag(etag)
        return tag is not None and current is not None and strong_match(tag, current)
    date = parse_http_date(text)
    if date is None or last_modified is None:
        return False
    modified = int(last_modified)
    clock = int(time.time() if now is None else now)
    if clock - modified < 1:
        return False
    return date == modified
