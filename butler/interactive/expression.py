"""Pure translation of query-builder constraints to ``where`` text.

``constraint_node`` turns one keyword of ``where(visit=[1, 2])`` into a tree node,
``compose`` AND's constraints with free-text expressions, and ``inline_bind`` replaces
bind references by literals, so what :meth:`DatasetQuery.to_where` shows can be pasted
into ``--where`` as is (strings are quoted by the language's own printer, never by hand).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from butler.errors import InvalidQueryError
from butler.query import (
    And,
    BindRef,
    Comparison,
    Identifier,
    InList,
    IsNull,
    Literal,
    Node,
    Not,
    Or,
    Range,
    parse_where,
    to_where,
)
from butler.query.ast import Value

ConstraintValue = int | str | float | tuple[int | str | float, ...] | range


def scalar(value: Any, what: str) -> int | str | float:
    """A plain int, str or float from a user value (numpy scalars included)."""
    if isinstance(value, bool):
        raise InvalidQueryError(f"{what}: {value!r} is not a dimension value")
    if isinstance(value, int | str | float):
        return value
    if hasattr(value, "__index__"):
        return int(value.__index__())
    if hasattr(value, "item"):
        item = value.item()
        if isinstance(item, int | str | float) and not isinstance(item, bool):
            return item
    raise InvalidQueryError(f"{what}: {value!r} is not an int, str or float")


def normalise(dimension: str, value: Any) -> ConstraintValue:
    """A hashable constraint value: a scalar, a tuple of scalars, or a ``range``."""
    if isinstance(value, range):
        return value
    if isinstance(value, str) or not isinstance(value, Iterable):
        return scalar(value, dimension)
    items = tuple(scalar(v, dimension) for v in value)
    if not items:
        raise InvalidQueryError(f"{dimension}: an empty list of values matches nothing")
    return items


def constraint_node(dimension: str, value: ConstraintValue) -> Node:
    name = Identifier(dimension)
    if isinstance(value, range):
        values = list(value)
        if not values:
            raise InvalidQueryError(f"{dimension}: {value!r} is empty")
        if value.step > 0:
            return InList(name, (Range(values[0], values[-1], value.step),))
        return InList(name, tuple(Literal(v) for v in values))
    if isinstance(value, tuple):
        if len(value) == 1:
            return Comparison("=", name, Literal(value[0]))
        return InList(name, tuple(Literal(v) for v in value))
    return Comparison("=", name, Literal(value))


def compose(constraints: Mapping[str, ConstraintValue], expressions: Iterable[str]) -> Node | None:
    """One tree for keyword constraints AND free-text expressions (None: no constraint)."""
    nodes: list[Node] = [constraint_node(d, v) for d, v in constraints.items()]
    for text in expressions:
        parsed = parse_where(text)
        # A top-level AND joins the others flat, so to_where needs no parentheses for it.
        if isinstance(parsed, And):
            nodes.extend(parsed.operands)
        elif parsed is not None:
            nodes.append(parsed)
    if not nodes:
        return None
    return nodes[0] if len(nodes) == 1 else And(tuple(nodes))


def where_text(node: Node | None) -> str:
    return "" if node is None else to_where(node)


def _literal(value: Any, name: str) -> Literal:
    try:
        return Literal(scalar(value, f"bind value {name!r}"))
    except (TypeError, ValueError) as exc:
        raise InvalidQueryError(f"bind value {name!r}: {exc}") from None


def _bound_items(value: Any, name: str) -> tuple[Literal, ...]:
    if isinstance(value, str) or not isinstance(value, Iterable):
        return (_literal(value, name),)
    return tuple(_literal(v, name) for v in value)


def _value(value: Value, bind: Mapping[str, Any]) -> Value:
    if isinstance(value, BindRef):
        if value.name not in bind:
            raise InvalidQueryError(f"bind parameter :{value.name} has no value")
        return _literal(bind[value.name], value.name)
    if isinstance(value, Identifier) and value.field is None and value.name in bind:
        return _literal(bind[value.name], value.name)
    return value


def inline_bind(node: Node, bind: Mapping[str, Any]) -> Node:
    """``node`` with every bind reference replaced by its value as a literal."""
    if isinstance(node, Comparison):
        return Comparison(node.op, _value(node.left, bind), _value(node.right, bind))
    if isinstance(node, InList):
        items: list[Value | Range] = []
        for item in node.items:
            if isinstance(item, BindRef) or (
                isinstance(item, Identifier) and item.field is None and item.name in bind
            ):
                if item.name not in bind:
                    raise InvalidQueryError(f"bind parameter :{item.name} has no value")
                items.extend(_bound_items(bind[item.name], item.name))
            else:
                items.append(item)
        return InList(_value(node.expr, bind), tuple(items), node.negated)
    if isinstance(node, IsNull):
        return IsNull(_value(node.expr, bind), node.negated)
    if isinstance(node, Not):
        return Not(inline_bind(node.operand, bind))
    if isinstance(node, And):
        return And(tuple(inline_bind(o, bind) for o in node.operands))
    assert isinstance(node, Or)
    return Or(tuple(inline_bind(o, bind) for o in node.operands))
