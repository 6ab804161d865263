"""Spitzer IRAC basic calibrated data (BCD).

Layout assumed (Spitzer Heritage Archive): the image ``*_bcd.fits`` is a single HDU in
MJy/sr with a TAN-SIP WCS; its uncertainty ``*_bunc.fits`` (a standard deviation, same
units) and mask ``*_bimsk.fits`` are *separate files* beside it, ingested with it into one
dataset. Without ``_bunc`` the variance is estimated from the pixels: the gain in electrons
per MJy/sr is ``GAIN * EXPTIME / FLUXCONV`` and the read noise, which BCD headers do not
record, is taken as 0 (Poisson noise only). Without ``_bimsk`` the mask is empty.

``_bimsk`` bits -> planes (IRAC Instrument Handbook, BCD mask): 7 muxbleed corrected ->
INTRP, 8 column pulldown corrected -> INTRP, 9 crosstalk -> SUSPECT, 10 radhit -> CR,
11 latent -> SUSPECT, 12 not flat-fielded -> SUSPECT, 13 non-linear -> SUSPECT,
14 saturated -> SAT, 15 bad or missing -> NO_DATA.

Data ID: ``instrument`` ``IRAC``; ``exposure`` (= ``visit``) ``AORKEY * 10**8 + EXPID * 10**4 +
DCENUM`` (the three numbers that name a BCD); ``detector`` the channel ``CHNLNUM`` (1-4);
``physical_filter`` ``IRAC-CH<n>`` with band ``irac<n>`` (3.6, 4.5, 5.8, 8.0 um).
"""

from __future__ import annotations

from pathlib import Path
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
    day_obs_of,
    parse_angle,
    parse_ra,
    parse_time,
    value_of,
)

__all__ = ["IRAC_MASK_BITS", "IracTranslator"]

IRAC_MASK_BITS = {
    7: "INTRP",
    8: "INTRP",
    9: "SUSPECT",
    10: "CR",
    11: "SUSPECT",
    12: "SUSPECT",
    13: "SUSPECT",
    14: "SAT",
    15: "NO_DATA",
}
_COMPANIONS = {"variance": "_bunc.fits", "mask": "_bimsk.fits"}


class IracTranslator(Translator):
    name: ClassVar[str] = "IRAC"
    layout_doc: ClassVar[str] = "Spitzer IRAC BCD + separate _bunc (sigma) and _bimsk files"
    priority: ClassVar[int] = 20

    def can_translate(self, headers: FileHeaders) -> bool:
        primary = headers.primary
        telescope = str(primary.get("TELESCOP", "")).strip().upper()
        instrument = str(primary.get("INSTRUME", "")).strip().upper()
        return telescope in ("SPITZER", "SIRTF") and instrument == "IRAC"

    def translate(self, headers: FileHeaders) -> list[RawUnit]:
        where = str(headers.path)
        cards = headers.merged(0)
        self.require(cards, ("AORKEY", "EXPID", "DCENUM", "CHNLNUM", "EXPTIME"), where)
        start = parse_time(cards, "DATE_OBS") or parse_time(cards)
        if start is None:
            raise MissingHeaderKeysError(self.name, ["DATE_OBS (or MJD_OBS)"], where)
        if not headers.pixel_hdus():
            raise MissingHeaderKeysError(self.name, ["NAXIS1", "NAXIS2"], where)
        (channel,) = self.require_ints(cards, ("CHNLNUM",), where)
        aorkey, expid, dcenum = self.require_ints(cards, ("AORKEY", "EXPID", "DCENUM"), where)
        exposure = aorkey * 10**8 + expid * 10**4 + dcenum
        exptime = float(cards["EXPTIME"])
        observation = Observation(
            instrument="IRAC",
            exposure=exposure,
            visit=exposure,
            detector=channel,
            detector_name=f"ch{channel}",
            physical_filter=f"IRAC-CH{channel}",
            band=f"irac{channel}",
            day_obs=day_obs_of(start, 0.0),
            exposure_time=exptime,
            datetime_begin=start.isot,
            datetime_end=(start + (as_float(cards.get("FRAMTIME")) or exptime) * u.s).isot,
            tracking_ra=parse_ra(value_of(cards, "RA_HDR", "CRVAL1")),
            tracking_dec=parse_angle(value_of(cards, "DEC_HDR", "CRVAL2"), u.deg),
            obs_id=f"{cards['AORKEY']}_{cards['EXPID']}_{cards['DCENUM']}",
            observation_type=str(cards.get("EXPTYPE") or "").strip() or None,
            target_name=str(cards.get("OBJECT") or "") or None,
            telescope="Spitzer",
            translator=self.name,
        )
        gain, fluxconv = as_float(cards.get("GAIN")), as_float(cards.get("FLUXCONV"))
        layout = PixelLayout(
            image=HduRef(headers.pixel_hdus()[0]),
            variance=HduRef(0, "variance") if self._has(headers.path, "variance") else None,
            variance_kind="stddev",
            mask=HduRef(0, "mask") if self._has(headers.path, "mask") else None,
            mask_bits=IRAC_MASK_BITS,
            gain=gain * exptime / fluxconv if gain and fluxconv else None,
            read_noise=0.0,
        )
        return [RawUnit(observation, layout)]

    def _has(self, path: Path, role: str) -> bool:
        return role in self.companions(path)

    def companions(self, path: Path) -> dict[str, Path]:
        if not path.name.endswith("_bcd.fits"):
            return {}
        stem = path.name[: -len("_bcd.fits")]
        found = {role: path.with_name(stem + suffix) for role, suffix in _COMPANIONS.items()}
        return {role: p for role, p in found.items() if p.exists()}

    def is_companion(self, path: Path) -> bool:
        return path.name.endswith(tuple(_COMPANIONS.values()))
