"""The registry: dimension records, dataset types, collections, datasets, file records.

It lives in ``registry.sqlite3`` inside the repository, or in a PostgreSQL database the
repository names (``butler create --registry postgresql://...``); the SQL here is shared,
what differs between the engines is in :mod:`butler.registry_db`.

One connection per registry object; on SQLite in WAL mode so readers never block the
writer. Writes happen inside :meth:`Registry.transaction`, which takes the registry's write
lock first (SQLite's ``BEGIN IMMEDIATE``, a PostgreSQL advisory lock), so concurrent writers
queue instead of failing late; nested transactions are savepoints.

Every table and column name in SQL here comes from the validated dimension universe or from
this module; every user-supplied value is a bound parameter.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import sqlite3
import threading
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from butler.errors import (
    CollectionNotFoundError,
    ConflictingDefinitionError,
    DataIdError,
    DatasetExistsError,
    DatasetTypeNotFoundError,
    DimensionRecordNotFoundError,
    InvalidQueryError,
    RepositoryConfigError,
    TransactionError,
)
from butler.query import compile_where, parse_where
from butler.query_plan import JoinPlan
from butler.refs import DataCoordinate, DataIdValue, DatasetRef, DatasetType, FileInfo
from butler.registry_db import (
    SQL_TYPES,
    Connection,
    Dialect,
    begin_write,
    connect_postgresql,
    database_errors,
    integrity_errors,
    is_postgresql,
    violation,
)
from butler.sky_region import bounding_box, region_hex
from butler.tai import to_tai_ns
from butler.universe import DimensionUniverse, FieldType, ValueKind, q

SCHEMA_VERSION = 1
RESERVED_COLUMNS = {"id", "run", "dataset_type_id", "data_id_key", "ingest_date"}
BUSY_TIMEOUT_MS = 60_000
_SQL_TYPES: dict[ValueKind, str] = {"int": "INTEGER", "float": "REAL", "str": "TEXT"}
_NO_LIMIT = 2**63 - 1  # LIMIT with OFFSET alone: both engines take the largest integer
_DATASET_TYPE_NAME_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_")


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="milliseconds")


def _limit_sql(limit: int | None, offset: int, params: list[Any]) -> str:
    """``LIMIT``/``OFFSET`` clause (bound parameters) for paginated queries."""
    if limit is None and not offset:
        return ""
    params.extend([_NO_LIMIT if limit is None else int(limit), int(offset)])
    return " LIMIT ? OFFSET ?"


def _coerce(value: Any, kind: ValueKind, what: str) -> DataIdValue | float | None:
    if value is None:
        return None
    if kind == "int":
        if isinstance(value, bool):
            raise DataIdError(f"{what} must be an integer, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, str) and value.strip().lstrip("-").isdigit():
            return int(value)
        if hasattr(value, "__index__"):
            return int(value.__index__())
        raise DataIdError(f"{what} must be an integer, got {value!r}")
    if kind == "float":
        try:
            return float(value)
        except (TypeError, ValueError):
            raise DataIdError(f"{what} must be a number, got {value!r}") from None
    if not isinstance(value, str):
        raise DataIdError(f"{what} must be a string, got {value!r}")
    return value


def _record_row(
    row: Mapping[str, Any],
    columns: Mapping[str, ValueKind],
    types: Mapping[str, FieldType],
    element: str,
) -> dict[str, Any]:
    """A record's column values: each coerced to its type, a region's box computed."""
    out: dict[str, Any] = {}
    for column, value in row.items():
        what = f"{element}.{column}"
        kind = types.get(column)
        if value is None or kind is None or kind in ("int", "float", "str"):
            out[column] = _coerce(value, columns[column], what)
        elif kind == "bool":
            if not isinstance(value, bool | int) or value not in (0, 1):
                raise DataIdError(f"{what} must be true or false, got {value!r}")
            out[column] = int(value)
        elif kind == "tai":
            out[column] = to_tai_ns(value, what)
        elif kind == "region":
            out[column] = region_hex(value, what)
    if out.get("region") is not None:
        box = bounding_box(out["region"])
        if box is not None:
            out.update(
                region_ra_min=box.ra_min,
                region_ra_max=box.ra_max,
                region_dec_min=box.dec_min,
                region_dec_max=box.dec_max,
            )
    return out


def _record_out(row: Mapping[str, Any], types: Mapping[str, FieldType]) -> dict[str, Any]:
    """A stored record as the caller gets it: true/false fields as ``bool`` (stored 0/1, as
    neither SQLite nor the registry's portable schema has a boolean type), as the LSST
    butler gives them."""
    record = dict(row)
    for column, kind in types.items():
        if kind == "bool" and record.get(column) is not None:
            record[column] = bool(record[column])
    return record


def _connect_sqlite(path: Path, writeable: bool) -> sqlite3.Connection:
    if not path.exists():
        raise RepositoryConfigError(f"registry {path} is missing; the repository is damaged")
    uri = f"file:{path}" + ("" if writeable else "?mode=ro")
    if not writeable and os.statvfs(path.parent).f_flag & os.ST_RDONLY:
        # A read-only file system (a read-only mount, a DVD): SQLite cannot make the
        # WAL's shared-memory file there, and nothing can write the file through it.
        uri += "&immutable=1"
    conn = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    conn.execute("PRAGMA foreign_keys = ON")
    if writeable:
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = NORMAL")
    return conn


def _meta_rows(universe: DimensionUniverse) -> list[tuple[str, str]]:
    return [
        ("schema_version", str(SCHEMA_VERSION)),
        ("universe_namespace", universe.namespace),
        ("universe_version", str(universe.version)),
    ]


def _create_sqlite(path: Path, ddl: Sequence[str], universe: DimensionUniverse) -> None:
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        # Unsynced while the tables are made, then written whole into the file and flushed
        # once (each statement would otherwise flush the disk).
        conn.execute("PRAGMA synchronous = OFF")
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("BEGIN")
        for statement in ddl:
            conn.execute(statement)
        conn.executemany("INSERT INTO butler_meta (key, value) VALUES (?, ?)", _meta_rows(universe))
        conn.execute("COMMIT")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _create_postgresql(url: str, ddl: Sequence[str], universe: DimensionUniverse) -> None:
    """The tables in one transaction (PostgreSQL's DDL is transactional): a creation that
    fails half-way leaves the database as it was."""
    conn = connect_postgresql(url, writeable=True)
    try:
        taken = conn.execute(
            "SELECT 1 FROM information_schema.tables WHERE table_schema = current_schema() "
            "AND table_name IN ('butler_meta', 'dataset')"
        ).fetchone()
        if taken is not None:
            raise RepositoryConfigError(
                f"the database {url} holds a butler registry already (or tables of that "
                "name); give another database, or drop its tables first"
            )
        conn.execute("BEGIN")
        try:
            for statement in ddl:
                conn.execute(statement)
            conn.executemany(
                "INSERT INTO butler_meta (key, value) VALUES (?, ?)", _meta_rows(universe)
            )
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
    except database_errors() as exc:
        raise RepositoryConfigError(
            f"cannot create the registry tables in {url}: {str(exc).strip()}"
        ) from exc
    finally:
        conn.close()


class Registry:
    """Access to a repository's registry. Not shared between threads without its lock.

    ``location`` is the path of ``registry.sqlite3`` or a ``postgresql://`` URL."""

    def __init__(self, location: Path | str, universe: DimensionUniverse, writeable: bool) -> None:
        self.universe = universe
        self.writeable = writeable
        self.dialect: Dialect = "postgresql" if is_postgresql(location) else "sqlite"
        self.location = str(location)
        self.path = Path(location) if self.dialect == "sqlite" else None
        self.conn: Connection = (
            _connect_sqlite(Path(location), writeable)
            if self.dialect == "sqlite"
            else connect_postgresql(str(location), writeable)
        )
        self.lock = threading.RLock()
        self._depth = 0
        self._dataset_types: dict[str, tuple[int, DatasetType]] = {}
        self._records: dict[tuple[str, tuple[Any, ...]], dict[str, Any]] = {}
        try:
            self._check_schema()
        except BaseException:
            self.conn.close()
            raise

    # -- schema ---------------------------------------------------------------------------

    @classmethod
    def create(cls, location: Path | str, universe: DimensionUniverse) -> None:
        """Create the registry tables for ``universe`` in a new file or an empty database."""
        clash = RESERVED_COLUMNS & set(universe.names)
        if clash:
            raise RepositoryConfigError(f"dimension names {sorted(clash)} are reserved")
        if is_postgresql(location):
            _create_postgresql(str(location), cls.schema_ddl(universe, "postgresql"), universe)
        else:
            _create_sqlite(Path(location), cls.schema_ddl(universe, "sqlite"), universe)

    @classmethod
    def schema_ddl(cls, universe: DimensionUniverse, dialect: Dialect) -> list[str]:
        """The statements that make an empty registry's tables."""
        types = SQL_TYPES[dialect]
        ddl = ["CREATE TABLE butler_meta (key TEXT PRIMARY KEY, value TEXT)"]
        ddl += [cls._dimension_table_ddl(universe, name, dialect) for name in universe.names]
        ddl.append(
            f"CREATE TABLE dataset_type (id {types.serial_key}, name TEXT NOT NULL, "
            "dimensions TEXT NOT NULL, storage_class TEXT NOT NULL, formatter TEXT)"
        )
        ddl.append("CREATE UNIQUE INDEX idx_dataset_type_name ON dataset_type (name)")
        ddl.append(
            "CREATE TABLE collection (name TEXT PRIMARY KEY, "
            "type TEXT NOT NULL CHECK (type IN ('RUN', 'CHAINED')), "
            "doc TEXT NOT NULL DEFAULT '', "
            "created TEXT NOT NULL)"
        )
        ddl.append(
            "CREATE TABLE collection_chain (parent TEXT NOT NULL REFERENCES collection(name) "
            f"ON DELETE CASCADE, position {types.integer} NOT NULL, child TEXT NOT NULL "
            "REFERENCES collection(name), PRIMARY KEY (parent, position))"
        )
        dim_columns = ", ".join(
            f"{q(d)} {types.of(universe[d].key_kind)}" for d in universe.dimensions
        )
        ddl.append(
            "CREATE TABLE dataset (id TEXT PRIMARY KEY, "
            f"dataset_type_id {types.integer} NOT NULL REFERENCES dataset_type(id), "
            "run TEXT NOT NULL REFERENCES collection(name), data_id_key TEXT NOT NULL, "
            f"ingest_date TEXT NOT NULL, {dim_columns}, "
            "UNIQUE (dataset_type_id, run, data_id_key))"
        )
        # Selective queries filter on one dimension within a dataset type; an index per
        # dimension keeps them index lookups however many datasets the registry holds.
        for dim in universe.dimensions:
            ddl.append(f"CREATE INDEX dataset_{dim} ON dataset (dataset_type_id, {q(dim)})")
        ddl.append("CREATE INDEX dataset_run ON dataset (run)")
        ddl.append(
            "CREATE TABLE file (dataset_id TEXT PRIMARY KEY REFERENCES dataset(id) "
            f"ON DELETE CASCADE, path TEXT NOT NULL UNIQUE, size {types.integer} NOT NULL, "
            "checksum TEXT NOT NULL, formatter TEXT NOT NULL, storage_class TEXT NOT NULL, "
            "file_index TEXT NOT NULL)"
        )
        return ddl

    @staticmethod
    def _dimension_table_ddl(
        universe: DimensionUniverse, name: str, dialect: Dialect = "sqlite"
    ) -> str:
        types = SQL_TYPES[dialect]
        element = universe[name]
        columns = universe.table_columns(name)
        required = [d for d in universe.required_closure([name]) if d != name]
        pk = [*required, element.key_name] if element.has_key else required
        parts = []
        for column, kind in columns:
            not_null = " NOT NULL" if column in pk else ""
            parts.append(f"{q(column)} {types.of(kind)}{not_null}")
        parts.append(f"PRIMARY KEY ({', '.join(map(q, pk))})")
        # Foreign keys to the records this one requires or implies, so a data ID can never
        # name a detector of an instrument the registry does not know.
        for dim in [*universe[name].requires, *element.implies]:
            target = universe[dim]
            target_required = [d for d in universe.required_closure([dim]) if d != dim]
            local = [*target_required, dim]
            remote = [*target_required, target.key_name]
            parts.append(
                f"FOREIGN KEY ({', '.join(map(q, local))}) "
                f"REFERENCES dim_{dim} ({', '.join(map(q, remote))})"
            )
        return f"CREATE TABLE dim_{name} ({', '.join(parts)})"

    def _check_schema(self) -> None:
        try:
            row = self.conn.execute(
                "SELECT value FROM butler_meta WHERE key = 'schema_version'"
            ).fetchone()
        except database_errors() as exc:
            raise RepositoryConfigError(
                f"{self.location} is not a butler registry ({str(exc).strip()}); "
                "the repository is damaged"
            ) from exc
        if row is None or int(row[0]) != SCHEMA_VERSION:
            raise RepositoryConfigError(
                f"{self.location}: registry schema version {row[0] if row else None} is not "
                f"supported (expected {SCHEMA_VERSION})"
            )

    def close(self) -> None:
        with self.lock:
            self.conn.close()

    # -- transactions ---------------------------------------------------------------------

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """A write transaction; nested calls become savepoints."""
        if not self.writeable:
            from butler.errors import ReadOnlyRepositoryError

            raise ReadOnlyRepositoryError(
                f"{self.location} was opened read-only; open it with writeable=True (or run=...)"
            )
        with self.lock:
            depth = self._depth
            savepoint = f"sp{depth}"
            if depth == 0:
                begin_write(self.conn, self.dialect)
            else:
                self.conn.execute(f"SAVEPOINT {savepoint}")
            self._depth += 1
            try:
                yield
            except BaseException:
                self._depth -= 1
                if depth == 0:
                    self.conn.execute("ROLLBACK")
                    self._dataset_types.clear()
                    self._records.clear()
                else:
                    self._records.clear()
                    self.conn.execute(f"ROLLBACK TO {savepoint}")
                    self.conn.execute(f"RELEASE {savepoint}")
                raise
            self._depth -= 1
            if depth == 0:
                self._bump_change_count()
                self.conn.execute("COMMIT")
            else:
                self.conn.execute(f"RELEASE {savepoint}")

    def _bump_change_count(self) -> None:
        """Count this commit, in the same transaction: caches validate answers by the count
        (a server's ETag), so an answer is never taken for current after a write."""
        self.conn.execute(
            "INSERT INTO butler_meta (key, value) VALUES ('change_count', '1') "
            "ON CONFLICT (key) DO UPDATE "
            "SET value = CAST(CAST(butler_meta.value AS INTEGER) + 1 AS TEXT)"
        )

    def change_count(self) -> int:
        """Write transactions committed so far (0 for a registry older than the count)."""
        with self.lock:
            row = self.conn.execute(
                "SELECT value FROM butler_meta WHERE key = 'change_count'"
            ).fetchone()
        return int(row[0]) if row else 0

    @property
    def in_transaction(self) -> bool:
        return self._depth > 0

    def _require_transaction(self) -> None:
        if self._depth == 0:
            raise TransactionError("registry writes must happen inside Registry.transaction()")

    @contextlib.contextmanager
    def _guarded(self) -> Iterator[None]:
        """Statements that may break a constraint. On PostgreSQL a failed statement spoils
        its whole transaction; a savepoint around it keeps the transaction usable after the
        error, as SQLite's is, for a caller that catches the error and goes on."""
        if self.dialect == "sqlite":
            yield
            return
        self.conn.execute("SAVEPOINT guarded")
        try:
            yield
        except BaseException:
            self.conn.execute("ROLLBACK TO SAVEPOINT guarded")
            self.conn.execute("RELEASE SAVEPOINT guarded")
            raise
        self.conn.execute("RELEASE SAVEPOINT guarded")

    def _query(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        with self.lock:
            cursor = self.conn.execute(sql, params)
            names = [d[0] for d in cursor.description]
            return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]

    # -- dimension records ----------------------------------------------------------------

    def _element(self, element: str) -> None:
        if element not in self.universe:
            raise DataIdError(
                f"unknown dimension {element!r}; the universe has {', '.join(self.universe.names)}"
            )

    def insert_dimension_records(
        self, element: str, records: Iterable[Mapping[str, Any]], *, skip_existing: bool = False
    ) -> int:
        """Insert records; a record needs only its key fields. Returns how many were added."""
        self._element(element)
        self._require_transaction()
        columns = dict(self.universe.table_columns(element))
        spec = self.universe[element]
        pk = [d for d in self.universe.required_closure([element]) if d != element]
        if spec.has_key:
            pk.append(spec.key_name)
        derived = {f for f, t in spec.field_types.items() if t == "bbox"}
        rows = []
        for record in records:
            row = dict(record)
            # Accept the element's own name for its key (``{"detector": 42}``) as well.
            if element in row and spec.key_name not in row:
                row[spec.key_name] = row.pop(element)
            # The region's box is computed from the region, never taken as given (a record
            # copied from another repository carries the box it had there).
            for name in derived & set(row):
                del row[name]
            unknown = set(row) - set(columns)
            if unknown:
                raise DataIdError(
                    f"{element} record has unknown fields {sorted(unknown)}; "
                    f"its fields are {', '.join(c for c in columns if c not in derived)}"
                )
            missing = [k for k in pk if row.get(k) is None]
            if missing:
                raise DataIdError(
                    f"{element} record {record!r} lacks its key fields {missing} "
                    f"(a {element} record is identified by {', '.join(pk)})"
                )
            rows.append(_record_row(row, columns, spec.field_types, element))
        added = 0
        self._records.clear()
        with self.lock:
            for row in rows:
                names = list(row)
                sql = (
                    f"INSERT INTO dim_{element} "
                    f"({', '.join(map(q, names))}) VALUES ({', '.join('?' for _ in names)})"
                    + (" ON CONFLICT DO NOTHING" if skip_existing else "")
                )
                try:
                    with self._guarded():
                        cursor = self.conn.execute(sql, [row[n] for n in names])
                except integrity_errors() as exc:
                    raise self._record_error(element, row, exc) from exc
                added += cursor.rowcount
        return added

    def _record_error(self, element: str, row: Mapping[str, Any], exc: Exception) -> Exception:
        kind = violation(exc)
        if kind == "unique":
            return ConflictingDefinitionError(
                f"a {element} record with these keys exists already: {dict(row)} "
                "(pass skip_existing=True to ignore records that exist)"
            )
        if kind == "foreign_key":
            spec = self.universe[element]
            parents = [*spec.requires, *spec.implies]
            return DimensionRecordNotFoundError(
                f"{element} record {dict(row)} refers to a record that does not exist "
                f"(one of: {', '.join(parents)}); insert those records first"
            )
        return DataIdError(f"cannot insert {element} record {dict(row)}: {exc}")

    def fetch_record(self, element: str, keys: Mapping[str, DataIdValue]) -> dict[str, Any] | None:
        spec = self.universe[element]
        pk = [d for d in self.universe.required_closure([element]) if d != element]
        params = [keys[d] for d in pk] + [keys[element]]
        cache_key = (element, tuple(params))
        if cache_key in self._records:
            return self._records[cache_key]
        conditions = [f"{q(d)} = ?" for d in pk] + [f"{q(spec.key_name)} = ?"]
        rows = self._query(f"SELECT * FROM dim_{element} WHERE {' AND '.join(conditions)}", params)
        record = _record_out(rows[0], spec.field_types) if rows else None
        if record is not None:
            # Records are looked up for every put's data ID; the same few instruments and
            # detectors come back again and again. Writes through this registry clear it.
            if len(self._records) > 50_000:
                self._records.clear()
            self._records[cache_key] = record
        return record

    def query_dimension_records(
        self,
        element: str,
        where: str = "",
        bind: Mapping[str, Any] | None = None,
        data_id: Mapping[str, Any] | None = None,
        limit: int | None = None,
        offset: int = 0,
    ) -> list[dict[str, Any]]:
        self._element(element)
        spec = self.universe[element]
        required = self.universe.required_closure([element])
        plan = JoinPlan(
            self.universe,
            required + self.universe.implied_closure([element]),
            f"query of {element} records",
        )
        for dim in required:
            if dim != element or spec.has_key:
                plan.provide(dim, f"r.{q(spec.key_name if dim == element else dim)}")
        for dim in spec.implies:
            plan.provide(dim, f"r.{q(dim)}")
        if not spec.has_key:
            plan.element_aliases[element] = "r"
        sql_where, params = self._where(plan, where, bind, data_id)
        sql = f"SELECT r.* FROM dim_{element} AS r {plan.join_sql} WHERE {sql_where}"
        order = [f"r.{q(d)}" for d in required if d != element]
        if spec.has_key:
            order.append(f"r.{q(spec.key_name)}")
        sql += " ORDER BY " + ", ".join(order)
        sql += _limit_sql(limit, offset, params)
        rows = self._query(sql, plan.join_params + params)
        return [_record_out(r, spec.field_types) for r in rows]

    def query_data_ids(
        self,
        dimensions: Sequence[str],
        where: str = "",
        bind: Mapping[str, Any] | None = None,
        data_id: Mapping[str, Any] | None = None,
        dataset_type: DatasetType | None = None,
        runs: Sequence[str] | None = None,
        limit: int | None = None,
        offset: int = 0,
    ) -> list[DataCoordinate]:
        """Distinct data IDs of ``dimensions`` that have records (and datasets, if asked)."""
        for d in dimensions:
            self._element(d)
        required = self.universe.required_closure(dimensions)
        implied = self.universe.implied_closure(dimensions)
        if dataset_type is not None:
            missing = set(required) - set(dataset_type.all_dimensions)
            if missing:
                raise InvalidQueryError(
                    f"dataset type {dataset_type.name!r} has no dimensions {sorted(missing)}"
                )
            type_id, _ = self._dataset_type_row(dataset_type.name)
            plan = JoinPlan(self.universe, dataset_type.all_dimensions, "data ID query")
            for dim in dataset_type.all_dimensions:
                plan.provide(dim, f"d.{q(dim)}")
            base = "dataset AS d"
            base_conditions: list[str] = ["d.dataset_type_id = ?"]
            base_params: list[Any] = [type_id]
            if runs is not None:
                base_conditions.append(f"d.run IN ({', '.join('?' for _ in runs)})")
                base_params.extend(runs)
        else:
            plan = JoinPlan(self.universe, required + implied, "data ID query")
            # Drive the query from the record tables of the dimensions nothing else requires
            # (visit and detector for {visit, detector}); they carry their required keys.
            leaves = [
                d
                for d in required
                if not any(d != o and d in self.universe.required_closure([o]) for o in required)
            ]
            first, *rest = leaves
            base = f"dim_{first} AS e_{first}"
            spec = self.universe[first]
            for dim in self.universe.required_closure([first]):
                plan.provide(dim, f"e_{first}.{q(spec.key_name if dim == first else dim)}")
            for dim in spec.implies:
                plan.provide(dim, f"e_{first}.{q(dim)}")
            plan.element_aliases[first] = f"e_{first}"
            for leaf in rest:
                alias = f"e_{leaf}"
                lspec = self.universe[leaf]
                conditions = []
                for dim in self.universe.required_closure([leaf]):
                    column = f"{alias}.{q(lspec.key_name if dim == leaf else dim)}"
                    if dim in plan.columns:
                        conditions.append(f"{column} = {plan.columns[dim]}")
                    else:
                        plan.provide(dim, column)
                on = " AND ".join(conditions) if conditions else "1 = 1"
                plan.joins.append(f"JOIN dim_{leaf} AS {alias} ON {on}")
                plan.element_aliases[leaf] = alias
                for dim in lspec.implies:
                    plan.provide(dim, f"{alias}.{q(dim)}")
            base_conditions = []
            base_params = []
        sql_where, params = self._where(plan, where, bind, data_id)
        wanted = list(required) + [d for d in implied if d in self.universe.names]
        select = ", ".join(f"{plan.ensure_dimension(d)} AS {q(d)}" for d in wanted)
        where_sql = " AND ".join([*base_conditions, sql_where])
        sql = (
            f"SELECT DISTINCT {select} FROM {base} {plan.join_sql} WHERE {where_sql} "
            f"ORDER BY {', '.join(map(q, required))}"
        )
        sql += _limit_sql(limit, offset, params)
        rows = self._query(sql, base_params + plan.join_params + params)
        return [
            DataCoordinate({k: v for k, v in row.items() if v is not None}, required)
            for row in rows
        ]

    def _where(
        self,
        plan: JoinPlan,
        where: str,
        bind: Mapping[str, Any] | None,
        data_id: Mapping[str, Any] | None,
    ) -> tuple[str, list[Any]]:
        """SQL for a where expression AND'ed with ``dim = value`` for each data ID key."""
        fragments: list[str] = []
        params: list[Any] = []
        tree = parse_where(where or "")
        if tree is not None:
            sql, values = compile_where(tree, plan, dict(bind or {}), dialect=self.dialect)
            fragments.append(f"({sql})")
            params.extend(values)
        for key, value in (data_id or {}).items():
            column = plan.resolve(key, None)
            fragments.append(f"{column.sql} = ?")
            params.append(_coerce(value, column.kind, key))
        return (" AND ".join(fragments) or "1 = 1"), params

    # -- data IDs -------------------------------------------------------------------------

    def expand_data_id(
        self,
        dataset_type: DatasetType,
        data_id: Mapping[str, Any],
        *,
        check_records: bool = True,
    ) -> DataCoordinate:
        """Validate a data ID for a dataset type and fill in implied values from records."""
        universe = self.universe
        unknown = [k for k in data_id if k not in universe]
        if unknown:
            raise DataIdError(
                f"data ID keys {unknown} are not dimensions; {dataset_type.name!r} needs "
                f"{', '.join(dataset_type.dimensions)}"
            )
        extra = [k for k in data_id if k not in dataset_type.all_dimensions]
        if extra:
            raise DataIdError(
                f"data ID keys {extra} do not apply to dataset type {dataset_type.name!r}, whose "
                f"dimensions are {', '.join(dataset_type.dimensions)}"
            )
        missing = [d for d in dataset_type.dimensions if data_id.get(d) is None]
        if missing:
            raise DataIdError(
                f"data ID {dict(data_id)} for {dataset_type.name!r} lacks {missing} "
                f"(required: {', '.join(dataset_type.dimensions)})"
            )
        values: dict[str, DataIdValue] = {}
        for key, value in data_id.items():
            coerced = _coerce(value, universe[key].key_kind, f"data ID value {key}")
            assert not isinstance(coerced, float)
            if coerced is not None:
                values[key] = coerced
        if not check_records:
            return DataCoordinate(values, dataset_type.dimensions)
        for dim in dataset_type.all_dimensions:
            if dim not in values:
                continue  # implied value not given: filled in below when a record says it
            keys = {d: values.get(d) for d in universe.required_closure([dim])}
            if any(v is None for v in keys.values()):
                continue
            record = self.fetch_record(dim, keys)  # type: ignore[arg-type]
            if record is None:
                if dim in dataset_type.dimensions:
                    shown = ", ".join(f"{k}={v!r}" for k, v in keys.items())
                    raise DataIdError(
                        f"no {dim} record for {shown}; add it first with "
                        f"insert_dimension_records({dim!r}, {{...}}) in Python or "
                        f"`butler insert-dimension-records REPO {dim} FILE.yaml`"
                    )
                raise DataIdError(f"no {dim} record for {dim}={values[dim]!r}")
            for implied in universe[dim].implies:
                if record.get(implied) is None:
                    continue
                given = values.get(implied)
                if given is not None and given != record[implied]:
                    raise DataIdError(
                        f"data ID says {implied}={given!r} but the {dim} record says "
                        f"{implied}={record[implied]!r}"
                    )
                values[implied] = record[implied]
        # Implied dimensions may imply more (visit -> physical_filter -> band): repeat for
        # values filled in above, in canonical order.
        for dim in dataset_type.implied:
            if dim in values:
                keys = {d: values.get(d) for d in universe.required_closure([dim])}
                if any(v is None for v in keys.values()):
                    continue
                record = self.fetch_record(dim, keys)  # type: ignore[arg-type]
                for implied in universe[dim].implies if record else ():
                    assert record is not None
                    if record.get(implied) is not None:
                        given = values.get(implied)
                        if given is not None and given != record[implied]:
                            raise DataIdError(
                                f"data ID says {implied}={given!r} but the {dim} record "
                                f"says {implied}={record[implied]!r}"
                            )
                        values[implied] = record[implied]
        ordered = {d: values[d] for d in dataset_type.all_dimensions if d in values}
        return DataCoordinate(ordered, dataset_type.dimensions)

    @staticmethod
    def data_id_key(dataset_type: DatasetType, data_id: DataCoordinate) -> str:
        return json.dumps([data_id[d] for d in dataset_type.dimensions], separators=(",", ":"))

    # -- dataset types --------------------------------------------------------------------

    def register_dataset_type(self, dataset_type: DatasetType) -> bool:
        """Register a dataset type; True if new, False if the same definition exists."""
        name = dataset_type.name
        if not name or not set(name) <= _DATASET_TYPE_NAME_CHARS or name[0].isdigit():
            raise ConflictingDefinitionError(
                f"invalid dataset type name {name!r}: use letters, digits and '_' "
                "('.' separates components and cannot be part of a name)"
            )
        self._require_transaction()
        try:
            existing = self.get_dataset_type(name)
        except DatasetTypeNotFoundError:
            existing = None
        if existing is not None:
            same = (
                existing.dimensions == dataset_type.dimensions
                and existing.storage_class == dataset_type.storage_class
                and (dataset_type.formatter in (None, existing.formatter))
            )
            if not same:
                raise ConflictingDefinitionError(
                    f"dataset type {name!r} exists already with dimensions "
                    f"{list(existing.dimensions)}, storage class {existing.storage_class!r}, "
                    f"formatter {existing.formatter!r}; a dataset type cannot be redefined"
                )
            return False
        with self.lock:
            self.conn.execute(
                "INSERT INTO dataset_type (name, dimensions, storage_class, formatter) "
                "VALUES (?, ?, ?, ?)",
                (
                    name,
                    json.dumps(list(dataset_type.dimensions)),
                    dataset_type.storage_class,
                    dataset_type.formatter,
                ),
            )
        return True

    def _dataset_type_row(self, name: str) -> tuple[int, DatasetType]:
        cached = self._dataset_types.get(name)
        if cached is not None:
            return cached
        rows = self._query("SELECT * FROM dataset_type WHERE name = ?", (name,))
        if not rows:
            known = [r["name"] for r in self._query("SELECT name FROM dataset_type ORDER BY name")]
            raise DatasetTypeNotFoundError(
                f"dataset type {name!r} is not registered in this repository "
                f"(registered: {', '.join(known) or 'none'}); register it with "
                "register_dataset_type(name, dimensions, storage_class) in Python or "
                "`butler register-dataset-type REPO NAME STORAGE_CLASS DIMENSION...`"
            )
        row = rows[0]
        dims = tuple(json.loads(row["dimensions"]))
        dataset_type = DatasetType(
            name=row["name"],
            dimensions=dims,
            storage_class=row["storage_class"],
            formatter=row["formatter"],
            implied=self.universe.implied_closure(dims),
        )
        entry = (int(row["id"]), dataset_type)
        if not self.in_transaction:
            self._dataset_types[name] = entry
        return entry

    def get_dataset_type(self, name: str) -> DatasetType:
        return self._dataset_type_row(name)[1]

    def dataset_types(self) -> list[DatasetType]:
        names = [r["name"] for r in self._query("SELECT name FROM dataset_type ORDER BY name")]
        return [self.get_dataset_type(n) for n in names]

    # -- collections ----------------------------------------------------------------------

    def register_run(self, name: str, doc: str = "") -> bool:
        self._require_transaction()
        existing = self.collection_type(name, missing_ok=True)
        if existing == "RUN":
            return False
        if existing is not None:
            raise ConflictingDefinitionError(f"collection {name!r} exists and is {existing}")
        self._check_collection_name(name)
        with self.lock:
            self.conn.execute(
                "INSERT INTO collection (name, type, doc, created) VALUES (?, 'RUN', ?, ?)",
                (name, doc, _now()),
            )
        return True

    def set_chain(self, name: str, children: Sequence[str], doc: str = "") -> None:
        """Create or redefine a CHAINED collection searching ``children`` in order."""
        self._require_transaction()
        self._check_collection_name(name)
        existing = self.collection_type(name, missing_ok=True)
        if existing not in (None, "CHAINED"):
            raise ConflictingDefinitionError(f"collection {name!r} exists and is {existing}")
        for child in children:
            self.collection_type(child)
            if name in self._reachable(child):
                raise ConflictingDefinitionError(
                    f"chain {name!r} cannot contain {child!r}: that would make a cycle"
                )
        with self.lock:
            if existing is None:
                self.conn.execute(
                    "INSERT INTO collection (name, type, doc, created) VALUES (?, 'CHAINED', ?, ?)",
                    (name, doc, _now()),
                )
            self.conn.execute("DELETE FROM collection_chain WHERE parent = ?", (name,))
            self.conn.executemany(
                "INSERT INTO collection_chain (parent, position, child) VALUES (?, ?, ?)",
                [(name, i, child) for i, child in enumerate(children)],
            )

    @staticmethod
    def _check_collection_name(name: str) -> None:
        if not name or name.strip() != name or "\x00" in name or name in (".", ".."):
            raise ConflictingDefinitionError(f"invalid collection name {name!r}")

    @staticmethod
    def check_writable_run(name: str, existing_type: str | None) -> None:
        """Refuse ``name`` as a RUN to write to: a bad name, or a collection of that name
        that is not a RUN (``existing_type``: its type, None if it does not exist)."""
        Registry._check_collection_name(name)
        if existing_type not in (None, "RUN"):
            raise ConflictingDefinitionError(
                f"cannot write to run {name!r}: that collection exists and is {existing_type}"
            )

    def collection_type(self, name: str, *, missing_ok: bool = False) -> str | None:
        rows = self._query("SELECT type FROM collection WHERE name = ?", (name,))
        if rows:
            return str(rows[0]["type"])
        if missing_ok:
            return None
        known = [r["name"] for r in self._query("SELECT name FROM collection ORDER BY name")]
        raise CollectionNotFoundError(
            f"collection {name!r} does not exist (collections: {', '.join(known) or 'none'})"
        )

    def chain(self, name: str) -> list[str]:
        rows = self._query(
            "SELECT child FROM collection_chain WHERE parent = ? ORDER BY position", (name,)
        )
        return [r["child"] for r in rows]

    def collections(self) -> list[dict[str, Any]]:
        rows = self._query("SELECT name, type, doc, created FROM collection ORDER BY name")
        for row in rows:
            row["children"] = self.chain(row["name"]) if row["type"] == "CHAINED" else []
        return rows

    def _reachable(self, name: str) -> set[str]:
        """Every collection name reachable from ``name`` through chains, itself included."""
        seen: set[str] = set()
        pending = [name]
        while pending:
            current = pending.pop()
            if current not in seen:
                seen.add(current)
                pending.extend(self.chain(current))
        return seen

    def flatten(self, collections: Sequence[str]) -> list[str]:
        """RUN collections to search, in order, expanding chains depth-first (no repeats)."""
        runs: list[str] = []

        def walk(name: str, depth: int) -> None:
            if depth > 100:
                raise ConflictingDefinitionError(f"collection chain through {name!r} is too deep")
            kind = self.collection_type(name)
            if kind == "RUN":
                if name not in runs:
                    runs.append(name)
            else:
                for child in self.chain(name):
                    walk(child, depth + 1)

        for name in collections:
            walk(name, 0)
        return runs

    def all_runs(self) -> list[str]:
        rows = self._query("SELECT name FROM collection WHERE type = 'RUN' ORDER BY created, name")
        return [r["name"] for r in rows]

    # -- datasets -------------------------------------------------------------------------

    def insert_dataset(self, ref: DatasetRef, file: FileInfo) -> None:
        self.insert_datasets([(ref, file)])

    def insert_datasets(self, items: Sequence[tuple[DatasetRef, FileInfo]]) -> None:
        """Insert datasets with their file records (one statement per table for the batch)."""
        self._require_transaction()
        if not items:
            return
        dataset_type = items[0][0].dataset_type
        type_id, dataset_type = self._dataset_type_row(dataset_type.name)
        dims = list(dataset_type.all_dimensions)
        columns = ["id", "dataset_type_id", "run", "data_id_key", "ingest_date", *map(q, dims)]
        now = _now()
        dataset_rows = []
        file_rows = []
        for ref, file in items:
            if ref.dataset_type.name != dataset_type.name:
                raise TransactionError("insert_datasets takes datasets of one type per call")
            dataset_rows.append(
                (
                    str(ref.id),
                    type_id,
                    ref.run,
                    self.data_id_key(dataset_type, ref.data_id),
                    now,
                    *[ref.data_id.get(d) for d in dims],
                )
            )
            file_rows.append(
                (
                    str(file.dataset_id),
                    file.path,
                    file.size,
                    file.checksum,
                    file.formatter,
                    file.storage_class,
                    json.dumps(file.index, separators=(",", ":")),
                )
            )
        with self.lock:
            try:
                with self._guarded():
                    self.conn.executemany(
                        f"INSERT INTO dataset ({', '.join(columns)}) "
                        f"VALUES ({', '.join('?' for _ in columns)})",
                        dataset_rows,
                    )
            except integrity_errors() as exc:
                if violation(exc) == "unique":
                    first = items[0][0] if len(items) == 1 else None
                    what = (
                        f"a {first.dataset_type.name!r} dataset with data ID {first.data_id!r} "
                        f"exists already in run {first.run!r}"
                        if first
                        else f"one of {len(items)} {dataset_type.name!r} datasets exists already"
                    )
                    raise DatasetExistsError(
                        f"{what}; datasets are immutable: remove it first or write to another run"
                    ) from exc
                raise
            self.conn.executemany(
                "INSERT INTO file (dataset_id, path, size, checksum, formatter, storage_class, "
                "file_index) VALUES (?, ?, ?, ?, ?, ?, ?)",
                file_rows,
            )

    def delete_datasets(self, ids: Iterable[uuid.UUID]) -> None:
        self._require_transaction()
        with self.lock:
            self.conn.executemany("DELETE FROM dataset WHERE id = ?", [(str(i),) for i in ids])

    def existing_ids(self, ids: Iterable[uuid.UUID]) -> set[uuid.UUID]:
        found: set[uuid.UUID] = set()
        id_list = [str(i) for i in ids]
        for start in range(0, len(id_list), 500):
            chunk = id_list[start : start + 500]
            rows = self._query(
                f"SELECT id FROM dataset WHERE id IN ({', '.join('?' for _ in chunk)})", chunk
            )
            found.update(uuid.UUID(r["id"]) for r in rows)
        return found

    def find_dataset(
        self, dataset_type: DatasetType, data_id: DataCoordinate, runs: Sequence[str]
    ) -> tuple[DatasetRef, FileInfo] | None:
        """The dataset in the first of ``runs`` holding it."""
        if not runs:
            return None
        type_id, _ = self._dataset_type_row(dataset_type.name)
        key = self.data_id_key(dataset_type, data_id)
        rows = self._query(
            "SELECT d.*, f.path, f.size, f.checksum, f.formatter, f.storage_class, f.file_index "
            "FROM dataset AS d JOIN file AS f ON f.dataset_id = d.id "
            f"WHERE d.dataset_type_id = ? AND d.data_id_key = ? AND d.run IN "
            f"({', '.join('?' for _ in runs)})",
            [type_id, key, *runs],
        )
        if not rows:
            return None
        rows.sort(key=lambda r: runs.index(r["run"]))
        return self._row_to_ref(dataset_type, rows[0]), self._row_to_file(rows[0])

    def file_by_path(self, path: str) -> FileInfo | None:
        """The file record stored at a repository-relative path (for serving files)."""
        rows = self._query(
            "SELECT dataset_id AS id, path, size, checksum, formatter, storage_class, file_index "
            "FROM file WHERE path = ?",
            (path,),
        )
        return self._row_to_file(rows[0]) if rows else None

    def get_dataset(self, dataset_id: uuid.UUID) -> tuple[DatasetRef, FileInfo] | None:
        rows = self._query(
            "SELECT d.*, t.name AS dataset_type_name, f.path, f.size, f.checksum, f.formatter, "
            "f.storage_class, f.file_index FROM dataset AS d "
            "JOIN dataset_type AS t ON t.id = d.dataset_type_id "
            "JOIN file AS f ON f.dataset_id = d.id WHERE d.id = ?",
            (str(dataset_id),),
        )
        if not rows:
            return None
        dataset_type = self.get_dataset_type(rows[0]["dataset_type_name"])
        return self._row_to_ref(dataset_type, rows[0]), self._row_to_file(rows[0])

    def _dataset_select(
        self,
        dataset_type: DatasetType,
        runs: Sequence[str],
        where: str,
        bind: Mapping[str, Any] | None,
        data_id: Mapping[str, Any] | None,
        find_first: bool,
        with_files: bool,
    ) -> tuple[DatasetType, str, list[Any]]:
        """The (unordered) SELECT of a dataset query and its parameters."""
        type_id, dataset_type = self._dataset_type_row(dataset_type.name)
        plan = JoinPlan(
            self.universe, dataset_type.all_dimensions, f"query of {dataset_type.name!r}"
        )
        for dim in dataset_type.all_dimensions:
            plan.provide(dim, f"d.{q(dim)}")
        sql_where, params = self._where(plan, where, bind, data_id)
        run_marks = ", ".join("?" for _ in runs)
        file_cols = (
            ", f.path, f.size, f.checksum, f.formatter, f.storage_class, f.file_index"
            if with_files
            else ""
        )
        file_join = "JOIN file AS f ON f.dataset_id = d.id" if with_files else ""
        select = (
            f"SELECT d.*{file_cols} FROM dataset AS d {file_join} {plan.join_sql} "
            f"WHERE d.dataset_type_id = ? AND d.run IN ({run_marks}) AND {sql_where}"
        )
        all_params: list[Any] = [*plan.join_params, type_id, *runs, *params]
        if find_first and len(runs) > 1:
            # One dataset per data ID: the one in the earliest run of the search order.
            rank = " ".join(f"WHEN ? THEN {i}" for i in range(len(runs)))
            select = (
                f"SELECT * FROM (SELECT q.*, ROW_NUMBER() OVER (PARTITION BY q.data_id_key "
                f"ORDER BY CASE q.run {rank} END) AS search_rank FROM ({select}) AS q) "
                f"AS ranked WHERE search_rank = 1"
            )
            all_params = [*runs, *all_params]
        return dataset_type, select, all_params

    def query_datasets(
        self,
        dataset_type: DatasetType,
        runs: Sequence[str],
        where: str = "",
        bind: Mapping[str, Any] | None = None,
        data_id: Mapping[str, Any] | None = None,
        find_first: bool = True,
        limit: int | None = None,
        with_files: bool = False,
        offset: int = 0,
    ) -> list[tuple[DatasetRef, FileInfo | None]]:
        if not runs:
            return []
        dataset_type, select, all_params = self._dataset_select(
            dataset_type, runs, where, bind, data_id, find_first, with_files
        )
        order = ", ".join(map(q, dataset_type.dimensions)) or "id"
        sql = f"{select} ORDER BY {order}"
        sql += _limit_sql(limit, offset, all_params)
        rows = self._query(sql, all_params)
        return [
            (self._row_to_ref(dataset_type, r), self._row_to_file(r) if with_files else None)
            for r in rows
        ]

    def summarize_datasets(
        self,
        dataset_type: DatasetType,
        runs: Sequence[str],
        where: str = "",
        bind: Mapping[str, Any] | None = None,
        data_id: Mapping[str, Any] | None = None,
        find_first: bool = True,
    ) -> tuple[int, int]:
        """``(datasets, total file bytes)`` a dataset query would return, counted in SQL."""
        if not runs:
            return 0, 0
        _, select, params = self._dataset_select(
            dataset_type, runs, where, bind, data_id, find_first, with_files=True
        )
        rows = self._query(
            f"SELECT COUNT(*) AS n, COALESCE(SUM(s.size), 0) AS bytes FROM ({select}) AS s",
            params,
        )
        return int(rows[0]["n"]), int(rows[0]["bytes"])

    def count_datasets(self, dataset_type: DatasetType | None = None) -> int:
        if dataset_type is None:
            return int(self._query("SELECT COUNT(*) AS n FROM dataset")[0]["n"])
        type_id, _ = self._dataset_type_row(dataset_type.name)
        rows = self._query("SELECT COUNT(*) AS n FROM dataset WHERE dataset_type_id = ?", [type_id])
        return int(rows[0]["n"])

    def _row_to_ref(self, dataset_type: DatasetType, row: Mapping[str, Any]) -> DatasetRef:
        values = {d: row[d] for d in dataset_type.all_dimensions if row.get(d) is not None}
        return DatasetRef(
            id=uuid.UUID(row["id"]),
            dataset_type=dataset_type,
            data_id=DataCoordinate(values, dataset_type.dimensions),
            run=row["run"],
        )

    @staticmethod
    def _row_to_file(row: Mapping[str, Any]) -> FileInfo:
        return FileInfo(
            dataset_id=uuid.UUID(row["id"]),
            path=row["path"],
            size=int(row["size"]),
            checksum=row["checksum"],
            formatter=row["formatter"],
            storage_class=row["storage_class"],
            index=json.loads(row["file_index"]),
        )
