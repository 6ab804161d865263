"""An IPython matcher that completes dimension values inside query calls.

IPython completes keyword *names* from a signature, but not the values: this matcher adds
them, constrained by what is already typed in the same call, and dimension names inside
``values("``::

    q.where(instrument="HSC", visit=<TAB>        -> the HSC visits that have datasets
    q.where(instrument="HSC").values("<TAB>      -> the dataset type's dimensions

The expression before the call is evaluated by a small evaluator that only follows names,
attributes and ``where(...)`` calls with literal arguments on butler query objects, so
completing never runs user code. Loaded automatically when a butler is opened inside
IPython (``load_ipython_extension`` for ``%load_ext butler.interactive.ipython``).
"""

from __future__ import annotations

import ast
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from butler.interactive.builder import DatasetQuery, DimensionValues
from butler.interactive.factory import QueryFactory

_REGISTERED_ATTR = "_butler_query_matcher"


@dataclass(frozen=True)
class OpenCall:
    """The innermost call still open at the cursor: ``callee(args...``."""

    callee: str
    method: str
    args: str


def open_call(text: str) -> OpenCall | None:
    """Find the unclosed ``<expr>.where(`` or ``<expr>.values(`` before the cursor."""
    opened: list[int] = []
    quote: str | None = None
    for i, ch in enumerate(text):
        if quote:
            quote = None if ch == quote else quote
        elif ch in "\"'":
            quote = ch
        elif ch in "([{":
            opened.append(i)
        elif ch in ")]}" and opened:
            opened.pop()
    if not opened or text[opened[-1]] != "(":
        return None
    paren = opened[-1]
    match = re.search(r"\.(where|values)\s*$", text[:paren])
    if not match:
        return None
    start = _expression_start(text, match.start())
    return OpenCall(text[start : match.start()], match[1], text[paren + 1 :])


def _expression_start(text: str, end: int) -> int:
    """Start of the primary expression (names, dots, calls, subscripts) ending at ``end``."""
    i = end
    depth = 0
    while i > 0:
        ch = text[i - 1]
        if ch in ")]":
            depth += 1
        elif ch in "([":
            if depth == 0:
                break
            depth -= 1
        elif depth == 0 and not (ch.isalnum() or ch in "_."):
            break
        i -= 1
    return i


class _Unsafe(Exception):
    """The expression needs more than the safe evaluator does."""


def safe_eval(source: str, namespace: Mapping[str, Any]) -> Any:
    """Evaluate names, attributes of butler objects, ``query["type"]`` and
    ``query.where(<literals>)``; anything else raises (no user code runs)."""

    def walk(node: ast.expr) -> Any:
        if isinstance(node, ast.Name):
            if node.id not in namespace:
                raise _Unsafe(node.id)
            return namespace[node.id]
        if isinstance(node, ast.Attribute):
            owner = walk(node.value)
            if not _is_butler_object(owner):
                raise _Unsafe(node.attr)
            return getattr(owner, node.attr)
        if isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Constant):
            owner = walk(node.value)
            if not isinstance(owner, QueryFactory) or not isinstance(node.slice.value, str):
                raise _Unsafe("subscript")
            return owner[node.slice.value]
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            owner = walk(node.func.value)
            if not isinstance(owner, DatasetQuery) or node.func.attr != "where":
                raise _Unsafe("call")
            args = [ast.literal_eval(a) for a in node.args]
            kwargs = {k.arg: ast.literal_eval(k.value) for k in node.keywords if k.arg}
            return owner.where(*args, **kwargs)
        raise _Unsafe(type(node).__name__)

    return walk(ast.parse(source.strip(), mode="eval").body)


def _is_butler_object(obj: Any) -> bool:
    from butler.butler import Butler

    return isinstance(obj, Butler | QueryFactory | DatasetQuery | DimensionValues)


def _split_args(args: str) -> tuple[list[str], str]:
    """Complete arguments (top-level commas) and the one being typed."""
    parts: list[str] = []
    depth = 0
    quote: str | None = None
    current = ""
    for ch in args:
        if quote:
            quote = None if ch == quote else quote
        elif ch in "\"'":
            quote = ch
        elif ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(current)
            current = ""
            continue
        current += ch
    return parts, current


def _literal_keywords(parts: list[str]) -> dict[str, Any]:
    """``name=literal`` arguments already typed (others are ignored)."""
    out: dict[str, Any] = {}
    for part in parts:
        try:
            call = ast.parse(f"f({part})", mode="eval").body
        except SyntaxError:
            continue
        assert isinstance(call, ast.Call)
        for keyword in call.keywords:
            if keyword.arg is None:
                continue
            try:
                out[keyword.arg] = ast.literal_eval(keyword.value)
            except ValueError:
                continue
    return out


def value_completions(text: str, namespace: Mapping[str, Any]) -> list[str] | None:
    """Completions at the end of ``text`` (replacing IPython's token), or None if this
    matcher has nothing to say there."""
    call = open_call(text)
    if call is None:
        return None
    try:
        target = safe_eval(call.callee, namespace)
    except (_Unsafe, SyntaxError, ValueError, LookupError, AttributeError, TypeError):
        return None
    if isinstance(target, DimensionValues):
        target = target._query
    if not isinstance(target, DatasetQuery):
        return None
    done, typing = _split_args(call.args)
    if call.method == "values":
        match = re.fullmatch(r"\s*(['\"])(\w*)", typing)
        if not match or done:
            return None
        return [d for d in target.dimensions if d.startswith(match[2])]
    match = re.fullmatch(r"\s*(\w+)\s*=\s*(['\"]?)([^'\"]*)", typing)
    if not match or match[1] not in target.dimensions:
        return None
    dimension, quote, partial = match[1], match[2], match[3]
    constraints = {k: v for k, v in _literal_keywords(done).items() if k in target.dimensions}
    constraints.pop(dimension, None)
    values = target.where(**constraints).distinct(dimension, max_age=None)
    out = []
    for value in values:
        shown = str(value) if quote else repr(value)
        if str(value).startswith(partial):
            out.append(shown)
    return out


def _matcher(shell: Any) -> Any:
    from IPython.core.completer import (
        CompletionContext,
        SimpleCompletion,
        SimpleMatcherResult,
        context_matcher,
    )

    @context_matcher()  # type: ignore[untyped-decorator]
    def butler_query_values(context: CompletionContext) -> SimpleMatcherResult:
        try:
            found = value_completions(context.text_until_cursor, shell.user_ns)
        except Exception:  # completion must never break the prompt
            found = None
        if found is None:
            return {"completions": []}
        return {
            "completions": [SimpleCompletion(text=f, type="value") for f in found],
            "suppress": True,
        }

    return butler_query_values


def load_ipython_extension(shell: Any) -> None:
    """Register the matcher once per shell (``%load_ext butler.interactive.ipython``)."""
    if getattr(shell, _REGISTERED_ATTR, False):
        return
    shell.Completer.custom_matchers.append(_matcher(shell))
    setattr(shell, _REGISTERED_ATTR, True)


def register_if_in_ipython() -> None:
    """Add the matcher to the running IPython, if any (called when a butler opens)."""
    import sys

    if "IPython" not in sys.modules:
        return
    try:
        from IPython import get_ipython
    except ImportError:
        return
    shell = get_ipython()
    if shell is not None and getattr(shell, "Completer", None) is not None:
        load_ipython_extension(shell)
