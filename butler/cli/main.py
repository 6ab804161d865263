"""The ``butler`` command: thin click commands over the library (one function call each)."""

from __future__ import annotations

import functools
import json
import os
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar

import click
import yaml

from butler.butler import Butler
from butler.cli.completion import (
    complete_collections,
    complete_data_id,
    complete_dataset_types,
    complete_dimensions,
    complete_where,
    completion_command,
)
from butler.cli.output import chosen_format, format_option, human_size, print_rows
from butler.cli.repository import Repository, local_only, open_repository, repo_argument
from butler.direct_butler import DirectButler
from butler.errors import ButlerError

F = TypeVar("F", bound=Callable[..., Any])


class UserPath(click.Path):
    """A path option or argument with a leading ``~`` expanded (the shell leaves it in
    ``--dest=~/mirror`` and in quotes)."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, str):
            value = os.path.expanduser(value)
        return super().convert(value, param, ctx)


def handle_errors(func: F) -> F:
    """Turn butler errors (and OS errors: a missing file, a full disk) into a one-line
    message and exit status 1, never a traceback."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except BrokenPipeError:
            raise  # the reader went away (`| head`): click ends the command quietly
        except (ButlerError, OSError) as exc:
            raise click.ClickException(str(exc)) from exc

    return wrapper  # type: ignore[return-value]


def parse_pairs(pairs: Sequence[str], what: str) -> dict[str, Any]:
    """``["visit=12", "band=r"]`` -> ``{"visit": 12, "band": "r"}`` (integers converted)."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{pair!r} is not KEY=VALUE", param_hint=what)
        out[key.strip()] = _scalar(value.strip())
    return out


def _scalar(text: str) -> Any:
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        return text


def _print_rows(rows: Iterable[Mapping[str, Any]], output_format: str, title: str = "") -> None:
    """A listing in the chosen format; in a table, byte counts (``size``) for humans."""
    if output_format == "table":
        rows = [
            {k: human_size(v) if k == "size" and isinstance(v, int) else v for k, v in r.items()}
            for r in rows
        ]
    print_rows(rows, output_format, title)


where_option = click.option(
    "--where",
    default="",
    help="Query expression, e.g. \"visit > 100 AND band = 'r'\".",
    shell_complete=complete_where,
)
bind_option = click.option(
    "--bind", multiple=True, metavar="KEY=VALUE", help="Bind value for the where expression."
)
json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
collections_option = click.option(
    "--collections",
    multiple=True,
    help="Collections to search, in order (repeatable).",
    shell_complete=complete_collections,
)
dataset_type_argument = click.argument("dataset_type", shell_complete=complete_dataset_types)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="butler-cache")
def main() -> None:
    """Butler data repositories: datasets by dataset type + data ID."""


@main.command()
@click.argument("path", type=UserPath(path_type=Path))
@click.option("--name", help="Repository name (default: the directory name).")
@click.option(
    "--universe",
    type=UserPath(exists=True, dir_okay=False, path_type=Path),
    help="Dimension universe YAML (default: the LSST-like universe in config/).",
)
@click.option(
    "--registry",
    metavar="URL",
    help="Keep the registry in this PostgreSQL database (postgresql://USER@HOST:PORT/DB; "
    "the password comes from PGPASSWORD or ~/.pgpass, never the URL) instead of a SQLite "
    "file in PATH. Files stay in PATH either way.",
)
@handle_errors
def create(path: Path, name: str | None, universe: Path | None, registry: str | None) -> None:
    """Create an empty repository at PATH."""
    local_only(path, "create", "a server serves a repository created on its own disk")
    with Butler.create(path, name=name, universe=universe, registry=registry) as butler:
        where = f" (registry: {registry})" if registry else ""
        click.echo(f"Created repository {butler.config.name!r} at {butler.root}{where}")


@main.command()
@repo_argument
@json_option
@handle_errors
def info(repo: Repository, as_json: bool) -> None:
    """Show a repository's name, format, dataset types and collections."""
    with open_repository(repo) as butler:
        data = butler.info()
    if as_json:
        click.echo(json.dumps(data, indent=2))
    else:
        for key, value in data.items():
            shown = ", ".join(value) if isinstance(value, list) else value
            click.echo(f"{key:>15}: {shown}")


