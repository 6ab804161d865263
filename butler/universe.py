"""The dimension universe: which dimensions exist, how they relate, what their records hold.

Loaded from a YAML file (``config/dimensions.yaml`` by default; each repository keeps its own
copy). Names from the universe become SQL identifiers, so they are validated here, once.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml

from butler.errors import RepositoryConfigError

# In C where PyYAML has libyaml: opening a repository parses its universe, which took the
# pure-Python loader ~30 ms, and creating one writes it.
_SAFE_LOADER: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_SAFE_DUMPER: type[yaml.SafeDumper] = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


def safe_load_yaml(text: str) -> Any:
    """``yaml.safe_load``, in C where PyYAML has libyaml."""
    return yaml.load(text, Loader=_SAFE_LOADER)  # noqa: S506 - a safe loader, C or Python


def safe_dump_yaml(data: Any) -> str:
    """``yaml.safe_dump`` (keys in their order), in C where PyYAML has libyaml."""
    return yaml.dump(data, Dumper=_SAFE_DUMPER, sort_keys=False)


ValueKind = Literal["int", "float", "str"]
_IDENTIFIER = re.compile(r"^[a-z][a-z0-9_]*$")
_KINDS: dict[str, ValueKind] = {"int": "int", "float": "float", "str": "str"}


def default_universe_path() -> Path:
    """The packaged default universe (the same file as ``config/dimensions.yaml``)."""
    return Path(str(resources.files("butler") / "defaults" / "dimensions.yaml"))


def _memoised(
    table: dict[frozenset[str], tuple[str, ...]],
    key: frozenset[str],
    compute: Callable[[frozenset[str]], tuple[str, ...]],
) -> tuple[str, ...]:
    """``compute(key)``, worked out once per key (closures are asked for per dataset)."""
    found = table.get(key)
    if found is None:
        found = table[key] = compute(key)
    return found


@dataclass(frozen=True)
class DimensionElement:
    """One dimension (``visit``) and the table of its records."""

    name: str
    key_name: str
    key_kind: ValueKind
    requires: tuple[str, ...]
    """Dimensions directly part of this one's identity (``instrument`` for ``visit``)."""
    implies: tuple[str, ...]
    """Dimensions whose values a record of this one determines (``physical_filter``)."""
    fields: dict[str, ValueKind] = field(default_factory=dict)


