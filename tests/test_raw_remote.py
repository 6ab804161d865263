"""Ingested raws read the same through ``butler serve`` and RemoteButler: the layout travels
in the offset index, so the client's formatter does the conversions and the sky cutout."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from astropy import units as u
from real_data import hst_wfpc2
from servers import READ_TOKEN, ButlerServer

from butler import Butler, sample_raws
from butler.direct_butler import DirectButler
from butler.ingest import RawIngestOptions, ingest_raws

RA, DEC = 150.0, 2.2


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("remote-raws")
    stars = sample_raws.star_field(RA, DEC)
    sample_raws.gmos_reduced(base, RA, DEC, stars)
    sample_raws.irac_bcd(base)
    root = base / "repo"
    with Butler.create(root) as butler:
        assert isinstance(butler, DirectButler)
        outcomes = ingest_raws(butler, [base, hst_wfpc2()], RawIngestOptions())
    assert sorted(o.status for o in outcomes) == ["ingested"] * 3 + ["skipped"] * 2
    return root


@pytest.fixture(scope="module")
def server(repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ButlerServer]:
    srv = ButlerServer(repo, tmp_path_factory.mktemp("server")).start()
    yield srv
    srv.stop()


@pytest.fixture
def remote(server: ButlerServer, tmp_path: Path) -> Iterator[Butler]:
    with Butler(server.url, token=READ_TOKEN, cache_dir=tmp_path / "cache") as butler:
        yield butler


@pytest.mark.parametrize(("instrument", "detector"), [("GMOS-S", 2), ("IRAC", 1), ("WFPC2", 3)])
def test_remote_raw_is_the_local_image(
    repo: Path, remote: Butler, instrument: str, detector: int
) -> None:
    where = f"instrument = '{instrument}' AND detector = {detector}"
    with Butler(repo) as local:
        expected = local.get(local.query_datasets("raw", where=where)[0])
    got = remote.get(remote.query_datasets("raw", where=where)[0])
    assert type(got) is type(expected)
    assert np.array_equal(got.data, expected.data)
    assert np.array_equal(got.variance, expected.variance, equal_nan=True)
    assert np.array_equal(got.mask, expected.mask)
    assert got.mask_planes == expected.mask_planes
    assert got.unit == expected.unit
    assert got.wcs.to_header_string(relax=True) == expected.wcs.to_header_string(relax=True)


def test_remote_sky_cutout_reads_the_same_bytes(repo: Path, remote: Butler) -> None:
    where = "instrument = 'IRAC'"
    with Butler(repo) as local:
        ref = local.query_datasets("raw", where=where)[0]
        full = local.get(ref)
        centre = full.wcs.pixel_to_world(128, 100)
        local.io_stats.reset()
        expected = local.get(ref, parameters={"sky": (centre.ra, centre.dec, 20 * u.arcsec)})
        local_bytes = local.io_stats.bytes_read
    remote_ref = remote.query_datasets("raw", where=where)[0]
    remote.io_stats.reset()
    got = remote.get(remote_ref, parameters={"sky": (centre.ra, centre.dec, 20 * u.arcsec)})
    assert np.array_equal(got.data, expected.data)
    assert np.array_equal(got.variance, expected.variance)
    assert np.array_equal(got.mask, expected.mask)
    # 20" at IRAC's 1.2"/pixel is 17 pixels; the frame is rotated on the sky, so the box
    # around the square region is wider, by at most sqrt(2).
    assert min(got.shape) >= 17
    assert max(got.shape) <= 17 * 1.42 + 2
    assert remote.io_stats.bytes_read == local_bytes
    # The image header (for the WCS), the metadata header, then the box of each plane:
    # float32 image, float32 sigma (squared on read), int16 mask.
    _, info = remote.resolve(remote_ref)
    hdus = info.index["hdus"]
    headers = sum(h["header_size"] for h in hdus[:2])
    height, width = got.shape
    assert local_bytes == headers + height * width * (4 + 4 + 2)
    obsinfo = remote.get("raw.obsinfo", instrument="IRAC", detector=1, exposure=393779200110000)
    assert obsinfo["physical_filter"] == "IRAC-CH1"
