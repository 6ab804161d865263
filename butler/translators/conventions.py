"""Observation facts from headers that follow no single instrument's layout: what the
generic translator records, and how (each function documents the keys it reads, in order).

Every function returns the value the header *means* (units converted with astropy) or None,
and appends to ``notes`` one line per fact that is left null or taken from a fallback
keyword; ``butler ingest-raws`` prints those lines under the file's line. Nothing is guessed:
a header that does not say what a value means gives null and a note naming the key.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Mapping
from typing import Any

from astropy import units as u
from astropy.coordinates import FK4, FK5, ICRS, BaseCoordinateFrame, SkyCoord
from astropy.time import Time
from astropy.utils.exceptions import AstropyWarning

from butler.translators.helpers import (
    as_float,
    as_int,
    band_of,
    first_present,
    parse_angle,
    parse_date,
    parse_ra,
    resolve_time,
)

__all__ = [
    "SPACE_TELESCOPES",
    "day_offset_hours",
    "exposure_time_of",
    "filter_of",
    "instrument_of",
    "is_solar",
    "pointing_of",
    "start_time_of",
]

Notes = list[str]

# ---------------------------------------------------------------------------------------
# Instrument and start time


def instrument_of(cards: Mapping[str, Any], notes: Notes) -> str | None:
    """``INSTRUME``, else ``TELESCOP``, else ``ORIGIN`` (the institution that wrote the
    file: the last resort, and named in a note)."""
    found = first_present(cards, "INSTRUME", "TELESCOP", "ORIGIN")
    if found is None:
        return None
    key, value = found
    if key != "INSTRUME":
        notes.append(f"instrument: no INSTRUME; taken from {key} = {str(value).strip()!r}")
    return str(value).strip()


def start_time_of(cards: Mapping[str, Any], notes: Notes) -> Time | None:
    """``DATE-OBS`` (with ``TIME-OBS``/``UT``), else ``DATE_OBS`` (SOLARNET, Spitzer,
    RHESSI), else an MJD (``MJD-OBS``, ``MJD_OBS``, ``MJD-STR``, ``EXPSTART``), else
    ``DATE-BEG``, else ``DATE`` -- the date the *file* was written, so a note says so."""
    start, key = resolve_time(cards)
    if start is not None:
        if key != "DATE-OBS":
            notes.append(f"datetime_begin: no DATE-OBS; taken from {key}")
        return start
    for key in ("DATE_OBS", "DATE-BEG", "DATE"):
        start = parse_date(cards, key)
        if start is not None:
            what = " (the file's creation date, not the observation's)" if key == "DATE" else ""
            notes.append(f"datetime_begin: no DATE-OBS or MJD-OBS; taken from {key}{what}")
            return start
    return None


# Space telescopes have no nights: their day_obs is the UTC date.
SPACE_TELESCOPES = frozenset(
    {
        "HST", "JWST", "SPITZER", "SIRTF", "EUCLID", "ROMAN", "WISE", "NEOWISE", "GALEX",
        "CHANDRA", "XMM", "KEPLER", "K2", "TESS", "GAIA", "HERSCHEL", "PLANCK", "IRAS",
        "AKARI", "SWIFT", "FERMI", "GLAST", "SDO", "SOHO", "STEREO", "HINODE", "PROBA2",
        "SOLO", "SOLAR ORBITER", "RHESSI", "TRACE", "YOHKOH", "IRIS", "PSP", "GOES",
    }
)  # fmt: skip


def day_offset_hours(cards: Mapping[str, Any]) -> float:
    """0 for a space telescope (``TELESCOP`` starts with one of :data:`SPACE_TELESCOPES`,
    as in ``SDO/AIA``), else -12 h so one ground-based night shares one ``day_obs``."""
    telescope = str(cards.get("TELESCOP") or "").strip().upper()
    head = re.split(r"[/_\-\s(]", telescope, maxsplit=1)[0]
    space = telescope in SPACE_TELESCOPES or head in SPACE_TELESCOPES
    return 0.0 if space else -12.0


# ---------------------------------------------------------------------------------------
# Exposure time

_EXPOSURE_KEYS = ("EXPTIME", "EXP_TIME", "XPOSURE", "ITIME", "EXPOSURE")


def _comment_unit(comment: str) -> u.UnitBase:
    """The time unit a card comment states (``[min]``, ``minutes``, ``ms``, ``hours``);
    seconds, the FITS default, otherwise."""
    words = comment.lower()
    if re.search(r"\b(ms|msec|millisec\w*)\b", words):
        return u.ms
    if re.search(r"\bmin(ute)?s?\b", words):
        return u.min
    if re.search(r"\b(h|hr|hrs|hours?)\b", words):
        return u.hour
    return u.s


def _is_dss_plate(cards: Mapping[str, Any]) -> bool:
    """A Digitized Sky Survey scan: plate keywords that only DSS/GSSS headers carry."""
    return any(k in cards for k in ("PLTRAH", "PLTLABEL", "SCANIMG", "PLATEID"))


def exposure_time_of(
    cards: Mapping[str, Any], comments: Mapping[str, str], notes: Notes
) -> float | None:
    """Seconds, from the first of:

    - ``EXPTIME`` (the FITS convention);
    - ``EXP_TIME`` (UKIRT WFCAM/UIST/Cassegrain instruments);
    - ``XPOSURE`` (SOLARNET/SDO: the accumulated exposure);
    - ``ITIME`` times ``COADDS``/``NCOADDS`` (Keck, IRTF, Gemini NIRI: ``ITIME`` is one
      coadd's integration);
    - ``EXPOSURE``: in minutes on Digitized Sky Survey plates (recognised by their
      ``PLTRAH``/``PLTLABEL``/``SCANIMG``/``PLATEID`` keywords), else in seconds.

    A unit written in the card's comment (``minutes``, ``ms``, ``hours``) overrides the
    default. ``TELAPSE``/``ONTIME`` (elapsed or on-source time, dead time included) are not
    exposure times: a header with only those gives null and a note.
    """
    found = first_present(cards, *_EXPOSURE_KEYS)
    if found is None:
        elapsed = [k for k in ("TELAPSE", "ONTIME", "LIVETIME") if k in cards]
        why = f" ({', '.join(elapsed)} is elapsed time, not exposure)" if elapsed else ""
        notes.append(f"exposure_time: none of {', '.join(_EXPOSURE_KEYS)} in the header{why}")
        return None
    key, raw = found
    value = as_float(raw)
    if value is None or value < 0:
        notes.append(f"exposure_time: {key} = {raw!r} is not a duration")
        return None
    unit = _comment_unit(comments.get(key, ""))
    if key == "EXPOSURE" and _is_dss_plate(cards):
        unit = u.min
    seconds = float((value * unit).to_value(u.s))
    if key == "ITIME":
        coadds = first_present(cards, "COADDS", "NCOADDS", "COADD")
        count = as_int(coadds[1]) if coadds is not None else None
        if coadds is not None and (count is None or count < 1):
            notes.append(f"exposure_time: {coadds[0]} = {coadds[1]!r} is not a count")
            return None
        seconds *= count or 1
    return seconds


# ---------------------------------------------------------------------------------------
# Filter

_FILTER_KEYS = ("FILTER", "FILTER1", "FILTER2", "FILTER3", "FILTNAM1", "FILTNAM2", "FILTNAME")
# "no filter in this wheel" names: CLEAR2L, Open, open1-6, Empty, none, N/A, dark (a blank).
_NO_FILTER = re.compile(
    r"^((clear|open|empty|none|blank|dark)([\W\d_].*|[a-z]?)|n/?a)$", re.IGNORECASE
)


def _wavelength(cards: Mapping[str, Any], notes: Notes) -> str | None:
    """``WAVELNTH`` with its ``WAVEUNIT`` (a unit name, or SOLARNET's power of ten of
    metres: -10 is angstrom), as ``'171 Angstrom'``; the bare number if no unit is given."""
    value = as_float(cards.get("WAVELNTH"))
    if value is None or value <= 0:
        return None
    unit_card = cards.get("WAVEUNIT")
    unit: u.UnitBase | None = None
    if isinstance(unit_card, int | float) and not isinstance(unit_card, bool):
        unit = u.Unit(10.0 ** float(unit_card) * u.m)
    elif isinstance(unit_card, str) and unit_card.strip():
        try:
            unit = u.Unit(unit_card.strip())
        except ValueError:
            unit = None
    if unit is None or unit.physical_type != "length":
        notes.append(
            f"physical_filter: WAVELNTH = {value:g} has no usable WAVEUNIT "
            f"({unit_card!r}); recorded without a unit"
        )
        return f"{value:g}"
    name = unit.to_string()
    if name not in ("Angstrom", "nm", "um", "m"):  # a scaled metre (WAVEUNIT = -9...)
        return f"{(value * unit).to_value(u.AA):g} Angstrom"
    return f"{value:g} {name}"


def filter_of(cards: Mapping[str, Any], notes: Notes) -> tuple[str | None, str | None]:
    """(physical_filter, band).

    The filter names in ``FILTER``, ``FILTER1..3``, ``FILTNAM1/2``, ``FILTNAME``: those that
    are not clear/open joined with ``+`` (``F606W+POL0V``), or the clear one if that is all
    there is. A string ``BANDPASS`` (numeric ``BANDPASS`` values are survey codes, not names)
    comes next. A wavelength (``WAVELNTH``/``WAVEUNIT``, solar EUV imagers) is the
    passband of instruments without filter names (SDO/AIA: ``171 Angstrom``), and is
    combined with a filter name when both exist (SOHO/EIT: ``171 (Al +1)``); then it is the
    band. The band otherwise follows :func:`band_of`.
    """
    names: list[str] = []
    for key in _FILTER_KEYS:
        value = cards.get(key)
        if isinstance(value, str) and value.strip() and value.strip() not in names:
            names.append(value.strip())
    bandpass = cards.get("BANDPASS")
    if not names and isinstance(bandpass, str) and bandpass.strip():
        names.append(bandpass.strip())
    in_use = [n for n in names if not _NO_FILTER.match(n)]
    name = "+".join(in_use) if in_use else (names[0] if names else None)
    wave = _wavelength(cards, notes)
    if wave is not None:
        return (f"{wave} ({name})" if name else wave), wave.lower()
    if name is not None:
        return name, band_of(name)
    code = "" if bandpass is None else f" (BANDPASS = {bandpass!r} is a code, not a filter name)"
    notes.append(f"physical_filter: no filter or wavelength keyword in the header{code}")
    return None, None


# ---------------------------------------------------------------------------------------
# Pointing

_SOLAR_CTYPES = re.compile(r"^(HPLN|HPLT|HGLN|HGLT|CRLN|CRLT|SOLAR[-_]?[XY]|SOLX|SOLY)", re.I)


def _frame(cards: Mapping[str, Any]) -> tuple[BaseCoordinateFrame, bool]:
    """The celestial frame of the header's equatorial coordinates, and whether the header
    states it (``RADESYS``/``RADECSYS``, ``EQUINOX``; ``EPOCH`` only when it is 1950 or 2000,
    because DSS headers use ``EPOCH`` for the plate's date)."""
    system = str(cards.get("RADESYS") or cards.get("RADECSYS") or "").strip().upper()
    equinox = as_float(cards.get("EQUINOX"))
    if equinox is None and as_float(cards.get("EPOCH")) in (1950.0, 2000.0):
        equinox = as_float(cards.get("EPOCH"))
    if system == "ICRS":
        return ICRS(), True
    if system.startswith("FK4") or (not system and equinox is not None and equinox < 1984.0):
        return FK4(equinox=Time(equinox or 1950.0, format="byear")), True
    if system == "FK5" or equinox is not None:
        return FK5(equinox=Time(equinox or 2000.0, format="jyear")), True
    return ICRS(), False


def _to_icrs(ra: float, dec: float, cards: Mapping[str, Any], notes: Notes) -> tuple[float, float]:
    frame, stated = _frame(cards)
    if not stated:
        notes.append(
            "tracking_ra/tracking_dec: no RADESYS or EQUINOX; the coordinates are taken as ICRS"
        )
    if isinstance(frame, ICRS):
        return ra, dec
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", AstropyWarning)
        icrs = SkyCoord(ra * u.deg, dec * u.deg, frame=frame).icrs
    return float(icrs.ra.deg), float(icrs.dec.deg)


def _dss_plate_centre(cards: Mapping[str, Any]) -> tuple[float | None, float | None]:
    """The plate centre of a DSS header: ``PLTRAH/PLTRAM/PLTRAS`` (hours) and
    ``PLTDECSN``, ``PLTDECD/PLTDECM/PLTDECS`` (degrees)."""
    parts = [as_float(cards.get(k)) for k in ("PLTRAH", "PLTRAM", "PLTRAS")]
    decs = [as_float(cards.get(k)) for k in ("PLTDECD", "PLTDECM", "PLTDECS")]
    if any(p is None for p in parts) or any(d is None for d in decs):
        return None, None
    sign = "-" if str(cards.get("PLTDECSN") or "+").strip() == "-" else "+"
    ra = parse_angle(" ".join(f"{p:g}" for p in parts if p is not None), u.hourangle)
    dec = parse_angle(sign + " ".join(f"{d:g}" for d in decs if d is not None), u.deg)
    return ra, dec


def _wcs_radec(cards: Mapping[str, Any]) -> tuple[float | None, float | None] | None:
    """``CRVAL1/2`` when ``CTYPE1/2`` say they are RA and Dec (in either order)."""
    axes = {str(cards.get(f"CTYPE{i}") or "").strip().upper()[:4]: i for i in (1, 2)}
    ra_axis = axes.get("RA--") or axes.get("RA")
    dec_axis = axes.get("DEC-") or axes.get("DEC")
    if ra_axis is None or dec_axis is None:
        return None
    return (
        parse_angle(cards.get(f"CRVAL{ra_axis}"), u.deg),
        parse_angle(cards.get(f"CRVAL{dec_axis}"), u.deg),
    )


def is_solar(cards: Mapping[str, Any]) -> bool:
    """Pointing in a solar frame: helioprojective/heliographic ``CTYPE``s (``HPLN-TAN``,
    EIT's ``Solar-X``), or solar pointing keys (``SOLAR-X``, ``XCEN``)."""
    ctypes = [str(cards.get(f"CTYPE{i}") or "").strip() for i in (1, 2)]
    keys = ("SOLAR-X", "SOLAR_X", "SOLAR-Y", "SOLAR_Y", "XCEN", "YCEN")
    return any(_SOLAR_CTYPES.match(c) for c in ctypes) or any(k in cards for k in keys)


def pointing_of(
    cards: Mapping[str, Any], comments: Mapping[str, str], notes: Notes
) -> tuple[float | None, float | None]:
    """ICRS degrees of the pointing, from the first of:

    - ``RA``/``DEC``, ``OBJCTRA``/``OBJCTDEC`` (DSS: the cutout's centre),
      ``RA_TARG``/``DEC_TARG``, ``RABASE``/``DECBASE`` (UKIRT, ``RABASE`` in hours: its
      comment says ``[h]``): a sexagesimal string RA is in hours, a number in degrees
      (hours if its comment says so); ``TELRA``/``TELDEC`` are not used: they are often
      apparent coordinates of date (PTF, NOAO), not ICRS;
    - the DSS plate centre ``PLTRAH/PLTRAM/PLTRAS``, ``PLTDECSN/PLTDECD/PLTDECM/PLTDECS``;
    - ``CRVAL1/2``, only when ``CTYPE1/2`` are ``RA--``/``DEC-`` axes.

    Converted from the header's frame (``RADESYS``, ``EQUINOX``: FK4 B1950, FK5) to ICRS.
    A solar image's pointing (helioprojective ``HPLN``/``HPLT``, ``Solar-X/Y``) is not an
    RA/Dec: it gives null and a note with the solar coordinates, as does a header with no
    pointing at all.
    """
    for ra_key, dec_key in (
        ("RA", "DEC"),
        ("OBJCTRA", "OBJCTDEC"),
        ("RA_TARG", "DEC_TARG"),
        ("RABASE", "DECBASE"),
    ):
        if ra_key in cards and dec_key in cards:
            ra = parse_ra(cards[ra_key], comments.get(ra_key, ""))
            dec = parse_angle(cards[dec_key], u.deg)
            if ra is not None and dec is not None:
                return _to_icrs(ra, dec, cards, notes)
    ra, dec = _dss_plate_centre(cards)
    if ra is not None and dec is not None:
        return _to_icrs(ra, dec, cards, notes)
    wcs = _wcs_radec(cards)
    if wcs is not None and wcs[0] is not None and wcs[1] is not None:
        return _to_icrs(wcs[0], wcs[1], cards, notes)
    if is_solar(cards):
        keys = ("CTYPE1", "CTYPE2", "CRVAL1", "CRVAL2", "SOLAR-X", "SOLAR_X", "XCEN", "YCEN")
        shown = ", ".join(f"{k} = {cards[k]!r}" for k in keys if k in cards)
        notes.append(
            f"tracking_ra/tracking_dec: the pointing is solar ({shown}), not "
            "RA/Dec; left null (the data model has no helioprojective pointing field; the "
            "image's WCS keeps it)"
        )
    else:
        notes.append(
            "tracking_ra/tracking_dec: no RA/DEC, OBJCTRA/OBJCTDEC, RA_TARG/DEC_TARG, RABASE, "
            "PLTRAH.../PLTDECD..., or CRVAL1/2 on RA/DEC axes in the header"
        )
    return None, None
