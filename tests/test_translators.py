"""Header translators: real archive headers and synthetic files in each instrument's layout
become the right data IDs, dimension facts and plane layouts; bad headers get errors that
name the missing keys."""

from __future__ import annotations

from importlib.metadata import EntryPoint
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
from astropy.io import fits
from astropy.time import Time
from real_data import dss_fits, hst_wfpc2

from butler import sample_raws
from butler.ingest.headers import read_file_headers
from butler.ingest.plan import plan_storage
from butler.ingest.records import dimension_records
from butler.sample_data import astropy_file
from butler.translators import (
    FileHeaders,
    HduRef,
    MissingHeaderKeysError,
    Observation,
    PixelLayout,
    RawUnit,
    Translator,
    TranslatorRegistry,
    UnknownInstrumentError,
    choose_translator,
)
from butler.translators import registry as registry_module
from butler.translators.helpers import band_of, day_obs_of, parse_time
from butler.translators.lsst import lsstcam_detector

RA, DEC = 150.0, 2.2


@pytest.fixture(scope="module")
def registry() -> TranslatorRegistry:
    return TranslatorRegistry()


@pytest.fixture(scope="module")
def stars() -> list[sample_raws.Star]:
    return sample_raws.star_field(RA, DEC)


def translate(registry: TranslatorRegistry, path: Path) -> tuple[Translator, list[RawUnit]]:
    headers = read_file_headers(path)
    translator = choose_translator(registry, headers)
    return translator, translator.translate(headers)


# ---------------------------------------------------------------------------------------
# Real archive files


def test_real_hst_wfpc2(registry: TranslatorRegistry) -> None:
    translator, units = translate(registry, hst_wfpc2())
    assert translator.name == "HST"
    assert [u.observation.detector for u in units] == [1, 2, 3, 4]
    obs = units[0].observation
    assert obs.instrument == "WFPC2"
    assert obs.exposure == int("u2eq0201t", 36)
    assert np.base_repr(obs.exposure, 36).lower() == "u2eq0201t"
    assert (obs.physical_filter, obs.band) == ("F673N", "f673n")
    assert obs.day_obs == 19940519  # DATE-OBS = '19/05/94' (dd/mm/yy), space: UTC date
    assert obs.datetime_begin == "1994-05-19T15:41:16.000"
    assert obs.exposure_time == pytest.approx(0.23)
    # WFPC2 c0h files have no ERR/DQ: variance estimated with ATODGAIN = 7.
    assert units[2].layout == PixelLayout(
        image=HduRef(3), variance_kind="stddev", mask_bits=units[2].layout.mask_bits, gain=7.0
    )


def test_real_hst_acs_flt(registry: TranslatorRegistry) -> None:
    path = astropy_file("wcs/tests/data/j94f05bgq_flt.fits")
    translator, units = translate(registry, path)
    assert translator.name == "HST"
    # Two WFC chips: SCI,1 is CCDCHIP 2 and SCI,2 is CCDCHIP 1.
    assert [(u.observation.detector, u.layout.image.hdu) for u in units] == [(2, 1), (1, 4)]
    obs = units[0].observation
    assert (obs.instrument, obs.physical_filter, obs.target_name) == ("ACS", "F606W", "NGC104")
    assert (obs.tracking_ra, obs.tracking_dec) == pytest.approx((5.655, -72.07055555556))
    # The end is the header's EXPEND (MJD 53436.29035...), not DATE-OBS + EXPTIME: HST
    # records when the shutter closed.
    expend = fits.getval(path, "EXPEND", 0)
    assert obs.datetime_end == Time(expend, format="mjd", scale="utc").isot
    assert obs.datetime_end.startswith("2005-03-07T06:58:07")
    assert units[0].layout.read_noise == pytest.approx(4.97, abs=0.01)


