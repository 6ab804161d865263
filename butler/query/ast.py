"""Expression tree of the ``where`` query language.

Every node is a frozen dataclass, so trees are hashable, comparable and safe to share.
``to_where`` turns any tree back into a canonical expression string: keywords upper case,
single spaces, strings single-quoted, and only the parentheses the tree needs.  Parsing
that string gives an equal tree again, which is what lets query builders construct trees
in code and send them to a server as text.

Positions (offsets into the parsed text) are carried for error messages but excluded from
equality, so a tree built by hand equals the same tree parsed from text.
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Final, TypeAlias
from typing import Literal as TypingLiteral

__all__ = [
    "COMPARISON_OPERATORS",
    "INT64_MAX",
    "INT64_MIN",
    "KEYWORDS",
    "MAX_CONDITIONS",
    "MAX_EXPRESSION_LENGTH",
    "MAX_NESTING_DEPTH",
    "And",
    "BindRef",
    "Comparison",
    "ComparisonOperator",
    "Identifier",
    "InList",
    "IsNull",
    "Literal",
    "Node",
    "Not",
    "Or",
    "Range",
    "Value",
    "is_valid_unicode",
    "to_where",
]

#: Reserved words of the language (matched case-insensitively); they cannot be names.
KEYWORDS: Final = frozenset({"AND", "OR", "NOT", "IN", "IS", "NULL"})

#: Canonical comparison operators; the parser maps the SQL spelling ``<>`` to ``!=``.
ComparisonOperator: TypeAlias = TypingLiteral["=", "!=", "<", "<=", ">", ">="]
COMPARISON_OPERATORS: Final[frozenset[str]] = frozenset({"=", "!=", "<", "<=", ">", ">="})

# Integers must fit a signed 64-bit column: that is what every registry database stores,
# and sqlite3 raises OverflowError at execution time for anything larger.
INT64_MIN: Final = -(2**63)
INT64_MAX: Final = 2**63 - 1

# Limits on the size and shape of an expression.  A hand-written query never comes near
# them; they exist so that one request cannot exhaust the parser, the server, or SQLite,
# whose parser has a fixed stack (about 100 entries) and whose expression trees may be at
# most 1,000 levels deep.  The compiler's output is shaped to stay inside both for any
# tree within these limits (see butler.query.compiler), and tests check the worst cases.

#: Deepest allowed nesting of parentheses and NOTs.
MAX_NESTING_DEPTH: Final = 32

#: Most conditions (comparisons, IN, IS NULL, and each range inside an IN list) allowed in
#: one expression.  Many values of one dimension belong in an IN list, which counts once.
MAX_CONDITIONS: Final = 1_000

#: Longest accepted expression.  Bounds the work a single request can cause on a server;
#: long lists of values belong in a bind parameter (``visit IN (:visits)``) instead.
MAX_EXPRESSION_LENGTH: Final = 100_000

# ASCII only, on purpose: Unicode look-alikes (Cyrillic 'а', full-width letters) would
# otherwise give names that print like valid dimensions but never match one.
NAME_PATTERN: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]*", re.ASCII)


def is_valid_unicode(text: str) -> bool:
    """Whether ``text`` can be encoded as UTF-8 (no lone surrogates, which JSON can carry).

    SQLite stores UTF-8, and binding a string it cannot encode fails at execution time.
    """
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _check_name(name: str, what: str, *, allow_keyword: bool = False) -> None:
    if not NAME_PATTERN.fullmatch(name):
        raise ValueError(f"{what} {name!r} is not a valid name (ASCII letters, digits, '_')")
    if not allow_keyword and name.upper() in KEYWORDS:
        raise ValueError(f"{what} {name!r} is a reserved word of the where language")


@dataclasses.dataclass(frozen=True)
class Identifier:
    """A dimension (``visit``) or a field of a dimension record (``exposure.day_obs``).

    A bare identifier that is a key of the ``bind`` mapping stands for that bind value
    instead (the LSST convention); the compiler decides, since only it sees ``bind``.
    """

    name: str
    field: str | None = None
    position: int = dataclasses.field(default=-1, compare=False, repr=False)

    def __post_init__(self) -> None:
        _check_name(self.name, "identifier")
        if self.field is not None:
            # A field follows a '.', so it cannot be mistaken for a keyword.
            _check_name(self.field, "field", allow_keyword=True)


@dataclasses.dataclass(frozen=True, eq=False)
class Literal:
    """An integer, float or string constant written in the expression."""

    value: int | float | str
    position: int = dataclasses.field(default=-1, compare=False, repr=False)

    def __post_init__(self) -> None:
        # bool is an int subclass but has no spelling in the language.
        if isinstance(self.value, bool) or not isinstance(self.value, int | float | str):
            raise TypeError(f"literal must be int, float or str, not {type(self.value).__name__}")
        if isinstance(self.value, str) and not is_valid_unicode(self.value):
            raise ValueError(f"string literal {self.value!r} contains a lone surrogate")
        if isinstance(self.value, float) and not math.isfinite(self.value):
            raise ValueError(f"literal {self.value!r} is not a finite number")
        if isinstance(self.value, int) and not INT64_MIN <= self.value <= INT64_MAX:
            raise ValueError(f"integer literal {self.value} does not fit in 64 bits")

    # Equality includes the type: the dataclass default would make Literal(1) == Literal(1.0)
    # (because 1 == 1.0), hiding a change of type through a round trip.
    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Literal):
            return NotImplemented
        return type(self.value) is type(other.value) and self.value == other.value

    def __hash__(self) -> int:
        return hash((type(self.value), self.value))


@dataclasses.dataclass(frozen=True)
class BindRef:
    """An explicit bind parameter ``:name``; its value comes from the ``bind`` mapping."""

    name: str
    position: int = dataclasses.field(default=-1, compare=False, repr=False)

    def __post_init__(self) -> None:
        # ':in' is unambiguous after the colon, so keywords are fine as bind names.
        _check_name(self.name, "bind parameter", allow_keyword=True)


#: Things that can appear on either side of a comparison.
Value: TypeAlias = Identifier | Literal | BindRef


@dataclasses.dataclass(frozen=True)
class Range:
    """Inclusive integer range ``start..stop`` (``:stride``) inside an IN list."""

    start: int
    stop: int
    stride: int = 1
    position: int = dataclasses.field(default=-1, compare=False, repr=False)

    def __post_init__(self) -> None:
        for bound in (self.start, self.stop, self.stride):
            if isinstance(bound, bool) or not isinstance(bound, int):
                raise TypeError(f"range bounds and stride must be int, not {bound!r}")
            if not INT64_MIN <= bound <= INT64_MAX:
                raise ValueError(f"range bound {bound} does not fit in 64 bits")
        if self.stride < 1:
            raise ValueError(f"range stride must be a positive integer, not {self.stride}")
        if self.start > self.stop:
            raise ValueError(f"range {self.start}..{self.stop} has start > stop")


@dataclasses.dataclass(frozen=True)
class Comparison:
    """``left op right``."""

    op: ComparisonOperator
    left: Value
    right: Value

    def __post_init__(self) -> None:
        if self.op not in COMPARISON_OPERATORS:
            raise ValueError(
                f"unknown comparison operator {self.op!r}; use one of "
                f"{', '.join(sorted(COMPARISON_OPERATORS))}"
            )


@dataclasses.dataclass(frozen=True)
class InList:
    """``expr IN (items...)`` or, with ``negated``, ``expr NOT IN (items...)``."""

    expr: Value
    items: tuple[Value | Range, ...]
    negated: bool = False

    def __post_init__(self) -> None:
        if not self.items:
            raise ValueError("an IN list needs at least one item")


@dataclasses.dataclass(frozen=True)
class IsNull:
    """``expr IS NULL`` or, with ``negated``, ``expr IS NOT NULL``."""

    expr: Value
    negated: bool = False


@dataclasses.dataclass(frozen=True)
class Not:
    operand: Node


@dataclasses.dataclass(frozen=True)
class And:
    """Conjunction of two or more operands.

    N-ary rather than binary so that a long flat ``a AND b AND c ...`` stays a shallow tree:
    walking it never comes near the recursion limit however many terms it has.
    """

    operands: tuple[Node, ...]

    def __post_init__(self) -> None:
        if len(self.operands) < 2:
            raise ValueError("And needs at least two operands")


@dataclasses.dataclass(frozen=True)
class Or:
    """Disjunction of two or more operands (n-ary for the same reason as ``And``)."""

    operands: tuple[Node, ...]

    def __post_init__(self) -> None:
        if len(self.operands) < 2:
            raise ValueError("Or needs at least two operands")


#: A boolean expression: the root of every parsed ``where`` string.
Node: TypeAlias = Comparison | InList | IsNull | Not | And | Or


# Binding strength used to decide where to_where needs parentheses.
_PRECEDENCE_OR: Final = 1
_PRECEDENCE_AND: Final = 2
_PRECEDENCE_NOT: Final = 3
_PRECEDENCE_PREDICATE: Final = 4


def _precedence(node: Node) -> int:
    if isinstance(node, Or):
        return _PRECEDENCE_OR
    if isinstance(node, And):
        return _PRECEDENCE_AND
    if isinstance(node, Not):
        return _PRECEDENCE_NOT
    return _PRECEDENCE_PREDICATE


def _quote(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _value_to_where(value: Value | Range) -> str:
    if isinstance(value, Identifier):
        return value.name if value.field is None else f"{value.name}.{value.field}"
    if isinstance(value, BindRef):
        return f":{value.name}"
    if isinstance(value, Range):
        text = f"{value.start}..{value.stop}"
        return text if value.stride == 1 else f"{text}:{value.stride}"
    if isinstance(value.value, str):
        return _quote(value.value)
    # repr of a finite float always has a '.' or an exponent, so it parses back as a float.
    return repr(value.value)


def _operand_to_where(child: Node, parent_precedence: int, *, strict: bool) -> str:
    text = to_where(child)
    child_precedence = _precedence(child)
    # In an AND/OR list a nested AND/OR of equal precedence must keep its parentheses, or
    # it would parse back flattened into the parent: a different (if equivalent) tree.
    needs_parens = (
        child_precedence <= parent_precedence if strict else child_precedence < parent_precedence
    )
    return f"({text})" if needs_parens else text


def to_where(node: Node | Value | Range) -> str:
    """Return the canonical ``where`` text for ``node``; ``parse_where`` of it equals ``node``."""
    if isinstance(node, Identifier | Literal | BindRef | Range):
        return _value_to_where(node)
    if isinstance(node, Comparison):
        return f"{_value_to_where(node.left)} {node.op} {_value_to_where(node.right)}"
    if isinstance(node, InList):
        keyword = "NOT IN" if node.negated else "IN"
        items = ", ".join(_value_to_where(item) for item in node.items)
        return f"{_value_to_where(node.expr)} {keyword} ({items})"
    if isinstance(node, IsNull):
        keyword = "IS NOT NULL" if node.negated else "IS NULL"
        return f"{_value_to_where(node.expr)} {keyword}"
    if isinstance(node, Not):
        return "NOT " + _operand_to_where(node.operand, _PRECEDENCE_NOT, strict=False)
    joiner = " AND " if isinstance(node, And) else " OR "
    precedence = _precedence(node)
    return joiner.join(
        _operand_to_where(operand, precedence, strict=True) for operand in node.operands
    )
