"""Tests of the ``where`` query language: parser, canonical printing, SQL compilation."""

from __future__ import annotations

import json
import re
import sqlite3
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import pytest
from hypothesis import find, given, settings
from hypothesis import strategies as st

from butler.errors import InvalidQueryError, QuerySyntaxError
from butler.query import (
    MAX_CONDITIONS,
    MAX_EXPRESSION_LENGTH,
    MAX_NESTING_DEPTH,
    And,
    BindRef,
    Column,
    Comparison,
    Identifier,
    InList,
    IsNull,
    Literal,
    Node,
    Not,
    Or,
    Range,
    compile_where,
    parse_where,
    referenced_names,
    to_where,
)
from butler.query.ast import INT64_MAX, INT64_MIN, KEYWORDS

# -- helpers -------------------------------------------------------------------------------


def ident(name: str, field: str | None = None) -> Identifier:
    return Identifier(name, field)


def lit(value: int | float | str) -> Literal:
    return Literal(value)


def eq(name: str, value: int | float | str) -> Comparison:
    return Comparison("=", ident(name), lit(value))


def parse(text: str) -> Node:
    node = parse_where(text)
    assert node is not None
    return node


def syntax_error(text: str) -> QuerySyntaxError:
    with pytest.raises(QuerySyntaxError) as info:
        parse_where(text)
    return info.value


# Columns of the fake schema, as a registry would describe them.  The SQL is qualified
# with a table alias so the security tests can tell column text from anything else.
SCHEMA: dict[tuple[str, str | None], Column] = {
    ("instrument", None): Column("d.instrument", "str", "instrument"),
    ("visit", None): Column("d.visit", "int", "visit"),
    ("detector", None): Column("d.detector", "int", "detector"),
    ("band", None): Column("d.band", "str", "band"),
    ("day_obs", None): Column("d.day_obs", "int", "day_obs"),
    ("exposure", "day_obs"): Column("d.day_obs", "int", "exposure.day_obs"),
    ("detector", "full_name"): Column("d.full_name", "str", "detector.full_name"),
    ("visit", "exposure_time"): Column("d.exposure_time", "float", "visit.exposure_time"),
}


class FakeResolver:
    """Resolves names from SCHEMA and records what it was asked for."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str | None]] = []

    def resolve(self, name: str, field: str | None) -> Column:
        self.seen.append((name, field))
        try:
            return SCHEMA[name, field]
        except KeyError:
            spelled = name if field is None else f"{name}.{field}"
            known = ", ".join(sorted(c.display for c in SCHEMA.values()))
            raise InvalidQueryError(f"unknown name {spelled!r}; known names: {known}") from None


def compile_text(text: str, bind: Mapping[str, Any] | None = None) -> tuple[str, list[Any]]:
    return compile_where(parse_where(text), FakeResolver(), bind)


# -- parsing: every construct ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "tree"),
    [
        ("visit = 42", eq("visit", 42)),
        ("visit != 42", Comparison("!=", ident("visit"), lit(42))),
        ("visit <> 42", Comparison("!=", ident("visit"), lit(42))),
        ("visit < 42", Comparison("<", ident("visit"), lit(42))),
        ("visit <= 42", Comparison("<=", ident("visit"), lit(42))),
        ("visit > 42", Comparison(">", ident("visit"), lit(42))),
        ("visit >= 42", Comparison(">=", ident("visit"), lit(42))),
        ("visit>=42", Comparison(">=", ident("visit"), lit(42))),
        ("42 < visit", Comparison("<", lit(42), ident("visit"))),
        ("band = 'g'", eq("band", "g")),
        ('band = "g"', eq("band", "g")),
        ("name = 'O''Brien'", eq("name", "O'Brien")),
        ('name = "say ""hi"""', eq("name", 'say "hi"')),
        ("name = 'a \"b\"'", eq("name", 'a "b"')),
        ("name = ''", eq("name", "")),
        ("x = -7", eq("x", -7)),
        ("x = 1.5", eq("x", 1.5)),
        ("x = -1.5e-3", eq("x", -1.5e-3)),
        ("x = 2E10", eq("x", 2e10)),
        ("x = 1e+5", eq("x", 1e5)),
        ("x = 007", eq("x", 7)),
        (f"x = {INT64_MAX}", eq("x", INT64_MAX)),
        (f"x = {INT64_MIN}", eq("x", INT64_MIN)),
        ("visit = :v", Comparison("=", ident("visit"), BindRef("v"))),
        ("visit = my_visit", Comparison("=", ident("visit"), ident("my_visit"))),
        (
            "exposure.day_obs = 20240101",
            Comparison("=", ident("exposure", "day_obs"), lit(20240101)),
        ),
        (
            "detector.full_name = 'R22_S11'",
            Comparison("=", ident("detector", "full_name"), lit("R22_S11")),
        ),
        ("exposure.in = 1", Comparison("=", ident("exposure", "in"), lit(1))),
        ("visit IN (1, 2, 3)", InList(ident("visit"), (lit(1), lit(2), lit(3)))),
        ("visit IN (1)", InList(ident("visit"), (lit(1),))),
        ("visit NOT IN (1, 2)", InList(ident("visit"), (lit(1), lit(2)), negated=True)),
        ("visit IN (100..120)", InList(ident("visit"), (Range(100, 120),))),
        ("visit IN (100..120:5)", InList(ident("visit"), (Range(100, 120, 5),))),
        ("visit IN (100 .. 120 : 5)", InList(ident("visit"), (Range(100, 120, 5),))),
        ("visit IN (-5..-1)", InList(ident("visit"), (Range(-5, -1),))),
        ("visit IN (7..7)", InList(ident("visit"), (Range(7, 7),))),
        (
            "visit IN (1, 10..20:2, :more, extra, 'x', 2.5)",
            InList(
                ident("visit"),
                (lit(1), Range(10, 20, 2), BindRef("more"), ident("extra"), lit("x"), lit(2.5)),
            ),
        ),
        ("visit IN (:visits)", InList(ident("visit"), (BindRef("visits"),))),
        ("band IS NULL", IsNull(ident("band"))),
        ("band IS NOT NULL", IsNull(ident("band"), negated=True)),
        ("exposure.day_obs IS NULL", IsNull(ident("exposure", "day_obs"))),
        ("NOT visit = 1", Not(eq("visit", 1))),
        ("NOT NOT visit = 1", Not(Not(eq("visit", 1)))),
        ("(visit = 1)", eq("visit", 1)),
        ("((visit = 1))", eq("visit", 1)),
        ("a = 1 AND b = 2", And((eq("a", 1), eq("b", 2)))),
        ("a = 1 OR b = 2", Or((eq("a", 1), eq("b", 2)))),
        ("a = 1 AND b = 2 AND c = 3", And((eq("a", 1), eq("b", 2), eq("c", 3)))),
        ("a = 1 OR b = 2 OR c = 3", Or((eq("a", 1), eq("b", 2), eq("c", 3)))),
        ("\n\tvisit\r\n=\f1 ", eq("visit", 1)),
    ],
)
def test_parse_constructs(text: str, tree: Node) -> None:
    assert parse(text) == tree


