"""`butler import` of exports made by the LSST butler (lsst-daf-butler) itself, and of the
exports in its own test data: the same datasets (same UUIDs, same values as its `get`), the
same dimension records (TAI times exact to the nanosecond, regions byte for byte), one
transaction, clear errors."""

from __future__ import annotations

import shutil
import subprocess
import sys
import uuid
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from astropy.table import Table
from conftest import new_repo, run_butler
from lsst.daf.butler import Butler as DafButler
from lsst_data import CHAIN, LSST_DATA, RUN, VISIT, LsstRepo, export, make_lsst_repo

from butler import Butler
from butler.direct_butler import DirectButler
from butler.image import Image


@pytest.fixture(scope="module")
def lsst_repo(tmp_path_factory: pytest.TempPathFactory) -> LsstRepo:
    return make_lsst_repo(tmp_path_factory.mktemp("daf") / "repo")


@pytest.fixture(scope="module")
def export_file(lsst_repo: LsstRepo, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export(lsst_repo, tmp_path_factory.mktemp("export") / "out")


def imported(root: Path, dataset_id: uuid.UUID) -> Any:
    with DirectButler(root) as butler:
        found = butler.registry.get_dataset(dataset_id)
        assert found is not None, f"dataset {dataset_id} was not imported"
        return butler.get(found[0])


def test_import_brings_every_dataset_with_its_uuid_and_value(
    lsst_repo: LsstRepo, export_file: Path, tmp_path: Path
) -> None:
    root = new_repo(tmp_path / "ours")
    out = run_butler("import", str(root), str(export_file))
    assert out.returncode == 0, out.stderr
    assert "5 datasets imported (0 were present)" in out.stdout
    assert "TAGGED collection 'tagged'" in out.stdout  # reported, not dropped silently

    with Butler(root, collections=CHAIN) as butler:
        assert {ref.id for t in lsst_repo.refs for ref in butler.query_datasets(t)} == (
            lsst_repo.ids
        )
        assert butler.get_collection_chain(CHAIN) == [RUN]
    # The table equals the LSST butler's get: columns, values, units.
    theirs: Table = lsst_repo.get("src_table")
    ours = imported(root, lsst_repo.refs["src_table"].id)
    assert ours.colnames == theirs.colnames
    for name in theirs.colnames:
        np.testing.assert_array_equal(np.asarray(ours[name]), np.asarray(theirs[name]))
        assert ours[name].unit == theirs[name].unit
    assert dict(ours.meta) == dict(theirs.meta)
    # Dicts from YAML and JSON files.
    assert imported(root, lsst_repo.refs["summary"].id) == lsst_repo.get("summary")
    assert imported(root, lsst_repo.refs["summary_json"].id) == lsst_repo.get("summary_json")
    assert imported(root, lsst_repo.refs["raw_meta"].id) == lsst_repo.get("raw_meta")
    # The FITS image reads back as an Image whose pixels are what the LSST butler returns.
    image = imported(root, lsst_repo.refs["calexp_image"].id)
    assert isinstance(image, Image)
    np.testing.assert_array_equal(image.data, lsst_repo.get("calexp_image"))
    # The files are byte-identical to the LSST butler's.
    with DirectButler(root) as butler:
        for ref in lsst_repo.refs.values():
            found = butler.registry.get_dataset(ref.id)
            assert found is not None
            theirs_path = Path(lsst_repo.butler.getURI(ref).ospath)
            assert (root / found[1].path).read_bytes() == theirs_path.read_bytes()
            # Data IDs: required values as given, implied ones from the records, as theirs.
            expanded = lsst_repo.butler.registry.expandDataId(ref.dataId)
            theirs_id = {k: expanded[k] for k in expanded.mapping}
            assert dict(found[0].data_id) == theirs_id


def test_dimension_records_keep_exact_times_and_regions(
    lsst_repo: LsstRepo, export_file: Path, tmp_path: Path
) -> None:
    root = new_repo(tmp_path / "ours")
    assert run_butler("import", str(root), str(export_file)).returncode == 0
    daf = lsst_repo.butler.registry
    with Butler(root) as butler:
        for element in ("visit", "exposure", "day_obs"):
            records = {r.id: r for r in daf.queryDimensionRecords(element, instrument="LSSTCam")}
            stored = butler.query_dimension_records(element)
            assert stored
            for ours in stored:
                begin, end = records[ours["id"]].timespan.nsec
                assert (ours["timespan_begin"], ours["timespan_end"]) == (begin, end)
        regions = {
            (r.visit, r.detector): r.region
            for r in daf.queryDimensionRecords("visit_detector_region", instrument="LSSTCam")
        }
        stored = butler.query_dimension_records("visit_detector_region")
        assert stored
        for ours in stored:
            region = regions[ours["visit"], ours["detector"]]
            assert bytes.fromhex(ours["region"]) == region.encode()
            box = region.getBoundingBox()
            assert ours["region_dec_min"] == pytest.approx(
                box.getLat().getA().asDegrees(), abs=1e-5
            )
            assert ours["region_dec_max"] == pytest.approx(
                box.getLat().getB().asDegrees(), abs=1e-5
            )
        (exposure,) = butler.query_dimension_records("exposure", where=f"exposure = {VISIT}")
        assert exposure["group"] == "2025-12-03T07:58:10.858"
        assert exposure["has_simulated"] is False  # a bool, as the LSST butler gives it
        assert exposure["can_see_sky"] is True
        # A query on the region's box picks the visit whose region lies there.
        found = butler.query_datasets(
            "summary", collections=RUN, where="visit.region_dec_min > -45"
        )
        assert [r.id for r in found] == [lsst_repo.refs["summary"].id]
        assert (
            butler.query_datasets("summary", collections=RUN, where="visit.region_dec_min > -40")
            == []
        )


def test_importing_again_adds_nothing(export_file: Path, tmp_path: Path) -> None:
    root = new_repo(tmp_path / "ours")
    assert run_butler("import", str(root), str(export_file)).returncode == 0
    again = run_butler("import", str(root), str(export_file))
    assert again.returncode == 0, again.stderr
    assert "0 datasets imported (5 were present)" in again.stdout
    assert "0 new dimension records" in again.stdout


def test_skip_dimensions_needs_the_records_present(export_file: Path, tmp_path: Path) -> None:
    root = new_repo(tmp_path / "ours")
    out = run_butler("import", str(root), str(export_file), "--skip-dimensions")
    assert out.returncode == 1
    assert "no instrument record for instrument='LSSTCam'" in out.stderr
    assert "Traceback" not in out.stderr
    with Butler(root) as butler:
        assert butler.query_dimension_records("instrument") == []
        assert butler.dataset_types() == []
    # With the records in (from the LSST butler's own export of them), it needs none.
    assert run_butler("import", str(root), str(LSST_DATA / "lsstcam-subset.yaml")).returncode == 0
    out = run_butler("import", str(root), str(export_file), "--skip-dimensions")
    assert out.returncode == 0, out.stderr
    assert "5 datasets imported" in out.stdout
    assert "0 new dimension records" in out.stdout


def test_transfer_symlink_links_to_the_export(export_file: Path, tmp_path: Path) -> None:
    root = new_repo(tmp_path / "ours")
    out = run_butler("import", str(root), str(export_file), "--transfer", "symlink")
    assert out.returncode == 0, out.stderr
    links = [p for p in root.rglob("*") if p.is_symlink()]
    assert len(links) == 5
    assert all(p.resolve().is_relative_to(export_file.parent.resolve()) for p in links)


def _broken_copy(export_file: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "export"
    shutil.copytree(export_file.parent, copy)
    return copy / export_file.name


def _assert_untouched(root: Path) -> None:
    with Butler(root) as butler:
        assert butler.query_dimension_records("instrument") == []
        assert butler.dataset_types() == []
        assert butler.query_collections() == []
    assert sorted(p.name for p in root.iterdir() if not p.name.startswith(".")) == [
        "butler.yaml",
        "dimensions.yaml",
        "registry.sqlite3",
    ] or not any(p.is_file() and p.suffix in (".parq", ".fits", ".yaml", ".json")
                 for p in root.rglob("*/*/*"))  # fmt: skip


def test_a_missing_file_imports_nothing(export_file: Path, tmp_path: Path) -> None:
    broken = _broken_copy(export_file, tmp_path)
    (victim,) = broken.parent.rglob("calexp_image_*.fits")
    victim.unlink()
    root = new_repo(tmp_path / "ours")
    out = run_butler("import", str(root), str(broken))
    assert out.returncode == 1
    assert "1 dataset files are missing" in out.stderr
    assert victim.name in out.stderr
    assert "Traceback" not in out.stderr
    _assert_untouched(root)


def test_a_corrupt_file_imports_nothing(export_file: Path, tmp_path: Path) -> None:
    broken = _broken_copy(export_file, tmp_path)
    (victim,) = broken.parent.rglob("src_table_*.parq")
    victim.write_bytes(victim.read_bytes()[:100])
    root = new_repo(tmp_path / "ours")
    out = run_butler("import", str(root), str(broken))
    assert out.returncode == 1
    assert victim.name in out.stderr
    assert "Traceback" not in out.stderr
    _assert_untouched(root)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda t: t.replace("!uuid", "!unknown_tag", 1), "!unknown_tag"),
        (lambda t: t.replace("element: group", "element: grupo", 1), "'grupo' is not in"),
        (lambda t: t.replace("seq_num:", "seq_nom:", 1), "seq_nom: no such field"),
        (lambda t: t.replace("data:", "dada:", 1), "not an LSST butler export"),
        (lambda t: t.replace("dataset_id:", "dataset_id: [not-a-uuid]\n    x:", 1), "not a UUID"),
    ],
)
def test_a_malformed_export_is_refused_with_its_reason(
    export_file: Path, tmp_path: Path, edit: Any, message: str
) -> None:
    broken = _broken_copy(export_file, tmp_path)
    broken.write_text(edit(broken.read_text()))
    root = new_repo(tmp_path / "ours")
    out = run_butler("import", str(root), str(broken))
    assert out.returncode == 1
    assert message in out.stderr
    assert "Traceback" not in out.stderr
    _assert_untouched(root)


