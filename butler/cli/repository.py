"""The repository a ``butler`` command works on: a local path or an ``http(s)://`` URL.

Every command that names a repository takes ``REPO`` through :data:`repo_argument`, which
keeps URLs as they are (``click.Path`` would fold ``http://h:1/`` into ``http:/h:1``) and
expands ``~`` in paths, and adds ``--token-file`` for servers that want a bearer token
(``BUTLER_TOKEN`` in the environment is read when the option is not given). Commands open
the repository with :func:`open_repository`, so a URL reaches ``Butler(url, token=...)``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from butler.butler import Butler, is_remote_uri
from butler.cli.completion import TOKEN_FILE_META_KEY

F = TypeVar("F", bound=Callable[..., Any])

Repository = Path | str
"""A local repository's path, or a server's (or proxy's) URL kept as a string."""

# ``--token-file`` leaves its value in ``click.Context.meta`` for :func:`open_repository`
# rather than being a parameter of each command, which every command would only pass on.
_TOKEN_FILE_KEY = TOKEN_FILE_META_KEY


class RepositoryParamType(click.ParamType[Repository, Any]):
    """A local directory (``~`` expanded) or an ``http(s)://`` URL, left untouched."""

    name = "repository"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> Repository:
        if isinstance(value, Path):
            return value
        if is_remote_uri(value):
            return str(value)
        text = str(value)
        if "://" in text:
            self.fail(
                f"{text!r} is neither a local path nor an http(s):// URL "
                "(repository servers and proxies are reached over http or https)",
                param,
                ctx,
            )
        path = Path(text).expanduser()
        if path.exists() and not path.is_dir():
            self.fail(f"{text!r} is a file; a repository is a directory or a URL", param, ctx)
        return path


def _keep_token_file(ctx: click.Context, param: click.Parameter, value: Path | None) -> Path | None:
    if value is not None:
        ctx.meta[_TOKEN_FILE_KEY] = value
    return value


token_file_option = click.option(
    "--token-file",
    "token_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    callback=_keep_token_file,
    expose_value=False,
    is_eager=True,
    help="File holding the bearer token for a repository URL (default: $BUTLER_TOKEN).",
)


def repo_argument(func: F) -> F:
    """``REPO`` (a path or a URL) and ``--token-file`` for a command."""
    func = token_file_option(func)
    return click.argument("repo", type=RepositoryParamType())(func)


def given_token_file(ctx: click.Context | None = None) -> Path | None:
    """The ``--token-file`` given to the running command, if any."""
    ctx = ctx or click.get_current_context(silent=True)
    if ctx is None:
        return None
    value = ctx.meta.get(_TOKEN_FILE_KEY)  # ``meta`` is shared by nested contexts
    return value if isinstance(value, Path) else None


def open_repository(repo: Repository, **options: Any) -> Butler:
    """``Butler(repo, **options)``; a URL also gets the ``--token-file`` given, if any."""
    if is_remote_uri(repo):
        token_file = given_token_file()
        if token_file is not None:
            options.setdefault("token_file", str(token_file))
    return Butler(repo, **options)


def _names_a_url(repo: Repository) -> bool:
    """A URL, or a path that was one before ``click.Path`` folded its ``//`` into ``/``."""
    if is_remote_uri(repo):
        return True
    parts = Path(repo).parts
    return bool(parts) and parts[0] in ("http:", "https:")


def local_only(repo: Repository, command: str, why: str) -> Path:
    """``repo`` as a local path, or a usage error saying why ``command`` needs one."""
    if _names_a_url(repo):
        raise click.UsageError(f"butler {command} works on a local repository path only: {why}")
    return Path(repo)
