"""Mutation testing of the modules that decide safety and correctness (cosmic-ray).

    python bench/mutation/run.py                     # every target, one after the other
    python bench/mutation/run.py proxyd-policy       # one target (names: --list)
    python bench/mutation/run.py --module proxyd/policy/keys.py   # one module of a target
    python bench/mutation/run.py --recheck proxyd-policy  # survivors again, with new tests
    python bench/mutation/run.py --resume --retime where   # kills by the time limit again

Each module is mutated in a scratch copy of the committed tree (``bench/out/mutation/tree-*``;
``--worktree`` for the work tree with its uncommitted changes), never in place, and the
target's tests run against every mutant; servers the tests start import the mutated copy too
(``PYTHONPATH``). A mutant the tests do not notice "survives". Survivors that
are *equivalent* (no behaviour can tell them apart from the original) are listed, each with the
reason, in ``bench/mutation/equivalent.toml``; every other survivor is printed with its diff and
makes the command exit 1. Sessions are kept in ``bench/out/mutation/`` so an interrupted run
resumes where it stopped.

Mutants that cannot change behaviour by construction are skipped before running: those inside
type annotations (``from __future__ import annotations`` keeps them unevaluated), docstrings,
``if TYPE_CHECKING:`` blocks, ``__all__``, ``slots=`` of frozen dataclasses, the bare ``*``
of parameter lists and lines marked ``# pragma: no mutate``. Of
cosmic-ray's operator swaps, the ones kept are those a slip of the hand makes (``+``/``-``,
``*``/``/``, ``//``/``/``, ``<<``/``>>``, ``&``/``|``, ``<``/``<=``, ``==``/``!=``,
``is``/``is not``, ``in``/``not in``, ...): cosmic-ray's full cross product (every operator
into every other, 13 per ``+``) mostly adds mutants that any test kills at once, and would
multiply the run time by four on this code.

Needs the ``mutation`` extra: ``pip install -e '.[test,mutation]'``.
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import shutil
import sqlite3
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
OUT = ROOT / "bench" / "out" / "mutation"
EQUIVALENT = HERE / "equivalent.toml"
#: A test run longer than this (s) counts as killed by timeout (an infinite loop is a kill).
TIMEOUT = 300.0


@dataclass(frozen=True)
class Target:
    """Modules mutated together and the tests that must notice."""

    modules: tuple[str, ...]
    tests: tuple[str, ...]


TARGETS: dict[str, Target] = {
    "proxyd-policy": Target(
        modules=tuple(
            f"proxyd/policy/{name}.py"
            for name in (
                "keys",
                "access",
                "requests",
                "freshness",
                "blocks",
                "plain",
                "relay",
                "cdn",
                "extents",
                "routes",
            )
        ),
        # The pure tests first: a killed mutant stops at its first failure (-x), so the
        # order decides how long a run takes, not what it finds.
        tests=(
            "tests/test_proxyd_policy.py",
            "tests/test_proxyd_policy_edges.py",
            "tests/test_proxyd_extents.py",
            "tests/test_proxyd_route_lookup.py",
            "tests/test_proxyd_plain.py",
            "tests/test_proxyd_relay_plan.py",
            "tests/test_proxyd_rfc9111_fixes.py",
            "tests/test_proxyd_properties.py",
            "tests/test_hardening_proxy_keys.py",
            "tests/test_proxyd_auth.py",
            "tests/test_proxyd_validation.py",
        ),
    ),
    "butler-http": Target(
        modules=(
            "butler/http/ranges.py",
            "butler/http/conditional.py",
            "butler/http/bundle.py",
            "butler/http/redact.py",
        ),
        tests=(
            "tests/test_http_redact.py",
            "tests/test_http_ranges.py",
            "tests/test_proxyd_policy_edges.py",
            "tests/test_http_bundle.py",
            "tests/test_server_files.py",
        ),
    ),
    "fits-index": Target(
        modules=("butler/formatters/fits_index.py",),
        tests=(
            "tests/test_fits_index_edges.py",
            "tests/test_fits_partial.py",
            "tests/test_hardening_formats.py",
            "tests/test_formatters.py",
        ),
    ),
    "where": Target(
        modules=("butler/query/parser.py", "butler/query/compiler.py"),
        tests=(
            "tests/test_where_edges.py",
            "tests/test_query_language.py",
            "tests/test_hardening_where.py",
        ),
    ),
    "staging": Target(
        modules=("butler/datastore.py", "butler/server/transactions.py"),
        tests=(
            "tests/test_datastore_edges.py",
            "tests/test_transactions.py",
            "tests/test_transactions_read_own_writes.py",
            "tests/test_hardening_server.py",
            "tests/test_server.py",
        ),
    ),
}


# -- which mutants cannot matter ------------------------------------------------------------


Span = tuple[tuple[int, int], tuple[int, int]]
TYPE_CHECKING = {"TYPE_CHECKING", "typing.TYPE_CHECKING"}


def inert_spans(source: str) -> list[Span]:
    """Source spans whose mutation cannot change behaviour: annotations, docstrings,
    ``if TYPE_CHECKING:`` bodies, the ``__all__`` list and ``slots=`` of frozen
    dataclasses."""
    spans: list[Span] = []

    def add(node: ast.AST) -> None:
        end_line = getattr(node, "end_lineno", None)
        end_col = getattr(node, "end_col_offset", None)
        if end_line is not None and end_col is not None:
            spans.append(((node.lineno, node.col_offset), (end_line, end_col)))  # type: ignore[attr-defined]

    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            if node.returns is not None:
                add(node.returns)
            for arg in [*node.args.posonlyargs, *node.args.args, *node.args.kwonlyargs]:
                if arg.annotation is not None:
                    add(arg.annotation)
            for extra in (node.args.vararg, node.args.kwarg):
                if extra is not None and extra.annotation is not None:
                    add(extra.annotation)
        elif isinstance(node, ast.AnnAssign):
            add(node.annotation)
        elif isinstance(node, ast.Call) and ast.unparse(node.func).endswith("dataclass"):
            # slots=True on a frozen dataclass only saves memory: assignment is refused
            # either way.
            keywords = {k.arg: k.value for k in node.keywords}
            frozen = keywords.get("frozen")
            if isinstance(frozen, ast.Constant) and frozen.value is True and "slots" in keywords:
                add(keywords["slots"])
        elif (isinstance(node, ast.If) and ast.unparse(node.test) in TYPE_CHECKING) or (
            isinstance(node, ast.Assign)
            and any(isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets)
        ):
            add(node)
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if (
                body
                and isinstance(body[0], ast.Expr)
                and isinstance(body[0].value, ast.Constant)
                and isinstance(body[0].value.value, str)
            ):
                add(body[0])
    return spans


#: Operator swaps kept (see the module's docstring); any other ReplaceBinaryOperator_* and
#: ReplaceComparisonOperator_* mutant is skipped.
KEPT_SWAPS = frozenset(
    {
        "ReplaceBinaryOperator_Add_Sub",
        "ReplaceBinaryOperator_Sub_Add",
        "ReplaceBinaryOperator_Mul_Div",
        "ReplaceBinaryOperator_Div_Mul",
        "ReplaceBinaryOperator_FloorDiv_Div",
        "ReplaceBinaryOperator_FloorDiv_Mul",
        "ReplaceBinaryOperator_Mod_FloorDiv",
        "ReplaceBinaryOperator_Pow_Mul",
        "ReplaceBinaryOperator_LShift_RShift",
        "ReplaceBinaryOperator_RShift_LShift",
        "ReplaceBinaryOperator_BitAnd_BitOr",
        "ReplaceBinaryOperator_BitOr_BitAnd",
        "ReplaceBinaryOperator_BitXor_BitOr",
        "ReplaceComparisonOperator_Eq_NotEq",
        "ReplaceComparisonOperator_NotEq_Eq",
        "ReplaceComparisonOperator_Lt_LtE",
        "ReplaceComparisonOperator_LtE_Lt",
        "ReplaceComparisonOperator_Gt_GtE",
        "ReplaceComparisonOperator_GtE_Gt",
        "ReplaceComparisonOperator_Lt_Gt",
        "ReplaceComparisonOperator_Gt_Lt",
        "ReplaceComparisonOperator_Is_IsNot",
        "ReplaceComparisonOperator_IsNot_Is",
        "ReplaceComparisonOperator_In_NotIn",
        "ReplaceComparisonOperator_NotIn_In",
    }
)


def swap_kept(operator: str) -> bool:
    name = operator.rsplit("/", 1)[-1]
    if name.startswith(("ReplaceBinaryOperator_", "ReplaceComparisonOperator_")):
        return name in KEPT_SWAPS
    return True


def bare_star(lines: list[str], start: tuple[int, int], end: tuple[int, int]) -> bool:
    """Whether the span is the keyword-only marker ``*`` of a parameter list, which
    cosmic-ray mutates as if it were a product (into ``/``: the same calls still work)."""
    if start[0] != end[0]:
        return False
    line = lines[start[0] - 1]
    return line[start[1] : end[1]] == "*" and line[end[1] :].lstrip().startswith((",", ")"))


def inside(start: tuple[int, int], end: tuple[int, int], spans: list[Span]) -> bool:
    return any(s <= start and end <= e for s, e in spans)


def skip_inert_mutants(session: Path, tree: Path) -> int:
    """Mark the session's mutants in inert spans, on ``pragma: no mutate`` lines or of an
    operator swap not kept as skipped; returns how many."""
    from cosmic_ray.work_db import WorkDB, use_db
    from cosmic_ray.work_item import WorkerOutcome, WorkResult

    skipped = 0
    cache: dict[Path, tuple[list[Span], list[str]]] = {}
    with use_db(str(session), WorkDB.Mode.open) as db:
        for item in db.pending_work_items:
            for mutation in item.mutations:
                path = tree / mutation.module_path
                if path not in cache:
                    text = path.read_text()
                    cache[path] = (inert_spans(text), text.splitlines())
                spans, lines = cache[path]
                start, end = tuple(mutation.start_pos), tuple(mutation.end_pos)
                marked = "pragma: no mutate" in lines[end[0] - 1]
                inert = inside(start, end, spans) or bare_star(lines, start, end)  # type: ignore[arg-type]
                if marked or inert or not swap_kept(mutation.operator_name):
                    db.set_result(
                        item.job_id,
                        WorkResult(worker_outcome=WorkerOutcome.SKIPPED),
                    )
                    skipped += 1
    return skipped


# -- running --------------------------------------------------------------------------------


def tree_of(target: str) -> Path:
    """Where a target's modules are mutated: one tree per target, so that targets can run
    at the same time (one per core) without seeing each other's mutants."""
    return OUT / f"tree-{target}"


