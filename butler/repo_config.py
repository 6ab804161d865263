"""The repository's own config file (``butler.yaml``): format version, name, universe, template."""

from __future__ import annotations

import contextlib
import datetime
import os
import shutil
from collections.abc import Collection, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from butler.errors import RepositoryConfigError
from butler.universe import (
    DimensionUniverse,
    default_universe_path,
    safe_dump_yaml,
    safe_load_yaml,
)

CONFIG_NAME = "butler.yaml"
UNIVERSE_NAME = "dimensions.yaml"
REGISTRY_NAME = "registry.sqlite3"
FORMAT_VERSION = 1
DEFAULT_FILE_TEMPLATE = "{run}/{dataset_type}/{data_id_parent}/{dataset_type}_{data_id_flat}_{id}"
"""Where a dataset's file goes, relative to the root; the formatter's extension is appended.

Fields: ``run``, ``dataset_type``, ``id`` (the dataset's UUID), ``data_id_path`` (every
required data ID value, a directory each), ``data_id_parent`` (all but the last),
``data_id_flat`` (all, joined by ``_``) and ``dim_<name>`` (one value).

The last data ID value is in the file name only, not a directory of its own: a directory
per dataset cost a directory creation and, at each commit, a directory flush per dataset
(on the mirror bench, 2,000 directories for 2,000 files). Repositories keep the template
they were made with."""

_KNOWN_KEYS = {
    "format_version",
    "name",
    "created",
    "universe",
    "file_template",
    "description",
    "registry",
}


@dataclass(frozen=True)
class RepoConfig:
    root: Path
    name: str
    format_version: int
    universe_file: str
    file_template: str
    description: str = ""
    registry: str | None = None
    """The PostgreSQL URL of the registry's database; None: ``registry.sqlite3`` in root."""

    @property
    def registry_path(self) -> Path:
        return self.root / REGISTRY_NAME

    @property
    def registry_location(self) -> Path | str:
        """Where the registry is: the SQLite file's path, or the PostgreSQL URL."""
        return self.registry if self.registry is not None else self.registry_path

    def load_universe(self) -> DimensionUniverse:
        return DimensionUniverse.from_file(self.root / self.universe_file)


def load_repo_config(root: Path) -> RepoConfig:
    root = Path(root)
    path = root / CONFIG_NAME
    if not path.is_file():
        hint = (
            "create one with `butler create PATH`"
            if not root.exists() or not any(root.iterdir())
            else "is this the right directory?"
        )
        raise RepositoryConfigError(f"{root} is not a butler repository (no {CONFIG_NAME}); {hint}")
    try:
        data = safe_load_yaml(path.read_text())
    except yaml.YAMLError as exc:
        raise RepositoryConfigError(f"{path} is not valid YAML: {exc}") from exc
    if not isinstance(data, Mapping):
        raise RepositoryConfigError(f"{path}: expected a mapping of settings")
    unknown = set(data) - _KNOWN_KEYS
    if unknown:
        raise RepositoryConfigError(
            f"{path}: unknown settings {sorted(unknown)}; known: {sorted(_KNOWN_KEYS)}"
        )
    version = data.get("format_version")
    if version != FORMAT_VERSION:
        raise RepositoryConfigError(
            f"{path}: repository format version {version!r} is not supported by this butler "
            f"(it reads version {FORMAT_VERSION}); upgrade the butler package"
        )
    template = str(data.get("file_template", DEFAULT_FILE_TEMPLATE))
    if "{id}" not in template:
        raise RepositoryConfigError(
            f"{path}: file_template must contain '{{id}}' so every dataset has its own file"
        )
    registry = data.get("registry")
    if registry is not None and not (
        isinstance(registry, str) and registry.startswith(("postgresql:", "postgres:"))
    ):
        raise RepositoryConfigError(
            f"{path}: registry must be a postgresql:// URL (or absent, for registry.sqlite3 "
            f"in the repository), not {registry!r}"
        )
    return RepoConfig(
        root=root,
        name=str(data.get("name", root.name)),
        format_version=version,
        universe_file=str(data.get("universe", UNIVERSE_NAME)),
        file_template=template,
        description=str(data.get("description", "")),
        registry=registry,
    )