# -- the LSST butler's own test data ----------------------------------------------------------


def _daf_records(filenames: list[str], tmp_path: Path) -> dict[str, list[dict[str, Any]]]:
    """Every record the LSST butler itself holds after importing ``filenames``."""
    root = tmp_path / "daf"
    DafButler.makeRepo(str(root))
    daf = DafButler.from_config(str(root), writeable=True)
    for filename in filenames:
        with warnings.catch_warnings():
            # Its note that old day_obs records get no timespan (as ours get none).
            warnings.filterwarnings("ignore", "Constructing day_obs records", UserWarning)
            daf.import_(filename=str(LSST_DATA / filename))
    out: dict[str, list[dict[str, Any]]] = {}
    for element in daf.dimensions.getStaticElements():
        if element.name in daf.dimensions.skypix_dimensions.names:
            continue
        rows = [r.toDict() for r in daf.registry.queryDimensionRecords(element.name)]
        if rows:
            out[element.name] = rows
    return out


def _ours(row: dict[str, Any], element: str, universe: Any) -> dict[str, Any]:
    """A record of the LSST butler in the form this project stores it."""
    spec = universe[element]
    out: dict[str, Any] = {}
    for key, value in row.items():
        if key == "timespan":
            out["timespan_begin"], out["timespan_end"] = (
                value.nsec if value is not None else (None, None)
            )
        elif key == "region":
            out["region"] = value.encode().hex() if value is not None else None
        elif isinstance(value, bytes):
            out[key] = value.hex()
        elif isinstance(value, bool):
            out[key] = int(value)
        elif key == element and spec.has_key:
            out[spec.key_name] = value
        else:
            out[key] = value
    return out


