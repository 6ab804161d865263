"""Reads of real FITS files (shipped by astropy) give what astropy gives: memmap, any HDU of a
file, tile-compressed metadata, lazy (dask) reads, and reads too large for memory.

Expected values come from astropy.io.fits reading the same files, never from the butler.
"""

from __future__ import annotations

import asyncio
import json
import math
import subprocess
import sys
import textwrap
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table
from conftest import populate_dimensions
from real_data import fits_test_file
from servers import READ_TOKEN, ButlerServer

from butler import Box, Butler, ButlerError, UnsupportedParameterError
from butler.formatters import fits_image
from butler.remote.async_butler import AsyncButler
from butler.sample_data import synthetic_calexp

HSC = {"instrument": "HSC", "detector": 0}

# visit -> real file, ingested as dataset type "img" (Image, fits-image)
IMAGES = {
    100: "scale.fits",  # int16 PRIMARY, BZERO = 1500, BSCALE = 0.0458
    101: "o4sp040b0_raw.fits",  # HST STIS raw: SCI int16 with BZERO = 32768 (uint16), no IMAGE
    102: "comp.fits",  # RICE_1 tile-compressed int16 440x300 with a WCS
    103: "test0.fits",  # HST WFPC2: four SCI extensions, no IMAGE
    104: "blank.fits",  # int16 with BLANK
    106: "arange.fits",  # a 3-D cube in the PRIMARY HDU (not an Image; reachable with hdu)
}
SYNTHETIC_FLOAT = 105  # float32 in the PRIMARY HDU only, unscaled: memmap-able
COMPRESSED_CUBE = 107  # a tile-compressed 3-D cube and a 1-D spectrum, written by astropy


def _compressed_cube(path: Path) -> Path:
    rng = np.random.default_rng(7)
    cube = rng.integers(0, 5000, size=(5, 24, 36)).astype(np.int32)
    spectrum = (rng.normal(size=300) * 100).astype(np.int16)
    fits.HDUList(
        [
            fits.PrimaryHDU(),
            fits.CompImageHDU(cube, compression_type="RICE_1", name="CUBE"),
            fits.CompImageHDU(spectrum, compression_type="GZIP_1", name="SPEC"),
        ]
    ).writeto(path)
    return path


def _multi_extension_file(path: Path) -> Path:
    """PRIMARY, a table, an image, another table (what an archive's product file holds)."""
    rng = np.random.default_rng(16)
    first = fits.BinTableHDU(Table({"a": np.arange(5), "b": rng.normal(size=5)}), name="CAT1")
    image = fits.ImageHDU(rng.normal(size=(30, 20)).astype(np.float32), name="PIX")
    second = fits.BinTableHDU(Table({"id": np.arange(7) * 3, "flux": np.ones(7)}), name="CAT2")
    second.header["ORIGIN"] = "second table"
    fits.HDUList([fits.PrimaryHDU(), first, image, second]).writeto(path)
    return path


def _float_primary(path: Path, shape: tuple[int, int] = (300, 200)) -> Path:
    data = np.arange(math.prod(shape), dtype=np.float32).reshape(shape) / 7
    fits.PrimaryHDU(data).writeto(path)
    return path


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("real-fits")
    root = base / "repo"
    with Butler.create(root) as butler:
        populate_dimensions(butler)
        butler.register_dataset_type("img", ["visit", "detector"], "Image", "fits-image")
        butler.register_dataset_type("cat", ["visit", "detector"], "Table", "fits-table")
        butler.register_dataset_type("calexp", ["visit", "detector"], "Image", "fits-image")
        butler.register_dataset_type(
            "calexp_z", ["visit", "detector"], "Image", "fits-image-compressed"
        )
    with Butler(root, run="run1") as butler:
        for visit, name in IMAGES.items():
            butler.ingest(fits_test_file(name), "img", HSC, visit=visit)
        butler.ingest(_float_primary(base / "float.fits"), "img", HSC, visit=SYNTHETIC_FLOAT)
        butler.ingest(_compressed_cube(base / "cube_z.fits"), "img", HSC, visit=COMPRESSED_CUBE)
        butler.ingest(fits_test_file("stddata.fits"), "cat", HSC, visit=100)
        butler.ingest(_multi_extension_file(base / "mef.fits"), "cat", HSC, visit=101)
        calexp = synthetic_calexp(size=200)
        calexp.mask[10:90, 5:9] = 1 << calexp.mask_planes["SAT"]
        butler.put(calexp, "calexp", HSC, visit=100)
        butler.put(calexp, "calexp_z", HSC, visit=100)
    return root