@pytest.mark.parametrize(
    "text",
    [
        "visit = 1 and band = 'g' or not detector in (1) and x is not null",
        "visit = 1 AND band = 'g' OR NOT detector IN (1) AND x IS NOT NULL",
        "visit = 1 AnD band = 'g' oR nOt detector iN (1) aNd x Is NoT nUlL",
    ],
)
def test_keywords_are_case_insensitive(text: str) -> None:
    expected = Or(
        (
            And((eq("visit", 1), eq("band", "g"))),
            And((Not(InList(ident("detector"), (lit(1),))), IsNull(ident("x"), negated=True))),
        )
    )
    assert parse(text) == expected


def test_names_are_case_sensitive() -> None:
    assert parse("Visit = 1") == eq("Visit", 1)
    assert parse("Visit = 1") != eq("visit", 1)


@pytest.mark.parametrize(
    ("text", "tree"),
    [
        # AND binds tighter than OR, on either side.
        ("a = 1 OR b = 2 AND c = 3", Or((eq("a", 1), And((eq("b", 2), eq("c", 3)))))),
        ("a = 1 AND b = 2 OR c = 3", Or((And((eq("a", 1), eq("b", 2))), eq("c", 3)))),
        # NOT binds tighter than AND, looser than comparison.
        ("NOT a = 1 AND b = 2", And((Not(eq("a", 1)), eq("b", 2)))),
        ("NOT a = 1 OR b = 2", Or((Not(eq("a", 1)), eq("b", 2)))),
        ("NOT (a = 1 OR b = 2)", Not(Or((eq("a", 1), eq("b", 2))))),
        # Parentheses override, and are kept as structure when they regroup.
        ("(a = 1 OR b = 2) AND c = 3", And((Or((eq("a", 1), eq("b", 2))), eq("c", 3)))),
        ("a = 1 AND (b = 2 AND c = 3)", And((eq("a", 1), And((eq("b", 2), eq("c", 3)))))),
        ("(a = 1 AND b = 2) AND c = 3", And((And((eq("a", 1), eq("b", 2))), eq("c", 3)))),
        # IN and IS bind to the value before them, not to a boolean.
        (
            "NOT a IN (1) AND b IS NULL",
            And((Not(InList(ident("a"), (lit(1),))), IsNull(ident("b")))),
        ),
    ],
)
def test_precedence(text: str, tree: Node) -> None:
    assert parse(text) == tree


@pytest.mark.parametrize("text", ["", "   ", "\n\t\r\f\v  "])
def test_empty_expression_means_no_constraint(text: str) -> None:
    assert parse_where(text) is None


def test_positions_are_recorded_but_not_compared() -> None:
    node = parse("  exposure.day_obs >= :start AND band IN ('g', 5..6)")
    assert isinstance(node, And)
    first, second = node.operands
    assert isinstance(first, Comparison)
    assert isinstance(first.left, Identifier)
    assert isinstance(first.right, BindRef)
    assert first.left.position == 2
    assert first.right.position == 22
    assert isinstance(second, InList)
    assert isinstance(second.expr, Identifier)
    assert second.expr.position == 33
    assert [item.position for item in second.items] == [42, 47]
    # Equality ignores positions, so hand-built trees equal parsed ones.
    assert first.left == Identifier("exposure", "day_obs")


# -- canonical printing ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "canonical"),
    [
        ("visit=1", "visit = 1"),
        ("visit <> 1", "visit != 1"),
        ('band = "g"', "band = 'g'"),
        ('name = "O\'Brien"', "name = 'O''Brien'"),
        ("x = 1.50", "x = 1.5"),
        ("x = 2e10", "x = 20000000000.0"),
        ("x = 1e100", "x = 1e+100"),
        ("x = -0042", "x = -42"),
        ("visit in (1,2 , 3..9:1, 10..20:2, :v)", "visit IN (1, 2, 3..9, 10..20:2, :v)"),
        ("visit not in (1)", "visit NOT IN (1)"),
        ("x is not null", "x IS NOT NULL"),
        ("not (a = 1)", "NOT a = 1"),
        ("not (a = 1 or b = 2)", "NOT (a = 1 OR b = 2)"),
        ("not not a = 1", "NOT NOT a = 1"),
        ("((a = 1)) and ((b = 2))", "a = 1 AND b = 2"),
        ("(a = 1 or b = 2) and c = 3", "(a = 1 OR b = 2) AND c = 3"),
        ("a = 1 or (b = 2 and c = 3)", "a = 1 OR b = 2 AND c = 3"),
        ("(a = 1 and b = 2) and c = 3", "(a = 1 AND b = 2) AND c = 3"),
        ("a = 1 or (b = 2 or c = 3)", "a = 1 OR (b = 2 OR c = 3)"),
        ("exposure.day_obs = 1", "exposure.day_obs = 1"),
    ],
)
def test_to_where_is_canonical_and_round_trips(text: str, canonical: str) -> None:
    tree = parse(text)
    assert to_where(tree) == canonical
    assert parse(canonical) == tree
    assert to_where(parse(canonical)) == canonical


def test_to_where_quotes_hostile_strings_safely() -> None:
    tree = Comparison("=", ident("band"), lit("'; DROP TABLE dataset; --"))
    text = to_where(tree)
    assert text == "band = '''; DROP TABLE dataset; --'"
    assert parse(text) == tree


