"""LSST butler data made by lsst-daf-butler itself, for the import and zip tests."""

from __future__ import annotations

import sys
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import astropy.table
import numpy as np
from lsst.daf.butler import (
    Butler,
    CollectionType,
    Config,
    DataCoordinate,
    DatasetRef,
    DatasetType,
)

LSST_DATA = Path(__file__).with_name("data") / "lsst"
RUN = "LSSTCam/runs/test"
CHAIN = "LSSTCam/defaults"
VISIT = 2025120200439
EXPOSURE = 2025120200439

# The FITS image formatter plugged into lsst-daf-butler (tests/lsst_fits_formatter.py).
sys.path.insert(0, str(Path(__file__).parent))


@dataclass
class LsstRepo:
    root: Path
    butler: Butler
    refs: dict[str, DatasetRef]
    """By dataset type name."""

    def get(self, name: str) -> Any:
        return self.butler.get(self.refs[name])

    @property
    def ids(self) -> set[uuid.UUID]:
        return {ref.id for ref in self.refs.values()}


def make_lsst_repo(root: Path) -> LsstRepo:
    """A LSST butler repository with real LSSTCam records (its own test data) and four
    datasets: an astropy table (Parquet), a dict as YAML and as JSON, and a FITS image."""
    config = Config()
    config["datastore", "formatters", "calexp_image"] = (
        "lsst_fits_formatter.LsstLayoutFitsFormatter"
    )
    config["datastore", "formatters", "summary_json"] = (
        "lsst.daf.butler.formatters.json.JsonFormatter"
    )
    Butler.makeRepo(str(root), config=config)
    butler = Butler.from_config(str(root), writeable=True, run=RUN)
    butler.import_(filename=str(LSST_DATA / "lsstcam-subset.yaml"))
    universe = butler.dimensions
    for name, dimensions, storage_class in [
        ("src_table", ["visit", "detector"], "ArrowAstropy"),
        ("summary", ["visit", "detector"], "StructuredDataDict"),
        ("summary_json", ["visit", "detector"], "StructuredDataDict"),
        ("calexp_image", ["visit", "detector"], "NumpyArray"),
        ("raw_meta", ["exposure", "detector"], "StructuredDataDict"),
    ]:
        butler.registry.registerDatasetType(
            DatasetType(name, dimensions, storage_class, universe=universe)
        )
    table = astropy.table.Table(
        {
            "id": np.arange(5, dtype=np.int64),
            "flux": np.linspace(0.5, 2.5, 5),
            "band": np.array(["z", "z", "y", "z", "y"]),
        }
    )
    table["flux"].unit = "nJy"
    visit_id = {"instrument": "LSSTCam", "visit": VISIT, "detector": 10}
    refs = {
        "src_table": butler.put(table, "src_table", **visit_id),
        "summary": butler.put({"seeing": 0.71, "stars": [1, 2, 3]}, "summary", **visit_id),
        "summary_json": butler.put({"zeropoint": 31.4, "ok": True}, "summary_json", **visit_id),
        "calexp_image": butler.put(
            np.arange(48, dtype=np.float32).reshape(6, 8), "calexp_image", **visit_id
        ),
        "raw_meta": butler.put(
            {"exposure": "first"},
            "raw_meta",
            instrument="LSSTCam",
            exposure=EXPOSURE,
            detector=11,
        ),
    }
    butler.registry.registerCollection(CHAIN, CollectionType.CHAINED)
    butler.registry.setCollectionChain(CHAIN, [RUN])
    butler.registry.registerCollection("tagged", CollectionType.TAGGED)
    butler.registry.associate("tagged", [refs["summary"]])
    return LsstRepo(root, butler, refs)


def export(repo: LsstRepo, directory: Path, *, records: bool = True) -> Path:
    """``Butler.export`` of the datasets (with their files, copied) and collections."""
    directory.mkdir(parents=True)
    filename = directory / "export.yaml"
    with repo.butler.export(
        filename=str(filename), directory=str(directory), transfer="copy"
    ) as exporter:
        exporter.saveDatasets(list(repo.refs.values()), elements=None if records else ())
        exporter.saveCollection(CHAIN)
        exporter.saveCollection("tagged")
    return filename


def make_zip(repo: LsstRepo, directory: Path, *, records: bool) -> Path:
    """``Butler.retrieve_artifacts_zip`` of the datasets, with their dimension records or
    without (as the LSST butler writes it for refs that are expanded or not)."""
    directory.mkdir(parents=True)
    refs = list(repo.refs.values())
    if records:
        refs = [ref.expanded(repo.butler.registry.expandDataId(ref.dataId)) for ref in refs]
    else:
        refs = [
            DatasetRef(
                ref.datasetType,
                DataCoordinate.standardize(
                    dict(ref.dataId.required), dimensions=ref.datasetType.dimensions
                ),
                run=ref.run,
                id=ref.id,
            )
            for ref in refs
        ]
        assert not any(ref.dataId.hasRecords() for ref in refs)
    uri = repo.butler.retrieve_artifacts_zip(refs, str(directory))
    return Path(uri.ospath)
