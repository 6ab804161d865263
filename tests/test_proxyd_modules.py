"""proxyd's modules import each other without a circle (issue 17, item 3).

A circle (the handler importing the fast lane's module, which imported the handler's) makes
every module of it part of every other one: none can be read, tested or changed alone. Read
from the source (module-level imports, those under ``if TYPE_CHECKING:`` included; an import
inside a function is a deliberate late binding and not counted).
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "proxyd"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _top_level_imports(tree: ast.Module) -> list[ast.Import | ast.ImportFrom]:
    found: list[ast.Import | ast.ImportFrom] = []
    for node in tree.body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found.append(node)
        elif isinstance(node, ast.If):  # if TYPE_CHECKING: ...
            found += [n for n in node.body if isinstance(n, (ast.Import, ast.ImportFrom))]
    return found


def import_graph() -> dict[str, set[str]]:
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        for node in _top_level_imports(ast.parse(path.read_text())):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif node.module is not None and node.level == 0:
                targets = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
            graph[name] |= {t for t in targets if t in modules and t != name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """A circle of imports as a path that ends where it starts, or None."""
    state: dict[str, int] = {}  # 1 on the current path, 2 done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_the_cycle_finder_finds_one() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_proxyd_modules_import_each_other_without_a_circle() -> None:
    graph = import_graph()
    assert {"proxyd.server", "proxyd.fastlane", "proxyd.workers", "proxyd.state"} <= set(graph)
    assert "proxyd.state" in graph["proxyd.fastlane"]  # the graph sees real imports
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph) or [])


def test_the_handler_is_split_by_responsibility() -> None:
    """Request handling, shared state, fills and reading are modules of their own: the
    handler's module no longer holds the others' code."""
    graph = import_graph()
    assert {"proxyd.state", "proxyd.fills", "proxyd.reading"} <= graph["proxyd.server"]
    assert "proxyd.server" not in graph["proxyd.fastlane"]
    lines = len((PACKAGE / "server.py").read_text().splitlines())
    assert lines < 400, f"proxyd/server.py has {lines} lines"