def copy_tree(tree: Path, worktree: bool) -> None:
    """The committed tree (``git archive HEAD``), or with ``worktree`` the work tree as it
    is now (uncommitted changes too, without caches), in ``tree``."""
    for old in (tree, tree.with_name(tree.name + ".pristine")):
        if old.exists():
            shutil.rmtree(old)
    if not worktree:
        tree.mkdir(parents=True)
        archive = subprocess.run(
            ["git", "archive", "HEAD"], cwd=ROOT, check=True, capture_output=True
        ).stdout
        subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, check=True)
        return
    ignore = shutil.ignore_patterns(
        ".git", ".venv", "__pycache__", "*.egg-info", ".*_cache", ".hypothesis", "demo-work", "out"
    )
    shutil.copytree(ROOT, tree, ignore=ignore)


def test_command(target: Target, tree: Path) -> str:
    """pytest on the target's test files that exist (a missing file would make pytest fail,
    and every mutant look killed)."""
    tests = [t for t in target.tests if (tree / t).exists()]
    for missing in sorted(set(target.tests) - set(tests)):
        print(f"note: {missing} does not exist; not run", flush=True)
    pytest = f"env PYTHONPATH={tree} {sys.executable} -m pytest -x -q -p no:cacheprovider"
    return " ".join([pytest, *tests])


