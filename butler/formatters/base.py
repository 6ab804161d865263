"""What a formatter is: the code that turns one storage class into bytes on disk and back.

A formatter writes an object to a local path, builds an *offset index* of the written file
(stored in the registry beside size and checksum), and reads objects back through a
:class:`~butler.io.source.ByteSource`, using the index so a partial read (a component or a
parameter such as ``bbox`` or ``columns``) fetches only the bytes it needs.

Formatters never unpickle: every format here is self-describing and safe to read from an
untrusted remote source.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

from butler.errors import (
    ButlerError,
    CorruptFileError,
    StorageClassError,
    UnsupportedParameterError,
)
from butler.io.source import ByteSource

FileIndex = dict[str, Any]
"""JSON-serialisable offset index of one file (format specific; see each formatter)."""


class Formatter(ABC):
    """Reads and writes one storage class in one file format."""

    name: ClassVar[str]
    """Stable name stored in the registry's file records (e.g. ``"fits-image"``)."""
    storage_class: ClassVar[str]
    """Name of the storage class this formatter handles (e.g. ``"Image"``)."""
    extension: ClassVar[str]
    """File name extension, with the dot (e.g. ``".fits"``)."""
    components: ClassVar[frozenset[str]] = frozenset()
    """Components that can be read on their own (``"calexp.metadata"``)."""
    parameters: ClassVar[frozenset[str]] = frozenset()
    """Read parameters supported (``bbox``, ``columns``, ...)."""

    @abstractmethod
    def write(self, obj: Any, path: Path) -> None:
        """Write ``obj`` to ``path`` (a new file in a staging directory)."""

    def index(self, path: Path) -> FileIndex:
        """Build the offset index of a file this formatter wrote (or that is being ingested).

        Raises :class:`~butler.errors.CorruptFileError` if the file is not readable in this
        format, so broken input is refused before anything is recorded.
        """
        return {}

    def decoded_bytes(self, index: Mapping[str, Any]) -> int | None:
        """Bytes a whole read (``read`` without component or parameters) holds in memory,
        judged from the file's index alone; None when that is about the file's size.

        Formats that compress must say: a few kilobytes of tile-compressed zeros can decode to
        gigabytes, and a server reads an upload whole to check it only when both the file and
        what it decodes to are small.
        """
        return None

    @abstractmethod
    def read(
        self,
        source: ByteSource,
        index: Mapping[str, Any],
        *,
        component: str | None = None,
        parameters: Mapping[str, Any] | None = None,
    ) -> Any:
        """Read the object (or one component of it) through ``source``."""

    def check_request(self, component: str | None, parameters: Mapping[str, Any] | None) -> None:
        """Refuse components and parameters this formatter does not support."""
        if component is not None and component not in self.components:
            supported = ", ".join(sorted(self.components)) or "none"
            raise UnsupportedParameterError(
                f"Formatter {self.name!r} has no component {component!r} "
                f"(supported components: {supported})."
            )
        unknown = set(parameters or {}) - self.parameters
        if unknown:
            supported = ", ".join(sorted(self.parameters)) or "none"
            raise UnsupportedParameterError(
                f"Formatter {self.name!r} does not support parameters {sorted(unknown)} "
                f"(supported parameters: {supported})."
            )


def validate_file(formatter: Formatter, path: Path) -> FileIndex:
    """Check that the file at ``path`` is a well-formed file of ``formatter``'s format.

    Returns the file's offset index (what :meth:`Formatter.index` builds, so a caller that
    records the file needs no second pass). Every problem with the file's *content* raises
    :class:`~butler.errors.CorruptFileError` naming the file and what is wrong: the built-in
    formatters raise it themselves, and any other exception a (plugin) formatter's ``index``
    lets escape is turned into one, so a server can answer an upload it refuses with a 4xx
    rather than a traceback. Failures of the machine rather than the file (``OSError``,
    ``MemoryError``) propagate unchanged.
    """
    try:
        return formatter.index(path)
    except (ButlerError, OSError, MemoryError):
        raise
    except Exception as exc:  # noqa: BLE001 - a plugin's parser may raise anything on bad input
        raise CorruptFileError(
            f"{path}: not a valid {formatter.storage_class} file for formatter "
            f"{formatter.name!r}: {type(exc).__name__}: {exc}"
        ) from exc


class StorageClass:
    """A kind of Python object the butler can store, and how to check an object is one."""

    def __init__(
        self,
        name: str,
        python_types: tuple[type, ...],
        default_formatter: str,
        doc: str = "",
        coerce: Any = None,
    ) -> None:
        self.name = name
        self.python_types = python_types
        self.default_formatter = default_formatter
        self.doc = doc
        self._coerce = coerce

    def validate(self, obj: Any) -> Any:
        """Return ``obj`` (possibly converted to the canonical type) or raise if it does not fit."""
        if self._coerce is not None:
            converted = self._coerce(obj)
            if converted is not None:
                return converted
        if isinstance(obj, self.python_types):
            return obj
        expected = " or ".join(t.__module__ + "." + t.__qualname__ for t in self.python_types)
        raise StorageClassError(
            f"Storage class {self.name!r} stores {expected}, got {type(obj).__module__}."
            f"{type(obj).__qualname__}."
        )