def test_real_ground_based_files_use_the_generic_translator(
    registry: TranslatorRegistry, tmp_path: Path
) -> None:
    translator, units = translate(registry, dss_fits(tmp_path))
    assert translator.name == "generic"
    obs = units[0].observation
    assert obs.instrument == "UK 48-inch Schmidt"  # no INSTRUME: TELESCOP
    assert obs.exposure == 19760311173800  # start time as a number, DATE-OBS 11/03/76
    assert obs.exposure_time == 70.0 * 60  # EXPOSURE = 70.0 / Exposure time minutes
    # OBJCTRA = '14 29 56.000' is hours: (14 + 29/60 + 56/3600) * 15 = 217.48333 deg, then
    # FK5 J2000 -> ICRS (a few mas).
    assert obs.tracking_ra == pytest.approx(217.483333, abs=1e-4)
    assert obs.tracking_dec == pytest.approx(-(62 + 41 / 60 + 5 / 3600), abs=1e-4)
    assert (obs.physical_filter, obs.band) == (None, None)  # BANDPASS = 0 is a GSSS code
    assert any(w.startswith("physical_filter:") for w in units[0].warnings)
    assert any(
        w.startswith("instrument: no INSTRUME; taken from TELESCOP") for w in units[0].warnings
    )

    translator, units = translate(registry, astropy_file("nddata/tests/data/sip-wcs.fits"))
    obs = units[0].observation
    assert (obs.instrument, obs.physical_filter, obs.band) == ("Apogee Alta", "B", "g")
    assert obs.day_obs == 20110831  # 02:09 UTC belongs to the night that began on the 31st


def test_real_spitzer_irac_header(registry: TranslatorRegistry, tmp_path: Path) -> None:
    path = sample_raws.irac_bcd(tmp_path)
    translator, units = translate(registry, path)
    assert translator.name == "IRAC"
    obs = units[0].observation
    assert obs.exposure == 3937792 * 10**8 + 11 * 10**4 + 0
    assert (obs.detector, obs.physical_filter, obs.band) == (1, "IRAC-CH1", "irac1")
    assert obs.datetime_begin == "2003-12-06T10:46:35.021"
    assert obs.target_name == "BRI0021-02"
    layout = units[0].layout
    assert layout.variance == HduRef(0, "variance")
    assert layout.mask == HduRef(0, "mask")
    assert layout.gain == pytest.approx(3.3 * 26.8 / 0.111)  # e- per MJy/sr
    assert translator.companions(path).keys() == {"variance", "mask"}
    assert translator.is_companion(path.with_name(path.name.replace("_bcd", "_bunc")))


# ---------------------------------------------------------------------------------------
# Synthetic files in each layout


def test_hsc_through_astro_metadata_translator(
    registry: TranslatorRegistry, tmp_path: Path, stars: list[sample_raws.Star]
) -> None:
    translator, units = translate(registry, sample_raws.hsc_raw(tmp_path, RA, DEC, stars))
    assert translator.name == "astro-metadata-translator"
    obs = units[0].observation
    assert (obs.instrument, obs.exposure, obs.detector) == ("HSC", 12340, 17)
    assert (obs.physical_filter, obs.band, obs.day_obs) == ("HSC-R2", "r", 20160308)
    assert obs.translator == "HSC (astro-metadata-translator)"
    assert obs.tracking_ra == pytest.approx(RA, abs=1e-6)
    assert units[0].layout.gain == 3.0
    assert units[0].layout.read_noise == 4.5


def test_decam_raw_has_one_unit_per_ccd(
    registry: TranslatorRegistry, tmp_path: Path, stars: list[sample_raws.Star]
) -> None:
    _, units = translate(registry, sample_raws.decam_raw(tmp_path, RA, DEC, stars))
    assert [(u.observation.detector, u.layout.image.hdu) for u in units] == [(25, 1), (26, 2)]
    obs = units[0].observation
    assert (obs.instrument, obs.exposure, obs.band) == ("DECam", 229388, "r")
    assert units[0].layout.gain == pytest.approx(4.1)
    plans = plan_storage(units)
    assert [p.as_is for p in plans] == [False, False]  # one file per CCD is assembled
    assert plans[1].positions == {"metadata": 0, "image": 1}


def test_decam_community_pipeline_layout(
    registry: TranslatorRegistry, tmp_path: Path, stars: list[sample_raws.Star]
) -> None:
    ooi, oow, ood = sample_raws.decam_community_pipeline(tmp_path, RA, DEC, stars)
    translator, units = translate(registry, ooi)
    layout = units[0].layout
    assert layout.variance == HduRef(1, "variance")
    assert layout.variance_kind == "inverse_variance"
    assert layout.mask == HduRef(1, "mask")
    assert layout.mask_values[5] == "CR"
    assert translator.companions(ooi) == {"variance": oow, "mask": ood}
    assert registry.companion_owner(oow.name) is translator


