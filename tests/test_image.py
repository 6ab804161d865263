"""The Image model: defaults, mask planes, conversions to/from CCDData, slicing with WCS."""

from __future__ import annotations

import numpy as np
import pytest
from astropy import units as u
from astropy.io import fits
from astropy.nddata import (
    CCDData,
    InverseVariance,
    NDData,
    StdDevUncertainty,
    VarianceUncertainty,
)
from astropy.wcs import WCS

from butler.errors import StorageClassError, UnsupportedParameterError
from butler.image import DEFAULT_MASK_PLANES, Box, Image, as_box


def make_wcs() -> WCS:
    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    wcs.wcs.crpix = [50.5, 40.5]
    wcs.wcs.crval = [150.1, 2.2]
    wcs.wcs.cd = [[-5e-5, 1e-6], [1e-6, 5e-5]]
    return wcs


def test_defaults() -> None:
    image = Image(np.ones((4, 5), dtype=np.float32))
    assert image.shape == (4, 5)
    assert image.variance.shape == (4, 5)
    assert image.variance.dtype == np.float32
    assert np.isnan(image.variance).all()
    assert isinstance(image.uncertainty, VarianceUncertainty)
    assert image.mask.dtype == np.int32
    assert not image.mask.any()
    assert image.mask_planes == DEFAULT_MASK_PLANES
    assert image.mask_planes["BAD"] == 0
    assert image.mask_planes["NO_DATA"] == 8
    assert image.wcs is None
    assert image.unit is None
    assert isinstance(image.header, fits.Header)
    assert image.header is image.meta


def test_mask_planes() -> None:
    mask = np.zeros((3, 3), dtype=np.int32)
    mask[0, 0] = 1 << DEFAULT_MASK_PLANES["SAT"]
    mask[1, 1] = 1 << DEFAULT_MASK_PLANES["DETECTED"]
    mask[2, 2] = (1 << DEFAULT_MASK_PLANES["SAT"]) | (1 << DEFAULT_MASK_PLANES["CR"])
    image = Image(np.zeros((3, 3)), mask=mask)
    assert image.mask_of("SAT").tolist() == [[True, False, False], [False, False, False]] + [
        [False, False, True]
    ]
    assert image.mask_of("CR", "DETECTED").sum() == 2
    assert image.mask_of().sum() == 3
    with pytest.raises(KeyError, match="No mask plane 'NOPE'.*planes: BAD"):
        image.mask_of("NOPE")
    assert image.add_mask_plane("STREAK") == 9
    assert image.add_mask_plane("STREAK") == 9


def test_invalid_planes_and_shapes() -> None:
    with pytest.raises(StorageClassError, match="both use bit 0"):
        Image(np.zeros((2, 2)), mask_planes={"A": 0, "B": 0})
    with pytest.raises(StorageClassError, match="bits are 0..31"):
        Image(np.zeros((2, 2)), mask_planes={"A": 40})
    with pytest.raises(StorageClassError, match="must be 2-D"):
        Image(np.zeros(5))
    with pytest.raises(StorageClassError, match=r"variance has shape \(3, 3\)"):
        Image(np.zeros((2, 2)), variance=np.zeros((3, 3)))
    with pytest.raises(StorageClassError, match="not a unit astropy understands"):
        Image(np.zeros((2, 2)), unit=u.Unit("FURLONGS_PER_BLOB", parse_strict="silent"))


def test_header_from_mapping() -> None:
    image = Image(np.zeros((2, 2)), header={"EXPTIME": 30.0, "long_key_name": "x"})
    assert image.header["EXPTIME"] == 30.0
    assert image.header["long_key_name"] == "x"
    with pytest.raises(StorageClassError, match="cannot be stored in a FITS header"):
        Image(np.zeros((2, 2)), header={"NESTED": {"a": 1}})


def test_from_ccddata_stddev_and_bool_mask() -> None:
    bad = np.zeros((4, 4), dtype=bool)
    bad[1, 2] = True
    ccd = CCDData(
        np.full((4, 4), 10.0),
        unit="electron",
        uncertainty=StdDevUncertainty(np.full((4, 4), 3.0)),
        mask=bad,
        meta={"OBSERVER": "Hubble"},
        wcs=make_wcs(),
    )
    image = Image.from_nddata(ccd)
    assert np.all(image.variance == 9.0)
    assert image.mask_of("BAD").tolist() == bad.tolist()
    assert image.mask[1, 2] == 1
    assert image.unit == u.electron
    assert image.header["OBSERVER"] == "Hubble"
    assert isinstance(image.wcs, WCS)


def test_from_nddata_inverse_variance() -> None:
    nd = NDData(np.ones((2, 2)), uncertainty=InverseVariance(np.full((2, 2), 4.0)))
    image = Image.from_nddata(nd)
    assert np.allclose(image.variance, 0.25)
    assert image.unit is None


