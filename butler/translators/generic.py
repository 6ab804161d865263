"""The fallback for files no instrument translator recognises.

It needs only an instrument name (``INSTRUME``, else ``TELESCOP``) and a start time
(``DATE-OBS`` in ISO or ``dd/mm/yy`` form, with ``TIME-OBS``; or ``MJD-OBS``); everything else
has a documented default:

- ``exposure`` (= ``visit``): ``EXPID``/``EXPNUM``/``OBSNUM``/``FRAMENUM`` if an integer, else
  the start time as the number ``YYYYMMDDhhmmss``;
- ``detector``: ``CCDNUM``/``DETECTOR``/``CCDCHIP`` if an integer, else the HDU's position among
  the file's image HDUs (0 for a single-image file); one dataset per image HDU;
- ``physical_filter``: ``FILTER``/``FILTER1``/``FILTNAM1``/``BANDPASS``/``EMULSION``, else
  ``unknown``; the band by the usual naming conventions (``band_of``);
- ``exposure_time``: ``EXPTIME``/``EXPOSURE``/``ITIME`` (s), else 0;
- pointing: ``RA``/``DEC`` (sexagesimal RA in hours) or ``CRVAL1``/``CRVAL2``;
- ``day_obs``: the UTC date shifted by -12 h (a ground-based night).

Planes: an LSST-style ``IMAGE``/``VARIANCE``/``MASK`` set or an HST-style ``SCI``/``ERR``/``DQ``
set is used when present (DQ bits, whose meaning is unknown here, all become ``SUSPECT``);
otherwise the variance is estimated with ``GAIN``/``RDNOISE`` (NaN without ``GAIN``) and the
mask is empty.
"""

from __future__ import annotations

from typing import Any, ClassVar

from astropy import units as u

from butler.translators.base import (
    FileHeaders,
    HduRef,
    MissingHeaderKeysError,
    Observation,
    PixelLayout,
    RawUnit,
    Translator,
)
from butler.translators.helpers import (
    as_float,
    as_int,
    band_of,
    day_obs_of,
    parse_angle,
    parse_time,
)
from butler.translators.mef import planes_by_extver

__all__ = ["GenericTranslator"]


def _first(cards: dict[str, Any], *keys: str) -> Any:
    for key in keys:
        value = cards.get(key)
        if value not in (None, "") and not (isinstance(value, str) and not value.strip()):
            return value
    return None


def _ra(value: Any) -> float | None:
    # A sexagesimal RA string is in hours; a number is in degrees.
    if isinstance(value, str) and ":" in value:
        return parse_angle(value, u.hourangle)
    return parse_angle(value, u.deg)


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
            instrument = _first(cards, "INSTRUME", "TELESCOP")
            start = parse_time(cards)
            missing = [
                k
                for k, v in (("INSTRUME or TELESCOP", instrument), ("DATE-OBS (or MJD-OBS)", start))
                if v is None
            ]
            if missing or start is None:
                raise MissingHeaderKeysError(self.name, missing, f"{where}: HDU {layout.image.hdu}")
            exposure = as_int(_first(cards, "EXPID", "EXPNUM", "OBSNUM", "FRAMENUM"))
            if exposure is None:
                exposure = int(start.to_datetime().strftime("%Y%m%d%H%M%S"))
            detector = as_int(_first(cards, "CCDNUM", "DETECTOR", "CCDCHIP"))
            physical_filter = str(
                _first(cards, "FILTER", "FILTER1", "FILTNAM1", "BANDPASS", "EMULSION") or "unknown"
            ).strip()
            exptime = as_float(_first(cards, "EXPTIME", "EXPOSURE", "ITIME")) or 0.0
            observation = Observation(
                instrument=str(instrument).strip(),
                exposure=exposure,
                visit=exposure,
                detector=detector if detector is not None else number,
                detector_name=str(_first(cards, "DETPOS", "CCDNAME", "EXTNAME") or number),
                physical_filter=physical_filter,
                band=band_of(physical_filter),
                day_obs=day_obs_of(start, -12.0),
                exposure_time=exptime,
                datetime_begin=start.isot,
                datetime_end=(start + exptime * u.s).isot,
                tracking_ra=_ra(_first(cards, "RA", "OBJCTRA", "CRVAL1")),
                tracking_dec=parse_angle(_first(cards, "DEC", "OBJCTDEC", "CRVAL2"), u.deg),
                obs_id=str(_first(cards, "OBSID", "OBJECT", "PLTLABEL") or exposure),
                observation_type=str(_first(cards, "IMAGETYP", "OBSTYPE") or "").lower() or None,
                target_name=str(_first(cards, "OBJECT") or "") or None,
                telescope=str(_first(cards, "TELESCOP") or "") or None,
                translator=self.name,
            )
            units.append(RawUnit(observation, layout))
        return units

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