def test_literal_equality_includes_type() -> None:
    assert Literal(1) != Literal(1.0)
    assert Literal(1) == Literal(1)
    assert parse("x = 1") != parse("x = 1.0")
    assert len({Literal(1), Literal(1.0), Literal("1")}) == 3


@pytest.mark.parametrize(
    ("build", "error"),
    [
        (lambda: Identifier("visit; drop"), ValueError),
        (lambda: Identifier("AND"), ValueError),
        (lambda: Identifier("vísit"), ValueError),
        (lambda: Identifier("exposure", "day obs"), ValueError),
        (lambda: BindRef("x y"), ValueError),
        (lambda: Literal(True), TypeError),
        (lambda: Literal(float("nan")), ValueError),
        (lambda: Literal(float("inf")), ValueError),
        (lambda: Literal(2**63), ValueError),
        (lambda: Range(5, 1), ValueError),
        (lambda: Range(1, 5, 0), ValueError),
        (lambda: Comparison("==", ident("a"), lit(1)), ValueError),  # type: ignore[arg-type]
        (lambda: InList(ident("a"), ()), ValueError),
        (lambda: And((eq("a", 1),)), ValueError),
        (lambda: Or(()), ValueError),
    ],
)
def test_invalid_trees_cannot_be_built(build: Any, error: type[Exception]) -> None:
    # Validation in the nodes keeps to_where from ever printing unparseable text.
    with pytest.raises(error):
        build()


# -- syntax errors: message and position -----------------------------------------------------


@pytest.mark.parametrize(
    ("text", "position", "message"),
    [
        ("visit = 'abc", 8, "unterminated string"),
        ('band = "g', 7, "unterminated string"),
        ("name = 'it''s", 7, "unterminated string"),
        ("(visit = 1", 10, "expected AND, OR or ')' to close the '(' at position 0, found end"),
        ("((visit = 1) AND b = 2", 22, "to close the '(' at position 0"),
        ("visit = 1)", 9, "unexpected ')' with no matching '('"),
        ("(a = 1))", 7, "unexpected ')' with no matching '('"),
        ("()", 1, "expected a condition such as visit = 1, found ')'"),
        ("visit = 1 2", 10, "expected AND, OR or end of expression, found '2'"),
        ("visit = 1 band = 2", 10, "expected AND, OR or end of expression, found 'band'"),
        ("visit >", 7, "expected a value after '>', found end of expression"),
        ("visit = AND", 8, "expected a value after '=', found 'AND'"),
        ("visit = NULL", 8, "found NULL; test for missing values with IS NULL"),
        ("visit IN 5", 9, "expected '(' to start the IN list"),
        ("visit IN", 8, "expected '(' to start the IN list, as in visit IN (1, 2), found end"),
        ("visit IN ()", 10, "the IN list is empty"),
        ("visit IN (1,)", 12, "expected a value after ',', found ')'"),
        ("visit IN (1 2)", 12, "expected ',' or ')' to close the IN list opened at position 9"),
        ("visit IN (1, 2", 14, "found end of expression"),
        ("visit IN (IN)", 10, "keywords cannot be used as names"),
        ("visit = 1..5", 9, "only allowed inside an IN list"),
        ("visit..5 = 1", 5, "only allowed inside an IN list"),
        ("(a = 1)..5", 7, "only allowed inside an IN list"),
        ("visit IN (5..1)", 10, "start is greater than its stop; write 1..5"),
        ("visit IN (1..5:0)", 15, "range stride must be a positive integer, found 0"),
        ("visit IN (1..5:-2)", 15, "range stride must be a positive integer, found -2"),
        ("visit IN (1..5:x)", 14, "stride after ':' must be a positive integer"),
        ("visit IN (1..5:)", 15, "expected a positive integer stride after ':', found ')'"),
        ("visit IN (1..)", 13, "expected an integer after '..' to end the range, found ')'"),
        ("visit IN (a..5)", 10, "range bounds must be integer literals, found 'a'"),
        ("visit IN (1.5..5)", 10, "range bounds must be integer literals, found '1.5'"),
        ("visit IN (:a..5)", 10, "range bounds must be integer literals"),
        (
            "visit",
            5,
            "expected a comparison operator (=, !=, <, <=, >, >=), IN or IS after 'visit'",
        ),
        ("visit AND b = 1", 6, "IN or IS after 'visit', found 'AND'"),
        ("visit NOT = 1", 10, "expected IN after NOT"),
        ("visit IS 1", 9, "expected NULL after IS, found '1'"),
        ("visit IS NOT", 12, "expected NULL after IS NOT, found end of expression"),
        ("a = 1 = 2", 6, "comparisons cannot be chained"),
        ("a = 1 AND", 9, "expected a condition such as visit = 1, found end of expression"),
        ("AND a = 1", 0, "found 'AND'"),
        ("NOT", 3, "expected a condition"),
        ("x = :", 4, "':' must be directly followed by a bind parameter name"),
        ("x = : v", 4, "':' must be directly followed by a bind parameter name"),
        ("x = 1:5", 5, "stride is only allowed after a range inside an IN list"),
        ("x = 100abc", 4, "malformed number '100abc'"),
        ("x = 1.5.3", 4, "malformed number '1.5.3'"),
        ("x = 1.", 4, "malformed number '1.'"),
        ("x = 1e", 4, "malformed number '1e'"),
        ("x = .5", 4, "unexpected '.'"),
        ("x = 99999999999999999999", 4, "out of range; integers must fit in 64 bits"),
        (f"x = {INT64_MAX + 1}", 4, "out of range"),
        (f"x = {INT64_MIN - 1}", 4, "out of range"),
        ("x = " + "9" * 5000, 4, "out of range"),
        ("x = 1e999", 4, "too large"),
        ("a.b.c = 1", 3, "only one '.' is allowed"),
        ("a. b = 1", 2, "expected a record field name after 'a.'"),
        ("visit == 1", 6, "'==' is not an operator; use '='"),
        ("a = 1 && b = 2", 6, "use AND"),
        ("a = 1 || b = 2", 6, "use OR"),
        ("!a = 1", 0, "use NOT"),
        ("x = - 1", 4, "no arithmetic"),
        ("x = y - 1", 6, "no arithmetic"),
        ("x = 1 + 2", 6, "unexpected character '+'"),
        ("visit; drop", 5, "';' is not allowed"),
        ("visit = 1 OR 1=1 --", 17, "comments are not allowed"),
        ("visit = 1 /* hi */", 10, "comments are not allowed"),
        ("vísit = 1", 1, "U+00ED LATIN SMALL LETTER I WITH ACUTE"),
        ("visit\u00a0= 1", 5, "U+00A0 NO-BREAK SPACE"),
        ("visit\u200b= 1", 5, "U+200B ZERO WIDTH SPACE"),
        ("visit \uff1d 1", 6, "U+FF1D FULLWIDTH EQUALS SIGN"),
        ("visit = \u0661", 8, "U+0661 ARABIC-INDIC DIGIT ONE"),
        ("visit = 1\x00", 9, "unexpected character '\\x00'"),
    ],
)
def test_syntax_error_position_and_message(text: str, position: int, message: str) -> None:
    error = syntax_error(text)
    assert error.position == position
    assert message in error.reason
    assert error.expression == text
    # The rendered message shows the expression with a caret under the offending character.
    assert f"at position {position}" in str(error)
    assert str(error).endswith("\n  " + " " * position + "^")