def test_to_ccddata_marks_defects_not_detections() -> None:
    mask = np.zeros((2, 2), dtype=np.int32)
    mask[0, 0] = 1 << DEFAULT_MASK_PLANES["DETECTED"]
    mask[1, 1] = 1 << DEFAULT_MASK_PLANES["CR"]
    image = Image(np.ones((2, 2)), variance=np.full((2, 2), 2.0), mask=mask, unit="adu")
    ccd = image.to_ccddata()
    assert isinstance(ccd, CCDData)
    assert ccd.mask.tolist() == [[False, False], [False, True]]
    assert isinstance(ccd.uncertainty, VarianceUncertainty)
    assert np.all(ccd.uncertainty.array == 2.0)
    assert ccd.unit == u.adu
    assert image.to_ccddata(bad_planes=["DETECTED"]).mask.tolist() == [
        [True, False],
        [False, False],
    ]
    # CCDData needs a unit; a unit-less image becomes dimensionless.
    assert Image(np.ones((1, 1))).to_ccddata().unit == u.dimensionless_unscaled


def test_slicing_keeps_planes_and_shifts_wcs() -> None:
    rng = np.random.default_rng(3)
    data = rng.normal(size=(80, 100)).astype(np.float32)
    variance = rng.random((80, 100)).astype(np.float32)
    mask = rng.integers(0, 4, size=(80, 100)).astype(np.int32)
    planes = {"BAD": 0, "SAT": 1, "MYPLANE": 5}
    image = Image(
        data, variance=variance, mask=mask, mask_planes=planes, wcs=make_wcs(), unit="nJy"
    )
    cut = image[10:30, 20:60]
    assert isinstance(cut, Image)
    assert cut.shape == (20, 40)
    assert np.array_equal(cut.data, data[10:30, 20:60])
    assert np.array_equal(cut.variance, variance[10:30, 20:60])
    assert np.array_equal(cut.mask, mask[10:30, 20:60])
    assert cut.mask_planes == planes
    assert cut.unit == u.nJy
    assert isinstance(cut.wcs, WCS)
    # Pixel (0, 0) of the cutout is pixel (x=20, y=10) of the parent, on the sky too.
    sky_cut = cut.wcs.pixel_to_world(0, 0)
    sky_full = image.wcs.pixel_to_world(20, 10)
    assert sky_cut.separation(sky_full).to_value(u.arcsec) < 1e-9
    assert tuple(cut.wcs.wcs.crpix) == (50.5 - 20, 40.5 - 10)
    # cutout() takes a Box and validates it.
    box_cut = image.cutout(Box(x0=20, y0=10, width=40, height=20))
    assert np.array_equal(box_cut.data, cut.data)
    with pytest.raises(TypeError, match="stays 2-D"):
        image[3, 4]


def test_box_and_as_box() -> None:
    box = Box(x0=3, y0=5, width=10, height=4)
    assert box.slices == (slice(5, 9), slice(3, 13))
    assert (box.x1, box.y1, box.shape) == (13, 9, (4, 10))
    assert as_box(box, (100, 100)) is box
    assert as_box((slice(5, 9), slice(3, 13)), (100, 100)) == box
    assert as_box((slice(None, 9), slice(3, None)), (20, 30)) == Box(3, 0, 27, 9)
    assert as_box({"x0": 3, "y0": 5, "width": 10, "height": 4}, (100, 100)) == box
    with pytest.raises(UnsupportedParameterError, match="does not lie inside the image"):
        as_box(Box(95, 0, 10, 10), (100, 100))
    with pytest.raises(UnsupportedParameterError, match="must be positive"):
        Box(0, 0, 0, 5)
    with pytest.raises(UnsupportedParameterError, match="cannot have a step"):
        as_box((slice(0, 10, 2), slice(0, 10)), (100, 100))
    with pytest.raises(UnsupportedParameterError, match="negative bound"):
        as_box((slice(-5, None), slice(0, 10)), (100, 100))
    with pytest.raises(UnsupportedParameterError, match="must be a butler.image.Box"):
        as_box([1, 2, 3, 4], (100, 100))
    # A ValueError subclass, so generic callers can catch it.
    assert issubclass(UnsupportedParameterError, ValueError)


@pytest.mark.parametrize(
    ("bunit", "unit"),
    [("ADU", u.adu), ("adu", u.adu), ("ADU/S", u.adu / u.s), ("electron", u.electron)],
)
def test_bunit_spellings_cameras_use_are_understood(bunit: str, unit: u.UnitBase) -> None:
    from butler.formatters.fits_image import _parse_unit

    assert _parse_unit(bunit, "test") == unit
