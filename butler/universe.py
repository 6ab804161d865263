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
FieldType = Literal["int", "float", "str", "bool", "tai", "region", "bbox"]
"""What a record field holds; its :data:`ValueKind` is how SQL and ``where`` see it."""
_IDENTIFIER = re.compile(r"^[a-z][a-z0-9_]*\Z")  # \Z: "$" also matches before a final newline
_KINDS: dict[str, ValueKind] = {"int": "int", "float": "float", "str": "str"}
# Field types of the file (``bool``) and those ``region``/``timespan`` add, by value kind:
# a bool is stored 0/1, a TAI time as integer nanoseconds, a region as hex text.
_FIELD_KINDS: dict[FieldType, ValueKind] = {
    "int": "int",
    "float": "float",
    "str": "str",
    "bool": "int",
    "tai": "int",
    "region": "str",
    "bbox": "float",
}
REGION_FIELDS = ("region", "region_ra_min", "region_ra_max", "region_dec_min", "region_dec_max")
TIMESPAN_FIELDS = ("timespan_begin", "timespan_end")


def q(name: str) -> str:
    """A validated universe name quoted as an SQL identifier (``group`` is an SQL keyword)."""
    return f'"{name}"'


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
    field_types: dict[str, FieldType] = field(default_factory=dict)
    """Each field's type, finer than its kind (``bool``, ``tai``, ``region``, ``bbox``)."""
    alternate_keys: tuple[str, ...] = ()
    region: bool = False
    timespan: bool = False

    @property
    def has_key(self) -> bool:
        """False for a relation between dimensions (``visit_detector_region``), which is
        identified by the dimensions it requires and is no dimension of a data ID."""
        return bool(self.key_name)


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
        """Every element, in canonical order."""
        self.dimensions: tuple[str, ...] = tuple(n for n in self.names if self[n].has_key)
        """The elements a data ID can name (those with a key of their own)."""
        daf = config.get("daf_butler") or {}
        self.daf_butler_version: int | None = (
            int(daf["version"]) if isinstance(daf, Mapping) and "version" in daf else None
        )
        """The LSST butler universe version this one holds without loss (None: unknown)."""

    def _parse_element(self, name: str, spec: Mapping[str, Any]) -> DimensionElement:
        where = f"{self.source}: dimension {name!r}"
        _check_identifier(name, where)
        if "key" in spec and spec["key"] is None:
            key_name = ""  # a relation: identified by the dimensions it requires
            key_kind: ValueKind = "int"
            if not spec.get("requires") or spec.get("implies"):
                raise RepositoryConfigError(
                    f"{where}: an element without a key must require dimensions and imply none"
                )
        else:
            key = spec.get("key") or {}
            key_name = str(key.get("name", "id"))
            _check_identifier(key_name, where)
            found_kind = _KINDS.get(str(key.get("type", "int")))
            if found_kind is None or found_kind == "float":
                raise RepositoryConfigError(f"{where}: key type must be 'int' or 'str'")
            key_kind = found_kind
        types: dict[str, FieldType] = {}
        for fname, ftype in (spec.get("fields") or {}).items():
            _check_identifier(fname, where)
            if str(ftype) not in ("int", "float", "str", "bool"):
                raise RepositoryConfigError(f"{where}: field {fname!r} has unknown type {ftype!r}")
            types[fname] = ftype
        region = bool(spec.get("region", False))
        timespan = bool(spec.get("timespan", False))
        added: list[tuple[str, FieldType]] = []
        if region:
            added += [("region", "region"), *((f, "bbox") for f in REGION_FIELDS[1:])]
        if timespan:
            added += [(f, "tai") for f in TIMESPAN_FIELDS]
        for fname, ftype in added:
            if fname in types:
                raise RepositoryConfigError(
                    f"{where}: field {fname!r} is added by 'region'/'timespan'; do not list it"
                )
            types[fname] = ftype
        alternate = tuple(str(a) for a in spec.get("alternate_keys") or ())
        for alt in alternate:
            if alt not in types:
                raise RepositoryConfigError(f"{where}: alternate key {alt!r} is not a field")
        return DimensionElement(
            name=name,
            key_name=key_name,
            key_kind=key_kind,
            requires=tuple(spec.get("requires") or ()),
            implies=tuple(spec.get("implies") or ()),
            fields={f: _FIELD_KINDS[t] for f, t in types.items()},
            field_types=types,
            alternate_keys=alternate,
            region=region,
            timespan=timespan,
        )

    def _check_references(self) -> None:
        for element in self.elements.values():
            for other in element.requires + element.implies:
                if other not in self.elements:
                    raise RepositoryConfigError(
                        f"{self.source}: dimension {element.name!r} refers to unknown "
                        f"dimension {other!r}"
                    )
                if not self.elements[other].has_key:
                    raise RepositoryConfigError(
                        f"{self.source}: dimension {element.name!r} refers to "
                        f"{other!r}, which has no key"
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
        if element.has_key:
            columns.append((element.key_name, element.key_kind))
        columns.extend((dim, self.elements[dim].key_kind) for dim in element.implies)
        columns.extend(element.fields.items())
        return columns

    def validate_dimensions(self, names: Iterable[str], what: str) -> tuple[str, ...]:
        names = list(names)
        unknown = [n for n in names if n not in self.elements or not self[n].has_key]
        if unknown:
            raise RepositoryConfigError(
                f"{what}: unknown dimensions {unknown}; the universe has {list(self.dimensions)}"
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
