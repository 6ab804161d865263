"""The `where` language at its edges: how much of a malformed number an error quotes, an
expression of exactly the length limit, the advice for an unexpected character; strided
ranges over negative values, 64-bit bounds, long OR runs and the nesting limit in SQL.

Written to kill the mutants of ``butler/query/parser.py`` and ``compiler.py`` that survived
the rest of the suite (``bench/mutation/run.py where``)."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from typing import Any

import pytest

from butler.errors import InvalidQueryError, QuerySyntaxError
from butler.query import (
    MAX_EXPRESSION_LENGTH,
    MAX_NESTING_DEPTH,
    MAX_PARAMETERS,
    Column,
    Comparison,
    Node,
    Not,
    compile_where,
    parse_where,
)
from butler.query.ast import INT64_MAX, INT64_MIN


def syntax_error(text: str) -> str:
    with pytest.raises(QuerySyntaxError) as raised:
        parse_where(text)
    return str(raised.value)


def test_a_malformed_number_is_quoted_up_to_where_it_ends() -> None:
    message = syntax_error("visit = 100abc AND detector = 1")
    assert "malformed number '100abc';" in message
    assert "'100abc AND" not in message
    assert "malformed number '1.5.3';" in syntax_error("visit = 1.5.3 OR detector = 2")


def test_an_expression_of_exactly_the_length_limit_is_parsed() -> None:
    core = "visit = 1"
    exact = core + " " * (MAX_EXPRESSION_LENGTH - len(core))
    assert len(exact) == MAX_EXPRESSION_LENGTH
    assert isinstance(parse_where(exact), Comparison)
    message = syntax_error(exact + " ")
    assert f"more than the limit of {MAX_EXPRESSION_LENGTH}" in message


@pytest.mark.parametrize(
    ("char", "advice"),
    [
        ("é", "names and operators must be plain ASCII"),
        ("#", "expected a name, a value, an operator, a parenthesis or a comma"),
        ("$", "expected a name, a value, an operator, a parenthesis or a comma"),
    ],
)
def test_an_unexpected_character_gets_the_advice_that_fits(char: str, advice: str) -> None:
    message = syntax_error(f"visit = 1 AND {char}x = 2")
    assert "unexpected character" in message
    assert advice in message


@pytest.mark.parametrize(("length", "shown"), [(40, "a" * 40), (41, "a" * 37 + "...")])
def test_a_token_in_an_error_is_shown_whole_up_to_40_characters(length: int, shown: str) -> None:
    message = syntax_error("visit = 1 " + "a" * length)
    assert f"found {shown!r} at position 10" in message


@pytest.mark.parametrize(
    ("text", "quoted"), [("100a AND x = 1", "100a"), ("100ab AND x = 1", "100ab")]
)
def test_a_malformed_number_with_a_short_suffix_is_quoted_exactly(text: str, quoted: str) -> None:
    assert f"malformed number {quoted!r};" in syntax_error(f"visit = {text}")


def test_a_bind_after_a_value_in_a_list_asks_for_a_comma_not_a_stride() -> None:
    message = syntax_error("visit IN (1 :v)")
    assert "',' or ')' to close the IN list" in message
    assert "stride" not in message
    assert "stride after ':' must be a positive integer literal" in syntax_error(
        "visit IN (1..5:v)"
    )


def test_a_lone_surrogate_in_a_string_is_pointed_at() -> None:
    text = "name = 'ab\ud800c'"
    message = syntax_error(text)
    assert "U+D800" in message
    assert f"at position {text.index(chr(0xD800))}:" in message


def test_the_last_item_decides_between_a_comma_and_a_stride() -> None:
    message = syntax_error("visit IN (1..5, 7 :v)")
    assert "',' or ')' to close the IN list" in message


# -- the compiler at its edges, run against SQLite ------------------------------------------
# (the mutants of butler/query/compiler.py that survived the rest of the suite)

EDGE_VISITS = [*range(-40, 41), INT64_MIN, INT64_MAX]


class _VisitOnly:
    def resolve(self, name: str, field: str | None) -> Column:
        assert (name, field) == ("visit", None)
        return Column("t.visit", "int", "visit")


@pytest.fixture
def visits() -> Iterator[sqlite3.Connection]:
    db = sqlite3.connect(":memory:")
    db.execute("CREATE TABLE t (visit INTEGER)")
    db.executemany("INSERT INTO t VALUES (?)", [(v,) for v in EDGE_VISITS])
    yield db
    db.close()


def matching(db: sqlite3.Connection, node: Node, bind: dict[str, Any] | None = None) -> set[int]:
    sql, params = compile_where(node, _VisitOnly(), bind)
    return {row[0] for row in db.execute(f"SELECT visit FROM t WHERE {sql}", params)}  # noqa: S608


@pytest.mark.parametrize(("start", "stop", "stride"), [(-10, 10, 3), (-37, -2, 5), (-9, 40, 4)])
def test_strided_ranges_find_negative_members(
    visits: sqlite3.Connection, start: int, stop: int, stride: int
) -> None:
    members = {v for v in EDGE_VISITS if start <= v <= stop and (v - start) % stride == 0}
    assert any(v < 0 for v in members)
    text = f"visit IN ({start}..{stop}:{stride})"
    assert matching(visits, parse_where(text)) == members
    assert matching(visits, parse_where(f"visit NOT IN ({start}..{stop}:{stride})")) == (
        set(EDGE_VISITS) - members
    )


def test_bind_values_at_the_ends_of_64_bits_are_accepted(visits: sqlite3.Connection) -> None:
    node = parse_where("visit = :v")
    assert matching(visits, node, {"v": INT64_MIN}) == {INT64_MIN}
    assert matching(visits, node, {"v": INT64_MAX}) == {INT64_MAX}
    for outside in (INT64_MIN - 1, INT64_MAX + 1):
        with pytest.raises(InvalidQueryError, match="out of range; integers must fit in 64"):
            matching(visits, node, {"v": outside})


@pytest.mark.parametrize("count", [33, 34, 65, 66])
def test_long_runs_of_or_split_into_groups_keep_every_term(
    visits: sqlite3.Connection, count: int
) -> None:
    wanted = EDGE_VISITS[:count]
    assert len(wanted) == count
    node = parse_where(" OR ".join(f"visit = {v}" for v in wanted))
    assert matching(visits, node) == set(wanted)


def test_trees_built_in_code_may_nest_one_level_more_than_parsed_ones(
    visits: sqlite3.Connection,
) -> None:
    def nots(count: int) -> Node:
        node: Node = parse_where("visit = 3")
        for _ in range(count):
            node = Not(node)
        return node

    # The deepest NOT of n nested ones is at depth n - 1: the limit allows depth MAX + 1.
    assert matching(visits, nots(MAX_NESTING_DEPTH + 2)) == {3}
    with pytest.raises(InvalidQueryError, match="nested too deeply"):
        matching(visits, nots(MAX_NESTING_DEPTH + 3))


def test_exactly_the_parameter_limit_compiles(visits: sqlite3.Connection) -> None:
    lists = MAX_PARAMETERS // 100  # IN lists of 100 bound values stay inline: 100 parameters each
    bind: dict[str, Any] = {f"v{n}": list(range(n * 100, n * 100 + 100)) for n in range(lists)}
    text = " OR ".join(f"visit IN (:v{n})" for n in range(lists))
    assert len(compile_where(parse_where(text), _VisitOnly(), bind)[1]) == MAX_PARAMETERS
    assert matching(visits, parse_where(text), bind) == {
        v for v in EDGE_VISITS if 0 <= v < MAX_PARAMETERS
    }
    with pytest.raises(InvalidQueryError, match=f"more than the limit of {MAX_PARAMETERS}"):
        compile_where(parse_where(text + " OR visit = 1"), _VisitOnly(), bind)


@pytest.mark.parametrize(
    ("value", "advice"),
    [("'42'", "write the number without quotes"), ("'abc'", "compare it with a number")],
)
def test_a_string_against_a_number_gets_the_advice_that_fits(value: str, advice: str) -> None:
    with pytest.raises(InvalidQueryError, match=advice):
        compile_where(parse_where(f"visit = {value}"), _VisitOnly())
