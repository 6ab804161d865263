"""The CLIs as a new user meets them (issue 19): `proxyd stats` describes the running proxy
and refuses what is not a proxyd cache; piped tables keep whole values; one style of sizes;
progress counters in the right units."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
from proxies import Proxy, proxyd_cli, running
from test_query_builder import query_repo  # noqa: F401 - fixture

from butler.butler import Butler
from butler.cli.output import human_size
from proxyd.settings import format_size

GiB = 2**30


def butler_cli(*args: str) -> subprocess.CompletedProcess[str]:
    """``butler ARGS`` with stdout a pipe, as when its output goes to another program."""
    return subprocess.run(  # noqa: S603 - our interpreter, test arguments
        [sys.executable, "-m", "butler.cli.main", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize("make_dir", [False, True])
def test_stats_refuses_a_directory_that_is_not_a_cache(tmp_path: Path, make_dir: bool) -> None:
    typo = tmp_path / "cahce"
    if make_dir:
        typo.mkdir()
    result = proxyd_cli("stats", "--cache-dir", str(typo))
    assert result.returncode == 2
    assert f"{typo} is not a proxyd cache directory" in result.stderr
    assert "Traceback" not in result.stderr
    # Nothing was created in its place: not the directory, not an empty cache in it.
    assert typo.exists() == make_dir
    assert not make_dir or list(typo.iterdir()) == []


def test_stats_describes_the_running_proxy(tmp_path: Path) -> None:
    upstreams = {"alpha": "http://127.0.0.1:9/a", "beta": "http://127.0.0.1:9/b"}
    proxy = Proxy(upstreams, tmp_path, "--cache-size", "2GiB")
    with running(proxy):
        # Only the directory: the command's own defaults are 10 GiB and no upstreams.
        result = proxyd_cli("stats", "--cache-dir", str(proxy.cache_dir), "--json")
        assert result.returncode == 0, result.stderr
        figures = json.loads(result.stdout)
        text = proxyd_cli("stats", "--cache-dir", str(proxy.cache_dir))
        pid = proxy.pid
    assert figures["cache_limit"] == 2 * GiB
    assert figures["block_size"] == 64 * 1024
    assert figures["upstreams"] == upstreams
    assert figures["proxy_pid"] == pid
    assert figures["objects"] == 0
    assert figures["pinned_volume"] == 0  # nothing pinned: not the empty database's 28 KiB
    assert text.returncode == 0, text.stderr
    assert "alpha" in text.stdout
    assert "beta" in text.stdout
    assert "10 GiB" not in text.stdout
    assert text.stdout.splitlines()[-1].endswith("of 2 GiB (0 objects, 0 blocks, 0 B pinned)")


def _dataset_rows(repo: Path) -> list[dict[str, str]]:
    with Butler(repo) as butler:
        return [
            {"id": str(ref.id), "path": file.path, "size": str(file.size)}
            for ref, file in butler.query_datasets_with_files("summary", None, "")
        ]


def test_piped_tables_keep_whole_values(query_repo: Path) -> None:  # noqa: F811
    expected = _dataset_rows(query_repo)
    assert expected
    table = butler_cli("query-datasets", str(query_repo), "summary")
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].split() == [
        "type", "run", "instrument", "detector", "visit", "id", "size", "path"
    ]  # fmt: skip
    assert len(lines) == 1 + len(expected)
    assert "…" not in table.stdout
    by_id = {line.split()[5]: line.split() for line in lines[1:]}
    for row in expected:
        words = by_id[row["id"]]  # the whole ID, not "a0b43ef…"
        assert words[-1] == row["path"]  # the whole path
        size = int(row["size"])
        assert size < 1024  # small datasets: shown in bytes, in the one style
        assert words[6:8] == [str(size), "B"]

    as_csv = butler_cli("query-datasets", str(query_repo), "summary", "--format", "csv")
    assert as_csv.returncode == 0, as_csv.stderr
    parsed = list(csv.DictReader(io.StringIO(as_csv.stdout)))
    assert sorted((r["id"], r["path"], r["size"]) for r in parsed) == sorted(
        (r["id"], r["path"], r["size"]) for r in expected
    )
    as_json = butler_cli("query-datasets", str(query_repo), "summary", "--format", "json")
    assert sorted((r["id"], r["path"], str(r["size"])) for r in json.loads(as_json.stdout)) == (
        sorted((r["id"], r["path"], r["size"]) for r in expected)
    )


@pytest.mark.parametrize(
    ("n", "text"),
    [
        (0, "0 B"),
        (1023, "1023 B"),
        (1024, "1 KiB"),
        (1536, "1.5 KiB"),
        (2 * GiB, "2 GiB"),
        (3 * 2**20 + 2**19, "3.5 MiB"),
        (5 * 2**40, "5 TiB"),
    ],
)
def test_one_style_of_sizes(n: int, text: str) -> None:
    assert human_size(n) == text
    assert format_size(n) == text  # proxyd's settings say sizes the same way


def test_mirror_progress_counts_datasets_as_datasets() -> None:
    from rich.console import Console
    from rich.progress import Progress

    from mirror.cli import _progress_columns

    out = io.StringIO()
    console = Console(file=out, width=200, color_system=None, force_terminal=False)
    progress = Progress(*_progress_columns(), console=console, auto_refresh=False)
    progress.add_task("datasets", total=3, completed=3)  # as mirror.pull adds them
    progress.add_task("bytes", total=2048, completed=2048)
    console.print(progress.make_tasks_table(progress.tasks))
    datasets_line, bytes_line = out.getvalue().splitlines()
    assert "3/3 datasets" in datasets_line
    assert "bytes" not in datasets_line  # neither "3/3 bytes" nor "bytes/s"
    assert "2.0/2.0 KiB" in bytes_line
