"""JSON and YAML formatters for the ``Dict`` storage class.

Only plain data is written: mappings, lists, strings, numbers, booleans and null (and, in
YAML, dates). numpy scalars are converted to the Python number they hold and numpy arrays to
(nested) lists, tuples become lists; anything else is refused with the path of the offending
value, so a file never holds something that reads back as a different type than expected
without the user having been told. YAML is read and written with ``safe_load``/``safe_dump``
only: reading can never construct arbitrary Python objects.
"""

from __future__ import annotations

import datetime
import json
from abc import abstractmethod
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import yaml

from butler.errors import CorruptFileError, StorageClassError
from butler.formatters.base import FileIndex, Formatter
from butler.io.source import ByteSource

__all__ = ["JsonFormatter", "YamlFormatter", "to_builtin"]

_SCALARS = (str, int, float, bool, type(None))


def to_builtin(obj: Any, *, fmt: str = "JSON", path: str = "$", allow_dates: bool = False) -> Any:
    """A copy of ``obj`` made of builtin types only (see the module doc), or StorageClassError.

    ``fmt`` names the target format in error messages; ``allow_dates`` keeps ``datetime``
    and ``date`` values (YAML represents them natively).
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
            out[key] = to_builtin(value, fmt=fmt, path=f"{path}[{key!r}]", allow_dates=allow_dates)
        return out
    if isinstance(obj, list | tuple):
        return [
            to_builtin(v, fmt=fmt, path=f"{path}[{i}]", allow_dates=allow_dates)
            for i, v in enumerate(obj)
        ]
    raise StorageClassError(
        f"{path}: {type(obj).__module__}.{type(obj).__qualname__} value {obj!r:.80} cannot be "
        f"stored as {fmt}; convert it to a string, number, list or dict first."
    )


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
            value = self._load(raw.decode("utf-8"))
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
        return json.loads(text)


class YamlFormatter(_StructuredFormatter):
    """``Dict`` <-> YAML through ``yaml.safe_dump`` / ``yaml.safe_load`` only."""

    name: ClassVar[str] = "yaml"
    extension: ClassVar[str] = ".yaml"
    format_name: ClassVar[str] = "YAML"

    def _dump(self, obj: dict[str, Any]) -> str:
        plain = to_builtin(obj, fmt="YAML", allow_dates=True)
        text: str = yaml.safe_dump(plain, sort_keys=False, allow_unicode=True)
        return text

    def _load(self, text: str) -> Any:
        return yaml.safe_load(text)
