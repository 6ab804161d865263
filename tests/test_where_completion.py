"""The pure pieces behind completion and ``to_where``: no repository, no shell."""

from __future__ import annotations

import pytest

from butler import InvalidQueryError
from butler.interactive.expression import compose, inline_bind, normalise, where_text
from butler.interactive.where_completion import where_candidates, where_position
from butler.query import parse_where

NAMES = ["instrument", "visit", "detector", "band"]
VALUES = {"instrument": ["HSC", "O'Neil"], "visit": [100, 101, 200], "band": ["r", "i"]}


@pytest.mark.parametrize(
    ("text", "expects", "dimension", "partial", "context"),
    [
        ("", "name", None, "", ""),
        ("vi", "name", None, "vi", ""),
        ("(vi", "name", None, "vi", ""),
        ("instrument = 'HSC' AND vi", "name", None, "vi", ""),
        ("visit = ", "value", "visit", "", ""),
        ("visit.exposure_time > 3", "value", "visit", "3", ""),
        ("instrument = 'HSC' AND visit = 1", "value", "visit", "1", "instrument = 'HSC'"),
        ("instrument = 'H", "value", "instrument", "'H", ""),
        ("visit IN (100, 1", "value", "visit", "1", ""),
        ("band = 'r' and visit not in (", "value", "visit", "", "band = 'r'"),
        ("instrument = 'HSC' OR visit = ", "value", "visit", "", ""),
        ("instrument = 'HSC' AND NOT visit = ", "value", "visit", "", ""),
        ("(visit = 1 OR visit = 2) AND band = ", "value", "band", "", "(visit = 1 OR visit = 2)"),
        ("visit = 100 ", "keyword", None, "", ""),
        ("band = 'r' o", "keyword", None, "o", ""),
    ],
)
def test_where_position(
    text: str, expects: str, dimension: str | None, partial: str, context: str
) -> None:
    position = where_position(text)
    assert (position.expects, position.dimension, position.partial, position.context) == (
        expects,
        dimension,
        partial,
        context,
    )
    assert position.head + position.partial == text


def test_candidates_are_whole_words_with_quoted_strings() -> None:
    asked: list[tuple[str, str]] = []

    def values_of(dimension: str, context: str) -> list[object]:
        asked.append((dimension, context))
        return VALUES[dimension]

    assert where_candidates("band = 'r' AND instrument = ", NAMES, values_of) == [
        "band = 'r' AND instrument = 'HSC'",
        "band = 'r' AND instrument = 'O''Neil'",
    ]
    assert asked == [("instrument", "band = 'r'")]
    assert where_candidates("visit IN (100, 1", NAMES, values_of) == [
        "visit IN (100, 100",
        "visit IN (100, 101",
    ]
    assert where_candidates("instrument = 'O", NAMES, values_of) == ["instrument = 'O''Neil'"]
    assert where_candidates("de", NAMES, values_of) == ["detector"]
    assert where_candidates("visit = 1 A", NAMES, values_of) == ["visit = 1 AND "]
    assert where_candidates("tract = ", NAMES, values_of) == []  # not a dimension here


def test_bind_values_are_inlined_as_literals() -> None:
    node = compose(
        {"instrument": normalise("instrument", "HSC"), "visit": normalise("visit", range(1, 4))},
        ["band IN (:bands) AND visit.target_name = name"],
    )
    assert node is not None
    text = where_text(inline_bind(node, {"bands": ["r", "i"], "name": "it's"}))
    assert text == (
        "instrument = 'HSC' AND visit IN (1..3) AND band IN ('r', 'i') AND "
        "visit.target_name = 'it''s'"
    )
    assert where_text(parse_where(text)) == text
    with pytest.raises(InvalidQueryError, match=":missing has no value"):
        inline_bind(parse_where("visit = :missing"), {})  # type: ignore[arg-type]
    with pytest.raises(InvalidQueryError, match="empty list"):
        normalise("visit", [])
    with pytest.raises(InvalidQueryError, match="not a dimension value"):
        normalise("visit", True)