@main.command("register-dataset-type")
@repo_argument
@click.argument("name")
@click.argument("storage_class")
@click.argument("dimensions", nargs=-1)
@click.option("--formatter", help="Formatter name (default: the storage class's).")
@handle_errors
def register_dataset_type(
    repo: Repository,
    name: str,
    storage_class: str,
    dimensions: tuple[str, ...],
    formatter: str | None,
) -> None:
    """Register dataset type NAME with STORAGE_CLASS and DIMENSIONS."""
    with open_repository(repo, writeable=True) as butler:
        dataset_type = butler.register_dataset_type(name, dimensions, storage_class, formatter)
    click.echo(
        f"{dataset_type.name}: {', '.join(dataset_type.dimensions)} -> {dataset_type.storage_class}"
    )


@main.command("insert-dimension-records")
@repo_argument
@click.argument("element")
@click.argument("records_file", type=click.File("r"))
@click.option("--skip-existing", is_flag=True, help="Ignore records that exist already.")
@handle_errors
def insert_dimension_records(
    repo: Repository, element: str, records_file: Any, skip_existing: bool
) -> None:
    """Insert ELEMENT records from a YAML or JSON list of mappings ('-' for stdin)."""
    try:
        records = yaml.safe_load(records_file)
    except yaml.YAMLError as exc:
        raise click.BadParameter(f"not YAML/JSON: {exc}", param_hint="RECORDS_FILE") from exc
    if isinstance(records, Mapping):
        records = [records]
    if not isinstance(records, list) or not all(isinstance(r, Mapping) for r in records):
        raise click.BadParameter("expected a list of mappings", param_hint="RECORDS_FILE")
    with open_repository(repo, writeable=True) as butler:
        added = butler.insert_dimension_records(element, *records, skip_existing=skip_existing)
    click.echo(f"Inserted {added} {element} record(s).")


@main.command()
@repo_argument
@dataset_type_argument
@click.argument(
    "files", nargs=-1, required=True, type=UserPath(exists=True, dir_okay=False, path_type=Path)
)
@click.option("--run", required=True, help="RUN collection to add the datasets to.")
@click.option(
    "--data-id",
    "data_id",
    multiple=True,
    metavar="KEY=VALUE",
    required=True,
    help="Data ID values (repeatable); with several files, give one file at a time.",
    shell_complete=complete_data_id,
)
@click.option("--transfer", type=click.Choice(["copy", "move", "hardlink"]), default="copy")
@handle_errors
def ingest(
    repo: Repository,
    dataset_type: str,
    files: tuple[Path, ...],
    run: str,
    data_id: tuple[str, ...],
    transfer: str,
) -> None:
    """Add existing FILES (already in the dataset type's format) as datasets."""
    values = parse_pairs(data_id, "--data-id")
    if len(files) > 1:
        raise click.UsageError("give one file per data ID (several files would share it)")
    # A server takes datasets through put() only: ingesting copies a file into the
    # repository's own storage, which only a process on that machine can do.
    path_ = local_only(
        repo, "ingest", "it copies FILES into the repository's storage; run it where that is"
    )
    with DirectButler(path_, run=run) as butler, butler.transaction():
        for path in files:
            ref = butler.ingest(path, dataset_type, values, transfer=transfer)
            click.echo(f"Ingested {path} as {ref!r}")


@main.command("query-datasets")
@repo_argument
@dataset_type_argument
@collections_option
@where_option
@bind_option
@click.option("--limit", type=int, help="Return at most this many.")
@click.option(
    "--all-runs", "find_all", is_flag=True, help="Show every match, not the first per data ID."
)
@format_option
@handle_errors
def query_datasets(
    repo: Repository,
    dataset_type: str,
    collections: tuple[str, ...],
    where: str,
    bind: tuple[str, ...],
    limit: int | None,
    find_all: bool,
    output_format: str,
    as_json: bool,
) -> None:
    """List datasets of DATASET_TYPE matching --where."""
    with open_repository(repo) as butler:
        rows = butler.query_datasets_with_files(
            dataset_type,
            collections or None,
            where,
            parse_pairs(bind, "--bind"),
            find_first=not find_all,
            limit=limit,
        )
    _print_rows(
        (
            {
                "type": ref.dataset_type.name,
                "run": ref.run,
                **ref.data_id.required,
                "id": str(ref.id),
                "size": file.size,
                "path": file.path,
            }
            for ref, file in rows
        ),
        chosen_format(output_format, as_json),
        f"{dataset_type} datasets",
    )


