"""FITS offset index and byte-exact partial reads, counted through LocalFileSource.

Every partial read is checked twice: the values against astropy reading the whole file, and
the bytes fetched (``bytes_read``, ``requests``) against what the file layout says is needed.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from astropy import units as u
from astropy.io import fits
from astropy.wcs import WCS
from real_data import dss_fits, dss_gz, hst_stis_raw, hst_wfpc2, tile_compressed

from butler.errors import CorruptFileError, UnsupportedParameterError
from butler.formatters.fits_image import CompressedFitsImageFormatter, FitsImageFormatter
from butler.formatters.fits_index import index_fits, read_header
from butler.image import Box, Image
from butler.io.source import LocalFileSource

# ---------------------------------------------------------------------------------------
# Fixtures


def sky_wcs(crpix: tuple[float, float] = (2048.5, 2048.5)) -> WCS:
    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    wcs.wcs.crpix = list(crpix)
    wcs.wcs.crval = [53.1, -27.8]
    wcs.wcs.cd = [[-5.5e-5, 0.0], [0.0, 5.5e-5]]
    return wcs


@pytest.fixture(scope="module")
def big_image_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Image]:
    """A 4096x4096 float32 LSST-layout image (IMAGE, MASK, VARIANCE: 192 MiB of pixels)."""
    rng = np.random.default_rng(42)
    shape = (4096, 4096)
    data = rng.standard_normal(shape, dtype=np.float32)
    mask = (rng.random(shape) < 0.01).astype(np.int32) * 4
    variance = np.full(shape, 2.5, dtype=np.float32)
    header = fits.Header()
    header["EXPTIME"] = (30.0, "exposure time [s]")
    header["FILTER"] = "r"
    image = Image(data, variance=variance, mask=mask, wcs=sky_wcs(), unit="nJy", header=header)
    path = tmp_path_factory.mktemp("big") / "calexp.fits"
    FitsImageFormatter().write(image, path)
    return path, image


def smooth_image(shape: tuple[int, int], seed: int = 1) -> Image:
    """An image that compresses like a real one: smooth sky, sources, a few masked pixels."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0 : shape[0], 0 : shape[1]]
    data = (100 + 0.01 * x + 20 * np.exp(-((x - 300) ** 2 + (y - 200) ** 2) / 50.0)).astype(
        np.float32
    )
    data += rng.normal(0, 1, size=shape).astype(np.float32)
    mask = np.zeros(shape, dtype=np.int32)
    mask[200:210, 295:305] = 1 << 5
    mask[::97, ::89] |= 1
    variance = np.abs(data).astype(np.float32)
    variance[0, 0] = np.nan
    return Image(data, variance=variance, mask=mask, wcs=sky_wcs((300.0, 200.0)), unit="adu")


# ---------------------------------------------------------------------------------------
# The index


@pytest.mark.parametrize("path", [hst_stis_raw(), hst_wfpc2(), tile_compressed()])
def test_index_matches_astropy_fileinfo(path: Path) -> None:
    index = index_fits(path)
    assert index["format"] == "fits"
    assert index["size"] == path.stat().st_size
    with fits.open(path) as hdul:
        assert len(index["hdus"]) == len(hdul)
        for i, entry in enumerate(index["hdus"]):
            info = hdul.fileinfo(i)
            assert entry["index"] == i
            assert entry["header_offset"] == info["hdrLoc"]
            assert entry["data_offset"] == info["datLoc"]
            assert entry["header_size"] == info["datLoc"] - info["hdrLoc"]
            assert entry["data_size"] <= info["datSpan"] < entry["data_size"] + 2880


