"""Butler: datasets named by dataset type + data ID, in local or remote repositories.

Open a repository with :class:`Butler`, then ``put``, ``get``, ``query_datasets`` and
``transaction()``; see the README for a tour.
"""

from typing import TYPE_CHECKING, Any

from butler.butler import Butler, IOStats
from butler.direct_butler import DirectButler
from butler.errors import (
    AmbiguousDatasetError,
    ButlerError,
    CollectionNotFoundError,
    ConflictingDefinitionError,
    CorruptFileError,
    DataIdError,
    DatasetExistsError,
    DatasetNotFoundError,
    DatasetTypeNotFoundError,
    DimensionRecordNotFoundError,
    FormatterNotFoundError,
    InvalidQueryError,
    QuerySyntaxError,
    ReadOnlyRepositoryError,
    RepositoryConfigError,
    StorageClassError,
    TransactionError,
    UnsupportedParameterError,
)
from butler.formatters.base import Formatter, StorageClass
from butler.formatters.registry import register_formatter, register_storage_class
from butler.refs import DataCoordinate, DatasetRef, DatasetType, FileInfo

if TYPE_CHECKING:
    from butler.image import Box, Image


def __getattr__(name: str) -> Any:
    # Image and Box need astropy, about a second of CPU to import: only when asked for.
    if name in ("Box", "Image"):
        from butler import image

        return getattr(image, name)
    raise AttributeError(f"module 'butler' has no attribute {name!r}")


__all__ = [
    "AmbiguousDatasetError",
    "Box",
    "DirectButler",
    "Butler",
    "ButlerError",
    "CollectionNotFoundError",
    "ConflictingDefinitionError",
    "CorruptFileError",
    "DataCoordinate",
    "DataIdError",
    "DatasetExistsError",
    "DatasetNotFoundError",
    "DatasetRef",
    "DatasetType",
    "DatasetTypeNotFoundError",
    "DimensionRecordNotFoundError",
    "FileInfo",
    "Formatter",
    "FormatterNotFoundError",
    "IOStats",
    "Image",
    "InvalidQueryError",
    "QuerySyntaxError",
    "ReadOnlyRepositoryError",
    "RepositoryConfigError",
    "StorageClass",
    "StorageClassError",
    "TransactionError",
    "UnsupportedParameterError",
    "register_formatter",
    "register_storage_class",
]