def test_syntax_error_is_an_invalid_query_error() -> None:
    # Callers that catch InvalidQueryError (or ValueError) also see syntax errors.
    error = syntax_error("visit =")
    assert isinstance(error, InvalidQueryError)
    assert isinstance(error, ValueError)


def test_nesting_limit_allows_reasonable_depth() -> None:
    depth = MAX_NESTING_DEPTH
    tree = parse("(" * depth + "visit = 1" + ")" * depth)
    assert tree == eq("visit", 1)
    nots = parse("NOT " * depth + "visit = 1")
    assert parse(to_where(nots)) == nots
    # NOT NOT x is x (in three-valued logic too), so an even number of NOTs leaves none.
    assert compile_where(nots, FakeResolver()) == ("d.visit = ?", [1])
    odd = parse("NOT " * (depth - 1) + "visit = 1")
    assert compile_where(odd, FakeResolver()) == ("NOT (d.visit = ?)", [1])


@pytest.mark.parametrize(
    ("text", "position"),
    [
        ("(" * (MAX_NESTING_DEPTH + 1) + "visit = 1" + ")" * (MAX_NESTING_DEPTH + 1), 32),
        ("(" * 99_999, 32),
        ("NOT " * (MAX_NESTING_DEPTH + 1) + "visit = 1", 128),
        ("NOT " * 45 + "visit = 1", 128),
        ("NOT (" * 5_000 + "a = 1" + ")" * 5_000, 80),
    ],
)
def test_deep_nesting_is_a_syntax_error_not_a_recursion_error(text: str, position: int) -> None:
    assert MAX_NESTING_DEPTH == 32  # the positions above are computed for this limit
    error = syntax_error(text)
    assert "nested too deeply (more than 32 levels of parentheses and NOT)" in error.reason
    assert "remove redundant parentheses" in error.reason
    assert error.position == position


def test_long_flat_expression_parses_and_compiles() -> None:
    # The most conditions allowed stay a flat n-ary Or, so nothing recurses 1,000 deep.
    text = " OR ".join(f"visit = {n}" for n in range(MAX_CONDITIONS))
    assert len(text) < MAX_EXPRESSION_LENGTH
    tree = parse(text)
    assert isinstance(tree, Or)
    assert len(tree.operands) == MAX_CONDITIONS
    assert parse(to_where(tree)) == tree
    sql, params = compile_where(tree, FakeResolver())
    assert params == list(range(MAX_CONDITIONS))
    assert sql.count("?") == MAX_CONDITIONS
    # In SQL the run is cut into parenthesised groups of 32, so that SQLite, which nests
    # 'a OR b OR c' one level per operand, never sees more than 32 in a row.
    assert sql.count("(") == MAX_CONDITIONS // 32 + 1 + 1


def test_too_many_conditions_is_a_syntax_error_at_the_first_one_over() -> None:
    text = " OR ".join(f"visit = {n}" for n in range(MAX_CONDITIONS + 1))
    error = syntax_error(text)
    assert f"more than {MAX_CONDITIONS} conditions" in error.reason
    assert "visit IN (:visits)" in error.reason
    assert error.position == text.rindex("visit")
    # Ranges in an IN list are conditions of their own in SQL, so they count too.
    ranges = "visit IN (" + ", ".join(f"{2 * n}..{2 * n + 1}" for n in range(MAX_CONDITIONS)) + ")"
    assert f"more than {MAX_CONDITIONS} conditions" in syntax_error(ranges).reason
    # Plain values do not: a long IN list is one condition.
    many = "visit IN (" + ", ".join(str(n) for n in range(MAX_CONDITIONS * 10)) + ")"
    assert isinstance(parse(many), InList)


def test_too_long_expression_is_rejected_without_echoing_it() -> None:
    text = "visit IN (" + ", ".join(["1"] * MAX_EXPRESSION_LENGTH) + ")"
    error = syntax_error(text)
    assert "more than the limit" in error.reason
    assert "bind parameter" in error.reason
    assert len(str(error)) < 500