def test_index_describes_images_tables_and_tiles() -> None:
    stis = index_fits(hst_stis_raw())["hdus"]
    assert [(h["name"], h["ver"], h["kind"]) for h in stis[:3]] == [
        ("PRIMARY", 1, "primary"),
        ("SCI", 1, "image"),
        ("ERR", 1, "image"),
    ]
    assert stis[1]["shape"] == [44, 62]
    assert stis[1]["dtype"] == ">i2"
    assert stis[1]["bzero"] == 32768
    assert "bscale" not in stis[1]
    assert stis[2]["shape"] == []  # HST's empty ERR extension
    comp = index_fits(tile_compressed())["hdus"][1]
    assert comp["kind"] == "compimage"
    assert comp["shape"] == [300, 440]
    assert comp["dtype"] == ">i2"
    assert comp["tile_shape"] == [1, 440]
    assert comp["zcmptype"] == "RICE_1"
    assert comp["zsettings"] == {"BLOCKSIZE": 32, "BYTEPIX": 2}
    assert (comp["naxis1"], comp["naxis2"], comp["theap"]) == (8, 300, 2400)
    assert comp["columns"][0]["name"] == "COMPRESSED_DATA"
    assert comp["columns"][0]["code"] == "P"


def test_read_header_is_one_range(big_image_file: tuple[Path, Image]) -> None:
    path, _ = big_image_file
    index = index_fits(path)
    source = LocalFileSource(path)
    header = read_header(source, index["hdus"][1])
    assert header["EXTNAME"] == "IMAGE"
    assert source.requests == 1
    assert source.bytes_read == index["hdus"][1]["header_size"]


def test_truncated_data_is_corrupt(tmp_path: Path) -> None:
    path = tmp_path / "img.fits"
    FitsImageFormatter().write(smooth_image((50, 60)), path)
    full = index_fits(path)
    last = full["hdus"][-1]
    cut = last["data_offset"] + 100
    with path.open("r+b") as f:
        f.truncate(cut)
    with pytest.raises(CorruptFileError, match=r"HDU 3 \(VARIANCE\) data ends at byte") as err:
        index_fits(path)
    assert f"but the file has {cut} bytes; the file is truncated" in str(err.value)
    assert str(path) in str(err.value)


def test_truncated_header_and_non_fits(tmp_path: Path) -> None:
    path = tmp_path / "img.fits"
    FitsImageFormatter().write(smooth_image((50, 60)), path)
    second = index_fits(path)["hdus"][1]["header_offset"]
    with path.open("r+b") as f:
        f.truncate(second + 1000)
    with pytest.raises(CorruptFileError, match="HDU 1 .* has no END card .* truncated"):
        index_fits(path)
    junk = tmp_path / "junk.fits"
    junk.write_bytes(b"hello, this is not FITS" * 200)
    with pytest.raises(CorruptFileError, match="not a FITS file"):
        index_fits(junk)
    with pytest.raises(CorruptFileError, match="gzip-compressed; decompress it"):
        index_fits(dss_gz())


def test_index_outdated_by_truncation_is_refused_on_read(tmp_path: Path) -> None:
    path = tmp_path / "img.fits"
    FitsImageFormatter().write(smooth_image((50, 60)), path)
    index = index_fits(path)
    with path.open("r+b") as f:
        f.truncate(index["hdus"][2]["data_offset"])
    with pytest.raises(CorruptFileError, match="lies outside the file"):
        FitsImageFormatter().read(LocalFileSource(path), index)


# ---------------------------------------------------------------------------------------
# Uncompressed partial reads


def test_metadata_reads_only_the_primary_header(big_image_file: tuple[Path, Image]) -> None:
    path, image = big_image_file
    index = index_fits(path)
    source = LocalFileSource(path)
    metadata = FitsImageFormatter().read(source, index, component="metadata")
    assert metadata["EXPTIME"] == 30.0
    assert metadata.comments["EXPTIME"] == "exposure time [s]"
    assert "NAXIS" not in metadata
    assert source.requests == 1
    assert source.bytes_read == index["hdus"][0]["header_size"] == 2880


def test_wcs_reads_only_the_image_header(big_image_file: tuple[Path, Image]) -> None:
    path, image = big_image_file
    index = index_fits(path)
    source = LocalFileSource(path)
    wcs = FitsImageFormatter().read(source, index, component="wcs")
    assert source.requests == 1
    assert source.bytes_read == index["hdus"][1]["header_size"]
    assert np.allclose(wcs.wcs.crpix, image.wcs.wcs.crpix)
    source = LocalFileSource(path)
    box = Box(x0=1000, y0=3000, width=64, height=32)
    cut_wcs = FitsImageFormatter().read(source, index, component="wcs", parameters={"bbox": box})
    assert source.bytes_read == index["hdus"][1]["header_size"]
    sky = cut_wcs.pixel_to_world(5, 7)
    assert sky.separation(image.wcs.pixel_to_world(1005, 3007)).to_value(u.arcsec) < 1e-9


