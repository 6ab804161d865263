"""One test suite, two backends: the local butler and the remote one must behave the same.

The remote backend is a real ``butler serve`` process on 127.0.0.1 with a tokens file; both
backends open the same repository, and each test writes to a RUN of its own.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from astropy.table import Table
from conftest import populate_dimensions
from servers import WRITE_TOKEN, ButlerServer

from butler import (
    Box,
    Butler,
    DataIdError,
    DatasetExistsError,
    DatasetNotFoundError,
    DatasetTypeNotFoundError,
    Image,
    InvalidQueryError,
    QuerySyntaxError,
)
from butler.sample_data import synthetic_calexp

HSC = {"instrument": "HSC"}
_runs = itertools.count()


@pytest.fixture(scope="module")
def shared_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("shared") / "repo"
    with Butler.create(root) as butler:
        populate_dimensions(butler)
        butler.register_dataset_type("summary", ["visit", "detector"], "Dict")
        butler.register_dataset_type("flux", ["visit", "detector"], "Array")
        butler.register_dataset_type("src", ["visit", "detector"], "Table")
        butler.register_dataset_type("calexp", ["visit", "detector"], "Image")
    return root


@pytest.fixture(scope="module")
def server(shared_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ButlerServer]:
    srv = ButlerServer(shared_repo, tmp_path_factory.mktemp("server")).start()
    yield srv
    srv.stop()


@pytest.fixture(params=["local", "remote"])
def any_butler(
    request: pytest.FixtureRequest, shared_repo: Path, tmp_path: Path
) -> Iterator[Butler]:
    run = f"{request.param}-{next(_runs)}"
    if request.param == "local":
        butler = Butler(shared_repo, run=run)
    else:
        srv: ButlerServer = request.getfixturevalue("server")
        butler = Butler(srv.url, run=run, token=WRITE_TOKEN, cache_dir=tmp_path / "cache")
    with butler:
        yield butler


def test_backend_is_chosen_by_uri(any_butler: Butler) -> None:
    from butler.direct_butler import DirectButler
    from butler.remote.butler import RemoteButler

    assert isinstance(any_butler, DirectButler | RemoteButler)
    assert isinstance(any_butler, Butler)


def test_put_get_round_trip_every_storage_class(any_butler: Butler) -> None:
    b = any_butler
    ref = b.put({"a": 1, "b": [1, 2]}, "summary", HSC, visit=101, detector=2)
    assert ref.run == b.run
    assert b.get("summary", HSC, visit=101, detector=2) == {"a": 1, "b": [1, 2]}
    assert b.get(ref) == {"a": 1, "b": [1, 2]}
    array = np.arange(12, dtype=np.int32).reshape(3, 4)
    b.put(array, "flux", HSC, visit=101, detector=2)
    np.testing.assert_array_equal(b.get("flux", HSC, visit=101, detector=2), array)
    table = Table({"id": np.arange(5), "mag": np.linspace(18, 22, 5)})
    b.put(table, "src", HSC, visit=101, detector=2)
    got = b.get("src", HSC, visit=101, detector=2)
    np.testing.assert_array_equal(got["mag"], table["mag"])
    image = synthetic_calexp(size=256)
    b.put(image, "calexp", HSC, visit=101, detector=2)
    full: Image = b.get("calexp", HSC, visit=101, detector=2)
    np.testing.assert_array_equal(full.data, image.data)
    cut: Image = b.get(
        "calexp", HSC, visit=101, detector=2, parameters={"bbox": Box(10, 20, 30, 40)}
    )
    np.testing.assert_array_equal(cut.data, image.data[20:60, 10:40])
    assert b.get("calexp.metadata", HSC, visit=101, detector=2)["EXPTIME"] == 30.0


def test_expanded_data_ids_and_refs_agree(any_butler: Butler) -> None:
    ref = any_butler.put({"x": 1}, "summary", HSC, visit=103, detector=1)
    found = any_butler.find_dataset("summary", HSC, visit=103, detector=1)
    assert found == ref
    assert found is not None
    assert found.data_id["band"] == "r"
    assert found.data_id["physical_filter"] == "HSC-R"


def test_missing_dataset_error_is_the_same(any_butler: Butler) -> None:
    with pytest.raises(DatasetNotFoundError) as info:
        any_butler.get("summary", HSC, visit=109, detector=3)
    message = str(info.value)
    assert "'summary'" in message
    assert "visit=109" in message
    assert any_butler.run in message
    assert any_butler.find_dataset("summary", HSC, visit=109, detector=3) is None
    assert not any_butler.exists("summary", HSC, visit=109, detector=3)


def test_user_errors_cross_the_wire_as_the_same_classes(any_butler: Butler) -> None:
    with pytest.raises(DatasetTypeNotFoundError, match="'nope'"):
        any_butler.get("nope", HSC, visit=101, detector=1)
    with pytest.raises(QuerySyntaxError) as info:
        any_butler.query_datasets("summary", where="visit > 100 AND (band = 'r'")
    assert info.value.position == 27
    with pytest.raises(InvalidQueryError, match="does not apply"):
        any_butler.query_datasets("summary", where="tract = 1")
    with pytest.raises(DataIdError, match="lacks"):
        any_butler.put({}, "summary", HSC, visit=101)
    any_butler.put({"a": 1}, "summary", HSC, visit=104, detector=0)
    with pytest.raises(DatasetExistsError, match="exists already"):
        any_butler.put({"a": 2}, "summary", HSC, visit=104, detector=0)


def test_queries_are_the_same(any_butler: Butler) -> None:
    b = any_butler
    with b.transaction():
        for visit in (100, 101, 102, 103):
            for detector in (0, 1):
                b.put({"v": visit}, "summary", HSC, visit=visit, detector=detector)
    refs = b.query_datasets("summary", where="visit IN (100..102) AND band = :b", bind={"b": "i"})
    assert sorted((r.data_id["visit"], r.data_id["detector"]) for r in refs) == [
        (100, 0),
        (100, 1),
        (102, 0),
        (102, 1),
    ]
    assert len(b.query_datasets("summary", detector=1)) == 4
    assert len(b.query_datasets("summary", limit=3)) == 3
    ids = b.query_data_ids(["visit"], where="visit.exposure_time > 36.5")
    assert [i["visit"] for i in ids] == [107, 108, 109]
    with_data = b.query_data_ids("visit", dataset_type="summary", collections=b.run)
    assert [i["visit"] for i in with_data] == [100, 101, 102, 103]
    records = b.query_dimension_records("detector", where="detector.full_name = 'ccd2'")
    assert [r["id"] for r in records] == [2]


def test_transaction_rolls_back_on_exception(any_butler: Butler) -> None:
    with pytest.raises(RuntimeError, match="boom"), any_butler.transaction():
        any_butler.put({"a": 1}, "summary", HSC, visit=105, detector=0)
        any_butler.put({"a": 2}, "summary", HSC, visit=106, detector=0)
        raise RuntimeError("boom")
    assert any_butler.query_datasets("summary", collections=any_butler.run) == []
    assert not any_butler.exists("summary", HSC, visit=105, detector=0)


def test_chained_collections_and_remove(any_butler: Butler) -> None:
    b = any_butler
    run2 = f"{b.run}-b"
    b.put({"which": 1}, "summary", HSC, visit=107, detector=0)
    b.put({"which": 2}, "summary", HSC, visit=107, detector=0, run=run2)
    chain = f"{b.run}-chain"
    b.set_collection_chain(chain, [run2, b.run])
    assert b.get_collection_chain(chain) == [run2, b.run]
    assert b.get("summary", HSC, visit=107, detector=0, collections=chain) == {"which": 2}
    assert b.remove("summary", HSC, visit=107, detector=0, collections=run2) == 1
    assert b.get("summary", HSC, visit=107, detector=0, collections=chain) == {"which": 1}


def test_local_path_is_a_verified_memmappable_file(any_butler: Butler) -> None:
    image = synthetic_calexp(size=128)
    ref = any_butler.put(image, "calexp", HSC, visit=108, detector=3)
    path = any_butler.get_local_path(ref)
    assert path.is_file()
    assert path.stat().st_size == any_butler.get_file_info(ref).size
    mapped = any_butler.memmap(ref, hdu="IMAGE")
    np.testing.assert_array_equal(mapped, image.data)


def test_open_gives_a_lazy_seekable_file_for_astropy_and_pyarrow(any_butler: Butler) -> None:
    import pyarrow.parquet as pq
    from astropy.io import fits

    image = synthetic_calexp(size=128)
    any_butler.put(image, "calexp", HSC, visit=109, detector=0)
    with any_butler.open("calexp", HSC, visit=109, detector=0) as f, fits.open(f) as hdul:
        assert [h.name for h in hdul] == ["PRIMARY", "IMAGE", "MASK", "VARIANCE"]
        np.testing.assert_array_equal(hdul["IMAGE"].data, image.data)
    table = Table({"a": np.arange(100), "b": np.arange(100) * 2.0})
    any_butler.put(table, "src", HSC, visit=109, detector=0)
    with any_butler.open("src", HSC, visit=109, detector=0, read_ahead=1024) as f:
        parquet = pq.ParquetFile(f)
        assert parquet.metadata.num_rows == 100
        assert parquet.read(columns=["b"]).column("b").to_pylist()[-1] == 198.0
