"""The fallback for files no instrument translator recognises.

It needs only an instrument name (``INSTRUME``, else ``TELESCOP``, else ``ORIGIN``) and a start
time (``DATE-OBS`` in ISO or ``dd/mm/yy`` form, with ``TIME-OBS``; else ``DATE_OBS``, an MJD,
``DATE-BEG`` or, last, the file's ``DATE``); a fallback used is named in the unit's warnings.
The other facts follow :mod:`butler.translators.conventions` (units and conventions of
each keyword), and are null, with a warning, when the header does not determine them:

- ``exposure`` (= ``visit``): ``EXPID``/``EXPNUM``/``OBSNUM``/``FRAMENUM`` if an integer, else
  the start time as the number ``YYYYMMDDhhmmss``;
- ``detector``: ``CCDNUM``/``DETECTOR``/``CCDCHIP``/``CAMNUM`` if an integer, else the HDU's
  position among the file's image HDUs (0 for a single-image file); one dataset per image HDU;
- ``physical_filter``/``band``: filter names or a wavelength (``filter_of``);
- ``exposure_time``: ``EXPTIME``, ``EXP_TIME``, ``XPOSURE``, ``ITIME`` x coadds, ``EXPOSURE``
  (minutes on DSS plates), in seconds (``exposure_time_of``);
- pointing: RA/Dec keys (sexagesimal RA in hours), the DSS plate centre, or ``CRVAL1/2`` on
  RA/Dec axes, converted to ICRS; never a solar (helioprojective) pointing (``pointing_of``);
- ``day_obs``: the UTC date, shifted by -12 h (a ground-based night) unless ``TELESCOP`` is a
  space telescope.

Planes: an LSST-style ``IMAGE``/``VARIANCE``/``MASK`` set or an HST-style ``SCI``/``ERR``/``DQ``
set is used when present (DQ bits, whose meaning is unknown here, all become ``SUSPECT``);
otherwise the variance is estimated with ``GAIN``/``RDNOISE`` (NaN without ``GAIN``) and the
mask is empty.
"""

from __future__ import annotations

from typing import Any, ClassVar

from astropy import units as u
from astropy.time import Time

from butler.translators.base import (
    FileHeaders,
    HduRef,
    MissingHeaderKeysError,
    Observation,
    PixelLayout,
    RawUnit,
    Translator,
)
from butler.translators.conventions import (
    day_offset_hours,
    exposure_time_of,
    filter_of,
    instrument_of,
    pointing_of,
    start_time_of,
)
from butler.translators.helpers import as_float, as_int, day_obs_of, parse_date
from butler.translators.mef import planes_by_extver

__all__ = ["GenericTranslator"]


def _first(cards: dict[str, Any], *keys: str) -> Any:
    for key in keys:
        value = cards.get(key)
        if value not in (None, "") and not (isinstance(value, str) and not value.strip()):
            return value
    return None


def _end(cards: dict[str, Any], start: Time, exptime: float | None) -> str | None:
    """``DATE-END``/``DATE_END`` if the header has it, else start + exposure time."""
    end = parse_date(cards, "DATE-END") or parse_date(cards, "DATE_END")
    if end is None and exptime is not None:
        end = start + exptime * u.s
    return end.isot if end is not None else None


class GenericTranslator(Translator):
    name: ClassVar[str] = "generic"
    layout_doc: ClassVar[str] = "any FITS image with INSTRUME/TELESCOP and DATE-OBS"
    priority: ClassVar[int] = 1000

    def can_translate(self, headers: FileHeaders) -> bool:
        return bool(headers.pixel_hdus())

    def translate(self, headers: FileHeaders) -> list[RawUnit]:
        where = str(headers.path)
        pixel = headers.pixel_hdus()
        if not pixel:
            raise MissingHeaderKeysError(self.name, ["NAXIS1", "NAXIS2 (no image HDU)"], where)
        sets = self._plane_sets(headers)
        units = []
        for number, layout in enumerate(sets):
            cards = headers.merged(layout.image.hdu)
            comments = headers.comments(layout.image.hdu)
            notes: list[str] = []
            instrument = instrument_of(cards, notes)
            start = start_time_of(cards, notes)
            missing = [
                k
                for k, v in (
                    ("INSTRUME (or TELESCOP, ORIGIN)", instrument),
                    ("DATE-OBS (or DATE_OBS, MJD-OBS, DATE)", start),
                )
                if v is None
            ]
            if missing or start is None or instrument is None:
                raise MissingHeaderKeysError(self.name, missing, f"{where}: HDU {layout.image.hdu}")
            units.append(self._unit(number, layout, cards, comments, instrument, start, notes))
        return units

    def _unit(
        self,
        number: int,
        layout: PixelLayout,
        cards: dict[str, Any],
        comments: dict[str, str],
        instrument: str,
        start: Time,
        notes: list[str],
    ) -> RawUnit:
        exposure = as_int(_first(cards, "EXPID", "EXPNUM", "OBSNUM", "FRAMENUM"))
        if exposure is None:
            exposure = int(start.to_datetime().strftime("%Y%m%d%H%M%S"))
        detector = as_int(_first(cards, "CCDNUM", "DETECTOR", "CCDCHIP", "CAMNUM"))
        physical_filter, band = filter_of(cards, notes)
        exptime = exposure_time_of(cards, comments, notes)
        ra, dec = pointing_of(cards, comments, notes)
        observation = Observation(
            instrument=instrument,
            exposure=exposure,
            visit=exposure,
            detector=detector if detector is not None else number,
            detector_name=str(_first(cards, "DETPOS", "CCDNAME", "EXTNAME") or number),
            physical_filter=physical_filter,
            band=band,
            day_obs=day_obs_of(start, day_offset_hours(cards)),
            exposure_time=exptime,
            datetime_begin=start.isot,
            datetime_end=_end(cards, start, exptime),
            tracking_ra=ra,
            tracking_dec=dec,
            obs_id=str(_first(cards, "OBSID", "OBJECT", "PLTLABEL") or exposure),
            observation_type=str(_first(cards, "IMAGETYP", "OBSTYPE") or "").lower() or None,
            target_name=str(_first(cards, "OBJECT") or "") or None,
            telescope=str(_first(cards, "TELESCOP") or "") or None,
            translator=self.name,
        )
        return RawUnit(observation, layout, tuple(notes))

    def _plane_sets(self, headers: FileHeaders) -> list[PixelLayout]:
        image = headers.find("IMAGE")
        if image is not None:
            variance, mask = headers.find("VARIANCE"), headers.find("MASK")
            return [
                PixelLayout(
                    image=HduRef(image),
                    variance=HduRef(variance) if variance is not None else None,
                    mask=HduRef(mask) if mask is not None else None,
                    mask_is_lsst=mask is not None,
                )
            ]
        sci = planes_by_extver(headers, "SCI", ("VAR", "VARIANCE", "ERR"), ("DQ",))
        if sci:
            return [
                PixelLayout(
                    image=HduRef(p.image),
                    variance=HduRef(p.variance) if p.variance is not None else None,
                    variance_kind="variance"
                    if p.variance is not None and headers.hdu(p.variance)["name"] != "ERR"
                    else "stddev",
                    mask=HduRef(p.mask) if p.mask is not None else None,
                )
                for p in sci
            ]
        out = []
        for position in headers.pixel_hdus():
            cards = headers.merged(position)
            out.append(
                PixelLayout(
                    image=HduRef(position),
                    gain=as_float(cards.get("GAIN")),
                    read_noise=as_float(_first(cards, "RDNOISE", "READNOIS", "RON")),
                )
            )
        return out
