"""The `where` parser at its edges: how much of a malformed number an error quotes, an
expression of exactly the length limit, and the advice for an unexpected character.

Written to kill the mutants of ``butler/query/parser.py`` that survived the rest of the
suite (``bench/mutation/run.py where``)."""

from __future__ import annotations

import pytest

from butler.errors import QuerySyntaxError
from butler.query import MAX_EXPRESSION_LENGTH, Comparison, parse_where


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
