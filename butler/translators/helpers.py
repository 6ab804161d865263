"""Small conversions every translator needs: dates, observing days, angles, filters -> bands."""

from __future__ import annotations

import re
import warnings
from collections.abc import Mapping
from datetime import timedelta
from typing import Any

from astropy import units as u
from astropy.coordinates import Angle
from astropy.time import Time
from astropy.utils.exceptions import AstropyWarning

__all__ = [
    "MJD_KEYS",
    "as_float",
    "as_int",
    "band_of",
    "day_obs_of",
    "first_present",
    "parse_angle",
    "parse_date",
    "parse_ra",
    "parse_time",
    "resolve_time",
    "value_of",
]

_OLD_DATE = re.compile(r"^\s*(\d{1,2})/(\d{1,2})/(\d{2})\s*$")  # FITS before 2000: dd/mm/yy


def parse_time(cards: Mapping[str, Any], date_key: str = "DATE-OBS") -> Time | None:
    """Start time from ``DATE-OBS`` (ISO, or the pre-2000 ``dd/mm/yy`` form with
    ``TIME-OBS``/``UT``), else from ``MJD-OBS``; None if the header has neither."""
    return resolve_time(cards, date_key)[0]


MJD_KEYS = ("MJD-OBS", "MJD_OBS", "MJD-STR", "EXPSTART")
"""Keys holding a start time as a Modified Julian Date (``EXPSTART``: HST)."""


def resolve_time(
    cards: Mapping[str, Any], date_key: str = "DATE-OBS"
) -> tuple[Time | None, str | None]:
    """:func:`parse_time`, and the key the time came from (``date_key`` or an MJD key)."""
    with warnings.catch_warnings():
        # ERFA warns about "dubious years" for dates it has no leap-second table for yet.
        warnings.simplefilter("ignore", AstropyWarning)
        start = parse_date(cards, date_key)
        if start is not None:
            return start, date_key
        for key in MJD_KEYS:
            mjd = cards.get(key)
            if isinstance(mjd, int | float) and not isinstance(mjd, bool):
                return Time(float(mjd), format="mjd", scale="utc"), key
    return None, None


def parse_date(cards: Mapping[str, Any], date_key: str) -> Time | None:
    """The time in the date card ``date_key`` (ISO, or ``dd/mm/yy``; a date without a time
    is completed by ``TIME-OBS``/``UT``/``UTSTART``), or None."""
    date = cards.get(date_key)
    if not (isinstance(date, str) and date.strip()):
        return None
    text = date.strip()
    old = _OLD_DATE.match(text)
    if old:
        day, month, year = (int(g) for g in old.groups())
        text = f"{1900 + year:04d}-{month:02d}-{day:02d}"
    if "T" not in text:
        clock = cards.get("TIME-OBS") or cards.get("UT") or cards.get("UTSTART")
        if isinstance(clock, str) and clock.strip():
            text = f"{text}T{clock.strip()}"
    text = text.removesuffix("Z")  # ISO "Z" (UTC), written by some solar archives
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", AstropyWarning)
        try:
            return Time(text, format="isot" if "T" in text else "iso", scale="utc")
        except ValueError:
            return None


def day_obs_of(start: Time, offset_hours: float) -> int:
    """The observing day ``YYYYMMDD`` of a start time: the UTC date after shifting by
    ``offset_hours`` (-12 for a ground-based site, so a whole night shares one day; 0 for
    space telescopes, which have no nights)."""
    shifted = (start + timedelta(hours=offset_hours)).to_datetime()
    return int(shifted.strftime("%Y%m%d"))


def parse_angle(value: Any, unit: u.UnitBase) -> float | None:
    """Degrees from a number (in ``unit``) or a sexagesimal string; None if unusable."""
    if value is None or isinstance(value, bool):
        return None
    try:
        if isinstance(value, int | float):
            return float(Angle(value, unit=unit).deg)
        if isinstance(value, str) and value.strip():
            return float(Angle(value.strip(), unit=unit).deg)
    except (ValueError, u.UnitsError):
        return None
    return None


_SEXAGESIMAL = re.compile(r"^[+-]?\d+(\.\d*)?([:\s]+\d+(\.\d*)?){1,2}$|[hms]")


def parse_ra(value: Any, comment: str = "") -> float | None:
    """Degrees of a right ascension: a sexagesimal string (``'14 29 56.0'``,
    ``'14:29:56'``, ``'14h29m56s'``) is in hours, as every FITS convention writes it; a
    number is in degrees unless its card comment says hours. None if unusable."""
    if isinstance(value, str):
        text = value.strip()
        if _SEXAGESIMAL.search(text):
            return parse_angle(text, u.hourangle)
        number = as_float(text)
        return parse_angle(number, _number_unit(comment)) if number is not None else None
    return parse_angle(value, _number_unit(comment))


def _number_unit(comment: str) -> u.UnitBase:
    words = comment.lower()
    hours = re.search(r"\[h\]|\b(hours?|hrs?)\b", words) and not re.search(r"\bdeg", words)
    return u.hourangle if hours else u.deg


def first_present(cards: Mapping[str, Any], *keys: str) -> tuple[str, Any] | None:
    """The first of ``keys`` with a non-blank value, as (key, value); 0 counts as a value
    (``x or y`` would skip an RA of 0.0)."""
    for key in keys:
        value = cards.get(key)
        if value is None or isinstance(value, bool):
            continue
        if isinstance(value, str) and not value.strip():
            continue
        return key, value
    return None


def value_of(cards: Mapping[str, Any], *keys: str) -> Any:
    """The value of :func:`first_present`, or None."""
    found = first_present(cards, *keys)
    return found[1] if found is not None else None


def as_float(value: Any) -> float | None:
    if isinstance(value, bool) or value is None:
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def as_int(value: Any) -> int | None:
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value.strip())
    return None


_BROAD_BANDS = ("u", "g", "r", "i", "z", "y")
_JOHNSON = {"U": "u", "B": "g", "V": "g", "R": "r", "I": "i"}


def band_of(physical_filter: str, table: Mapping[str, str] | None = None) -> str:
    """The abstract band of a physical filter: from ``table`` if it has it, else by the
    usual naming conventions (``HSC-R2`` -> ``r``, ``r DECam SDSS ...`` -> ``r``,
    ``r_57`` -> ``r``, Johnson ``B`` -> ``g``); otherwise the filter name itself, lower-case
    (space-telescope filters such as ``F606W`` are their own band)."""
    if table and physical_filter in table:
        return table[physical_filter]
    name = physical_filter.strip()
    for pattern in (
        r"^HSC-([GRIZY])\d?$",
        r"^([ugrizy])\b",
        r"^([ugrizy])_",
        r"^([ugrizY])'?$",
    ):
        match = re.match(pattern, name)
        if match:
            return match.group(1).lower()
    if name in _JOHNSON:
        return _JOHNSON[name]
    return name.lower() or "unknown"
