"""Exceptions raised by the butler.

User errors subclass the builtin that fits them (``LookupError``, ``ValueError``, ...) so
callers can catch them generically, and each carries a stable ``error_type`` string so the
same class can be raised again on a client after crossing the wire (see the server API).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar


class ButlerError(Exception):
    """Base class of every error the butler raises on purpose."""

    error_type: ClassVar[str] = "ButlerError"

    def to_dict(self) -> dict[str, Any]:
        return {"error_type": self.error_type, "message": str(self)}


class DatasetTypeNotFoundError(ButlerError, LookupError):
    error_type = "DatasetTypeNotFoundError"


class DatasetNotFoundError(ButlerError, LookupError):
    """A dataset (type + data ID) is not in the collections searched."""

    error_type = "DatasetNotFoundError"

    @classmethod
    def for_search(
        cls, dataset_type: str, data_id: Mapping[str, Any], collections: Sequence[str]
    ) -> DatasetNotFoundError:
        where = ", ".join(f"{k}={v!r}" for k, v in data_id.items())
        searched = ", ".join(collections) if collections else "(no collections)"
        return cls(
            f"No dataset of type {dataset_type!r} with data ID {{{where}}} "
            f"in collections [{searched}]."
        )


class AmbiguousDatasetError(ButlerError, LookupError):
    """A dataset type + data ID matches datasets in several runs and no search order was given."""

    error_type = "AmbiguousDatasetError"


class CollectionNotFoundError(ButlerError, LookupError):
    error_type = "CollectionNotFoundError"


class DimensionRecordNotFoundError(ButlerError, LookupError):
    error_type = "DimensionRecordNotFoundError"


class DataIdError(ButlerError, ValueError):
    """A data ID has missing, unknown or inconsistent keys."""

    error_type = "DataIdError"


class ConflictingDefinitionError(ButlerError, ValueError):
    """Something with the same identity exists already with other content."""

    error_type = "ConflictingDefinitionError"


class DatasetExistsError(ConflictingDefinitionError):
    error_type = "DatasetExistsError"


class InvalidQueryError(ButlerError, ValueError):
    """A ``where`` expression names something unknown or uses a value of the wrong kind."""

    error_type = "InvalidQueryError"


class QuerySyntaxError(InvalidQueryError):
    """A ``where`` expression does not parse; the message points at the offending position."""

    error_type = "QuerySyntaxError"

    def __init__(self, message: str, expression: str = "", position: int = 0) -> None:
        self.expression = expression
        self.position = position
        self.reason = message
        if expression:
            message = f"{message} at position {position}:\n{_excerpt(expression, position)}"
        super().__init__(message)


def _excerpt(expression: str, position: int, width: int = 60) -> str:
    """The line holding ``position``, trimmed to a window around it, with a caret below."""
    line_start = expression.rfind("\n", 0, position) + 1
    line_end = expression.find("\n", position)
    line = expression[line_start : line_end if line_end >= 0 else len(expression)]
    column = position - line_start
    start = max(0, column - width)
    shown = line[start : column + width]
    prefix = "..." if start > 0 else ""
    suffix = "..." if column + width < len(line) else ""
    caret = " " * (len(prefix) + column - start) + "^"
    return f"  {prefix}{shown}{suffix}\n  {caret}"


class ReadOnlyRepositoryError(ButlerError, PermissionError):
    error_type = "ReadOnlyRepositoryError"


class RepositoryConfigError(ButlerError, ValueError):
    """The repository or its configuration is missing or invalid."""

    error_type = "RepositoryConfigError"


class StorageClassError(ButlerError, TypeError):
    """An object does not match the storage class of its dataset type."""

    error_type = "StorageClassError"


class FormatterNotFoundError(ButlerError, LookupError):
    """No formatter is installed for a file's format (a plugin is missing)."""

    error_type = "FormatterNotFoundError"


class UnsupportedParameterError(ButlerError, ValueError):
    """A read parameter or component is not supported by the dataset's formatter."""

    error_type = "UnsupportedParameterError"


class CorruptFileError(ButlerError, OSError):
    """A file is truncated, unreadable, or does not match its recorded checksum."""

    error_type = "CorruptFileError"


class TransactionError(ButlerError, RuntimeError):
    error_type = "TransactionError"


def error_classes() -> dict[str, type[ButlerError]]:
    """Every butler error class by its stable ``error_type`` (used to re-raise remote errors)."""
    found: dict[str, type[ButlerError]] = {}
    pending: list[type[ButlerError]] = [ButlerError]
    while pending:
        cls = pending.pop()
        found[cls.error_type] = cls
        pending.extend(cls.__subclasses__())
    return found
