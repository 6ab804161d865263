"""Roman Space Telescope WFI-like images in FITS.

Roman's own pipeline writes ASDF; this translator reads a FITS rendering of a level-2
(calibrated rate) image. Layout assumed: PRIMARY with ``TELESCOP = 'ROMAN'``,
``INSTRUME = 'WFI'``, ``DETECTOR`` (``WFI01``..``WFI18``), ``OPTICAL_ELEMENT`` (HIERARCH) or
``FILTER`` (``F158``...), ``PROGRAM``, ``VISIT``, ``EXPOSURE`` (integers), ``EXPTIME``,
``DATE-OBS``, ``RA_V1``/``DEC_V1`` (or ``RA``/``DEC``) of the pointing; then ``SCI`` (DN/s),
``ERR`` (standard deviation) and ``DQ`` (the Roman/JWST data-quality bits) extensions.

Data ID: ``instrument`` ``WFI``; ``exposure`` ``PROGRAM * 10**9 + VISIT * 10**3 + EXPOSURE``;
``visit`` ``PROGRAM * 10**6 + VISIT``; ``detector`` the number of ``WFInn``;
``physical_filter`` the optical element and also the band (lower-case); ``day_obs`` UTC date.

DQ bits -> planes (romancal ``dqflags``): 0 do-not-use -> BAD, 1 saturated -> SAT,
2 jump (cosmic ray) -> CR, 3 dropout -> NO_DATA, 8 dead -> BAD, 9 hot -> BAD, 10 warm ->
SUSPECT, 11 low QE -> SUSPECT, 13 telegraph -> SUSPECT, 14 non-linear -> SUSPECT,
15 bad reference pixel -> BAD, 16 no flat -> SUSPECT, 17 no gain -> SUSPECT, 19 unreliable
slope -> SUSPECT, 20 unreliable bias -> SUSPECT, 21 non-science (reference) pixel -> EDGE.
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
    day_obs_of,
    parse_angle,
    parse_ra,
    parse_time,
    value_of,
)
from butler.translators.mef import planes_by_extver

__all__ = ["ROMAN_DQ_BITS", "RomanTranslator"]

ROMAN_DQ_BITS = {
    0: "BAD",
    1: "SAT",
    2: "CR",
    3: "NO_DATA",
    8: "BAD",
    9: "BAD",
    10: "SUSPECT",
    11: "SUSPECT",
    13: "SUSPECT",
    14: "SUSPECT",
    15: "BAD",
    16: "SUSPECT",
    17: "SUSPECT",
    19: "SUSPECT",
    20: "SUSPECT",
    21: "EDGE",
}
_DETECTOR = re.compile(r"^WFI(\d{2})$")


class RomanTranslator(Translator):
    name: ClassVar[str] = "WFI"
    layout_doc: ClassVar[str] = "Roman WFI-like L2 in FITS: SCI/ERR/DQ, ERR is sigma"
    priority: ClassVar[int] = 20

    def can_translate(self, headers: FileHeaders) -> bool:
        return str(headers.primary.get("TELESCOP", "")).strip().upper() == "ROMAN"

    def translate(self, headers: FileHeaders) -> list[RawUnit]:
        where = str(headers.path)
        cards = headers.merged(0)
        self.require(cards, ("DETECTOR", "PROGRAM", "VISIT", "EXPOSURE", "EXPTIME"), where)
        optical = cards.get("OPTICAL_ELEMENT") or cards.get("FILTER")
        if not optical:
            raise MissingHeaderKeysError(self.name, ["OPTICAL_ELEMENT (or FILTER)"], where)
        detector = _DETECTOR.match(str(cards["DETECTOR"]).strip().upper())
        if detector is None:
            raise MissingHeaderKeysError(self.name, ["DETECTOR (WFI01..WFI18)"], where)
        start = parse_time(cards)
        if start is None:
            raise MissingHeaderKeysError(self.name, ["DATE-OBS"], where)
        program, visit, number = self.require_ints(cards, ("PROGRAM", "VISIT", "EXPOSURE"), where)
        planes = planes_by_extver(headers, "SCI", ("ERR",), ("DQ",))
        if not planes:
            raise MissingHeaderKeysError(self.name, ["EXTNAME = 'SCI'"], where)
        plane = planes[0]
        exptime = float(cards["EXPTIME"])
        physical_filter = str(optical).strip().upper()
        observation = Observation(
            instrument="WFI",
            exposure=program * 10**9 + visit * 10**3 + number,
            visit=program * 10**6 + visit,
            detector=int(detector.group(1)),
            detector_name=str(cards["DETECTOR"]).strip().upper(),
            physical_filter=physical_filter,
            band=physical_filter.lower(),
            day_obs=day_obs_of(start, 0.0),
            exposure_time=exptime,
            datetime_begin=start.isot,
            datetime_end=(start + exptime * u.s).isot,
            tracking_ra=parse_ra(value_of(cards, "RA_V1", "RA")),
            tracking_dec=parse_angle(value_of(cards, "DEC_V1", "DEC"), u.deg),
            obs_id=f"{program}-{visit}-{number}",
            observation_type="science",
            target_name=str(cards.get("TARGNAME") or "") or None,
            telescope="Roman",
            translator=self.name,
        )
        layout = PixelLayout(
            image=HduRef(plane.image),
            variance=HduRef(plane.variance) if plane.variance is not None else None,
            variance_kind="stddev",
            mask=HduRef(plane.mask) if plane.mask is not None else None,
            mask_bits=ROMAN_DQ_BITS,
        )
        return [RawUnit(observation, layout)]
