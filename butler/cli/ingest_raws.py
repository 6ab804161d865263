"""``butler ingest-raws``: raw files of any telescope into a repository (thin over
:func:`butler.ingest.ingest_raws`)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click

from butler.cli.repository import Repository, RepositoryParamType, local_only
from butler.direct_butler import DirectButler
from butler.errors import ButlerError

if TYPE_CHECKING:
    from butler.ingest import FileOutcome

_STATUS_STYLE = {"ingested": "green", "skipped": "yellow", "failed": "red"}
_WARNING = "WARNING"


@click.command("ingest-raws")
@click.argument("repo", type=RepositoryParamType())
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option(
    "--instrument",
    default="auto",
    show_default=True,
    help="Translator to use (see --list-translators), or 'auto' to detect it per file.",
)
@click.option(
    "--transfer",
    type=click.Choice(["copy", "link", "symlink", "move", "direct"]),
    default="copy",
    show_default=True,
    help="How files get into the datastore; 'direct' leaves them where they are.",
)
@click.option("--run", help="RUN collection (default: <instrument>/raw/all).")
@click.option("--fail-fast", is_flag=True, help="Stop at the first file that fails.")
@click.option("--list-translators", is_flag=True, help="List the installed translators and exit.")
def ingest_raws_command(
    repo: Repository,
    paths: tuple[Path, ...],
    instrument: str,
    transfer: str,
    run: str | None,
    fail_fast: bool,
    list_translators: bool,
) -> None:
    """Ingest raw FITS files (or directories of them) from any telescope into REPO.

    Only headers are read: the instrument, exposure, detector, filter, day_obs, exposure
    time, start time and pointing become dimension records, and each detector a 'raw'
    dataset. One line per file says what happened (every file found in a directory is
    ingested, skipped or failed, with the reason; .gz/.bz2 files are stored decompressed),
    then a WARNING line per fact the header does not determine (stored as null) or that was
    taken from a fallback keyword. A failing file does not stop the others (the exit status
    is 1 if any failed) unless --fail-fast is given.
    """
    from butler.ingest import RawIngestOptions, ingest_raws
    from butler.translators import TranslatorRegistry

    translators = TranslatorRegistry()
    if list_translators:
        for translator in translators.translators:
            click.echo(f"{translator.name:>28}: {translator.layout_doc}")
        return
    options = RawIngestOptions(
        instrument=instrument, transfer=transfer, run=run, fail_fast=fail_fast
    )

    def report(outcome: FileOutcome) -> None:
        status = click.style(f"{outcome.status.upper():>8}", fg=_STATUS_STYLE[outcome.status])
        click.echo(f"{status} {outcome.path}: {outcome.message}")
        for warning in outcome.warnings:
            # One line per fact left null or taken from a fallback key, naming the file.
            click.echo(f"{click.style(f'{_WARNING:>8}', fg='yellow')} {outcome.path}: {warning}")

    # Raw files go into the repository's own storage (copied, linked or left in place),
    # which a server cannot take: checked before any file is read.
    root = local_only(repo, "ingest-raws", "raw files are copied or linked into its storage")
    try:
        with DirectButler(root, writeable=True) as butler:
            outcomes = ingest_raws(
                butler, list(paths), options, translators=translators, report=report
            )
    except (ButlerError, OSError, ValueError) as exc:
        raise click.ClickException(str(exc)) from exc
    counts = {s: sum(o.status == s for o in outcomes) for s in _STATUS_STYLE}
    warned = sum(bool(o.warnings) for o in outcomes)
    summary = ", ".join(f"{n} {s}" for s, n in counts.items())
    click.echo(f"{summary} ({len(outcomes)} files; {warned} with warnings)")
    if counts["failed"]:
        sys.exit(1)
