"""`butler ingest-zip` of archives made by the LSST butler's retrieve_artifacts_zip: the same
datasets under the same UUIDs, equal to what its `get` returns; all or nothing."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pytest
from conftest import new_repo, run_butler
from lsst_data import LSST_DATA, RUN, LsstRepo, make_lsst_repo, make_zip

from butler import Butler
from butler.direct_butler import DirectButler


@pytest.fixture(scope="module")
def lsst_repo(tmp_path_factory: pytest.TempPathFactory) -> LsstRepo:
    return make_lsst_repo(tmp_path_factory.mktemp("daf") / "repo")


def _check_all_datasets(root: Path, lsst_repo: LsstRepo) -> None:
    with DirectButler(root) as butler:
        ids = {ref.id for t in lsst_repo.refs for ref in butler.query_datasets(t, collections=RUN)}
        assert ids == lsst_repo.ids
        for name, ref in lsst_repo.refs.items():
            found = butler.registry.get_dataset(ref.id)
            assert found is not None
            ours, theirs = butler.get(found[0]), lsst_repo.get(name)
            if name == "src_table":
                assert ours.colnames == theirs.colnames
                for column in theirs.colnames:
                    np.testing.assert_array_equal(
                        np.asarray(ours[column]), np.asarray(theirs[column])
                    )
                    assert ours[column].unit == theirs[column].unit
            elif name == "calexp_image":
                np.testing.assert_array_equal(ours.data, theirs)
            else:
                assert ours == theirs
            their_file = Path(lsst_repo.butler.getURI(ref).ospath)
            assert (root / found[1].path).read_bytes() == their_file.read_bytes()
    assert not list(root.glob(".ingest-zip/*"))  # the extraction is cleaned away


def test_a_zip_with_its_records_ingests_whole(lsst_repo: LsstRepo, tmp_path: Path) -> None:
    archive = make_zip(lsst_repo, tmp_path / "zip", records=True)
    root = new_repo(tmp_path / "ours")
    out = run_butler("ingest-zip", str(root), str(archive))
    assert out.returncode == 0, out.stderr
    assert "5 datasets imported (0 were present)" in out.stdout
    _check_all_datasets(root, lsst_repo)
    with Butler(root) as butler:
        daf_visit = lsst_repo.butler.registry.expandDataId(lsst_repo.refs["summary"].dataId)
        record = daf_visit.records["visit"]
        (ours,) = butler.query_dimension_records("visit")
        assert (ours["timespan_begin"], ours["timespan_end"]) == record.timespan.nsec
        assert bytes.fromhex(ours["region"]) == record.region.encode()
    again = run_butler("ingest-zip", str(root), str(archive))
    assert again.returncode == 0, again.stderr
    assert "0 datasets imported (5 were present)" in again.stdout


def test_a_zip_without_records_needs_them_in_the_repository(
    lsst_repo: LsstRepo, tmp_path: Path
) -> None:
    archive = make_zip(lsst_repo, tmp_path / "zip", records=False)
    root = new_repo(tmp_path / "ours")
    out = run_butler("ingest-zip", str(root), str(archive))
    assert out.returncode == 1
    assert "no instrument record for instrument='LSSTCam'" in out.stderr
    assert "Traceback" not in out.stderr
    with Butler(root) as butler:
        assert butler.dataset_types() == []
    assert not list(root.glob(".ingest-zip/*"))
    # The records from the LSST butler's own export of them; then the archive goes in.
    assert run_butler("import", str(root), str(LSST_DATA / "lsstcam-subset.yaml")).returncode == 0
    out = run_butler("ingest-zip", str(root), str(archive))
    assert out.returncode == 0, out.stderr
    _check_all_datasets(root, lsst_repo)


def _rewrite(archive: Path, target: Path, change: dict[str, bytes | None]) -> Path:
    """A copy of ``archive`` with members replaced (or left out, for None)."""
    with zipfile.ZipFile(archive) as source, zipfile.ZipFile(target, "w") as out:
        for info in source.infolist():
            if info.filename in change:
                data = change[info.filename]
                if data is not None:
                    out.writestr(info.filename, data)
            else:
                out.writestr(info, source.read(info))
    return target


def test_a_damaged_zip_ingests_nothing(lsst_repo: LsstRepo, tmp_path: Path) -> None:
    archive = make_zip(lsst_repo, tmp_path / "zip", records=True)
    with zipfile.ZipFile(archive) as source:
        parquet = next(n for n in source.namelist() if n.endswith(".parq"))
        fits = next(n for n in source.namelist() if n.endswith(".fits"))
        truncated = source.read(parquet)[:500]
    cases = {
        "truncated": ({parquet: truncated}, "the index says"),
        "missing": ({fits: None}, "which is not in the archive"),
        "no index": ({"_butler_zip_index.json": None}, "no _butler_zip_index.json"),
        "bad index": ({"_butler_zip_index.json": b"{nope"}, "is not valid JSON"),
    }
    for number, (name, (change, message)) in enumerate(cases.items()):
        broken = _rewrite(archive, tmp_path / f"broken{number}.zip", change)
        root = new_repo(tmp_path / f"ours{number}")
        out = run_butler("ingest-zip", str(root), str(broken))
        assert out.returncode == 1, name
        assert message in out.stderr, name
        assert "Traceback" not in out.stderr, name
        with Butler(root) as butler:
            assert butler.dataset_types() == [], name
            assert butler.query_dimension_records("instrument") == [], name
        assert not list(root.glob(".ingest-zip/*")), name
    not_a_zip = tmp_path / "plain.zip"
    not_a_zip.write_text("hello")
    out = run_butler("ingest-zip", str(new_repo(tmp_path / "x")), str(not_a_zip))
    assert out.returncode == 1
    assert "is not a zip archive" in out.stderr