# -- compilation -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "bind", "sql", "params"),
    [
        ("visit = 42", None, "d.visit = ?", [42]),
        ("visit != 42", None, "d.visit <> ?", [42]),
        ("visit <> 42", None, "d.visit <> ?", [42]),
        ("42 <= visit", None, "? <= d.visit", [42]),
        ("band = 'g'", None, "d.band = ?", ["g"]),
        ("exposure.day_obs > 20240101", None, "d.day_obs > ?", [20240101]),
        ("visit.exposure_time >= 15", None, "d.exposure_time >= ?", [15]),
        ("visit.exposure_time < 1.5e1", None, "d.exposure_time < ?", [15.0]),
        ("visit > 1.5", None, "d.visit > ?", [1.5]),
        ("detector < visit", None, "d.detector < d.visit", []),
        ("detector = visit.exposure_time", None, "d.detector = d.exposure_time", []),
        ("band = instrument", None, "d.band = d.instrument", []),
        ("visit = :v", {"v": 7}, "d.visit = ?", [7]),
        ("visit = v", {"v": 7}, "d.visit = ?", [7]),
        ("band = b", {"b": "r"}, "d.band = ?", ["r"]),
        ("visit IN (1, 2, 3)", None, "d.visit IN (?, ?, ?)", [1, 2, 3]),
        ("visit NOT IN (1)", None, "NOT (d.visit IN (?))", [1]),
        ("visit IN (100..120)", None, "d.visit BETWEEN ? AND ?", [100, 120]),
        (
            "visit IN (100..120:5)",
            None,
            "(d.visit BETWEEN ? AND ? AND d.visit % ? IN (?, ?))",
            [100, 120, 5, 0, 0],
        ),
        (
            "visit IN (1, 10..20, 2, :more)",
            {"more": [30, 31]},
            "(d.visit IN (?, ?, ?, ?) OR d.visit BETWEEN ? AND ?)",
            [1, 2, 30, 31, 10, 20],
        ),
        ("visit IN (:vs)", {"vs": (5, 6)}, "d.visit IN (?, ?)", [5, 6]),
        ("visit IN (vs)", {"vs": [5]}, "d.visit IN (?)", [5]),
        ("visit IN (:vs)", {"vs": []}, "1 = 0", []),
        ("visit NOT IN (:vs)", {"vs": set()}, "NOT (1 = 0)", []),
        ("visit IN (:vs, 3)", {"vs": []}, "d.visit IN (?)", [3]),
        ("band IN (:bands)", {"bands": frozenset({"g"})}, "d.band IN (?)", ["g"]),
        ("band IS NULL", None, "d.band IS NULL", []),
        ("exposure.day_obs IS NOT NULL", None, "d.day_obs IS NOT NULL", []),
        ("NOT visit = 1", None, "NOT (d.visit = ?)", [1]),
        (
            "visit = 1 AND band = 'g' AND detector = 3",
            None,
            "(d.visit = ? AND d.band = ? AND d.detector = ?)",
            [1, "g", 3],
        ),
        # Compound operands come first in SQL (SQLite's parser stack is small; see
        # compiler.junction), and the parameters follow the SQL's order.
        (
            "visit = 1 OR band = 'g' AND NOT detector IN (3..4)",
            None,
            "((d.band = ? AND NOT (d.detector BETWEEN ? AND ?)) OR d.visit = ?)",
            ["g", 3, 4, 1],
        ),
        (
            "visit = 1 OR visit = 2 OR (band = 'g' AND detector = 3)",
            None,
            "((d.band = ? AND d.detector = ?) OR (d.visit = ? OR d.visit = ?))",
            ["g", 3, 1, 2],
        ),
        # NOTs sink to the conditions (De Morgan) and cancel in pairs.
        ("NOT NOT visit = 1", None, "d.visit = ?", [1]),
        ("NOT visit NOT IN (1)", None, "d.visit IN (?)", [1]),
        ("NOT band IS NULL", None, "d.band IS NOT NULL", []),
        (
            "NOT (visit = 1 OR band = 'g')",
            None,
            "(NOT (d.visit = ?) AND NOT (d.band = ?))",
            [1, "g"],
        ),
        # Nested groups of the same kind merge into one flat list.
        (
            "(visit = 1 AND band = 'g') AND (detector = 3 AND NOT (visit = 2 OR visit = 3))",
            None,
            "(d.visit = ? AND d.band = ? AND d.detector = ? AND NOT (d.visit = ?) "
            "AND NOT (d.visit = ?))",
            [1, "g", 3, 2, 3],
        ),
        # Long IN lists are bound as one JSON array, whatever their length.
        (
            "visit IN (:vs)",
            {"vs": list(range(101))},
            "d.visit IN (SELECT value FROM json_each(?))",
            [json.dumps(list(range(101)))],
        ),
        (
            "visit IN (:vs)",
            {"vs": list(range(100))},
            "d.visit IN (" + ", ".join("?" * 100) + ")",
            list(range(100)),
        ),  # fmt: skip
        ("", None, "1 = 1", []),
    ],
)
def test_compile(text: str, bind: dict[str, Any] | None, sql: str, params: list[Any]) -> None:
    assert compile_text(text, bind) == (sql, params)


def test_compile_accepts_numpy_numbers() -> None:
    sql, params = compile_text(
        "visit = :v AND visit.exposure_time > :t AND detector IN (:ds)",
        {"v": np.int64(5), "t": np.float32(1.5), "ds": np.array([1, 2]).tolist()},
    )
    assert params == [5, 1.5, 1, 2]
    # Parameters are plain Python numbers, which every DB-API driver can bind.
    assert [type(p) for p in params] == [int, float, int, int]
    assert sql == "(d.visit = ? AND d.exposure_time > ? AND d.detector IN (?, ?))"


def test_compile_ignores_unused_bind_keys() -> None:
    assert compile_text("visit = 1", {"unused": object()}) == ("d.visit = ?", [1])


def test_resolver_sees_only_column_names() -> None:
    resolver = FakeResolver()
    compile_where(
        parse("visit = v AND exposure.day_obs IN (:days) AND band IS NULL"),
        resolver,
        {"v": 1, "days": [1]},
    )
    assert sorted(resolver.seen, key=str) == [
        ("band", None),
        ("exposure", "day_obs"),
        ("visit", None),
    ]


