"""Instruments astro-metadata-translator knows: HSC, DECam, Suprime-Cam, MegaPrime, SDSS.

The observation facts come from :class:`astro_metadata_translator.ObservationInfo` (the
LSST project's own header translators); this module adds only what that package does not
describe: where the planes are and how to read them.

Layouts assumed:

- **Raw frames** (all five): one detector per HDU with pixels (HSC and Suprime-Cam raws have
  it in the PRIMARY HDU; DECam and MegaPrime raws have one extension per CCD). No variance
  and no mask are stored: the variance is estimated from the pixels with the gain and read
  noise of the header (HSC ``T_GAIN1..4``/``T_NOISE1..4``, DECam ``GAINA/B``/``RDNOISEA/B``,
  else ``GAIN``/``RDNOISE``), NaN where they are absent; the mask is empty.
- **DECam community-pipeline products** (``*_ooi_*`` image, ``*_oow_*`` weight, ``*_ood_*``
  data-quality files, one extension per CCD in each): the weight is an inverse variance, the
  ``dqmask`` holds codes (not bits): 1 bad pixel -> BAD, 2 saturated -> SAT, 3 interpolated
  -> INTRP, 4 low weight -> SUSPECT, 5 cosmic ray -> CR, 6 low weight -> SUSPECT,
  7 transient -> SUSPECT, 8 streak -> SUSPECT.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, ClassVar

from astropy.utils.exceptions import AstropyWarning

from butler.translators.base import (
    FileHeaders,
    HduRef,
    MissingHeaderKeysError,
    Observation,
    PixelLayout,
    RawUnit,
    Translator,
)
from butler.translators.helpers import as_float, band_of

__all__ = ["AstroMetadataTranslator"]

SUPPORTED = ("HSC", "DECam", "SuprimeCam", "MegaPrime", "SDSS")
_DECAM_CP_CODES = {
    1: "BAD",
    2: "SAT",
    3: "INTRP",
    4: "SUSPECT",
    5: "CR",
    6: "SUSPECT",
    7: "SUSPECT",
    8: "SUSPECT",
}
# Facts ObservationInfo must provide for a usable data ID.
_REQUIRED = ("instrument", "exposure_id", "detector_num", "physical_filter", "observing_day")


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """astro-metadata-translator logs a warning per optional property it cannot compute
    (humidity, focus...); those are not ours to act on, so they are hidden here."""
    logger = logging.getLogger("astro_metadata_translator")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", AstropyWarning)
            yield
    finally:
        logger.setLevel(level)


def _amt_name(cards: Mapping[str, Any], filename: str) -> str | None:
    from astro_metadata_translator import MetadataTranslator

    with _quiet():
        try:
            cls = MetadataTranslator.determine_translator(cards, filename=filename)
        except ValueError:
            return None
    name = getattr(cls, "name", None)
    return name if name in SUPPORTED else None


def _notes(observation: Observation) -> tuple[str, ...]:
    """Warnings for the facts astro-metadata-translator could not determine."""
    facts = {
        "exposure_time": observation.exposure_time,
        "datetime_begin": observation.datetime_begin,
        "tracking_ra/tracking_dec": observation.tracking_ra,
    }
    return tuple(
        f"{name}: astro-metadata-translator could not determine it from the header"
        for name, value in facts.items()
        if value is None
    )


def _mean(cards: Mapping[str, Any], *keys: str) -> float | None:
    values = [v for v in (as_float(cards.get(k)) for k in keys) if v is not None and v > 0]
    return sum(values) / len(values) if values else None


def _gain_and_noise(cards: Mapping[str, Any]) -> tuple[float | None, float | None]:
    gain = _mean(cards, "T_GAIN1", "T_GAIN2", "T_GAIN3", "T_GAIN4") or _mean(
        cards, "GAINA", "GAINB"
    )
    noise = _mean(cards, "T_NOISE1", "T_NOISE2", "T_NOISE3", "T_NOISE4") or _mean(
        cards, "RDNOISEA", "RDNOISEB"
    )
    return gain or _mean(cards, "GAIN"), noise or _mean(cards, "RDNOISE", "READNOIS")


class AstroMetadataTranslator(Translator):
    """Delegates to astro-metadata-translator for the instruments it supports."""

    name: ClassVar[str] = "astro-metadata-translator"
    layout_doc: ClassVar[str] = (
        "HSC, DECam, SuprimeCam, MegaPrime, SDSS via astro-metadata-translator: one detector "
        "per pixel HDU; variance estimated from gain/read noise; DECam CP ooi/oow/ood "
        "files give inverse variance and dqmask codes"
    )
    priority: ClassVar[int] = 10

    def can_translate(self, headers: FileHeaders) -> bool:
        pixel = headers.pixel_hdus()
        first = pixel[0] if pixel else 0
        return _amt_name(headers.merged(first), str(headers.path)) is not None

    def translate(self, headers: FileHeaders) -> list[RawUnit]:
        from astro_metadata_translator import MetadataTranslator, ObservationInfo

        pixel = headers.pixel_hdus()
        if not pixel:
            raise MissingHeaderKeysError(self.name, ["NAXIS1", "NAXIS2"], str(headers.path))
        units = []
        cp = "_ooi_" in headers.path.name
        for position in pixel:
            cards = headers.merged(position)
            where = f"{headers.path}: HDU {position}"
            with _quiet():
                cls = MetadataTranslator.determine_translator(cards, filename=str(headers.path))
                info = ObservationInfo(
                    cards, translator_class=cls, pedantic=False, filename=str(headers.path)
                )
            missing = [p for p in _REQUIRED if getattr(info, p, None) is None]
            if missing:
                raise MissingHeaderKeysError(
                    f"{cls.name} (astro-metadata-translator)",
                    [f"(the keys behind ObservationInfo.{p})" for p in missing],
                    where,
                )
            observation = self._observation(info, str(cls.name))
            units.append(
                RawUnit(observation, self._layout(cards, position, cp), _notes(observation))
            )
        return units

    def _observation(self, info: Any, translator: str) -> Observation:
        radec = info.tracking_radec
        begin, end = info.datetime_begin, info.datetime_end
        physical_filter = str(info.physical_filter)
        # ObservationInfo already converts units (its translators know each instrument's
        # keywords); a property it cannot compute is None, and stays None here.
        return Observation(
            instrument=str(info.instrument),
            exposure=int(info.exposure_id),
            visit=int(info.visit_id) if info.visit_id is not None else int(info.exposure_id),
            detector=int(info.detector_num),
            detector_name=str(info.detector_unique_name or info.detector_name or ""),
            physical_filter=physical_filter,
            band=band_of(physical_filter),
            day_obs=int(info.observing_day),
            exposure_time=float(info.exposure_time.to_value("s"))
            if info.exposure_time is not None
            else None,
            datetime_begin=begin.utc.isot if begin is not None else None,
            datetime_end=end.utc.isot if end is not None else None,
            tracking_ra=float(radec.icrs.ra.deg) if radec is not None else None,
            tracking_dec=float(radec.icrs.dec.deg) if radec is not None else None,
            obs_id=str(info.observation_id) if info.observation_id else None,
            observation_type=str(info.observation_type) if info.observation_type else None,
            target_name=str(info.object) if info.object else None,
            telescope=str(info.telescope) if info.telescope else None,
            translator=f"{translator} (astro-metadata-translator)",
        )

    def _layout(self, cards: Mapping[str, Any], position: int, cp: bool) -> PixelLayout:
        if cp:
            return PixelLayout(
                image=HduRef(position),
                variance=HduRef(position, "variance"),
                variance_kind="inverse_variance",
                mask=HduRef(position, "mask"),
                mask_values=_DECAM_CP_CODES,
            )
        gain, noise = _gain_and_noise(cards)
        return PixelLayout(image=HduRef(position), gain=gain, read_noise=noise)

    def companions(self, path: Path) -> dict[str, Path]:
        if "_ooi_" not in path.name:
            return {}
        found = {
            "variance": path.with_name(path.name.replace("_ooi_", "_oow_")),
            "mask": path.with_name(path.name.replace("_ooi_", "_ood_")),
        }
        return {role: p for role, p in found.items() if p.exists()}

    def is_companion(self, path: Path) -> bool:
        return "_oow_" in path.name or "_ood_" in path.name
