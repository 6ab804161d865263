"""Hubble Space Telescope: ACS, WFC3, WFPC2, STIS, NICMOS imaging files.

Layout assumed (the HST calibration pipelines' ``_raw``/``_flt``/``_flc``/``_c0m`` files):
PRIMARY with the exposure keywords, then ``SCI`` / ``ERR`` / ``DQ`` extensions that share an
EXTVER per chip. ``ERR`` is a standard deviation (squared into the variance); raw files carry
empty (``NAXIS = 0``) ``ERR``/``DQ`` extensions, and then the variance is estimated from the
pixels with ``CCDGAIN``/``ATODGAIN`` and the ``READNSE*`` read noise (NaN without them) and the
mask is empty.

Data ID: ``instrument`` is ``INSTRUME`` (``ACS``, ``WFC3``...); ``exposure`` (= ``visit``)
is the 9-character ``ROOTNAME`` read as a base-36 number (unique, and reversible with
``numpy.base_repr(exposure, 36)``); ``detector`` is ``CCDCHIP`` (ACS/WFC3), ``DETECTOR`` of the
extension (WFPC2 chips 1-4) or else the EXTVER; ``physical_filter`` is the filter in use
(``FILTER``, or the non-CLEAR one of ``FILTER1``/``FILTER2``/``FILTNAM1``/``FILTNAM2``) and is
also the band. ``day_obs`` is the UTC date (a space telescope has no nights).

DQ bits (ACS/WFC3 data handbooks) -> planes: 1 Reed-Solomon error -> NO_DATA, 2 fill -> NO_DATA,
4 bad detector pixel -> BAD, 8 masked by aperture -> EDGE, 16 hot -> BAD, 32 CTE tail ->
SUSPECT, 64 warm -> SUSPECT, 128 bad column -> BAD, 256 full-well saturation -> SAT,
512 bad flat -> BAD, 1024 charge trap -> SUSPECT, 2048 A-to-D saturation -> SAT,
4096 and 8192 cosmic ray -> CR, 16384 ghost/crosstalk -> SUSPECT.
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
from butler.translators.helpers import as_float, as_int, day_obs_of, parse_angle, parse_time
from butler.translators.mef import PlaneSet, planes_by_extver

__all__ = ["HST_DQ_BITS", "HST_NAMED_DETECTORS", "HstTranslator"]

HST_INSTRUMENTS = frozenset({"ACS", "WFC3", "WFPC2", "STIS", "NICMOS", "WFPC", "FOC"})
HST_DQ_BITS: dict[int, str] = {
    0: "NO_DATA",
    1: "NO_DATA",
    2: "BAD",
    3: "EDGE",
    4: "BAD",
    5: "SUSPECT",
    6: "SUSPECT",
    7: "BAD",
    8: "SAT",
    9: "BAD",
    10: "SUSPECT",
    11: "SAT",
    12: "CR",
    13: "CR",
    14: "SUSPECT",
}


# Instruments whose DETECTOR keyword names the (single) detector of an exposure rather than
# numbering chips: the name's number, so STIS CCD and MAMA data never share a detector ID.
HST_NAMED_DETECTORS: dict[tuple[str, str], int] = {
    ("STIS", "CCD"): 1,
    ("STIS", "FUV-MAMA"): 2,
    ("STIS", "NUV-MAMA"): 3,
}


def _filter(cards: dict[str, Any]) -> str | None:
    """The elements in the beam: the non-CLEAR ones of ``FILTER``, ``FILTER1/2``,
    ``FILTNAM1/2`` joined with ``+`` (ACS ``F606W+POL0V``), else ``OPT_ELEM`` (STIS)."""
    names: list[str] = []
    for key in ("FILTER", "FILTER1", "FILTER2", "FILTNAM1", "FILTNAM2", "OPT_ELEM"):
        value = cards.get(key)
        if not (isinstance(value, str) and value.strip()) or value.upper().startswith("CLEAR"):
            continue
        if key != "OPT_ELEM" or not names:  # a grating only when no filter is named
            names.append(value.strip())
    return "+".join(dict.fromkeys(names)) or None


def _detector(cards: dict[str, Any], ver: int) -> int:
    """``CCDCHIP`` (ACS/WFC3), a numeric ``DETECTOR`` (WFPC2 chips 1-4), a named one
    (:data:`HST_NAMED_DETECTORS`), else the EXTVER."""
    number = as_int(cards.get("CCDCHIP")) or as_int(cards.get("DETECTOR"))
    if number is not None:
        return number
    key = (str(cards.get("INSTRUME", "")).strip(), str(cards.get("DETECTOR", "")).strip())
    return HST_NAMED_DETECTORS.get(key, ver)


def _mjd(value: Any) -> Time | None:
    number = as_float(value)
    return Time(number, format="mjd", scale="utc") if number else None


class HstTranslator(Translator):
    name: ClassVar[str] = "HST"
    layout_doc: ClassVar[str] = (
        "HST SCI/ERR/DQ by EXTVER; ERR is sigma; DQ bits mapped; several SCI of one detector "
        "(STIS CR-split, MULTIACCUM) are readouts of one exposure"
    )
    priority: ClassVar[int] = 20

    def can_translate(self, headers: FileHeaders) -> bool:
        primary = headers.primary
        telescope = str(primary.get("TELESCOP", "")).strip().upper()
        instrument = str(primary.get("INSTRUME", "")).strip().upper()
        return telescope == "HST" or (not telescope and instrument in HST_INSTRUMENTS)

    def translate(self, headers: FileHeaders) -> list[RawUnit]:
        where = str(headers.path)
        planes = planes_by_extver(headers, "SCI", ("ERR",), ("DQ",))
        if not planes:
            raise MissingHeaderKeysError(self.name, ["EXTNAME = 'SCI' (an image extension)"], where)
        # SCI extensions of one detector are readouts of one exposure (STIS CR-split,
        # NICMOS/WFC3-IR MULTIACCUM), not detectors: one unit per detector, its first
        # readout the image plane, the others kept in the stored file.
        by_detector: dict[int, list[PlaneSet]] = {}
        for plane in planes:
            detector = _detector(headers.merged(plane.image), plane.ver)
            by_detector.setdefault(detector, []).append(plane)
        return [
            self._unit(headers, detector, readouts) for detector, readouts in by_detector.items()
        ]

    def _unit(self, headers: FileHeaders, detector: int, readouts: list[PlaneSet]) -> RawUnit:
        where = str(headers.path)
        plane = readouts[0]
        cards = headers.merged(plane.image)
        notes: list[str] = []
        self.require(cards, ("INSTRUME", "ROOTNAME", "EXPTIME"), f"{where}: HDU {plane.image}")
        start = _mjd(cards.get("TEXPSTRT")) if len(readouts) > 1 else None
        start = start or parse_time(cards)
        if start is None:
            raise MissingHeaderKeysError(self.name, ["DATE-OBS (or EXPSTART)"], where)
        physical_filter = _filter(cards)
        if physical_filter is None:
            raise MissingHeaderKeysError(self.name, ["FILTER (or FILTER1/FILTNAM1)"], where)
        rootname = str(cards["ROOTNAME"]).strip().lower()
        try:
            exposure = int(rootname, 36)
        except ValueError:
            raise MissingHeaderKeysError(
                self.name, [f"ROOTNAME (alphanumeric; got {rootname!r})"], where
            ) from None
        exptime, end = self._duration(headers, readouts, start, notes)
        ra = parse_angle(cards.get("RA_TARG"), u.deg)
        dec = parse_angle(cards.get("DEC_TARG"), u.deg)
        if ra is None or dec is None:
            notes.append("tracking_ra/tracking_dec: no RA_TARG/DEC_TARG in the header")
        observation = Observation(
            instrument=str(cards["INSTRUME"]).strip(),
            exposure=exposure,
            visit=exposure,
            detector=detector,
            detector_name=str(cards.get("DETECTOR") or detector).strip(),
            physical_filter=physical_filter,
            band=physical_filter.lower(),
            day_obs=day_obs_of(start, 0.0),
            exposure_time=exptime,
            datetime_begin=start.isot,
            datetime_end=end.isot,
            tracking_ra=ra if dec is not None else None,
            tracking_dec=dec if ra is not None else None,
            obs_id=rootname,
            observation_type=str(cards.get("OBSTYPE") or cards.get("IMAGETYP") or "") or None,
            target_name=str(cards.get("TARGNAME") or "") or None,
            telescope="HST",
            translator=self.name,
        )
        noise = [as_float(cards.get(f"READNSE{a}")) for a in "ABCD"]
        noise_values = [n for n in noise if n]
        layout = PixelLayout(
            image=HduRef(plane.image),
            variance=HduRef(plane.variance) if plane.variance is not None else None,
            variance_kind="stddev",
            mask=HduRef(plane.mask) if plane.mask is not None else None,
            mask_bits=HST_DQ_BITS,
            gain=as_float(cards.get("CCDGAIN")) or as_float(cards.get("ATODGAIN")),
            read_noise=sum(noise_values) / len(noise_values) if noise_values else None,
        )
        return RawUnit(observation, layout, tuple(notes))

    def _duration(
        self, headers: FileHeaders, readouts: list[PlaneSet], start: Time, notes: list[str]
    ) -> tuple[float, Time]:
        """Exposure time (s) and end of the whole exposure. One readout: ``EXPTIME`` and
        ``EXPEND``. Several: ``TEXPTIME``/``TEXPEND`` of the primary (the exposure's total,
        CR-split readouts included), else the sum of the readouts' ``EXPTIME`` and the last
        ``EXPEND``; a note says the image plane is the first readout."""
        first = headers.merged(readouts[0].image)
        last = headers.merged(readouts[-1].image)
        if len(readouts) == 1:
            exptime = float(first["EXPTIME"])
        else:
            total = as_float(first.get("TEXPTIME"))
            each = [as_float(headers.merged(p.image).get("EXPTIME")) or 0.0 for p in readouts]
            exptime = total if total is not None else sum(each)
            extensions = ", ".join(str(p.ver) for p in readouts)
            notes.append(
                f"readouts: SCI extensions {extensions} are {len(readouts)} readouts of one "
                f"exposure (CR-split/MULTIACCUM; EXPTIME {each[0]:g} s each, exposure total "
                f"{exptime:g} s); the image plane is readout {readouts[0].ver}, the others "
                "stay in the stored file"
            )
        end = (_mjd(first.get("TEXPEND")) if len(readouts) > 1 else None) or _mjd(
            last.get("EXPEND")
        )
        return exptime, end if end is not None else start + exptime * u.s
