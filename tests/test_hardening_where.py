"""Hardening of the ``where`` language through the real layers.

Limits (nesting depth, number of conditions, length, bound values) must give a clear
``QuerySyntaxError``/``InvalidQueryError`` from a local repository and a 400 with the same
message from ``butler serve``, never a 500 or a ``RecursionError``; expressions at the
limits, in their worst shapes for SQLite's parser stack and expression depth, must run in
every query path.  Hypothesis fuzzes the parser and the compiler against a real SQLite
registry, checking the rows against a Python oracle that evaluates the same tree over the
records this module inserts (SQL three-valued logic), independently of the compiler.
"""

from __future__ import annotations

import dataclasses
import json
import operator
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from postgres import PostgresServer
from servers import ButlerServer

from butler import Butler
from butler.errors import BadRequestError, InvalidQueryError, QuerySyntaxError
from butler.query import (
    MAX_CONDITIONS,
    MAX_EXPRESSION_LENGTH,
    MAX_NESTING_DEPTH,
    MAX_PARAMETERS,
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
    parse_where,
    to_where,
)
from butler.query.ast import INT64_MAX, INT64_MIN

# -- the repository: records written here, so expectations never come from the registry ----

BAND_OF = {"HSC-R": "r", "HSC-I": "i", "HSC-G": "g"}
DAYS = (20240101, 20240102)
DETECTORS: dict[int, str | None] = {0: "ccd0", 1: "ccd1", 2: "ccd2", 3: None}
VISITS: dict[int, dict[str, Any]] = {
    v: {
        "physical_filter": ("HSC-R", "HSC-I", "HSC-G")[v % 3],
        "day_obs": DAYS[v >= 105],
        # Two visits lack optional fields, so NULL semantics are exercised.
        "exposure_time": None if v >= 110 else 30.0 + (v - 100) * 1.5,
        "target_name": None if v == 111 else ("COSMOS" if v < 104 else "SXDS"),
    }
    for v in range(100, 112)
}
DATA_IDS = {(v, d) for v in VISITS for d in DETECTORS}
RUN2_VISITS = {v for v in VISITS if v % 2 == 0}

# Bind values, by name: scalars for comparisons, collections for IN lists (the long ones
# take the compiler's one-JSON-parameter path).
BIND: dict[str, Any] = {
    "b_visit": 105,
    "b_band": "i",
    "b_time": 33.0,
    "b_visits": [100, 104, 111, 999],
    "b_many": list(range(-1000, 5000, 3)),
    "b_bands": ("r", "g"),
    "b_names": [f"ccd{i}" for i in range(0, 300, 2)],
    "b_none": [],
}


def row_of(visit: int, detector: int) -> dict[tuple[str, str | None], Any]:
    """The value of every name the generated queries use, for one (visit, detector)."""
    record = VISITS[visit]
    pf = record["physical_filter"]
    return {
        ("instrument", None): "HSC",
        ("instrument", "detector_max"): 112,
        ("visit", None): visit,
        ("visit", "id"): visit,
        ("detector", None): detector,
        ("detector", "id"): detector,
        ("day_obs", None): record["day_obs"],
        ("visit", "day_obs"): record["day_obs"],
        ("physical_filter", None): pf,
        ("visit", "physical_filter"): pf,
        ("band", None): BAND_OF[pf],
        ("physical_filter", "band"): BAND_OF[pf],
        ("visit", "exposure_time"): record["exposure_time"],
        ("visit", "target_name"): record["target_name"],
        ("detector", "full_name"): DETECTORS[detector],
    }


def make_repo(root: Path, registry: str | None = None) -> Path:
    with Butler.create(root, registry=registry) as butler:
        butler.insert_dimension_records("instrument", {"name": "HSC", "detector_max": 112})
        butler.insert_dimension_records("band", *[{"name": b} for b in BAND_OF.values()])
        butler.insert_dimension_records(
            "physical_filter",
            *[{"instrument": "HSC", "name": pf, "band": b} for pf, b in BAND_OF.items()],
        )
        butler.insert_dimension_records(
            "day_obs", *[{"instrument": "HSC", "id": day} for day in DAYS]
        )
        butler.insert_dimension_records(
            "detector",
            *[
                {"instrument": "HSC", "id": d, **({"full_name": name} if name else {})}
                for d, name in DETECTORS.items()
            ],
        )
        butler.insert_dimension_records(
            "visit",
            *[
                {
                    "instrument": "HSC",
                    "id": v,
                    **{key: value for key, value in record.items() if value is not None},
                }
                for v, record in VISITS.items()
            ],
        )
        butler.register_dataset_type("summary", ["visit", "detector"], "Dict")
    for run, visits in (("run1", set(VISITS)), ("run2", RUN2_VISITS)):
        with Butler(root, run=run) as butler:
            for v, d in sorted(DATA_IDS):
                if v in visits:
                    butler.put({"v": v, "d": d}, "summary", instrument="HSC", visit=v, detector=d)
    return root


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_repo(tmp_path_factory.mktemp("where") / "repo")


