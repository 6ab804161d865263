"""The Butler API on a local repository: put/get, collections, queries, errors."""

from __future__ import annotations

import hashlib
import json
import sqlite3
import uuid
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import raw_registry

from butler import (
    AmbiguousDatasetError,
    Butler,
    CollectionNotFoundError,
    ConflictingDefinitionError,
    DataIdError,
    DatasetExistsError,
    DatasetNotFoundError,
    DatasetTypeNotFoundError,
    DimensionRecordNotFoundError,
    InvalidQueryError,
    QuerySyntaxError,
    ReadOnlyRepositoryError,
    RepositoryConfigError,
    StorageClassError,
)
from butler.direct_butler import DirectButler

REGISTRY_BACKENDS = ("sqlite", "postgresql")  # one suite, both registry engines

HSC = {"instrument": "HSC"}


def put_summaries(butler: Butler, run: str = "run1", visits=range(100, 110)) -> None:
    with butler.transaction():
        for visit in visits:
            for detector in range(4):
                butler.put(
                    {"visit": visit, "detector": detector, "run": run},
                    "summary",
                    instrument="HSC",
                    visit=visit,
                    detector=detector,
                    run=run,
                )


def test_create_lays_out_a_self_describing_repository(tmp_path: Path) -> None:
    root = tmp_path / "new"
    with Butler.create(root, name="sample") as butler:
        assert butler.config.name == "sample"
    assert (root / "butler.yaml").is_file()
    assert (root / "registry.sqlite3").is_file()
    universe = yaml.safe_load((root / "dimensions.yaml").read_text())
    assert set(universe["elements"]) == {
        "instrument",
        "band",
        "physical_filter",
        "detector",
        "day_obs",
        "exposure",
        "visit",
        "skymap",
        "tract",
        "patch",
        # The LSST butler's (universe version 8) further elements:
        "subfilter",
        "group",
        "visit_system",
        "visit_definition",
        "visit_system_membership",
        "visit_detector_region",
        "ssp_hypothesis_table",
        "ssp_hypothesis_bundle",
        "ssp_balanced_index",
    }
    assert universe["version"] == 2
    assert universe["daf_butler"] == {"namespace": "daf_butler", "version": 8}
    assert universe["elements"]["physical_filter"]["implies"] == ["band"]
    with pytest.raises(RepositoryConfigError, match="already holds"):
        Butler.create(root)