CREATING_MARK = ".butler-creating"
"""Present while a repository is created. ``butler.yaml`` is written last: until it is
there, the other files beside this mark are an unfinished creation's, which the next
creation in the same directory replaces (a creation killed half-way never blocks it)."""
_CREATION_FILES = frozenset(
    {
        CREATING_MARK,
        CONFIG_NAME + ".tmp",
        UNIVERSE_NAME,
        *(REGISTRY_NAME + suffix for suffix in ("", "-wal", "-shm", "-journal")),
    }
)


def check_new_repo_root(root: Path, tolerated: Collection[str] = ()) -> None:
    """Refuse to lay a new repository over anything: ``root`` must be missing or empty, but
    for the names in ``tolerated`` (the mirror's partial downloads), a ``.DS_Store`` and
    what an unfinished creation left."""
    if (root / CONFIG_NAME).exists():
        raise RepositoryConfigError(f"{root} already holds a butler repository")
    if not root.exists():
        return
    names = {p.name for p in root.iterdir()}
    allowed = {".DS_Store", *tolerated, *(_CREATION_FILES if CREATING_MARK in names else ())}
    if names - allowed:
        raise RepositoryConfigError(
            f"{root} exists and is not empty; choose a new or empty directory"
        )


@contextmanager
def new_repository_layout(
    root: Path,
    name: str | None = None,
    universe: Path | None = None,
    file_template: str = DEFAULT_FILE_TEMPLATE,
    description: str = "",
    tolerated: Collection[str] = (),
    registry: str | None = None,
) -> Iterator[RepoConfig]:
    """Lay out a new repository in ``root`` (created if missing) around its registry.

    The body creates the registry at the config's ``registry_path``. ``butler.yaml`` is
    written when it succeeds, last, so a repository is never seen half-made. When it fails,
    everything but ``tolerated`` is removed again. ``root`` must be missing or empty, but
    for the names in ``tolerated``.
    """
    root = Path(root)
    check_new_repo_root(root, tolerated)
    source_universe = Path(universe) if universe else default_universe_path()
    DimensionUniverse.from_file(source_universe)  # validate before writing anything
    existed = root.exists()
    root.mkdir(parents=True, exist_ok=True)
    mark = root / CREATING_MARK
    mark.touch()
    try:
        for leftover in _CREATION_FILES - {CREATING_MARK}:
            (root / leftover).unlink(missing_ok=True)
        shutil.copyfile(source_universe, root / UNIVERSE_NAME)
        config = RepoConfig(
            root=root,
            name=name or root.resolve().name,
            format_version=FORMAT_VERSION,
            universe_file=UNIVERSE_NAME,
            file_template=file_template,
            description=description,
            registry=registry,
        )
        yield config
        _write_config(config)
    except BaseException:
        _remove_all_but(root, tolerated, remove_root=not existed)
        raise
    mark.unlink()


def _write_config(config: RepoConfig) -> None:
    data = {
        "format_version": config.format_version,
        "name": config.name,
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "universe": config.universe_file,
        "file_template": config.file_template,
        "description": config.description,
    }
    if config.registry is not None:
        data["registry"] = config.registry
    tmp = config.root / (CONFIG_NAME + ".tmp")
    with open(tmp, "w") as f:
        f.write(
            "# Butler repository configuration (written by `butler create`).\n"
            + safe_dump_yaml(data)
        )
        f.flush()
        os.fsync(f.fileno())  # the registry it names is on disk already (SQLite synced it)
    os.replace(tmp, config.root / CONFIG_NAME)


def _remove_all_but(root: Path, kept: Collection[str], remove_root: bool) -> None:
    """Undo a failed repository creation, keeping the entries named in ``kept``."""
    for entry in root.iterdir():
        if entry.name in kept:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
    if remove_root:
        with contextlib.suppress(OSError):  # not empty: something kept is in it
            root.rmdir()


def repo_info(config: RepoConfig, extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    return {
        "name": config.name,
        "format_version": config.format_version,
        "file_template": config.file_template,
        "description": config.description,
        **(extra or {}),
    }