@pytest.fixture(scope="module")
def butler(repo: Path) -> Iterator[Butler]:
    with Butler(repo) as b:
        yield b


@pytest.fixture(scope="module")
def postgresql_butler(
    tmp_path_factory: pytest.TempPathFactory, postgres_server: PostgresServer
) -> Iterator[Butler]:
    """The same repository with its registry in PostgreSQL: the where compiler's other
    dialect, held to the same oracle."""
    root = make_repo(tmp_path_factory.mktemp("where-pg") / "repo", postgres_server.new_registry())
    with Butler(root) as b:
        yield b


@pytest.fixture(scope="module")
def server(repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ButlerServer]:
    srv = ButlerServer(repo, tmp_path_factory.mktemp("server"), tokens=False).start()
    yield srv
    srv.stop()


# Every query path that takes a where expression, with the (visit, detector) pairs found.
# Datasets are searched in run2 then run1 (find-first), the deepest SQL the registry builds.
QueryFn = Callable[[Butler, str, Mapping[str, Any]], set[tuple[int, int]]]


def _pair(data_id: Any) -> tuple[int, int]:
    visit, detector = data_id["visit"], data_id["detector"]
    assert isinstance(visit, int)
    assert isinstance(detector, int)
    return visit, detector


def _datasets(butler: Butler, where: str, bind: Mapping[str, Any]) -> set[tuple[int, int]]:
    refs = butler.query_datasets("summary", ["run2", "run1"], where=where, bind=bind)
    pairs = [_pair(ref.data_id) for ref in refs]
    assert len(pairs) == len(set(pairs))  # find-first: one dataset per data ID
    return set(pairs)


def _data_ids(butler: Butler, where: str, bind: Mapping[str, Any]) -> set[tuple[int, int]]:
    found = butler.query_data_ids(["visit", "detector"], where=where, bind=bind)
    return {_pair(c) for c in found}


def _data_ids_with_datasets(
    butler: Butler, where: str, bind: Mapping[str, Any]
) -> set[tuple[int, int]]:
    found = butler.query_data_ids(
        ["visit", "detector"], where=where, bind=bind, dataset_type="summary", collections="run1"
    )
    return {_pair(c) for c in found}


def _summary(butler: Butler, where: str, bind: Mapping[str, Any]) -> set[tuple[int, int]]:
    # The count only; the pairs are those of the dataset query, checked against it.
    count = butler.query_summary("summary", ["run2", "run1"], where=where, bind=bind).count
    pairs = _datasets(butler, where, bind)
    assert count == len(pairs)
    return pairs


def _records(butler: Butler, where: str, bind: Mapping[str, Any]) -> set[tuple[int, int]]:
    # Visit records know no detector: the pairs are the visits found times every detector.
    records = butler.query_dimension_records("visit", where=where, bind=bind)
    return {(r["id"], d) for r in records for d in DETECTORS}


QUERIES: dict[str, QueryFn] = {
    "datasets": _datasets,
    "data_ids": _data_ids,
    "data_ids_with_datasets": _data_ids_with_datasets,
    "summary": _summary,
    "records": _records,
}

# -- an oracle: the tree evaluated in Python with SQL's three-valued logic -------------------

_COMPARE: dict[ComparisonOperator, Callable[[Any, Any], bool]] = {
    "=": operator.eq,
    "!=": operator.ne,
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
}


def _value(value: Identifier | BindRef | Literal, row: Mapping[Any, Any]) -> Any:
    if isinstance(value, Literal):
        return value.value
    if isinstance(value, BindRef):
        return BIND[value.name]
    if value.field is None and value.name in BIND:
        return BIND[value.name]
    return row[value.name, value.field]


def _in_list(node: InList, row: Mapping[Any, Any]) -> bool | None:
    x = _value(node.expr, row)
    values: list[Any] = []
    ranges: list[Range] = []
    for item in node.items:
        if isinstance(item, Range):
            ranges.append(item)
            continue
        value = _value(item, row)
        values.extend(value if isinstance(value, list | tuple) else [value])
    if not values and not ranges:
        found: bool | None = False  # nothing is in an empty list, not even NULL
    elif x is None:
        found = None
    else:
        found = x in values or any(
            r.start <= x <= r.stop and (x - r.start) % r.stride == 0 for r in ranges
        )
    return _not(found) if node.negated else found


