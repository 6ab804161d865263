"""Synthetic raw files in the header layouts of telescopes whose real files no installed
package ships (HSC, DECam, GMOS, Spitzer IRAC, Euclid VIS, Roman WFI, LSST).

Each writer renders the same star list through the instrument's own WCS, pixel scale,
units and noise, so two instruments' files of one sky position show the same stars; the
headers carry the keywords the instrument's archive files carry (see docs/images.md).
Used by the tests and by the docs/examples scripts; nothing is downloaded.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
from astropy.io import fits
from astropy.wcs import WCS

__all__ = [
    "Star",
    "decam_community_pipeline",
    "decam_raw",
    "euclid_vis",
    "gmos_reduced",
    "hsc_raw",
    "irac_bcd",
    "lsst_raw",
    "roman_wfi",
    "star_field",
    "tan_wcs",
]


@dataclass(frozen=True)
class Star:
    ra: float
    dec: float
    flux: float
    """Total flux in electrons for a 1 s exposure."""


def star_field(
    ra: float, dec: float, count: int = 25, radius: float = 0.01, seed: int = 3
) -> list[Star]:
    """``count`` stars within ``radius`` degrees of (ra, dec), the same for every seed."""
    rng = np.random.default_rng(seed)
    r = radius * np.sqrt(rng.uniform(0, 1, count))
    theta = rng.uniform(0, 2 * np.pi, count)
    return [
        Star(
            float(ra + r[i] * np.cos(theta[i]) / np.cos(np.radians(dec))),
            float(dec + r[i] * np.sin(theta[i])),
            float(10 ** rng.uniform(2.5, 4.5)),
        )
        for i in range(count)
    ]


def tan_wcs(
    ra: float, dec: float, shape: tuple[int, int], scale_arcsec: float, rotation_deg: float = 0.0
) -> WCS:
    """A TAN WCS centred on (ra, dec), ``scale_arcsec`` per pixel, north rotated by
    ``rotation_deg`` (east to the left at 0)."""
    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    wcs.wcs.crval = [ra, dec]
    wcs.wcs.crpix = [shape[1] / 2 + 0.5, shape[0] / 2 + 0.5]
    s = scale_arcsec / 3600
    c, si = np.cos(np.radians(rotation_deg)), np.sin(np.radians(rotation_deg))
    wcs.wcs.cd = [[-s * c, s * si], [s * si, s * c]]
    wcs.wcs.radesys = "ICRS"
    return wcs


def _render(
    wcs: WCS,
    shape: tuple[int, int],
    stars: Sequence[Star],
    exptime: float,
    fwhm_arcsec: float,
    scale_arcsec: float,
    sky: float,
    seed: int,
) -> npt.NDArray[np.float64]:
    """Electrons: sky + Gaussian stars + Poisson noise."""
    rng = np.random.default_rng(seed)
    image = np.full(shape, sky * exptime, dtype=np.float64)
    sigma = fwhm_arcsec / scale_arcsec / 2.355
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]]
    xs, ys = wcs.world_to_pixel_values([s.ra for s in stars], [s.dec for s in stars])
    for star, x, y in zip(stars, np.atleast_1d(xs), np.atleast_1d(ys), strict=True):
        if -5 * sigma < x < shape[1] + 5 * sigma and -5 * sigma < y < shape[0] + 5 * sigma:
            r2 = (xx - x) ** 2 + (yy - y) ** 2
            image += star.flux * exptime / (2 * np.pi * sigma**2) * np.exp(-r2 / (2 * sigma**2))
    return rng.poisson(np.clip(image, 0, None)).astype(np.float64)


def _header(cards: dict[str, object]) -> fits.Header:
    header = fits.Header()
    for key, value in cards.items():
        header[key if len(key) <= 8 else f"HIERARCH {key}"] = value
    return header


def hsc_raw(
    directory: Path,
    ra: float,
    dec: float,
    stars: Sequence[Star],
    detector: int = 17,
    shape: tuple[int, int] = (200, 160),
    exposure: int = 12340,
) -> Path:
    """An HSC raw: one CCD in the PRIMARY HDU, uint16 ADU with a bias pedestal, TAN WCS
    (0.168"/pixel), per-amplifier gains and read noise ``T_GAIN1..4``/``T_NOISE1..4``."""
    gain, noise, bias = 3.0, 4.5, 1000.0
    wcs = tan_wcs(ra, dec, shape, 0.168)
    electrons = _render(wcs, shape, stars, 30.0, 0.7, 0.168, 50.0, seed=detector)
    rng = np.random.default_rng(detector + 100)
    adu = electrons / gain + bias + rng.normal(0, noise / gain, shape)
    header = _header(
        {
            "TELESCOP": "Subaru",
            "INSTRUME": "Hyper Suprime-Cam",
            "EXP-ID": f"HSCE{exposure:08d}",
            "FRAMEID": f"HSCA{exposure * 100 + detector:08d}",
            "DET-ID": detector,
            "DATE-OBS": "2016-03-08",
            "UT-STR": "09:36:00.000",
            "UT-END": "09:36:30.000",
            "MJD-STR": 57455.4,
            "MJD-END": 57455.40035,
            "MJD": 57455.40017,
            "EXPTIME": 30.0,
            "FILTER01": "HSC-R2",
            "DATA-TYP": "OBJECT",
            "OBJECT": "SAMPLE FIELD",
            "RA2000": _hms(ra),
            "DEC2000": _dms(dec),
            "ALTITUDE": 60.0,
            "AZIMUTH": 120.0,
            "INST-PA": 0.0,
            "PROP-ID": "o16001",
            "TIMESYS": "UTC",
            "BUNIT": "ADU",
            **{f"T_GAIN{a}": gain for a in range(1, 5)},
            **{f"T_NOISE{a}": noise for a in range(1, 5)},
        }
    )
    header.update(wcs.to_header())
    path = directory / f"HSCA{exposure * 100 + detector:08d}.fits"
    hdu = fits.PrimaryHDU(np.clip(adu, 0, 65535).astype(np.uint16), header=header)
    hdu.writeto(path)
    return path


def decam_raw(
    directory: Path,
    ra: float,
    dec: float,
    stars: Sequence[Star],
    ccds: Sequence[tuple[int, str]] = ((25, "N4"), (26, "N5")),
    shape: tuple[int, int] = (120, 100),
) -> Path:
    """A DECam raw: empty PRIMARY with the exposure keywords, one extension per CCD with
    ``CCDNUM``/``DETPOS``, ``GAINA/B``, ``RDNOISEA/B`` and a TPV WCS (``PV`` terms)."""
    primary = _header(
        {
            "TELESCOP": "CTIO 4.0-m telescope",
            "INSTRUME": "DECam",
            "OBSID": "ct4m20130901t012345",
            "EXPNUM": 229388,
            "DATE-OBS": "2013-09-01T01:23:45.123",
            "MJD-OBS": 56536.0582,
            "EXPTIME": 90.0,
            "FILTER": "r DECam SDSS c0002 6415.0 1480.0",
            "OBSTYPE": "object",
            "OBJECT": "SAMPLE FIELD",
            "TELRA": _hms(ra),
            "TELDEC": _dms(dec),
            "TELEQUIN": 2000.0,
            "RADESYS": "ICRS",
            "ZD": 30.0,
            "HA": "00:00:00",
            "AZ": 10.0,
            "PROPID": "2012B-0001",
            "TIMESYS": "UTC",
            "DARKTIME": 91.0,
            "OBS-LAT": -30.16606,
            "OBS-LONG": 70.81489,
            "OBS-ELEV": 2215.0,
        }
    )
    hdus: list[fits.PrimaryHDU | fits.ImageHDU] = [fits.PrimaryHDU(header=primary)]
    for n, (ccdnum, detpos) in enumerate(ccds):
        wcs = tan_wcs(ra + (n - 0.5) * 0.0075, dec, shape, 0.263)
        electrons = _render(wcs, shape, stars, 90.0, 1.0, 0.263, 20.0, seed=ccdnum)
        header = wcs.to_header()
        header["CTYPE1"], header["CTYPE2"] = "RA---TPV", "DEC--TPV"
        # A small TPV distortion, so readers must apply it to get positions right.
        for axis in (1, 2):
            header[f"PV{axis}_0"] = 0.0
            header[f"PV{axis}_1"] = 1.0
            header[f"PV{axis}_2"] = 0.0
            header[f"PV{axis}_4"] = 5.0
        header.update(
            {
                "CCDNUM": ccdnum,
                "DETPOS": detpos,
                "GAINA": 4.0,
                "GAINB": 4.2,
                "RDNOISEA": 6.0,
                "RDNOISEB": 6.2,
                "EXTNAME": detpos,
                "BUNIT": "adu",
            }
        )
        hdus.append(fits.ImageHDU((electrons / 4.1).astype(np.float32), header=header))
    path = directory / "c4d_130901_012345_ori.fits"
    fits.HDUList(hdus).writeto(path)
    return path


def decam_community_pipeline(
    directory: Path, ra: float, dec: float, stars: Sequence[Star], shape: tuple[int, int] = (80, 60)
) -> tuple[Path, Path, Path]:
    """DECam community-pipeline products for two CCDs: ``_ooi_`` image (electrons/s),
    ``_oow_`` weight (inverse variance) and ``_ood_`` data-quality codes, one file each."""
    raw = decam_raw(directory, ra, dec, stars, shape=shape)
    paths = []
    with fits.open(raw) as hdul:
        primary = hdul[0].header.copy()
        primary["PRODTYPE"] = "image"
        for kind in ("ooi", "oow", "ood"):
            out: list[fits.PrimaryHDU | fits.ImageHDU] = [fits.PrimaryHDU(header=primary)]
            for ext in hdul[1:]:
                image = ext.data.astype(np.float32) * 4.1 / 90.0
                if kind == "ooi":
                    data: npt.NDArray[np.generic] = image
                elif kind == "oow":
                    data = (1.0 / np.clip(image / 90.0 + 0.01, 1e-3, None)).astype(np.float32)
                    data[0, :] = 0.0  # no data in the first row: weight 0
                else:
                    data = np.zeros(image.shape, dtype=np.int16)
                    data[0, :] = 1  # bad
                    data[5, 5] = 2  # saturated
                    data[6, 6] = 5  # cosmic ray
                    data[7, 7] = 9  # a code the translator does not name
                out.append(fits.ImageHDU(data, header=ext.header.copy()))
            path = directory / f"c4d_130901_012345_{kind}_r_v1.fits"
            fits.HDUList(out).writeto(path)
            paths.append(path)
    raw.unlink()
    return paths[0], paths[1], paths[2]


def gmos_reduced(
    directory: Path, ra: float, dec: float, stars: Sequence[Star], shape: tuple[int, int] = (64, 48)
) -> Path:
    """A DRAGONS-reduced GMOS-S image: ``SCI``/``VAR``/``DQ`` for three amplifiers."""
    primary = _header(
        {
            "TELESCOP": "Gemini-South",
            "INSTRUME": "GMOS-S",
            "ORIGNAME": "S20190312S0042.fits",
            "DATALAB": "GS-2019A-Q-1-2-042",
            "OBSID": "GS-2019A-Q-1-2",
            "DATE-OBS": "2019-03-12",
            "TIME-OBS": "03:04:05.6",
            "EXPTIME": 60.0,
            "FILTER1": "open1-6",
            "FILTER2": "r_G0326",
            "OBSTYPE": "OBJECT",
            "OBJECT": "SAMPLE FIELD",
            "RA": ra,
            "DEC": dec,
        }
    )
    hdus: list[fits.PrimaryHDU | fits.ImageHDU] = [fits.PrimaryHDU(header=primary)]
    for amp in (1, 2, 3):
        wcs = tan_wcs(ra + (amp - 2) * 48 * 0.08 / 3600, dec, shape, 0.08)
        electrons = _render(wcs, shape, stars, 60.0, 0.6, 0.08, 30.0, seed=amp)
        header = wcs.to_header()
        header.update(
            {
                "EXTVER": amp,
                "GAIN": 1.8,
                "RDNOISE": 4.0,
                "CCDNAME": f"amp{amp}",
                "BUNIT": "electron",
            }
        )
        variance = electrons + 16.0
        dq = np.zeros(shape, dtype=np.uint16)
        dq[:, 0] = 16  # no data
        dq[10, 10] = 4  # saturated
        for name, data in (("SCI", electrons), ("VAR", variance), ("DQ", dq)):
            h = header.copy()
            h["EXTNAME"] = name
            hdus.append(
                fits.ImageHDU(
                    np.asarray(data, dtype=np.float32 if name != "DQ" else np.uint16), header=h
                )
            )
    path = directory / "S20190312S0042_reduced.fits"
    fits.HDUList(hdus).writeto(path)
    return path


def irac_bcd(
    directory: Path, stars: Sequence[Star] | None = None, with_companions: bool = True
) -> Path:
    """A Spitzer IRAC BCD with the *real* header of astropy's ``irac_sip.hdr`` (a channel-1
    BCD of 2003, TAN-SIP WCS), synthetic pixels in MJy/sr, and ``_bunc``/``_bimsk`` files."""
    from butler.sample_data import astropy_file

    header = fits.Header.fromstring(astropy_file("wcs/tests/data/irac_sip.hdr").read_text())
    shape = (int(header["NAXIS2"]), int(header["NAXIS1"]))
    wcs = WCS(header)
    centre = wcs.pixel_to_world_values(shape[1] / 2, shape[0] / 2)
    stars = (
        stars if stars is not None else star_field(float(centre[0]), float(centre[1]), radius=0.04)
    )
    electrons = _render(wcs.celestial, shape, stars, 26.8, 1.7, 1.2, 5.0, seed=11)
    to_mjysr = float(header["FLUXCONV"]) / float(header["GAIN"]) / float(header["EXPTIME"])
    data = (electrons * to_mjysr).astype(np.float32)
    stem = f"SPITZER_I1_{header['AORKEY']}_{header['EXPID']:04d}_{header['DCENUM']:04d}_1"
    path = directory / f"{stem}_bcd.fits"
    fits.PrimaryHDU(data, header=header).writeto(path)
    if with_companions:
        unc = (np.sqrt(electrons + 100.0) * to_mjysr).astype(np.float32)
        fits.PrimaryHDU(unc, header=header).writeto(directory / f"{stem}_bunc.fits")
        mask = np.zeros(shape, dtype=np.int16)
        mask[3, 4] = 1 << 10  # radhit
        mask[5, 6] = 1 << 14  # saturated
        mask[7, 8] = 1 << 2  # a bit the handbook leaves unnamed
        fits.PrimaryHDU(mask, header=header).writeto(directory / f"{stem}_bimsk.fits")
    return path


def euclid_vis(
    directory: Path,
    ra: float,
    dec: float,
    stars: Sequence[Star],
    detectors: Sequence[str] = ("3-3", "3-4"),
    shape: tuple[int, int] = (100, 90),
) -> Path:
    """A Euclid VIS-like calibrated frame: ``<row>-<col>.SCI``/``.RMS``/``.FLG`` per detector."""
    primary = _header(
        {
            "TELESCOP": "EUCLID",
            "INSTRUME": "VIS",
            "OBS_ID": 2689,
            "DITHOBS": 1,
            "EXPTIME": 566.0,
            "DATE-OBS": "2023-09-15T10:11:12.5",
            "RA": ra,
            "DEC": dec,
            "OBJECT": "SAMPLE FIELD",
        }
    )
    hdus: list[fits.PrimaryHDU | fits.ImageHDU] = [fits.PrimaryHDU(header=primary)]
    for n, label in enumerate(detectors):
        wcs = tan_wcs(ra + (n - 0.5) * 90 * 0.1 / 3600, dec, shape, 0.1, rotation_deg=0.5)
        electrons = _render(wcs, shape, stars, 566.0, 0.18, 0.1, 0.5, seed=40 + n)
        header = wcs.to_header()
        header.update({"GAIN": 3.5, "RDNOISE": 4.5})
        flags = np.zeros(shape, dtype=np.int32)
        flags[0, :] = 1 << 6  # prescan edge
        flags[9, 9] = 1 << 4  # cosmic
        for suffix, data in (
            ("SCI", electrons.astype(np.float32)),
            ("RMS", np.sqrt(electrons + 4.5**2).astype(np.float32)),
            ("FLG", flags),
        ):
            h = header.copy()
            h["EXTNAME"] = f"{label}.{suffix}"
            hdus.append(fits.ImageHDU(data, header=h))
    path = directory / "EUC_VIS_SWL-DET-002689-01-1-0000000__20230915T101112.fits"
    fits.HDUList(hdus).writeto(path)
    return path


def roman_wfi(
    directory: Path, ra: float, dec: float, stars: Sequence[Star], shape: tuple[int, int] = (96, 96)
) -> Path:
    """A Roman WFI-like L2 image in FITS: ``SCI`` (DN/s), ``ERR`` (sigma), ``DQ`` bits."""
    primary = _header(
        {
            "TELESCOP": "ROMAN",
            "INSTRUME": "WFI",
            "DETECTOR": "WFI07",
            "OPTICAL_ELEMENT": "F158",
            "PROGRAM": 1,
            "VISIT": 12,
            "EXPOSURE": 3,
            "EXPTIME": 139.8,
            "DATE-OBS": "2027-06-01T00:00:00",
            "RA_V1": ra,
            "DEC_V1": dec,
        }
    )
    wcs = tan_wcs(ra, dec, shape, 0.11, rotation_deg=30.0)
    electrons = _render(wcs, shape, stars, 139.8, 0.15, 0.11, 1.0, seed=77)
    rate = electrons / 139.8 / 1.8
    dq = np.zeros(shape, dtype=np.uint32)
    dq[2, 3] = 1 << 2  # jump
    dq[4, 5] = 1 << 1  # saturated
    header = wcs.to_header()
    header["BUNIT"] = "DN/s"
    hdus = [
        fits.PrimaryHDU(header=primary),
        fits.ImageHDU(rate.astype(np.float32), header=header, name="SCI"),
        fits.ImageHDU((np.sqrt(electrons + 25) / 139.8 / 1.8).astype(np.float32), name="ERR"),
        fits.ImageHDU(dq, name="DQ"),
    ]
    path = directory / "r0000101001012003001_0001_wfi07_cal.fits"
    fits.HDUList(hdus).writeto(path)
    return path


def lsst_raw(
    directory: Path,
    ra: float,
    dec: float,
    stars: Sequence[Star],
    shape: tuple[int, int] = (120, 120),
) -> Path:
    """An LSST-like single-HDU frame with Rubin's header keywords (``DAYOBS``/``SEQNUM``,
    ``RAFTBAY``/``CCDSLOT``, ``FILTER``/``FILTBAND``, ``GAIN``/``RDNOISE``)."""
    wcs = tan_wcs(ra, dec, shape, 0.2, rotation_deg=-20.0)
    electrons = _render(wcs, shape, stars, 30.0, 0.7, 0.2, 40.0, seed=5)
    header = _header(
        {
            "TELESCOP": "Simonyi Survey Telescope",
            "INSTRUME": "LSSTCam",
            "DAYOBS": 20251201,
            "SEQNUM": 42,
            "OBSID": "MC_O_20251201_000042",
            "RAFTBAY": "R22",
            "CCDSLOT": "S11",
            "FILTER": "r_57",
            "FILTBAND": "r",
            "EXPTIME": 30.0,
            "DATE-BEG": "2025-12-02T03:04:05.000",
            "DATE-END": "2025-12-02T03:04:35.000",
            "RA": ra,
            "DEC": dec,
            "IMGTYPE": "OBJECT",
            "OBJECT": "SAMPLE FIELD",
            "GAIN": 1.6,
            "RDNOISE": 6.0,
            "BUNIT": "adu",
        }
    )
    header.update(wcs.to_header())
    path = directory / "MC_O_20251201_000042_R22_S11.fits"
    fits.PrimaryHDU((electrons / 1.6).astype(np.float32), header=header).writeto(path)
    return path


def _hms(ra: float) -> str:
    from astropy.coordinates import Angle

    return str(Angle(ra, unit="deg").to_string(unit="hour", sep=":", precision=3, pad=True))


def _dms(dec: float) -> str:
    from astropy.coordinates import Angle

    return str(
        Angle(dec, unit="deg").to_string(
            unit="deg", sep=":", precision=2, alwayssign=True, pad=True
        )
    )