def test_bbox_of_4k_image_reads_only_box_rows(big_image_file: tuple[Path, Image]) -> None:
    path, image = big_image_file
    index = index_fits(path)
    box = Box(x0=1234, y0=2345, width=100, height=100)
    fmt = FitsImageFormatter()

    source = LocalFileSource(path)
    pixels = fmt.read(source, index, component="image", parameters={"bbox": box})
    assert np.array_equal(pixels, image.data[box.slices])
    assert source.requests == 1  # one read_ranges call: 100 row ranges
    assert source.bytes_read == 100 * 100 * 4 == 40_000
    assert source.bytes_read < 100 * 1024

    # The whole Image: three planes' rows plus the three headers it needs, still one call.
    source = LocalFileSource(path)
    cut = fmt.read(source, index, parameters={"bbox": box})
    headers = sum(index["hdus"][i]["header_size"] for i in (0, 1, 2))
    assert source.requests == 1
    assert source.bytes_read == 3 * 40_000 + headers == 128_640
    assert np.array_equal(cut.data, image.data[box.slices])
    assert np.array_equal(cut.mask, image.mask[box.slices])
    assert np.array_equal(cut.variance, image.variance[box.slices])
    assert cut.header["FILTER"] == "r"
    assert cut.unit == u.nJy
    sky = cut.wcs.pixel_to_world(0, 0)
    assert sky.separation(image.wcs.pixel_to_world(box.x0, box.y0)).to_value(u.arcsec) < 1e-9


def test_full_width_bbox_is_one_contiguous_range(big_image_file: tuple[Path, Image]) -> None:
    path, image = big_image_file
    index = index_fits(path)
    source = LocalFileSource(path)
    rows = (slice(100, 104), slice(None))
    pixels = FitsImageFormatter().read(
        source, index, component="variance", parameters={"bbox": rows}
    )
    assert pixels.shape == (4, 4096)
    assert source.requests == 1
    assert source.bytes_read == 4 * 4096 * 4


def test_bbox_outside_image_is_refused(big_image_file: tuple[Path, Image]) -> None:
    path, _ = big_image_file
    with pytest.raises(UnsupportedParameterError, match="does not lie inside the image"):
        FitsImageFormatter().read(
            LocalFileSource(path), index_fits(path), parameters={"bbox": Box(4000, 0, 200, 10)}
        )


# ---------------------------------------------------------------------------------------
# Tile-compressed partial reads


def _tile_bytes(path: Path, hdu_index: int, rows: list[int]) -> tuple[int, int]:
    """(descriptor bytes, compressed tile bytes) of tile ``rows``, according to astropy."""
    with fits.open(path, disable_image_compression=True) as hdul:
        table = hdul[hdu_index]
        column = table.data.field("COMPRESSED_DATA")
        heap = sum(len(column[r]) * column[r].dtype.itemsize for r in rows)
        return len(rows) * table.header["NAXIS1"], heap


