"""``butler migrate``: bring a repository made by an earlier release to this release's
dimension universe (thin over :func:`butler.migrate.upgrade_universe`)."""

from __future__ import annotations

import click

from butler.cli.repository import Repository, RepositoryParamType, local_only
from butler.errors import ButlerError


@click.command("migrate")
@click.argument("repo", type=RepositoryParamType())
def migrate_command(repo: Repository) -> None:
    """Upgrade REPO's dimension universe to this release's (additions only, one transaction).

    A repository keeps working without it; it is needed to hold what the new universe adds
    (the LSST butler's elements and fields, for `butler import`). Stop servers writing to
    REPO first; running it again is harmless.
    """
    from butler.migrate import upgrade_universe

    root = local_only(repo, "migrate", "its registry file is changed in place")
    try:
        result = upgrade_universe(root)
    except (ButlerError, OSError) as exc:
        raise click.ClickException(str(exc)) from exc
    if result.from_version == result.to_version:
        click.echo(f"{root}: universe version {result.to_version} already; nothing to do")
        return
    click.echo(
        f"{root}: universe version {result.from_version} -> {result.to_version}: "
        f"{len(result.new_elements)} new elements ({', '.join(result.new_elements)}), "
        f"{len(result.new_columns)} new columns"
    )
