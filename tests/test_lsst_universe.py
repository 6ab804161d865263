"""The universe covers the LSST butler's: its elements, fields and keys, exact TAI times and
sky regions with a bounding box (checked against lsst.sphgeom and lsst.daf.butler itself)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import yaml
from astropy.time import Time
from lsst import sphgeom
from lsst.daf.butler import DimensionUniverse as DafUniverse
from lsst.daf.butler import Timespan

from butler import Butler
from butler.errors import DataIdError, InvalidQueryError, RepositoryConfigError
from butler.sky_region import bounding_box
from butler.tai import tai_from_iso, tai_to_iso, to_tai_ns
from butler.universe import DimensionUniverse


def _polygon(*corners: tuple[float, float]) -> sphgeom.ConvexPolygon:
    return sphgeom.ConvexPolygon(
        [sphgeom.UnitVector3d(sphgeom.LonLat.fromDegrees(ra, dec)) for ra, dec in corners]
    )


def test_every_lsst_element_field_key_and_relation_has_its_place() -> None:
    daf = DafUniverse()
    ours = DimensionUniverse.default()
    assert ours.daf_butler_version == daf.version == 8
    skypix = set(daf.skypix_dimensions.names)  # computed pixelisations: not carried over
    assert {e.name for e in daf.getStaticElements()} - skypix <= set(ours.names)
    for element in daf.getStaticElements():
        if element.name in skypix:
            continue
        spec = ours[element.name]
        assert set(ours.required_closure([element.name])) - {element.name} == set(
            element.minimal_group.required
        ) - {element.name}, element.name
        assert set(spec.implies) == {d.name for d in element.implied}, element.name
        if element.name in daf.dimensions.names:
            assert spec.has_key
            assert spec.key_name == element.primary_key.name
        else:
            assert not spec.has_key, element.name
        columns = {name for name, _ in ours.table_columns(element.name)}
        for field in element.schema.remainder:
            if field.name == "timespan":
                assert {"timespan_begin", "timespan_end"} <= columns
            else:
                assert field.name in columns, (element.name, field.name)
        for key in getattr(element, "alternate_keys", ()):
            assert key.name in spec.alternate_keys
            assert key.name in spec.fields


def test_tai_times_are_exact_to_the_nanosecond() -> None:
    text = "2025-12-03 07:59:07.425363958"
    ns = tai_from_iso(text)
    assert tai_to_iso(ns) == text
    # The LSST butler's own nanoseconds for the same instant.
    begin = Time(text, format="iso", scale="tai")
    assert Timespan(begin, None).nsec[0] == ns
    assert to_tai_ns(begin, "t") == ns
    assert to_tai_ns(begin.utc, "t") == ns
    assert tai_from_iso("1970-01-01 00:00:00") == 0
    assert tai_to_iso(-1) == "1969-12-31 23:59:59.999999999"
    with pytest.raises(DataIdError, match="not an ISO time"):
        tai_from_iso("yesterday")


@pytest.mark.parametrize(
    "region",
    [
        _polygon((10, 0), (20, 0), (20, 10), (10, 10)),
        _polygon((355, -40), (5, -40), (5, -30), (355, -30)),
        sphgeom.Box.fromDegrees(100, -20, 130, 40),
        sphgeom.Circle(
            sphgeom.UnitVector3d(sphgeom.LonLat.fromDegrees(200, -60)),
            sphgeom.Angle.fromDegrees(2),
        ),
    ],
)
def test_bounding_box_holds_the_region_as_sphgeom_bounds_it(region: sphgeom.Region) -> None:
    box = bounding_box(region.encode().hex())
    assert box is not None
    theirs = region.getBoundingBox()
    dec_lo, dec_hi = theirs.getLat().getA().asDegrees(), theirs.getLat().getB().asDegrees()
    # Dec bounds as sphgeom's (which pads them a little), great-circle bulges included.
    assert box.dec_min == pytest.approx(dec_lo, abs=1e-5)
    assert box.dec_max == pytest.approx(dec_hi, abs=1e-5)
    # Every corner of our box that lies in the region is inside sphgeom's box, and a grid
    # of points of the region all fall in ours.
    for ra in range(0, 360):
        for dec in range(-89, 90):
            point = sphgeom.UnitVector3d(sphgeom.LonLat.fromDegrees(ra + 0.5, dec + 0.5))
            if region.contains(point):
                inside_ra = (
                    box.ra_min <= ra + 0.5 <= box.ra_max
                    if box.ra_min <= box.ra_max
                    else ra + 0.5 >= box.ra_min or ra + 0.5 <= box.ra_max
                )
                assert inside_ra
                assert box.dec_min <= dec + 0.5 <= box.dec_max


def test_a_polygon_across_ra_zero_has_a_wrapping_box() -> None:
    polygon = _polygon((355, -40), (5, -40), (5, -30), (355, -30))
    box = bounding_box(polygon.encode().hex())
    assert box is not None
    assert box.ra_min == pytest.approx(355)
    assert box.ra_max == pytest.approx(5)
    polar = sphgeom.Circle(sphgeom.UnitVector3d(0, 0, 1), sphgeom.Angle.fromDegrees(5))
    polar_box = bounding_box(polar.encode().hex())
    assert polar_box is not None
    assert (polar_box.ra_min, polar_box.ra_max, polar_box.dec_max) == (0.0, 360.0, 90.0)
    assert not math.isnan(polar_box.dec_min)


def test_relations_regions_and_timespans_are_stored_and_queried(tmp_path: Path) -> None:
    region = _polygon((10, 0), (11, 0), (11, 1), (10, 1))
    butler = Butler.create(tmp_path / "repo")
    butler.insert_dimension_records("instrument", {"name": "LSSTCam"})
    butler.insert_dimension_records("detector", {"instrument": "LSSTCam", "id": 10})
    butler.insert_dimension_records("group", {"instrument": "LSSTCam", "name": "g1"})
    begin = "2025-12-03 07:59:07.425363958"
    butler.insert_dimension_records(
        "visit",
        {"instrument": "LSSTCam", "id": 7, "region": region, "timespan_begin": begin},
    )
    butler.insert_dimension_records(
        "exposure",
        {
            "instrument": "LSSTCam",
            "id": 7,
            "group": "g1",
            "has_simulated": False,
            "can_see_sky": True,
        },
    )
    butler.insert_dimension_records(
        "visit_detector_region",
        {"instrument": "LSSTCam", "visit": 7, "detector": 10, "region": region.encode()},
    )
    (visit,) = butler.query_dimension_records("visit")
    assert visit["timespan_begin"] == tai_from_iso(begin)
    (exposure,) = butler.query_dimension_records("exposure", where="exposure.can_see_sky = 1")
    assert exposure["group"] == "g1"
    assert exposure["has_simulated"] is False  # stored 0/1, given back as a bool
    assert exposure["can_see_sky"] is True
    # A true/false field compares with a bound bool; an ID does not (True = 1 is a slip).
    for flag, found in ((True, []), (False, ["g1"])):
        records = butler.query_dimension_records(
            "exposure", where="exposure.has_simulated = b", bind={"b": flag}
        )
        assert [r["group"] for r in records] == found
    with pytest.raises(InvalidQueryError, match="unsupported type bool"):
        butler.query_dimension_records("exposure", where="exposure = b", bind={"b": True})
    assert bytes.fromhex(visit["region"]) == region.encode()
    assert visit["region_dec_max"] == pytest.approx(1.0, abs=1e-3)
    found = butler.query_dimension_records("visit", where="visit.region_dec_min > -0.5")
    assert [r["id"] for r in found] == [7]
    assert butler.query_dimension_records("visit", where="visit.region_dec_min > 0.5") == []
    (vdr,) = butler.query_dimension_records(
        "visit_detector_region", where="visit_detector_region.region_ra_max < 12"
    )
    assert (vdr["visit"], vdr["detector"]) == (7, 10)
    # A relation is not a dimension a dataset type can name.
    with pytest.raises(RepositoryConfigError, match="unknown dimensions"):
        butler.register_dataset_type("x", ["visit_detector_region"], "Dict")
    # A region's box is computed from the region, whatever a record says (a copy's).
    butler.insert_dimension_records(
        "visit", {"instrument": "LSSTCam", "id": 8, "region_ra_min": 3.0, "region": region}
    )
    (copied,) = butler.query_dimension_records("visit", where="visit = 8")
    assert copied["region_ra_min"] == pytest.approx(10.0)


def test_version_1_universe_files_still_load() -> None:
    # Repositories made before this change keep their own copy of the version 1 universe.
    old = yaml.safe_load(
        Path(__file__).with_name("data").joinpath("dimensions-v1.yaml").read_text()
    )
    universe = DimensionUniverse(old)
    assert universe.version == 1
    assert universe.daf_butler_version is None
    assert universe.dimensions == universe.names


@pytest.mark.parametrize("bad", ["visit\n", "Visit", "1visit", "vi sit", ""])
def test_dimension_names_are_plain_identifiers(bad: str) -> None:
    # Names become SQL identifiers: "$" would let a final newline through.
    config = {"elements": {"instrument": {"key": {"name": "name", "type": "str"}}, bad: {}}}
    with pytest.raises(RepositoryConfigError, match="is not a valid name"):
        DimensionUniverse(config)
