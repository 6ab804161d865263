"""JSON and YAML formatters for the ``Dict`` storage class.

Only plain data is written: mappings, lists, strings, numbers, booleans and null (and, in
YAML, dates). numpy scalars are converted to the Python number they hold and numpy arrays to
(nested) lists, tuples become lists; anything else is refused with the path of the offending
value, so a file never holds something that reads back as a different type than expected
without the user having been told. YAML is read and written with the safe loader and dumper
only: reading can never construct arbitrary Python objects.

Documents are bounded so that storing or reading one cannot exhaust the stack or memory:
lists and mappings nest at most :data:`MAX_NESTING` deep (deeper input raises
``RecursionError`` in parsers and serialisers), and YAML aliases may not add more than
:data:`MAX_ALIAS_NODES` nodes to a document (a "billion laughs" document of a few hundred
bytes expands to 10^9 nodes wherever it is serialised again) nor refer to a collection that
contains them. The butler writes YAML without aliases.
"""

from __future__ import annotations

import datetime
import json
from abc import abstractmethod
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, ClassVar, cast

import numpy as np
import yaml

from butler.errors import CorruptFileError, StorageClassError
from butler.formatters.base import FileIndex, Formatter
from butler.io.source import ByteSource

__all__ = [
    "MAX_ALIAS_NODES",
    "MAX_NESTING",
    "nests_deeper_than",
    "JsonFormatter",
    "YamlFormatter",
    "load_json_mapping",
    "to_builtin",
]

_SCALARS = (str, int, float, bool, type(None))

MAX_NESTING = 100
"""Deepest nesting of lists and mappings stored (real metadata nests a few levels)."""

MAX_ALIAS_NODES = 100_000
"""Most nodes YAML aliases may add to a document when expanded."""


def to_builtin(
    obj: Any, *, fmt: str = "JSON", path: str = "$", allow_dates: bool = False, depth: int = 0
) -> Any:
    """A copy of ``obj`` made of builtin types only (see the module doc), or StorageClassError.

    ``fmt`` names the target format in error messages; ``allow_dates`` keeps ``datetime``
    and ``date`` values (YAML represents them natively). ``depth`` is how many lists and
    mappings hold ``obj``.
    """
    if isinstance(obj, bool | np.bool_):
        return bool(obj)
    if isinstance(obj, _SCALARS):
        return obj
    if isinstance(obj, np.generic):
        if obj.dtype.kind in "OV":
            raise StorageClassError(f"{path}: numpy {obj.dtype} value cannot be stored as {fmt}.")
        if obj.dtype.kind == "c":
            raise StorageClassError(
                f"{path}: complex number {obj!r} cannot be stored as {fmt}; store the real and "
                "imaginary parts separately."
            )
        return obj.item()
    if isinstance(obj, complex):
        raise StorageClassError(
            f"{path}: complex number {obj!r} cannot be stored as {fmt}; store the real and "
            "imaginary parts separately."
        )
    if allow_dates and isinstance(obj, datetime.date):
        return obj
    if isinstance(obj, np.ndarray):
        if obj.dtype.kind in "OVc":
            raise StorageClassError(
                f"{path}: numpy array of {obj.dtype} cannot be stored as {fmt}; "
                "use the 'Array' storage class (.npy) for arrays."
            )
        return obj.tolist()
    if isinstance(obj, Mapping | list | tuple) and depth >= MAX_NESTING:
        raise StorageClassError(
            f"{path}: lists and mappings nest more than {MAX_NESTING} levels deep here (or a "
            f"container holds itself); {fmt} documents are limited to {MAX_NESTING} levels."
        )
    if isinstance(obj, Mapping):
        out: dict[Any, Any] = {}
        for key, value in obj.items():
            if isinstance(key, np.generic):
                key = key.item()
            if fmt == "JSON" and not isinstance(key, str):
                raise StorageClassError(
                    f"{path}: key {key!r} is a {type(key).__name__}; JSON object keys are "
                    "strings (it would read back as a string). Use string keys or YAML."
                )
            if not isinstance(key, str | int | float | bool):
                raise StorageClassError(f"{path}: key {key!r} cannot be stored as {fmt}.")
            out[key] = to_builtin(
                value, fmt=fmt, path=f"{path}[{key!r}]", allow_dates=allow_dates, depth=depth + 1
            )
        return out
    if isinstance(obj, list | tuple):
        return [
            to_builtin(v, fmt=fmt, path=f"{path}[{i}]", allow_dates=allow_dates, depth=depth + 1)
            for i, v in enumerate(obj)
        ]
    raise StorageClassError(
        f"{path}: {type(obj).__module__}.{type(obj).__qualname__} value {obj!r:.80} cannot be "
        f"stored as {fmt}; convert it to a string, number, list or dict first."
    )