@pytest.mark.parametrize(
    ("text", "bind", "message"),
    [
        ("dataset_id = 1", None, "unknown name 'dataset_id'"),
        ("exposure.nonsense = 1", None, "unknown name 'exposure.nonsense'"),
        ("visit = :missing", {"a": 1, "b": 2}, "bind parameter :missing has no value"),
        ("visit = :missing", {"a": 1, "b": 2}, "(bind keys given: 'a', 'b')"),
        ("visit = :missing", None, "(bind keys given: none)"),
        ("visit IN (:missing)", {}, "bind parameter :missing has no value"),
        ("visit = 'abc'", None, "visit is an integer dimension, but 'abc' is a string"),
        (
            "visit = '42'",
            None,
            "visit is an integer dimension, but '42' is a string; write the number without quotes",
        ),
        (
            "visit = :v",
            {"v": "42"},
            "visit is an integer dimension, but bind value 'v' ('42') is a string",
        ),
        (
            "exposure.day_obs = 'x'",
            None,
            "exposure.day_obs is an integer field, but 'x' is a string",
        ),
        (
            "visit.exposure_time = 'x'",
            None,
            "visit.exposure_time is a float field, but 'x' is a string",
        ),
        ("band = 5", None, "band is a string dimension, but 5 is a number; quote it ('5')"),
        ("band = 1.5", None, "band is a string dimension, but 1.5 is a number"),
        ("band = :b", {"b": 3}, "band is a string dimension, but bind value 'b' (3) is a number"),
        ("band IN ('g', 3)", None, "band is a string dimension, but 3 is a number"),
        (
            "visit IN (:vs)",
            {"vs": [1, "two"]},
            "visit is an integer dimension, but an element of bind value 'vs' is a string",
        ),
        ("band = visit", None, "cannot compare band (a string) with visit (an integer)"),
        (
            "band IN (1..5)",
            None,
            "ranges such as 1..5 need an integer column, but band is a string dimension",
        ),
        ("visit.exposure_time IN (1..5)", None, "need an integer column"),
        ("1 = 1", None, "comparison 1 = 1 has no dimension or record field on either side"),
        (
            "visit = visit",
            {"visit": 5},
            "'visit' is a key of bind, so it stands for that bind value",
        ),
        (":a < :b", {"a": 1, "b": 2}, "has no dimension or record field"),
        (
            "5 IN (1, 2)",
            None,
            "the left side of IN must be a dimension or record field, but 5 is a constant",
        ),
        ("v IS NULL", {"v": None}, "the operand of IS NULL must be a dimension or record field"),
        ("visit IN (detector)", None, "IN list item detector is not a value"),
        ("visit IN (exposure.day_obs)", None, "IN list item exposure.day_obs is not a value"),
        ("visit = :v", {"v": None}, "bind value 'v' is None, which never compares equal"),
        ("visit = :v", {"v": None}, "write 'visit IS NULL'"),
        (
            "visit = :v",
            {"v": [1, 2]},
            "is a collection; collections can only be used in an IN list, as in visit IN (:v)",
        ),
        ("visit IN (:v)", {"v": [[1]]}, "an element of bind value 'v' is a collection"),
        ("visit = :v", {"v": True}, "unsupported type bool"),
        ("visit = :v", {"v": b"1"}, "unsupported type bytes"),
        ("visit = :v", {"v": 2**70}, "out of range; integers must fit in 64 bits"),
        ("visit.exposure_time = :t", {"t": float("nan")}, "is not a finite number"),
    ],
)
def test_compile_errors(text: str, bind: dict[str, Any] | None, message: str) -> None:
    with pytest.raises(InvalidQueryError) as info:
        compile_text(text, bind)
    assert message in str(info.value)
    assert not isinstance(info.value, QuerySyntaxError)


def test_column_kind_is_validated() -> None:
    with pytest.raises(ValueError, match="column kind"):
        Column("x", "bytes", "x")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("text", "bind", "names"),
    [
        ("", None, set()),
        ("visit = 1", None, {("visit", None)}),
        (
            "visit = v AND NOT (exposure.day_obs > 1 OR band IS NULL) AND detector IN (d, 1..2)",
            {"v": 1, "d": 2},
            {("visit", None), ("exposure", "day_obs"), ("band", None), ("detector", None)},
        ),
        # Without bind every bare name might be a column; IN items never are.
        ("visit = v AND detector IN (d)", None, {("visit", None), ("v", None), ("detector", None)}),
        (
            "detector.full_name = visit.exposure_time",
            None,
            {("detector", "full_name"), ("visit", "exposure_time")},
        ),
    ],
)
def test_referenced_names(text: str, bind: dict[str, Any] | None, names: set[Any]) -> None:
    assert referenced_names(parse_where(text), bind) == names


# -- execution against sqlite ----------------------------------------------------------------

ROWS = [
    # visit, detector, band, day_obs, full_name, exposure_time
    (100, 1, "g", 20240101, "R00_S00", 30.0),
    (101, 2, "r", 20240101, "R00_S01", 15.0),
    (105, 1, "g", 20240102, "R01_S00", 30.0),
    (110, 3, "i", 20240102, None, None),
    (115, 2, None, 20240103, "O'Brien", 60.0),
    (120, 1, "r", None, "R02_S00", 30.0),
    (121, 4, "z", 20240104, "R02_S01", 15.5),
]
ALL_VISITS = {row[0] for row in ROWS}


@pytest.fixture
def db() -> Iterator[sqlite3.Connection]:
    connection = sqlite3.connect(":memory:")
    connection.execute(
        "CREATE TABLE dataset (instrument TEXT, visit INTEGER, detector INTEGER, band TEXT, "
        "day_obs INTEGER, full_name TEXT, exposure_time REAL)"
    )
    connection.executemany("INSERT INTO dataset VALUES ('LSSTCam', ?, ?, ?, ?, ?, ?)", ROWS)
    yield connection
    connection.close()


def select_visits(
    db: sqlite3.Connection, text: str, bind: Mapping[str, Any] | None = None
) -> set[int]:
    sql, params = compile_text(text, bind)
    rows = db.execute(f"SELECT d.visit FROM dataset AS d WHERE {sql}", params).fetchall()
    return {row[0] for row in rows}


