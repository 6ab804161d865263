"""Dimension records of an observation (pure)."""

from __future__ import annotations

from typing import Any

from butler.translators.base import Observation

__all__ = ["dimension_records"]


def dimension_records(obs: Observation) -> list[tuple[str, dict[str, Any]]]:
    """(element, record) pairs, requirements first, with None values left out."""
    inst = {"instrument": obs.instrument}
    exposure_facts = {
        "physical_filter": obs.physical_filter,
        "day_obs": obs.day_obs,
        "exposure_time": obs.exposure_time,
        "target_name": obs.target_name,
        "datetime_begin": obs.datetime_begin,
        "datetime_end": obs.datetime_end,
        "tracking_ra": obs.tracking_ra,
        "tracking_dec": obs.tracking_dec,
    }
    records: list[tuple[str, dict[str, Any]]] = [
        ("instrument", {"name": obs.instrument, "class_name": obs.translator}),
        ("band", {"name": obs.band}),
        ("physical_filter", {**inst, "name": obs.physical_filter, "band": obs.band}),
        ("day_obs", {**inst, "id": obs.day_obs}),
        ("detector", {**inst, "id": obs.detector, "full_name": obs.detector_name}),
        (
            "exposure",
            {
                **inst,
                "id": obs.exposure,
                **exposure_facts,
                "obs_id": obs.obs_id,
                "observation_type": obs.observation_type,
            },
        ),
        (
            "visit",
            {
                **inst,
                "id": obs.visit if obs.visit is not None else obs.exposure,
                **exposure_facts,
                "name": obs.obs_id,
            },
        ),
    ]
    if obs.physical_filter is None:
        # The header names no filter: the exposure's physical_filter stays null, and there
        # is no filter (or band) record to make.
        records = [(e, r) for e, r in records if e not in ("band", "physical_filter")]
    elif obs.band is None:
        records = [(e, r) for e, r in records if e != "band"]
    return [(element, {k: v for k, v in rec.items() if v is not None}) for element, rec in records]