@pytest.mark.parametrize(
    ("writer", "instrument", "detectors", "variance_kind", "filter_band"),
    [
        ("gmos_reduced", "GMOS-S", [1, 2, 3], "variance", ("r_G0326", "r")),
        ("euclid_vis", "VIS", [14, 15], "stddev", ("VIS", "vis")),
        ("roman_wfi", "WFI", [7], "stddev", ("F158", "f158")),
        ("lsst_raw", "LSSTCam", [94], "variance", ("r_57", "r")),
    ],
)
def test_instrument_layouts(
    registry: TranslatorRegistry,
    tmp_path: Path,
    stars: list[sample_raws.Star],
    writer: str,
    instrument: str,
    detectors: list[int],
    variance_kind: str,
    filter_band: tuple[str, str],
) -> None:
    path = getattr(sample_raws, writer)(tmp_path, RA, DEC, stars)
    _, units = translate(registry, path)
    assert [u.observation.instrument for u in units] == [instrument] * len(detectors)
    assert [u.observation.detector for u in units] == detectors
    obs = units[0].observation
    assert (obs.physical_filter, obs.band) == filter_band
    assert obs.datetime_begin is not None
    assert obs.exposure_time > 0
    layout = units[0].layout
    if writer == "lsst_raw":  # a raw: pixels only, no variance or mask planes yet
        assert (layout.variance, layout.mask) == (None, None)
    else:
        assert layout.variance is not None
        assert layout.variance_kind == variance_kind
        assert layout.mask is not None


def test_exposure_ids_follow_the_documented_rules(
    registry: TranslatorRegistry, tmp_path: Path, stars: list[sample_raws.Star]
) -> None:
    ids = {
        writer: translate(registry, getattr(sample_raws, writer)(tmp_path, RA, DEC, stars))[1][
            0
        ].observation
        for writer in ("gmos_reduced", "euclid_vis", "roman_wfi", "lsst_raw")
    }
    assert ids["gmos_reduced"].exposure == 2_2019_0312_0042  # S -> 2, date, frame
    assert ids["gmos_reduced"].day_obs == 20190311  # 03:04 UTC is the night of the 11th
    assert ids["euclid_vis"].exposure == 2689 * 10 + 1
    assert ids["roman_wfi"].exposure == 1 * 10**9 + 12 * 10**3 + 3
    assert ids["roman_wfi"].visit == 1 * 10**6 + 12
    assert ids["lsst_raw"].exposure == 20251201 * 100000 + 42


def test_lsstcam_detector_numbers() -> None:
    assert lsstcam_detector("R01", "S00") == 0
    assert lsstcam_detector("R22", "S11") == 94
    assert lsstcam_detector("R43", "S22") == 188
    assert lsstcam_detector("R00", "S00") is None  # a corner (wavefront) raft


# ---------------------------------------------------------------------------------------
# Errors and plug-ins


def _write(path: Path, cards: dict[str, object]) -> Path:
    header = fits.Header()
    for key, value in cards.items():
        header[key] = value
    fits.PrimaryHDU(np.zeros((4, 5), dtype=np.float32), header=header).writeto(path)
    return path


def test_unrecognised_file_names_missing_keys(registry: TranslatorRegistry, tmp_path: Path) -> None:
    path = _write(tmp_path / "anon.fits", {"OBJECT": "M31"})
    headers = read_file_headers(path)
    translator = choose_translator(registry, headers)
    assert translator.name == "generic"
    with pytest.raises(MissingHeaderKeysError) as info:
        translator.translate(headers)
    message = str(info.value)
    assert "INSTRUME (or TELESCOP, ORIGIN)" in message
    assert "DATE-OBS" in message
    assert "butler.translators" in message
    assert "--instrument" in message
    assert info.value.missing == [
        "INSTRUME (or TELESCOP, ORIGIN)",
        "DATE-OBS (or DATE_OBS, MJD-OBS, DATE)",
    ]


def test_forced_translator_reports_its_own_keys(
    registry: TranslatorRegistry, tmp_path: Path
) -> None:
    path = _write(tmp_path / "x.fits", {"INSTRUME": "WFC3", "DATE-OBS": "2020-01-01"})
    headers = read_file_headers(path)
    hst = choose_translator(registry, headers, "hst")
    with pytest.raises(MissingHeaderKeysError, match="EXTNAME = 'SCI'"):
        hst.translate(headers)
    with pytest.raises(UnknownInstrumentError, match="no translator called 'NOPE'.*installed:"):
        choose_translator(registry, headers, "NOPE")