@main.command("query-data-ids")
@repo_argument
@click.argument("dimensions", nargs=-1, required=True, shell_complete=complete_dimensions)
@where_option
@bind_option
@click.option(
    "--dataset-type",
    help="Only data IDs that have datasets of this type.",
    shell_complete=complete_dataset_types,
)
@collections_option
@click.option("--limit", type=int)
@format_option
@handle_errors
def query_data_ids(
    repo: Repository,
    dimensions: tuple[str, ...],
    where: str,
    bind: tuple[str, ...],
    dataset_type: str | None,
    collections: tuple[str, ...],
    limit: int | None,
    output_format: str,
    as_json: bool,
) -> None:
    """List distinct data IDs over DIMENSIONS."""
    with open_repository(repo) as butler:
        ids = butler.query_data_ids(
            dimensions,
            where,
            parse_pairs(bind, "--bind"),
            dataset_type=dataset_type,
            collections=collections or None,
            limit=limit,
        )
    _print_rows((dict(i) for i in ids), chosen_format(output_format, as_json), "data IDs")


@main.command("query-dimension-records")
@repo_argument
@click.argument("element", shell_complete=complete_dimensions)
@where_option
@bind_option
@click.option("--limit", type=int)
@format_option
@handle_errors
def query_dimension_records(
    repo: Repository,
    element: str,
    where: str,
    bind: tuple[str, ...],
    limit: int | None,
    output_format: str,
    as_json: bool,
) -> None:
    """List the records of a dimension ELEMENT (visit, detector, ...)."""
    with open_repository(repo) as butler:
        records = butler.query_dimension_records(
            element, where, parse_pairs(bind, "--bind"), limit=limit
        )
    _print_rows(records, chosen_format(output_format, as_json), f"{element} records")


@main.command("query-collections")
@repo_argument
@format_option
@handle_errors
def query_collections(repo: Repository, output_format: str, as_json: bool) -> None:
    """List collections (RUN and CHAINED)."""
    with open_repository(repo) as butler:
        rows = butler.query_collections()
    for row in rows:
        row["children"] = ", ".join(row["children"])
    _print_rows(rows, chosen_format(output_format, as_json), "collections")


@main.command("query-dataset-types")
@repo_argument
@format_option
@handle_errors
def query_dataset_types(repo: Repository, output_format: str, as_json: bool) -> None:
    """List registered dataset types."""
    with open_repository(repo) as butler:
        rows = [
            {
                "name": t.name,
                "dimensions": ", ".join(t.dimensions),
                "storage_class": t.storage_class,
                "formatter": t.formatter or "(default)",
            }
            for t in butler.dataset_types()
        ]
    _print_rows(rows, chosen_format(output_format, as_json), "dataset types")


@main.command("set-chain")
@repo_argument
@click.argument("name")
@click.argument("children", nargs=-1, required=True)
@handle_errors
def set_chain(repo: Repository, name: str, children: tuple[str, ...]) -> None:
    """Make NAME a CHAINED collection searching CHILDREN in order."""
    with open_repository(repo, writeable=True) as butler:
        butler.set_collection_chain(name, children)
    click.echo(f"{name} -> {', '.join(children)}")


@main.command()
@repo_argument
@dataset_type_argument
@collections_option
@where_option
@bind_option
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@handle_errors
def remove(
    repo: Repository,
    dataset_type: str,
    collections: tuple[str, ...],
    where: str,
    bind: tuple[str, ...],
    yes: bool,
) -> None:
    """Remove the datasets of DATASET_TYPE matching --where (one transaction)."""
    with open_repository(repo, writeable=True) as butler:
        refs = butler.query_datasets(
            dataset_type,
            collections or None,
            where,
            parse_pairs(bind, "--bind"),
            find_first=False,
        )
        if not refs:
            click.echo("Nothing matches.")
            return
        if not yes and not click.confirm(f"Remove {len(refs)} dataset(s)?"):
            raise click.Abort()
        removed = butler.remove(refs)
    click.echo(f"Removed {removed} dataset(s).")


@main.command()
@repo_argument
@handle_errors
def verify(repo: Repository) -> None:
    """Re-hash every file against its recorded size and checksum."""
    # Verifying re-reads every file where it is stored; over HTTP that would download the
    # whole repository (a mirror verifies its own copies: `mirror verify`).
    path_ = local_only(
        repo, "verify", "it re-hashes the files on disk; run it where the repository is stored"
    )
    with DirectButler(path_) as butler:
        problems = butler.verify()
    for ref, problem in problems:
        click.echo(f"BAD {ref!r}: {problem}", err=True)
    if problems:
        sys.exit(1)
    click.echo("All files match their checksums.")


