"""Compile a parsed ``where`` tree into a parameterised SQL boolean fragment.

Safety rests on two rules, both enforced here rather than left to callers:

* Literals and bind values only ever become ``?`` parameters, never SQL text.
* Names only ever become the ``Column.sql`` chosen by the caller's ``NameResolver`` from
  its own schema; the user's spelling of a name is never copied into the SQL.

Everything else in the output is fixed text from this module (operators, AND/OR/NOT,
IN, BETWEEN, IS NULL, parentheses, ``SELECT value FROM json_each(?)``), so the fragment can
be embedded in a larger statement.

The output is shaped to stay within SQLite's limits for any tree within the language's
(``MAX_NESTING_DEPTH``, ``MAX_CONDITIONS``): NOTs are pushed down to the conditions, nested
ANDs (ORs) merge into one list, compound operands come first, long runs are grouped
(see ``_Compiler.junction`` and ``_join``), and long IN lists are bound as a single JSON
array.  Larger trees, and trees needing more than ``MAX_PARAMETERS`` parameters, are
refused with an ``InvalidQueryError`` that says which limit was hit.

Semantics worth knowing:

* A bare name that is a key of ``bind`` stands for that bind value (the LSST convention);
  ``:name`` always does.  Dotted names (``exposure.day_obs``) are always columns.
* Comparisons follow SQL three-valued logic: a NULL column satisfies neither
  ``x = 1`` nor ``NOT x = 1`` nor ``x NOT IN (...)``; use ``IS NULL`` to select it.
* A comparison must involve at least one column.  Comparing two constants (literals or
  bind values) is rejected: it constrains nothing, and is almost always a bind key that
  shadows the dimension the user meant (``visit = visit`` with ``visit`` in ``bind``).
* Integer and float columns compare with any number; string columns only with strings.
  A numeric string against a number column (``visit = '42'``) is rejected rather than
  converted, so that the query means exactly what it says.
"""

from __future__ import annotations

import dataclasses
import json
import math
import numbers
from collections.abc import Mapping
from typing import Any, Final, Literal, Protocol, TypeAlias

from butler.errors import InvalidQueryError
from butler.query.ast import (
    INT64_MAX,
    INT64_MIN,
    MAX_CONDITIONS,
    MAX_NESTING_DEPTH,
    And,
    BindRef,
    Comparison,
    Identifier,
    InList,
    IsNull,
    Node,
    Not,
    Or,
    Range,
    Value,
    is_valid_unicode,
    to_where,
)

__all__ = [
    "MAX_PARAMETERS",
    "Column",
    "ColumnKind",
    "NameResolver",
    "compile_where",
    "referenced_names",
]

ColumnKind: TypeAlias = Literal["int", "float", "str"]
SqlDialect: TypeAlias = Literal["sqlite", "postgresql"]

_KIND_WORDS: Final[dict[str, str]] = {"int": "an integer", "float": "a float", "str": "a string"}

# SQL spelling of each canonical operator ('<>' is the standard form of '!=').
_SQL_OPERATORS: Final[dict[str, str]] = {
    "=": "=",
    "!=": "<>",
    "<": "<",
    "<=": "<=",
    ">": ">",
    ">=": ">=",
}

# Constant conditions, for IN lists whose bind collections turned out empty.
_SQL_FALSE: Final = "1 = 0"

# Bind values of these types are lists of values, allowed only inside an IN list.
_COLLECTION_TYPES: Final = (list, tuple, set, frozenset)

#: Longest run of operands joined flat by AND or OR (see ``_join``).
_CHAIN: Final = 32

#: IN lists with more values than this are bound as one JSON array read by ``json_each``.
_INLINE_VALUES: Final = 100

#: Most SQL parameters one expression may need (a long IN list needs only one): far below
#: SQLite's default limit of 32,766, leaving room for the enclosing query's own.
MAX_PARAMETERS: Final = 10_000


@dataclasses.dataclass(frozen=True)
class Column:
    """How a resolver tells the compiler about one name.

    ``sql`` is trusted SQL taken from the resolver's schema (a column reference such as
    ``exposure.day_obs``, or a parenthesised expression); it is inserted verbatim.
    ``display`` is how to refer to the name in error messages.
    """

    sql: str
    kind: ColumnKind
    display: str
    truth: bool = False
    """A true/false field stored as 0/1 (kind ``int``): a bound True or False compares with
    it as 1 or 0. Elsewhere a bool is refused, since True = 1 against an ID is a mistake."""

    def __post_init__(self) -> None:
        if self.kind not in _KIND_WORDS:
            raise ValueError(f"column kind must be 'int', 'float' or 'str', not {self.kind!r}")