def _not(value: bool | None) -> bool | None:
    return None if value is None else not value


def evaluate(node: Node, row: Mapping[Any, Any]) -> bool | None:
    """True, False or None (SQL's unknown) for ``node`` on one row."""
    if isinstance(node, Comparison):
        left, right = _value(node.left, row), _value(node.right, row)
        return None if left is None or right is None else _COMPARE[node.op](left, right)
    if isinstance(node, InList):
        return _in_list(node, row)
    if isinstance(node, IsNull):
        is_null = _value(node.expr, row) is None
        return not is_null if node.negated else is_null
    if isinstance(node, Not):
        return _not(evaluate(node.operand, row))
    results = [evaluate(operand, row) for operand in node.operands]
    decisive = isinstance(node, Or)  # True decides an OR, False decides an AND
    if decisive in results:
        return decisive
    return None if None in results else not decisive


def expected_pairs(node: Node | None, pairs: set[tuple[int, int]]) -> set[tuple[int, int]]:
    if node is None:
        return set(pairs)
    return {pair for pair in pairs if evaluate(node, row_of(*pair)) is True}


# -- worst shapes at the limits ---------------------------------------------------------------

# The costliest condition: a negated IN list with values and strided and plain ranges.
LEAF = "visit NOT IN (101, 3..9:2, 103..104, 20..30:5)"


def spine(levels: int, first: str = "OR") -> str:
    """``visit = 100 OR (visit != 101 AND (visit = 102 OR (... LEAF)))``: a level per '('."""
    text = LEAF
    ops = ("OR", "AND") if first == "OR" else ("AND", "OR")
    for level in reversed(range(levels)):
        op = ops[level % 2]
        # Conditions true for some visits and false for others, so every level matters.
        condition = f"visit {'=' if op == 'OR' else '!='} {100 + level % len(VISITS)}"
        text = f"{condition} {op} ({text})"
    return text


def halving(levels: int, base: str, first: str = "OR") -> str:
    """Two equal halves per level: the path to the second half is the costly one for
    SQLite's parser (a '(' after an operand), and there are as many such steps as
    the conditions allow."""
    if levels == 0:
        return base
    other = "AND" if first == "OR" else "OR"
    inner = halving(levels - 1, base, other)
    return f"({inner}) {first} ({inner})"


def caterpillar(levels: int, pairs: int) -> str:
    """Many small compound operands beside one deep one at every level: the longest SQL
    chains around the deepest operand (SQLite's expression depth)."""
    text = LEAF
    for level in reversed(range(levels)):
        op, other = ("OR", "AND") if level % 2 else ("AND", "OR")
        small = f" {op} ".join(f"(visit = {j} {other} visit != {j + 1})" for j in range(pairs))
        text = f"{small} {op} ({text})"
    return text