def check_baseline(target: Target, tree: Path) -> None:
    """The unmutated tree must pass the target's tests, or every mutant would look killed."""
    if subprocess.run(test_command(target, tree), shell=True, cwd=tree).returncode != 0:
        sys.exit("the target's tests fail without any mutation: fix them first")


def session_file(module: str, suffix: str) -> Path:
    """A module's cosmic-ray config (``.toml``) or session (``.sqlite``), kept for --resume."""
    return OUT / (module.replace("/", "_") + suffix)


def session_config(module: str, target: Target, tree: Path) -> Path:
    config = session_file(module, ".toml")
    command = test_command(target, tree)
    config.write_text(
        "[cosmic-ray]\n"
        f'module-path = "{module}"\n'
        f"timeout = {TIMEOUT}\n"
        "excluded-modules = []\n"
        f'test-command = "{command}"\n\n'
        '[cosmic-ray.distributor]\nname = "local"\n'
    )
    return config


def cosmic_ray(tree: Path, *args: str) -> None:
    subprocess.run([sys.executable, "-m", "cosmic_ray.cli", *args], cwd=tree, check=True)


@dataclass(frozen=True)
class Survivor:
    job_id: str
    module: str
    operator: str
    line: int
    code: str
    diff: str

    @property
    def mutant(self) -> str:
        """The mutated line, as the diff shows it."""
        added = [
            line[1:].strip()
            for line in self.diff.splitlines()
            if line.startswith("+") and not line.startswith("+++")
        ]
        return added[0] if added else ""

    @property
    def signature(self) -> tuple[str, str, str]:
        """What identifies a survivor across runs: module, original line, mutated line
        (line numbers move as the module changes)."""
        return (self.module, self.code.strip(), self.mutant)


