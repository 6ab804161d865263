"""Where storage classes and formatters are found: built-ins, decorators, and entry points.

Third-party data products register through the entry-point groups ``butler.storage_classes``
(a :class:`StorageClass` instance, or a zero-argument callable returning one) and
``butler.formatters`` (a :class:`Formatter` subclass), or at run time with
:func:`register_storage_class` / :func:`register_formatter`.
"""

from __future__ import annotations

import functools
import importlib
import threading
from collections.abc import Callable
from importlib.metadata import EntryPoint, entry_points
from typing import Any, TypeVar

from butler.errors import ButlerError, FormatterNotFoundError, StorageClassError
from butler.formatters.base import Formatter, StorageClass

FORMATTER_GROUP = "butler.formatters"
STORAGE_CLASS_GROUP = "butler.storage_classes"

_BUILTIN_FORMATTERS = {
    "fits-image": "butler.formatters.fits_image:FitsImageFormatter",
    "fits-image-compressed": "butler.formatters.fits_image:CompressedFitsImageFormatter",
    "parquet": "butler.formatters.parquet:ParquetFormatter",
    "fits-table": "butler.formatters.fits_table:FitsTableFormatter",
    "json": "butler.formatters.structured:JsonFormatter",
    "yaml": "butler.formatters.structured:YamlFormatter",
    "npy": "butler.formatters.npy:NpyFormatter",
}

F = TypeVar("F", bound=type[Formatter])


def _load(spec: str) -> Any:
    module, _, attr = spec.partition(":")
    return getattr(importlib.import_module(module), attr)


class FormatterRegistry:
    """Storage classes and formatters by name; built-ins are imported on first use."""

    def __init__(self) -> None:
        self._formatters: dict[str, type[Formatter] | str] = dict(_BUILTIN_FORMATTERS)
        self._storage_classes: dict[str, StorageClass | Callable[[], StorageClass]] = {}
        self._lock = threading.Lock()
        self._entry_points_loaded = False
        from butler.storage_classes import builtin_storage_classes

        self._storage_classes.update(builtin_storage_classes())

    def _load_entry_points(self) -> None:
        with self._lock:
            if self._entry_points_loaded:
                return
            self._entry_points_loaded = True
            for ep in entry_points(group=FORMATTER_GROUP):
                self._formatters.setdefault(ep.name, ep.value)
            for ep in entry_points(group=STORAGE_CLASS_GROUP):
                self._storage_classes.setdefault(ep.name, functools.partial(_load_sc, ep))

    def register_formatter(self, cls: type[Formatter]) -> None:
        self._formatters[cls.name] = cls

    def register_storage_class(self, storage_class: StorageClass) -> None:
        self._storage_classes[storage_class.name] = storage_class

    def formatter(self, name: str) -> Formatter:
        """An instance of the formatter called ``name``."""
        entry = self._formatters.get(name)
        if entry is None:
            self._load_entry_points()
            entry = self._formatters.get(name)
        if entry is None:
            raise FormatterNotFoundError(
                f"No formatter {name!r} is installed. Install the package that provides it "
                f"(it registers under the entry-point group {FORMATTER_GROUP!r}), or register "
                f"it with butler.register_formatter. "
                f"Installed: {', '.join(self.formatter_names())}."
            )
        if isinstance(entry, str):
            try:
                entry = _load(entry)
            except (ImportError, AttributeError) as exc:
                raise FormatterNotFoundError(
                    f"Formatter {name!r} is registered as {entry!r} but cannot be imported: {exc}"
                ) from exc
            assert isinstance(entry, type)
            self._formatters[name] = entry
        return entry()

    def formatter_names(self) -> list[str]:
        self._load_entry_points()
        return sorted(self._formatters)

    def storage_class(self, name: str) -> StorageClass:
        entry = self._storage_classes.get(name)
        if entry is None:
            self._load_entry_points()
            entry = self._storage_classes.get(name)
        if entry is None:
            raise StorageClassError(
                f"Unknown storage class {name!r}. Known: {', '.join(self.storage_class_names())}. "
                f"A plugin can add one under the entry-point group {STORAGE_CLASS_GROUP!r}."
            )
        if not isinstance(entry, StorageClass):
            entry = entry()
            self._storage_classes[name] = entry
        return entry

    def storage_class_names(self) -> list[str]:
        self._load_entry_points()
        return sorted(self._storage_classes)


def _load_sc(entry_point: EntryPoint) -> StorageClass:
    obj = entry_point.load()
    sc = obj() if callable(obj) and not isinstance(obj, StorageClass) else obj
    if not isinstance(sc, StorageClass):
        raise ButlerError(f"Entry point in {STORAGE_CLASS_GROUP!r} gave {sc!r}, not a StorageClass")
    return sc


_default: FormatterRegistry | None = None
_default_lock = threading.Lock()


def default_registry() -> FormatterRegistry:
    """The process-wide registry that decorators and entry points add to."""
    global _default
    with _default_lock:
        if _default is None:
            _default = FormatterRegistry()
        return _default


def register_formatter(cls: F) -> F:
    """Class decorator: make a :class:`Formatter` subclass available by its ``name``."""
    default_registry().register_formatter(cls)
    return cls


def register_storage_class(storage_class: StorageClass) -> StorageClass:
    default_registry().register_storage_class(storage_class)
    return storage_class
