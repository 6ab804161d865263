"""Shell completion for ``butler``, ``mirror`` and ``proxyd warm`` through click.

Callbacks find the repository named earlier on the same command line (``REPO``,
``SOURCE``, ``--proxy`` + ``--upstream``, or a mirror's ``DEST``) and offer its dataset
types, collections, dimensions and values, from the shared completion cache.
``butler completion bash|zsh|fish`` prints the script click generates for a program, with
its bash function made to see URLs whole (see ``BASH_SOURCE``).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from click.shell_completion import BashComplete, CompletionItem, get_completion_class

if TYPE_CHECKING:
    # Imported where a completion runs: every command's start-up imports this module, and
    # the repository clients behind completions (aiohttp, numpy) cost it a quarter second.
    from butler.interactive.repository_completions import RepositoryCompletions

Completer = Callable[[click.Context, click.Parameter, str], list[CompletionItem]]
SHELLS = ("bash", "zsh", "fish")
TOKEN_FILE_META_KEY = "butler.token_file"  # noqa: S105 - a dictionary key, not a secret
"""Where ``butler``'s ``--token-file`` leaves its value in ``click.Context.meta`` (the option
is not passed to each command function; see ``butler.cli.repository``)."""


def _token(params: dict[str, Any]) -> str | None:
    token = params.get("token")
    if token:
        return str(token)
    token_file = params.get("token_file")
    if token_file:
        try:
            return Path(token_file).read_text().strip()
        except OSError:
            return None
    return os.environ.get("BUTLER_TOKEN") or None


def given_params(ctx: click.Context) -> dict[str, Any]:
    """The values typed so far, positional arguments included.

    When the word being completed is an option's value, click's resilient parse stops at
    that option and leaves the positional arguments before it unassigned in ``ctx.args``;
    they are assigned here in the command's order.
    """
    params = dict(ctx.params)
    leftover = list(ctx.args)
    for param in ctx.command.params:
        if not isinstance(param, click.Argument) or not leftover:
            continue
        if params.get(param.name or "") not in (None, ()):
            continue
        if param.nargs == 1:
            params[param.name or ""] = leftover.pop(0)
        else:
            params[param.name or ""] = tuple(leftover)
            leftover = []
    return params


def repository_target(ctx: click.Context) -> tuple[str, str | None] | None:
    """(repository path or URL, token) named earlier on the command line, if any."""
    params = given_params(ctx)
    if not params.get("token_file") and ctx.meta.get(TOKEN_FILE_META_KEY):
        params["token_file"] = ctx.meta[TOKEN_FILE_META_KEY]
    token = _token(params)
    for name in ("repo", "source"):
        if params.get(name):
            return str(params[name]), token
    if params.get("proxy_url") and params.get("upstream_name"):
        base = str(params["proxy_url"]).rstrip("/")
        return f"{base}/{params['upstream_name']}/", token
    if params.get("dest") and Path(params["dest"]).is_dir():
        return str(params["dest"]), token
    return None


@contextmanager
def _repository(ctx: click.Context) -> Iterator[RepositoryCompletions | None]:
    target = repository_target(ctx)
    if target is None:
        yield None
        return
    from butler.interactive.repository_completions import RepositoryCompletions

    source = RepositoryCompletions(*target)
    try:
        yield source
    finally:
        source.close()


def _dataset_types_given(ctx: click.Context) -> list[str]:
    params = given_params(ctx)
    given = params.get("dataset_type") or params.get("dataset_types") or ()
    return [given] if isinstance(given, str) else list(given)


def _collections_given(ctx: click.Context) -> list[str] | None:
    given = ctx.params.get("collections") or ()
    return list(given) or None


def _items(values: Sequence[str], incomplete: str) -> list[CompletionItem]:
    return [CompletionItem(v) for v in values if v.startswith(incomplete)]


def complete_dataset_types(
    ctx: click.Context, param: click.Parameter, incomplete: str
) -> list[CompletionItem]:
    with _repository(ctx) as repo:
        if repo is None:
            return []
        return [
            CompletionItem(t.name, help=f"{', '.join(t.dimensions)} -> {t.storage_class}")
            for t in repo.dataset_types()
            if t.name.startswith(incomplete)
        ]


def complete_collections(
    ctx: click.Context, param: click.Parameter, incomplete: str
) -> list[CompletionItem]:
    with _repository(ctx) as repo:
        return [] if repo is None else _items(repo.collections(), incomplete)


def complete_dimensions(
    ctx: click.Context, param: click.Parameter, incomplete: str
) -> list[CompletionItem]:
    with _repository(ctx) as repo:
        if repo is None:
            return []
        return _items(repo.dimensions(_dataset_types_given(ctx)), incomplete)


def complete_where(
    ctx: click.Context, param: click.Parameter, incomplete: str
) -> list[CompletionItem]:
    """Dimension names, then their values (narrowed by the AND-ed predicates before)."""
    with _repository(ctx) as repo:
        if repo is None:
            return []
        dataset_types = _dataset_types_given(ctx)
        collections = _collections_given(ctx)
        names = repo.dimensions(dataset_types)

        def values_of(dimension: str, context: str) -> list[Any]:
            return repo.values(
                dimension,
                context,
                dataset_types[0] if len(dataset_types) == 1 else None,
                collections,
            )

        from butler.interactive.where_completion import where_candidates

        return [CompletionItem(c) for c in where_candidates(incomplete, names, values_of)]


def complete_data_id(
    ctx: click.Context, param: click.Parameter, incomplete: str
) -> list[CompletionItem]:
    """``KEY=VALUE`` pairs: dimension names, then that dimension's values."""
    with _repository(ctx) as repo:
        if repo is None:
            return []
        dataset_types = _dataset_types_given(ctx)
        key, sep, typed = incomplete.partition("=")
        if not sep:
            return _items([f"{d}=" for d in repo.dimensions(dataset_types)], incomplete)
        values = repo.values(key, "", dataset_types[0] if dataset_types else None)
        return _items([f"{key}={v}" for v in values], incomplete)


