"""Gemini GMOS-N / GMOS-S imaging.

Layouts assumed:

- **Raw** (as archived): PRIMARY with the exposure keywords, then one unnamed image extension
  per amplifier (``CCDNAME``, ``GAIN``, ``RDNOISE`` in each). No variance or mask: the
  variance is estimated from the pixels with that extension's gain and read noise.
- **Reduced** (DRAGONS ``prepare``/``addVAR``/``addDQ`` output): ``SCI`` / ``VAR`` / ``DQ``
  extensions sharing an EXTVER per amplifier; ``VAR`` is a variance. DQ bits -> planes:
  1 bad pixel -> BAD, 2 non-linear -> SUSPECT, 4 saturated -> SAT, 8 cosmic ray -> CR,
  16 no data -> NO_DATA, 32 overlap -> SUSPECT, 64 unilluminated -> NO_DATA.

Data ID: ``instrument`` is ``INSTRUME`` (``GMOS-N``/``GMOS-S``); ``exposure`` (= ``visit``) is
built from the archive file name ``ORIGNAME`` (``N20190101S0123`` -> site 1 for N, 2 for S,
then date and frame: ``1201901010123``); ``detector`` is the EXTVER (amplifier number);
``physical_filter`` is the filter in ``FILTER1``/``FILTER2`` that is not ``open``
(``r_G0303``), with band ``r``. ``day_obs`` is the local night (UTC - 12 h).
"""

from __future__ import annotations

import re
from typing import ClassVar

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
    band_of,
    day_obs_of,
    parse_angle,
    parse_ra,
    parse_time,
)
from butler.translators.mef import planes_by_extver

__all__ = ["GMOS_DQ_BITS", "GmosTranslator"]

GMOS_DQ_BITS = {0: "BAD", 1: "SUSPECT", 2: "SAT", 3: "CR", 4: "NO_DATA", 5: "SUSPECT", 6: "NO_DATA"}
_ORIGNAME = re.compile(r"^([NS])(\d{8})S(\d{4})")


class GmosTranslator(Translator):
    name: ClassVar[str] = "GMOS"
    layout_doc: ClassVar[str] = "Gemini GMOS raw (amp extensions) or reduced SCI/VAR/DQ"
    priority: ClassVar[int] = 20

    def can_translate(self, headers: FileHeaders) -> bool:
        return str(headers.primary.get("INSTRUME", "")).strip().upper().startswith("GMOS")

    def translate(self, headers: FileHeaders) -> list[RawUnit]:
        where = str(headers.path)
        primary = headers.merged(0)
        self.require(primary, ("INSTRUME", "EXPTIME"), where)
        name = str(primary.get("ORIGNAME") or headers.path.name)
        match = _ORIGNAME.match(name)
        if match is None:
            raise MissingHeaderKeysError(
                self.name, ["ORIGNAME (archive name like N20190101S0123.fits)"], where
            )
        site, date, frame = match.groups()
        exposure = int(f"{1 if site == 'N' else 2}{date}{frame}")
        start = parse_time(primary)
        if start is None:
            raise MissingHeaderKeysError(self.name, ["DATE-OBS", "TIME-OBS"], where)
        filters = [
            str(primary.get(k, "")).strip() for k in ("FILTER1", "FILTER2") if primary.get(k)
        ]
        physical_filter = next((f for f in filters if not f.lower().startswith("open")), None)
        if physical_filter is None:
            raise MissingHeaderKeysError(self.name, ["FILTER1/FILTER2 (a filter in use)"], where)
        exptime = float(primary["EXPTIME"])

        reduced = planes_by_extver(headers, "SCI", ("VAR",), ("DQ",))
        if reduced:
            sets = [(p.ver, p.image, p.variance, p.mask) for p in reduced]
        else:
            sets = [(n, pos, None, None) for n, pos in enumerate(headers.pixel_hdus(), 1)]
        units = []
        for ver, image, variance, mask in sets:
            cards = headers.merged(image)
            observation = Observation(
                instrument=str(primary["INSTRUME"]).strip(),
                exposure=exposure,
                visit=exposure,
                detector=ver,
                detector_name=str(cards.get("CCDNAME") or ver),
                physical_filter=physical_filter,
                band=band_of(physical_filter),
                day_obs=day_obs_of(start, -12.0),
                exposure_time=exptime,
                datetime_begin=start.isot,
                datetime_end=(start + exptime * u.s).isot,
                tracking_ra=parse_ra(primary.get("RA")),
                tracking_dec=parse_angle(primary.get("DEC"), u.deg),
                obs_id=str(primary.get("DATALAB") or name),
                observation_type=str(primary.get("OBSTYPE") or "").lower() or None,
                target_name=str(primary.get("OBJECT") or "") or None,
                telescope=str(primary.get("TELESCOP") or "Gemini"),
                translator=self.name,
            )
            layout = PixelLayout(
                image=HduRef(image),
                variance=HduRef(variance) if variance is not None else None,
                variance_kind="variance",
                mask=HduRef(mask) if mask is not None else None,
                mask_bits=GMOS_DQ_BITS,
                gain=as_float(cards.get("GAIN")),
                read_noise=as_float(cards.get("RDNOISE")),
            )
            units.append(RawUnit(observation, layout))
        return units
