"""A new user's first steps: remote butlers that clean up after themselves, ``~`` in paths,
a busy port, the server's landing page, and error messages that fit where they are read.

The README's remote examples run as scripts in a child interpreter (``-W default``: every
warning shown, ResourceWarning included) against a real ``butler serve``; their stderr must
be empty.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import textwrap
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import populate_dimensions
from servers import READ_TOKEN, ButlerServer

from butler import Butler
from butler.errors import DataIdError, DatasetTypeNotFoundError

DATA_ID = {"instrument": "HSC", "visit": 101, "detector": 1}
VALUE = {"answer": 42, "text": "lifecycle"}


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("lifecycle") / "repo"
    with Butler.create(root, name="lifecycle-repo") as butler:
        populate_dimensions(butler)
        butler.register_dataset_type("summary", ["visit", "detector"], "Dict")
        butler.register_dataset_type("flux", ["visit", "detector"], "Array")
    with Butler(root, run="sample") as butler:
        butler.put(VALUE, "summary", **DATA_ID)
    return root


@pytest.fixture(scope="module")
def server(repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ButlerServer]:
    srv = ButlerServer(repo, tmp_path_factory.mktemp("server")).start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def token_server(repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ButlerServer]:
    workdir = tmp_path_factory.mktemp("token-server")
    srv = ButlerServer(repo, workdir, "--read-access", "token").start()
    yield srv
    srv.stop()


@pytest.fixture
def home(tmp_path: Path) -> Path:
    """A home directory of its own, so ``~`` points somewhere the test owns."""
    path = tmp_path / "home"
    path.mkdir()
    return path


def _env(home: Path) -> dict[str, str]:
    env = {**os.environ, "HOME": str(home)}
    env.pop("BUTLER_TOKEN", None)
    return env


def run_script(code: str, home: Path) -> subprocess.CompletedProcess[str]:
    """``code`` as a script in a new interpreter that shows every warning."""
    script = home / "script.py"
    script.write_text(textwrap.dedent(code))
    return subprocess.run(  # noqa: S603 - our interpreter, our script
        [sys.executable, "-W", "default", str(script)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=home,
        env=_env(home),
    )


def run_command(*args: str, home: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # noqa: S603 - fixed argv of our own commands
        [sys.executable, "-W", "default", "-c", _MAIN, *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=home,
        env=_env(home),
    )


# The console scripts' entry points, run by this interpreter (argv[1] names the command).
_MAIN = (
    "import sys; cmd = sys.argv.pop(1); "
    "from butler.cli.main import main as butler; from mirror.cli import main as mirror; "
    "from proxyd.cli import main as proxyd; "
    "{'butler': butler, 'mirror': mirror, 'proxyd': proxyd}[cmd]()"
)


def assert_clean(result: subprocess.CompletedProcess[str]) -> None:
    assert result.returncode == 0, result.stderr
    assert "Unclosed" not in result.stderr
    assert result.stderr == ""


# -- lifecycle ----------------------------------------------------------------------------


def test_readme_sync_example_left_open_prints_nothing(server: ButlerServer, home: Path) -> None:
    """The README's example as written: opened, used, never closed."""
    result = run_script(
        f"""
        from butler import Butler
        butler = Butler({server.url!r}, collections="sample", cache_dir="~/cache")
        print(butler.get("summary", {DATA_ID!r}))
        ref = butler.find_dataset("summary", {DATA_ID!r})
        with butler.open(ref) as f:
            print(len(f.read()))
        print(butler.get_local_path(ref).is_relative_to({str(home / "cache")!r}))
        """,
        home,
    )
    assert_clean(result)
    size = len((server.repo / _file_path(server.repo)).read_bytes())
    assert result.stdout.splitlines() == [repr(VALUE), str(size), "True"]


def _file_path(repo: Path) -> str:
    with Butler(repo, collections="sample") as butler:
        ref = butler.find_dataset("summary", DATA_ID)
        return butler.get_uri(ref).removeprefix(repo.as_uri() + "/")