@pytest.fixture
def local(repo: Path) -> Iterator[Butler]:
    with Butler(repo) as butler:
        yield butler


@pytest.fixture(scope="module")
def server(repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ButlerServer]:
    srv = ButlerServer(repo, tmp_path_factory.mktemp("server")).start()
    yield srv
    srv.stop()


@pytest.fixture
def remote(server: ButlerServer, tmp_path: Path) -> Iterator[Butler]:
    with Butler(server.url, token=READ_TOKEN, cache_dir=tmp_path / "cache") as butler:
        yield butler


def _astropy_pixels(name: str, ext: int | tuple[str, int]) -> np.ndarray:
    with fits.open(fits_test_file(name)) as hdus:
        return np.array(hdus[ext].data)


def _stored(name: str, ext: int | tuple[str, int]) -> np.ndarray:
    with fits.open(fits_test_file(name), do_not_scale_image_data=True) as hdus:
        return np.array(hdus[ext].data)


# -- memmap ------------------------------------------------------------------------------


@pytest.mark.parametrize(("visit", "ext", "cards"), [(100, 0, "BSCALE"), (101, 1, "BZERO")])
def test_memmap_refuses_scaled_data_and_raw_gives_stored_values(
    local: Butler, visit: int, ext: int, cards: str
) -> None:
    name = IMAGES[visit]
    got = local.get("img", HSC, visit=visit).data
    np.testing.assert_array_equal(got, _astropy_pixels(name, ext))
    with pytest.raises(UnsupportedParameterError, match=cards) as caught:
        local.memmap("img", HSC, visit=visit)
    assert "raw=True" in str(caught.value)
    assert "BZERO" in str(caught.value)
    stored = local.memmap("img", HSC, visit=visit, raw=True)
    np.testing.assert_array_equal(stored, _stored(name, ext))
    assert not np.array_equal(stored, got)  # what memmap used to hand out silently


def test_memmap_default_hdu_is_the_one_get_reads(local: Butler) -> None:
    # WFPC2 has SCI extensions and no IMAGE: get() reads the first SCI, so does memmap.
    mapped = local.memmap("img", HSC, visit=103)
    np.testing.assert_array_equal(mapped, _astropy_pixels("test0.fits", ("SCI", 1)))
    np.testing.assert_array_equal(mapped, local.get("img", HSC, visit=103).data)
    third = local.memmap("img", HSC, visit=103, hdu=3)
    np.testing.assert_array_equal(third, _astropy_pixels("test0.fits", ("SCI", 3)))
    with pytest.raises(UnsupportedParameterError, match="compimage"):
        local.memmap("img", HSC, visit=102)


def test_remote_memmap_fetches_only_that_hdus_data_bytes(
    local: Butler, remote: Butler, server: ButlerServer
) -> None:
    info = local.get_file_info("img", HSC, visit=103)
    sci = info.hdu(1)
    expected = _astropy_pixels("test0.fits", ("SCI", 1))
    assert expected.nbytes == 40 * 40 * 2 < info.size / 4
    mark = server.mark()
    mapped = remote.memmap("img", HSC, visit=103, hdu=1)
    np.testing.assert_array_equal(mapped, expected)
    assert server.file_bytes_sent(mark) == sci["data_size"] == expected.nbytes
    # Cached: a second map sends nothing.
    mark = server.mark()
    again = remote.memmap("img", HSC, visit=103)
    np.testing.assert_array_equal(again, expected)
    assert server.file_bytes_sent(mark) == 0
    with pytest.raises(UnsupportedParameterError, match="BZERO"):
        remote.memmap("img", HSC, visit=101)


# -- any HDU of a file -------------------------------------------------------------------


