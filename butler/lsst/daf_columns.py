"""The column order of the LSST butler's dimension records in zip indexes.

A zip made by ``butler retrieve-artifacts --zip`` (or ``Butler.retrieve_artifacts_zip``) may
carry the datasets' dimension records, each as a list of values in its element's schema
order. That order is the LSST butler's (universe versions 7 and 8; version 7 lacks the
``ssp_*`` elements), read once from lsst-daf-butler and written here so the reader needs
no LSST package.
"""

from __future__ import annotations

__all__ = ["ZIP_RECORD_COLUMNS", "ZIP_RECORD_VERSIONS"]

ZIP_RECORD_VERSIONS = (7, 8)

ZIP_RECORD_COLUMNS: dict[str, tuple[str, ...]] = {
    "band": ("name",),
    "instrument": (
        "name",
        "visit_max",
        "visit_system",
        "exposure_max",
        "detector_max",
        "class_name",
    ),
    "skymap": ("name", "hash", "tract_max", "patch_nx_max", "patch_ny_max"),
    "ssp_hypothesis_table": ("name",),
    "day_obs": ("instrument", "id", "timespan"),
    "detector": ("instrument", "id", "full_name", "name_in_raft", "raft", "purpose"),
    "group": ("instrument", "name"),
    "physical_filter": ("instrument", "name", "band"),
    "ssp_balanced_index": ("ssp_hypothesis_table", "id"),
    "ssp_hypothesis_bundle": ("ssp_hypothesis_table", "id"),
    "subfilter": ("band", "id"),
    "tract": ("skymap", "id", "region"),
    "visit_system": ("instrument", "id", "name"),
    "exposure": (
        "instrument",
        "id",
        "day_obs",
        "group",
        "physical_filter",
        "obs_id",
        "exposure_time",
        "dark_time",
        "observation_type",
        "observation_reason",
        "seq_num",
        "seq_start",
        "seq_end",
        "target_name",
        "science_program",
        "tracking_ra",
        "tracking_dec",
        "sky_angle",
        "azimuth",
        "zenith_angle",
        "has_simulated",
        "can_see_sky",
        "timespan",
    ),
    "patch": ("skymap", "tract", "id", "cell_x", "cell_y", "region"),
    "visit": (
        "instrument",
        "id",
        "day_obs",
        "physical_filter",
        "name",
        "seq_num",
        "exposure_time",
        "target_name",
        "observation_reason",
        "science_program",
        "azimuth",
        "zenith_angle",
        "region",
        "timespan",
    ),
    "visit_definition": ("instrument", "exposure", "visit"),
    "visit_detector_region": ("instrument", "detector", "visit", "region"),
    "visit_system_membership": ("instrument", "visit_system", "visit"),
}
