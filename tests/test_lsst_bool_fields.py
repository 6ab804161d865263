"""True/false record fields of the LSST universe compare with bound bools, on both registry
engines (PostgreSQL binds a Python bool as a boolean, which an integer column refuses), and
a bound bool stays refused against fields that are not true/false, relations' included."""

from __future__ import annotations

from pathlib import Path

import pytest
from postgres import PostgresServer

from butler import Butler
from butler.errors import InvalidQueryError


def _repo(root: Path, registry: str | None) -> Butler:
    butler = Butler.create(root, registry=registry)
    butler.insert_dimension_records("instrument", {"name": "LSSTCam"})
    butler.insert_dimension_records("detector", {"instrument": "LSSTCam", "id": 10})
    butler.insert_dimension_records("group", {"instrument": "LSSTCam", "name": "g1"})
    butler.insert_dimension_records("group", {"instrument": "LSSTCam", "name": "g2"})
    for exposure, group, simulated in ((7, "g1", False), (8, "g2", True)):
        butler.insert_dimension_records(
            "exposure",
            {
                "instrument": "LSSTCam",
                "id": exposure,
                "group": group,
                "has_simulated": simulated,
                "can_see_sky": True,
            },
        )
    butler.insert_dimension_records("visit", {"instrument": "LSSTCam", "id": 7})
    butler.insert_dimension_records(
        "visit_detector_region",
        {"instrument": "LSSTCam", "visit": 7, "detector": 10, "region_ra_max": 1.0},
    )
    return butler


@pytest.fixture(params=["sqlite", "postgresql"])
def butler(request: pytest.FixtureRequest, tmp_path: Path) -> Butler:
    registry = None
    if request.param == "postgresql":
        server: PostgresServer = request.getfixturevalue("postgres_server")
        registry = server.new_registry()
    return _repo(tmp_path / "repo", registry)


@pytest.mark.parametrize(("flag", "groups"), [(True, ["g2"]), (False, ["g1"])])
def test_a_bound_bool_selects_by_a_true_false_field(
    butler: Butler, flag: bool, groups: list[str]
) -> None:
    records = butler.query_dimension_records(
        "exposure", where="exposure.has_simulated = b", bind={"b": flag}
    )
    assert sorted(r["group"] for r in records) == groups
    assert all(r["has_simulated"] is flag for r in records)


def test_a_bound_bool_is_refused_against_a_relations_number(butler: Butler) -> None:
    with pytest.raises(InvalidQueryError, match="unsupported type bool"):
        butler.query_dimension_records(
            "visit_detector_region",
            where="visit_detector_region.region_ra_max < b",
            bind={"b": True},
        )