def test_compressed_bbox_reads_only_intersecting_tiles(tmp_path: Path) -> None:
    image = smooth_image((512, 700))
    path = tmp_path / "calexp.fits"
    CompressedFitsImageFormatter().write(image, path)
    index = index_fits(path)
    assert [h["kind"] for h in index["hdus"]] == ["primary"] + ["compimage"] * 3
    assert index["hdus"][1]["tile_shape"] == [64, 64]
    box = Box(x0=150, y0=100, width=100, height=50)  # tiles x 2..3, y 1..2: 4 tiles
    tiles_x = math.ceil(700 / 64)
    rows = [ty * tiles_x + tx for ty in (1, 2) for tx in (2, 3)]

    source = LocalFileSource(path)
    pixels = CompressedFitsImageFormatter().read(
        source, index, component="image", parameters={"bbox": box}
    )
    assert np.array_equal(pixels, image.data[box.slices])
    descriptors, heap = _tile_bytes(path, 1, rows)
    assert source.requests == 2  # tile descriptors, then the tiles' compressed bytes
    assert source.bytes_read == descriptors + heap
    whole_hdu = index["hdus"][1]["data_size"]
    assert source.bytes_read < whole_hdu / 10

    # All three planes (and the headers for WCS, unit, plane names) in the same two calls.
    source = LocalFileSource(path)
    cut = CompressedFitsImageFormatter().read(source, index, parameters={"bbox": box})
    expected = sum(index["hdus"][i]["header_size"] for i in (0, 1, 2))
    for hdu in (1, 2, 3):
        expected += sum(_tile_bytes(path, hdu, rows))
    assert source.requests == 2
    assert source.bytes_read == expected
    assert np.array_equal(cut.mask, image.mask[box.slices])
    assert np.array_equal(cut.variance, image.variance[box.slices], equal_nan=True)
    assert cut.mask_planes == image.mask_planes
    sky = cut.wcs.pixel_to_world(0, 0)
    assert sky.separation(image.wcs.pixel_to_world(150, 100)).to_value(u.arcsec) < 1e-9


def test_compressed_round_trip_is_lossless_and_matches_astropy(tmp_path: Path) -> None:
    image = smooth_image((300, 200), seed=7)
    path = tmp_path / "calexp.fits"
    CompressedFitsImageFormatter().write(image, path)
    back = CompressedFitsImageFormatter().read(LocalFileSource(path), index_fits(path))
    assert np.array_equal(back.data, image.data)
    assert np.array_equal(back.mask, image.mask)
    assert np.array_equal(back.variance, image.variance, equal_nan=True)
    hdus = index_fits(path)["hdus"]
    assert [h["zcmptype"] for h in hdus[1:]] == ["GZIP_2", "RICE_1", "GZIP_2"]
    assert all("zquantiz" not in h for h in hdus[1:])  # no quantisation: lossless
    with fits.open(path) as hdul:
        assert np.array_equal(hdul["IMAGE"].data, back.data)
        assert np.array_equal(hdul["VARIANCE"].data, back.variance, equal_nan=True)


def test_quantized_compressed_file_decodes_like_astropy(tmp_path: Path) -> None:
    """A lossy (quantised, dithered) file as other pipelines write them: our tile decoder
    must reproduce astropy's decompression exactly, including ZSCALE/ZZERO/ZBLANK columns."""
    rng = np.random.default_rng(5)
    data = rng.normal(1000, 10, size=(256, 300)).astype(np.float32)
    data[17, 33] = np.nan
    hdu = fits.CompImageHDU(
        data,
        name="IMAGE",
        compression_type="RICE_1",
        quantize_level=16.0,
        quantize_method=1,  # SUBTRACTIVE_DITHER_1
        tile_shape=(32, 100),
    )
    path = tmp_path / "quantized.fits"
    fits.HDUList([fits.PrimaryHDU(), hdu]).writeto(path)
    index = index_fits(path)
    assert index["hdus"][1]["zquantiz"] == "SUBTRACTIVE_DITHER_1"
    with fits.open(path) as hdul:
        reference = np.array(hdul[1].data)
    fmt = CompressedFitsImageFormatter()
    full = fmt.read(LocalFileSource(path), index, component="image")
    assert np.array_equal(full, reference, equal_nan=True)
    box = Box(x0=90, y0=20, width=30, height=40)  # tiles x 0..1, y 0..1
    source = LocalFileSource(path)
    cut = fmt.read(source, index, component="image", parameters={"bbox": box})
    assert np.array_equal(cut, reference[box.slices], equal_nan=True)
    assert np.isnan(full[17, 33])
    rows = [0, 1, 3, 4]  # 3 tiles per tile-row of 300 columns
    descriptors, heap = _tile_bytes(path, 1, rows)
    assert source.bytes_read == descriptors + heap


# ---------------------------------------------------------------------------------------
# Real telescope files


