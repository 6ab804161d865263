"""The ``mirror`` command: thin click commands over :mod:`mirror.pull` and the butler."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import sqlite3
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import click

from butler.cli.completion import (
    complete_collections,
    complete_dataset_types,
    complete_where,
    completion_command,
)
from butler.cli.main import UserPath, parse_pairs
from butler.cli.main import handle_errors as handle_butler_errors
from butler.cli.output import chosen_format, format_option, human_size, print_rows
from butler.remote.limits import is_disk_full
from mirror.pull import PullRequest, PullSummary, pull
from mirror.state import MirrorState

if TYPE_CHECKING:
    from rich.progress import Progress

F = TypeVar("F", bound=Callable[..., Any])


def handle_errors(func: F) -> F:
    """The butler CLI's handling of errors (a one-line message, status 1), and a full disk
    said as such where SQLite met it: its error for that is no OSError, and on a full disk
    even opening a database (its ``-shm`` file) can fail so."""
    handled = handle_butler_errors(func)

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return handled(*args, **kwargs)
        except sqlite3.Error as exc:
            if not is_disk_full(exc):
                raise
            where = kwargs.get("dest") or "the mirror"
            raise click.ClickException(
                f"the disk under {where} is full ({exc}); free some space and run the command again"
            ) from exc

    return wrapper  # type: ignore[return-value]


def _token(token_file: Path | None) -> str | None:
    if token_file is not None:
        return token_file.read_text().strip()
    return os.environ.get("BUTLER_TOKEN") or None


@contextmanager
def _interruptible(dest: Path) -> Iterator[None]:
    """Ctrl-C during a pull: say what is kept and how to go on, and exit with 130 (the
    shell's status for an interrupt) instead of a traceback."""
    try:
        yield
    except KeyboardInterrupt:
        click.echo(
            f"mirror: interrupted. The files verified so far are recorded in {dest} and "
            "partial downloads are kept: run the same command again to resume.",
            err=True,
        )
        sys.exit(130)


def _progress_columns() -> list[Any]:
    """The bars' columns: the datasets task counted in datasets, the bytes task in bytes (one
    set of columns for both used to show ``3/3 bytes`` and ``211 bytes/s`` for datasets)."""
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        MofNCompleteColumn,
        ProgressColumn,
        Task,
        TaskProgressColumn,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )
    from rich.text import Text

    class ForTasks(ProgressColumn):
        """``column`` on the tasks counting bytes (``of_bytes``) or the others."""

        def __init__(self, column: ProgressColumn, of_bytes: bool) -> None:
            super().__init__()
            self.column, self.of_bytes = column, of_bytes

        def render(self, task: Task) -> Any:
            if (task.description == "bytes") != self.of_bytes:
                return Text("")
            return self.column.render(task)

    return [
        TextColumn("[bold]{task.description:>8}"),
        BarColumn(),
        ForTasks(MofNCompleteColumn(), of_bytes=False),
        ForTasks(TextColumn("datasets"), of_bytes=False),
        TaskProgressColumn(),
        ForTasks(DownloadColumn(binary_units=True), of_bytes=True),
        ForTasks(TransferSpeedColumn(), of_bytes=True),
        TimeRemainingColumn(),
    ]


@contextmanager
def _progress(enabled: bool) -> Iterator[Progress | None]:
    if not enabled:
        yield None
        return
    # Imported here: scripts and --quiet pulls show no bars, and rich costs a start ~50 ms.
    from rich.console import Console
    from rich.progress import Progress

    console = Console(stderr=True)
    with Progress(*_progress_columns(), console=console, transient=False) as progress:
        yield progress


def _report(summary: PullSummary, as_json: bool, quiet: bool) -> None:
    if as_json:
        click.echo(json.dumps(summary.as_dict(), indent=2))
    elif not quiet:
        rate = summary.downloaded_bytes / summary.seconds if summary.seconds else 0
        click.echo(
            f"Downloaded {summary.downloaded} datasets ({human_size(summary.downloaded_bytes)}, "
            f"{human_size(rate)}/s), skipped {summary.skipped} already present, "
            f"{len(summary.failed)} failed, in {summary.seconds:.1f} s"
        )
    for dataset, reason in summary.failed:
        click.echo(f"failed: {dataset}: {reason}", err=True)
    if summary.failed:
        sys.exit(1)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="butler-cache")
def main() -> None:
    """Pre-fetch the results of a butler query into a local repository for offline use."""


pull_options = [
    click.option(
        "--dataset-type",
        "dataset_types",
        multiple=True,
        required=True,
        help="Dataset type to mirror (repeatable).",
        shell_complete=complete_dataset_types,
    ),
    click.option(
        "--collections",
        multiple=True,
        help="Collections to search, in order.",
        shell_complete=complete_collections,
    ),
    click.option("--where", default="", help="Query expression.", shell_complete=complete_where),
    click.option("--bind", multiple=True, metavar="KEY=VALUE", help="Bind value for --where."),
]


