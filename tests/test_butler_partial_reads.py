"""Partial reads through the Butler on a local repository, counted in bytes actually read."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from astropy.table import Table

from butler import Box, Butler, CorruptFileError, Image
from butler.sample_data import load_image, real_images, synthetic_calexp

HSC = {"instrument": "HSC"}


@pytest.fixture
def calexp_butler(butler: Butler) -> Butler:
    butler.register_dataset_type(
        "calexp_z", ["visit", "detector"], "Image", "fits-image-compressed"
    )
    image = synthetic_calexp(size=1024)
    butler.put(image, "calexp", HSC, visit=100, detector=0)
    butler.put(image, "calexp_z", HSC, visit=100, detector=0)
    return butler


def test_metadata_and_wcs_read_only_header_bytes(calexp_butler: Butler) -> None:
    butler = calexp_butler
    info = butler.get_file_info("calexp", HSC, visit=100, detector=0)
    butler.io_stats.reset()
    header = butler.get("calexp.metadata", HSC, visit=100, detector=0)
    assert header["INSTRUME"] == "LSSTCam-like"
    primary = info.hdu(0)
    assert butler.io_stats.bytes_read == primary["header_size"]
    assert butler.io_stats.requests == 1
    butler.io_stats.reset()
    wcs = butler.get("calexp.wcs", HSC, visit=100, detector=0)
    assert butler.io_stats.bytes_read == info.hdu("IMAGE")["header_size"]
    sky = wcs.pixel_to_world(512, 512)
    assert sky.ra.deg == pytest.approx(150.1, abs=1e-3)


def test_bbox_reads_only_needed_rows_and_tiles(calexp_butler: Butler) -> None:
    butler = calexp_butler
    full: Image = butler.get("calexp", HSC, visit=100, detector=0)
    box = Box(x0=300, y0=400, width=100, height=100)
    for dataset_type in ("calexp", "calexp_z"):
        size = butler.get_file_info(dataset_type, HSC, visit=100, detector=0).size
        butler.io_stats.reset()
        cut: Image = butler.get(dataset_type, HSC, visit=100, detector=0, parameters={"bbox": box})
        np.testing.assert_array_equal(cut.data, full.data[400:500, 300:400])
        np.testing.assert_array_equal(cut.variance, full.variance[400:500, 300:400])
        np.testing.assert_array_equal(cut.mask, full.mask[400:500, 300:400])
        # Same sky position for the same pixel, so the cutout's WCS was shifted.
        assert (
            cut.wcs.pixel_to_world(0, 0).separation(full.wcs.pixel_to_world(300, 400)).arcsec < 1e-6
        )
        assert butler.io_stats.bytes_read < size / 20, dataset_type
    butler.io_stats.reset()
    pixels = butler.get("calexp.image", HSC, visit=100, detector=0, parameters={"bbox": box})
    np.testing.assert_array_equal(pixels, full.data[400:500, 300:400])
    # 100 rows of 100 float32 pixels, and nothing else: the header offsets come from the index.
    assert butler.io_stats.bytes_read == 100 * 100 * 4
    assert butler.io_stats.requests == 1


def test_memmap_one_hdu_through_the_offset_index(calexp_butler: Butler) -> None:
    butler = calexp_butler
    full: Image = butler.get("calexp", HSC, visit=100, detector=0)
    mapped = butler.memmap("calexp", HSC, visit=100, detector=0, hdu="VARIANCE")
    assert isinstance(mapped, np.memmap)
    np.testing.assert_array_equal(mapped, full.variance)
    info = butler.get_file_info("calexp", HSC, visit=100, detector=0)
    path = butler.get_local_path("calexp", HSC, visit=100, detector=0)
    image_hdu = info.hdu("IMAGE")
    manual = np.memmap(
        path,
        dtype=image_hdu["dtype"],
        mode="r",
        offset=image_hdu["data_offset"],
        shape=tuple(image_hdu["shape"]),
    )
    np.testing.assert_array_equal(manual, full.data)


def test_parquet_columns_read_only_their_chunks(butler: Butler) -> None:
    rng = np.random.default_rng(3)
    n = 100_000
    table = Table({"id": np.arange(n), "flux": rng.normal(size=n), "ra": rng.uniform(size=n)})
    butler.put(table, "src", HSC, visit=101, detector=1)
    size = butler.get_file_info("src", HSC, visit=101, detector=1).size
    butler.io_stats.reset()
    got = butler.get("src", HSC, visit=101, detector=1, parameters={"columns": ["flux"]})
    assert got.colnames == ["flux"]
    np.testing.assert_array_equal(got["flux"], table["flux"])
    assert butler.io_stats.bytes_read < size / 2


def test_parquet_table_metadata_reads_only_the_footer(butler: Butler) -> None:
    """A Table's ``metadata`` component: its ``meta`` keywords (what a FITS table keeps in
    its header), from the Parquet footer alone."""
    table = Table({"id": np.arange(50_000), "flux": np.linspace(0.0, 1.0, 50_000)})
    table.meta.update({"TELESCOP": "Subaru", "EXPTIME": 30.0, "HISTORY": ["made", "here"]})
    butler.put(table, "src", HSC, visit=102, detector=1)
    info = butler.get_file_info("src", HSC, visit=102, detector=1)
    butler.io_stats.reset()
    meta = butler.get("src.metadata", HSC, visit=102, detector=1)
    assert meta == {"TELESCOP": "Subaru", "EXPTIME": 30.0, "HISTORY": ["made", "here"]}
    assert butler.io_stats.bytes_read == info.index["footer_size"] + 8
    assert butler.io_stats.bytes_read < info.size / 20


@pytest.mark.parametrize("sample", real_images(), ids=lambda s: s.label)
def test_real_telescope_images_round_trip(butler: Butler, sample) -> None:
    butler.insert_dimension_records("instrument", {"name": sample.instrument}, skip_existing=True)
    butler.insert_dimension_records("band", {"name": sample.band}, skip_existing=True)
    butler.insert_dimension_records(
        "physical_filter",
        {"instrument": sample.instrument, "name": sample.physical_filter, "band": sample.band},
        skip_existing=True,
    )
    butler.insert_dimension_records(
        "detector", {"instrument": sample.instrument, "id": sample.detector}, skip_existing=True
    )
    butler.insert_dimension_records(
        "visit",
        {
            "instrument": sample.instrument,
            "id": sample.visit,
            "physical_filter": sample.physical_filter,
        },
        skip_existing=True,
    )
    image = load_image(sample)
    data_id = {"instrument": sample.instrument, "visit": sample.visit, "detector": sample.detector}
    ref = butler.put(image, "calexp", data_id)
    assert ref.data_id["band"] == sample.band
    got: Image = butler.get("calexp", data_id)
    np.testing.assert_array_equal(got.data, image.data)
    assert np.isnan(got.variance).all()  # real raw files carry no variance
    assert not got.mask.any()
    # Every sample carries a celestial WCS but WFPC2 chip 1, whose header has none.
    assert (image.wcs is None) == (sample.label == "HST WFPC2 chip 1")
    assert (got.wcs is None) == (image.wcs is None)
    if image.wcs is not None:
        np.testing.assert_allclose(
            got.wcs.all_pix2world([[5, 7]], 0), image.wcs.all_pix2world([[5, 7]], 0)
        )
    metadata = butler.get("calexp.metadata", data_id)
    assert metadata["TELESCOP"] == image.header["TELESCOP"]


def test_ingest_refuses_broken_fits_and_writes_nothing(butler: Butler, tmp_path: Path) -> None:
    good = tmp_path / "good.fits"
    image = synthetic_calexp(size=64)
    butler.put(image, "calexp", HSC, visit=100, detector=0)
    shutil.copyfile(butler.get_local_path("calexp", HSC, visit=100, detector=0), good)
    truncated = tmp_path / "truncated.fits"
    truncated.write_bytes(good.read_bytes()[:-5000])
    garbage = tmp_path / "garbage.fits"
    garbage.write_bytes(b"this is not FITS at all" * 200)
    for bad in (truncated, garbage):
        with pytest.raises(CorruptFileError, match=bad.name):
            butler.ingest(bad, "calexp", HSC, visit=101, detector=0)
    assert len(butler.query_datasets("calexp")) == 1
    assert not (butler.root / "run1" / "calexp" / "HSC" / "0" / "101").exists()
    ref = butler.ingest(good, "calexp", HSC, visit=101, detector=0)
    np.testing.assert_array_equal(butler.get(ref).data, image.data)
    assert good.exists()  # copy is the default transfer


def test_reading_a_damaged_file_is_a_clear_error(butler: Butler) -> None:
    ref = butler.put(synthetic_calexp(size=64), "calexp", HSC, visit=100, detector=0)
    path = butler.get_local_path(ref)
    path.write_bytes(path.read_bytes()[:3000])
    with pytest.raises(CorruptFileError):
        butler.get(ref)
    assert not butler.exists(ref)
    assert [r for r, _ in butler.verify()] == [ref]
