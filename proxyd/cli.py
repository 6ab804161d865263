"""The ``proxyd`` command: ``serve`` and the admin commands ``stats``, ``ls``, ``purge``,
``pin`` and ``warm``.

Admin commands open the cache directory directly (diskcache is safe to share between
processes), so they work whether or not the proxy is running; ``warm`` sends requests
through a running proxy.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import click

from butler.cli.output import chosen_format, format_option, print_rows
from proxyd.settings import ConfigError, ProxySettings, describe, format_size, load_settings

F = TypeVar("F", bound=Callable[..., Any])


def _butler_completer(name: str) -> Callable[[click.Context, click.Parameter, str], Any]:
    """A shell-completion callback of ``butler.cli.completion``, imported when called: the
    butler library is only needed to complete ``warm``, not to start every proxyd command."""

    def complete(ctx: click.Context, param: click.Parameter, incomplete: str) -> Any:
        from butler.cli import completion

        return getattr(completion, name)(ctx, param, incomplete)

    return complete


complete_dataset_types = _butler_completer("complete_dataset_types")
complete_collections = _butler_completer("complete_collections")
complete_where = _butler_completer("complete_where")


def settings_options(func: F) -> F:
    """Options shared by every command that needs the settings (same precedence as serve)."""
    options = [
        click.option(
            "--config",
            "config_file",
            type=click.Path(dir_okay=False, path_type=Path),
            help="TOML config file (default: $PROXYD_CONFIG, else built-in defaults).",
        ),
        click.option(
            "--cache-dir", type=click.Path(file_okay=False, path_type=Path), help="Cache directory."
        ),
        click.option("--block-size", help="Block size, e.g. 1MiB."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _load(config_file: Path | None, **overrides: Any) -> ProxySettings:
    try:
        settings, warnings = load_settings(config_file, os.environ, overrides)
    except ConfigError as exc:
        click.echo(f"proxyd: {exc}", err=True)
        sys.exit(2)
    for warning in warnings:
        click.echo(f"proxyd: warning: {warning}", err=True)
    return settings


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="butler-cache")
def main() -> None:
    """Site-wide caching reverse proxy for butler repositories and other HTTP origins."""


@main.command()
@settings_options
@click.option("--listen", help="HOST:PORT to listen on (default 127.0.0.1:8080).")
@click.option("--cache-size", help="Cache size limit, e.g. 50GiB.")
@click.option(
    "--upstream",
    "upstreams",
    multiple=True,
    metavar="NAME=URL",
    help="Upstream served under /NAME/ (repeatable).",
)
def serve(
    config_file: Path | None,
    cache_dir: Path | None,
    block_size: str | None,
    listen: str | None,
    cache_size: str | None,
    upstreams: tuple[str, ...],
) -> None:
    """Run the proxy."""
    from proxyd.app import run

    settings = _load(
        config_file,
        cache_dir=cache_dir,
        block_size=block_size,
        listen=listen,
        cache_size=cache_size,
        upstreams=list(upstreams),
    )
    if not settings.upstreams:
        click.echo(
            "proxyd: no upstreams configured; give --upstream NAME=URL or an "
            "[upstreams] table in the config file",
            err=True,
        )
        sys.exit(2)
    try:
        run(settings)
    except ConfigError as exc:
        click.echo(f"proxyd: {exc}", err=True)
        sys.exit(2)
    except OSError as exc:
        click.echo(f"proxyd: cannot listen on {settings.listen}: {exc.strerror}", err=True)
        sys.exit(1)


def _store(settings: ProxySettings) -> Any:
    from proxyd.store import BlockStore, is_cache_directory

    # Opening a store creates one: a mistyped directory would silently become an empty cache.
    if not is_cache_directory(settings.cache_dir):
        click.echo(
            f"proxyd: {settings.cache_dir} is not a proxyd cache directory (no blocks/cache.db "
            "in it); give the cache_dir of the proxy (--cache-dir or --config), which "
            "`proxyd serve` creates when it starts",
            err=True,
        )
        sys.exit(2)
    return BlockStore(
        settings.cache_dir,
        settings.cache_size,
        settings.block_size,
        settings.evict_low_watermark,
        settings.evict_high_watermark,
    )


@main.command()
@settings_options
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def stats(
    config_file: Path | None, cache_dir: Path | None, block_size: str | None, as_json: bool
) -> None:
    """Cache size, objects, blocks, pinned bytes, and the settings of the proxy that last
    opened the cache directory (it records them there when it starts)."""
    from butler.cli.output import human_size
    from proxyd.store import recorded_settings

    settings = _load(config_file, cache_dir=cache_dir, block_size=block_size)
    store = _store(settings)
    try:
        figures = store.stats()
    finally:
        store.close()
    proxy = recorded_settings(settings.cache_dir) or {}
    limit = proxy.get("cache_size", settings.cache_size)
    data = {
        "cache_dir": str(settings.cache_dir),
        "cache_limit": limit,
        "block_size": proxy.get("block_size"),
        "upstreams": proxy.get("upstreams"),
        "proxy_pid": proxy.get("pid"),
        "volume": figures.volume,
        "pinned_volume": figures.pinned_volume,
        "objects": figures.objects,
        "blocks": figures.blocks,
    }
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    if proxy:
        where = settings.cache_dir
        click.echo(f"settings of the proxy that last opened {where} (pid {proxy.get('pid')}):")
        click.echo(str(proxy.get("description", "")))
    else:
        click.echo(f"no proxy has recorded its settings in {settings.cache_dir}; this command's:")
        click.echo(describe(settings))
    click.echo(
        f"cache: {human_size(figures.volume)} of {human_size(limit)} "
        f"({figures.objects} objects, {figures.blocks} blocks, "
        f"{human_size(figures.pinned_volume)} pinned)"
    )


@main.command("ls")
@settings_options
@click.option("--prefix", default="", help="Only keys starting with this (an upstream URL).")
@format_option
def list_objects(
    config_file: Path | None,
    cache_dir: Path | None,
    block_size: str | None,
    prefix: str,
    output_format: str,
    as_json: bool,
) -> None:
    """List cached objects with how many of their blocks are present.

    The table has no header and one object a line (blocks present/total, size, "pinned",
    key), whole however long; json and csv give every field, sizes in bytes."""
    from proxyd.store import describe_meta

    settings = _load(config_file, cache_dir=cache_dir, block_size=block_size)
    store = _store(settings)
    rows = []
    try:
        for meta in sorted(store.objects(), key=lambda m: m.key):
            if not meta.key.startswith(prefix):
                continue
            count = meta.block_count(settings.block_size)
            present = store.has_blocks(meta.version(settings.block_size), range(count))
            rows.append(describe_meta(meta, settings.block_size, present))
    finally:
        store.close()
    chosen = chosen_format(output_format, as_json)
    if chosen != "table":
        print_rows(rows, chosen, "cached objects")
        return
    lines = [
        {
            "blocks": row["blocks"],
            "size": "?" if row["size"] is None else format_size(row["size"]),
            "pinned": "pinned" if row["pinned"] else "",
            "key": row["key"],
        }
        for row in rows
    ]
    print_rows(lines, "table", "cached objects", header=False)


def _key_for(settings: ProxySettings, target: str) -> str:
    """A cache key from an upstream URL or a proxy path ``/<upstream>/<path>``."""
    from proxyd.policy.keys import cache_key

    if target.startswith("/"):
        name, _, rest = target[1:].partition("/")
        base = settings.upstreams.get(name)
        if base is None:
            raise click.BadParameter(
                f"no upstream named {name!r} (configured: "
                f"{', '.join(sorted(settings.upstreams)) or 'none'})"
            )
        target = base.rstrip("/") + "/" + rest
    elif urlsplit(target).scheme not in ("http", "https"):
        raise click.BadParameter(f"{target!r} is neither an upstream URL nor /<upstream>/<path>")
    return cache_key(target, settings.signing_params)


@main.command()
@settings_options
@click.option("--upstream", "upstreams", multiple=True, metavar="NAME=URL")
@click.option("--all", "purge_all", is_flag=True, help="Empty the whole cache.")
@click.argument("targets", nargs=-1)
def purge(
    config_file: Path | None,
    cache_dir: Path | None,
    block_size: str | None,
    upstreams: tuple[str, ...],
    purge_all: bool,
    targets: tuple[str, ...],
) -> None:
    """Drop cached objects: upstream URLs or /<upstream>/<path> (a trailing * is a prefix)."""
    settings = _load(
        config_file, cache_dir=cache_dir, block_size=block_size, upstreams=list(upstreams)
    )
    if not targets and not purge_all:
        raise click.UsageError("name what to purge, or pass --all")
    store = _store(settings)
    try:
        if purge_all:
            count = store.purge("")
        else:
            count = 0
            for target in targets:
                if target.endswith("*"):
                    count += store.purge(_key_for(settings, target[:-1]))
                else:
                    key = _key_for(settings, target)
                    count += store.get_meta(key) is not None
                    store.delete_object(key)
    finally:
        store.close()
    click.echo(f"Purged {count} object(s).")


@main.command()
@settings_options
@click.option("--upstream", "upstreams", multiple=True, metavar="NAME=URL")
@click.option("--unpin", is_flag=True, help="Make the objects evictable again.")
@click.argument("targets", nargs=-1, required=True)
def pin(
    config_file: Path | None,
    cache_dir: Path | None,
    block_size: str | None,
    upstreams: tuple[str, ...],
    unpin: bool,
    targets: tuple[str, ...],
) -> None:
    """Exempt cached objects from eviction (warm them first: proxyd warm)."""
    settings = _load(
        config_file, cache_dir=cache_dir, block_size=block_size, upstreams=list(upstreams)
    )
    store = _store(settings)
    failed = 0
    try:
        for target in targets:
            key = _key_for(settings, target)
            if unpin:
                store.unpin(key)
                click.echo(f"unpinned {key}")
                continue
            try:
                moved = store.pin(key)
            except KeyError:
                click.echo(f"not cached (warm it first): {key}", err=True)
                failed += 1
                continue
            click.echo(f"pinned {key} ({format_size(moved)})")
    finally:
        store.close()
    if failed:
        sys.exit(1)


@main.command()
@click.option("--proxy", "proxy_url", required=True, help="URL of the running proxy.")
@click.option(
    "--urls",
    "url_file",
    type=click.File("r"),
    help="File of proxy paths or URLs to fetch, one per line ('-' for stdin).",
)
@click.option("--upstream", "upstream_name", help="Upstream (a butler repository) to query.")
@click.option(
    "--dataset-type",
    "dataset_types",
    multiple=True,
    help="Dataset type to warm.",
    shell_complete=complete_dataset_types,
)
@click.option(
    "--collections",
    multiple=True,
    help="Collections to search.",
    shell_complete=complete_collections,
)
@click.option("--where", default="", help="Query expression.", shell_complete=complete_where)
@click.option("--jobs", default=8, show_default=True, type=click.IntRange(1, 64))
@click.option("--token", envvar="BUTLER_TOKEN", help="Bearer token for the repository.")
def warm(
    proxy_url: str,
    url_file: Any,
    upstream_name: str | None,
    dataset_types: tuple[str, ...],
    collections: tuple[str, ...],
    where: str,
    jobs: int,
    token: str | None,
) -> None:
    """Fill the cache through a running proxy: a URL list, or a butler query's files."""
    from proxyd.warm import butler_query_urls, warm_urls

    base = proxy_url.rstrip("/") + "/"
    urls: list[str] = []
    if url_file is not None:
        for line in url_file:
            line = line.strip()
            if line and not line.startswith("#"):
                urls.append(line if "://" in line else base + line.lstrip("/"))
    if dataset_types:
        if not upstream_name:
            raise click.UsageError("--dataset-type needs --upstream (the repository's name)")
        urls += butler_query_urls(
            base + upstream_name + "/", dataset_types, collections, where, token
        )
    if not urls:
        raise click.UsageError("nothing to warm: give --urls or --upstream with --dataset-type")
    result = asyncio.run(warm_urls(urls, jobs, token))
    click.echo(
        f"Warmed {result.ok} of {len(urls)} URL(s), {format_size(result.bytes)}; "
        f"{len(result.failed)} failed"
    )
    for url, reason in result.failed:
        click.echo(f"  failed {url}: {reason}", err=True)
    if result.failed:
        sys.exit(1)


@main.command()
@click.argument("shell", type=click.Choice(["bash", "zsh", "fish"]))
def completion(shell: str) -> None:
    """Print the proxyd shell-completion script for SHELL (see `butler completion --help`)."""
    from butler.cli.completion import completion_script

    click.echo(completion_script(main, "proxyd", shell))


if __name__ == "__main__":
    main()