def _too_deep(value: Any) -> bool:
    """True if lists and dicts nest more than :data:`MAX_NESTING` deep in ``value``."""
    return nests_deeper_than(value, MAX_NESTING)


def nests_deeper_than(value: Any, limit: int) -> bool:
    """True if lists and dicts nest more than ``limit`` levels deep in ``value`` (parsed JSON
    or YAML). Iterative, so it measures any depth a parser managed to build."""
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        children: Iterable[Any]
        if isinstance(item, dict):
            children = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth >= limit:
            return True
        stack.extend((child, depth + 1) for child in children)
    return False


class _TooDeepError(ValueError):
    """A parsed document nests more than :data:`MAX_NESTING` deep."""


def _nesting_error(name: str, fmt: str) -> CorruptFileError:
    return CorruptFileError(
        f"{name}: {fmt} lists and mappings nest more than {MAX_NESTING} levels deep; the "
        f"butler stores documents of at most {MAX_NESTING} levels. Flatten the document."
    )


def _refusal(problem: str, event: yaml.Event) -> yaml.composer.ComposerError:
    """A YAML error pointing at ``event`` (its message shows the line and column)."""
    mark = cast("yaml.error.Mark | None", event.start_mark)
    return yaml.composer.ComposerError(problem=problem, problem_mark=mark)


class _BoundedYamlLoader(yaml.SafeLoader):
    """The safe loader, refusing documents that nest too deep or whose aliases expand too much.

    While composing, every finished node records its expanded size (nodes, aliases counted
    in full) and height (nesting of collections below it), so an alias is measured in O(1)
    before it is accepted: the check costs no more than composing the document did.
    """

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0
        self._measures: dict[int, tuple[int, int]] = {}  # id(node) -> (size, height)
        self._alias_nodes = 0

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        event: yaml.Event = self.peek_event()  # type: ignore[no-untyped-call]
        if isinstance(event, yaml.AliasEvent):
            self._check_alias(event)
            return super().compose_node(parent, index)
        collection = isinstance(event, yaml.SequenceStartEvent | yaml.MappingStartEvent)
        if collection and self._depth >= MAX_NESTING:
            raise _refusal(f"lists and mappings nest more than {MAX_NESTING} levels deep", event)
        self._depth += collection
        try:
            node = super().compose_node(parent, index)
        finally:
            self._depth -= collection
        if node is not None:
            self._measures[id(node)] = self._measure(node)
        return node

    def _check_alias(self, event: yaml.AliasEvent) -> None:
        target = self.anchors.get(event.anchor) if event.anchor is not None else None
        if target is None:
            return  # the composer reports the undefined alias
        measure = self._measures.get(id(target))
        if measure is None:
            raise _refusal(
                f"alias *{event.anchor} refers to a collection that contains it (a recursive "
                "structure, which has no JSON or plain-data form)",
                event,
            )
        size, height = measure
        self._alias_nodes += size
        if self._alias_nodes > MAX_ALIAS_NODES:
            raise _refusal(
                f"aliases expand the document by more than {MAX_ALIAS_NODES} nodes (a "
                '"billion laughs" document?); write the values out instead of aliasing them',
                event,
            )
        if self._depth + height > MAX_NESTING:
            raise _refusal(
                f"alias *{event.anchor} makes lists and mappings nest more than "
                f"{MAX_NESTING} levels deep",
                event,
            )

    def _measure(self, node: yaml.Node) -> tuple[int, int]:
        if isinstance(node, yaml.SequenceNode):
            children = list(node.value)
        elif isinstance(node, yaml.MappingNode):
            children = [child for pair in node.value for child in pair]
        else:
            return 1, 0
        measures = [self._measures[id(child)] for child in children]
        return 1 + sum(m[0] for m in measures), 1 + max((m[1] for m in measures), default=0)


