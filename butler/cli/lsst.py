"""``butler import`` and ``butler ingest-zip``: data from the LSST butler (lsst-daf-butler)
into a repository, thin over :mod:`butler.lsst`."""

from __future__ import annotations

from pathlib import Path

import click

from butler.cli.repository import Repository, RepositoryParamType, local_only
from butler.direct_butler import TRANSFER_MODES
from butler.errors import ButlerError

transfer_option = click.option(
    "--transfer",
    type=click.Choice(TRANSFER_MODES),
    default="copy",
    show_default=True,
    help="How the files get into the repository; 'direct' leaves them where they are.",
)


def _report(summary: object, source: Path) -> None:
    from butler.lsst.importer import ImportSummary

    assert isinstance(summary, ImportSummary)
    click.echo(
        f"{source}: {summary.datasets} datasets imported ({summary.already_present} were "
        f"present), {len(summary.dataset_types)} dataset types, {len(summary.collections)} "
        f"collections, {summary.records} new dimension records"
    )
    for note in summary.not_carried_over:
        click.echo(f"{click.style('NOT CARRIED OVER', fg='yellow')} {note}")


@click.command("import")
@click.argument("repo", type=RepositoryParamType())
@click.argument("export_file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@transfer_option
@click.option(
    "--skip-dimensions",
    is_flag=True,
    help="Do not insert the export's dimension records (the repository has them already).",
)
def import_command(
    repo: Repository, export_file: Path, transfer: str, skip_dimensions: bool
) -> None:
    """Import an LSST butler export (EXPORT_FILE, as `butler export` writes it, its files
    beside it) into REPO, all of it or nothing. Datasets keep their UUIDs."""
    from butler.direct_butler import DirectButler
    from butler.lsst.export_yaml import read_export
    from butler.lsst.importer import apply

    root = local_only(repo, "import", "the export's files are copied or linked into its storage")
    try:
        with DirectButler(root, writeable=True) as butler:
            contents = read_export(export_file, butler.universe)
            summary = apply(contents, butler, transfer=transfer, skip_dimensions=skip_dimensions)
    except (ButlerError, OSError) as exc:
        raise click.ClickException(str(exc)) from exc
    _report(summary, export_file)


INGEST_ZIP_DIR = ".ingest-zip"
"""Where ``ingest-zip`` extracts archives in the repository, one locked directory each."""


@click.command("ingest-zip")
@click.argument("repo", type=RepositoryParamType())
@click.argument("zip_file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
def ingest_zip_command(repo: Repository, zip_file: Path) -> None:
    """Ingest an archive made by the LSST butler's `butler retrieve-artifacts --zip` into
    REPO, all of it or nothing. Datasets keep their UUIDs; their dimension records come from
    the archive when it carries them, else REPO must have them (`butler import` an export)."""
    from butler.datastore import locked_scratch_dir
    from butler.direct_butler import DirectButler
    from butler.lsst.importer import apply
    from butler.lsst.zip_archive import read_zip

    root = local_only(repo, "ingest-zip", "the archive's files are stored in it")
    try:
        # Extracted beside the repository's files, so going in is a rename, not a copy;
        # what a killed ingest-zip extracted is removed by the next one.
        with (
            DirectButler(root, writeable=True) as butler,
            locked_scratch_dir(root / INGEST_ZIP_DIR) as scratch,
        ):
            contents = read_zip(zip_file, butler.universe, scratch)
            summary = apply(contents, butler, transfer="move")
    except (ButlerError, OSError) as exc:
        raise click.ClickException(str(exc)) from exc
    _report(summary, zip_file)
