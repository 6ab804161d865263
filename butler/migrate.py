"""Upgrade a repository's dimension universe in place (``butler migrate``).

A repository keeps the universe it was created with (its own ``dimensions.yaml``), so one made
by an earlier release keeps working unchanged. To hold what a newer universe adds (the LSST
butler's elements and fields, for ``butler import``), its registry gains the new tables and
columns here. Only additions are made: every element the repository has must exist in the
target with the same key and requirements, and keep its implied dimensions and field kinds,
so no existing row changes meaning.

The registry changes are one transaction (on SQLite or PostgreSQL, whichever holds the
registry); the new ``dimensions.yaml`` is written
beside the old one first and moved into place after the commit. A crash between the two
leaves a registry already upgraded and the new file pending, which running the command again
finishes (``butler_meta`` records the universe version the registry holds).
"""

from __future__ import annotations

import os
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path

from butler.errors import RepositoryConfigError
from butler.registry import Registry
from butler.registry_db import (
    SQL_TYPES,
    Dialect,
    begin_write,
    connect_postgresql,
    database_errors,
    is_postgresql,
)
from butler.repo_config import load_repo_config
from butler.universe import DimensionUniverse, default_universe_path, q, safe_dump_yaml

__all__ = ["MigrationResult", "upgrade_universe"]


@dataclass
class MigrationResult:
    """What an upgrade did (empty lists and ``from_version == to_version``: nothing to do)."""

    from_version: int
    to_version: int
    new_elements: list[str] = field(default_factory=list)
    new_columns: list[str] = field(default_factory=list)
    """``element.column`` added to existing record tables (``dataset.group`` for a new
    dimension of data IDs)."""


def _incompatibilities(old: DimensionUniverse, new: DimensionUniverse) -> list[str]:
    problems = []
    for name in old.names:
        if name not in new:
            problems.append(f"{name!r} is not in the new universe")
            continue
        a, b = old[name], new[name]
        if (a.key_name, a.key_kind) != (b.key_name, b.key_kind):
            problems.append(f"{name!r} key {a.key_name}:{a.key_kind} -> {b.key_name}:{b.key_kind}")
        if old.required_closure([name]) != tuple(
            d for d in new.required_closure([name]) if d in old.names
        ) or set(new.required_closure([name])) - set(old.required_closure([name])):
            problems.append(f"{name!r} requires other dimensions")
        if not set(a.implies) <= set(b.implies):
            problems.append(f"{name!r} no longer implies {sorted(set(a.implies) - set(b.implies))}")
        changed = [f for f, kind in a.fields.items() if b.fields.get(f) not in (None, kind)]
        dropped = [f for f in a.fields if f not in b.fields]
        if changed or dropped:
            problems.append(f"{name!r} fields changed {changed} or dropped {dropped}")
    return problems


def upgrade_universe(root: Path, target: DimensionUniverse | None = None) -> MigrationResult:
    """Bring the repository at ``root`` to ``target`` (default: this release's universe)."""
    config = load_repo_config(Path(root))
    # The packaged file is copied as it is (with its comments), as `butler create` does.
    text = default_universe_path().read_text() if target is None else None
    target = target or DimensionUniverse.default()
    universe_path = config.root / config.universe_file
    pending = universe_path.with_name(universe_path.name + ".upgrade")
    old = config.load_universe()
    result = MigrationResult(old.version, target.version)
    location = config.registry_location
    dialect: Dialect = "postgresql" if is_postgresql(location) else "sqlite"
    types = SQL_TYPES[dialect]
    conn = (
        connect_postgresql(str(location), writeable=True)
        if dialect == "postgresql"
        else _connect_sqlite(config.registry_path)
    )
    try:
        row = conn.execute(
            "SELECT value FROM butler_meta WHERE key = 'universe_version'"
        ).fetchone()
        registry_version = int(row[0]) if row else old.version
        if registry_version == target.version != old.version and pending.is_file():
            # An earlier run committed the registry but stopped before the file moved.
            os.replace(pending, universe_path)
            return result
        if old.version >= target.version and old.namespace == target.namespace:
            result.to_version = old.version
            return result
        problems = _incompatibilities(old, target)
        if old.namespace != target.namespace or problems:
            raise RepositoryConfigError(
                f"{root}: its universe ({old.namespace} version {old.version}) cannot be "
                f"upgraded to {target.namespace} version {target.version} by additions only: "
                + "; ".join(problems or ["the namespaces differ"])
            )
        statements: list[str] = []
        for name in target.names:
            if name not in old:
                statements.append(Registry._dimension_table_ddl(target, name, dialect))
                result.new_elements.append(name)
                continue
            have = {c for c, _ in old.table_columns(name)}
            for column, kind in target.table_columns(name):
                if column not in have:
                    # SQLite adds columns without foreign keys; the registry checks implied
                    # values through the records it looks up (expand_data_id).
                    statements.append(
                        f"ALTER TABLE dim_{name} ADD COLUMN {q(column)} {types.of(kind)}"
                    )
                    result.new_columns.append(f"{name}.{column}")
        for dim in target.dimensions:
            if dim not in old.dimensions:
                sql_type = types.of(target[dim].key_kind)
                statements.append(f"ALTER TABLE dataset ADD COLUMN {q(dim)} {sql_type}")
                statements.append(
                    f"CREATE INDEX dataset_{dim} ON dataset (dataset_type_id, {q(dim)})"
                )
                result.new_columns.append(f"dataset.{dim}")
        pending.write_text(text if text is not None else safe_dump_yaml(target.config))
        begin_write(conn, dialect)
        try:
            for statement in statements:
                conn.execute(statement)
            conn.execute(
                "UPDATE butler_meta SET value = ? WHERE key = 'universe_version'",
                (str(target.version),),
            )
            conn.execute("COMMIT")
        except BaseException as exc:
            conn.execute("ROLLBACK")
            pending.unlink(missing_ok=True)
            if isinstance(exc, database_errors()):
                raise RepositoryConfigError(
                    f"{root}: the upgrade failed and nothing was changed: {exc} "
                    "(is this registry damaged, or changed by hand?)"
                ) from exc
            raise
        os.replace(pending, universe_path)
        return result
    finally:
        conn.close()


def _connect_sqlite(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute(f"PRAGMA busy_timeout = {60_000}")
    return conn