AT_LIMITS = {
    "spine": spine(MAX_NESTING_DEPTH),
    "spine_and": spine(MAX_NESTING_DEPTH, first="AND"),
    "halving": halving(5, spine(MAX_NESTING_DEPTH - 5)),
    "caterpillar": caterpillar(MAX_NESTING_DEPTH - 1, 15),
    "nots": "NOT " * MAX_NESTING_DEPTH + "visit = 101",
    "not_parens": "NOT (" * (MAX_NESTING_DEPTH // 2) + LEAF + ")" * (MAX_NESTING_DEPTH // 2),
    "or_run": " OR ".join(f"visit = {n}" for n in range(MAX_CONDITIONS)),
    "and_run": " AND ".join(f"visit != {n}" for n in range(MAX_CONDITIONS)),
    "range_run": "visit IN ("
    + ", ".join(f"{2 * n}..{2 * n}:{1 + n % 2}" for n in range(MAX_CONDITIONS - 1))
    + ")",
    # Bound as one JSON parameter, however many values.
    "long_in": "visit IN (" + ", ".join(str(n) for n in range(15_000) if n % 3) + ")",
}


def test_at_limit_shapes_are_within_the_limits() -> None:
    for name, text in AT_LIMITS.items():
        node = parse_where(text)
        assert node is not None, name
        assert len(text) <= MAX_EXPRESSION_LENGTH, name
    # ... and each is at a limit: one step further is refused.
    assert "nested too deeply" in _syntax_error("NOT " + AT_LIMITS["nots"]).reason
    assert "nested too deeply" in _syntax_error(spine(MAX_NESTING_DEPTH + 1)).reason
    assert "conditions" in _syntax_error(AT_LIMITS["or_run"] + " OR visit = 1").reason


def _syntax_error(text: str) -> QuerySyntaxError:
    with pytest.raises(QuerySyntaxError) as info:
        parse_where(text)
    return info.value


@pytest.mark.parametrize("query", sorted(QUERIES))
@pytest.mark.parametrize("shape", sorted(AT_LIMITS))
def test_worst_shapes_at_the_limits_run_in_every_query_path(
    butler: Butler, query: str, shape: str
) -> None:
    text = AT_LIMITS[shape]
    found = QUERIES[query](butler, text, {})
    expected = expected_pairs(parse_where(text), DATA_IDS)
    assert found == expected


@pytest.mark.parametrize("query", sorted(QUERIES))
@pytest.mark.parametrize("shape", sorted(AT_LIMITS))
def test_worst_shapes_at_the_limits_run_on_postgresql(
    postgresql_butler: Butler, query: str, shape: str
) -> None:
    text = AT_LIMITS[shape]
    assert QUERIES[query](postgresql_butler, text, {}) == expected_pairs(
        parse_where(text), DATA_IDS
    )


def test_at_limit_results_are_not_trivial() -> None:
    # The shapes above would prove little if they all selected nothing (or everything).
    sizes = {name: len(expected_pairs(parse_where(t), DATA_IDS)) for name, t in AT_LIMITS.items()}
    assert sizes["nots"] == len(DETECTORS)  # visit = 101, after an even number of NOTs
    assert sizes["or_run"] == len(DATA_IDS)
    assert sizes["and_run"] == 0
    for name in (
        "spine",
        "spine_and",
        "halving",
        "caterpillar",
        "not_parens",
        "range_run",
        "long_in",
    ):
        assert 0 < sizes[name] < len(DATA_IDS), name


# -- over the limits: a clear error locally ---------------------------------------------------

OVER_LIMITS: dict[str, tuple[str, str]] = {
    # name: (expression, what the message must say)
    "not_45": ("NOT " * 45 + "visit = 101", "nested too deeply (more than 32 levels"),
    "parens_99": ("(" * 99 + "visit = 1" + ")" * 99, "nested too deeply (more than 32 levels"),
    "or_1001": (
        " OR ".join(f"visit = {n}" for n in range(MAX_CONDITIONS + 1)),
        "more than 1000 conditions",
    ),
    "or_5000": (" OR ".join(f"visit = {n}" for n in range(5000)), "more than 1000 conditions"),
    "ranges_2000": (
        "visit IN (" + ", ".join(f"{2 * n}..{2 * n + 1}" for n in range(2000)) + ")",
        "more than 1000 conditions",
    ),
    "too_long": (
        "visit IN (" + ", ".join("1" for _ in range(60_000)) + ")",
        f"more than the limit of {MAX_EXPRESSION_LENGTH}",
    ),
    "surrogate": ("visit.target_name = 'a\ud800'", "lone surrogate"),
}


@pytest.mark.parametrize("query", sorted(QUERIES))
@pytest.mark.parametrize("case", sorted(OVER_LIMITS))
def test_over_the_limits_is_a_clear_syntax_error(butler: Butler, query: str, case: str) -> None:
    text, message = OVER_LIMITS[case]
    with pytest.raises(QuerySyntaxError) as info:
        QUERIES[query](butler, text, {})
    assert message in str(info.value)
    # The message says what to do, and never echoes a huge expression.
    assert any(hint in info.value.reason for hint in ("simplify", "IN list", "bind", "remove it"))
    assert len(str(info.value)) < 1000


def test_long_in_lists_from_bind_need_one_parameter(butler: Butler) -> None:
    # 300,000 values: beyond SQLite's default limit of 32,766 parameters per statement,
    # and beyond the 250,000 of Debian's build.
    visits = list(range(-150_000, 150_000))
    assert {v for v, _ in QUERIES["datasets"](butler, "visit IN (:v)", {"v": visits})} == set(
        VISITS
    )
    # json_each would cut a string at a NUL: those values stay inline, and still match.
    names = [f"ccd{i}" for i in range(1, 50_000)] + ["ccd0\x00"] * 3
    found = QUERIES["data_ids"](butler, "detector.full_name IN (:n)", {"n": names})
    assert found == {(v, d) for v, d in DATA_IDS if d in (1, 2)}


@pytest.mark.parametrize(
    ("start", "stride"), [(INT64_MIN, 3), (INT64_MIN + 100, 7), (INT64_MIN, 2), (-5, 4)]
)
@pytest.mark.parametrize("query", ["datasets", "data_ids", "records"])
def test_strided_ranges_spanning_more_than_2_63_select_exactly(
    butler: Butler, query: str, start: int, stride: int
) -> None:
    # visit - start overflows 64 bits for these; SQLite then computes in floating point.
    text = f"visit IN ({start}..{INT64_MAX}:{stride})"
    visits = {v for v in VISITS if (v - start) % stride == 0}
    assert 0 < len(visits) < len(VISITS)
    assert QUERIES[query](butler, text, {}) == {(v, d) for v, d in DATA_IDS if v in visits}
    negated = QUERIES[query](butler, text.replace(" IN ", " NOT IN "), {})
    assert negated == {(v, d) for v, d in DATA_IDS if v not in visits}


def test_too_many_parameters_is_a_clear_error(butler: Butler) -> None:
    # 101 IN lists of 100 values each: every list inline, 10,100 parameters in all.
    bind = {f"l{i}": list(range(i, i + 100)) for i in range(101)}
    text = " OR ".join(f"visit IN (:l{i})" for i in range(101))
    with pytest.raises(InvalidQueryError) as info:
        QUERIES["datasets"](butler, text, bind)
    assert f"more than the limit of {MAX_PARAMETERS}" in str(info.value)
    assert "visit IN (:visits)" in str(info.value)


@pytest.mark.parametrize("bad", [42, None, ["visit = 1"], {"where": "visit = 1"}])
def test_a_where_that_is_not_a_string_is_a_clear_error(bad: Any) -> None:
    with pytest.raises(QuerySyntaxError, match="a where expression must be a string"):
        parse_where(bad)


def test_a_bind_string_with_a_lone_surrogate_is_a_clear_error(butler: Butler) -> None:
    with pytest.raises(InvalidQueryError, match="lone surrogate"):
        QUERIES["datasets"](butler, "visit.target_name = :t", {"t": "a\udc00"})


def test_hand_built_trees_are_held_to_the_same_limits(butler: Butler) -> None:
    # Query builders hand trees to the compiler directly: it checks them itself.
    from butler.query import Column, compile_where

    class Resolver:
        def resolve(self, name: str, field: str | None) -> Column:
            return Column("t.visit", "int", "visit")

    at_limit: Node = Comparison("=", Identifier("visit"), Literal(1))
    for _ in range(MAX_NESTING_DEPTH):
        at_limit = Not(at_limit)
    assert parse_where(to_where(at_limit)) == at_limit  # as deep as the parser goes
    # Under one more AND, as a query builder adds to a parsed expression, it compiles...
    detector = Comparison("=", Identifier("detector"), Literal(2))
    builder = And((detector, at_limit))
    assert compile_where(builder, Resolver()) == ("(t.visit = ? AND t.visit = ?)", [2, 1])
    # ... but deeper trees are refused.
    with pytest.raises(InvalidQueryError, match="nested too deeply"):
        compile_where(And((detector, Not(Not(at_limit)))), Resolver())
    wide = Or(tuple(Comparison("=", Identifier("visit"), Literal(n)) for n in range(1001)))
    with pytest.raises(InvalidQueryError, match="1001 conditions, more than the limit of 1000"):
        compile_where(wide, Resolver())


# -- over HTTP: butler serve answers 400 with the message ------------------------------------


def http_get(url: str) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(url, timeout=60) as response:  # noqa: S310
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def http_post(url: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(  # noqa: S310
        url,
        data=json.dumps(body).encode(),
        method="POST",
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:  # noqa: S310
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def _get_paths(where: str) -> list[str]:
    query = urllib.parse.quote(where)
    return [
        f"api/v1/datasets?dataset_type=summary&collections=run2&collections=run1&where={query}",
        f"api/v1/dimensions/visit/records?where={query}",
        f"api/v1/data-ids?dimensions=visit&dimensions=detector&where={query}",
        f"api/v1/datasets/summary?dataset_type=summary&collections=run1&where={query}",
    ]


# Short enough for a URL (aiohttp refuses request lines over 8 KiB on its own).
SHORT_OVER_LIMITS = ["not_45", "parens_99"]


@pytest.mark.parametrize("case", SHORT_OVER_LIMITS)
def test_server_answers_400_for_over_limit_queries_in_urls(server: ButlerServer, case: str) -> None:
    text, message = OVER_LIMITS[case]
    paths = _get_paths(text)
    assert paths
    for path in paths:
        status, body = http_get(server.url + path)
        assert (status, body["error_type"]) == (400, "QuerySyntaxError"), (path, body)
        assert message in body["message"]


def test_server_copes_with_a_lone_surrogate_in_a_url(server: ButlerServer) -> None:
    # A URL carries it as the (invalid) UTF-8 bytes of the surrogate, which the server
    # decodes to U+FFFD: a valid string that names no target.
    where = urllib.parse.quote("visit.target_name = 'a\ud800'", errors="surrogatepass")
    assert "%ED%A0%80" in where
    status, body = http_get(
        server.url + f"api/v1/datasets?dataset_type=summary&collections=run1&where={where}"
    )
    assert (status, body) == (200, {"datasets": [], "next_offset": None})


@pytest.mark.parametrize("case", sorted(OVER_LIMITS))
def test_server_answers_400_for_over_limit_queries_in_bodies(
    server: ButlerServer, case: str
) -> None:
    text, message = OVER_LIMITS[case]
    status, body = http_post(
        server.url + "api/v1/datasets/query",
        {"dataset_type": "summary", "collections": ["run2", "run1"], "where": text},
    )
    assert status == 400, body
    if case == "surrogate":
        # The server's request validation may refuse it before the parser sees it.
        assert "Unicode" in body["message"]
    else:
        assert body["error_type"] == "QuerySyntaxError"
        assert message in body["message"]


@pytest.mark.parametrize("bad", [42, ["visit = 1"], {"a": 1}])
def test_server_answers_400_for_a_where_that_is_not_a_string(
    server: ButlerServer, bad: Any
) -> None:
    status, body = http_post(
        server.url + "api/v1/datasets/query",
        {"dataset_type": "summary", "collections": ["run1"], "where": bad},
    )
    assert status == 400, body
    assert "string" in body["message"]


@pytest.mark.parametrize("shape", sorted(AT_LIMITS))
def test_server_runs_worst_shapes_at_the_limits(
    server: ButlerServer, tmp_path: Path, shape: str
) -> None:
    text = AT_LIMITS[shape]
    expected = expected_pairs(parse_where(text), DATA_IDS)
    # Through the remote butler (a POST for dataset queries), and a raw POST.
    with Butler(server.url, cache_dir=tmp_path / "cache") as remote:
        assert QUERIES["datasets"](remote, text, {}) == expected
    status, body = http_post(
        server.url + "api/v1/datasets/query",
        {
            "dataset_type": "summary",
            "collections": ["run2", "run1"],
            "where": text,
            "limit": 1000,
        },
    )
    assert status == 200, body
    data_ids = [d["ref"]["data_id"]["values"] for d in body["datasets"]]
    assert body["next_offset"] is None
    assert len(data_ids) == len(expected)
    found = {(data_id["visit"], data_id["detector"]) for data_id in data_ids}
    assert found == expected


def test_remote_butler_raises_the_query_error(server: ButlerServer, tmp_path: Path) -> None:
    with Butler(server.url, cache_dir=tmp_path / "cache") as remote:
        for case in ("not_45", "or_1001"):
            text, message = OVER_LIMITS[case]
            with pytest.raises(QuerySyntaxError) as info:
                QUERIES["datasets"](remote, text, {})
            assert message in str(info.value)


# -- fuzzing: arbitrary text never crashes the parser or the registry -------------------------

_WORDS = st.sampled_from(
    [
        "visit", "detector", "band", "instrument", "day_obs", "physical_filter",
        "visit.exposure_time", "visit.target_name", "detector.full_name", "visit.id",
        "physical_filter.band", "instrument.detector_max", "visit.nope", "nope", "exposure",
        ":b_visit", ":b_many", ":b_none", ":missing", "b_band", "'r'", "'HSC-R'", '"SXDS"',
        "''", "'", "1", "101", "-5", "30.5", "1e3", "1e400", str(INT64_MAX), str(INT64_MIN),
        "99999999999999999999", "100..110", "100..110:3", "5..1", "..", ":", "(", ")", ",",
        "=", "!=", "<>", "<", "<=", ">", ">=", "AND", "OR", "NOT", "IN", "IS", "NULL", "not",
        ";", "--", "\x00", "\ud800", "\u00a0", "é",
    ]
)  # fmt: skip

# Soups of words, and soups repeated to reach the depth and size limits.
_TEXTS = st.one_of(
    st.text(alphabet=st.characters(exclude_categories=()), max_size=120),
    st.lists(_WORDS, max_size=30).map(" ".join),
    st.lists(_WORDS, max_size=30).map("".join),
    st.tuples(st.lists(_WORDS, max_size=8).map(" ".join), st.integers(0, 1100)).map(
        lambda pair: " OR ".join([pair[0]] * pair[1])
    ),
    st.tuples(st.sampled_from(["NOT ", "(", "NOT (", "visit = 1 OR ("]), st.integers(0, 60)).map(
        lambda pair: pair[0] * pair[1] + "visit = 101" + ")" * pair[0].count("(") * pair[1]
    ),
)


@settings(
    max_examples=400,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(text=_TEXTS, query=st.sampled_from(sorted(QUERIES)))
def test_arbitrary_text_gives_rows_or_a_query_error(butler: Butler, text: str, query: str) -> None:
    error: QuerySyntaxError | None = None
    try:
        node = parse_where(text)
    except QuerySyntaxError as caught:  # anything else fails the test
        error, node = caught, None
    if error is not None:
        assert 0 <= error.position <= len(text)
    try:
        found = QUERIES[query](butler, text, BIND)
    except InvalidQueryError:  # QuerySyntaxError included; anything else fails the test
        return
    assert error is None  # the registry never accepts what the parser refuses
    assert found <= DATA_IDS
    # Whatever runs is in canonical form too, and means the same (no expression at all,
    # blank text, is no constraint: the same as an empty where).
    canonical = "" if node is None else to_where(node)
    assert QUERIES[query](butler, canonical, BIND) == found


# -- fuzzing: generated well-formed expressions against the oracle --------------------------

INT_COLUMNS = [
    Identifier("visit"),
    Identifier("detector"),
    Identifier("day_obs"),
    Identifier("visit", "id"),
    Identifier("visit", "day_obs"),
    Identifier("detector", "id"),
    Identifier("instrument", "detector_max"),
]
FLOAT_COLUMNS = [Identifier("visit", "exposure_time")]
STR_COLUMNS = [
    Identifier("instrument"),
    Identifier("band"),
    Identifier("physical_filter"),
    Identifier("visit", "physical_filter"),
    Identifier("physical_filter", "band"),
    Identifier("visit", "target_name"),
    Identifier("detector", "full_name"),
]
_INTS = st.one_of(
    st.sampled_from([-1, 0, 1, 2, 3, 4, 99, 100, 101, 104, 105, 109, 110, 111, 112, *DAYS]),
    st.integers(INT64_MIN, INT64_MAX),
)
_FLOATS = st.one_of(
    st.sampled_from([30.0, 31.5, 33.0, 40.5, 100.5, 0.0, -1.5]),
    st.floats(allow_nan=False, allow_infinity=False),
)
_STRS = st.one_of(
    st.sampled_from(["HSC", "r", "i", "g", "HSC-R", "HSC-I", "HSC-G", "COSMOS", "SXDS"]),
    st.sampled_from(["ccd0", "ccd2", "", "z", "ccd", "SXDSa", "O'Brien", 'say "hi"']),
    st.text(max_size=6),
)
_NUMBERS = st.one_of(_INTS, _FLOATS)
_SCALAR_BINDS = {"int": ["b_visit"], "float": ["b_time"], "str": ["b_band"]}
_LIST_BINDS = {
    "int": ["b_visits", "b_many", "b_none"],
    "float": ["b_visits", "b_none"],
    "str": ["b_bands", "b_names", "b_none"],
}


def _bind_value(name: str) -> st.SearchStrategy[Identifier | BindRef]:
    # A bare name that is a bind key stands for the bind value, like :name.
    return st.sampled_from([BindRef(name), Identifier(name)])


def _constant(kind: str) -> st.SearchStrategy[Literal | Identifier | BindRef]:
    literals = {"int": _NUMBERS, "float": _NUMBERS, "str": _STRS}[kind].map(Literal)
    binds = st.sampled_from(_SCALAR_BINDS[kind]).flatmap(_bind_value)
    return st.one_of(literals, literals, binds)


def _columns(kind: str) -> list[Identifier]:
    return {"int": INT_COLUMNS, "float": FLOAT_COLUMNS, "str": STR_COLUMNS}[kind]


_KINDS = st.sampled_from(["int", "float", "str"])


@st.composite
def _comparisons(draw: st.DrawFn) -> Comparison:
    kind = draw(_KINDS)
    column = draw(st.sampled_from(_columns(kind)))
    if kind == "str":
        other: Any = draw(st.one_of(_constant("str"), st.sampled_from(STR_COLUMNS)))
    else:
        other = draw(st.one_of(_constant(kind), st.sampled_from(INT_COLUMNS + FLOAT_COLUMNS)))
    op = draw(st.sampled_from(sorted(_COMPARE)))
    left, right = (column, other) if draw(st.booleans()) else (other, column)
    return Comparison(op, left, right)


_RANGES = st.one_of(
    st.tuples(st.integers(95, 115), st.integers(0, 15), st.integers(1, 4)).map(
        lambda t: Range(t[0], t[0] + t[1], t[2])
    ),
    st.tuples(_INTS, _INTS, st.integers(1, INT64_MAX)).map(
        lambda t: Range(min(t[0], t[1]), max(t[0], t[1]), t[2])
    ),
    # Spans over 2**63 with small strides: x - start overflows 64 bits in SQL.
    st.tuples(st.integers(INT64_MIN, INT64_MIN + 100), st.integers(1, 7)).map(
        lambda t: Range(t[0], INT64_MAX, t[1])
    ),
)


@st.composite
def _in_lists(draw: st.DrawFn) -> InList:
    kind = draw(_KINDS)
    column = draw(st.sampled_from(_columns(kind)))
    item = st.one_of(
        {"int": _NUMBERS, "float": _NUMBERS, "str": _STRS}[kind].map(Literal),
        st.sampled_from(_SCALAR_BINDS[kind] + _LIST_BINDS[kind]).flatmap(_bind_value),
        *([_RANGES, _RANGES] if kind == "int" else []),
    )
    items = draw(st.lists(item, min_size=1, max_size=5))
    return InList(column, tuple(items), draw(st.booleans()))


_CONDITIONS = st.one_of(
    _comparisons(),
    _in_lists(),
    st.builds(IsNull, st.sampled_from(INT_COLUMNS + FLOAT_COLUMNS + STR_COLUMNS), st.booleans()),
)
_EXPRESSIONS = st.recursive(
    _CONDITIONS,
    lambda children: st.one_of(
        st.builds(Not, children),
        st.lists(children, min_size=2, max_size=4).map(lambda ops: And(tuple(ops))),
        st.lists(children, min_size=2, max_size=4).map(lambda ops: Or(tuple(ops))),
    ),
    max_leaves=12,
)


@settings(
    max_examples=400,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(tree=_EXPRESSIONS, query=st.sampled_from(["datasets", "data_ids", "summary"]))
def test_generated_expressions_match_the_oracle(butler: Butler, tree: Node, query: str) -> None:
    text = to_where(tree)
    assert parse_where(text) == tree
    assert QUERIES[query](butler, text, BIND) == expected_pairs(tree, DATA_IDS)


@settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(tree=_EXPRESSIONS, query=st.sampled_from(["datasets", "data_ids", "summary"]))
@example(tree=parse_where("-1 != visit AND '\x00' != instrument"), query="datasets")
def test_generated_expressions_match_the_oracle_on_postgresql(
    postgresql_butler: Butler, tree: Node, query: str
) -> None:
    if _holds_nul(tree):
        # PostgreSQL's text cannot hold a NUL character: such a value is bad input there
        # (SQLite's oracle test above covers its meaning).
        with pytest.raises(BadRequestError, match="NUL character"):
            QUERIES[query](postgresql_butler, to_where(tree), BIND)
        return
    assert QUERIES[query](postgresql_butler, to_where(tree), BIND) == expected_pairs(tree, DATA_IDS)


def _holds_nul(node: object) -> bool:
    """Whether a string in the tree (a literal) holds a NUL character."""
    if isinstance(node, str):
        return "\x00" in node
    if isinstance(node, tuple):
        return any(_holds_nul(item) for item in node)
    if dataclasses.is_dataclass(node):
        return any(_holds_nul(getattr(node, f.name)) for f in dataclasses.fields(node))
    return False


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(text=_TEXTS, tree=_EXPRESSIONS)
def test_server_answers_rows_or_400_and_matches_the_oracle(
    server: ButlerServer, text: str, tree: Node
) -> None:
    url = server.url + "api/v1/datasets/query"
    query = {"dataset_type": "summary", "collections": ["run2", "run1"], "limit": 1000}
    # Arbitrary text: rows or a 400 naming the query error, never a 500.
    status, body = http_post(url, {**query, "where": text, "bind": BIND})
    assert (status, body.get("error_type")) in {
        (200, None),
        (400, "QuerySyntaxError"),
        (400, "InvalidQueryError"),
        (400, "BadRequestError"),  # the server's own checks (a lone surrogate, say)
    }, body
    # A well-formed expression: exactly the oracle's rows.
    status, body = http_post(url, {**query, "where": to_where(tree), "bind": BIND})
    assert status == 200, body
    assert body["next_offset"] is None
    found = [_pair(d["ref"]["data_id"]["values"]) for d in body["datasets"]]
    assert len(found) == len(set(found))
    assert set(found) == expected_pairs(tree, DATA_IDS)
