"""Completion inside a half-typed ``where`` expression (pure: text in, candidates out).

The shell hands over the whole word being typed (``instrument = 'HSC' AND vi``); this
module finds what the last token is — a dimension name, or a value compared to a
dimension — and returns whole-word candidates (``instrument = 'HSC' AND visit``). The
complete predicates before a value narrow the values offered, as long as they are joined
by AND (after OR they would wrongly exclude values).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from butler.errors import ButlerError
from butler.query import parse_where

_NAME = r"[A-Za-z_][A-Za-z0-9_]*"
_PARTIAL_VALUE = r"(?P<partial>'(?:[^']|'')*|[A-Za-z0-9_.+-]*)"
_COMPARED = re.compile(
    rf"(?P<dim>{_NAME})(?:\.{_NAME})?\s*(?:=|!=|<>|<=|>=|<|>)\s*{_PARTIAL_VALUE}$"
)
_IN_LIST = re.compile(
    rf"(?P<dim>{_NAME})\s+(?:NOT\s+)?IN\s*\((?:[^()]*,\s*)?{_PARTIAL_VALUE}$", re.IGNORECASE
)
_NAME_START = re.compile(rf"(?:^|[\s(])(?P<partial>{_NAME}|)$")
_AFTER_VALUE = re.compile(r"(?:'(?:[^']|'')*'|[0-9.]+|\))\s+(?P<partial>[A-Za-z]*)$")
_KEYWORDS = ("AND", "OR")


@dataclass(frozen=True)
class WherePosition:
    """What is being typed at the end of a ``where`` expression."""

    head: str
    """Text before the token being completed (kept as typed)."""
    partial: str
    """The token being completed."""
    expects: Literal["name", "value", "keyword"]
    dimension: str | None = None
    context: str = ""
    """The complete AND-ed predicates before the current one (narrows values)."""


def _narrowing_context(text: str) -> str:
    """The text before ``... AND <current predicate>``, if it parses; else "".

    Only a predicate joined by AND is narrowed by what precedes it; after OR or NOT, or
    inside an unclosed parenthesis, nothing is assumed. A top-level OR in the preceding
    text only widens what is offered, never hides a value that could match.
    """
    match = re.search(r"\s+AND\s*$", text, flags=re.IGNORECASE)
    if not match:
        return ""
    context = text[: match.start()].strip()
    try:
        return context if parse_where(context) is not None else ""
    except ButlerError:
        return ""


def where_position(text: str) -> WherePosition:
    for pattern in (_IN_LIST, _COMPARED):
        match = pattern.search(text)
        if match:
            head = text[: match.start("partial")]
            return WherePosition(
                head,
                match["partial"],
                "value",
                match["dim"],
                _narrowing_context(text[: match.start("dim")]),
            )
    match = _AFTER_VALUE.search(text)
    if match:
        return WherePosition(text[: match.start("partial")], match["partial"], "keyword")
    match = _NAME_START.search(text)
    partial = match["partial"] if match else ""
    return WherePosition(text[: len(text) - len(partial)], partial, "name")


def literal(value: Any) -> str:
    """A value as the where language writes it."""
    if isinstance(value, str):
        return "'" + value.replace("'", "''") + "'"
    return str(value)


def where_candidates(
    text: str,
    names: Sequence[str],
    values_of: Callable[[str, str], Sequence[Any]],
) -> list[str]:
    """Whole-word completions of ``text``.

    ``names`` are the dimensions that may appear; ``values_of(dimension, context)`` gives
    the values of a dimension under the ``where`` context (it may raise: then no values).
    """
    position = where_position(text)
    if position.expects == "keyword":
        return [
            position.head + k + " " for k in _KEYWORDS if k.startswith(position.partial.upper())
        ]
    if position.expects == "name":
        return [position.head + n for n in names if n.startswith(position.partial)]
    assert position.dimension is not None
    if position.dimension not in names:
        return []
    try:
        values = values_of(position.dimension, position.context)
    except (ButlerError, OSError):
        return []
    typed = position.partial
    out = []
    for value in values:
        written = literal(value)
        if written.startswith(typed) or str(value).startswith(typed):
            out.append(position.head + written)
    return out