class _PlainYamlDumper(yaml.SafeDumper):
    """The safe dumper, writing a value held twice twice: stored YAML has no aliases."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


class _StructuredFormatter(Formatter):
    storage_class: ClassVar[str] = "Dict"
    format_name: ClassVar[str]

    @abstractmethod
    def _dump(self, obj: dict[str, Any]) -> str:
        """Text of ``obj`` in this format."""

    @abstractmethod
    def _load(self, text: str) -> Any:
        """The object a text in this format holds (safe loaders only)."""

    def write(self, obj: Any, path: Path) -> None:
        if not isinstance(obj, Mapping):
            raise StorageClassError(f"{self.name} stores a dict, got {type(obj).__name__}.")
        path.write_text(self._dump(dict(obj)), encoding="utf-8")

    def _parse(self, raw: bytes, name: str) -> dict[str, Any]:
        try:
            text = raw.decode("utf-8")
            value = self._load(text)
        except RecursionError:
            # The parser gave up before building it: far deeper than the limit.
            raise _nesting_error(name, self.format_name) from None
        except _TooDeepError:
            raise _nesting_error(name, self.format_name) from None
        except (UnicodeDecodeError, ValueError, yaml.YAMLError) as exc:
            raise CorruptFileError(f"{name}: not valid {self.format_name}: {exc}") from exc
        if value is None and self.format_name == "YAML":
            return {}  # an empty YAML document
        if not isinstance(value, dict):
            raise CorruptFileError(
                f"{name}: holds a {type(value).__name__}, not a {self.format_name} mapping"
            )
        return value

    def index(self, path: Path) -> FileIndex:
        # Parsing here refuses a broken file before it is recorded in the registry.
        self._parse(path.read_bytes(), str(path))
        return {"format": self.name}

    def read(
        self,
        source: ByteSource,
        index: Mapping[str, Any],
        *,
        component: str | None = None,
        parameters: Mapping[str, Any] | None = None,
    ) -> Any:
        self.check_request(component, parameters)
        return self._parse(source.read(0, source.size), source.name)


class JsonFormatter(_StructuredFormatter):
    """``Dict`` <-> JSON (UTF-8). Keys must be strings; NaN/Infinity are written as
    Python's ``json`` does (``NaN``), which Python and most scientific tools read back."""

    name: ClassVar[str] = "json"
    extension: ClassVar[str] = ".json"
    format_name: ClassVar[str] = "JSON"

    def _dump(self, obj: dict[str, Any]) -> str:
        return json.dumps(to_builtin(obj, fmt="JSON"), indent=1, ensure_ascii=False) + "\n"

    def _load(self, text: str) -> Any:
        value = json.loads(text)
        # JSON nests only with brackets: a document with few of them needs no walk.
        if text.count("[") + text.count("{") > MAX_NESTING and _too_deep(value):
            raise _TooDeepError
        return value


class YamlFormatter(_StructuredFormatter):
    """``Dict`` <-> YAML through ``yaml.safe_dump`` / ``yaml.safe_load`` only."""

    name: ClassVar[str] = "yaml"
    extension: ClassVar[str] = ".yaml"
    format_name: ClassVar[str] = "YAML"

    def _dump(self, obj: dict[str, Any]) -> str:
        plain = to_builtin(obj, fmt="YAML", allow_dates=True)
        text: str = yaml.dump(plain, Dumper=_PlainYamlDumper, sort_keys=False, allow_unicode=True)
        return text

    def _load(self, text: str) -> Any:
        return yaml.load(text, Loader=_BoundedYamlLoader)  # noqa: S506 - a SafeLoader


def load_json_mapping(raw: bytes, name: str) -> dict[str, Any]:
    """The JSON object in ``raw``, held to the limits of a stored ``Dict`` (see the module
    doc); :class:`~butler.errors.CorruptFileError` naming ``name`` if it is not one."""
    return JsonFormatter()._parse(raw, name)