def test_context_manager_and_collection_close_everything(server: ButlerServer, home: Path) -> None:
    """``with`` closes at once; a butler dropped mid-script is closed when collected (its
    I/O thread ends), not only at exit."""
    result = run_script(
        f"""
        import gc, threading
        from butler import Butler
        before = threading.active_count()
        with Butler({server.url!r}, collections="sample") as butler:
            print(butler.get("summary", {DATA_ID!r})["answer"])
        print(threading.active_count() - before)
        butler = Butler({server.url!r}, collections="sample")
        print(butler.get("summary", {DATA_ID!r})["answer"])
        print(threading.active_count() - before)
        del butler
        gc.collect()
        print(threading.active_count() - before)
        """,
        home,
    )
    assert_clean(result)
    assert result.stdout.splitlines() == ["42", "0", "42", "1", "0"]


def test_async_butler_with_and_without_close_prints_nothing(
    server: ButlerServer, home: Path
) -> None:
    result = run_script(
        f"""
        import asyncio
        from butler.remote.async_butler import AsyncButler

        kept = None  # outlives its event loop

        async def main():
            global kept
            async with AsyncButler({server.url!r}, collections="sample") as b:
                print((await b.get("summary", {DATA_ID!r}))["answer"])
            forgotten = AsyncButler({server.url!r}, collections="sample")
            print((await forgotten.get("summary", {DATA_ID!r}))["answer"])
            kept = AsyncButler({server.url!r}, collections="sample")
            print((await kept.get("summary", {DATA_ID!r}))["answer"])

        asyncio.run(main())
        """,
        home,
    )
    assert_clean(result)
    assert result.stdout.splitlines() == ["42", "42", "42"]


def test_mirror_with_tilde_reads_locally_and_prints_nothing(
    server: ButlerServer, repo: Path, home: Path
) -> None:
    """``Butler(url, mirror="~/mirror")`` as the README writes it (a mirror is an ordinary
    repository: a copy of the source stands in for one)."""
    shutil.copytree(repo, home / "mirror")
    result = run_script(
        f"""
        from butler import Butler
        butler = Butler({server.url!r}, mirror="~/mirror", collections="sample")
        print(butler.get("summary", {DATA_ID!r})["text"])
        print(butler.mirror_root)
        print(len(butler.query_collections()))
        """,
        home,
    )
    assert_clean(result)
    assert result.stdout.splitlines() == ["lifecycle", str(home / "mirror"), "1"]


def test_token_file_with_tilde(token_server: ButlerServer, home: Path) -> None:
    (home / "token").write_text(READ_TOKEN + "\n")
    result = run_script(
        f"""
        from butler import Butler
        butler = Butler({token_server.url!r}, collections="sample", token_file="~/token")
        print(butler.get("summary", {DATA_ID!r})["answer"])
        """,
        home,
    )
    assert_clean(result)
    assert result.stdout.splitlines() == ["42"]


def test_missing_token_file_names_both_ways_to_give_one(server: ButlerServer) -> None:
    with pytest.raises(Exception, match="token_file=.*--token-file") as info:
        Butler(server.url, token_file="/nonexistent/token")
    assert "/nonexistent/token" in str(info.value)


# -- ~ on the command line ------------------------------------------------------------------


def test_commands_expand_tilde_in_paths(repo: Path, home: Path) -> None:
    """Quoted, or after ``--opt=``, the shell leaves ``~`` alone: the commands expand it."""
    created = run_command("butler", "create", "~/new-repo", home=home)
    assert created.returncode == 0, created.stderr
    assert (home / "new-repo" / "butler.yaml").is_file()
    assert not (home / "~").exists()
    shutil.copytree(repo, home / "mirror")
    status = run_command("mirror", "status", "~/mirror", home=home)
    assert "does not exist" not in status.stderr
    assert status.returncode == 0, status.stderr
    # A local repository as the source of a pull, and the destination, both under ~.
    args = ["pull", "~/mirror", "--dest", "~/copy", "--dataset-type", "summary"]
    pulled = run_command("mirror", *args, "--collections", "sample", "--quiet", home=home)
    assert pulled.returncode == 0, pulled.stderr
    with Butler(home / "copy", collections="sample") as copy:
        assert copy.get("summary", **DATA_ID) == VALUE


# -- a busy port ----------------------------------------------------------------------------