def test_file_without_pixels_is_refused_by_auto_detection(
    registry: TranslatorRegistry, tmp_path: Path
) -> None:
    path = tmp_path / "empty.fits"
    fits.PrimaryHDU(header=fits.Header([("TELESCOP", "X")])).writeto(path)
    with pytest.raises(MissingHeaderKeysError, match=r"image HDU .* INSTRUME, DATE-OBS"):
        choose_translator(registry, read_file_headers(path))


class ToyCamTranslator(Translator):
    """A plug-in translator, as a third-party package would register it."""

    name: ClassVar[str] = "TOYCAM"
    priority: ClassVar[int] = 5

    def can_translate(self, headers: FileHeaders) -> bool:
        return headers.primary.get("INSTRUME") == "TOYCAM"

    def translate(self, headers: FileHeaders) -> list[RawUnit]:
        obs = Observation("TOYCAM", 7, 0, "toy-r", "r", 20240101, 1.0, translator=self.name)
        return [RawUnit(obs, PixelLayout(image=HduRef(0), gain=2.0))]


def test_translators_plug_in_through_entry_points(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    ep = EntryPoint("TOYCAM", "test_translators:ToyCamTranslator", "butler.translators")
    broken = EntryPoint("BROKEN", "no_such_module:Nope", "butler.translators")
    monkeypatch.setattr(
        registry_module, "entry_points", lambda group: [ep, broken] if group else []
    )
    registry = TranslatorRegistry()
    assert "TOYCAM" in registry.names()
    path = _write(tmp_path / "toy.fits", {"INSTRUME": "TOYCAM"})
    translator = choose_translator(registry, read_file_headers(path))
    assert translator.name == "TOYCAM"
    assert translator.translate(read_file_headers(path))[0].observation.exposure == 7


# ---------------------------------------------------------------------------------------
# Helpers and records


@pytest.mark.parametrize(
    ("name", "band"),
    [
        ("HSC-R2", "r"),
        ("HSC-I", "i"),
        ("r DECam SDSS c0002 6415.0 1480.0", "r"),
        ("r_57", "r"),
        ("g_G0301", "g"),
        ("V", "g"),
        ("F606W", "f606w"),
    ],
)
def test_band_of(name: str, band: str) -> None:
    assert band_of(name) == band


def test_times() -> None:
    start = parse_time({"DATE-OBS": "11/03/76", "TIME-OBS": "17:38:00"})
    assert start is not None
    assert start.isot == "1976-03-11T17:38:00.000"
    assert day_obs_of(start, -12) == 19760311
    late = parse_time({"DATE-OBS": "2024-01-02T05:00:00"})
    assert late is not None
    assert day_obs_of(late, -12) == 20240101
    assert parse_time({"MJD-OBS": 60000.5}) is not None
    assert parse_time({"OBJECT": "x"}) is None


def test_dimension_records_leave_unknown_facts_out() -> None:
    obs = Observation("HSC", 12, 3, "HSC-R", "r", 20240101, 30.0, tracking_ra=1.5)
    records = dict(dimension_records(obs))
    assert records["physical_filter"] == {"instrument": "HSC", "name": "HSC-R", "band": "r"}
    assert records["exposure"]["tracking_ra"] == 1.5
    assert "tracking_dec" not in records["exposure"]
    assert records["visit"]["id"] == 12  # visit defaults to the exposure


def test_sdss_frame_through_astro_metadata_translator(
    registry: TranslatorRegistry, tmp_path: Path
) -> None:
    path = _write(
        tmp_path / "fpC-003530-r4-0100.fits",
        {
            "ORIGIN": "SDSS",
            "CCDMODE": "DRIFT",
            "TELESCOP": "2.5m",
            "RUN": 3530,
            "CAMCOL": 4,
            "FILTER": "r",
            "FRAME": 100,
            "DATE-OBS": "2003-03-05",
            "TAIHMS": "03:04:05.00",
            "EXPTIME": 53.907,
            "FLAVOR": "science",
            "OBJECT": "82 S",
        },
    )
    translator, units = translate(registry, path)
    assert translator.name == "astro-metadata-translator"
    obs = units[0].observation
    assert obs.translator == "SDSS (astro-metadata-translator)"
    # astro-metadata-translator's SDSS model: the drift-scan RUN is the exposure and the
    # filter + camera column ("r4") the detector.
    assert (obs.instrument, obs.exposure, obs.detector_name) == ("Imager on SDSS 2.5m", 3530, "r4")
    assert (obs.physical_filter, obs.band) == ("r", "r")
    assert obs.datetime_begin == "2003-03-05T03:03:33.000"  # TAI 03:04:05 in UTC


# ---------------------------------------------------------------------------------------
# Header conventions (generic translator): each value is worked out by hand from the cards

_BASE: dict[str, object] = {"INSTRUME": "CAM", "DATE-OBS": "2020-01-02T03:04:05"}
_DSS_RA = (14 + 29 / 60 + 56 / 3600) * 15  # 217.48333 deg
_DSS_DEC = -(62 + 41 / 60 + 5 / 3600)  # -62.68472 deg


def _generic(tmp_path: Path, cards: dict[str, object]) -> RawUnit:
    headers = read_file_headers(_write(tmp_path / "conv.fits", {**_BASE, **cards}))
    units = TranslatorRegistry().by_name("generic").translate(headers)
    assert len(units) == 1
    return units[0]


@pytest.mark.parametrize(
    ("cards", "ra", "dec"),
    [
        ({"OBJCTRA": "14 29 56.000", "OBJCTDEC": "-62 41 05.00"}, _DSS_RA, _DSS_DEC),
        ({"RA": "14:29:56", "DEC": "-62:41:05"}, _DSS_RA, _DSS_DEC),
        ({"RA": "14h29m56s", "DEC": "-62d41m05s"}, _DSS_RA, _DSS_DEC),
        ({"RA": (14.5, "right ascension in hours"), "DEC": 10.0}, 217.5, 10.0),
        ({"RA": 217.5, "DEC": 10.0}, 217.5, 10.0),
        ({"RA": 0.0, "DEC": 0.0}, 0.0, 0.0),  # 0 is a pointing, not a missing one
        (
            {
                **{"PLTRAH": 14, "PLTRAM": 37, "PLTRAS": 46.88253, "PLTDECSN": "-"},
                **{"PLTDECD": 60, "PLTDECM": 12, "PLTDECS": 59.28761},
            },
            (14 + 37 / 60 + 46.88253 / 3600) * 15,
            -(60 + 12 / 60 + 59.28761 / 3600),
        ),
        ({"CTYPE1": "RA---TAN", "CTYPE2": "DEC--TAN", "CRVAL1": 10.0, "CRVAL2": 20.0}, 10, 20),
        ({"CTYPE1": "DEC--TAN", "CTYPE2": "RA---TAN", "CRVAL1": 20.0, "CRVAL2": 10.0}, 10, 20),
    ],
)
def test_pointing_conventions(
    tmp_path: Path, cards: dict[str, object], ra: float, dec: float
) -> None:
    unit = _generic(tmp_path, {**cards, "RADESYS": "ICRS"})
    assert (unit.observation.tracking_ra, unit.observation.tracking_dec) == pytest.approx(
        (ra, dec), abs=1e-6
    )
    assert not [w for w in unit.warnings if w.startswith("tracking")]


def test_b1950_pointing_is_converted_to_icrs(tmp_path: Path) -> None:
    # FK4 B1950 (0, 0) is J2000 0h02m33.77s +0d16m42.1s (the textbook precession example).
    unit = _generic(tmp_path, {"RA": 0.0, "DEC": 0.0, "EQUINOX": 1950.0})
    obs = unit.observation
    assert obs.tracking_ra == pytest.approx((2 * 60 + 33.77) / 3600 * 15, abs=1e-3)
    assert obs.tracking_dec == pytest.approx((16 * 60 + 42.1) / 3600, abs=1e-3)


def test_unstated_frame_is_named_in_a_warning(tmp_path: Path) -> None:
    unit = _generic(tmp_path, {"RA": 10.0, "DEC": 20.0})
    assert unit.observation.tracking_ra == 10.0
    assert any("no RADESYS or EQUINOX" in w for w in unit.warnings)


@pytest.mark.parametrize(
    ("cards", "frame"),
    [
        ({"CTYPE1": "HPLN-TAN", "CTYPE2": "HPLT-TAN", "CRVAL1": -4.5, "CRVAL2": 2.9}, "solar"),
        ({"CTYPE1": "Solar-X", "CTYPE2": "Solar-Y", "CRVAL1": 0.0, "CRVAL2": 0.0}, "solar"),
        ({"SOLAR-X": 100.0, "SOLAR-Y": -50.0}, "solar"),
        ({"CTYPE1": "GLON-CAR", "CTYPE2": "GLAT-CAR", "CRVAL1": 10.0, "CRVAL2": 5.0}, "none"),
        ({}, "none"),
    ],
)
def test_pointing_that_is_not_ra_dec_is_null(
    tmp_path: Path, cards: dict[str, object], frame: str
) -> None:
    unit = _generic(tmp_path, cards)
    assert (unit.observation.tracking_ra, unit.observation.tracking_dec) == (None, None)
    (warning,) = [w for w in unit.warnings if w.startswith("tracking_ra/tracking_dec:")]
    assert ("pointing is solar" in warning) == (frame == "solar")
    records = dict(dimension_records(unit.observation))
    assert "tracking_ra" not in records["exposure"]


@pytest.mark.parametrize(
    ("cards", "seconds"),
    [
        ({"EXPTIME": 30.0}, 30.0),
        ({"EXPTIME": 0.0}, 0.0),  # a bias: zero is a measured value
        ({"EXP_TIME": 10.0}, 10.0),  # UKIRT WFCAM
        ({"XPOSURE": 2.5}, 2.5),  # SOLARNET / SDO
        ({"ITIME": 1.5, "COADDS": 4}, 6.0),  # Keck: per-coadd integration x coadds
        ({"ITIME": 1.5, "NCOADDS": 10}, 15.0),
        ({"ITIME": 1.5}, 1.5),
        ({"EXPOSURE": 12.0}, 12.0),
        ({"EXPOSURE": 70.0, "PLTLABEL": "J 2098"}, 4200.0),  # DSS plate: minutes
        ({"EXPOSURE": (2.0, "[min] exposure")}, 120.0),  # unit in the comment
        ({"EXPTIME": (500.0, "exposure time in ms")}, 0.5),
    ],
)
def test_exposure_time_conventions(
    tmp_path: Path, cards: dict[str, object], seconds: float
) -> None:
    unit = _generic(tmp_path, cards)
    assert unit.observation.exposure_time == pytest.approx(seconds)
    assert not [w for w in unit.warnings if w.startswith("exposure_time")]


@pytest.mark.parametrize(
    ("cards", "named"),
    [
        ({}, "none of EXPTIME"),
        ({"TELAPSE": 100.0}, "TELAPSE is elapsed"),
        ({"EXPTIME": -1.0}, "-1"),
    ],
)
def test_unknown_exposure_time_is_null(
    tmp_path: Path, cards: dict[str, object], named: str
) -> None:
    unit = _generic(tmp_path, cards)
    assert unit.observation.exposure_time is None
    assert unit.observation.datetime_end is None
    (warning,) = [w for w in unit.warnings if w.startswith("exposure_time:")]
    assert named in warning


@pytest.mark.parametrize(
    ("cards", "physical_filter", "band"),
    [
        ({"FILTER": "r"}, "r", "r"),
        ({"FILTER1": "CLEAR1L", "FILTER2": "F814W"}, "F814W", "f814w"),
        ({"FILTER1": "open1-6", "FILTER2": "g_G0301"}, "g_G0301", "g"),
        ({"FILTER": "NaI"}, "NaI", "nai"),  # sodium, not "N/A"
        ({"FILTER1": "F606W", "FILTER2": "POL0V"}, "F606W+POL0V", "f606w+pol0v"),
        ({"FILTNAM1": "F555W"}, "F555W", "f555w"),
        ({"FILTER": "Open"}, "Open", "open"),
        ({"BANDPASS": "V"}, "V", "g"),
        ({"WAVELNTH": 171, "WAVEUNIT": "angstrom"}, "171 Angstrom", "171 angstrom"),
        ({"WAVELNTH": 30.4, "WAVEUNIT": -9}, "304 Angstrom", "304 angstrom"),  # 10**-9 m
        ({"WAVELNTH": 656.3, "WAVEUNIT": "nm"}, "656.3 nm", "656.3 nm"),
        ({"WAVELNTH": 195, "FILTER": "Al +1"}, "195 (Al +1)", "195"),
    ],
)
def test_filter_conventions(
    tmp_path: Path, cards: dict[str, object], physical_filter: str, band: str
) -> None:
    obs = _generic(tmp_path, cards).observation
    assert (obs.physical_filter, obs.band) == (physical_filter, band)


def test_no_filter_is_null_and_has_no_records(tmp_path: Path) -> None:
    unit = _generic(tmp_path, {"BANDPASS": 0})
    assert (unit.observation.physical_filter, unit.observation.band) == (None, None)
    assert any("BANDPASS = 0" in w for w in unit.warnings if w.startswith("physical_filter:"))
    elements = [element for element, _ in dimension_records(unit.observation)]
    assert "physical_filter" not in elements
    assert "band" not in elements


@pytest.mark.parametrize(
    ("cards", "begin", "named"),
    [
        ({"DATE_OBS": "2021-05-06T07:08:09"}, "2021-05-06T07:08:09.000", "DATE_OBS"),
        ({"MJD-OBS": 58849.5}, "2020-01-01T12:00:00.000", "MJD-OBS"),  # MJD 58849 = 2020-01-01
        ({"DATE": "2022-02-03T04:05:06"}, "2022-02-03T04:05:06.000", "creation date"),
    ],
)
def test_start_time_fallbacks_are_named(
    tmp_path: Path, cards: dict[str, object], begin: str, named: str
) -> None:
    headers = read_file_headers(_write(tmp_path / "t.fits", {"INSTRUME": "CAM", **cards}))
    (unit,) = TranslatorRegistry().by_name("generic").translate(headers)
    assert unit.observation.datetime_begin == begin
    (warning,) = [w for w in unit.warnings if w.startswith("datetime_begin:")]
    assert named in warning


def test_instrument_fallbacks_and_space_days(tmp_path: Path) -> None:
    cards = {"DATE-OBS": "2020-01-02T03:00:00", "EXPTIME": 1.0}
    headers = read_file_headers(_write(tmp_path / "a.fits", {**cards, "TELESCOP": "SDO/AIA"}))
    (unit,) = TranslatorRegistry().by_name("generic").translate(headers)
    assert unit.observation.instrument == "SDO/AIA"
    assert unit.observation.day_obs == 20200102  # space: UTC date
    assert "instrument: no INSTRUME; taken from TELESCOP = 'SDO/AIA'" in unit.warnings
    headers = read_file_headers(_write(tmp_path / "b.fits", {**cards, "ORIGIN": "NOAO-IRAF"}))
    (unit,) = TranslatorRegistry().by_name("generic").translate(headers)
    assert unit.observation.instrument == "NOAO-IRAF"
    assert unit.observation.day_obs == 20200101  # ground: 03:00 UT is the night of the 1st
    assert "instrument: no INSTRUME; taken from ORIGIN = 'NOAO-IRAF'" in unit.warnings


def test_ukirt_wfcam_exp_time_rabase_and_camnum(tmp_path: Path) -> None:
    """A WFCAM-style MEF: EXP_TIME (not EXPTIME), RABASE in hours ('[h]' comment), one
    extension per camera numbered by CAMNUM."""
    primary = fits.PrimaryHDU()
    for key, value in {
        "TELESCOP": "UKIRT",
        "INSTRUME": "WFCAM",
        "DATE-OBS": "2010-04-05T10:11:12.5",
        "EXP_TIME": (10.0, "[s] Integration time per exposure"),
        "RABASE": (10.0, "[h] Right ascension of base position"),
        "DECBASE": (2.0, "[deg] Declination of base position"),
        "RADESYS": "ICRS",
        "FILTER": "J",
    }.items():
        primary.header[key] = value
    cameras = [
        fits.ImageHDU(np.zeros((8, 8), np.float32), fits.Header({"CAMNUM": n}))
        for n in (1, 2, 3, 4)
    ]
    path = tmp_path / "w20100405_00123.fits"
    fits.HDUList([primary, *cameras]).writeto(path)
    translator, units = translate(TranslatorRegistry(), path)
    assert translator.name == "generic"
    assert [u.observation.detector for u in units] == [1, 2, 3, 4]
    obs = units[0].observation
    assert obs.exposure_time == 10.0
    assert obs.datetime_end == "2010-04-05T10:11:22.500"
    assert (obs.tracking_ra, obs.tracking_dec) == pytest.approx((10.0 * 15, 2.0))
    assert (obs.physical_filter, obs.band) == ("J", "j")
    assert units[0].warnings == ()
