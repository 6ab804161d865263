"""What IPython's completer and Jedi actually offer for the query builder.

These drive the real completers (an ``InteractiveShell``'s ``IPCompleter`` and
``jedi.Interpreter``) on a local repository, as a user typing in IPython or Jupyter would.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jedi
import pytest
from IPython.core.completer import provisionalcompleter
from IPython.core.interactiveshell import InteractiveShell
from test_query_builder import HSC_VISITS, LSST_VISITS, query_repo  # noqa: F401 - fixture

from butler import Butler


@pytest.fixture
def ipython_shell() -> Iterator[InteractiveShell]:
    """The shell exists before any butler is opened, as in a real session."""
    ip = InteractiveShell.instance()
    yield ip
    ip.Completer.evaluation = "limited"


@pytest.fixture
def namespace(
    ipython_shell: InteractiveShell,
    query_repo: Path,  # noqa: F811 - the fixture imported above
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[dict[str, Any]]:
    monkeypatch.setenv("BUTLER_COMPLETION_CACHE_DIR", str(tmp_path / "completion"))
    with Butler(query_repo) as butler:
        q = butler.query.summary
        yield {"butler": butler, "q": q, "hsc": q.where(instrument="HSC")}


@pytest.fixture
def shell(ipython_shell: InteractiveShell, namespace: dict[str, Any]) -> Iterator[InteractiveShell]:
    ipython_shell.user_ns.update(namespace)
    yield ipython_shell
    for name in namespace:
        ipython_shell.user_ns.pop(name, None)


def ipython(shell: InteractiveShell, code: str) -> set[str]:
    """Completions of ``code`` (IPython's magics, offered at any word start, left out)."""
    with provisionalcompleter():
        found = shell.Completer.completions(code, len(code))
        return {c.text for c in found if not c.text.startswith("%")}


def jedi_names(namespace: dict[str, Any], code: str) -> list[str]:
    return [c.name_with_symbols for c in jedi.Interpreter(code, [namespace]).complete()]


def test_ipython_completes_dataset_types(shell: InteractiveShell) -> None:
    assert {"summary", "deepCoadd"} <= ipython(shell, "butler.query.")
    assert ipython(shell, "butler.query.su") == {"summary"}
    assert ipython(shell, "butler.query['") == {"deepCoadd", "summary"}


def test_ipython_completes_where_keywords_of_the_dataset_type(shell: InteractiveShell) -> None:
    assert ipython(shell, "q.where(vi") == {"visit="}
    assert ipython(shell, "q.where(instrument='HSC', de") == {"detector="}
    assert ipython(shell, "q.where(tr") == set()  # summary has no tract


def test_ipython_completes_values_given_earlier_choices(shell: InteractiveShell) -> None:
    assert ipython(shell, "hsc.values['") >= {"visit", "detector", "instrument"}
    assert ipython(shell, "hsc.choices.") >= {"visit", "detector", "band"}
    assert ipython(shell, "hsc.choices.visit[") == {str(v) for v in HSC_VISITS}
    assert ipython(shell, "hsc.choices.instrument['") == {"HSC"}


def test_ipython_completes_after_a_call_when_allowed_to_evaluate(
    shell: InteractiveShell,
) -> None:
    # IPython's default policy never calls functions while completing; with "unsafe" it
    # does, and the values follow the constraint typed on the same line.
    shell.Completer.evaluation = "unsafe"
    assert ipython(shell, "q.where(instrument='LSSTCam').choices.visit[") == {
        str(v) for v in LSST_VISITS
    }
    assert ipython(shell, "q.where(instrument='HSC').values['") >= {"visit", "detector"}


def test_jedi_completes_dataset_types_and_where_keywords(namespace: dict[str, Any]) -> None:
    assert {"summary", "deepCoadd"} <= set(jedi_names(namespace, "butler.query."))
    assert jedi_names(namespace, "q.where(vi") == ["visit="]
    keywords = {n for n in jedi_names(namespace, "q.where(") if n.endswith("=")}
    assert keywords == {
        "instrument=",
        "detector=",
        "visit=",
        "band=",
        "physical_filter=",
        "day_obs=",
        "bind=",
    }
    (signature,) = jedi.Interpreter("q.where(", [namespace]).get_signatures()
    assert [p.name for p in signature.params][:3] == ["expression", "instrument", "detector"]


def test_jedi_completes_choices(namespace: dict[str, Any]) -> None:
    names = jedi_names(namespace, "hsc.choices.")
    assert names[:6] == sorted(
        ["instrument", "detector", "visit", "band", "physical_filter", "day_obs"]
    )


def test_ipython_completes_values_inside_where_given_earlier_keywords(
    shell: InteractiveShell,
) -> None:
    assert ipython(shell, "q.where(instrument='LSSTCam', visit=") == {"7", "8"}
    assert ipython(shell, "q.where(instrument='HSC', visit=10") == {str(v) for v in HSC_VISITS}
    assert ipython(shell, "q.where(instrument=") == {"'HSC'", "'LSSTCam'"}
    assert ipython(shell, "q.where(visit=7, instrument='") == {"LSSTCam"}
    assert ipython(shell, "butler.query['summary'].where(instrument='LSSTCam', detector=") == {"0"}


def test_ipython_completes_dimensions_inside_values_after_a_call(
    shell: InteractiveShell,
) -> None:
    # Even under IPython's default "limited" policy: the matcher evaluates where(...)
    # with literal arguments itself, never user code.
    assert ipython(shell, "q.where(instrument='HSC').values('vi") == {"visit"}
    assert ipython(shell, 'hsc.values("de') == {"detector"}
    assert ipython(shell, "q.where(instrument='LSSTCam').where(visit=") == {"7", "8"}


def test_matcher_never_runs_user_code(shell: InteractiveShell) -> None:
    calls: list[str] = []

    def side_effect() -> Any:
        calls.append("called")
        return shell.user_ns["q"]

    shell.user_ns["make"] = side_effect
    try:
        ipython(shell, "make().where(visit=")
        ipython(shell, "make().values('")
        assert calls == []
    finally:
        shell.user_ns.pop("make")