@pytest.fixture
def busy_port() -> Iterator[int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield int(sock.getsockname()[1])


@pytest.mark.parametrize("command", ["butler", "mirror"])
def test_serve_on_a_busy_port_says_so_first(
    command: str, repo: Path, home: Path, busy_port: int
) -> None:
    result = run_command(command, "serve", str(repo), "--port", str(busy_port), home=home)
    assert result.returncode == 1
    assert "Serving" not in result.stdout + result.stderr
    first = result.stderr.splitlines()[0]
    assert first.startswith(f"Error: cannot listen on 127.0.0.1:{busy_port}: ")
    assert os.strerror(98) in first or "in use" in first
    assert "Traceback" not in result.stderr


def test_proxyd_serve_on_a_busy_port_says_so_first(home: Path, busy_port: int) -> None:
    result = run_command(
        "proxyd",
        "serve",
        "--upstream",
        "repo=http://127.0.0.1:9/",
        "--cache-dir",
        str(home / "cache"),
        "--listen",
        f"127.0.0.1:{busy_port}",
        home=home,
    )
    assert result.returncode != 0
    assert result.stderr.splitlines()[0].startswith(
        f"proxyd: cannot listen on 127.0.0.1:{busy_port}"
    )
    assert "Traceback" not in result.stderr


def test_serve_announces_the_real_port(repo: Path, tmp_path: Path) -> None:
    srv = ButlerServer(repo, tmp_path, tokens=False).start()
    try:
        lines = srv.log_text().splitlines()
    finally:
        srv.stop()
    assert lines[0] == f"Serving {repo} at {srv.url}"


# -- the landing page -------------------------------------------------------------------


def get(url: str, **headers: str) -> tuple[int, str, str]:
    request = urllib.request.Request(url, headers=headers)  # noqa: S310 - loopback
    with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 - loopback
        return response.status, response.headers["Content-Type"], response.read().decode()


def test_landing_page_html_for_browsers(server: ButlerServer) -> None:
    status, content_type, body = get(server.url, Accept="text/html,*/*;q=0.8")
    assert status == 200
    assert content_type.startswith("text/html")
    assert "lifecycle-repo" in body
    assert "<li>flux</li><li>summary</li>" in body
    for link in ("api/v1/openapi.json", "healthz"):
        assert f'href="{link}"' in body
        assert get(server.url + link)[0] == 200


def test_landing_page_json_when_asked(server: ButlerServer) -> None:
    status, content_type, body = get(server.url, Accept="application/json")
    assert status == 200
    assert content_type.startswith("application/json")
    data = json.loads(body)
    assert data["repository"] == "lifecycle-repo"
    assert data["dataset_types"] == ["flux", "summary"]
    assert data["links"]["openapi"] == "/api/v1/openapi.json"
    assert data["links"]["health"] == "/healthz"


def test_landing_page_shows_no_contents_without_a_read_token(
    token_server: ButlerServer,
) -> None:
    status, _, html = get(token_server.url)
    assert status == 200
    _, _, body = get(token_server.url, Accept="application/json")
    data = json.loads(body)
    assert set(data) == {"service", "links", "note"}
    for text in (html, body):
        assert "lifecycle-repo" not in text
        assert "summary" not in text
        assert "flux" not in text
    assert 'href="api/v1/openapi.json"' in html
    _, _, allowed = get(
        token_server.url, Accept="application/json", Authorization=f"Bearer {READ_TOKEN}"
    )
    assert json.loads(allowed)["dataset_types"] == ["flux", "summary"]


# -- error messages say both ways ---------------------------------------------------------


def test_registry_errors_name_the_python_call_and_the_command(repo: Path) -> None:
    with (
        Butler(repo, collections="sample") as butler,
        pytest.raises(DatasetTypeNotFoundError) as missing_type,
    ):
        butler.get("nonesuch", DATA_ID)
    message = str(missing_type.value)
    assert "register_dataset_type(" in message
    assert "butler register-dataset-type REPO" in message


def test_missing_dimension_record_names_the_python_call_and_the_command(
    tmp_path: Path,
) -> None:
    root = tmp_path / "repo"
    with Butler.create(root) as butler:
        populate_dimensions(butler)
        butler.register_dataset_type("summary", ["visit", "detector"], "Dict")
    with Butler(root, run="r") as butler, pytest.raises(DataIdError) as missing:
        butler.put({}, "summary", instrument="HSC", visit=99999, detector=1)
    message = str(missing.value)
    assert "insert_dimension_records('visit'" in message
    assert "butler insert-dimension-records REPO visit" in message


def test_auth_errors_name_the_python_options_and_the_flag(token_server: ButlerServer) -> None:
    with pytest.raises(Exception, match=r"token=/token_file= in Python, --token-file"):
        Butler(token_server.url)