@pytest.mark.parametrize(
    "filenames",
    [
        ["lsstcam-subset.yaml"],  # universe version 7: groups, regions, exact TAI times
        ["hsc-rc2-subset-v0.yaml"],  # no universe_version: older names, derived day_obs
        ["base.yaml", "spatial.yaml"],  # version 6, then tract/patch/visit regions on it
    ],
)
def test_the_lsst_butlers_own_exports_import_as_it_reads_them(
    filenames: list[str], tmp_path: Path
) -> None:
    root = new_repo(tmp_path / "ours")
    for filename in filenames:
        out = run_butler("import", str(root), str(LSST_DATA / filename))
        assert out.returncode == 0, out.stderr
    theirs = _daf_records(filenames, tmp_path)
    with Butler(root) as butler:
        universe = butler.universe
        for element, rows in theirs.items():
            stored = butler.query_dimension_records(element)
            assert len(stored) == len(rows), element
            for row in rows:
                expected = _ours(row, element, universe)
                keys = {k: expected[k] for k in expected if k in (
                    *universe.required_closure([element]), universe[element].key_name)}  # fmt: skip
                (match,) = [s for s in stored if all(s.get(k) == v for k, v in keys.items())]
                for key, value in expected.items():
                    assert match.get(key) == value, (element, key)


def test_an_export_with_a_pickled_dataset_brings_the_rest_and_says_so(tmp_path: Path) -> None:
    # The LSST butler's own ci_hsc skymap export: its skyMap dataset is a pickle.
    root = new_repo(tmp_path / "ours")
    out = run_butler("import", str(root), str(LSST_DATA / "ci_hsc-subset-skymap.yaml"))
    assert out.returncode == 0, out.stderr
    assert "NOT CARRIED OVER dataset type 'skyMap'" in out.stdout
    assert "never pickles" in out.stdout
    with Butler(root) as butler:
        (skymap,) = butler.query_dimension_records("skymap")
        assert skymap["name"] == "discrete/ci_hsc"
        assert len(skymap["hash"]) == 40  # the binary hash, as hex
        assert butler.dataset_types() == []


def test_the_butler_command_of_this_environment_is_ours() -> None:
    # lsst-daf-butler installs a `butler` command too; this project's must be the one on
    # the environment's path (scripts/test.sh reinstalls it if the LSST one won).
    script = Path(sys.executable).with_name("butler")
    assert "butler.cli.main" in script.read_text()
    out = subprocess.run(
        [str(script), "--help"], capture_output=True, text=True, timeout=60, check=False
    )
    assert out.returncode == 0
    assert "ingest-zip" in out.stdout
