"""Tokenizer and recursive-descent parser for ``where`` expressions.

Grammar (keywords are case-insensitive; names are case-sensitive ASCII)::

    where      := <empty> | or_expr
    or_expr    := and_expr ("OR" and_expr)*
    and_expr   := not_expr ("AND" not_expr)*
    not_expr   := "NOT" not_expr | "(" or_expr ")" | predicate
    predicate  := value compare_op value
                | value ["NOT"] "IN" "(" item ("," item)* ")"
                | value "IS" ["NOT"] "NULL"
    compare_op := "=" | "!=" | "<>" | "<" | "<=" | ">" | ">="
    item       := INTEGER ".." INTEGER [":" INTEGER]        (inclusive range, stride > 0)
                | value
    value      := NAME ["." NAME] | ":" NAME | STRING | INTEGER | FLOAT

Strings use single or double quotes; the quote character is escaped by doubling it.
Numbers may have a leading '-' and floats an exponent (``-1.5e-3``); there is no
arithmetic.  Every error is a ``QuerySyntaxError`` whose ``position`` is the offset of the
offending character, and whose message says what was expected and what was found.
"""

from __future__ import annotations

import dataclasses
import enum
import math
import re
import unicodedata
from collections.abc import Iterator
from typing import Final

from butler.errors import QuerySyntaxError
from butler.query.ast import (
    INT64_MAX,
    INT64_MIN,
    KEYWORDS,
    MAX_CONDITIONS,
    MAX_EXPRESSION_LENGTH,
    MAX_NESTING_DEPTH,
    NAME_PATTERN,
    And,
    BindRef,
    Comparison,
    ComparisonOperator,
    Identifier,
    InList,
    IsNull,
    Literal,
    Node,
    Not,
    Or,
    Range,
    Value,
    is_valid_unicode,
)

__all__ = ["MAX_CONDITIONS", "MAX_EXPRESSION_LENGTH", "MAX_NESTING_DEPTH", "parse_where"]


class _Kind(enum.Enum):
    NAME = "name"
    KEYWORD = "keyword"
    STRING = "string"
    INTEGER = "integer"
    FLOAT = "float"
    BIND = "bind parameter"
    OPERATOR = "operator"
    LPAREN = "'('"
    RPAREN = "')'"
    COMMA = "','"
    DOTDOT = "'..'"
    COLON = "':'"
    END = "end of expression"


@dataclasses.dataclass(frozen=True, slots=True)
class _Token:
    kind: _Kind
    text: str  # exactly as written, for "found ..." in messages
    position: int
    # NAME: the dimension name; KEYWORD: upper-case word; OPERATOR: canonical operator;
    # BIND: the parameter name; STRING/INTEGER/FLOAT: the parsed value.
    value: str | int | float | None = None
    field: str | None = None  # NAME only: the record field after '.'


# A number is an optional '-', digits, an optional fraction (digits required after the '.',
# so that '100..120' splits as 100, '..', 120) and an optional exponent.
_NUMBER: Final = re.compile(r"-?[0-9]+(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?", re.ASCII)
_NAME_CHARS: Final = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_")
_NAME_START: Final = _NAME_CHARS - frozenset("0123456789")
_DIGITS: Final = frozenset("0123456789")
# Only ASCII whitespace: a no-break or zero-width space inside a name is more likely a
# copy-paste accident than intent, and is reported with its Unicode name instead.
_WHITESPACE: Final = frozenset(" \t\r\n\f\v")
_OPERATORS: Final[dict[str, ComparisonOperator]] = {
    "<=": "<=",
    ">=": ">=",
    "<>": "!=",
    "!=": "!=",
    "=": "=",
    "<": "<",
    ">": ">",
}
# Characters people reach for from other languages, with what to write instead.
_HINTS: Final = {
    "==": "'==' is not an operator; use '=' to test equality",
    "&&": "'&&' is not an operator; use AND",
    "||": "'||' is not an operator; use OR",
    "!": "'!' is not an operator; use NOT, or '!=' for 'not equal'",
    ";": "';' is not allowed; a where expression is a single condition",
    "-": "'-' must be directly followed by a number; there is no arithmetic in where expressions",
    "--": "'--' comments are not allowed in where expressions",
    "/*": "'/*' comments are not allowed in where expressions",
}