@pytest.mark.parametrize(("visit", "name", "hdu"), [(100, "stddata.fits", 2), (101, None, "CAT2")])
def test_hdu_parameter_reads_any_table_extension_and_only_its_bytes(
    local: Butler, repo: Path, visit: int, name: str | None, hdu: int | str
) -> None:
    info = local.get_file_info("cat", HSC, visit=visit)
    path = fits_test_file(name) if name else repo / info.path
    expected = Table.read(path, hdu=hdu, character_as_bytes=False)
    local.io_stats.reset()
    got = local.get("cat", HSC, visit=visit, parameters={"hdu": hdu})
    entry = info.hdu(hdu)
    assert local.io_stats.bytes_read == entry["header_size"] + entry["data_size"]
    assert got.colnames == expected.colnames
    assert len(got) == len(expected) > 0
    for column in expected.colnames:
        np.testing.assert_array_equal(np.asarray(got[column]), np.asarray(expected[column]))
    # The default is still the first table, which differs from the one selected.
    assert local.get("cat", HSC, visit=visit).colnames != got.colnames or visit == 100


def test_hdu_parameter_image_extension_and_metadata_of_tables(local: Butler, repo: Path) -> None:
    info = local.get_file_info("cat", HSC, visit=101)
    with fits.open(repo / info.path) as hdus:
        pixels = np.array(hdus["PIX"].data)
        cat2 = hdus["CAT2"].header.copy()
        cat1 = hdus[1].header.copy()
    got = local.get("cat", HSC, visit=101, parameters={"hdu": "PIX"})
    np.testing.assert_array_equal(got, pixels)
    cut = local.get("cat", HSC, visit=101, parameters={"hdu": "pix", "bbox": Box(2, 3, 5, 4)})
    np.testing.assert_array_equal(cut, pixels[3:7, 2:7])
    metadata = local.get("cat.metadata", HSC, visit=101)
    assert metadata["EXTNAME"] == cat1["EXTNAME"] == "CAT1"
    assert metadata["TTYPE2"] == cat1["TTYPE2"]
    second = local.get("cat.metadata", HSC, visit=101, parameters={"hdu": "CAT2"})
    assert second["ORIGIN"] == cat2["ORIGIN"] == "second table"
    # An image dataset's extensions, by (EXTNAME, EXTVER).
    sci3 = local.get("img", HSC, visit=103, parameters={"hdu": ("SCI", 3)})
    np.testing.assert_array_equal(sci3, _astropy_pixels("test0.fits", ("SCI", 3)))
    cube = local.get("img", HSC, visit=106, parameters={"hdu": 0})
    np.testing.assert_array_equal(cube, _astropy_pixels("arange.fits", 0))
    assert cube.shape == (7, 10, 11)
    with pytest.raises(UnsupportedParameterError, match=r"no HDU 'NOPE'.*1:SCI"):
        local.get("img", HSC, visit=103, parameters={"hdu": "NOPE"})
    with pytest.raises(UnsupportedParameterError, match="holds no pixels"):
        local.get("img", HSC, visit=101, parameters={"hdu": "ERR"})


@pytest.mark.parametrize("where", ["local", "remote"])
def test_tile_compressed_cubes_and_spectra_are_read_whole_with_hdu(
    local: Butler, remote: Butler, repo: Path, where: str
) -> None:
    """Not 2-D, so no cutouts: read whole, as astropy reads them (they were refused, while
    an uncompressed cube was read)."""
    butler = local if where == "local" else remote
    path = repo / local.get_file_info("img", HSC, visit=COMPRESSED_CUBE).path
    with fits.open(path) as hdus:
        expected = {name: np.array(hdus[name].data) for name in ("CUBE", "SPEC")}
    for name, pixels in expected.items():
        got = butler.get("img", HSC, visit=COMPRESSED_CUBE, parameters={"hdu": name})
        assert got.shape == pixels.shape
        assert got.dtype == pixels.dtype
        np.testing.assert_array_equal(got, pixels)
    with pytest.raises(UnsupportedParameterError, match=r"shape \[5, 24, 36\]; 'lazy' is 2-D"):
        butler.get("img", HSC, visit=COMPRESSED_CUBE, parameters={"hdu": "CUBE", "lazy": True})


def test_compressed_image_metadata_is_the_image_header(local: Butler, remote: Butler) -> None:
    with fits.open(fits_test_file("comp.fits")) as hdus:
        expected = hdus[1].header.copy()
    assert "ZIMAGE" not in expected
    for butler in (local, remote):
        metadata = butler.get("img.metadata", HSC, visit=102)
        for key in ("NAXIS1", "NAXIS2", "CRVAL1", "CRVAL2", "CTYPE1", "CTYPE2", "CDELT1"):
            assert metadata[key] == expected[key], key
        assert "ZIMAGE" not in metadata
        assert "TFORM1" not in metadata
        assert butler.get("img", HSC, visit=102).header["CTYPE1"] == expected["CTYPE1"]


