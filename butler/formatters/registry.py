"""Where storage classes and formatters are found: built-ins, decorators, plugins.

A new data product is a storage class plus a formatter, declared with decorators in a
module of its own::

    @register_storage_class("Spectrum", default_formatter="spectrum-npz")
    class Spectrum: ...

    @register_formatter
    class SpectrumFormatter(Formatter): ...

Every process that reads or writes the product (a script, ``butler serve``, a mirror)
finds that module as a *plugin*, imported the first time an unknown name is asked for:

- an entry point in the group ``butler.plugins`` (``spectrum = my_package.spectrum``) of an
  installed distribution: the way to ship a product;
- the module names in ``$BUTLER_PLUGINS`` (comma separated): for a notebook, a server
  started by hand, a test;
- or, as before, entry points in ``butler.formatters`` (a Formatter subclass) and
  ``butler.storage_classes`` (a StorageClass, or a callable returning one).

Files written by a plugin formatter record where it came from (its class and distribution)
in their index, so a reader without the plugin is told exactly what to install.
"""

from __future__ import annotations

import functools
import importlib
import os
import sys
import threading
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar, overload

from butler.errors import ButlerError, FormatterNotFoundError, StorageClassError
from butler.formatters.base import Formatter, StorageClass

if TYPE_CHECKING:
    from importlib.metadata import EntryPoint

FORMATTER_GROUP = "butler.formatters"
STORAGE_CLASS_GROUP = "butler.storage_classes"
PLUGIN_GROUP = "butler.plugins"
PLUGINS_ENV = "BUTLER_PLUGINS"
ORIGIN_KEY = "plugin"
"""Key of a file index that records which plugin formatter wrote the file."""

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
C = TypeVar("C", bound=type)


def _load(spec: str) -> Any:
    module, _, attr = spec.partition(":")
    return getattr(importlib.import_module(module), attr)


class _Declarations:
    """What decorators declared, in this process (like entry points, process-wide)."""

    def __init__(self) -> None:
        self.formatters: dict[str, type[Formatter]] = {}
        self.storage_classes: dict[str, StorageClass] = {}


_declared = _Declarations()


def plugin_modules(environ: Mapping[str, str]) -> list[str]:
    """Module names listed in ``$BUTLER_PLUGINS`` (commas or spaces between them)."""
    raw = environ.get(PLUGINS_ENV, "")
    return [m for m in raw.replace(",", " ").split() if m]


