"""The ``butler`` command speaks to any repository: a local path or an http(s) URL.

A real ``butler serve`` (reads need a token) serves a small repository; every command runs
through click as a user types it, with ``--token-file`` or ``BUTLER_TOKEN``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from conftest import VISITS, populate_dimensions
from servers import READ_TOKEN, WRITE_TOKEN, ButlerServer

from butler import Butler
from butler.cli.main import main

DATASET_TYPES = {"summary", "calexp"}


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("remote-cli") / "repo"
    with Butler.create(root) as butler:
        populate_dimensions(butler)
        butler.register_dataset_type("summary", ["visit", "detector"], "Dict")
        butler.register_dataset_type("calexp", ["visit", "detector"], "Image")
    with Butler(root, run="run1") as butler:
        butler.put({"n": 1}, "summary", instrument="HSC", visit=101, detector=0)
        butler.put({"n": 2}, "summary", instrument="HSC", visit=102, detector=0)
    return root


@pytest.fixture(scope="module")
def server(repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ButlerServer]:
    srv = ButlerServer(repo, tmp_path_factory.mktemp("server"), "--read-access", "token")
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def token_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    directory = tmp_path_factory.mktemp("tokens")
    files = {}
    for name, token in (("read", READ_TOKEN), ("write", WRITE_TOKEN)):
        files[name] = directory / f"{name}.token"
        files[name].write_text(token + "\n")
    return files


def butler_cli(*args: str | Path, env: dict[str, str] | None = None) -> Result:
    environment = {"BUTLER_TOKEN": ""} | (env or {})  # never a token from the caller's shell
    return CliRunner().invoke(main, [str(a) for a in args], env=environment)


def ok_json(result: Result) -> object:
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_info_over_url_with_token_file(server: ButlerServer, token_files: dict[str, Path]) -> None:
    data = ok_json(butler_cli("info", server.url, "--token-file", token_files["read"], "--json"))
    assert isinstance(data, dict)
    assert data["name"] == "repo"
    assert set(data["dataset_types"]) == DATASET_TYPES
    assert data["collections"] == ["run1"]
    assert "registry" not in data  # the server's paths stay on the server
    assert "root" not in data


def test_url_without_token_is_refused_with_a_message(server: ButlerServer) -> None:
    result = butler_cli("info", server.url)
    assert result.exit_code == 1
    assert "not a butler repository" not in result.output
    assert "token" in result.output.lower()
    assert "Traceback" not in result.output


def test_butler_token_environment_variable(server: ButlerServer) -> None:
    data = ok_json(
        butler_cli("query-dataset-types", server.url, "--json", env={"BUTLER_TOKEN": READ_TOKEN})
    )
    assert isinstance(data, list)
    assert {row["name"] for row in data} == DATASET_TYPES


def test_query_commands_over_url(
    server: ButlerServer, repo: Path, token_files: dict[str, Path]
) -> None:
    read = ("--token-file", token_files["read"], "--json")
    visits = ok_json(butler_cli("query-data-ids", server.url, "visit", *read))
    assert isinstance(visits, list)
    assert sorted(row["visit"] for row in visits) == sorted(VISITS)

    records = ok_json(butler_cli("query-dimension-records", server.url, "band", *read))
    assert isinstance(records, list)
    assert sorted(row["name"] for row in records) == ["i", "r"]

    collections = ok_json(butler_cli("query-collections", server.url, *read))
    assert isinstance(collections, list)
    assert [row["name"] for row in collections] == ["run1"]

    datasets = ok_json(
        butler_cli("query-datasets", server.url, "summary", "--where", "visit = 102", *read)
    )
    assert isinstance(datasets, list)
    assert [(row["run"], row["visit"], row["detector"]) for row in datasets] == [("run1", 102, 0)]
    assert datasets[0]["size"] == (repo / datasets[0]["path"]).stat().st_size


def test_writes_over_url_need_the_write_scope(
    server: ButlerServer, repo: Path, token_files: dict[str, Path]
) -> None:
    args = ("register-dataset-type", server.url, "flux", "Array", "visit", "detector")
    refused = butler_cli(*args, "--token-file", token_files["read"])
    assert refused.exit_code == 1
    assert "write" in refused.output.lower()
    assert "Traceback" not in refused.output

    done = butler_cli(*args, "--token-file", token_files["write"])
    assert done.exit_code == 0, done.output
    chained = butler_cli(
        "set-chain", server.url, "all", "run1", "--token-file", token_files["write"]
    )
    assert chained.exit_code == 0, chained.output
    with Butler(repo) as local:  # the server wrote into the repository
        assert "flux" in {t.name for t in local.dataset_types()}
        assert local.get_collection_chain("all") == ["run1"]


def test_remove_over_url(server: ButlerServer, repo: Path, token_files: dict[str, Path]) -> None:
    with Butler(repo, run="to-remove") as local:
        local.put({"n": 3}, "summary", instrument="HSC", visit=103, detector=1)
    result = butler_cli(
        "remove",
        server.url,
        "summary",
        "--collections",
        "to-remove",
        "--yes",
        "--token-file",
        token_files["write"],
    )
    assert result.exit_code == 0, result.output
    assert "Removed 1 dataset(s)." in result.output
    with Butler(repo) as local:
        assert local.query_datasets("summary", ["to-remove"]) == []


@pytest.mark.parametrize("command", ["create", "verify", "ingest", "ingest-raws"])
def test_local_only_commands_say_so(
    server: ButlerServer, tmp_path: Path, command: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # where a URL taken for a path would become directories
    source = tmp_path / "s.json"
    source.write_text("{}")
    args: dict[str, list[str | Path]] = {
        "create": ["create", server.url],
        "verify": ["verify", server.url],
        "ingest": ["ingest", server.url, "summary", source, "--run", "r", "--data-id", "visit=1"],
        "ingest-raws": ["ingest-raws", server.url, source],
    }
    result = butler_cli(*args[command], env={"BUTLER_TOKEN": WRITE_TOKEN})
    assert result.exit_code == 2, result.output
    assert f"butler {command} works on a local repository path only" in result.output
    assert source.read_text() == "{}"  # nothing was read or moved
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.json"]  # nor created


def test_local_path_with_tilde(repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(repo.parent))
    data = ok_json(butler_cli("info", "~/repo", "--json"))
    assert isinstance(data, dict)
    assert data["name"] == "repo"


def test_other_schemes_are_refused(tmp_path: Path) -> None:
    result = butler_cli("info", "ftp://127.0.0.1/repo")
    assert result.exit_code == 2
    assert "neither a local path nor an http(s):// URL" in result.output


def test_completion_after_url_uses_token_file(
    server: ButlerServer, repo: Path, token_files: dict[str, Path], tmp_path: Path
) -> None:
    words = f"butler query-datasets {server.url} --token-file {token_files['read']} "
    result = CliRunner().invoke(
        main,
        [],
        prog_name="butler",
        env={
            "_BUTLER_COMPLETE": "bash_complete",
            "COMP_WORDS": words,
            "COMP_CWORD": "5",
            "BUTLER_TOKEN": "",
            "XDG_CACHE_HOME": str(tmp_path),
        },
    )
    offered = {line.split(",", 1)[1] for line in result.output.splitlines() if "," in line}
    with Butler(repo) as local:  # other tests may have registered more
        registered = {t.name for t in local.dataset_types()}
    assert registered >= DATASET_TYPES
    assert offered == registered
