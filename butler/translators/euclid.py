"""Euclid VIS-like calibrated frames.

Layout assumed (modelled on the VIS processing function's calibrated-frame product; the
keyword set is what this translator needs, so files from a real pipeline version may need a
variant): PRIMARY with ``TELESCOP = 'EUCLID'``, ``INSTRUME = 'VIS'``, ``OBS_ID`` (int),
``DITHOBS`` (dither number, 0 if absent), ``EXPTIME``, ``DATE-OBS``, ``RA``/``DEC`` of the
pointing; then three extensions per CCD quadrant-assembled detector named ``<row>-<col>.SCI``
(electrons), ``<row>-<col>.RMS`` (standard deviation) and ``<row>-<col>.FLG`` (flag bits),
rows and columns 1-6, with ``GAIN`` and ``RDNOISE`` in each ``SCI`` header.

Data ID: ``instrument`` ``VIS``; ``exposure`` (= ``visit``) ``OBS_ID * 10 + DITHOBS``;
``detector`` ``(row - 1) * 6 + (col - 1)`` (0-35, ``detector_name`` ``"row-col"``);
``physical_filter`` ``VIS`` with band ``vis``; ``day_obs`` the UTC date.

FLG bits -> planes: 0 invalid -> NO_DATA, 1 hot -> BAD, 2 cold -> BAD, 3 saturated -> SAT,
4 cosmic ray -> CR, 5 ghost -> SUSPECT, 6 overscan/prescan -> EDGE, 7 bad column -> BAD,
8 charge-injection line -> SUSPECT, 9 non-linear -> SUSPECT.
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
    as_int,
    day_obs_of,
    parse_angle,
    parse_ra,
    parse_time,
)

__all__ = ["EUCLID_VIS_FLAG_BITS", "EuclidVisTranslator"]

EUCLID_VIS_FLAG_BITS = {
    0: "NO_DATA",
    1: "BAD",
    2: "BAD",
    3: "SAT",
    4: "CR",
    5: "SUSPECT",
    6: "EDGE",
    7: "BAD",
    8: "SUSPECT",
    9: "SUSPECT",
}
_SCI = re.compile(r"^(\d)-(\d)\.SCI$")


class EuclidVisTranslator(Translator):
    name: ClassVar[str] = "VIS"
    layout_doc: ClassVar[str] = "Euclid VIS-like: <row>-<col>.SCI/.RMS/.FLG per detector"
    priority: ClassVar[int] = 20

    def can_translate(self, headers: FileHeaders) -> bool:
        primary = headers.primary
        return (
            str(primary.get("TELESCOP", "")).strip().upper() == "EUCLID"
            and str(primary.get("INSTRUME", "")).strip().upper() == "VIS"
        )

    def translate(self, headers: FileHeaders) -> list[RawUnit]:
        where = str(headers.path)
        primary = headers.merged(0)
        self.require(primary, ("OBS_ID", "EXPTIME"), where)
        start = parse_time(primary)
        if start is None:
            raise MissingHeaderKeysError(self.name, ["DATE-OBS"], where)
        obs_id = as_int(primary["OBS_ID"])
        if obs_id is None:
            raise MissingHeaderKeysError(self.name, ["OBS_ID (an integer)"], where)
        exposure = obs_id * 10 + (as_int(primary.get("DITHOBS")) or 0)
        exptime = float(primary["EXPTIME"])
        units = []
        for position in headers.pixel_hdus():
            match = _SCI.match(headers.hdu(position)["name"])
            if match is None:
                continue
            row, col = (int(g) for g in match.groups())
            label = f"{row}-{col}"
            cards = headers.merged(position)
            rms, flg = headers.find(f"{label}.RMS"), headers.find(f"{label}.FLG")
            observation = Observation(
                instrument="VIS",
                exposure=exposure,
                visit=exposure,
                detector=(row - 1) * 6 + (col - 1),
                detector_name=label,
                physical_filter="VIS",
                band="vis",
                day_obs=day_obs_of(start, 0.0),
                exposure_time=exptime,
                datetime_begin=start.isot,
                datetime_end=(start + exptime * u.s).isot,
                tracking_ra=parse_ra(primary.get("RA")),
                tracking_dec=parse_angle(primary.get("DEC"), u.deg),
                obs_id=str(primary["OBS_ID"]),
                observation_type=str(primary.get("IMAGETYP") or "science"),
                target_name=str(primary.get("OBJECT") or "") or None,
                telescope="Euclid",
                translator=self.name,
            )
            layout = PixelLayout(
                image=HduRef(position),
                variance=HduRef(rms) if rms is not None else None,
                variance_kind="stddev",
                mask=HduRef(flg) if flg is not None else None,
                mask_bits=EUCLID_VIS_FLAG_BITS,
                gain=as_float(cards.get("GAIN")),
                read_noise=as_float(cards.get("RDNOISE")),
                unit="electron",
            )
            units.append(RawUnit(observation, layout))
        if not units:
            raise MissingHeaderKeysError(
                self.name, ["EXTNAME = '<row>-<col>.SCI' (detector extensions)"], where
            )
        return units