def test_create_never_leaves_a_half_made_repository(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "new"
    root.mkdir()
    (root / ".mirror-partial").mkdir()
    (root / ".mirror-partial" / "a.part").write_bytes(b"kept")

    def fail(*args: object) -> None:
        raise sqlite3.OperationalError("disk I/O error")

    with monkeypatch.context() as m:
        m.setattr("butler.direct_butler.Registry.create", fail)
        with pytest.raises(sqlite3.OperationalError):
            DirectButler.create_repository(root, tolerated={".mirror-partial"})
    # Undone, but for what the caller said to keep.
    assert sorted(p.name for p in root.iterdir()) == [".mirror-partial"]
    assert (root / ".mirror-partial" / "a.part").read_bytes() == b"kept"
    # A creation killed after its registry, before butler.yaml (written last): no
    # repository, and the next creation replaces what it left.
    (root / ".butler-creating").touch()
    (root / "registry.sqlite3").write_bytes(b"half a registry")
    (root / "dimensions.yaml").write_text("half a universe")
    with pytest.raises(RepositoryConfigError, match="not a butler repository"):
        Butler(root)
    with DirectButler.create_repository(root, tolerated={".mirror-partial"}) as butler:
        assert butler.registry.count_datasets() == 0
    assert not (root / ".butler-creating").exists()
    assert (root / ".mirror-partial" / "a.part").read_bytes() == b"kept"
    # Without the mark, other files are the user's: never replaced.
    other = tmp_path / "other"
    other.mkdir()
    (other / "registry.sqlite3").write_bytes(b"someone's")
    with pytest.raises(RepositoryConfigError, match="not empty"):
        Butler.create(other)
    assert (other / "registry.sqlite3").read_bytes() == b"someone's"


def test_opening_a_non_repository_says_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(RepositoryConfigError, match="butler create"):
        Butler(tmp_path / "nothing")


def test_bad_config_is_reported(repo_path: Path) -> None:
    (repo_path / "butler.yaml").write_text("format_version: 1\nbogus_key: 3\n")
    with pytest.raises(RepositoryConfigError, match="unknown settings.*bogus_key"):
        Butler(repo_path)
    (repo_path / "butler.yaml").write_text("format_version: 99\n")
    with pytest.raises(RepositoryConfigError, match="version 99"):
        Butler(repo_path)
    (repo_path / "butler.yaml").write_text("format_version: [1\n")
    with pytest.raises(RepositoryConfigError, match="not valid YAML"):
        Butler(repo_path)


def test_put_get_dict_and_yaml(butler: Butler) -> None:
    ref = butler.put({"a": 1, "b": [1, 2]}, "summary", HSC, visit=101, detector=2)
    assert isinstance(ref.id, uuid.UUID)
    assert ref.run == "run1"
    # The data ID was expanded with the implied values from the visit record.
    assert dict(ref.data_id) == {
        "instrument": "HSC",
        "detector": 2,
        "visit": 101,
        "band": "r",
        "physical_filter": "HSC-R",
        "day_obs": 20240101,
    }
    assert butler.get("summary", instrument="HSC", visit=101, detector=2) == {"a": 1, "b": [1, 2]}
    assert butler.get(ref) == {"a": 1, "b": [1, 2]}
    butler.put({"x": "y"}, "config", instrument="HSC")
    path = butler.get_local_path("config", instrument="HSC")
    assert path.suffix == ".yaml"
    assert yaml.safe_load(path.read_text()) == {"x": "y"}


def test_put_get_array_and_memmap_local_path(butler: Butler) -> None:
    array = np.arange(24, dtype=np.float64).reshape(4, 6)
    butler.put(array, "flux", HSC, visit=100, detector=0)
    got = butler.get("flux", HSC, visit=100, detector=0)
    np.testing.assert_array_equal(got, array)
    info = butler.get_file_info("flux", HSC, visit=100, detector=0)
    mapped = np.memmap(
        butler.get_local_path("flux", HSC, visit=100, detector=0),
        dtype=np.dtype(info.index["dtype"]),
        mode="r",
        offset=info.index["data_offset"],
        shape=tuple(info.index["shape"]),
    )
    np.testing.assert_array_equal(mapped, array)


def test_file_records_have_size_checksum_and_path(butler: Butler) -> None:
    ref = butler.put({"a": 1}, "summary", HSC, visit=101, detector=2)
    info = butler.get_file_info(ref)
    path = butler.get_local_path(ref)
    assert info.size == path.stat().st_size
    import hashlib

    assert info.checksum == "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()
    assert info.path.startswith("run1/summary/")
    assert str(ref.id) in info.path
    assert butler.get_uri(ref) == path.as_uri()


def test_missing_dataset_error_names_type_data_id_and_collections(butler: Butler) -> None:
    butler.put({"a": 1}, "summary", HSC, visit=101, detector=2)
    with pytest.raises(DatasetNotFoundError) as info:
        butler.get("summary", instrument="HSC", visit=102, detector=2)
    message = str(info.value)
    assert "'summary'" in message
    assert "visit=102" in message
    assert "run1" in message
    assert isinstance(info.value, LookupError)
    assert not butler.exists("summary", instrument="HSC", visit=102, detector=2)
    assert butler.exists("summary", instrument="HSC", visit=101, detector=2)


def test_unknown_dataset_type_and_bad_data_ids(butler: Butler) -> None:
    with pytest.raises(DatasetTypeNotFoundError, match="'nope'.*register_dataset_type"):
        butler.put({}, "nope", HSC, visit=1, detector=1)
    with pytest.raises(DataIdError, match=r"lacks \['detector'\]"):
        butler.put({}, "summary", HSC, visit=101)
    with pytest.raises(DataIdError, match="not dimensions"):
        butler.put({}, "summary", HSC, visit=101, detector=1, colour="red")
    with pytest.raises(DataIdError, match="do not apply"):
        butler.put({}, "summary", HSC, visit=101, detector=1, tract=9813)
    with pytest.raises(DataIdError, match="no detector record.*insert_dimension_records"):
        butler.put({}, "summary", HSC, visit=101, detector=77)
    with pytest.raises(DataIdError, match="must be an integer"):
        butler.put({}, "summary", HSC, visit="abc", detector=1)
    with pytest.raises(DataIdError, match="band='i' but the physical_filter record says band='r'"):
        butler.put({}, "summary", HSC, visit=101, detector=1, band="i")
    with pytest.raises(StorageClassError, match="Array"):
        butler.put({"not": "an array"}, "flux", HSC, visit=101, detector=1)
    assert butler.registry.count_datasets() == 0


def test_duplicate_put_is_an_error_that_writes_nothing(butler: Butler) -> None:
    butler.put({"a": 1}, "summary", HSC, visit=101, detector=2)
    files_before = sorted(p for p in butler.root.rglob("*.json"))
    with pytest.raises(DatasetExistsError, match="exists already in run 'run1'"):
        butler.put({"a": 2}, "summary", HSC, visit=101, detector=2)
    assert sorted(p for p in butler.root.rglob("*.json")) == files_before
    assert butler.get("summary", HSC, visit=101, detector=2) == {"a": 1}
    # The same data ID in another run is a different dataset.
    butler.put({"a": 3}, "summary", HSC, visit=101, detector=2, run="run2")
    assert butler.get("summary", HSC, visit=101, detector=2, collections="run2") == {"a": 3}


def test_read_only_butler_refuses_writes(repo_path: Path) -> None:
    with (
        Butler(repo_path) as reader,
        pytest.raises(ReadOnlyRepositoryError, match="writeable=True"),
    ):
        reader.insert_dimension_records("band", {"name": "z"})


def test_dimension_records_need_only_keys_and_existing_parents(butler: Butler) -> None:
    assert butler.insert_dimension_records("detector", {"instrument": "HSC", "id": 42}) == 1
    [record] = butler.query_dimension_records("detector", instrument="HSC", detector=42)
    assert record["id"] == 42
    assert record["full_name"] is None
    with pytest.raises(DimensionRecordNotFoundError, match="insert those records first"):
        butler.insert_dimension_records("detector", {"instrument": "LSSTCam", "id": 1})
    with pytest.raises(ConflictingDefinitionError, match="skip_existing"):
        butler.insert_dimension_records("detector", {"instrument": "HSC", "id": 42})
    assert (
        butler.insert_dimension_records(
            "detector", {"instrument": "HSC", "id": 42}, skip_existing=True
        )
        == 0
    )
    with pytest.raises(DataIdError, match="lacks its key fields"):
        butler.insert_dimension_records("detector", {"id": 43})
    with pytest.raises(DataIdError, match="unknown fields"):
        butler.insert_dimension_records("detector", {"instrument": "HSC", "id": 44, "size": 1})


def test_dataset_type_registration_is_idempotent_but_not_redefinable(butler: Butler) -> None:
    again = butler.register_dataset_type("summary", ["detector", "visit"], "Dict")
    assert again.dimensions == ("instrument", "detector", "visit")
    assert again.implied == ("band", "physical_filter", "day_obs")
    with pytest.raises(ConflictingDefinitionError, match="cannot be redefined"):
        butler.register_dataset_type("summary", ["visit"], "Dict")
    with pytest.raises(RepositoryConfigError, match="unknown dimensions"):
        butler.register_dataset_type("odd", ["visit", "galaxy"], "Dict")
    with pytest.raises(StorageClassError, match="Unknown storage class"):
        butler.register_dataset_type("odd", ["visit"], "Spectrum3000")


def test_chained_collections_search_in_order(butler: Butler) -> None:
    put_summaries(butler, "run1", visits=[100, 101])
    put_summaries(butler, "run2", visits=[101])
    butler.set_collection_chain("chain", ["run2", "run1"])
    assert butler.get("summary", HSC, visit=101, detector=0, collections="chain")["run"] == "run2"
    assert butler.get("summary", HSC, visit=100, detector=0, collections="chain")["run"] == "run1"
    refs = butler.query_datasets("summary", collections="chain")
    assert len(refs) == 8
    assert {(r.data_id["visit"], r.run) for r in refs} == {(100, "run1"), (101, "run2")}
    assert len(butler.query_datasets("summary", collections="chain", find_first=False)) == 12
    # Chains of chains flatten depth first.
    butler.set_collection_chain("outer", ["chain"])
    assert butler.registry.flatten(["outer"]) == ["run2", "run1"]
    with pytest.raises(ConflictingDefinitionError, match="cycle"):
        butler.set_collection_chain("chain", ["outer"])
    with pytest.raises(CollectionNotFoundError, match="'nope'"):
        butler.query_datasets("summary", collections="nope")


def test_without_collections_a_unique_match_is_found_and_ambiguity_reported(
    repo_path: Path,
) -> None:
    with Butler(repo_path, writeable=True) as writer:
        put_summaries(writer, "run1", visits=[100, 101])
        put_summaries(writer, "run2", visits=[101])
    with Butler(repo_path) as reader:
        assert reader.get("summary", HSC, visit=100, detector=1)["run"] == "run1"
        with pytest.raises(AmbiguousDatasetError, match="run1, run2"):
            reader.get("summary", HSC, visit=101, detector=1)


def test_query_datasets_where_and_bind(butler: Butler) -> None:
    put_summaries(butler)
    refs = butler.query_datasets(
        "summary", where="visit IN (100..105) AND band = 'r' AND detector > 1"
    )
    assert sorted({r.data_id["visit"] for r in refs}) == [101, 103, 105]
    assert {r.data_id["detector"] for r in refs} == {2, 3}
    refs = butler.query_datasets("summary", where="visit.exposure_time >= 38.5")
    assert {r.data_id["visit"] for r in refs} == {109}
    refs = butler.query_datasets(
        "summary",
        where="visit.target_name = tgt AND detector = :det",
        bind={"tgt": "COSMOS", "det": 3},
    )
    assert sorted(r.data_id["visit"] for r in refs) == [100, 101, 102]
    refs = butler.query_datasets("summary", where="day_obs > 20240101", detector=0)
    assert sorted(r.data_id["visit"] for r in refs) == [105, 106, 107, 108, 109]
    refs = butler.query_datasets("summary", where="visit IN (100..108:4)", detector=0)
    assert sorted(r.data_id["visit"] for r in refs) == [100, 104, 108]
    assert len(butler.query_datasets("summary", limit=5)) == 5


def test_query_errors_are_clear(butler: Butler) -> None:
    with pytest.raises(QuerySyntaxError) as info:
        butler.query_datasets("summary", where="visit > 100 AND (band = 'r'")
    assert info.value.position > 0
    assert "^" in str(info.value)
    with pytest.raises(InvalidQueryError, match="tract.*does not apply"):
        butler.query_datasets("summary", where="tract = 1")
    with pytest.raises(InvalidQueryError, match="no record field 'colour'"):
        butler.query_datasets("summary", where="visit.colour = 'red'")
    with pytest.raises(InvalidQueryError, match="integer"):
        butler.query_datasets("summary", where="visit = 'abc'")


def test_hostile_where_strings_never_reach_sql(butler: Butler) -> None:
    put_summaries(butler, visits=[100])
    hostile = [
        "band = 'r''; DROP TABLE dataset; --'",
        "band = '\" OR 1=1 --'",
        "visit = 100; DROP TABLE dataset",
        "band = :b",
    ]
    outcomes: list[object] = []
    for text in hostile:
        try:
            outcomes.append(
                butler.query_datasets("summary", where=text, bind={"b": "x' OR '1'='1"})
            )
        except (QuerySyntaxError, InvalidQueryError) as exc:
            outcomes.append(type(exc).__name__)
    # Quoted text stays one string value (matching nothing); a second statement is refused.
    assert outcomes == [[], [], "QuerySyntaxError", []]
    with raw_registry(butler.root) as conn:
        assert conn.execute("SELECT COUNT(*) FROM dataset").fetchone()[0] == 4


def test_query_data_ids_and_records(butler: Butler) -> None:
    ids = butler.query_data_ids(["visit", "detector"], where="band = 'i'")
    assert len(ids) == 5 * 4
    assert all(i["band"] == "i" for i in ids)
    visits = butler.query_data_ids("visit", where="day_obs = 20240102 AND band = 'r'")
    assert [v["visit"] for v in visits] == [105, 107, 109]
    put_summaries(butler, visits=[100, 103])
    with_data = butler.query_data_ids("visit", dataset_type="summary", collections="run1")
    assert [v["visit"] for v in with_data] == [100, 103]
    records = butler.query_dimension_records(
        "visit", where="band = 'r' AND visit.exposure_time < 34"
    )
    assert [r["id"] for r in records] == [101, 103]
    patches = butler.query_dimension_records("patch", skymap="rings", tract=9813)
    assert [p["id"] for p in patches] == [0, 1, 2]


def test_remove_deletes_rows_and_files(butler: Butler) -> None:
    put_summaries(butler, visits=[100])
    refs = butler.query_datasets("summary")
    paths = [butler.get_local_path(r) for r in refs]
    assert butler.remove(refs[:2]) == 2
    assert not paths[0].exists()
    assert not paths[1].exists()
    assert paths[2].exists()
    assert len(butler.query_datasets("summary")) == 2
    with pytest.raises(DatasetNotFoundError):
        butler.get(refs[0])


def test_registry_is_plain_sql_with_json_file_index(butler: Butler) -> None:
    ref = butler.put(np.zeros((3, 3), dtype=np.int16), "flux", HSC, visit=100, detector=1)
    with raw_registry(butler.root) as conn:
        row = conn.execute(
            "SELECT f.size, f.formatter, f.file_index FROM file f WHERE f.dataset_id = ?",
            (str(ref.id),),
        ).fetchone()
    assert row[1] == "npy"
    index = json.loads(row[2])
    assert index["shape"] == [3, 3]
    assert index["data_offset"] + 18 == row[0]


def test_ingest_many_is_one_transaction_and_reuses_a_matching_index(
    butler: Butler, tmp_path: Path
) -> None:
    from butler.direct_butler import IngestEntry

    assert isinstance(butler, DirectButler)
    sources = []
    for detector in range(3):
        path = tmp_path / f"in{detector}.npy"
        np.save(path, np.full((2, 3), detector, dtype=np.int16))
        sources.append(path)
    butler.put(np.zeros(1), "flux", HSC, visit=100, detector=2)
    entries = [
        IngestEntry(path, "flux", {**HSC, "visit": 100, "detector": d})
        for d, path in enumerate(sources)
    ]
    # One dataset exists already: the whole batch is refused, and no file moves.
    with pytest.raises(DatasetExistsError):
        butler.ingest_many(entries, transfer="move")
    assert all(p.exists() for p in sources)
    assert len(butler.query_datasets("flux")) == 1

    bogus = {"dtype": "<i2", "shape": [2, 3], "data_offset": 128, "from": "caller"}
    refs = butler.ingest_many(
        [
            IngestEntry(
                sources[0],
                "flux",
                {**HSC, "visit": 101, "detector": 0},
                index=bogus,
                index_formatter="npy",
            ),
            IngestEntry(
                sources[1],
                "flux",
                {**HSC, "visit": 101, "detector": 1},
                index=bogus,
                index_formatter="another",
            ),
        ],
        transfer="move",
    )
    assert not sources[0].exists()
    assert not sources[1].exists()
    first, second = (butler.get_file_info(ref) for ref in refs)
    assert first.index == bogus  # the caller's index, built by the same formatter
    assert "from" not in second.index  # built here: the caller's came from another formatter
    np.testing.assert_array_equal(butler.get(refs[1]), np.full((2, 3), 1, dtype=np.int16))
    # A missing file refuses the whole batch too, naming it; the others stay where they are.
    visit_102 = {**HSC, "visit": 102, "detector": 2}
    with pytest.raises(FileNotFoundError, match=r"cannot ingest .*gone\.npy: no such file"):
        butler.ingest_many(
            [
                IngestEntry(sources[2], "flux", visit_102),
                IngestEntry(tmp_path / "gone.npy", "flux", {**visit_102, "detector": 0}),
            ],
            transfer="move",
        )
    assert sources[2].exists()
    assert len(butler.query_datasets("flux", visit=102)) == 0
    # A size and checksum verified by the caller are recorded as given, without a stat.
    size = sources[2].stat().st_size
    checksum = "sha256:" + hashlib.sha256(sources[2].read_bytes()).hexdigest()
    (ref,) = butler.ingest_many(
        [IngestEntry(sources[2], "flux", visit_102, checksum=checksum, size=size)],
        transfer="move",
    )
    info = butler.get_file_info(ref)
    assert (info.size, info.checksum) == (size, checksum)
    assert butler.verify() == []