# Click's bash function hands click ``COMP_WORDS``, which bash split at every character of
# ``COMP_WORDBREAKS`` - ':' included by default - so ``http://host:8642/`` reached click as
# five words and every completion after a URL was lost. This function hands click the line
# up to the cursor instead (click splits it as a shell does), with COMP_CWORD -1 (the last
# word is the one completed; click indexes from the end) or, after whitespace, past the
# end (a new, empty word). Bash then replaces only the part of the word after its last
# break character, so that part of the word typed so far is taken off each candidate, as
# bash-completion's __ltrim_colon_completions does.
BASH_SOURCE = """\
%(complete_func)s() {
    local IFS=$'\\n'
    local response
    local line=${COMP_LINE:0:COMP_POINT}
    local cword=-1
    if [[ -z ${COMP_WORDS[COMP_CWORD]} && ${line: -1} == [[:space:]] ]]; then
        cword=1000000
    fi
    local word=${line##*[[:space:]]}
    local cur=${COMP_WORDS[COMP_CWORD]}
    local typed=
    if [[ $word == *"$cur" ]]; then
        typed=${word%%"$cur"}
    fi

    response=$(env COMP_WORDS="$line" COMP_CWORD=$cword %(complete_var)s=bash_complete $1)

    for completion in $response; do
        IFS=',' read type value <<< "$completion"

        if [[ $type == 'dir' ]]; then
            COMPREPLY=()
            compopt -o dirnames
        elif [[ $type == 'file' ]]; then
            COMPREPLY=()
            compopt -o default
        elif [[ $type == 'plain' ]]; then
            COMPREPLY+=("${value#"$typed"}")
        fi
    done

    return 0
}

%(complete_func)s_setup() {
    complete -o nosort -F %(complete_func)s %(prog_name)s
}

%(complete_func)s_setup;
"""


class UrlAwareBashComplete(BashComplete):
    """Click's bash completion with the function above."""

    source_template = BASH_SOURCE


def completion_script(cli: click.Command, prog_name: str, shell: str) -> str:
    """The script that makes ``shell`` complete ``prog_name`` (click's own source, with the
    bash function of ``BASH_SOURCE``)."""
    cls = UrlAwareBashComplete if shell == "bash" else get_completion_class(shell)
    if cls is None:
        raise click.BadParameter(f"no completion for {shell!r}; choose from {', '.join(SHELLS)}")
    complete_var = "_{}_COMPLETE".format(prog_name.replace("-", "_").upper())
    return cls(cli, {}, prog_name, complete_var).source()


def completion_command(prog_name: str) -> click.Command:
    """A ``completion SHELL`` subcommand printing the completion script of ``prog_name``."""

    @click.command("completion")
    @click.argument("shell", type=click.Choice(SHELLS))
    @click.pass_context
    def completion(ctx: click.Context, shell: str) -> None:
        root = ctx.find_root().command
        click.echo(completion_script(root, prog_name, shell))

    completion.help = (
        f"Print the {prog_name} shell-completion script for SHELL.\n\n"
        f'bash: eval "$({prog_name} completion bash)" in ~/.bashrc; zsh: the same with '
        f"zsh in ~/.zshrc; fish: {prog_name} completion fish > "
        f"~/.config/fish/completions/{prog_name}.fish"
    )
    return completion