def survivors(session: Path, module: str, tree: Path) -> Iterator[Survivor]:
    from cosmic_ray.work_db import WorkDB, use_db
    from cosmic_ray.work_item import TestOutcome

    lines = (tree / module).read_text().splitlines()
    with use_db(str(session), WorkDB.Mode.open) as db:
        for item, result in db.completed_work_items:
            if result.test_outcome != TestOutcome.SURVIVED:
                continue
            for mutation in item.mutations:
                line = mutation.start_pos[0]
                yield Survivor(
                    item.job_id,
                    module,
                    mutation.operator_name,
                    line,
                    lines[line - 1],
                    result.diff or "",
                )


def known_equivalents() -> set[tuple[str, str, str]]:
    """(module, source line, mutated line) of the survivors judged equivalent (or accepted),
    each listed with its reason in ``equivalent.toml``."""
    if not EQUIVALENT.exists():
        return set()
    data = tomllib.loads(EQUIVALENT.read_text())
    entries = data.get("equivalent", [])
    missing = [e for e in entries if not str(e.get("why", "")).strip()]
    if missing:
        sys.exit(f"{EQUIVALENT}: every entry needs a 'why': {missing[0]}")
    # An entry names one mutant (``mutant``) or several of the same line (``mutants``).
    return {
        (e["module"], e["code"].strip(), mutant.strip())
        for e in entries
        for mutant in ([e["mutant"]] if "mutant" in e else e["mutants"])
    }


def restore_module(module: str, tree: Path) -> None:
    """Put the module back as it was copied: cosmic-ray undoes each mutation after its test
    run, but a run killed in between leaves the mutant on disk."""
    pristine = tree.with_name(tree.name + ".pristine") / module
    if pristine.exists():
        shutil.copyfile(pristine, tree / module)
    else:
        pristine.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(tree / module, pristine)


def module_digest(module: str, tree: Path) -> str:
    return hashlib.sha256((tree / module).read_bytes()).hexdigest()


def initialised(session: Path) -> bool:
    """Whether a session's database holds its mutants (cosmic-ray ``init`` finished)."""
    with sqlite3.connect(session) as db:
        tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master")}
        return "work_items" in tables and bool(
            db.execute("SELECT COUNT(*) FROM work_items").fetchone()[0]
        )


def run_module(module: str, target: Target, tree: Path, fresh: bool) -> list[Survivor]:
    restore_module(module, tree)
    session = session_file(module, ".sqlite")
    digest = session_file(module, ".sha256")
    if session.exists() and (fresh or not initialised(session)):
        # An interrupted ``init`` leaves a database without mutants: begin it again, or
        # the run would find nothing to do and report no survivors.
        session.unlink()
    if session.exists() and digest.exists() and digest.read_text() != module_digest(module, tree):
        sys.exit(
            f"{module} has changed since its session began: its mutants no longer match the "
            "code; run the target again without --resume/--recheck"
        )
    # Written anew every time: a resumed or rechecked session runs the target's tests as
    # they are now, in this tree.
    config = session_config(module, target, tree)
    if not session.exists():
        cosmic_ray(tree, "init", str(config), str(session))
        digest.write_text(module_digest(module, tree))
        print(f"{module}: {skip_inert_mutants(session, tree)} mutants skipped", flush=True)
    cosmic_ray(tree, "exec", str(config), str(session))
    return list(survivors(session, module, tree))