def _with(options: list[Callable[[F], F]]) -> Callable[[F], F]:
    def apply(func: F) -> F:
        for option in reversed(options):
            func = option(func)
        return func

    return apply


common_options = [
    click.option(
        "--jobs",
        default=8,
        show_default=True,
        type=click.IntRange(1, 64),
        help="Concurrent downloads.",
    ),
    click.option(
        "--via",
        "via",
        metavar="PROXY",
        help="Pull through the caching proxy at this base URL (proxyd: the route that serves "
        "the source is looked up in its /healthz).",
    ),
    click.option(
        "--token-file",
        type=UserPath(exists=True, dir_okay=False, path_type=Path),
        help="File holding the bearer token (default: $BUTLER_TOKEN).",
    ),
    click.option("--quiet", "-q", is_flag=True, help="No progress bars or plan."),
    click.option("--json", "as_json", is_flag=True, help="Print a JSON summary."),
]


@main.command("pull")
@click.argument("source")
@click.option(
    "--dest",
    required=True,
    type=UserPath(file_okay=False, path_type=Path),
    help="Mirror directory (created if missing).",
)
@_with(pull_options)
@_with(common_options)
@click.option("--dry-run", is_flag=True, help="Show the plan and stop.")
@handle_errors
def pull_command(
    source: str,
    dest: Path,
    dataset_types: tuple[str, ...],
    collections: tuple[str, ...],
    where: str,
    bind: tuple[str, ...],
    jobs: int,
    via: str | None,
    token_file: Path | None,
    quiet: bool,
    as_json: bool,
    dry_run: bool,
) -> None:
    """Copy the datasets a query selects from SOURCE (URL or path) into --dest."""
    request = PullRequest(
        source=source,
        dest=dest,
        dataset_types=dataset_types,
        collections=collections,
        where=where,
        bind=parse_pairs(bind, "--bind"),
        jobs=jobs,
        dry_run=dry_run,
        via=via,
        token=_token(token_file),
    )
    echo = (lambda _: None) if quiet or as_json else click.echo
    show = not quiet and not as_json and sys.stderr.isatty()
    with _interruptible(dest), _progress(show) as progress:
        summary = pull(request, echo, progress)
    if dry_run:
        if as_json:
            click.echo(json.dumps(summary.plan.as_dict(), indent=2))
        return
    _report(summary, as_json, quiet)


@main.command()
@click.argument("dest", type=UserPath(exists=True, file_okay=False, path_type=Path))
@_with(common_options)
@handle_errors
def update(
    dest: Path, jobs: int, via: str | None, token_file: Path | None, quiet: bool, as_json: bool
) -> None:
    """Re-run every recorded query of the mirror at DEST and fetch what is new."""
    state = MirrorState(dest)
    try:
        queries = state.queries()
    finally:
        state.close()
    if not queries:
        raise click.ClickException(f"{dest} has no recorded queries; run `mirror pull` first")
    echo = (lambda _: None) if quiet or as_json else click.echo
    results = []
    for query in queries:
        echo(f"query {query.id}: {query.describe()} from {query.source}")
        request = PullRequest(
            source=query.source,
            dest=dest,
            dataset_types=query.dataset_types,
            collections=query.collections,
            where=query.where,
            bind=query.bind,
            jobs=jobs,
            via=via,
            token=_token(token_file),
        )
        show = not quiet and not as_json and sys.stderr.isatty()
        with _interruptible(dest), _progress(show) as progress:
            summary = pull(request, echo, progress)
        results.append(summary)
        if not as_json:
            _report(summary, False, quiet)
    if as_json:
        click.echo(json.dumps([r.as_dict() for r in results], indent=2))


