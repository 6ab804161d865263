"""LSST-like cameras (LSSTCam, LSSTComCam, LATISS and simulations of them).

Layout assumed: the butler's own LSST layout — PRIMARY with the exposure keywords, then
``IMAGE`` (with the WCS and ``BUNIT``), ``MASK`` (``int32`` bit planes named by ``MP_<NAME>``
cards) and ``VARIANCE`` extensions — or a single image HDU (a raw or a simulated frame), for
which the variance is estimated with ``GAIN`` and ``RDNOISE`` (NaN without them).

Keywords (Rubin's header conventions): ``DAYOBS`` + ``SEQNUM`` give
``exposure = DAYOBS * 100000 + SEQNUM`` (= ``visit``); ``FILTER`` is the physical filter
(``r_57``) and ``FILTBAND`` the band (else derived from the filter name); the detector is
``DETECTOR`` or, for LSSTCam science rafts, ``RAFTBAY``/``CCDSLOT`` numbered as obs_lsst does
(R01 S00 = 0 ... R43 S22 = 188); ``DATE-BEG``/``DATE-END`` (or ``DATE-OBS``), ``EXPTIME``,
``RA``/``DEC`` (degrees), ``IMGTYPE``, ``OBJECT``, ``OBSID``. ``day_obs`` is ``DAYOBS``.
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
from butler.translators.helpers import as_float, as_int, band_of, parse_angle, parse_ra, parse_time

__all__ = ["LsstTranslator", "lsstcam_detector"]

_INSTRUMENTS = ("LSSTCAM", "LSSTCOMCAM", "LATISS", "LSSTCAM-IMSIM", "LSSTCAM-LIKE", "LSST")
_RAFT = re.compile(r"^R(\d)(\d)$")
_SLOT = re.compile(r"^S(\d)(\d)$")
# LSSTCam science rafts in obs_lsst's detector order (the four corners are wavefront rafts).
_SCIENCE_RAFTS = [
    f"R{r}{c}" for r in range(5) for c in range(5) if (r, c) not in {(0, 0), (0, 4), (4, 0), (4, 4)}
]


def lsstcam_detector(raft: str, slot: str) -> int | None:
    """obs_lsst's detector number of a science-raft CCD (``R22``, ``S11`` -> 94)."""
    raft, slot = raft.strip().upper(), slot.strip().upper()
    slot_match = _SLOT.match(slot)
    if raft not in _SCIENCE_RAFTS or slot_match is None:
        return None
    row, col = (int(g) for g in slot_match.groups())
    if row > 2 or col > 2:
        return None
    return _SCIENCE_RAFTS.index(raft) * 9 + row * 3 + col


class LsstTranslator(Translator):
    name: ClassVar[str] = "LSST"
    layout_doc: ClassVar[str] = "LSST-like: IMAGE/MASK/VARIANCE extensions or a single HDU"
    priority: ClassVar[int] = 20

    def can_translate(self, headers: FileHeaders) -> bool:
        primary = headers.primary
        instrument = str(primary.get("INSTRUME", "")).strip().upper()
        telescope = str(primary.get("TELESCOP", "")).strip().upper()
        return instrument in _INSTRUMENTS or "SIMONYI" in telescope or telescope == "LSST"

    def translate(self, headers: FileHeaders) -> list[RawUnit]:
        where = str(headers.path)
        image = headers.find("IMAGE")
        pixel = headers.pixel_hdus()
        position = image if image is not None else (pixel[0] if pixel else None)
        if position is None:
            raise MissingHeaderKeysError(self.name, ["NAXIS1", "NAXIS2"], where)
        cards = headers.merged(position)
        self.require(cards, ("INSTRUME", "DAYOBS", "SEQNUM", "FILTER", "EXPTIME"), where)
        start = parse_time(cards, "DATE-BEG") or parse_time(cards)
        if start is None:
            raise MissingHeaderKeysError(self.name, ["DATE-BEG (or DATE-OBS)"], where)
        end = parse_time(cards, "DATE-END")
        detector = as_int(cards.get("DETECTOR"))
        if detector is None and cards.get("RAFTBAY") and cards.get("CCDSLOT"):
            detector = lsstcam_detector(str(cards["RAFTBAY"]), str(cards["CCDSLOT"]))
        if detector is None:
            raise MissingHeaderKeysError(self.name, ["DETECTOR (or RAFTBAY + CCDSLOT)"], where)
        day_obs, seqnum = as_int(cards["DAYOBS"]), as_int(cards["SEQNUM"])
        if day_obs is None or seqnum is None:
            raise MissingHeaderKeysError(self.name, ["DAYOBS and SEQNUM as integers"], where)
        exposure = day_obs * 100000 + seqnum
        physical_filter = str(cards["FILTER"]).strip()
        exptime = float(cards["EXPTIME"])
        observation = Observation(
            instrument=str(cards["INSTRUME"]).strip(),
            exposure=exposure,
            visit=exposure,
            detector=detector,
            detector_name=f"{cards.get('RAFTBAY', '')}_{cards.get('CCDSLOT', '')}".strip("_")
            or str(detector),
            physical_filter=physical_filter,
            band=str(cards.get("FILTBAND") or band_of(physical_filter)),
            day_obs=day_obs,
            exposure_time=exptime,
            datetime_begin=start.isot,
            datetime_end=end.isot if end is not None else (start + exptime * u.s).isot,
            tracking_ra=parse_ra(cards.get("RA")),
            tracking_dec=parse_angle(cards.get("DEC"), u.deg),
            obs_id=str(cards.get("OBSID") or exposure),
            observation_type=str(cards.get("IMGTYPE") or "").lower() or None,
            target_name=str(cards.get("OBJECT") or "") or None,
            telescope=str(cards.get("TELESCOP") or "Simonyi Survey Telescope"),
            translator=self.name,
        )
        variance, mask = headers.find("VARIANCE"), headers.find("MASK")
        layout = PixelLayout(
            image=HduRef(position),
            variance=HduRef(variance) if variance is not None else None,
            variance_kind="variance",
            mask=HduRef(mask) if mask is not None else None,
            mask_is_lsst=mask is not None,
            gain=as_float(cards.get("GAIN")),
            read_noise=as_float(cards.get("RDNOISE")),
        )
        return [RawUnit(observation, layout)]
