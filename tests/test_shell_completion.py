"""Shell completion of ``butler``, ``mirror`` and ``proxyd warm`` through click's machinery.

Completions are asked the way a shell asks them: click's ``ShellComplete.get_completions``
on the real command groups, the ``_BUTLER_COMPLETE`` environment protocol, and once through
the installed ``butler`` script in a subprocess.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
import pytest
from click.shell_completion import ShellComplete
from click.testing import CliRunner
from proxies import Proxy, running
from servers import READ_TOKEN, ButlerServer
from test_query_builder import HSC_VISITS, LSST_VISITS, query_repo  # noqa: F401 - fixture

from butler.cli.main import main as butler_main
from mirror.cli import main as mirror_main
from proxyd.cli import main as proxyd_main


@pytest.fixture(autouse=True)
def completion_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "completion-cache"
    monkeypatch.setenv("BUTLER_COMPLETION_CACHE_DIR", str(path))
    return path


@pytest.fixture(scope="module")
def repo_server(
    query_repo: Path,  # noqa: F811 - the fixture imported above
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[ButlerServer]:
    srv = ButlerServer(query_repo, tmp_path_factory.mktemp("completion-server")).start()
    yield srv
    srv.stop()


def complete(cli: click.Command, prog: str, args: list[str], incomplete: str) -> list[str]:
    shell = ShellComplete(cli, {}, prog, f"_{prog.upper()}_COMPLETE")
    return [item.value for item in shell.get_completions(args, incomplete)]


def test_dataset_types_and_collections_of_the_repo_on_the_line(
    query_repo: Path,  # noqa: F811
) -> None:
    repo = str(query_repo)
    assert complete(butler_main, "butler", ["query-datasets", repo], "") == [
        "deepCoadd",
        "summary",
    ]
    assert complete(butler_main, "butler", ["remove", repo], "su") == ["summary"]
    args = ["query-datasets", repo, "summary", "--collections"]
    assert complete(butler_main, "butler", args, "") == ["run1"]
    assert complete(butler_main, "butler", ["query-data-ids", repo], "vi") == [
        "visit",
        "visit_system",
    ]


def test_where_completes_dimensions_of_the_dataset_type(query_repo: Path) -> None:  # noqa: F811
    args = ["query-datasets", str(query_repo), "summary", "--where"]
    assert complete(butler_main, "butler", args, "instrument = 'HSC' AND vi") == [
        "instrument = 'HSC' AND visit"
    ]
    names = complete(butler_main, "butler", args, "")
    assert names == ["instrument", "detector", "visit", "band", "physical_filter", "day_obs"]
    coadd = ["query-datasets", str(query_repo), "deepCoadd", "--where"]
    assert "tract" in complete(butler_main, "butler", coadd, "")
    assert complete(butler_main, "butler", args, "tr") == []


def test_where_values_are_narrowed_by_earlier_predicates(query_repo: Path) -> None:  # noqa: F811
    args = ["query-datasets", str(query_repo), "summary", "--where"]
    assert complete(butler_main, "butler", args, "instrument = 'LSSTCam' AND visit = ") == [
        f"instrument = 'LSSTCam' AND visit = {v}" for v in LSST_VISITS
    ]
    assert complete(butler_main, "butler", args, "visit IN (100, 10") == [
        f"visit IN (100, {v}" for v in HSC_VISITS
    ]
    assert complete(butler_main, "butler", args, "instrument = 'L") == ["instrument = 'LSSTCam'"]
    assert complete(butler_main, "butler", args, "visit = 7 a") == ["visit = 7 AND "]
    # After OR, the predicate before must not narrow: every instrument's visits are offered.
    either = complete(butler_main, "butler", args, "instrument = 'LSSTCam' OR visit = ")
    assert [v.rpartition(" ")[2] for v in either] == [str(v) for v in LSST_VISITS + HSC_VISITS]


def test_data_id_pairs(query_repo: Path) -> None:  # noqa: F811
    args = ["ingest", str(query_repo), "summary", "--data-id"]
    assert complete(butler_main, "butler", args, "vis") == ["visit="]
    assert complete(butler_main, "butler", args, "instrument=") == [
        "instrument=HSC",
        "instrument=LSSTCam",
    ]


def test_bash_protocol_through_the_environment(query_repo: Path) -> None:  # noqa: F811
    result = CliRunner().invoke(
        butler_main,
        env={
            "_BUTLER_COMPLETE": "bash_complete",
            "COMP_WORDS": f"butler query-datasets {query_repo} ",
            "COMP_CWORD": "3",
        },
        prog_name="butler",
    )
    assert result.exit_code == 0
    assert result.output.splitlines() == ["plain,deepCoadd", "plain,summary"]


def test_installed_script_completes_in_zsh_protocol(query_repo: Path, tmp_path: Path) -> None:  # noqa: F811
    script = Path(sys.executable).parent / "butler"
    env = {
        **os.environ,
        "_BUTLER_COMPLETE": "zsh_complete",
        "COMP_WORDS": f"butler query-datasets {query_repo} summary --collections ",
        "COMP_CWORD": "5",
    }
    result = subprocess.run(  # noqa: S603 - our own console script
        [str(script)], env=env, capture_output=True, text=True, timeout=60, check=True
    )
    assert result.stdout.split("\n")[:3] == ["plain", "run1", "_"]


def test_mirror_pull_completes_from_the_remote_source(
    repo_server: ButlerServer, tmp_path: Path
) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(READ_TOKEN)
    base = ["pull", repo_server.url, "--token-file", str(token_file), "--dest", str(tmp_path / "m")]
    assert complete(mirror_main, "mirror", [*base, "--dataset-type"], "") == [
        "deepCoadd",
        "summary",
    ]
    where = [*base, "--dataset-type", "summary", "--where"]
    assert complete(mirror_main, "mirror", where, "instrument = 'HSC' AND detector = ") == [
        f"instrument = 'HSC' AND detector = {d}" for d in (0, 1, 2)
    ]


def test_proxyd_warm_completes_through_the_proxy(repo_server: ButlerServer, tmp_path: Path) -> None:
    with running(Proxy({"repo": repo_server.url}, tmp_path / "proxy")) as proxy:
        base = ["warm", "--proxy", proxy.url, "--upstream", "repo"]
        assert complete(proxyd_main, "proxyd", [*base, "--dataset-type"], "d") == ["deepCoadd"]
        args = [*base, "--dataset-type", "summary", "--collections"]
        assert complete(proxyd_main, "proxyd", args, "") == ["run1"]
        where = [*base, "--dataset-type", "summary", "--where"]
        assert complete(proxyd_main, "proxyd", where, "visit = 7 AND instrument = ") == [
            "visit = 7 AND instrument = 'LSSTCam'"
        ]


def test_completion_works_offline_from_the_cache(query_repo: Path, tmp_path: Path) -> None:  # noqa: F811
    server = ButlerServer(query_repo, tmp_path).start()
    url = server.url
    try:
        base = ["pull", url, "--dest", str(tmp_path / "m"), "--dataset-type", "summary"]
        online = complete(mirror_main, "mirror", [*base, "--where"], "instrument = ")
        assert online == ["instrument = 'HSC'", "instrument = 'LSSTCam'"]
    finally:
        server.stop()
    assert complete(mirror_main, "mirror", [*base, "--where"], "instrument = ") == online
    assert complete(mirror_main, "mirror", base[:-1], "s") == ["summary"]
    # Never asked while online: nothing to offer, and no error either.
    assert complete(mirror_main, "mirror", [*base, "--where"], "detector = ") == []


@pytest.mark.parametrize(
    ("cli", "prog"), [(butler_main, "butler"), (mirror_main, "mirror"), (proxyd_main, "proxyd")]
)
def test_completion_scripts(cli: click.Group, prog: str) -> None:
    runner = CliRunner()
    bash = runner.invoke(cli, ["completion", "bash"])
    assert bash.exit_code == 0
    assert f"_{prog.upper()}_COMPLETE=bash_complete" in bash.output
    assert f"complete -o nosort -F _{prog}_completion {prog}" in bash.output
    zsh = runner.invoke(cli, ["completion", "zsh"])
    assert zsh.output.startswith(f"#compdef {prog}")
    fish = runner.invoke(cli, ["completion", "fish"])
    assert f"complete --no-files --command {prog}" in fish.output
    bad = runner.invoke(cli, ["completion", "tcsh"])
    assert bad.exit_code == 2


def _interactive_bash(tmp_path: Path, prog: str) -> Any:
    """A real interactive bash in a pty, with the default COMP_WORDBREAKS (':' included)
    and ``prog``'s completion script loaded as the README says (eval of its output)."""
    import pexpect

    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}",
        "PS1": "READY> ",
        "INPUTRC": str(tmp_path / "inputrc"),
        "TERM": "dumb",
    }
    # One TAB lists every candidate at once, without asking or paging.
    (tmp_path / "inputrc").write_text(
        "set show-all-if-ambiguous on\nset completion-query-items 1000\nset page-completions off\n"
    )
    bash = pexpect.spawn(
        "bash",
        ["--norc", "--noprofile", "-i"],
        env=env,
        cwd=str(tmp_path),
        encoding="utf-8",
        timeout=60,
        dimensions=(50, 300),
    )
    bash.expect_exact("READY> ")
    show_breaks = "printf 'breaks[%s]\\n' \"$COMP_WORDBREAKS\""
    bash.sendline(f'eval "$({prog} completion bash)"; {show_breaks}')
    bash.expect(r"breaks\[([^%]*)\]\r\n")
    assert ":" in bash.match.group(1)  # the default: bash splits words at ':'
    bash.expect_exact("READY> ")
    return bash


def test_real_bash_completes_after_a_url(repo_server: ButlerServer, tmp_path: Path) -> None:
    """Issue 19: with bash's default COMP_WORDBREAKS, `mirror pull http://host:port/
    --dataset-type <TAB>` offered nothing, as bash had cut the URL into five words."""
    assert ":" in repo_server.url
    token_file = tmp_path / "token"
    token_file.write_text(READ_TOKEN)
    bash = _interactive_bash(tmp_path, "mirror")
    try:
        bash.send(f"mirror pull {repo_server.url} --token-file token --dest m --dataset-type \t")
        bash.expect(r"deepCoadd\s+summary")
        # Unique candidate: bash completes the word itself on the line.
        bash.send("\x15")  # ^U: clear the line
        bash.send(f"mirror pull {repo_server.url} --token-file token --dataset-type s\t")
        bash.expect_exact("--dataset-type summary ")
        bash.send("\x15")
    finally:
        bash.sendline("exit")
        bash.close(force=True)
