"""Butler: datasets named by dataset type + data ID, in local or remote repositories.

Open a repository with :class:`Butler`, then ``put``, ``get``, ``query_datasets`` and
``transaction()``; see the README for a tour.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from butler.butler import Butler
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
    from butler.image import Box, Image
    from butler.reading import IOStats
    from butler.refs import DataCoordinate, DatasetRef, DatasetType, FileInfo

# Names are imported on first use: ``import butler.http.ranges`` (proxyd) must not load
# astropy, numpy and the registry, which would cost every proxy ~50 MB of memory.
_EXPORTS: dict[str, str] = {
    "Butler": "butler.butler",
    "IOStats": "butler.reading",
    "DirectButler": "butler.direct_butler",
    "AmbiguousDatasetError": "butler.errors",
    "ButlerError": "butler.errors",
    "CollectionNotFoundError": "butler.errors",
    "ConflictingDefinitionError": "butler.errors",
    "CorruptFileError": "butler.errors",
    "DataIdError": "butler.errors",
    "DatasetExistsError": "butler.errors",
    "DatasetNotFoundError": "butler.errors",
    "DatasetTypeNotFoundError": "butler.errors",
    "DimensionRecordNotFoundError": "butler.errors",
    "FormatterNotFoundError": "butler.errors",
    "InvalidQueryError": "butler.errors",
    "QuerySyntaxError": "butler.errors",
    "ReadOnlyRepositoryError": "butler.errors",
    "RepositoryConfigError": "butler.errors",
    "StorageClassError": "butler.errors",
    "TransactionError": "butler.errors",
    "UnsupportedParameterError": "butler.errors",
    "Formatter": "butler.formatters.base",
    "StorageClass": "butler.formatters.base",
    "register_formatter": "butler.formatters.registry",
    "register_storage_class": "butler.formatters.registry",
    "Box": "butler.image",
    "Image": "butler.image",
    "DataCoordinate": "butler.refs",
    "DatasetRef": "butler.refs",
    "DatasetType": "butler.refs",
    "FileInfo": "butler.refs",
}


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'butler' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])


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