@pytest.mark.parametrize(
    ("text", "bind", "visits"),
    [
        ("", None, ALL_VISITS),
        ("visit = 105", None, {105}),
        ("visit IN (100..120)", None, {100, 101, 105, 110, 115, 120}),
        ("visit IN (100..120:5)", None, {100, 105, 110, 115, 120}),
        ("visit IN (101..121:10)", None, {101, 121}),
        ("visit IN (99..103:2)", None, {101}),
        ("visit IN (0..1000:1000)", None, set()),
        ("visit IN (121..121)", None, {121}),
        ("visit IN (-3..1000:4)", None, {101, 105, 121}),
        # Ranges spanning more than 2**63 must not overflow into floating point.
        (
            f"visit IN ({INT64_MIN}..{INT64_MAX}:3)",
            None,
            {v for v in ALL_VISITS if (v - INT64_MIN) % 3 == 0},
        ),
        (
            f"visit IN ({INT64_MIN + 1}..{INT64_MAX}:7)",
            None,
            {v for v in ALL_VISITS if (v - INT64_MIN - 1) % 7 == 0},
        ),
        (
            f"visit NOT IN ({INT64_MIN}..{INT64_MAX}:2)",
            None,
            {v for v in ALL_VISITS if (v - INT64_MIN) % 2},
        ),
        ("visit NOT IN (100..110)", None, {115, 120, 121}),
        ("visit NOT IN (100..120:5)", None, {101, 121}),
        ("visit IN (100, 110..115, :more)", {"more": (121,)}, {100, 110, 115, 121}),
        ("visit IN (:visits)", {"visits": [100, 121, 999]}, {100, 121}),
        ("visit IN (visits)", {"visits": {101}}, {101}),
        ("visit IN (:none)", {"none": []}, set()),
        ("visit NOT IN (:none)", {"none": []}, ALL_VISITS),
        ("band = 'g'", None, {100, 105}),
        ("band = \"g\" OR band = 'i'", None, {100, 105, 110}),
        ("band IN ('g', 'r')", None, {100, 101, 105, 120}),
        # SQL three-valued logic: the NULL band of 115 matches neither a test nor its negation.
        ("NOT band = 'g'", None, {101, 110, 120, 121}),
        ("band != 'g'", None, {101, 110, 120, 121}),
        ("band NOT IN ('g', 'r')", None, {110, 121}),
        ("band IS NULL", None, {115}),
        ("band IS NULL OR band = 'z'", None, {115, 121}),
        ("band IS NOT NULL AND exposure.day_obs IS NULL", None, {120}),
        ("exposure.day_obs >= 20240102 AND detector = 1", None, {105}),
        ("day_obs < 20240102", None, {100, 101}),
        ("detector.full_name = 'O''Brien'", None, {115}),
        ('detector.full_name = "O\'Brien"', None, {115}),
        ("detector.full_name < 'R01'", None, {100, 101, 115}),
        ("visit.exposure_time > 20.5", None, {100, 105, 115, 120}),
        ("visit.exposure_time = 15.5", None, {121}),
        ("visit.exposure_time = 30", None, {100, 105, 120}),
        ("visit.exposure_time IS NULL", None, {110}),
        ("-5 < detector", None, ALL_VISITS),
        ("detector < visit", None, ALL_VISITS),
        ("instrument = :inst AND detector = det", {"inst": "LSSTCam", "det": 2}, {101, 115}),
        ("(band = 'g' OR band = 'r') AND NOT detector IN (2)", None, {100, 105, 120}),
        ("band = 'g' or band = 'r' and not detector in (2)", None, {100, 105, 120}),
        ("NOT (visit < 110 OR visit > 115)", None, {110, 115}),
        ("NOT NOT visit = 100", None, {100}),
    ],
)
def test_execute_in_sqlite(
    db: sqlite3.Connection, text: str, bind: dict[str, Any] | None, visits: set[int]
) -> None:
    assert select_visits(db, text, bind) == visits


def test_fragment_can_be_embedded_in_a_larger_condition(db: sqlite3.Connection) -> None:
    # OR inside the fragment must not leak out and swallow the caller's AND.
    sql, params = compile_text("visit = 100 OR visit = 101")
    rows = db.execute(
        f"SELECT d.visit FROM dataset AS d WHERE d.detector = ? AND {sql}", [2, *params]
    ).fetchall()
    assert rows == [(101,)]


# -- security --------------------------------------------------------------------------------

_SQL_TOKEN = re.compile(r"\w+|<>|<=|>=|\S")
_ALLOWED_SQL_TOKENS = {
    "COLUMN", "?", "=", "<>", "<", "<=", ">", ">=", "(", ")", ",", "%", "-",
    "AND", "OR", "NOT", "IN", "IS", "NULL", "BETWEEN", "0", "1",
}  # fmt: skip


def assert_sql_is_safe(sql: str) -> None:
    """Assert that ``sql`` holds only resolver columns, placeholders and fixed syntax."""
    for column_sql in sorted({c.sql for c in SCHEMA.values()}, key=len, reverse=True):
        sql = sql.replace(column_sql, " COLUMN ")
    unexpected = [tok for tok in _SQL_TOKEN.findall(sql) if tok not in _ALLOWED_SQL_TOKENS]
    assert unexpected == []


HOSTILE_STRINGS = [
    "'; DROP TABLE dataset; --",
    "x' OR '1'='1",
    '" OR ""="',
    "1; DELETE FROM dataset",
    "visit = 1 OR 1=1 --",
    "\x00'); DROP TABLE dataset; --",
    "Robert'); DROP TABLE dataset;--\u202e",
    "\u2019 OR 1=1 --",
    "a" * 10_000,
]


@pytest.mark.parametrize("payload", HOSTILE_STRINGS)
def test_hostile_literals_only_become_parameters(db: sqlite3.Connection, payload: str) -> None:
    text = to_where(Comparison("=", ident("band"), lit(payload)))
    assert parse(text) == Comparison("=", ident("band"), lit(payload))
    sql, params = compile_text(text)
    assert sql == "d.band = ?"
    assert params == [payload]
    assert_sql_is_safe(sql)
    assert select_visits(db, text) == set()
    assert db.execute("SELECT count(*) FROM dataset").fetchone() == (len(ROWS),)


@pytest.mark.parametrize("payload", HOSTILE_STRINGS)
def test_hostile_bind_values_only_become_parameters(db: sqlite3.Connection, payload: str) -> None:
    # Each case with the visits it selects: the payload matches nothing, 'g' matches two.
    cases: list[tuple[str, dict[str, Any], set[int]]] = [
        ("band = :b", {"b": payload}, set()),
        ("band IN (:b)", {"b": [payload, "g"]}, {100, 105}),
        ("detector.full_name = b", {"b": payload}, set()),
    ]
    for text, bind, visits in cases:
        sql, params = compile_text(text, bind)
        assert_sql_is_safe(sql)
        assert payload in params
        rows = db.execute(f"SELECT d.visit FROM dataset AS d WHERE {sql}", params).fetchall()
        assert {row[0] for row in rows} == visits
    assert db.execute("SELECT count(*) FROM dataset").fetchone() == (len(ROWS),)


