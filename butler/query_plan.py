"""Turn dimension names in a query into SQL columns and the joins that provide them.

A :class:`JoinPlan` starts from a base table that already provides some dimension values
(the ``dataset`` table stores every data ID value, required and implied; a dimension record
table provides its own keys) and adds ``LEFT JOIN``s to record tables only when a ``where``
expression names a record field (``exposure.exposure_time``) or a dimension no base column
holds. Every identifier placed in SQL comes from the universe (validated names), never from
the user; user values are always bound parameters.
"""

from __future__ import annotations

from collections.abc import Iterable

from butler.errors import InvalidQueryError
from butler.query import Column
from butler.universe import DimensionUniverse, ValueKind, q


class JoinPlan:
    """Columns known for dimensions, plus the joins made so far. Implements ``NameResolver``."""

    def __init__(self, universe: DimensionUniverse, dimensions: Iterable[str], what: str) -> None:
        self.universe = universe
        self.dimensions = tuple(dimensions)
        """Dimensions a query may name (the others do not apply to what is queried)."""
        self.what = what
        self.columns: dict[str, str] = {}
        """SQL expression holding each dimension's value."""
        self.element_aliases: dict[str, str] = {}
        """Record tables joined, by element name -> alias."""
        self.joins: list[str] = []
        self.join_params: list[object] = []

    # -- building -------------------------------------------------------------------------

    def provide(self, dimension: str, sql: str) -> None:
        self.columns.setdefault(dimension, sql)

    def add_element_table(self, element: str, *, outer: bool) -> str:
        """Join ``element``'s record table on the dimension values already known."""
        if element in self.element_aliases:
            return self.element_aliases[element]
        alias = f"e_{element}"
        spec = self.universe[element]
        conditions = []
        for dim in self.universe.required_closure([element]):
            if dim == element and not spec.has_key:
                continue  # a relation is identified by the dimensions it requires
            column = spec.key_name if dim == element else dim
            if dim not in self.columns:
                raise InvalidQueryError(
                    f"{self.what}: cannot join {element!r} records without a value for {dim!r}"
                )
            conditions.append(f"{alias}.{q(column)} = {self.columns[dim]}")
        kind = "LEFT JOIN" if outer else "JOIN"
        self.joins.append(f"{kind} dim_{element} AS {alias} ON " + " AND ".join(conditions))
        self.element_aliases[element] = alias
        for implied in spec.implies:
            self.provide(implied, f"{alias}.{q(implied)}")
        return alias

    def ensure_dimension(self, dimension: str) -> str:
        """The SQL column for a dimension's value, joining record tables of implying elements."""
        if dimension in self.columns:
            return self.columns[dimension]
        # Find an element in the plan whose record implies this dimension (visit -> day_obs,
        # physical_filter -> band), joining that element's table if needed.
        for provider in self.universe.names:
            if dimension in self.universe[provider].implies and provider in self.dimensions:
                self.ensure_dimension(provider)
                self.add_element_table(provider, outer=True)
                if dimension in self.columns:
                    return self.columns[dimension]
        raise self._not_applicable(dimension)

    # -- NameResolver ---------------------------------------------------------------------

    def resolve(self, name: str, field: str | None) -> Column:
        if name not in self.universe:
            raise InvalidQueryError(
                f"{self.what}: unknown name {name!r} in where expression; dimensions that "
                f"apply here: {', '.join(self.dimensions)} (record fields as 'element.field'; "
                "values to bind must be passed in bind=)"
            )
        if name not in self.dimensions:
            raise self._not_applicable(name)
        spec = self.universe[name]
        if not spec.has_key and field is not None and name in self.element_aliases:
            # A relation's own record table (queried for its records): its fields only.
            if field not in spec.fields:
                raise InvalidQueryError(
                    f"{self.what}: {name!r} has no record field {field!r}; its fields are "
                    f"{', '.join(spec.fields)}"
                )
            return Column(
                f"{self.element_aliases[name]}.{q(field)}",
                spec.fields[field],
                name,
                truth=spec.field_types.get(field) == "bool",
            )
        if field is None or field == spec.key_name:
            return Column(self.ensure_dimension(name), spec.key_kind, name)
        kind: ValueKind
        if field in spec.fields:
            kind = spec.fields[field]
        elif field in spec.implies or field in spec.requires:
            kind = self.universe[field].key_kind
        else:
            known = [spec.key_name, *spec.requires, *spec.implies, *spec.fields]
            raise InvalidQueryError(
                f"{self.what}: dimension {name!r} has no record field {field!r}; "
                f"its fields are {', '.join(known)}"
            )
        self.ensure_dimension(name)
        alias = self.add_element_table(name, outer=True)
        truth = spec.field_types.get(field) == "bool"
        return Column(f"{alias}.{q(field)}", kind, f"{name}.{field}", truth=truth)

    def _not_applicable(self, name: str) -> InvalidQueryError:
        return InvalidQueryError(
            f"{self.what}: dimension {name!r} does not apply here; dimensions that apply: "
            f"{', '.join(self.dimensions)}"
        )

    @property
    def join_sql(self) -> str:
        return " ".join(self.joins)