class NameResolver(Protocol):
    """Maps a dimension (``field`` None) or a record field to a column of the schema."""

    def resolve(self, name: str, field: str | None) -> Column:
        """Return the column for ``name``/``field``; raise InvalidQueryError if unknown."""
        ...


def _is_integer(value: object) -> bool:
    # numbers.Integral also admits numpy integers; bool is excluded because True = 1
    # in a query is much more likely a mistake than a visit ID.
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_real(value: object) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _looks_numeric(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


@dataclasses.dataclass(frozen=True)
class _Constant:
    """A literal or bind value, with how to refer to it in messages."""

    value: Any
    source: str  # e.g. "'abc'" or "bind value 'v'"
    bind_name: str | None = None

    def describe(self) -> str:
        if self.bind_name is None:
            return self.source
        return f"{self.source} ({self.value!r})"


@dataclasses.dataclass(frozen=True)
class _ColumnRef:
    column: Column
    identifier: Identifier

    def describe_kind(self) -> str:
        what = "dimension" if self.identifier.field is None else "field"
        return f"{self.column.display} is {_KIND_WORDS[self.column.kind]} {what}"


_Operand: TypeAlias = _Constant | _ColumnRef


class _Compiler:
    def __init__(
        self, resolver: NameResolver, bind: Mapping[str, Any], dialect: SqlDialect = "sqlite"
    ) -> None:
        self.resolver = resolver
        self.bind = bind
        self.dialect = dialect

    # -- operands ------------------------------------------------------------------------

    def bind_value(self, name: str, spelling: str) -> _Constant:
        if name not in self.bind:
            given = ", ".join(repr(key) for key in sorted(self.bind)) or "none"
            raise InvalidQueryError(
                f"bind parameter {spelling} has no value; pass it in bind= "
                f"(bind keys given: {given})"
            )
        return _Constant(self.bind[name], f"bind value {name!r}", bind_name=name)

    def operand(self, value: Value) -> _Operand:
        if isinstance(value, BindRef):
            return self.bind_value(value.name, f":{value.name}")
        if isinstance(value, Identifier):
            if value.field is None and value.name in self.bind:
                return self.bind_value(value.name, value.name)
            return _ColumnRef(self.resolver.resolve(value.name, value.field), value)
        return _Constant(value.value, to_where(value))

    def column_operand(self, value: Value, context: str) -> _ColumnRef:
        operand = self.operand(value)
        if isinstance(operand, _ColumnRef):
            return operand
        raise InvalidQueryError(
            f"{context} must be a dimension or record field, but {operand.describe()} "
            f"is a constant{self.shadow_hint(value)}"
        )

    def shadow_hint(self, *values: Value) -> str:
        for value in values:
            if isinstance(value, Identifier) and value.field is None and value.name in self.bind:
                return (
                    f" (note: {value.name!r} is a key of bind, so it stands for that bind "
                    f"value, not the {value.name} dimension; rename the bind key)"
                )
        return ""

    def checked(self, column: _ColumnRef, constant: _Constant) -> Any:
        """Check ``constant`` against ``column``'s kind and return the SQL parameter."""
        value = constant.value
        if value is None:
            raise InvalidQueryError(
                f"{constant.source} is None, which never compares equal to anything in SQL; "
                f"to select missing values write '{column.column.display} IS NULL'"
            )
        if isinstance(value, _COLLECTION_TYPES):
            raise InvalidQueryError(
                f"{constant.source} is a collection; collections can only be used in an IN "
                f"list, as in {column.column.display} IN (:{constant.bind_name or 'values'})"
            )
        kind = column.column.kind
        if isinstance(value, bool) and column.column.truth:
            return int(value)
        if isinstance(value, str):
            if not is_valid_unicode(value):
                raise InvalidQueryError(
                    f"{constant.source} contains a lone surrogate, which is not valid Unicode; "
                    "remove it"
                )
            if kind == "str":
                return value
            if _looks_numeric(value):
                raise InvalidQueryError(
                    f"{column.describe_kind()}, but {constant.describe()} is a string; "
                    "write the number without quotes (or bind a number, not a string)"
                )
            raise InvalidQueryError(
                f"{column.describe_kind()}, but {constant.describe()} is a string; "
                "compare it with a number"
            )
        if _is_integer(value):
            if kind == "str":
                raise InvalidQueryError(
                    f"{column.describe_kind()}, but {constant.describe()} is a number; "
                    f"quote it ('{value}') if you meant the text"
                )
            integer = int(value)
            if not INT64_MIN <= integer <= INT64_MAX:
                raise InvalidQueryError(
                    f"{constant.describe()} is out of range; integers must fit in 64 bits"
                )
            return integer
        if _is_real(value):
            if kind == "str":
                raise InvalidQueryError(
                    f"{column.describe_kind()}, but {constant.describe()} is a number; "
                    f"quote it ('{value}') if you meant the text"
                )
            number = float(value)
            if not math.isfinite(number):
                raise InvalidQueryError(f"{constant.describe()} is not a finite number")
            return number
        raise InvalidQueryError(
            f"{constant.source} has unsupported type {type(value).__name__}; bind values must "
            "be int, float or str, or a list/tuple/set of them for use in an IN list"
        )

    # -- nodes ---------------------------------------------------------------------------

    def compile(self, node: Node, negated: bool = False) -> _Fragment:
        """SQL for ``node`` (for ``NOT node`` if ``negated``), with its own parameters."""
        while isinstance(node, Not):
            # NOT NOT x is x, in SQL's three-valued logic too, so NOTs never nest in SQL.
            node, negated = node.operand, not negated
        if isinstance(node, And | Or):
            return self.junction(node, negated)
        sql, params = self.condition(node, negated)
        return _Fragment(sql, params, conditions=1, compound=False)

    def condition(self, node: Comparison | InList | IsNull, negated: bool) -> tuple[str, list[Any]]:
        if isinstance(node, Comparison):
            sql, params = self.comparison(node)
            return (f"NOT ({sql})" if negated else sql), params
        if isinstance(node, InList):
            return self.in_list(node, negated=node.negated != negated)
        column = self.column_operand(node.expr, "the operand of IS NULL")
        keyword = "IS NOT NULL" if node.negated != negated else "IS NULL"
        return f"{column.column.sql} {keyword}", []

    def junction(self, node: And | Or, negated: bool) -> _Fragment:
        """An AND/OR with its same-kind descendants merged into one flat list of operands.

        NOTs are pushed down to the conditions by De Morgan's laws (which hold in SQL's
        three-valued logic), so ``NOT (a AND b)`` becomes ``NOT a OR NOT b``.  Operands are
        compiled in the order written (so the first error reported is the first in the
        text), then emitted compound operands first, largest first, conditions last: SQLite's
        parser pushes about one stack entry per '(' opened at the start of a list but three
        per '(' after an operand, and its stack is small (about 100 entries), so this keeps
        deep expressions within it.  Each step into a later operand at least halves the
        conditions below, so that costlier step happens at most log2(MAX_CONDITIONS) times.
        """
        conjunction = isinstance(node, And) != negated
        joiner = " AND " if conjunction else " OR "
        fragments = [
            self.compile(operand, operand_negated)
            for operand, operand_negated in _flattened(node, negated, conjunction=conjunction)
        ]
        compounds = sorted(
            (f for f in fragments if f.compound), key=lambda f: f.conditions, reverse=True
        )
        conditions = [f for f in fragments if not f.compound]
        parts = [f.sql for f in compounds]
        params = [value for f in compounds for value in f.params]
        if conditions:
            condition_sql = _join([f.sql for f in conditions], joiner)
            # Grouped after compounds, so they add one level above the compounds, not many.
            grouped = bool(compounds) and len(conditions) > 1
            parts.append(f"({condition_sql})" if grouped else condition_sql)
            params += [value for f in conditions for value in f.params]
        # Always parenthesised, so the fragment means the same wherever it is embedded.
        return _Fragment(
            "(" + _join(parts, joiner) + ")",
            params,
            conditions=sum(f.conditions for f in fragments),
            compound=True,
        )

    def comparison(self, node: Comparison) -> tuple[str, list[Any]]:
        left = self.operand(node.left)
        right = self.operand(node.right)
        op = _SQL_OPERATORS[node.op]
        if isinstance(left, _ColumnRef) and isinstance(right, _ColumnRef):
            numeric = ("int", "float")
            left_kind, right_kind = left.column.kind, right.column.kind
            if (left_kind == "str") != (right_kind == "str"):
                raise InvalidQueryError(
                    f"cannot compare {left.column.display} ({_KIND_WORDS[left_kind]}) with "
                    f"{right.column.display} ({_KIND_WORDS[right_kind]}) in {to_where(node)}"
                )
            assert left_kind == right_kind or (left_kind in numeric and right_kind in numeric)
            return f"{left.column.sql} {op} {right.column.sql}", []
        if isinstance(left, _ColumnRef) and isinstance(right, _Constant):
            return f"{left.column.sql} {op} ?", [self.checked(left, right)]
        if isinstance(left, _Constant) and isinstance(right, _ColumnRef):
            return f"? {op} {right.column.sql}", [self.checked(right, left)]
        raise InvalidQueryError(
            f"comparison {to_where(node)} has no dimension or record field on either side, "
            f"so it does not constrain anything{self.shadow_hint(node.left, node.right)}"
        )

    def json_values(self, kind: ColumnKind) -> str:
        """A sub-select of the values in one bound JSON array, typed to compare with a
        column of ``kind``."""
        if self.dialect == "sqlite":
            return "SELECT value FROM json_each(?)"
        # json_array_elements_text yields text; numbers become numeric, which compares
        # exactly with both integer and double columns.
        value = "value" if kind == "str" else "CAST(value AS NUMERIC)"
        return f"SELECT {value} FROM json_array_elements_text(CAST(? AS JSON))"

    def in_list(self, node: InList, *, negated: bool) -> tuple[str, list[Any]]:
        column = self.column_operand(node.expr, "the left side of IN")
        sql = column.column.sql
        scalar_params: list[Any] = []
        range_params: list[Any] = []
        range_terms: list[str] = []
        for item in node.items:
            if isinstance(item, Range):
                if column.column.kind != "int":
                    raise InvalidQueryError(
                        f"ranges such as {to_where(item)} need an integer column, but "
                        f"{column.describe_kind()}"
                    )
                if item.stride == 1:
                    range_terms.append(f"{sql} BETWEEN ? AND ?")
                    range_params += [item.start, item.stop]
                else:
                    # Members are start, start + stride, ... up to stop (inclusive): the
                    # values congruent to start.  Not tested as (x - start) % stride = 0,
                    # which overflows 64 bits when the range spans more than 2**63 (SQLite
                    # then computes in floating point and gets it wrong).  SQLite's % keeps
                    # the sign of x, so the remainder is start mod stride for x >= 0, and
                    # that minus stride (or 0) for x < 0; neither matches the other's sign.
                    remainder = item.start % item.stride
                    negative = remainder - item.stride if remainder else 0
                    range_terms.append(f"({sql} BETWEEN ? AND ? AND {sql} % ? IN (?, ?))")
                    range_params += [item.start, item.stop, item.stride, remainder, negative]
                continue
            is_bind_name = (
                isinstance(item, Identifier) and item.field is None and item.name in self.bind
            )
            if isinstance(item, Identifier) and not is_bind_name:
                raise InvalidQueryError(
                    f"IN list item {to_where(item)} is not a value: IN lists hold literals, "
                    "ranges and bind parameters (pass it in bind= if it is meant to be one)"
                )
            constant = self.operand(item)
            assert isinstance(constant, _Constant)  # identifiers that are columns were rejected
            if isinstance(constant.value, _COLLECTION_TYPES):
                for element in constant.value:
                    scalar_params.append(
                        self.checked(
                            column,
                            _Constant(element, f"an element of {constant.source}", None),
                        )
                    )
            else:
                scalar_params.append(self.checked(column, constant))
        terms: list[str] = []
        params: list[Any] = []
        inline = scalar_params
        if len(scalar_params) > _INLINE_VALUES:
            # One parameter however long the list: SQLite limits a statement's parameters
            # (32,766 by default), and a bind list may hold many thousands of values.
            # json_each would cut a string at a NUL character, so those few stay inline.
            inline = [value for value in scalar_params if _has_nul(value)]
            as_json = [value for value in scalar_params if not _has_nul(value)]
            if as_json:
                terms.append(f"{sql} IN ({self.json_values(column.column.kind)})")
                params.append(json.dumps(as_json))
        if inline:
            terms.append(f"{sql} IN ({', '.join('?' * len(inline))})")
            params += inline
        terms += range_terms
        params += range_params
        if not terms:  # only empty bind collections: nothing is in an empty list
            condition = _SQL_FALSE
        elif len(terms) == 1:
            condition = terms[0]
        else:
            condition = "(" + _join(terms, " OR ") + ")"
        return (f"NOT ({condition})" if negated else condition), params


@dataclasses.dataclass(frozen=True)
class _Fragment:
    """Compiled SQL of one subtree and the parameters of its placeholders, in order."""

    sql: str
    params: list[Any]
    conditions: int
    compound: bool  # a parenthesised AND/OR, rather than a single condition


def _flattened(node: And | Or, negated: bool, *, conjunction: bool) -> list[tuple[Node, bool]]:
    """Operands of ``node`` (negated or not), with nested same-kind AND/ORs merged in."""
    found: list[tuple[Node, bool]] = []
    pending: list[tuple[Node, bool]] = [(op, negated) for op in reversed(node.operands)]
    while pending:
        operand, operand_negated = pending.pop()
        while isinstance(operand, Not):
            operand, operand_negated = operand.operand, not operand_negated
        if isinstance(operand, And | Or) and (isinstance(operand, And) != operand_negated) == (
            conjunction
        ):
            pending.extend((child, operand_negated) for child in reversed(operand.operands))
        else:
            found.append((operand, operand_negated))
    return found


def _join(parts: list[str], joiner: str) -> str:
    """``parts`` joined by ``joiner``, in parenthesised groups if there are many.

    SQLite nests ``a OR b OR c`` one level deeper per operand and refuses expressions more
    than 1,000 levels deep, so runs longer than _CHAIN are split into groups (of groups...).
    """
    while len(parts) > _CHAIN:
        chunks = (parts[i : i + _CHAIN] for i in range(0, len(parts), _CHAIN))
        parts = [chunk[0] if len(chunk) == 1 else f"({joiner.join(chunk)})" for chunk in chunks]
    return joiner.join(parts)


def _has_nul(value: Any) -> bool:
    return isinstance(value, str) and "\x00" in value


def _check_shape(node: Node) -> None:
    """Refuse trees deeper or larger than the parser accepts (trees can be built in code)."""
    conditions = 0
    # An explicit stack rather than recursion: this is what makes the recursion safe later.
    pending: list[tuple[Node, int]] = [(node, 0)]
    while pending:
        current, depth = pending.pop()
        if isinstance(current, Not | And | Or):
            # The parser counts levels below the top node; one more is allowed for query
            # builders, which AND a parsed expression with conditions of their own.
            if depth > MAX_NESTING_DEPTH + 1:
                raise InvalidQueryError(
                    f"expression is nested too deeply (more than {MAX_NESTING_DEPTH} levels of "
                    "AND/OR/NOT); simplify it, or split the query"
                )
            children = (current.operand,) if isinstance(current, Not) else current.operands
            pending.extend((child, depth + 1) for child in children)
            continue
        conditions += 1
        if isinstance(current, InList):
            conditions += sum(isinstance(item, Range) for item in current.items)
    if conditions > MAX_CONDITIONS:
        raise InvalidQueryError(
            f"expression has {conditions} conditions, more than the limit of {MAX_CONDITIONS}; "
            "test many values of one dimension with a single IN list, as in "
            "visit IN (:visits) with the values in bind, or split the query"
        )


def compile_where(
    node: Node | None,
    resolver: NameResolver,
    bind: Mapping[str, Any] | None = None,
    *,
    dialect: SqlDialect = "sqlite",
) -> tuple[str, list[Any]]:
    """Compile ``node`` into ``(sql, params)``: a boolean SQL fragment with ``?`` placeholders.

    ``dialect`` is the engine the fragment runs on; only long IN lists differ (SQLite's
    ``json_each``, PostgreSQL's ``json_array_elements_text``).

    ``None`` (an empty where string) compiles to ``"1 = 1"``, so callers can always AND the
    result into their statement.  Raises ``InvalidQueryError`` for unknown names (from the
    resolver), missing bind values and type mismatches.
    """
    if node is None:
        return "1 = 1", []
    _check_shape(node)
    fragment = _Compiler(resolver, bind or {}, dialect).compile(node)
    if len(fragment.params) > MAX_PARAMETERS:
        raise InvalidQueryError(
            f"expression needs {len(fragment.params)} SQL parameters, more than the limit of "
            f"{MAX_PARAMETERS}; put long lists of values in a single IN list, as in "
            "visit IN (:visits) with the values in bind, or split the query"
        )
    return fragment.sql, fragment.params


def referenced_names(
    node: Node | None, bind: Mapping[str, Any] | None = None
) -> set[tuple[str, str | None]]:
    """Return the ``(name, field)`` pairs ``node`` uses as columns, to plan joins.

    Bare names that are keys of ``bind`` are values, not columns, and are left out when
    ``bind`` is given; IN list items are never columns.
    """
    bind = bind or {}
    found: set[tuple[str, str | None]] = set()
    pending: list[Node] = [] if node is None else [node]
    # An explicit stack rather than recursion: hand-built trees have no depth limit.
    while pending:
        current = pending.pop()
        values: tuple[Value, ...]
        if isinstance(current, Comparison):
            values = (current.left, current.right)
        elif isinstance(current, InList | IsNull):
            values = (current.expr,)
        elif isinstance(current, Not):
            pending.append(current.operand)
            continue
        else:
            pending.extend(current.operands)
            continue
        for value in values:
            if isinstance(value, Identifier) and not (value.field is None and value.name in bind):
                found.add((value.name, value.field))
    return found