@main.command()
@click.argument("dest", type=UserPath(exists=True, file_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True)
@handle_errors
def status(dest: Path, as_json: bool) -> None:
    """Source, recorded queries, datasets, bytes and the last pull of a mirror."""
    from butler.direct_butler import DirectButler

    state = MirrorState(dest)
    try:
        queries = state.queries()
        last = state.last_pull()
        sources = state.sources()
    finally:
        state.close()
    with DirectButler(dest) as butler:
        count = butler.registry.count_datasets()
        size = int(butler.registry._query("SELECT COALESCE(SUM(size), 0) AS n FROM file")[0]["n"])
    data = {
        "mirror": str(dest.absolute()),
        "sources": sources,
        "queries": [
            {"id": q.id, "query": q.describe(), "source": q.source, "last_pull": q.last_pull}
            for q in queries
        ],
        "datasets": count,
        "bytes": size,
        "last_pull": last,
    }
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    click.echo(f"mirror {data['mirror']}: {count} datasets, {human_size(size)}")
    for source in sources:
        click.echo(f"  source: {source}")
    for q in queries:
        click.echo(f"  query {q.id}: {q.describe()} (last pull {q.last_pull or 'never'})")
    if last:
        click.echo(
            f"  last pull: {last['started']} .. {last['finished'] or 'unfinished'}, "
            f"{last['status']}: {last['downloaded']} downloaded, {last['skipped']} "
            f"skipped, {last['failed']} failed"
        )


@main.command("ls")
@click.argument("dest", type=UserPath(exists=True, file_okay=False, path_type=Path))
@click.option(
    "--dataset-type", "dataset_types", multiple=True, shell_complete=complete_dataset_types
)
@click.option("--where", default="", shell_complete=complete_where)
@format_option
@handle_errors
def list_datasets(
    dest: Path, dataset_types: tuple[str, ...], where: str, output_format: str, as_json: bool
) -> None:
    """List the datasets in a mirror."""
    from butler.direct_butler import DirectButler

    rows: list[dict[str, Any]] = []
    with DirectButler(dest) as butler:
        names = list(dataset_types) or [t.name for t in butler.dataset_types()]
        for name in names:
            for ref, file in butler.query_datasets_with_files(name, where=where, find_first=False):
                data_id = ", ".join(f"{k}={v}" for k, v in ref.data_id.required.items())
                rows.append({"type": name, "data_id": data_id, "run": ref.run, "size": file.size})
    output_format = chosen_format(output_format, as_json)
    if output_format == "table":  # sizes for humans; JSON and CSV keep the byte counts
        rows = [{**row, "size": human_size(row["size"])} for row in rows]
    print_rows(rows, output_format, "datasets", header=False)  # one line per dataset


@main.command()
@click.argument("dest", type=UserPath(exists=True, file_okay=False, path_type=Path))
@click.option("--repair", is_flag=True, help="Fetch missing or corrupt files from the source.")
@click.option("--token-file", type=UserPath(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--via", "via", metavar="PROXY", help="Repair through the caching proxy at this base URL."
)
@handle_errors
def verify(dest: Path, repair: bool, token_file: Path | None, via: str | None) -> None:
    """Re-hash every file of the mirror; with --repair, re-fetch the bad ones."""
    from mirror.maintenance import repair_files, verify_files

    problems = verify_files(dest)
    for ref, problem in problems:
        click.echo(f"BAD {ref.dataset_type.name} {dict(ref.data_id.required)}: {problem}", err=True)
    if problems and repair:
        fixed, failed = repair_files(dest, [r for r, _ in problems], _token(token_file), via)
        click.echo(f"Repaired {fixed} file(s); {len(failed)} could not be repaired")
        for ref, reason in failed:
            click.echo(f"  {ref!r}: {reason}", err=True)
        if failed:
            sys.exit(1)
        return
    if problems:
        sys.exit(1)
    click.echo("All files match their checksums.")


@main.command()
@click.argument("dest", type=UserPath(exists=True, file_okay=False, path_type=Path))
@click.option(
    "--where",
    default="",
    help="Remove datasets matching this expression.",
    shell_complete=complete_where,
)
@click.option(
    "--dataset-type", "dataset_types", multiple=True, shell_complete=complete_dataset_types
)
@click.option("--query", "query_id", type=int, help="Remove what a recorded query brought.")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@handle_errors
def prune(
    dest: Path, where: str, dataset_types: tuple[str, ...], query_id: int | None, yes: bool
) -> None:
    """Remove datasets from a mirror (files and registry rows together)."""
    from mirror.maintenance import prune_datasets

    if not where and query_id is None and not dataset_types:
        raise click.UsageError("say what to prune: --where, --dataset-type or --query")
    removed = prune_datasets(
        dest, where, dataset_types, query_id, confirm=None if yes else click.confirm
    )
    click.echo(f"Removed {removed} dataset(s).")


@main.command()
@click.argument("dest", type=UserPath(exists=True, file_okay=False, path_type=Path))
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8642, show_default=True, type=click.IntRange(0, 65535))
@handle_errors
def serve(dest: Path, host: str, port: int) -> None:
    """Share the mirror read-only over HTTP (it is `butler serve --read-only`)."""
    from butler.server.app import serve as run_server
    from butler.server.settings import ServerSettings

    run_server(
        ServerSettings(repo=dest.absolute(), host=host, port=port, read_only=True),
        print_url=lambda url: click.echo(f"Serving mirror {dest} at {url}", err=True),
    )


main.add_command(completion_command("mirror"))


def run() -> NoReturn:
    """The ``mirror`` command: :func:`main`, then an exit without the interpreter's teardown.

    Every command closes what it opened (databases, files, connections, threads) before it
    returns, so the teardown has nothing left to do but free each object one by one, which
    took a pull 0.07-0.11 s on the bench machine, after its work was done.
    """
    try:
        main()
        status = 0
    except SystemExit as stop:  # click ends every command with one
        if stop.code is None or isinstance(stop.code, int):
            status = stop.code or 0
        else:  # a message, as sys.exit("...") prints it
            print(stop.code, file=sys.stderr)
            status = 1
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # a closed pipe (| head), a closed stream
            stream.flush()
    os._exit(status)


if __name__ == "__main__":
    run()