@main.command()
@click.argument("repo", type=UserPath(exists=True, file_okay=False, path_type=Path))
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8642, show_default=True, type=click.IntRange(0, 65535))
@click.option(
    "--tokens",
    "tokens_file",
    type=UserPath(exists=True, dir_okay=False, path_type=Path),
    help="YAML file of bearer tokens with read/write scopes (writes need one).",
)
@click.option("--read-only", is_flag=True, help="Refuse every write.")
@click.option(
    "--read-access",
    type=click.Choice(["public", "token"]),
    default="public",
    show_default=True,
    help="Whether reads need a token with the read scope.",
)
@click.option(
    "--stale-if-error",
    default=86400,
    show_default=True,
    type=click.IntRange(0),
    help="Seconds a cache may serve API answers (and, with --read-access token, files) "
    "while this server is down (Cache-Control stale-if-error); 0: never.",
)
@click.option(
    "--staging-ttl",
    default=3600,
    show_default=True,
    type=click.IntRange(1),
    help="Seconds before an abandoned transaction's uploads are removed.",
)
@click.option(
    "--max-upload-bytes",
    default=64 * 2**30,
    show_default=True,
    type=click.IntRange(1),
    help="Largest file upload accepted (413 above it); uploads stream to disk.",
)
@click.option(
    "--max-json-bytes",
    default=16 * 2**20,
    show_default=True,
    type=click.IntRange(1024),
    help="Largest JSON request body accepted (413 above it); read into memory whole.",
)
@click.option(
    "--idle-timeout",
    default=15.0,
    show_default=True,
    type=click.FloatRange(0.1),
    help="Seconds a connection may wait for a complete request's headers, or sit idle "
    "between requests, before the server closes it (slow clients).",
)
@click.option(
    "--body-timeout",
    default=30.0,
    show_default=True,
    type=click.FloatRange(0.1),
    help="Seconds the server waits for the next bytes of a request body (408 after).",
)
@click.option(
    "--max-connections",
    type=click.IntRange(1),
    default=None,
    help="Connections served at once; more are closed as they arrive. "
    "[default: half the open-file limit]",
)
@handle_errors
def serve(
    repo: Path,
    host: str,
    port: int,
    tokens_file: Path | None,
    read_only: bool,
    read_access: Literal["public", "token"],
    stale_if_error: int,
    staging_ttl: int,
    max_upload_bytes: int,
    max_json_bytes: int,
    idle_timeout: float,
    body_timeout: float,
    max_connections: int | None,
) -> None:
    """Serve repository REPO over HTTP (API under /api/v1/, files under /files/).

    The tokens file is YAML: a 'tokens:' list of entries with the keys name, token (or
    sha256: the token's hex SHA-256), scopes (read, write) and optionally collections (glob
    patterns the token is limited to); any other key is refused. The file is read again
    when it changes (removing an entry revokes the token).
    Several servers may serve one repository; --read-only writes nothing, so it also serves
    a repository on a read-only file system.
    """
    from butler.server.app import serve as run_server
    from butler.server.settings import ServerSettings

    settings = ServerSettings(
        repo=repo.absolute(),
        host=host,
        port=port,
        tokens_file=tokens_file,
        read_only=read_only,
        read_access=read_access,
        stale_if_error=stale_if_error,
        staging_ttl=staging_ttl,
        max_upload_bytes=max_upload_bytes,
        max_json_bytes=max_json_bytes,
        idle_timeout=idle_timeout,
        body_timeout=body_timeout,
        max_connections=max_connections,
    )
    run_server(settings, print_url=lambda url: click.echo(f"Serving {repo} at {url}", err=True))


@main.command()
@click.option(
    "--workdir",
    type=UserPath(file_okay=False, path_type=Path),
    default=Path("demo-work"),
    show_default=True,
    help="Directory for the sample repository (replaced).",
)
@handle_errors
def demo(workdir: Path) -> None:
    """Run the end-to-end tour on embedded defaults and print what happens."""
    from butler.demo import run_demo

    run_demo(workdir, echo=click.echo)


main.add_command(completion_command("butler"))
from butler.cli.ingest_raws import ingest_raws_command  # noqa: E402 - needs main defined

main.add_command(ingest_raws_command)
from butler.cli.migrate import migrate_command  # noqa: E402

main.add_command(migrate_command)
from butler.cli.lsst import import_command, ingest_zip_command  # noqa: E402

main.add_command(import_command)
main.add_command(ingest_zip_command)

if __name__ == "__main__":
    main()
