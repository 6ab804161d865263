"""Observation metadata of real files from several observatories (shipped by astropy and
sunpy), ingested with ``butler ingest-raws`` and read back from the registry: each value
means what the header means, and what the header does not determine is null with a
warning line naming the key.

Expected values are worked out by hand from the headers quoted in each test.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from astropy.io import fits
from click.testing import CliRunner
from real_data import (
    dss_gz,
    eso_origin_only,
    hst_stis_raw,
    rhessi_image,
    sdo_aia,
    soho_eit,
)

from butler import Butler
from butler.cli.main import main


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    Butler.create(root).close()
    return root


def ingest_cli(repo: Path, path: Path) -> str:
    result = CliRunner().invoke(main, ["ingest-raws", str(repo), str(path)])
    assert result.exit_code == 0, result.output
    assert "1 ingested, 0 skipped, 0 failed" in result.output
    return result.output


def exposure(repo: Path, instrument: str) -> dict[str, Any]:
    with Butler(repo) as butler:
        records = butler.query_dimension_records("exposure", f"instrument = '{instrument}'")
    assert len(records) == 1, records
    record: dict[str, Any] = records[0]
    return record


def warnings_of(output: str, path: Path) -> list[str]:
    prefix = f" WARNING {path}: "
    return [line[len(prefix) :] for line in output.splitlines() if line.startswith(prefix)]


def test_dss_plate_gzipped_hours_and_minutes(repo: Path) -> None:
    """DSS (UK 48-inch Schmidt) cutout as astropy ships it, gzipped: OBJCTRA = '14 29 56.000'
    (hours), OBJCTDEC = '-62 41 05.00', EQUINOX = 2000, EXPOSURE = 70.0 / minutes,
    DATE-OBS = '11/03/76' with UT = '17:38:00.00', BANDPASS = 0 (a GSSS code)."""
    path = dss_gz()
    output = ingest_cli(repo, path)
    record = exposure(repo, "UK 48-inch Schmidt")
    assert record["tracking_ra"] == pytest.approx((14 + 29 / 60 + 56 / 3600) * 15, abs=1e-4)
    assert record["tracking_ra"] == pytest.approx(217.4833, abs=1e-4)
    assert record["tracking_dec"] == pytest.approx(-(62 + 41 / 60 + 5 / 3600), abs=1e-4)
    assert record["exposure_time"] == 70.0 * 60
    assert record["datetime_begin"] == "1976-03-11T17:38:00.000"
    assert record["datetime_end"] == "1976-03-11T18:48:00.000"  # + 70 min
    assert record.get("physical_filter") is None
    warned = warnings_of(output, path)
    assert any(w.startswith("physical_filter: no filter") and "BANDPASS = 0" in w for w in warned)
    assert "instrument: no INSTRUME; taken from TELESCOP = 'UK 48-inch Schmidt'" in warned
    assert "gzip-compressed file: stored decompressed" in output


def test_sdo_aia_helioprojective_pointing_is_not_ra_dec(repo: Path) -> None:
    """AIA 171: CTYPE1 = 'HPLN-TAN', CRVAL1 = -4.53 arcsec from Sun centre; WAVELNTH = 171,
    WAVEUNIT = 'angstrom'; EXPTIME = 2.000191; DATE-OBS = '2011-02-15T00:00:00.34'."""
    path = sdo_aia()
    output = ingest_cli(repo, path)
    record = exposure(repo, "AIA_3")
    assert record.get("tracking_ra") is None
    assert record.get("tracking_dec") is None
    assert record["physical_filter"] == "171 Angstrom"
    assert record["exposure_time"] == pytest.approx(2.000191)
    assert record["day_obs"] == 20110215  # a space telescope: the UTC date, no night shift
    warned = warnings_of(output, path)
    assert len(warned) == 1
    assert warned[0].startswith("tracking_ra/tracking_dec: the pointing is solar")
    assert "CTYPE1 = 'HPLN-TAN'" in warned[0]
    with Butler(repo) as butler:
        band = butler.query_dimension_records("physical_filter", "instrument = 'AIA_3'")
    assert band[0]["band"] == "171 angstrom"


def test_soho_eit_filter_and_wavelength(repo: Path) -> None:
    """EIT: FILTER = 'Al +1' in the 171 sector (WAVELNTH = 171, no WAVEUNIT), CTYPE1 =
    'Solar-X', EXPTIME = 7.597, DATE-OBS 2004-03-01T01:00:16.178."""
    path = soho_eit()
    output = ingest_cli(repo, path)
    record = exposure(repo, "EIT")
    assert record["physical_filter"] == "171 (Al +1)"
    assert record["exposure_time"] == pytest.approx(7.597)
    assert record.get("tracking_ra") is None
    assert record["day_obs"] == 20040301  # UTC date (01:00 UT would be the 29th at -12 h)
    warned = warnings_of(output, path)
    assert any(
        w.startswith("physical_filter: WAVELNTH = 171 has no usable WAVEUNIT") for w in warned
    )
    assert any("CTYPE1 = 'Solar-X'" in w for w in warned)


def test_rhessi_without_date_obs_or_exposure_time(repo: Path) -> None:
    """RHESSI: DATE_OBS (underscore) = '2010-10-16T19:12:18.000', DATE_END 19:12:22, no
    exposure keyword, no filter, solar XCEN/YCEN pointing."""
    path = rhessi_image()
    output = ingest_cli(repo, path)
    record = exposure(repo, "RHESSI")
    assert record["datetime_begin"] == "2010-10-16T19:12:18.000"
    assert record["datetime_end"] == "2010-10-16T19:12:22.000"
    for key in ("exposure_time", "tracking_ra", "tracking_dec", "physical_filter"):
        assert record.get(key) is None, key
    warned = warnings_of(output, path)
    assert [w.split(":")[0] for w in warned] == [
        "datetime_begin",
        "physical_filter",
        "exposure_time",
        "tracking_ra/tracking_dec",
    ]
    assert "taken from DATE_OBS" in warned[0]
    assert "XCEN = 394.911" in warned[3]


def test_origin_is_the_last_instrument_fallback(repo: Path, tmp_path: Path) -> None:
    """fixed-1890.fits: no INSTRUME or TELESCOP, ORIGIN = 'ESO', EXPTIME = 50.0."""
    path = shutil.copy(eso_origin_only(), tmp_path / "eso.fits")
    output = ingest_cli(repo, Path(path))
    record = exposure(repo, "ESO")
    assert record["exposure_time"] == 50.0
    assert "instrument: no INSTRUME; taken from ORIGIN = 'ESO'" in warnings_of(output, Path(path))


def test_stis_cr_split_readouts_are_one_exposure_one_detector(repo: Path) -> None:
    """STIS o4sp040b0_raw: DETECTOR = 'CCD', CRSPLIT = 4, TEXPTIME = 120.0, TEXPSTRT =
    50923.77657113, TEXPEND = 50923.77948761 (MJD); two SCI readouts of EXPTIME = 30.0."""
    path = hst_stis_raw()
    output = ingest_cli(repo, path)
    record = exposure(repo, "STIS")
    assert record["exposure_time"] == 120.0
    # MJD 50923.77657113 = 1998-04-20 + 0.77657113 d = 18:38:15.746 UTC
    assert record["datetime_begin"].startswith("1998-04-20T18:38:15.7")
    # MJD 50923.77948761 = 18:42:27.73 UTC
    assert record["datetime_end"].startswith("1998-04-20T18:42:27.7")
    assert record["physical_filter"] == "G750M"  # FILTER = 'Clear', OPT_ELEM = 'G750M'
    with Butler(repo) as butler:
        refs = butler.query_datasets("raw", where="instrument = 'STIS'")
        assert [ref.data_id["detector"] for ref in refs] == [1]
        detectors = butler.query_dimension_records("detector", "instrument = 'STIS'")
        _, info = butler.resolve(refs[0])
        image = butler.get(refs[0])
    with fits.open(path) as hdul:
        assert np.array_equal(image.data, hdul["SCI", 1].data)  # readout 1, BZERO applied
    assert [d["id"] for d in detectors] == [1]
    # The stored file keeps both readouts; the image plane is the first.
    assert [h["name"] for h in info.index["hdus"]].count("SCI") == 2
    assert info.index["raw"]["layout"]["image"] == 1
    assert any(w.startswith("readouts: SCI extensions 1, 2") for w in warnings_of(output, path))
