"""Sky cutouts: the same patch of sky from any instrument, reading only the rows needed;
and the pure plane conversions behind the common image model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from astropy import units as u
from astropy.coordinates import SkyCoord
from astropy.io import fits
from real_data import dss_fits

from butler import Butler, sample_raws
from butler.direct_butler import DirectButler
from butler.errors import CorruptFileError, UnsupportedParameterError
from butler.formatters.fits_image import FitsImageFormatter
from butler.formatters.fits_index import index_fits
from butler.formatters.planes import common_mask, estimate_variance, to_variance
from butler.formatters.sky import parse_sky, sky_box
from butler.image import DEFAULT_MASK_PLANES, Box
from butler.ingest import RawIngestOptions, ingest_raws
from butler.io.source import LocalFileSource

RA, DEC = 150.0, 2.2


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """HSC, DECam (TPV), Euclid VIS, Roman and LSST files of one field, plus a real DSS plate."""
    base = tmp_path_factory.mktemp("sky")
    raws = base / "raws"
    raws.mkdir()
    stars = sample_raws.star_field(RA, DEC)
    sample_raws.hsc_raw(raws, RA, DEC, stars)
    sample_raws.decam_raw(raws, RA, DEC, stars)
    sample_raws.euclid_vis(raws, RA, DEC, stars)
    sample_raws.roman_wfi(raws, RA, DEC, stars)
    sample_raws.lsst_raw(raws, RA, DEC, stars)
    dss_fits(raws)
    root = base / "repo"
    with Butler.create(root) as butler:
        assert isinstance(butler, DirectButler)
        outcomes = ingest_raws(butler, [raws], RawIngestOptions())
    assert [o.status for o in outcomes] == ["ingested"] * 6, [o.message for o in outcomes]
    return root


CASES = [
    ("HSC", 17, 0.168),
    ("DECam", 25, 0.263),
    ("VIS", 14, 0.1),
    ("WFI", 7, 0.11),
    ("LSSTCam", 94, 0.2),
]


@pytest.mark.parametrize(("instrument", "detector", "scale"), CASES)
def test_same_sky_region_from_every_instrument(
    repo: Path, instrument: str, detector: int, scale: float
) -> None:
    with Butler(repo) as butler:
        ref = butler.query_datasets(
            "raw", where=f"instrument = '{instrument}' AND detector = {detector}"
        )[0]
        full = butler.get(ref)
        # A point well inside this detector, so the region is not clipped.
        centre = full.wcs.pixel_to_world(full.shape[1] / 2 - 0.3, full.shape[0] / 2 + 0.2)
        size = 4 * u.arcsec
        cut = butler.get(ref, parameters={"sky": (centre.ra, centre.dec, size)})
    # The cutout is centred on the requested position (to within a pixel) ...
    height, width = cut.shape
    middle = cut.wcs.pixel_to_world((width - 1) / 2, (height - 1) / 2)
    assert middle.separation(centre).to_value(u.arcsec) < scale
    # ... and spans the requested size (plus at most a pixel per side, more if rotated).
    assert size.to_value(u.arcsec) / scale <= max(width, height) + 1
    assert max(width, height) <= 1.5 * size.to_value(u.arcsec) / scale + 3
    # Same pixels as the pixel-box read of the full image.
    x0 = int(round(float(cut.wcs.wcs.crpix[0] - full.wcs.wcs.crpix[0]))) * -1
    y0 = int(round(float(cut.wcs.wcs.crpix[1] - full.wcs.wcs.crpix[1]))) * -1
    assert np.array_equal(cut.data, full.data[y0 : y0 + height, x0 : x0 + width])
    assert np.array_equal(cut.variance, full.variance[y0 : y0 + height, x0 : x0 + width])


def test_sky_cutout_reads_header_then_box_rows(repo: Path) -> None:
    with Butler(repo) as butler:
        ref = butler.query_datasets("raw", where="instrument = 'LSSTCam'")[0]
        _, info = butler.resolve(ref)
        path = butler.get_local_path(ref)
    index = info.index
    full = FitsImageFormatter().read(LocalFileSource(path), index)
    centre = full.wcs.pixel_to_world(60, 60)
    source = LocalFileSource(path)
    cut = FitsImageFormatter().read(source, index, parameters={"sky": (centre, 3 * u.arcsec)})
    header = index["hdus"][0]["header_size"]
    # Single-HDU file: its one header (WCS and metadata) once, then the box's rows of
    # float32 pixels; the variance is estimated from those same pixels.
    assert source.bytes_read == header + cut.shape[0] * cut.shape[1] * 4
    assert source.requests == 2
    assert source.bytes_read - header < index["hdus"][0]["data_size"] / 20


def test_real_dss_plate_sky_cutout(tmp_path: Path) -> None:
    path = dss_fits(tmp_path)
    index = index_fits(path)
    full = FitsImageFormatter().read(LocalFileSource(path), index)
    target = full.wcs.pixel_to_world(30, 70)
    cut = FitsImageFormatter().read(
        LocalFileSource(path),
        index,
        parameters={"sky": {"ra": target.ra.deg, "dec": target.dec.deg, "size": 0.01}},
    )
    with fits.open(path) as hdul:
        reference = hdul[0].data
    box = sky_box(full.wcs, full.shape, parse_sky((target.ra.deg, target.dec.deg, 0.01)), "dss")
    assert np.array_equal(cut.data, reference[box.slices])
    assert box.x0 <= 30 < box.x1
    assert box.y0 <= 70 < box.y1


def test_sky_errors(repo: Path, tmp_path: Path) -> None:
    with Butler(repo) as butler:
        ref = butler.query_datasets("raw", where="instrument = 'HSC'")[0]
        with pytest.raises(UnsupportedParameterError, match="does not overlap"):
            butler.get(ref, parameters={"sky": (10.0, -40.0, 1 * u.arcmin)})
        with pytest.raises(UnsupportedParameterError, match="either bbox .* or sky"):
            butler.get(ref, parameters={"sky": (RA, DEC, 0.001), "bbox": Box(0, 0, 2, 2)})
        with pytest.raises(UnsupportedParameterError, match="must be an angle"):
            butler.get(ref, parameters={"sky": (RA, DEC, 5 * u.kg)})
        with pytest.raises(UnsupportedParameterError, match=r"\(ra, dec, size\)"):
            butler.get(ref, parameters={"sky": "M31"})
        with pytest.raises(UnsupportedParameterError, match=r"dec must lie in \[-90, 90\]"):
            butler.get(ref, parameters={"sky": (RA, 95.0, 0.001)})
    path = tmp_path / "nowcs.fits"
    fits.PrimaryHDU(np.zeros((5, 5), np.float32)).writeto(path)
    with pytest.raises(UnsupportedParameterError, match="no celestial WCS"):
        FitsImageFormatter().read(
            LocalFileSource(path), index_fits(path), parameters={"sky": (RA, DEC, 0.01)}
        )


# ---------------------------------------------------------------------------------------
# Plane conversions (pure)


def test_to_variance() -> None:
    sigma = np.array([[1.0, 2.0], [0.5, 0.0]], dtype=np.float32)
    assert to_variance(sigma, "stddev").tolist() == [[1.0, 4.0], [0.25, 0.0]]
    weight = np.array([[4.0, 0.0], [-1.0, 0.5]], dtype=np.float32)
    out = to_variance(weight, "inverse_variance")
    assert out[0, 0] == 0.25
    assert out[1, 1] == 2.0
    assert np.isnan(out[0, 1])
    assert np.isnan(out[1, 0])
    assert out.dtype == np.float32
    assert to_variance(np.array([[3]], dtype=np.int16), "variance").tolist() == [[3.0]]
    with pytest.raises(CorruptFileError, match="unknown variance kind 'sd'"):
        to_variance(sigma, "sd")


def test_estimate_variance() -> None:
    data = np.array([[100.0, 1100.0], [900.0, 5100.0]], dtype=np.float32)
    out = estimate_variance(data, gain=2.0, read_noise=4.0, bias=100.0)
    assert out.tolist() == [[4.0, 504.0], [404.0, 2504.0]]  # (d - b)/g + (rn/g)^2, >= 0
    assert np.isnan(estimate_variance(data, None, 4.0)).all()
    assert estimate_variance(data, 1.0, None).tolist() == data.tolist()


def test_common_mask_bits_and_codes() -> None:
    planes = DEFAULT_MASK_PLANES
    src = np.array([[0, 1 << 8, (1 << 12) | (1 << 2)], [1 << 20, 0, 1]], dtype=np.uint32)
    out = common_mask(src, planes, bits={8: "SAT", 12: "CR", 2: "BAD", 0: "NO_DATA"})
    bit = {name: 1 << b for name, b in planes.items()}
    assert out.tolist() == [
        [0, bit["SAT"], bit["CR"] | bit["BAD"]],
        [bit["SUSPECT"], 0, bit["NO_DATA"]],
    ]
    codes = np.array([[0, 1, 2, 5, 9]], dtype=np.int16)
    out = common_mask(codes, planes, values={1: "BAD", 2: "SAT", 5: "CR"})
    assert out.tolist() == [[0, bit["BAD"], bit["SAT"], bit["CR"], bit["SUSPECT"]]]
    with pytest.raises(CorruptFileError, match="integer flags"):
        common_mask(np.zeros((2, 2), np.float32), planes)


def test_parse_sky_forms() -> None:
    centre, size = parse_sky((10 * u.deg, -5 * u.deg, 30 * u.arcsec))
    assert size.to_value(u.deg) == pytest.approx(30 / 3600)
    assert centre.ra.deg == pytest.approx(10)
    coord = SkyCoord(10 * u.deg, -5 * u.deg)
    assert parse_sky((coord, 0.01))[0].separation(centre).deg < 1e-12
    assert parse_sky({"ra": 10.0, "dec": -5.0, "size": 0.01})[1].to_value(u.deg) == 0.01
    with pytest.raises(UnsupportedParameterError, match=r"size must be in \(0, 180\)"):
        parse_sky((10.0, 0.0, 0.0))
