"""LSST butler dimension records -> records of this project's universe.

The LSST butler writes a record's timespan as ``datetime_begin``/``datetime_end`` (TAI times)
in exports and as ``timespan`` ``[begin_ns, end_ns]`` in zip indexes; both become the exact
``timespan_begin``/``timespan_end`` nanoseconds, plus ``datetime_begin``/``datetime_end`` as
UTC ISO text (the fields this project's queries and raw ingest use). Regions stay the LSST
butler's encoding (hex); a skymap's binary hash becomes hex. Universe versions before 6 named
some things differently (an exposure's ``group_name``; a visit's ``visit_system``); they are
changed here as the LSST butler's own import changes them, and the ``band``, ``day_obs`` and
``group`` records that the LSST butler derives rather than exports are made from the values
other records name.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from butler.lsst.contents import LsstFormatError
from butler.tai import tai_from_iso, tai_to_iso, tai_to_utc_iso
from butler.universe import DimensionUniverse

__all__ = ["TaiTime", "complete_records", "convert_record"]

# Elements the LSST butler never exports (views of others) or, before universe version 6,
# did not have: made here from the values the other records hold.
_DERIVED = ("band", "day_obs", "group")


@dataclass(frozen=True)
class TaiTime:
    """A ``!butler_time/tai/iso`` value: TAI nanoseconds since 1970-01-01T00:00:00 TAI."""

    ns: int


def _native_time(value: Any) -> Any:
    """A plain YAML timestamp (older exports wrote UTC ``datetime``s) as a TAI time."""
    if isinstance(value, datetime.datetime):
        from astropy.time import Time

        return TaiTime(tai_from_iso(str(Time(value, scale="utc").tai.iso)))
    return value


def _time_ns(value: Any, where: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, TaiTime):
        return value.ns
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    raise LsstFormatError(f"{where}: expected a TAI time, got {value!r}")


def _timespan(value: Any, where: str) -> tuple[int | None, int | None]:
    """A zip index's ``[begin, end]`` nanoseconds, or an export's Timespan mapping."""
    if value is None:
        return None, None
    if isinstance(value, Mapping):
        return _time_ns(value.get("begin"), where), _time_ns(value.get("end"), where)
    if isinstance(value, list | tuple) and len(value) == 2:
        return _time_ns(value[0], where), _time_ns(value[1], where)
    raise LsstFormatError(f"{where}: expected a timespan [begin, end], got {value!r}")


def convert_record(
    universe: DimensionUniverse,
    element: str,
    record: Mapping[str, Any],
    version: int | None,
    where: str,
) -> tuple[dict[str, Any], list[tuple[str, dict[str, Any]]]]:
    """The record in this universe's fields, and further records it implies (old versions)."""
    if element not in universe:
        raise LsstFormatError(
            f"{where}: dimension element {element!r} is not in this repository's universe "
            f"(it has {', '.join(universe.names)}); if the repository was made by an earlier "
            "release, run `butler migrate REPO` first"
        )
    spec = universe[element]
    columns = dict(universe.table_columns(element))
    out: dict[str, Any] = {}
    extra: list[tuple[str, dict[str, Any]]] = []
    row = {k: _native_time(v) for k, v in record.items()}
    # What the LSST butler's own import does with files of older universes (its
    # transfers/_yaml.py), for the same results; an unrecorded version is 0.
    recorded, version = version, version or 0
    if element == "visit" and version < 1:
        row.pop("seeing", None)
        if row.get("day_obs") is None and isinstance(row.get("datetime_begin"), TaiTime):
            # Without the instrument's day offset (its class is not importable here, nor,
            # without the obs packages, by the LSST butler), the TAI date.
            row["day_obs"] = int(tai_to_iso(row["datetime_begin"].ns)[:10].replace("-", ""))
    if element in ("visit", "visit_definition") and version < 2 and "visit_system" in row:
        system = row.pop("visit_system")
        if element == "visit" and system is not None:
            extra.append(
                (
                    "visit_system_membership",
                    {"instrument": row.get("instrument"), "visit": row.get("id"),
                     "visit_system": system},
                )
            )  # fmt: skip
    if element == "exposure" and version < 6:
        row.pop("group_id", None)
        if "group_name" in row:
            row["group"] = row.pop("group_name")
    for name, value in row.items():
        here = f"{where}: {element}.{name}"
        if name in ("datetime_begin", "datetime_end") and spec.timespan:
            ns = _time_ns(value, here)
            out[name.replace("datetime", "timespan")] = ns
            out[name] = None if ns is None else tai_to_utc_iso(ns)
        elif name == "timespan" and spec.timespan:
            begin, end = _timespan(value, here)
            out["timespan_begin"], out["timespan_end"] = begin, end
            out["datetime_begin"] = None if begin is None else tai_to_utc_iso(begin)
            out["datetime_end"] = None if end is None else tai_to_utc_iso(end)
        elif name == element and spec.has_key:
            out[spec.key_name] = value  # the zip index names a key by its element
        elif name in columns:
            out[name] = value.hex() if isinstance(value, bytes) else value
        else:
            raise LsstFormatError(
                f"{here}: no such field in this repository's universe (the export's LSST "
                f"universe version: {recorded if recorded is not None else 'unrecorded'}; this "
                f"butler holds up to {universe.daf_butler_version}); its fields are "
                f"{', '.join(c for c, _ in universe.table_columns(element))}"
            )
    return out, extra


def complete_records(
    universe: DimensionUniverse, records: dict[str, list[dict[str, Any]]]
) -> dict[str, list[dict[str, Any]]]:
    """``records`` plus keys-only records of the derived elements other records name."""
    have: dict[str, set[tuple[Any, ...]]] = {}
    for element in _DERIVED:
        if element not in universe:
            continue
        keys = [d for d in universe.required_closure([element]) if d != element]
        key_name = universe[element].key_name
        have[element] = {
            (*(r.get(k) for k in keys), r.get(key_name)) for r in records.get(element, [])
        }
    added: dict[str, list[dict[str, Any]]] = {}
    for element, rows in records.items():
        implies = [d for d in universe[element].implies if d in have]
        for row in rows:
            for dim in implies:
                if row.get(dim) is None:
                    continue
                keys = [d for d in universe.required_closure([dim]) if d != dim]
                values = {k: row.get(k) for k in keys}
                key = (*values.values(), row[dim])
                if key not in have[dim]:
                    have[dim].add(key)
                    added.setdefault(dim, []).append({**values, universe[dim].key_name: row[dim]})
    out = {e: list(rows) for e, rows in records.items()}
    for element, rows in added.items():
        out.setdefault(element, []).extend(rows)
    return out


def group_extra(
    records: dict[str, list[dict[str, Any]]], extra: Iterable[tuple[str, dict[str, Any]]]
) -> None:
    """Add records an old version's record implied (a visit's visit_system membership)."""
    for element, row in extra:
        if row not in records.setdefault(element, []):
            records[element].append(row)