@pytest.mark.parametrize(
    ("text", "position"),
    [
        ("visit = 1; DROP TABLE dataset", 9),
        ("visit = 1 OR 1=1 --", 17),
        ("visit; drop = 1", 5),
        ("band = 'g' -- ' AND visit = 1", 11),
        ("band = 'g'/**/OR/**/1=1", 10),
        ("visit = 1 UNION SELECT * FROM sqlite_master", 10),
        ('"visit" = 1; --', 11),
        ("visit = 0x10", 8),
        ("visit = 1e5e5", 8),
        ("visit\u037e = 1", 5),  # GREEK QUESTION MARK, looks like ';'
        ("vis\u0456t = 1", 3),  # CYRILLIC SMALL LETTER BYELORUSSIAN-UKRAINIAN I
        ("visit = 1 \u200bOR 1 = 1", 10),
        ("\ufeffvisit = 1", 0),
        ("visit\u2028= 1", 5),
    ],
)
def test_hostile_expressions_are_syntax_errors(text: str, position: int) -> None:
    error = syntax_error(text)
    assert error.position == position


@pytest.mark.parametrize(
    "text",
    [
        "sqlite_master = 1",
        "dataset = 1",
        "d.visit = 1",
        "visit.sql = 1",
        "VISIT = 1",
        "\"visit\" = 'visit'",
    ],
)
def test_unknown_or_string_names_never_reach_sql(text: str) -> None:
    # A name is either resolved by the schema or refused; a quoted "name" is just a string.
    with pytest.raises(InvalidQueryError):
        compile_text(text)


def test_deep_input_with_hostile_content_fails_cleanly(db: sqlite3.Connection) -> None:
    text = "(" * 10_000 + "band = '; DROP TABLE dataset; --'" + ")" * 10_000
    assert "nested too deeply" in syntax_error(text).reason
    assert db.execute("SELECT count(*) FROM dataset").fetchone() == (len(ROWS),)


# -- property-based tests --------------------------------------------------------------------

_TOKEN_SOUP = st.sampled_from(
    [
        "visit", "band", "exposure.day_obs", "a.b", ":v", ":", "'g'", '"x"', "'", '"', "''",
        "1", "-2", "1.5", "1e3", "..", ".", "(", ")", ",", "=", "!=", "<>", "<", "<=", ">",
        ">=", "==", "AND", "or", "Not", "IN", "is", "NULL", " ", "\n", "--", ";", "\u00a0",
        "é", "99999999999999999999", "1..5:2", "-", "!", "+",
    ]
)  # fmt: skip


def _outcome(text: str) -> Node | QuerySyntaxError | None:
    """The tree ``text`` parses to, its syntax error, or None for an empty expression."""
    try:
        return parse_where(text)
    except QuerySyntaxError as caught:  # anything else propagates and fails the test
        return caught


def _check_parses_or_syntax_error(text: str) -> None:
    # Every outcome is checked, so no example passes without an assertion.
    outcome = _outcome(text)
    if isinstance(outcome, QuerySyntaxError):
        assert 0 <= outcome.position <= len(text)
    elif outcome is None:
        assert text.strip(" \t\r\n\f\v") == ""
    else:
        # Whatever parses prints canonically and parses back to the same tree.
        assert parse_where(to_where(outcome)) == outcome


_TREE_TYPES = (And, Or, Not, Comparison, InList, IsNull)


@pytest.mark.parametrize(
    ("strategy", "reaches_trees"),
    [
        (st.text(max_size=200), False),  # random text hardly ever parses
        (st.lists(_TOKEN_SOUP, max_size=25).map(" ".join), True),
        (st.lists(_TOKEN_SOUP, max_size=25).map("".join), True),
    ],
)
def test_fuzzing_strategies_reach_the_outcomes_they_check(
    strategy: st.SearchStrategy[str], reaches_trees: bool
) -> None:
    # The properties below would be vacuous if a strategy only ever produced syntax errors.
    find(strategy, lambda text: isinstance(_outcome(text), QuerySyntaxError))
    find(strategy, lambda text: _outcome(text) is None)
    if reaches_trees:
        find(strategy, lambda text: isinstance(_outcome(text), _TREE_TYPES))


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200))
def test_arbitrary_text_parses_or_raises_syntax_error(text: str) -> None:
    _check_parses_or_syntax_error(text)


@settings(max_examples=500, deadline=None)
@given(st.lists(_TOKEN_SOUP, max_size=25).map(" ".join))
def test_token_soup_parses_or_raises_syntax_error(text: str) -> None:
    _check_parses_or_syntax_error(text)


@settings(max_examples=300, deadline=None)
@given(st.lists(_TOKEN_SOUP, max_size=25).map("".join))
def test_glued_token_soup_parses_or_raises_syntax_error(text: str) -> None:
    _check_parses_or_syntax_error(text)


_NAMES = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,8}", fullmatch=True)
_PLAIN_NAMES = _NAMES.filter(lambda name: name.upper() not in KEYWORDS)
_VALUES = st.one_of(
    st.builds(Identifier, _PLAIN_NAMES, st.none() | _NAMES),
    st.builds(BindRef, _NAMES),
    st.builds(
        Literal,
        st.one_of(
            st.integers(INT64_MIN, INT64_MAX),
            st.floats(allow_nan=False, allow_infinity=False),
            st.text(max_size=20),
        ),
    ),
)
_RANGES = st.builds(
    lambda a, b, stride: Range(min(a, b), max(a, b), stride),
    st.integers(INT64_MIN, INT64_MAX),
    st.integers(INT64_MIN, INT64_MAX),
    st.integers(1, INT64_MAX),
)
_PREDICATES = st.one_of(
    st.builds(Comparison, st.sampled_from(["=", "!=", "<", "<=", ">", ">="]), _VALUES, _VALUES),
    st.builds(
        InList,
        _VALUES,
        st.lists(_VALUES | _RANGES, min_size=1, max_size=4).map(tuple),
        st.booleans(),
    ),
    st.builds(IsNull, _VALUES, st.booleans()),
)
_TREES = st.recursive(
    _PREDICATES,
    lambda children: st.one_of(
        st.builds(Not, children),
        st.lists(children, min_size=2, max_size=4).map(lambda ops: And(tuple(ops))),
        st.lists(children, min_size=2, max_size=4).map(lambda ops: Or(tuple(ops))),
    ),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(_TREES)
def test_generated_trees_round_trip_through_text(tree: Node) -> None:
    text = to_where(tree)
    assert parse_where(text) == tree
    assert to_where(parse(text)) == text