class DimensionUniverse:
    """All dimension elements, in a canonical order (requirements before dependents)."""

    def __init__(self, config: Mapping[str, Any], source: str = "<config>") -> None:
        self.source = source
        self.config = dict(config)
        elements_cfg = config.get("elements")
        if not isinstance(elements_cfg, Mapping) or not elements_cfg:
            raise RepositoryConfigError(f"{source}: 'elements' must be a non-empty mapping")
        self.version = int(config.get("version", 1))
        self.namespace = str(config.get("namespace", "default"))
        self.elements: dict[str, DimensionElement] = {}
        # The universe never changes once built, and closures are asked for per data ID
        # (every ingest and every record a mirror copies), so each is computed once.
        self._order: tuple[str, ...] | None = None
        self._required: dict[frozenset[str], tuple[str, ...]] = {}
        self._implied: dict[frozenset[str], tuple[str, ...]] = {}
        for name, spec in elements_cfg.items():
            self.elements[name] = self._parse_element(name, spec or {})
        self._check_references()
        self.names: tuple[str, ...] = self._sorted(self.elements)

    def _parse_element(self, name: str, spec: Mapping[str, Any]) -> DimensionElement:
        where = f"{self.source}: dimension {name!r}"
        _check_identifier(name, where)
        key = spec.get("key") or {}
        key_name = str(key.get("name", "id"))
        _check_identifier(key_name, where)
        key_kind = _KINDS.get(str(key.get("type", "int")))
        if key_kind is None or key_kind == "float":
            raise RepositoryConfigError(f"{where}: key type must be 'int' or 'str'")
        fields: dict[str, ValueKind] = {}
        for fname, ftype in (spec.get("fields") or {}).items():
            _check_identifier(fname, where)
            kind = _KINDS.get(str(ftype))
            if kind is None:
                raise RepositoryConfigError(f"{where}: field {fname!r} has unknown type {ftype!r}")
            fields[fname] = kind
        return DimensionElement(
            name=name,
            key_name=key_name,
            key_kind=key_kind,
            requires=tuple(spec.get("requires") or ()),
            implies=tuple(spec.get("implies") or ()),
            fields=fields,
        )

    def _check_references(self) -> None:
        for element in self.elements.values():
            for other in element.requires + element.implies:
                if other not in self.elements:
                    raise RepositoryConfigError(
                        f"{self.source}: dimension {element.name!r} refers to unknown "
                        f"dimension {other!r}"
                    )
            clash = set(element.fields) & (
                set(self.required_closure([element.name])) | set(element.implies)
            )
            if clash or element.key_name in element.fields:
                raise RepositoryConfigError(
                    f"{self.source}: dimension {element.name!r} has fields named like "
                    f"its keys: {sorted(clash | ({element.key_name} & set(element.fields)))}"
                )

    def _sorted(self, names: Iterable[str]) -> tuple[str, ...]:
        """Topological order (required and implied dimensions first), stable by config order."""
        if self._order is None:
            self._order = self._topological_order()
        wanted = set(names)
        return tuple(n for n in self._order if n in wanted)

    def _topological_order(self) -> tuple[str, ...]:
        order: list[str] = []
        visiting: set[str] = set()

        def visit(name: str) -> None:
            if name in order:
                return
            if name in visiting:
                raise RepositoryConfigError(f"{self.source}: dimension cycle through {name!r}")
            visiting.add(name)
            element = self.elements[name]
            for dep in element.requires + element.implies:
                visit(dep)
            visiting.discard(name)
            order.append(name)

        for name in self.elements:
            visit(name)
        return tuple(order)

    # -- closures -------------------------------------------------------------------------

    def __getitem__(self, name: str) -> DimensionElement:
        return self.elements[name]

    def __contains__(self, name: object) -> bool:
        return name in self.elements

    def required_closure(self, names: Iterable[str]) -> tuple[str, ...]:
        """``names`` plus everything they require, recursively, in canonical order."""
        return _memoised(self._required, frozenset(names), self._required_closure)

    def _required_closure(self, names: Iterable[str]) -> tuple[str, ...]:
        found: set[str] = set()
        pending = list(names)
        while pending:
            name = pending.pop()
            if name not in found:
                found.add(name)
                pending.extend(self.elements[name].requires)
        return self._sorted(found)

    def implied_closure(self, names: Iterable[str]) -> tuple[str, ...]:
        """Dimensions implied by ``names`` (and by what those imply), minus the required ones."""
        return _memoised(self._implied, frozenset(names), self._implied_closure)

    def _implied_closure(self, names: Iterable[str]) -> tuple[str, ...]:
        required = set(self.required_closure(names))
        found: set[str] = set()
        pending = [i for n in required for i in self.elements[n].implies]
        while pending:
            name = pending.pop()
            if name in found or name in required:
                continue
            found.add(name)
            element = self.elements[name]
            pending.extend(element.implies)
            pending.extend(r for r in element.requires if r not in required)
        return self._sorted(found)

    def table_columns(self, name: str) -> list[tuple[str, ValueKind]]:
        """Columns of an element's record table: required dims, key, implied dims, fields."""
        element = self.elements[name]
        columns: list[tuple[str, ValueKind]] = [
            (dim, self.elements[dim].key_kind)
            for dim in self.required_closure([name])
            if dim != name
        ]
        columns.append((element.key_name, element.key_kind))
        columns.extend((dim, self.elements[dim].key_kind) for dim in element.implies)
        columns.extend(element.fields.items())
        return columns

    def validate_dimensions(self, names: Iterable[str], what: str) -> tuple[str, ...]:
        names = list(names)
        unknown = [n for n in names if n not in self.elements]
        if unknown:
            raise RepositoryConfigError(
                f"{what}: unknown dimensions {unknown}; the universe has {list(self.names)}"
            )
        return self.required_closure(names)

    # -- persistence ----------------------------------------------------------------------

    @classmethod
    def from_file(cls, path: Path) -> DimensionUniverse:
        try:
            text = Path(path).read_text()
        except OSError as exc:
            raise RepositoryConfigError(f"cannot read dimension universe {path}: {exc}") from exc
        try:
            config = safe_load_yaml(text)
        except yaml.YAMLError as exc:
            raise RepositoryConfigError(f"{path} is not valid YAML: {exc}") from exc
        if not isinstance(config, Mapping):
            raise RepositoryConfigError(f"{path}: expected a mapping at the top level")
        return cls(config, source=str(path))

    @classmethod
    def default(cls) -> DimensionUniverse:
        return cls.from_file(default_universe_path())


def _check_identifier(name: str, where: str) -> None:
    if not isinstance(name, str) or not _IDENTIFIER.match(name):
        raise RepositoryConfigError(
            f"{where}: {name!r} is not a valid name (lower-case letters, digits and '_', "
            "starting with a letter)"
        )
