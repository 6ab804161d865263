"""Paths of real telescope FITS files shipped inside the installed astropy package.

Tests use these rather than synthetic files because real archive files carry the quirks
(legacy WCS keywords, BZERO-scaled unsigned data, empty ERR/DQ extensions, tile compression
written by CFITSIO) that the butler must cope with.
"""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

from butler.sample_data import astropy_file


def fits_test_file(name: str) -> Path:
    return astropy_file(f"io/fits/tests/data/{name}")


def hst_stis_raw() -> Path:
    """HST STIS raw spectrum o4sp040b0: SCI/ERR/DQ x2, int16 with BZERO (reads as uint16),
    ERR and DQ empty (NAXIS = 0)."""
    return fits_test_file("o4sp040b0_raw.fits")


def hst_wfpc2() -> Path:
    """HST WFPC2 test0.fits: four 40x40 int16 SCI extensions with a CD-matrix WCS."""
    return fits_test_file("test0.fits")


def tile_compressed() -> Path:
    """comp.fits: a 440x300 int16 image (NGC 1316), RICE_1 tile-compressed by CFITSIO,
    with a SIN-projection WCS."""
    return fits_test_file("comp.fits")


def dss_gz() -> Path:
    """Digitized Sky Survey (UK Schmidt) plate cutout, 100x100 int16 in the PRIMARY HDU,
    gzip-compressed as distributed."""
    return astropy_file("wcs/tests/data/dss.14.29.56-62.41.05.fits.gz")


def dss_fits(directory: Path) -> Path:
    """The DSS cutout decompressed into ``directory`` (byte ranges need a plain FITS file)."""
    out = directory / "dss.14.29.56-62.41.05.fits"
    if not out.exists():
        with gzip.open(dss_gz(), "rb") as src, out.open("wb") as dst:
            shutil.copyfileobj(src, dst)
    return out


def sunpy_test_file(name: str) -> Path:
    """A FITS file from sunpy's own test data (``sunpy/data/test``), found without importing
    sunpy (its import pulls in much more than the files). sunpy is in the ``test`` extra."""
    import importlib.util

    import pytest

    spec = importlib.util.find_spec("sunpy")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("sunpy (in the test extra) is not installed: its solar test files are needed")
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "test" / name
    if not path.is_file():
        pytest.skip(f"this sunpy installation does not ship {name}")
    return path


def sdo_aia() -> Path:
    """SDO/AIA 171 level 1 (sunpy): helioprojective WCS (``HPLN-TAN``), ``WAVELNTH = 171``,
    ``WAVEUNIT = 'angstrom'``, ``EXPTIME = 2.000191``, no filter name."""
    return sunpy_test_file("aia_171_level1.fits")


def soho_eit() -> Path:
    """SOHO/EIT 171 (sunpy): ``CTYPE1 = 'Solar-X'``, ``FILTER = 'Al +1'``, ``WAVELNTH = 171``
    (no WAVEUNIT), ``EXPTIME = 7.597``, DATE-OBS 2004-03-01T01:00:16.178."""
    return sunpy_test_file("EIT/efz20040301.010016_s.fits")


def rhessi_image() -> Path:
    """RHESSI image (sunpy): no DATE-OBS (``DATE_OBS`` instead), no exposure time, solar
    ``CTYPE = 'arcsec'`` axes, and three table extensions."""
    return sunpy_test_file("hsi_image_20101016_191218.fits")


def eso_origin_only() -> Path:
    """fixed-1890.fits (astropy): an image whose only instrument-like key is
    ``ORIGIN = 'ESO'``."""
    return fits_test_file("fixed-1890.fits")