def _describe(token: _Token) -> str:
    if token.kind is _Kind.END:
        return "end of expression"
    text = token.text if len(token.text) <= 40 else token.text[:37] + "..."
    return repr(text)


def _describe_character(char: str) -> str:
    if char.isascii() and char.isprintable():
        return repr(char)
    name = unicodedata.name(char, "unnamed character")
    return f"{char!r} (U+{ord(char):04X} {name})"


class _Tokenizer:
    def __init__(self, text: str) -> None:
        self.text = text

    # Helpers build the error and callers write ``raise``, so control flow stays visible.
    def error(self, message: str, position: int) -> QuerySyntaxError:
        return QuerySyntaxError(message, self.text, position)

    def tokens(self) -> Iterator[_Token]:
        """Yield tokens on demand, then END forever.

        Lazy on purpose: the parser then reports whichever problem comes first in the text,
        whether it is a bad character or a grammar error before it.
        """
        text = self.text
        length = len(text)
        pos = 0
        while pos < length:
            char = text[pos]
            if char in _WHITESPACE:
                pos += 1
                continue
            if char in "'\"":
                token = self._string(pos)
            elif char in _DIGITS or (char == "-" and text[pos + 1 : pos + 2] in _DIGITS):
                token = self._number(pos)
            elif char in _NAME_START:
                token = self._name(pos)
            elif char == ":":
                token = self._colon(pos)
            elif char == ".":
                if text.startswith("..", pos):
                    token = _Token(_Kind.DOTDOT, "..", pos)
                else:
                    raise self.error(
                        "unexpected '.'; a '.' must join a dimension and a record field, "
                        "as in exposure.day_obs, and numbers need a digit before the '.'",
                        pos,
                    )
            elif char in "(),":
                kind = {"(": _Kind.LPAREN, ")": _Kind.RPAREN, ",": _Kind.COMMA}[char]
                token = _Token(kind, char, pos)
            else:
                token = self._operator(pos)
            yield token
            pos = token.position + len(token.text)
        end = _Token(_Kind.END, "", length)
        while True:
            yield end

    def _string(self, start: int) -> _Token:
        text = self.text
        quote = text[start]
        pos = start + 1
        while True:
            end = text.find(quote, pos)
            if end < 0:
                raise self.error(
                    f"unterminated string: the {quote} opened here is never closed "
                    f"(write {quote}{quote} for a literal {quote} inside the string)",
                    start,
                )
            if text.startswith(quote, end + 1):  # doubled quote: an escaped quote character
                pos = end + 2
                continue
            raw = text[start : end + 1]
            if not is_valid_unicode(raw):
                # Possible from JSON ("\ud800"); SQLite could not even receive it.
                bad = next(i for i, char in enumerate(raw) if not is_valid_unicode(char))
                raise self.error(
                    f"the string contains {_describe_character(raw[bad])}, a lone surrogate "
                    "that is not valid Unicode; remove it",
                    start + bad,
                )
            return _Token(_Kind.STRING, raw, start, raw[1:-1].replace(quote * 2, quote))

    def _number(self, start: int) -> _Token:
        match = _NUMBER.match(self.text, start)
        assert match is not None  # guaranteed: the caller saw a digit (after an optional '-')
        raw = match.group()
        end = match.end()
        following = self.text[end : end + 1]
        # '100abc', '1.5.3', '1.' and '1e' are typos, not a number followed by something else.
        if following in _NAME_CHARS or (following == "." and not self.text.startswith("..", end)):
            bad_end = end + 1
            while bad_end < len(self.text) and (
                self.text[bad_end] in _NAME_CHARS or self.text[bad_end] == "."
            ):
                bad_end += 1
            raise self.error(
                f"malformed number {self.text[start:bad_end]!r}; write an integer such as 42 "
                "or a float such as 4.2 or 4.2e-3",
                start,
            )
        if "." in raw or "e" in raw or "E" in raw:
            number = float(raw)
            if not math.isfinite(number):
                raise self.error(f"number {raw} is too large to represent", start)
            return _Token(_Kind.FLOAT, raw, start, number)
        # Check the digit count before int(): Python refuses to convert very long digit
        # strings (ValueError), and nothing over 19 digits can fit in 64 bits anyway.
        digits = raw.lstrip("-").lstrip("0")
        integer = int(raw) if len(digits) <= 19 else INT64_MAX + 1
        if not INT64_MIN <= integer <= INT64_MAX:
            raise self.error(f"integer {raw} is out of range; integers must fit in 64 bits", start)
        return _Token(_Kind.INTEGER, raw, start, integer)

    def _name(self, start: int) -> _Token:
        text = self.text
        match = NAME_PATTERN.match(text, start)
        assert match is not None  # guaranteed: the caller saw a name-start character
        name = match.group()
        end = match.end()
        if name.upper() in KEYWORDS:
            return _Token(_Kind.KEYWORD, name, start, name.upper())
        if not text.startswith(".", end) or text.startswith("..", end):
            return _Token(_Kind.NAME, name, start, name)
        field_match = NAME_PATTERN.match(text, end + 1)
        if field_match is None:
            raise self.error(
                f"expected a record field name after '{name}.', as in exposure.day_obs",
                end + 1,
            )
        field_end = field_match.end()
        if text.startswith(".", field_end) and not text.startswith("..", field_end):
            raise self.error(
                "only one '.' is allowed in a name: write dimension.field, as in exposure.day_obs",
                field_end,
            )
        return _Token(_Kind.NAME, text[start:field_end], start, name, field_match.group())

    def _colon(self, start: int) -> _Token:
        match = NAME_PATTERN.match(self.text, start + 1)
        if match is None:
            # A stride ('100..120:5') is the only other use of ':'; the parser checks context.
            return _Token(_Kind.COLON, ":", start)
        return _Token(_Kind.BIND, ":" + match.group(), start, match.group())

    def _operator(self, start: int) -> _Token:
        # Two-character spellings first, so '==' is not read as '=' and '!=' not as '!'.
        for candidate in (self.text[start : start + 2], self.text[start]):
            if candidate in _OPERATORS:
                return _Token(_Kind.OPERATOR, candidate, start, _OPERATORS[candidate])
            if candidate in _HINTS:
                raise self.error(_HINTS[candidate], start)
        char = self.text[start]
        advice = (
            "names and operators must be plain ASCII"
            if not char.isascii()
            else "expected a name, a value, an operator, a parenthesis or a comma"
        )
        raise self.error(f"unexpected character {_describe_character(char)}; {advice}", start)


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.stream = _Tokenizer(text).tokens()
        self.lookahead: list[_Token] = []  # tokens read from the stream but not consumed
        self.conditions = 0  # conditions parsed so far, against MAX_CONDITIONS

    # -- token helpers -------------------------------------------------------------------

    def peek(self, offset: int = 0) -> _Token:
        while len(self.lookahead) <= offset:
            self.lookahead.append(next(self.stream))
        return self.lookahead[offset]

    def advance(self) -> _Token:
        token = self.peek()
        self.lookahead.pop(0)
        return token

    def at_keyword(self, word: str) -> bool:
        token = self.peek()
        return token.kind is _Kind.KEYWORD and token.value == word

    def error(self, message: str, token: _Token) -> QuerySyntaxError:
        return QuerySyntaxError(message, self.text, token.position)

    def count_condition(self, token: _Token) -> None:
        """Count one more condition (or IN-list range) starting at ``token``."""
        self.conditions += 1
        if self.conditions > MAX_CONDITIONS:
            raise self.error(
                f"expression has more than {MAX_CONDITIONS} conditions; test many values "
                "of one dimension with a single IN list, as in visit IN (1, 2, 3) or "
                "visit IN (:visits) with the values in bind, or split the query",
                token,
            )

    def expected(self, expected: str, token: _Token) -> QuerySyntaxError:
        return self.error(f"expected {expected}, found {_describe(token)}", token)

    def after_condition(self, expected: str, token: _Token) -> QuerySyntaxError:
        """Report a token that cannot follow a complete condition, with a targeted hint."""
        if token.kind is _Kind.DOTDOT:
            return self.error(
                "ranges such as 100..120 are only allowed inside an IN list, "
                "as in visit IN (100..120)",
                token,
            )
        if token.kind is _Kind.OPERATOR:
            return self.error(
                f"unexpected {_describe(token)}: comparisons cannot be chained; "
                "combine them with AND, as in 1 < visit AND visit < 5",
                token,
            )
        if token.kind is _Kind.COLON:
            return self.error("a ':' stride is only allowed after a range inside an IN list", token)
        return self.expected(expected, token)

    # -- grammar -------------------------------------------------------------------------

    def parse(self) -> Node:
        node = self.or_expr(0)
        token = self.peek()
        if token.kind is _Kind.RPAREN:
            raise self.error("unexpected ')' with no matching '('", token)
        if token.kind is not _Kind.END:
            raise self.after_condition("AND, OR or end of expression", token)
        return node

    def or_expr(self, depth: int) -> Node:
        operands = [self.and_expr(depth)]
        while self.at_keyword("OR"):
            self.advance()
            operands.append(self.and_expr(depth))
        return operands[0] if len(operands) == 1 else Or(tuple(operands))

    def and_expr(self, depth: int) -> Node:
        operands = [self.not_expr(depth)]
        while self.at_keyword("AND"):
            self.advance()
            operands.append(self.not_expr(depth))
        return operands[0] if len(operands) == 1 else And(tuple(operands))

    def not_expr(self, depth: int) -> Node:
        token = self.peek()
        if self.at_keyword("NOT") or token.kind is _Kind.LPAREN:
            if depth >= MAX_NESTING_DEPTH:
                raise self.error(
                    f"expression is nested too deeply (more than {MAX_NESTING_DEPTH} levels "
                    "of parentheses and NOT); simplify it: remove redundant parentheses, "
                    "cancel double NOTs, or split the query",
                    token,
                )
            self.advance()
            if token.kind is _Kind.KEYWORD:
                return Not(self.not_expr(depth + 1))
            node = self.or_expr(depth + 1)
            closing = self.peek()
            if closing.kind is not _Kind.RPAREN:
                raise self.after_condition(
                    f"AND, OR or ')' to close the '(' at position {token.position}", closing
                )
            self.advance()
            return node
        return self.predicate()

    def predicate(self) -> Node:
        left_token = self.peek()
        self.count_condition(left_token)
        left = self.value("a condition such as visit = 1")
        token = self.peek()
        if token.kind is _Kind.OPERATOR:
            self.advance()
            op = _OPERATORS[token.text]
            right = self.value(f"a value after {token.text!r}")
            return Comparison(op, left, right)
        if self.at_keyword("IN"):
            self.advance()
            return InList(left, self.in_items(), negated=False)
        if self.at_keyword("NOT"):
            self.advance()
            if not self.at_keyword("IN"):
                raise self.expected("IN after NOT (as in visit NOT IN (1, 2))", self.peek())
            self.advance()
            return InList(left, self.in_items(), negated=True)
        if self.at_keyword("IS"):
            self.advance()
            negated = self.at_keyword("NOT")
            if negated:
                self.advance()
            if not self.at_keyword("NULL"):
                after = "IS NOT" if negated else "IS"
                raise self.expected(f"NULL after {after}", self.peek())
            self.advance()
            return IsNull(left, negated=negated)
        if token.kind is _Kind.DOTDOT:
            raise self.after_condition("a comparison operator, IN or IS", token)
        raise self.expected(
            f"a comparison operator (=, !=, <, <=, >, >=), IN or IS after {_describe(left_token)}",
            token,
        )

    def value(self, expected: str) -> Value:
        token = self.peek()
        if token.kind is _Kind.NAME:
            self.advance()
            assert isinstance(token.value, str)
            return Identifier(token.value, token.field, token.position)
        if token.kind is _Kind.BIND:
            self.advance()
            assert isinstance(token.value, str)
            return BindRef(token.value, token.position)
        if token.kind in (_Kind.STRING, _Kind.INTEGER, _Kind.FLOAT):
            self.advance()
            assert token.value is not None
            return Literal(token.value, token.position)
        if token.kind is _Kind.COLON:
            raise self.error(
                "a ':' must be directly followed by a bind parameter name, as in :visits",
                token,
            )
        if token.kind is _Kind.KEYWORD and token.value not in ("AND", "OR", "NOT", "NULL"):
            raise self.error(
                f"expected {expected}, found the keyword {_describe(token)}; "
                "keywords cannot be used as names",
                token,
            )
        if token.kind is _Kind.KEYWORD and token.value == "NULL":
            raise self.error(
                f"expected {expected}, found NULL; test for missing values with "
                "IS NULL or IS NOT NULL",
                token,
            )
        raise self.expected(expected, token)

    def in_items(self) -> tuple[Value | Range, ...]:
        opening = self.peek()
        if opening.kind is not _Kind.LPAREN:
            raise self.expected("'(' to start the IN list, as in visit IN (1, 2)", opening)
        self.advance()
        if self.peek().kind is _Kind.RPAREN:
            raise self.error(
                "the IN list is empty; give at least one value, or pass a list "
                "as a bind parameter: visit IN (:visits)",
                self.peek(),
            )
        items: list[Value | Range] = []
        while True:
            items.append(self.in_item())
            token = self.peek()
            if token.kind is _Kind.COMMA:
                self.advance()
                if self.peek().kind is _Kind.RPAREN:
                    raise self.expected("a value after ','", self.peek())
                continue
            if token.kind is _Kind.RPAREN:
                self.advance()
                return tuple(items)
            if token.kind is _Kind.BIND and isinstance(items[-1], Range):
                raise self.error("the stride after ':' must be a positive integer literal", token)
            raise self.expected(
                f"',' or ')' to close the IN list opened at position {opening.position}",
                token,
            )

    def in_item(self) -> Value | Range:
        token = self.peek()
        if self.peek(1).kind is not _Kind.DOTDOT:
            return self.value("a value in the IN list")
        if token.kind is not _Kind.INTEGER:
            raise self.error(
                f"range bounds must be integer literals, found {_describe(token)}", token
            )
        # A range compiles to a condition of its own, unlike a value of the list.
        self.count_condition(token)
        self.advance()  # start
        self.advance()  # '..'
        stop_token = self.peek()
        if stop_token.kind is not _Kind.INTEGER:
            raise self.expected("an integer after '..' to end the range", stop_token)
        self.advance()
        assert isinstance(token.value, int)
        assert isinstance(stop_token.value, int)
        stride = 1
        if self.peek().kind is _Kind.COLON:
            self.advance()
            stride_token = self.peek()
            if stride_token.kind is not _Kind.INTEGER:
                raise self.expected("a positive integer stride after ':'", stride_token)
            self.advance()
            assert isinstance(stride_token.value, int)
            stride = stride_token.value
            if stride < 1:
                raise self.error(
                    f"range stride must be a positive integer, found {stride}", stride_token
                )
        if token.value > stop_token.value:
            raise self.error(
                f"range {token.value}..{stop_token.value} is empty because its start is "
                f"greater than its stop; write {stop_token.value}..{token.value}",
                token,
            )
        return Range(token.value, stop_token.value, stride, token.position)


def parse_where(text: str) -> Node | None:
    """Parse a ``where`` expression; return None if it is empty (no constraint).

    Raises ``QuerySyntaxError`` (with ``position`` at the offending character) if the text
    is not a valid expression.  Names are not checked here: that needs a schema, and is
    done by ``compile_where`` through its resolver.
    """
    if not isinstance(text, str):
        # A JSON request body can carry any type where a string belongs.
        raise QuerySyntaxError(
            f"a where expression must be a string, not {type(text).__name__}; "
            "write it as text, as in 'visit = 1'"
        )
    if len(text) > MAX_EXPRESSION_LENGTH:
        # The expression itself is left out of the message: echoing 100 kB helps nobody.
        raise QuerySyntaxError(
            f"expression is {len(text)} characters long, more than the limit of "
            f"{MAX_EXPRESSION_LENGTH}; pass long lists of values as a bind parameter, "
            "as in visit IN (:visits)",
            "",
            MAX_EXPRESSION_LENGTH,
        )
    parser = _Parser(text)
    if parser.peek().kind is _Kind.END:
        return None
    return parser.parse()
