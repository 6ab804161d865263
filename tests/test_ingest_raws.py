"""``butler ingest-raws`` and reading what it ingested: one image model for every layout.

Each instrument's planes are checked against the source file read with astropy (the
conversion the docs promise: sigma squared, inverse variance inverted, flags renamed), and
each component's bytes against the stored file's layout.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from astropy import units as u
from astropy.io import fits
from astropy.wcs import WCS
from click.testing import CliRunner
from real_data import dss_fits, hst_wfpc2

from butler import Butler, Image, sample_raws
from butler.cli.main import main
from butler.direct_butler import DirectButler
from butler.image import DEFAULT_MASK_PLANES
from butler.ingest import RawIngestOptions, ingest_raws
from butler.translators import MissingHeaderKeysError

RA, DEC = 150.0, 2.2


def planes(*names: str) -> int:
    value = 0
    for name in names:
        value |= 1 << DEFAULT_MASK_PLANES[name]
    return value


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    Butler.create(root).close()
    return root


@pytest.fixture(scope="module")
def stars() -> list[sample_raws.Star]:
    return sample_raws.star_field(RA, DEC)


def ingest(repo: Path, *paths: Path, **options: Any) -> list[Any]:
    with Butler(repo, writeable=True) as butler:
        assert isinstance(butler, DirectButler)
        return ingest_raws(butler, list(paths), RawIngestOptions(**options))


def get(repo: Path, instrument: str, detector: int, **kwargs: Any) -> Any:
    with Butler(repo) as butler:
        ref = butler.query_datasets(
            "raw", where=f"instrument = '{instrument}' AND detector = {detector}"
        )[0]
        return butler.get(ref, **kwargs)


# ---------------------------------------------------------------------------------------
# The command


def test_cli_reports_each_file_and_keeps_going(
    repo: Path, tmp_path: Path, stars: list[sample_raws.Star]
) -> None:
    raws = tmp_path / "raws"
    raws.mkdir()
    shutil.copy(hst_wfpc2(), raws / "wfpc2.fits")
    sample_raws.gmos_reduced(raws, RA, DEC, stars)
    (raws / "broken.fits").write_bytes(b"not a fits file at all")
    fits.PrimaryHDU(np.zeros((3, 3), np.float32)).writeto(raws / "anonymous.fits")
    result = CliRunner().invoke(main, ["ingest-raws", str(repo), str(raws)])
    assert result.exit_code == 1, result.output
    lines = [line for line in result.output.strip().splitlines() if not line.startswith(" WARNING")]
    assert len(lines) == 5  # one per file, then the summary
    by_file = {line.split()[1].rstrip(":").rsplit("/", 1)[-1]: line for line in lines[:4]}
    # test0.fits has no RA_TARG/DEC_TARG: null pointing, said under the file's line.
    assert f" WARNING {raws / 'wfpc2.fits'}: tracking_ra/tracking_dec: no RA_TARG" in result.output
    assert by_file["wfpc2.fits"].split()[0] == "INGESTED"
    assert "detector(s) 1, 2, 3, 4, F673N" in by_file["wfpc2.fits"]
    assert by_file["S20190312S0042_reduced.fits"].split()[0] == "INGESTED"
    assert by_file["broken.fits"].split()[0] == "FAILED"
    assert "not a FITS file" in by_file["broken.fits"]
    assert "needs header keys INSTRUME (or TELESCOP, ORIGIN)" in by_file["anonymous.fits"]
    assert lines[-1] == "2 ingested, 0 skipped, 2 failed (4 files; 1 with warnings)"
    with Butler(repo) as butler:
        assert len(butler.query_datasets("raw", find_first=False)) == 4 + 3
        exposure = butler.query_dimension_records("exposure", "instrument = 'GMOS-S'")[0]
    assert exposure["physical_filter"] == "r_G0326"
    assert exposure["exposure_time"] == 60.0
    assert exposure["datetime_begin"] == "2019-03-12T03:04:05.600"
    assert exposure["day_obs"] == 20190311
    # A second run finds everything ingested already and changes nothing.
    again = CliRunner().invoke(main, ["ingest-raws", str(repo), str(raws / "wfpc2.fits")])
    assert again.exit_code == 0, again.output
    assert "SKIPPED" in again.output
    assert "already ingested" in again.output


def test_fail_fast_stops_at_the_first_failure(repo: Path, tmp_path: Path) -> None:
    raws = tmp_path / "raws"
    raws.mkdir()
    (raws / "a_broken.fits").write_bytes(b"junk")
    shutil.copy(hst_wfpc2(), raws / "b_wfpc2.fits")
    result = CliRunner().invoke(main, ["ingest-raws", str(repo), str(raws), "--fail-fast"])
    assert result.exit_code == 1
    assert "not a FITS file" in result.output
    assert "Traceback" not in result.output
    with Butler(repo) as butler:
        assert butler.dataset_types() == []  # nothing after the failure was touched


def test_cli_lists_translators_and_refuses_unknown_names(repo: Path) -> None:
    result = CliRunner().invoke(main, ["ingest-raws", str(repo), ".", "--list-translators"])
    assert result.exit_code == 0
    for name in ("astro-metadata-translator", "HST", "GMOS", "IRAC", "VIS", "WFI", "generic"):
        assert f"{name}: " in result.output
    bad = CliRunner().invoke(
        main, ["ingest-raws", str(repo), str(hst_wfpc2()), "--instrument", "NOPE"]
    )
    assert bad.exit_code == 1
    assert "no translator called 'NOPE'" in bad.output


def test_run_option_and_forced_instrument(repo: Path, tmp_path: Path) -> None:
    outcomes = ingest(repo, dss_fits(tmp_path), instrument="generic", run="plates")
    assert outcomes[0].status == "ingested"
    assert outcomes[0].refs[0].run == "plates"
    with pytest.raises(MissingHeaderKeysError, match="HST translator needs header keys"):
        ingest(repo, dss_fits(tmp_path), instrument="HST", fail_fast=True)


# ---------------------------------------------------------------------------------------
# Transfers


def _datastore_path(repo: Path, instrument: str) -> Path:
    with Butler(repo) as butler:
        return butler.get_local_path(
            "raw", instrument=instrument, detector=94, exposure=2025120100042
        )


@pytest.mark.parametrize("transfer", ["copy", "link", "symlink", "move", "direct"])
def test_transfers(
    repo: Path, tmp_path: Path, stars: list[sample_raws.Star], transfer: str
) -> None:
    source = sample_raws.lsst_raw(tmp_path, RA, DEC, stars)
    original = source.read_bytes()
    inode = source.stat().st_ino
    (outcome,) = ingest(repo, source, transfer=transfer)
    assert outcome.status == "ingested", outcome.message
    stored = _datastore_path(repo, "LSSTCam")
    assert stored.read_bytes() == original
    if transfer == "copy":
        assert source.exists()
        assert stored.stat().st_ino != inode
    elif transfer == "link":
        assert stored.stat().st_ino == inode
    elif transfer == "symlink":
        assert stored.is_symlink()
        assert Path(os.readlink(stored)) == source.resolve()
    elif transfer == "move":
        assert not source.exists()
    else:  # direct: the registry points at the file where it is
        assert stored == source.resolve()
        with Butler(repo, writeable=True) as butler:
            assert butler.remove(butler.query_datasets("raw", find_first=False)) == 1
        assert source.exists()  # removing the dataset leaves the user's file alone


def test_direct_transfer_of_a_multi_detector_file_copies_per_detector(
    repo: Path, tmp_path: Path, stars: list[sample_raws.Star]
) -> None:
    source = sample_raws.decam_raw(tmp_path, RA, DEC, stars)
    (outcome,) = ingest(repo, source, transfer="direct")
    assert outcome.status == "ingested"
    assert "copied into one file each" in outcome.message
    assert len(outcome.refs) == 2
    assert source.exists()


# ---------------------------------------------------------------------------------------
# One image model from every layout


def test_gmos_variance_and_dq(repo: Path, tmp_path: Path, stars: list[sample_raws.Star]) -> None:
    path = sample_raws.gmos_reduced(tmp_path, RA, DEC, stars)
    ingest(repo, path)
    image = get(repo, "GMOS-S", 2)
    assert isinstance(image, Image)
    with fits.open(path) as hdul:
        assert np.array_equal(image.data, hdul["SCI", 2].data)
        assert np.array_equal(image.variance, hdul["VAR", 2].data)
        dq = hdul["DQ", 2].data
    assert image.mask_planes == DEFAULT_MASK_PLANES
    assert image.mask[10, 10] == planes("SAT")
    assert (image.mask[:, 0] == planes("NO_DATA")).all()
    assert int(np.count_nonzero(image.mask)) == int(np.count_nonzero(dq))
    assert image.unit == u.electron
    assert image.header["DATALAB"] == "GS-2019A-Q-1-2-042"


def test_irac_separate_files_become_one_image(repo: Path, tmp_path: Path) -> None:
    path = sample_raws.irac_bcd(tmp_path)
    outcomes = ingest(repo, tmp_path)
    assert [o.status for o in outcomes] == ["ingested", "skipped", "skipped"]
    image = get(repo, "IRAC", 1)
    bunc = fits.getdata(path.with_name(path.name.replace("_bcd", "_bunc")))
    assert np.allclose(image.variance, np.square(bunc.astype(np.float64)), rtol=1e-6)
    assert image.mask[3, 4] == planes("CR")
    assert image.mask[5, 6] == planes("SAT")
    assert image.mask[7, 8] == planes("SUSPECT")  # an unnamed source bit is kept, as SUSPECT
    assert int(np.count_nonzero(image.mask)) == 3
    assert image.unit == u.MJy / u.sr
    assert image.wcs.sip is not None  # TAN-SIP distortion of the real header
    reference = WCS(fits.getheader(path))
    assert np.allclose(
        image.wcs.pixel_to_world_values(10, 200), reference.pixel_to_world_values(10, 200)
    )


def test_irac_without_companions_estimates_variance(repo: Path, tmp_path: Path) -> None:
    path = sample_raws.irac_bcd(tmp_path, with_companions=False)
    ingest(repo, path)
    image = get(repo, "IRAC", 1)
    gain = 3.3 * 26.8 / 0.111
    expected = np.clip(image.data.astype(np.float64), 0, None) / gain
    assert np.allclose(image.variance, expected, rtol=1e-5, atol=1e-12)
    assert not image.mask.any()


def test_decam_community_pipeline_weights_and_codes(
    repo: Path, tmp_path: Path, stars: list[sample_raws.Star]
) -> None:
    ooi, oow, _ = sample_raws.decam_community_pipeline(tmp_path, RA, DEC, stars)
    outcomes = ingest(repo, tmp_path)
    assert sorted(o.status for o in outcomes) == ["ingested", "skipped", "skipped"]
    image = get(repo, "DECam", 26)
    weight = fits.getdata(oow, 2)
    assert np.isnan(image.variance[0]).all()  # weight 0: no data
    assert np.allclose(image.variance[1:], 1.0 / weight[1:])
    assert image.mask[0, 3] == planes("BAD")
    assert image.mask[5, 5] == planes("SAT")
    assert image.mask[6, 6] == planes("CR")
    assert image.mask[7, 7] == planes("SUSPECT")  # code 9 is not in the table
    assert np.array_equal(image.data, fits.getdata(ooi, 2))


def test_decam_raw_tpv_wcs_and_estimated_variance(
    repo: Path, tmp_path: Path, stars: list[sample_raws.Star]
) -> None:
    path = sample_raws.decam_raw(tmp_path, RA, DEC, stars)
    ingest(repo, path)
    image = get(repo, "DECam", 25)
    header = fits.getheader(path, 1)
    reference = WCS(header)
    undistorted = header.copy()
    for key in [k for k in undistorted if k.startswith("PV")]:
        del undistorted[key]
    undistorted["CTYPE1"], undistorted["CTYPE2"] = "RA---TAN", "DEC--TAN"
    for x, y in [(0, 0), (99, 119), (50, 60)]:
        ours = np.array(image.wcs.pixel_to_world_values(x, y))
        assert np.allclose(ours, reference.pixel_to_world_values(x, y), rtol=0, atol=1e-10)
    # The TPV terms matter here (~0.5 pixel at the corner), so they were applied.
    corner = np.array(image.wcs.pixel_to_world_values(0, 0))
    assert np.abs(corner - np.array(WCS(undistorted).pixel_to_world_values(0, 0))).max() > 2e-5
    gain, noise = 4.1, 6.1
    expected = (
        np.clip(fits.getdata(path, 1).astype(np.float64), 0, None) / gain + (noise / gain) ** 2
    )
    assert np.allclose(image.variance, expected, rtol=1e-6)
    assert image.header["EXPNUM"] == 229388
    assert image.header["CCDNUM"] == 25


def test_euclid_and_roman_sigma_planes(
    repo: Path, tmp_path: Path, stars: list[sample_raws.Star]
) -> None:
    euclid = sample_raws.euclid_vis(tmp_path, RA, DEC, stars)
    roman = sample_raws.roman_wfi(tmp_path, RA, DEC, stars)
    ingest(repo, euclid, roman)
    vis = get(repo, "VIS", 15)
    with fits.open(euclid) as hdul:
        assert np.allclose(vis.variance, np.square(hdul["3-4.RMS"].data.astype(np.float64)))
    assert (vis.mask[0] == planes("EDGE")).all()
    assert vis.mask[9, 9] == planes("CR")
    assert vis.unit == u.electron
    wfi = get(repo, "WFI", 7)
    assert wfi.mask[2, 3] == planes("CR")
    assert wfi.mask[4, 5] == planes("SAT")
    assert wfi.unit == u.Unit("DN/s")
    err = fits.getdata(roman, "ERR").astype(np.float64)
    assert np.allclose(wfi.variance, err**2)


def test_real_hst_files_read_the_same_way(repo: Path) -> None:
    ingest(repo, hst_wfpc2())
    image = get(repo, "WFPC2", 3)
    with fits.open(hst_wfpc2()) as hdul:
        assert np.array_equal(image.data, hdul["SCI", 3].data)
    expected = np.clip(image.data.astype(np.float64), 0, None) / 7.0
    assert np.allclose(image.variance, expected, rtol=1e-6)  # ATODGAIN = 7, no read noise
    assert image.mask_planes == DEFAULT_MASK_PLANES
    assert not image.mask.any()
    assert image.wcs is not None
    assert image.wcs.has_celestial


def test_obsinfo_component(repo: Path, tmp_path: Path, stars: list[sample_raws.Star]) -> None:
    ingest(repo, sample_raws.hsc_raw(tmp_path, RA, DEC, stars))
    with Butler(repo) as butler:
        butler.io_stats.reset()
        info = butler.get("raw.obsinfo", instrument="HSC", exposure=12340, detector=17)
        assert butler.io_stats.bytes_read == 0  # recorded in the offset index at ingest
    assert info["physical_filter"] == "HSC-R2"
    assert info["band"] == "r"
    assert info["translator"] == "HSC (astro-metadata-translator)"


# ---------------------------------------------------------------------------------------
# Components read only their own bytes


def test_components_of_an_assembled_file_read_only_their_bytes(
    repo: Path, tmp_path: Path, stars: list[sample_raws.Star]
) -> None:
    ingest(repo, sample_raws.gmos_reduced(tmp_path, RA, DEC, stars))
    with Butler(repo) as butler:
        ref = butler.query_datasets("raw", where="detector = 1")[0]
        _, info = butler.resolve(ref)
        hdus = info.index["hdus"]
        assert [h["name"] for h in hdus] == ["PRIMARY", "SCI", "VARIANCE", "DQ"]
        expected = {
            "metadata": hdus[0]["header_size"],
            "wcs": hdus[1]["header_size"],
            "image": hdus[1]["data_size"],
            "variance": hdus[2]["data_size"],
            "mask": hdus[3]["data_size"],
            "obsinfo": 0,
        }
        for component, size in expected.items():
            butler.io_stats.reset()
            butler.get(ref.make_component_ref(component))
            assert butler.io_stats.bytes_read == size, component


def test_estimated_variance_reads_the_image_bytes_only(
    repo: Path, tmp_path: Path, stars: list[sample_raws.Star]
) -> None:
    ingest(repo, sample_raws.hsc_raw(tmp_path, RA, DEC, stars))
    with Butler(repo) as butler:
        ref = butler.query_datasets("raw")[0]
        _, info = butler.resolve(ref)
        butler.io_stats.reset()
        variance = butler.get(ref.make_component_ref("variance"))
        assert butler.io_stats.bytes_read == 200 * 160 * 2  # the uint16 pixels, nothing else
    assert variance.shape == (200, 160)
    assert np.isfinite(variance).all()


def test_hst_flt_err_and_dq_bits(repo: Path, tmp_path: Path) -> None:
    """An ACS flt with the real ACS primary header and SCI/ERR/DQ planes of one chip."""
    from butler.sample_data import astropy_file

    with fits.open(astropy_file("wcs/tests/data/j94f05bgq_flt.fits")) as hdul:
        primary = hdul[0].header.copy()
        sci_header = hdul["SCI", 1].header.copy()
    rng = np.random.default_rng(0)
    sci = rng.normal(100, 10, (20, 30)).astype(np.float32)
    err = np.full((20, 30), 3.0, dtype=np.float32)
    dq = np.zeros((20, 30), dtype=np.int16)
    dq[1, 2] = 256  # full-well saturation
    dq[3, 4] = 4096 | 16  # cosmic ray on a hot pixel
    dq[5, 6] = -32768  # bit 15: not in the HST table
    path = tmp_path / "j94f05bgq_flt.fits"
    fits.HDUList(
        [
            fits.PrimaryHDU(header=primary),
            fits.ImageHDU(sci, header=sci_header, name="SCI"),
            fits.ImageHDU(err, name="ERR"),
            fits.ImageHDU(dq, name="DQ"),
        ]
    ).writeto(path)
    (outcome,) = ingest(repo, path)
    assert outcome.status == "ingested", outcome.message
    image = get(repo, "ACS", 2)  # SCI,1 of ACS/WFC is chip 2
    assert np.array_equal(image.data, sci)
    assert (image.variance == 9.0).all()
    assert image.mask[1, 2] == planes("SAT")
    assert image.mask[3, 4] == planes("CR", "BAD")
    assert image.mask[5, 6] == planes("SUSPECT")
    assert int(np.count_nonzero(image.mask)) == 3
    assert image.unit == u.electron
    assert image.wcs.sip is not None


def test_move_of_a_multi_detector_file_removes_it_after_commit(
    repo: Path, tmp_path: Path, stars: list[sample_raws.Star]
) -> None:
    source = sample_raws.decam_raw(tmp_path, RA, DEC, stars)
    (outcome,) = ingest(repo, source, transfer="move")
    assert len(outcome.refs) == 2
    assert not source.exists()
    assert get(repo, "DECam", 26).shape == (120, 100)


def test_gmos_raw_amplifiers_estimate_variance(repo: Path, tmp_path: Path) -> None:
    """Archived GMOS raws: unnamed amplifier extensions with their own GAIN and RDNOISE."""
    primary = fits.Header()
    for key, value in {
        "INSTRUME": "GMOS-N",
        "TELESCOP": "Gemini-North",
        "ORIGNAME": "N20190101S0123.fits",
        "DATE-OBS": "2019-01-01",
        "TIME-OBS": "10:11:12",
        "EXPTIME": 30.0,
        "FILTER1": "g_G0301",
        "FILTER2": "open2-8",
    }.items():
        primary[key] = value
    amps = []
    for gain, noise in ((2.0, 4.0), (2.5, 5.0)):
        header = fits.Header([("GAIN", gain), ("RDNOISE", noise)])
        amps.append(fits.ImageHDU(np.full((6, 4), 1000 + 100 * gain, np.uint16), header=header))
    path = tmp_path / "N20190101S0123.fits"
    fits.HDUList([fits.PrimaryHDU(header=primary), *amps]).writeto(path)
    (outcome,) = ingest(repo, path)
    assert outcome.status == "ingested", outcome.message
    first, second = get(repo, "GMOS-N", 1), get(repo, "GMOS-N", 2)
    assert np.allclose(first.variance, 1200 / 2.0 + (4.0 / 2.0) ** 2)
    assert np.allclose(second.variance, 1250 / 2.5 + (5.0 / 2.5) ** 2)
    with Butler(repo) as butler:
        (exposure,) = butler.query_dimension_records("exposure", "instrument = 'GMOS-N'")
    assert exposure["id"] == 1_2019_0101_0123
    assert exposure["physical_filter"] == "g_G0301"


def test_every_file_of_a_directory_is_reported(repo: Path, tmp_path: Path) -> None:
    """Plain, gzip, bzip2, tile-compressed, misnamed, non-FITS, broken and truncated files:
    each is named on one status line, and the counts add up to the files found."""
    import bz2
    import gzip

    from real_data import dss_gz

    from butler.sample_data import astropy_file

    raws = tmp_path / "mixed"
    raws.mkdir()
    shutil.copy(hst_wfpc2(), raws / "wfpc2.fits")
    shutil.copy(dss_gz(), raws / "dss.fits.gz")
    sip = astropy_file("nddata/tests/data/sip-wcs.fits").read_bytes()
    (raws / "sip-again.dat").write_bytes(gzip.compress(sip))  # FITS by content, not name
    eso = astropy_file("io/fits/tests/data/fixed-1890.fits").read_bytes()
    (raws / "eso.fits.bz2").write_bytes(bz2.compress(eso))
    header = fits.Header({"INSTRUME": "TILECAM", "DATE-OBS": "2020-01-02T03:04:05"})
    header["EXPTIME"] = 5.0
    pixels = np.arange(64 * 48, dtype=np.int16).reshape(64, 48)
    fits.HDUList([fits.PrimaryHDU(), fits.CompImageHDU(pixels, header)]).writeto(
        raws / "tile.fits.fz"
    )
    (raws / "notes.txt").write_text("observing log\n")
    (raws / "broken.fits").write_bytes(b"not a fits file at all")
    (raws / "cut.fits.gz").write_bytes(gzip.compress(sip)[:500])
    files = sorted(p.name for p in raws.iterdir())
    assert len(files) == 8

    result = CliRunner().invoke(main, ["ingest-raws", str(repo), str(raws)])
    assert result.exit_code == 1, result.output  # two failed
    status_lines = [line for line in result.output.splitlines() if line.split()[0] in STATUSES]
    by_file = {Path(line.split()[1].rstrip(":")).name: line for line in status_lines}
    assert len(status_lines) == len(files)
    assert sorted(by_file) == files
    status = {name: line.split()[0] for name, line in by_file.items()}
    assert status == {
        "wfpc2.fits": "INGESTED",
        "dss.fits.gz": "INGESTED",
        "sip-again.dat": "INGESTED",
        "eso.fits.bz2": "INGESTED",
        "tile.fits.fz": "INGESTED",
        "notes.txt": "SKIPPED",
        "broken.fits": "FAILED",
        "cut.fits.gz": "FAILED",
    }
    assert "bzip2-compressed file: stored decompressed" in by_file["eso.fits.bz2"]
    assert "not a FITS file" in by_file["notes.txt"]
    assert "not a FITS file" in by_file["broken.fits"]
    assert "cannot decompress this gzip file" in by_file["cut.fits.gz"]
    assert "gzip-compressed file: stored decompressed" in by_file["dss.fits.gz"]
    assert "gzip-compressed file: stored decompressed" in by_file["sip-again.dat"]
    assert result.output.splitlines()[-1].startswith("5 ingested, 1 skipped, 2 failed (8 files;")
    with Butler(repo) as butler:
        ref = butler.query_datasets("raw", where="instrument = 'UK 48-inch Schmidt'")[0]
        image = butler.get(ref)
        _, info = butler.resolve(ref)
    assert str(info.path).endswith(".fits")
    with fits.open(dss_gz()) as hdul:
        assert np.array_equal(image.data, hdul[0].data)


STATUSES = ("INGESTED", "SKIPPED", "FAILED")


def test_move_of_a_compressed_file_removes_it(repo: Path, tmp_path: Path) -> None:
    from real_data import dss_gz

    path = Path(shutil.copy(dss_gz(), tmp_path / "dss.fits.gz"))
    (outcome,) = ingest(repo, path, transfer="move")
    assert outcome.status == "ingested", outcome.message
    assert not path.exists()