# -- lazy reads --------------------------------------------------------------------------


@pytest.mark.parametrize("visit", [100, 101, 102, 103, 104, SYNTHETIC_FLOAT])
def test_lazy_read_gives_dask_planes_with_get_values(
    local: Butler, remote: Butler, visit: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    import dask.array as da

    # Small chunks, so every file is read in several bands (tile rows for comp.fits).
    monkeypatch.setattr(fits_image, "LAZY_CHUNK_BYTES", 200)
    full = local.get("img", HSC, visit=visit)
    if visit in IMAGES:
        ext = {100: 0, 101: 1, 102: 1, 103: 1, 104: 0}[visit]
        np.testing.assert_array_equal(full.data, _astropy_pixels(IMAGES[visit], ext))
    info = local.get_file_info("img", HSC, visit=visit)
    image_hdu = 0 if visit in (100, 104, SYNTHETIC_FLOAT) else 1
    headers = info.hdu(0)["header_size"] + (image_hdu and info.hdu(image_hdu)["header_size"])
    for butler in (local, remote):
        butler.io_stats.reset()
        lazy = butler.get("img", HSC, visit=visit, parameters={"lazy": True})
        assert isinstance(lazy.data, da.Array)
        assert isinstance(lazy.variance, da.Array)
        # Headers now, in one request; no pixel yet.
        assert (butler.io_stats.bytes_read, butler.io_stats.requests) == (headers, 1)
        assert len(lazy.data.chunks[0]) > 1 or full.data.shape[0] == 1
        data = np.asarray(lazy.data)  # computes the dask array
        assert data.dtype == full.data.dtype
        np.testing.assert_array_equal(data, full.data)
        np.testing.assert_array_equal(np.asarray(lazy.variance), full.variance)
        np.testing.assert_array_equal(np.asarray(lazy.mask), full.mask)
        assert lazy.header == full.header
        box = Box(0, 0, min(3, full.shape[1]), 1)
        part = butler.get("img", HSC, visit=visit, parameters={"lazy": True, "bbox": box})
        np.testing.assert_array_equal(np.asarray(part.data), full.data[box.slices])


@pytest.mark.parametrize("dataset_type", ["calexp", "calexp_z"])
def test_lazy_read_of_the_lsst_layout_plain_and_compressed(
    local: Butler, remote: Butler, dataset_type: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(fits_image, "LAZY_CHUNK_BYTES", 200 * 4 * 70)
    full = local.get(dataset_type, HSC, visit=100)
    assert full.mask.any()
    for butler in (local, remote):
        lazy = butler.get(dataset_type, HSC, visit=100, parameters={"lazy": True})
        assert lazy.data.numblocks[0] > 1
        np.testing.assert_array_equal(np.asarray(lazy.data), full.data)
        np.testing.assert_array_equal(np.asarray(lazy.variance), full.variance)
        np.testing.assert_array_equal(np.asarray(lazy.mask), full.mask)
        assert lazy.mask_planes == full.mask_planes
        assert lazy.wcs.to_header_string() == full.wcs.to_header_string()
        assert lazy.header == full.header
        plane = butler.get(f"{dataset_type}.variance", HSC, visit=100, parameters={"lazy": True})
        np.testing.assert_array_equal(np.asarray(plane), full.variance)


def test_lazy_remote_read_fetches_chunks_by_range(
    local: Butler, remote: Butler, server: ButlerServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(fits_image, "LAZY_CHUNK_BYTES", 200 * 4 * 50)
    info = local.get_file_info("img", HSC, visit=SYNTHETIC_FLOAT)
    lazy = remote.get("img", HSC, visit=SYNTHETIC_FLOAT, parameters={"lazy": True})
    assert lazy.data.numblocks == (6, 1)
    mark = server.mark()
    total = float(lazy.data.sum().compute())
    requests = server.file_requests(mark)
    assert len(requests) == 6
    assert server.file_bytes_sent(mark) == info.hdu(0)["data_size"] == 300 * 200 * 4
    assert total == pytest.approx(float(_float_data().sum(dtype=np.float64)), rel=1e-6)


@pytest.mark.timeout(60)
async def test_lazy_async_compute_inside_the_loop_is_refused_not_hung(
    server: ButlerServer, tmp_path: Path
) -> None:
    async with AsyncButler(
        server.url, token=READ_TOKEN, collections="run1", cache_dir=tmp_path / "c"
    ) as butler:
        lazy = await butler.get("img", HSC, visit=SYNTHETIC_FLOAT, parameters={"lazy": True})
        # Blocking the loop in compute() would starve the reads it waits for: refused.
        with pytest.raises(ButlerError, match=r"asyncio.to_thread"):
            lazy.data.sum().compute()
        # Computed in a thread, the loop fetches the bands.
        total = await asyncio.to_thread(lambda: float(lazy.data.sum(dtype="float64").compute()))
    assert total == pytest.approx(float(_float_data().sum(dtype=np.float64)), rel=1e-9)


def _float_data() -> np.ndarray:
    return np.arange(300 * 200, dtype=np.float32).reshape(300, 200) / 7


# -- larger than memory ------------------------------------------------------------------

_LIMITED_READ = textwrap.dedent(
    """
    import json, resource, sys
    import dask.array  # imported before the limit, as a program would have it
    from butler import Butler
    kwargs = json.loads(sys.argv[2])
    butler = Butler(sys.argv[1], **kwargs)
    data_id = {"instrument": "HSC", "detector": 0, "visit": 100}
    butler.get("big.wcs", data_id)  # modules imported, connections open, before the limit
    with open("/proc/self/status") as status:
        vm = next(int(line.split()[1]) for line in status if line.startswith("VmSize:"))
    limit = vm * 1024 + int(sys.argv[3])
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    try:
        butler.get("big", data_id)
    except MemoryError as exc:
        outcome = {"type": type(exc).__name__, "message": str(exc)}
    else:
        outcome = {"type": None, "message": ""}
    # What the message advises works under the same limit.
    lazy = butler.get("big", data_id, parameters={"lazy": True})
    outcome["lazy_sum"] = float(lazy.data.sum(dtype="float64").compute(scheduler="sync"))
    butler.close()
    print(json.dumps(outcome))
    """
)


@pytest.fixture(scope="module")
def big_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 64 MiB float32 image (PRIMARY only), written without holding it in memory."""
    base = tmp_path_factory.mktemp("big")
    path = base / "big.fits"
    header = fits.Header(
        [("SIMPLE", True), ("BITPIX", -32), ("NAXIS", 2), ("NAXIS1", 4096), ("NAXIS2", 4096)]
    )
    with path.open("wb") as out:
        out.write(header.tostring().encode("ascii"))
        row = np.ones(4096, dtype=">f4").tobytes()
        for _ in range(4096):
            out.write(row)
        out.write(b"\0" * (-out.tell() % 2880))
    root = base / "repo"
    with Butler.create(root) as butler:
        populate_dimensions(butler)
        butler.register_dataset_type("big", ["visit", "detector"], "Image", "fits-image")
    with Butler(root, run="run1") as butler:
        butler.ingest(path, "big", {**HSC, "visit": 100}, transfer="move")
    return root


def _limited_read(target: str, kwargs: Mapping[str, object], headroom: int) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-c", _LIMITED_READ, target, json.dumps(kwargs), str(headroom)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


@pytest.mark.parametrize("where", ["local", "remote"])
def test_read_too_large_for_memory_says_how_large_and_what_to_do(
    big_repo: Path, tmp_path_factory: pytest.TempPathFactory, where: str
) -> None:
    # Room for a lazy read's bands in flight (a remote band is copied a few times on its way:
    # response, join, scaling), not for the 192 MiB of a whole read.
    headroom = 128 * 2**20
    if where == "local":
        result = _limited_read(str(big_repo), {}, headroom)
    else:
        srv = ButlerServer(big_repo, tmp_path_factory.mktemp("big-server")).start()
        try:
            kwargs = {"token": READ_TOKEN, "cache_dir": str(tmp_path_factory.mktemp("c"))}
            result = _limited_read(srv.url, kwargs, headroom)
        finally:
            srv.stop()
    assert result["type"] == "MemoryError", result
    message = result["message"]
    # 4096 x 4096 float32 image + float32 variance + int32 mask: 192 MiB (4 B x 3 a pixel).
    for needed in ("[4096, 4096]", "192 MiB", "'lazy': True", "bbox"):
        assert needed in message, message
    assert result["lazy_sum"] == 4096 * 4096  # every pixel is 1.0
