"""``mirror pull DAF_REPO``: a local LSST butler repository (made by lsst-daf-butler itself)
as a mirror source: the LSST butler's query language, verified copies with the source's
UUIDs, values equal to its ``Butler.get``, resume after an interrupted copy, ``mirror
update`` fetching only what is new, clear errors for what is not a repository."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import sys
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from astropy.table import Table
from click.testing import CliRunner, Result
from lsst.daf.butler import DatasetType as DafDatasetType
from lsst_data import CHAIN, RUN, VISIT, LsstRepo, make_lsst_repo

from butler import Butler
from butler.direct_butler import DirectButler
from butler.errors import DatasetTypeNotFoundError
from butler.image import Image
from mirror import daf_source
from mirror.cli import main
from mirror.transfer import PARTIAL_DIR

TYPES = ("src_table", "summary", "summary_json", "calexp_image", "raw_meta")


@pytest.fixture(scope="module")
def lsst_repo(tmp_path_factory: pytest.TempPathFactory) -> LsstRepo:
    return make_lsst_repo(tmp_path_factory.mktemp("daf") / "repo")


def mirror(*args: str) -> Result:
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def pull_args(source: Path, dest: Path, *types: str, extra: tuple[str, ...] = ()) -> list[str]:
    args = ["pull", str(source), "--dest", str(dest), "--json", "--jobs", "1"]
    for name in types or TYPES:
        args += ["--dataset-type", name]
    return args + list(extra)


def mirrored(dest: Path) -> dict[uuid.UUID, tuple[Any, Any]]:
    """Every dataset of the mirror: its ref and file record, by UUID."""
    with DirectButler(dest) as butler:
        out = {}
        for name in TYPES:
            try:
                refs = butler.query_datasets(name)
            except DatasetTypeNotFoundError:
                continue  # not mirrored (yet)
            for ref in refs:
                found = butler.registry.get_dataset(ref.id)
                assert found is not None
                out[ref.id] = found
        return out


def lsst_path(repo: LsstRepo, dataset_id: uuid.UUID) -> Path:
    ref = repo.butler.get_dataset(dataset_id)
    assert ref is not None
    return Path(repo.butler.getURI(ref).ospath)


def lsst_size(repo: LsstRepo, dataset_id: uuid.UUID) -> int:
    return lsst_path(repo, dataset_id).stat().st_size


def test_pull_reads_back_equal_to_the_lsst_butler_get(lsst_repo: LsstRepo, tmp_path: Path) -> None:
    dest = tmp_path / "mirror"
    out = mirror(*pull_args(lsst_repo.root, dest, extra=("--collections", CHAIN)))
    assert out.exit_code == 0, out.output
    summary = json.loads(out.output)
    assert (summary["downloaded"], summary["skipped"], summary["failed"]) == (5, 0, [])

    files = mirrored(dest)
    assert set(files) == lsst_repo.ids  # the same UUIDs, all of them
    with DirectButler(dest) as ours:
        # The table: columns, values, units and metadata as the LSST butler's get.
        theirs_table: Table = lsst_repo.get("src_table")
        table = ours.get(files[lsst_repo.refs["src_table"].id][0])
        assert table.colnames == theirs_table.colnames
        for name in theirs_table.colnames:
            np.testing.assert_array_equal(np.asarray(table[name]), np.asarray(theirs_table[name]))
            assert table[name].unit == theirs_table[name].unit
        assert dict(table.meta) == dict(theirs_table.meta)
        # Dicts from YAML and JSON files.
        for name in ("summary", "summary_json", "raw_meta"):
            assert ours.get(files[lsst_repo.refs[name].id][0]) == lsst_repo.get(name)
        # The FITS image in afw's layout reads as an Image with the LSST butler's pixels.
        image = ours.get(files[lsst_repo.refs["calexp_image"].id][0])
        assert isinstance(image, Image)
        np.testing.assert_array_equal(image.data, lsst_repo.get("calexp_image"))
    for ref in lsst_repo.refs.values():
        our_ref, info = files[ref.id]
        assert our_ref.run == ref.run == RUN
        # Bytes as the LSST butler stored them, with the checksum computed as they were copied.
        theirs = Path(lsst_repo.butler.getURI(ref).ospath).read_bytes()
        assert (dest / info.path).read_bytes() == theirs
        assert info.checksum == "sha256:" + hashlib.sha256(theirs).hexdigest()
        # Data IDs: required and implied values as the LSST butler expands them.
        expanded = lsst_repo.butler.registry.expandDataId(ref.dataId)
        assert dict(our_ref.data_id) == {k: expanded[k] for k in expanded.mapping}
    with Butler(dest) as butler:
        # The collections queried: the chain and its RUN; the dimension records the data
        # IDs carry, timespans exact to the nanosecond.
        assert butler.get_collection_chain(CHAIN) == [RUN]
        (visit,) = butler.query_dimension_records("visit")
        (theirs_visit,) = lsst_repo.butler.registry.queryDimensionRecords(
            "visit", instrument="LSSTCam", visit=VISIT
        )
        assert (visit["timespan_begin"], visit["timespan_end"]) == theirs_visit.timespan.nsec
        assert bytes.fromhex(visit["region"]) == theirs_visit.region.encode()
        assert len(butler.query_dimension_records("visit_detector_region")) == 1

    again = mirror(*pull_args(lsst_repo.root, dest, extra=("--collections", CHAIN)))
    assert again.exit_code == 0, again.output
    assert (json.loads(again.output)["downloaded"], json.loads(again.output)["skipped"]) == (0, 5)


def test_where_and_bind_are_the_lsst_butlers_query_language(
    lsst_repo: LsstRepo, tmp_path: Path
) -> None:
    # The config file itself names the repository as well as its directory does.
    source = lsst_repo.root / "butler.yaml"
    dest = tmp_path / "mirror"
    where = "instrument = 'LSSTCam' AND detector = det"  # a bind name without a colon: LSST's
    out = mirror(
        *pull_args(source, dest, "summary", "raw_meta"),
        "--collections",
        RUN,
        "--where",
        where,
        "--bind",
        "det=11",
    )
    assert out.exit_code == 0, out.output
    assert set(mirrored(dest)) == {lsst_repo.refs["raw_meta"].id}

    bad = mirror(*pull_args(source, tmp_path / "other", "summary"), "--where", "visit = = 3")
    assert bad.exit_code == 1
    assert "the LSST butler's query of 'summary'" in bad.output
    assert not (tmp_path / "other").exists()  # refused before anything was written


def test_an_interrupted_pull_keeps_verified_files_and_resumes(
    lsst_repo: LsstRepo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dest = tmp_path / "mirror"
    real_fetch = daf_source.DafFetcher.fetch
    calls: list[uuid.UUID] = []

    async def interrupted(self: Any, item: Any, target: Path, progress: Any) -> None:
        calls.append(item.ref.id)
        if len(calls) == 3:  # Ctrl-C in the middle of the third copy
            half = Path(item.file.path).read_bytes()[: item.file.size // 2]  # noqa: ASYNC240
            target.write_bytes(half)  # noqa: ASYNC240 - a test's stand-in for a copy
            raise KeyboardInterrupt
        await real_fetch(self, item, target, progress)

    monkeypatch.setattr(daf_source.DafFetcher, "fetch", interrupted)
    out = mirror(*pull_args(lsst_repo.root, dest, extra=("--collections", RUN)))
    assert out.exit_code == 130, out.output
    kept = mirrored(dest)
    # Only files verified before the interrupt are recorded (those whose commit ran), each
    # whole; the half copy stays for the next pull.
    assert set(kept) <= set(calls[:2])
    for _, info in kept.values():
        assert (dest / info.path).stat().st_size == info.size
    assert (dest / PARTIAL_DIR / f"{calls[2]}.part").stat().st_size == (
        lsst_size(lsst_repo, calls[2]) // 2
    )

    monkeypatch.setattr(daf_source.DafFetcher, "fetch", real_fetch)
    resumed = mirror(*pull_args(lsst_repo.root, dest, extra=("--collections", RUN)))
    assert resumed.exit_code == 0, resumed.output
    summary = json.loads(resumed.output)
    assert (summary["downloaded"], summary["skipped"], summary["failed"]) == (
        5 - len(kept),
        len(kept),
        [],
    )
    assert summary["plan"]["resumed_bytes"] == 0  # a local copy starts over (see daf_source)
    files = mirrored(dest)
    assert set(files) == lsst_repo.ids
    # The half-copied file is whole now, byte for byte.
    assert (dest / files[calls[2]][1].path).read_bytes() == lsst_path(
        lsst_repo, calls[2]
    ).read_bytes()
    assert not (dest / PARTIAL_DIR).exists()


def test_a_file_changed_under_the_copy_is_refused(
    lsst_repo: LsstRepo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The LSST file is seen one byte longer than planned (a writer in the LSST repository).
    real_dataset = daf_source.DafSource._dataset

    def grown(self: Any, ref: Any) -> Any:
        our_ref, info = real_dataset(self, ref)
        if ref.datasetType.name == "summary":
            info = dataclasses.replace(info, size=info.size - 1)
        return our_ref, info

    monkeypatch.setattr(daf_source.DafSource, "_dataset", grown)
    dest = tmp_path / "mirror"
    out = mirror(*pull_args(lsst_repo.root, dest, "summary", "raw_meta"))
    assert out.exit_code == 1
    assert "changed since it was planned" in out.output
    assert set(mirrored(dest)) == {lsst_repo.refs["raw_meta"].id}
    assert not (dest / PARTIAL_DIR / f"{lsst_repo.refs['summary'].id}.part").exists()


def test_update_fetches_only_what_is_new_in_the_lsst_repository(tmp_path: Path) -> None:
    repo = make_lsst_repo(tmp_path / "daf")
    dest = tmp_path / "mirror"
    out = mirror(*pull_args(repo.root, dest, "summary", extra=("--collections", CHAIN)))
    assert out.exit_code == 0, out.output
    new = repo.butler.put(
        {"seeing": 0.9}, "summary", instrument="LSSTCam", visit=VISIT, detector=11
    )
    update = mirror("update", str(dest), "--json")
    assert update.exit_code == 0, update.output
    (summary,) = json.loads(update.output)
    assert (summary["downloaded"], summary["skipped"]) == (1, 1)
    assert set(mirrored(dest)) == {repo.refs["summary"].id, new.id}
    with DirectButler(dest) as butler:
        found = butler.registry.get_dataset(new.id)
        assert found is not None
        assert butler.get(found[0]) == {"seeing": 0.9}
        assert dict(found[0].data_id.required) == {
            "instrument": "LSSTCam",
            "detector": 11,
            "visit": VISIT,
        }


def test_what_cannot_be_carried_over_stops_the_pull_before_anything_is_written(
    tmp_path: Path,
) -> None:
    repo = make_lsst_repo(tmp_path / "daf")
    universe = repo.butler.dimensions
    repo.butler.registry.registerDatasetType(
        DafDatasetType("pickled", ["visit", "detector"], "NumpyArray", universe=universe)
    )
    # NumpyArray's default formatter in the LSST butler writes a pickle.
    pickled = repo.butler.put(
        np.arange(3), "pickled", instrument="LSSTCam", visit=VISIT, detector=10
    )
    assert repo.butler.getURI(pickled).ospath.endswith(".pickle")
    dest = tmp_path / "mirror"
    out = mirror(*pull_args(repo.root, dest, "summary", "pickled"))
    assert out.exit_code == 1
    assert "never pickles" in out.output
    assert "leave dataset type 'pickled' out of --dataset-type" in out.output
    unknown = mirror(*pull_args(repo.root, dest, "nosuch"))
    assert unknown.exit_code == 1
    assert "'nosuch' does not exist" in unknown.output
    assert not dest.exists()
    # A TAGGED collection can be queried: its dataset comes in under its RUN; the TAGGED
    # collection itself has no place here and is not made.
    tagged = mirror(*pull_args(repo.root, dest, "summary", extra=("--collections", "tagged")))
    assert tagged.exit_code == 0, tagged.output
    assert set(mirrored(dest)) == {repo.refs["summary"].id}
    with Butler(dest) as butler:
        assert [c["name"] for c in butler.query_collections()] == [RUN]


def test_what_is_not_a_repository_is_said_clearly(tmp_path: Path) -> None:
    missing = mirror(*pull_args(tmp_path / "nowhere", tmp_path / "m", "summary"))
    assert missing.exit_code == 1
    assert "is neither an http(s) URL nor a directory" in missing.output
    empty = tmp_path / "empty"
    empty.mkdir()
    for source in (empty, tmp_path / "other.yaml"):
        (tmp_path / "other.yaml").write_text("datastore: {}\n")  # a stray config, no registry
        out = mirror(*pull_args(source, tmp_path / "m", "summary"))
        assert out.exit_code == 1
        assert "is not a repository" in out.output
    assert not (tmp_path / "m").exists()


def test_without_lsst_daf_butler_the_error_names_the_extra(
    lsst_repo: LsstRepo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "lsst.daf.butler", None)  # an import of it fails
    out = mirror(*pull_args(lsst_repo.root, tmp_path / "m", "summary"))
    assert out.exit_code == 1
    assert "reading it needs lsst-daf-butler" in out.output
    assert "butler-cache[lsst]" in out.output
