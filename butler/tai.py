"""Exact TAI times: integer nanoseconds since 1970-01-01T00:00:00 TAI.

That is the LSST butler's own form for a timespan's ends; its exports write them as
``!butler_time/tai/iso 'YYYY-MM-DD hh:mm:ss.nnnnnnnnn'``. TAI has no leap seconds, so the
conversion is integer arithmetic on the calendar, exact to the nanosecond (a float MJD or
astropy's two-double JD would not be). UTC is derived through astropy only for display.
"""

from __future__ import annotations

import datetime
import re
from typing import Any

from butler.errors import DataIdError

__all__ = ["tai_from_iso", "tai_to_iso", "tai_to_utc_iso", "to_tai_ns"]

_EPOCH = datetime.date(1970, 1, 1)
_ISO = re.compile(r"^(\d{4})-(\d{2})-(\d{2})[ T](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?$")
_NS_PER_DAY = 86_400 * 10**9


def tai_from_iso(text: str) -> int:
    """Nanoseconds since the TAI epoch of an ISO TAI time (``2025-12-03 07:59:07.425363958``)."""
    match = _ISO.match(text.strip())
    if match is None:
        raise DataIdError(
            f"{text!r} is not an ISO time (YYYY-MM-DD hh:mm:ss[.fraction], at most 9 digits)"
        )
    year, month, day, hour, minute, second = (int(g) for g in match.groups()[:6])
    fraction = (match.group(7) or "").ljust(9, "0")
    try:
        days = (datetime.date(year, month, day) - _EPOCH).days
    except ValueError as exc:
        raise DataIdError(f"{text!r} is not a valid date: {exc}") from None
    if hour > 23 or minute > 59 or second > 59:
        raise DataIdError(f"{text!r} is not a valid TAI time of day (TAI has no leap seconds)")
    return days * _NS_PER_DAY + ((hour * 60 + minute) * 60 + second) * 10**9 + int(fraction)


def tai_to_iso(ns: int) -> str:
    """The ISO TAI text (nanosecond digits, space-separated as the LSST butler writes it)."""
    days, rest = divmod(ns, _NS_PER_DAY)
    date = _EPOCH + datetime.timedelta(days=days)
    seconds, fraction = divmod(rest, 10**9)
    hour, rem = divmod(seconds, 3600)
    minute, second = divmod(rem, 60)
    return f"{date.isoformat()} {hour:02d}:{minute:02d}:{second:02d}.{fraction:09d}"


def tai_to_utc_iso(ns: int) -> str:
    """UTC ISO text (``isot``, nanosecond digits) of a TAI time, for display and the
    ``datetime_begin``/``datetime_end`` fields older repositories query."""
    from astropy.time import Time

    text = tai_to_iso(ns)
    utc = Time(text, format="iso", scale="tai", precision=9).utc
    return str(utc.isot)


def to_tai_ns(value: Any, what: str) -> int:
    """A TAI time given as nanoseconds, ISO TAI text or an astropy ``Time`` (any scale)."""
    if isinstance(value, bool):
        raise DataIdError(f"{what} must be a TAI time, got {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        return tai_from_iso(value)
    if type(value).__name__ == "Time" and hasattr(value, "tai"):
        from astropy.time import Time

        # Through the ISO text at nanosecond precision, as the LSST butler does.
        return tai_from_iso(str(Time(value.tai, precision=9).iso))
    raise DataIdError(
        f"{what} must be a TAI time (nanoseconds, ISO TAI text or astropy Time), got {value!r}"
    )
