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