def test_hst_stis_raw() -> None:
    path = hst_stis_raw()
    index = index_fits(path)
    source = LocalFileSource(path)
    image = FitsImageFormatter().read(source, index)
    with fits.open(path) as hdul:
        reference = hdul["SCI", 1].data
        assert np.array_equal(image.data, reference)
        assert image.data.dtype == reference.dtype == np.uint16  # BZERO = 32768
        assert image.header["TELESCOP"] == hdul[0].header["TELESCOP"] == "HST"
    # ERR and DQ are empty (NAXIS = 0) in raw files: unknown variance, clean mask.
    assert np.isnan(image.variance).all()
    assert not image.mask.any()
    assert image.unit == u.count  # BUNIT = 'COUNTS'
    assert source.requests == 1
    sci = index["hdus"][1]
    assert source.bytes_read == (
        index["hdus"][0]["header_size"] + sci["header_size"] + sci["data_size"]
    )
    # A cutout of the spectrum's rows.
    source = LocalFileSource(path)
    cut = FitsImageFormatter().read(source, index, parameters={"bbox": Box(10, 5, 30, 8)})
    assert np.array_equal(cut.data, reference[5:13, 10:40])
    assert source.bytes_read == index["hdus"][0]["header_size"] + sci["header_size"] + 8 * 60


def test_hst_wfpc2_cutout_with_wcs() -> None:
    path = hst_wfpc2()
    index = index_fits(path)
    full = FitsImageFormatter().read(LocalFileSource(path), index)
    with fits.open(path) as hdul:
        assert np.array_equal(full.data, hdul["SCI", 1].data)
    source = LocalFileSource(path)
    box = Box(x0=5, y0=10, width=20, height=15)
    pixels = FitsImageFormatter().read(source, index, component="image", parameters={"bbox": box})
    assert np.array_equal(pixels, full.data[box.slices])
    assert source.bytes_read == 15 * 20 * 2
    cut_wcs = FitsImageFormatter().read(
        LocalFileSource(path), index, component="wcs", parameters={"bbox": box}
    )
    assert np.allclose(cut_wcs.pixel_to_world_values(0, 0), full.wcs.pixel_to_world_values(5, 10))


def test_real_tile_compressed_cutout() -> None:
    path = tile_compressed()
    index = index_fits(path)
    with fits.open(path) as hdul:
        reference = np.array(hdul[1].data)
        header = hdul[1].header
    box = Box(x0=200, y0=120, width=50, height=30)
    source = LocalFileSource(path)
    cut = FitsImageFormatter().read(source, index, parameters={"bbox": box})
    assert np.array_equal(cut.data, reference[box.slices])
    # One row per tile (ZTILE2 = 1): the 30 descriptor rows and their 30 tiles only.
    descriptors, heap = _tile_bytes(path, 1, list(range(120, 150)))
    headers = index["hdus"][0]["header_size"] + index["hdus"][1]["header_size"]
    assert source.bytes_read == headers + descriptors + heap
    assert source.requests == 2
    full_wcs = WCS(header)
    assert np.allclose(
        cut.wcs.pixel_to_world_values(0, 0), full_wcs.pixel_to_world_values(200, 120)
    )


def test_dss_primary_image(tmp_path: Path) -> None:
    path = dss_fits(tmp_path)
    index = index_fits(path)
    assert index["hdus"][0]["shape"] == [100, 100]
    image = FitsImageFormatter().read(LocalFileSource(path), index)
    with fits.open(path) as hdul:
        assert np.array_equal(image.data, hdul[0].data)
        assert image.header["PLTLABEL"] == hdul[0].header["PLTLABEL"]
    source = LocalFileSource(path)
    box = Box(40, 40, 10, 10)
    pixels = FitsImageFormatter().read(source, index, component="image", parameters={"bbox": box})
    assert np.array_equal(pixels, image.data[box.slices])
    assert source.bytes_read == 10 * 10 * 2


def test_reading_without_a_recorded_index(tmp_path: Path) -> None:
    """A file recorded without an index (e.g. ingested by an old client) is still readable:
    the headers are scanned through the same source."""
    path = tmp_path / "img.fits"
    image = smooth_image((64, 80))
    FitsImageFormatter().write(image, path)
    back = FitsImageFormatter().read(
        LocalFileSource(path), {}, parameters={"bbox": Box(1, 2, 3, 4)}
    )
    assert np.array_equal(back.data, image.data[2:6, 1:4])
