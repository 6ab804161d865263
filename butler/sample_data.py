"""Real telescope data shipped inside installed packages, for the demo and the tests.

astropy's wheel carries small real files from its own test suite: HST WFPC2 and STIS images,
a Digitized Sky Survey (UK Schmidt) plate with its WCS, a tile-compressed image, and a VizieR
catalog. Nothing is downloaded.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
from astropy import units as u
from astropy.io import fits
from astropy.table import Table
from astropy.wcs import WCS, FITSFixedWarning

from butler.image import Image


def astropy_file(relative: str) -> Path:
    """A data file inside the installed astropy package (must exist)."""
    path = Path(str(resources.files("astropy") / relative))
    if not path.exists():
        raise FileNotFoundError(
            f"{path} is missing: this astropy installation does not ship its test data"
        )
    return path


@dataclass(frozen=True)
class RealImage:
    """One image HDU of a real file and the data ID it gets in the sample repository."""

    label: str
    path: Path
    hdu: int
    instrument: str
    physical_filter: str
    band: str
    visit: int
    detector: int


def real_images() -> list[RealImage]:
    wfpc2 = astropy_file("io/fits/tests/data/test0.fits")
    return [
        *(
            RealImage(f"HST WFPC2 chip {chip}", wfpc2, chip, "WFPC2", "F673N", "r", 2020100, chip)
            for chip in (1, 2, 3, 4)
        ),
        RealImage(
            "HST STIS CCD",
            astropy_file("io/fits/tests/data/o4sp040b0_raw.fits"),
            1,
            "STIS",
            "Clear",
            "white",
            1,
            0,
        ),
        RealImage(
            "DSS UK 48-inch Schmidt plate",
            astropy_file("wcs/tests/data/dss.14.29.56-62.41.05.fits.gz"),
            0,
            "DSS",
            "IIIaJ",
            "g",
            126604,
            0,
        ),
    ]


def real_compressed_image_path() -> Path:
    """A real tile-compressed image (NGC 1316, RICE-compressed CompImageHDU)."""
    return astropy_file("io/fits/tests/data/comp.fits")


def load_image(sample: RealImage) -> Image:
    """Read one real HDU into the common image model (variance unknown: NaN; mask empty)."""
    with fits.open(sample.path) as hdul, warnings.catch_warnings():
        # Some real headers have malformed cards (e.g. DSS's SKEW); fix them quietly, as a
        # reader would, instead of printing astropy's verification report.
        warnings.simplefilter("ignore", fits.verify.VerifyWarning)
        hdul.verify("silentfix")
        hdu = hdul[sample.hdu]
        header = hdu.header.copy()
        data = np.asarray(hdu.data, dtype=np.float32)
        primary = hdul[0].header if sample.hdu else fits.Header()
    with warnings.catch_warnings():
        # Old real headers carry deprecated keywords that astropy fixes and warns about.
        warnings.simplefilter("ignore", FITSFixedWarning)
        wcs = (
            WCS(header)
            if header.get("CTYPE1") and "UNITLESS" not in str(header.get("CTYPE1"))
            else None
        )
    unit: Any = None
    bunit = header.get("BUNIT")
    if bunit:
        parsed = u.Unit(str(bunit), parse_strict="silent")
        unit = None if isinstance(parsed, u.UnrecognizedUnit) else parsed
    metadata = fits.Header()
    for source in (primary, header):
        for card in source.cards:
            if (
                card.keyword
                and card.keyword not in ("", "COMMENT", "HISTORY")
                and not _structural(card.keyword)
            ):
                metadata[card.keyword] = card.value
    metadata["TELESCOP"] = metadata.get("TELESCOP") or (
        "HST" if sample.instrument in ("WFPC2", "STIS") else "UK 48-inch Schmidt"
    )
    return Image(data, wcs=wcs, unit=unit, header=metadata)


_STRUCTURAL = {
    "SIMPLE",
    "BITPIX",
    "EXTEND",
    "XTENSION",
    "PCOUNT",
    "GCOUNT",
    "BSCALE",
    "BZERO",
    "EXTNAME",
    "EXTVER",
    "INHERIT",
    "CHECKSUM",
    "DATASUM",
    "BLANK",
}


def _structural(keyword: str) -> bool:
    if keyword in _STRUCTURAL or keyword.startswith("NAXIS"):
        return True
    # WCS keywords travel in the WCS object, not in the metadata.
    prefixes = (
        "CTYPE",
        "CRPIX",
        "CRVAL",
        "CDELT",
        "CD1_",
        "CD2_",
        "PC1_",
        "PC2_",
        "CROTA",
        "CUNIT",
        "LONPOLE",
        "LATPOLE",
        "EQUINOX",
        "RADESYS",
        "WCSAXES",
        "PV1_",
        "PV2_",
    )
    return keyword.startswith(prefixes)


def real_catalog() -> Table:
    """Observing log of 15 red-clump giants in 5 open clusters (VizieR J/A+A/511/A56)."""
    data = astropy_file("io/ascii/tests/data/vizier/table1.dat")
    readme = astropy_file("io/ascii/tests/data/vizier/ReadMe")
    table = Table.read(data, readme=readme, format="ascii.cds")
    table.meta["source"] = "VizieR J/A+A/511/A56 (Pancino+ 2010), table1"
    return table


def synthetic_calexp(size: int = 2048, seed: int = 42) -> Image:
    """A realistic LSST-like calexp: sky + stars + noise, variance, a saturated mask, TAN WCS."""
    rng = np.random.default_rng(seed)
    sky = 1200.0
    data = rng.normal(sky, np.sqrt(sky), (size, size)).astype(np.float32)
    yy, xx = np.mgrid[0:size, 0:size]
    for _ in range(60):
        x0, y0, flux = rng.uniform(0, size), rng.uniform(0, size), rng.uniform(2e3, 2e5)
        box = (slice(max(0, int(y0) - 12), int(y0) + 12), slice(max(0, int(x0) - 12), int(x0) + 12))
        r2 = (xx[box] - x0) ** 2 + (yy[box] - y0) ** 2
        data[box] += (flux / (2 * np.pi * 2.0**2) * np.exp(-r2 / (2 * 2.0**2))).astype(np.float32)
    variance = np.clip(data, 1, None).astype(np.float32)
    image = Image(data, variance=variance, unit="adu")
    saturated = data > 30000
    image.mask[saturated] |= 1 << image.mask_planes["SAT"]
    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    wcs.wcs.crpix = [size / 2, size / 2]
    wcs.wcs.crval = [150.1, 2.2]
    wcs.wcs.cd = [[-0.2 / 3600, 0], [0, 0.2 / 3600]]
    image.wcs = wcs
    image.header["TELESCOP"] = "Simonyi Survey Telescope (synthetic)"
    image.header["INSTRUME"] = "LSSTCam-like"
    image.header["EXPTIME"] = 30.0
    return image
