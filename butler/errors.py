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
    http_status: ClassVar[int] = 400
    """Status a server answers with when a request raises this (like h11's status hints)."""

    @property
    def details(self) -> dict[str, Any]:
        """Structured facts beyond the message that should survive the trip to a client."""
        return {}

    def to_dict(self) -> dict[str, Any]:
        return {"error_type": self.error_type, "message": str(self), "details": self.details}

    @classmethod
    def from_wire(cls, message: str, details: Mapping[str, Any] | None = None) -> ButlerError:
        """Rebuild an error received from a server, with the server's message verbatim."""
        error = cls.__new__(cls)
        Exception.__init__(error, message)
        for key, value in (details or {}).items():
            setattr(error, key, value)
        return error


class DatasetTypeNotFoundError(ButlerError, LookupError):
    error_type = "DatasetTypeNotFoundError"
    http_status = 404


class DatasetNotFoundError(ButlerError, LookupError):
    """A dataset (type + data ID) is not in the collections searched."""

    error_type = "DatasetNotFoundError"
    http_status = 404

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
    http_status = 409


class CollectionNotFoundError(ButlerError, LookupError):
    error_type = "CollectionNotFoundError"
    http_status = 404


class DimensionRecordNotFoundError(ButlerError, LookupError):
    error_type = "DimensionRecordNotFoundError"
    http_status = 404


class DataIdError(ButlerError, ValueError):
    """A data ID has missing, unknown or inconsistent keys."""

    error_type = "DataIdError"


class ConflictingDefinitionError(ButlerError, ValueError):
    """Something with the same identity exists already with other content."""

    error_type = "ConflictingDefinitionError"
    http_status = 409


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

    @property
    def details(self) -> dict[str, Any]:
        return {"expression": self.expression, "position": self.position, "reason": self.reason}


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
    http_status = 403


class RepositoryConfigError(ButlerError, ValueError):
    """The repository or its configuration is missing or invalid."""

    error_type = "RepositoryConfigError"
    http_status = 500


class StorageClassError(ButlerError, TypeError):
    """An object does not match the storage class of its dataset type."""

    error_type = "StorageClassError"


class FormatterNotFoundError(ButlerError, LookupError):
    """No formatter is installed for a file's format (a plugin is missing)."""

    error_type = "FormatterNotFoundError"
    http_status = 404


class UnsupportedParameterError(ButlerError, ValueError):
    """A read parameter or component is not supported by the dataset's formatter."""

    error_type = "UnsupportedParameterError"


class CorruptFileError(ButlerError, OSError):
    """A file is truncated, unreadable, or does not match its recorded checksum."""

    error_type = "CorruptFileError"
    http_status = 500


class AuthenticationError(ButlerError, PermissionError):
    """The server wants a (valid) bearer token."""

    error_type = "AuthenticationRequired"
    http_status = 401


class AuthorizationError(ButlerError, PermissionError):
    """The token is valid but lacks the scope, or the server refuses writes."""

    error_type = "InsufficientScope"
    http_status = 403


class ServerError(ButlerError, RuntimeError):
    """The server failed (a bug or an outage); the message carries its request ID."""

    error_type = "InternalServerError"
    http_status = 500


class RegistryConnectionError(ButlerError, ConnectionError):
    """The registry's database server was lost in the middle of a transaction."""

    error_type = "RegistryConnectionError"
    http_status = 503


class RemoteUnavailableError(ButlerError, ConnectionError):
    """The remote repository cannot be reached."""

    error_type = "RemoteUnavailableError"
    http_status = 502


class BadRequestError(ButlerError, ValueError):
    """A request to a repository server is malformed (a parameter, a body)."""

    error_type = "BadRequestError"
    http_status = 400


class UploadError(ButlerError, ValueError):
    """An upload to a remote transaction was damaged, too large, or unknown."""

    error_type = "UploadError"
    http_status = 400


class PayloadTooLargeError(UploadError):
    """A request body (an upload, a JSON body) is larger than the server accepts."""

    error_type = "PayloadTooLargeError"
    http_status = 413


class RequestTimeoutError(BadRequestError):
    """A client stopped sending a request body for longer than the server waits."""

    error_type = "RequestTimeoutError"
    http_status = 408


class TransactionNotFoundError(ButlerError, LookupError):
    """A remote transaction does not exist (expired, finished, or someone else's)."""

    error_type = "TransactionNotFoundError"
    http_status = 404


class TransactionError(ButlerError, RuntimeError):
    error_type = "TransactionError"
    http_status = 409


def error_classes() -> dict[str, type[ButlerError]]:
    """Every butler error class by its stable ``error_type`` (used to re-raise remote errors)."""
    found: dict[str, type[ButlerError]] = {
        # The server's authentication layer names its refusals more precisely.
        "InvalidToken": AuthenticationError,
        "WritesDisabled": AuthorizationError,
    }
    pending: list[type[ButlerError]] = [ButlerError]
    while pending:
        cls = pending.pop()
        found[cls.error_type] = cls
        pending.extend(cls.__subclasses__())
    return found