def forget_survivors(
    session: Path, module: str, tree: Path, equivalent: set[tuple[str, str, str]]
) -> int:
    """Mark the session's survivors not listed as equivalent to be run again; returns how
    many. (An equivalent mutant survives any test: running it again only costs time.)"""
    again = [s.job_id for s in survivors(session, module, tree) if s.signature not in equivalent]
    forget_results(session, again)
    return len(again)


def forget_results(session: Path, job_ids: list[str]) -> None:
    """Drop the results of ``job_ids``: the next ``exec`` of the session runs them again."""
    with sqlite3.connect(session) as db:
        db.executemany("DELETE FROM work_results WHERE job_id = ?", [(j,) for j in job_ids])


def timed_out(session: Path) -> list[str]:
    """Job ids of the mutants counted killed because their tests outlasted the session's
    time limit. Either the mutant made a test hang (a loop that never ends: a real kill) or
    the machine was too busy to finish in time (no verdict); ``--retime`` runs them again,
    best on a quiet machine, to tell which."""
    with sqlite3.connect(session) as db:
        rows = db.execute(
            "SELECT job_id FROM work_results WHERE test_outcome = 'KILLED' AND output = 'timeout'"
        ).fetchall()
    return [str(job) for (job,) in rows]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("targets", nargs="*", help="targets to run (default: all)")
    parser.add_argument("--module", help="only this module (of the targets given)")
    parser.add_argument("--list", action="store_true", help="list the targets and exit")
    parser.add_argument("--resume", action="store_true", help="continue the kept sessions")
    parser.add_argument(
        "--recheck",
        action="store_true",
        help="run the survivors of the kept sessions again, against the work tree's tests",
    )
    parser.add_argument(
        "--retime",
        action="store_true",
        help="with --resume or --recheck: run again the mutants killed only by the time limit",
    )
    parser.add_argument(
        "--worktree", action="store_true", help="mutate the work tree as it is, not HEAD"
    )
    args = parser.parse_args()
    if args.list:
        for name, target in TARGETS.items():
            print(f"{name}: {', '.join(target.modules)}")
        return 0
    unknown = [t for t in args.targets if t not in TARGETS]
    if unknown:
        parser.error(f"unknown target(s) {unknown}; known: {sorted(TARGETS)}")
    OUT.mkdir(parents=True, exist_ok=True)
    equivalent = known_equivalents()
    unexplained: list[Survivor] = []
    for name in args.targets or list(TARGETS):
        target, tree = TARGETS[name], tree_of(name)
        # --resume continues in the kept tree; --recheck takes the code and tests as they are
        # now (the mutated modules must not have changed since their sessions began).
        if args.recheck or not (args.resume and tree.exists()):
            copy_tree(tree, args.worktree)
        for module in target.modules:
            # A run killed mid-mutant leaves that mutant in the kept tree: undo it before the
            # baseline, or the unmutated tests fail on it.
            restore_module(module, tree)
        check_baseline(target, tree)
        for module in target.modules:
            if args.module and module != args.module:
                continue
            session = session_file(module, ".sqlite")
            if args.recheck and session.exists():
                again = forget_survivors(session, module, tree, equivalent)
                print(f"{module}: {again} survivors to run again")
                # Filters added since the session began apply to those it runs again.
                print(f"{module}: {skip_inert_mutants(session, tree)} of them skipped")
            if args.retime and session.exists():
                again_ids = timed_out(session)
                forget_results(session, again_ids)
                print(f"{module}: {len(again_ids)} killed by the time limit, to run again")
            found = run_module(module, target, tree, fresh=not (args.resume or args.recheck))
            left = [s for s in found if s.signature not in equivalent]
            print(f"{module}: {len(found)} survivors, {len(found) - len(left)} equivalent")
            late = timed_out(session)
            if late:
                print(
                    f"{module}: {len(late)} counted killed by the time limit only (a hang, or "
                    "a busy machine): --resume --retime runs them again"
                )
            unexplained += left
    for survivor in unexplained:
        print(f"\nSURVIVED {survivor.module}:{survivor.line} {survivor.operator}\n{survivor.diff}")
    print(f"\n{len(unexplained)} survivors neither killed nor listed as equivalent")
    return 1 if unexplained else 0


if __name__ == "__main__":
    sys.exit(main())