class FormatterRegistry:
    """Storage classes and formatters by name; built-ins are imported on first use."""

    def __init__(self) -> None:
        self._formatters: dict[str, type[Formatter] | str] = dict(_BUILTIN_FORMATTERS)
        self._storage_classes: dict[str, StorageClass | Callable[[], StorageClass]] = {}
        self._lock = threading.RLock()
        self._scanned: tuple[tuple[str, ...], str] | None = None
        self._plugin_errors: dict[str, str] = {}
        self._module_distributions: dict[str, str] = {}
        from butler.storage_classes import builtin_storage_classes

        self._storage_classes.update(builtin_storage_classes())

    # -- plugins ----------------------------------------------------------------------------

    def load_plugins(self) -> None:
        """Import plugins and read entry points, again whenever ``sys.path`` or
        ``$BUTLER_PLUGINS`` changed (a plugin directory added to the path is then seen)."""
        state = (tuple(sys.path), os.environ.get(PLUGINS_ENV, ""))
        with self._lock:
            if self._scanned == state:
                return
            self._scanned = state
            # Imported here: importlib.metadata costs every command-line start ~0.02 s.
            from importlib.metadata import entry_points

            importlib.invalidate_caches()
            for ep in entry_points(group=FORMATTER_GROUP):
                self._formatters.setdefault(ep.name, ep.value)
                if ep.dist is not None:
                    self._module_distributions[ep.module] = ep.dist.name
            for ep in entry_points(group=STORAGE_CLASS_GROUP):
                self._storage_classes.setdefault(ep.name, functools.partial(_load_sc, ep))
            for ep in entry_points(group=PLUGIN_GROUP):
                if ep.dist is not None:
                    self._module_distributions[ep.module] = ep.dist.name
                self._import_plugin(f"entry point {ep.name!r} ({ep.value})", ep.load)
            for module in plugin_modules(os.environ):
                self._import_plugin(
                    f"{module!r} (from ${PLUGINS_ENV})",
                    functools.partial(importlib.import_module, module),
                )

    def _import_plugin(self, what: str, load: Callable[[], Any]) -> None:
        try:
            load()
        except Exception as exc:  # one broken plugin must not break every other product
            self._plugin_errors[what] = f"{type(exc).__name__}: {exc}"
        else:
            self._plugin_errors.pop(what, None)

    def _plugin_problems(self) -> str:
        if not self._plugin_errors:
            return ""
        listed = "; ".join(f"{k}: {v}" for k, v in sorted(self._plugin_errors.items()))
        return f" Plugins that failed to import: {listed}."

    # -- formatters -------------------------------------------------------------------------

    def register_formatter(self, cls: type[Formatter]) -> None:
        self._formatters[cls.name] = cls

    def register_storage_class(self, storage_class: StorageClass) -> None:
        self._storage_classes[storage_class.name] = storage_class

    def _formatter_entry(self, name: str) -> type[Formatter] | str | None:
        return self._formatters.get(name) or _declared.formatters.get(name)

    def formatter(self, name: str, origin: Mapping[str, Any] | None = None) -> Formatter:
        """An instance of the formatter called ``name``.

        ``origin`` is what a file recorded about the plugin that wrote it
        (:meth:`origin`); it makes the error for a missing plugin say what to install.
        """
        entry = self._formatter_entry(name)
        if entry is None:
            self.load_plugins()
            entry = self._formatter_entry(name)
        if entry is None:
            raise FormatterNotFoundError(self._missing_formatter_message(name, origin))
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

    def _missing_formatter_message(self, name: str, origin: Mapping[str, Any] | None) -> str:
        if origin and origin.get("class"):
            dist = origin.get("distribution")
            provider = f"plugin {origin['class']}" + (f" (distribution {dist!r})" if dist else "")
            module = str(origin["class"]).partition(":")[0]
            install = (
                f"Install {dist!r}, or make module {module!r} importable and list it in "
                f"${PLUGINS_ENV}"
                if dist
                else f"Make module {module!r} importable and list it in ${PLUGINS_ENV} (or "
                f"install a package that declares it under the entry-point group "
                f"{PLUGIN_GROUP!r})"
            )
            return (
                f"No formatter {name!r} is installed: this dataset was written by {provider}, "
                f"which this process cannot find. {install}.{self._plugin_problems()}"
            )
        return (
            f"No formatter {name!r} is installed. Install the package that provides it (it "
            f"registers under the entry-point group {PLUGIN_GROUP!r} or {FORMATTER_GROUP!r}), "
            f"or name its module in ${PLUGINS_ENV}. "
            f"Installed: {', '.join(self.formatter_names())}.{self._plugin_problems()}"
        )

    def formatter_names(self) -> list[str]:
        self.load_plugins()
        return sorted({*self._formatters, *_declared.formatters})

    def origin(self, name: str) -> dict[str, Any] | None:
        """Where a plugin formatter comes from (class, distribution); None for built-ins.

        Recorded in the index of every file the formatter writes.
        """
        if name in _BUILTIN_FORMATTERS:
            return None
        cls = type(self.formatter(name))
        module = cls.__module__
        dist = self._module_distributions.get(module)
        if dist is None:
            from importlib.metadata import packages_distributions

            names = packages_distributions().get(module.partition(".")[0])
            dist = names[0] if names else None
        return {"formatter": name, "class": f"{module}:{cls.__qualname__}", "distribution": dist}

    # -- storage classes --------------------------------------------------------------------

    def _storage_class_entry(self, name: str) -> StorageClass | Callable[[], StorageClass] | None:
        return self._storage_classes.get(name) or _declared.storage_classes.get(name)

    def storage_class(self, name: str) -> StorageClass:
        entry = self._storage_class_entry(name)
        if entry is None:
            self.load_plugins()
            entry = self._storage_class_entry(name)
        if entry is None:
            raise StorageClassError(
                f"Unknown storage class {name!r}. Known: {', '.join(self.storage_class_names())}. "
                f"A plugin adds one (entry-point group {PLUGIN_GROUP!r} or "
                f"{STORAGE_CLASS_GROUP!r}, or its module named in ${PLUGINS_ENV})."
                f"{self._plugin_problems()}"
            )
        if not isinstance(entry, StorageClass):
            entry = entry()
            self._storage_classes[name] = entry
        return entry

    def storage_class_names(self) -> list[str]:
        self.load_plugins()
        return sorted({*self._storage_classes, *_declared.storage_classes})


def _load_sc(entry_point: EntryPoint) -> StorageClass:
    obj = entry_point.load()
    sc = obj() if callable(obj) and not isinstance(obj, StorageClass) else obj
    if not isinstance(sc, StorageClass):
        raise ButlerError(f"Entry point in {STORAGE_CLASS_GROUP!r} gave {sc!r}, not a StorageClass")
    return sc


_default: FormatterRegistry | None = None
_default_lock = threading.Lock()


def default_registry() -> FormatterRegistry:
    """The process-wide registry butlers use unless given one."""
    global _default
    with _default_lock:
        if _default is None:
            _default = FormatterRegistry()
        return _default


def register_formatter(cls: F) -> F:
    """Class decorator: make a :class:`Formatter` subclass available by its ``name``."""
    for attr in ("name", "storage_class", "extension"):
        if not isinstance(getattr(cls, attr, None), str):
            raise TypeError(f"formatter {cls.__qualname__} must set the class attribute {attr!r}")
    _declared.formatters[cls.name] = cls
    return cls


@overload
def register_storage_class(storage_class: StorageClass, /) -> StorageClass: ...


@overload
def register_storage_class(
    name: str,
    /,
    *,
    default_formatter: str,
    doc: str = "",
    coerce: Callable[[Any], Any] | None = None,
) -> Callable[[C], C]: ...


def register_storage_class(
    storage_class: StorageClass | str,
    /,
    *,
    default_formatter: str | None = None,
    doc: str = "",
    coerce: Callable[[Any], Any] | None = None,
) -> StorageClass | Callable[[C], C]:
    """Register a storage class: an instance, or as a decorator of the Python class stored.

    ``@register_storage_class("Spectrum", default_formatter="spectrum-npz")`` above
    ``class Spectrum`` declares that ``Spectrum`` objects are stored with that formatter
    unless a dataset type names another.
    """
    if isinstance(storage_class, StorageClass):
        _declared.storage_classes[storage_class.name] = storage_class
        return storage_class
    if default_formatter is None:
        raise TypeError("register_storage_class(name, ...) needs default_formatter=...")
    name = storage_class

    def decorate(cls: C) -> C:
        _declared.storage_classes[name] = StorageClass(
            name, (cls,), default_formatter, doc or (cls.__doc__ or "").strip(), coerce
        )
        return cls

    return decorate
