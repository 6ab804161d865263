"""The built-in storage classes: ``Image``, ``Table``, ``Dict`` and ``Array``.

``Image``, ``Table`` and ``Array`` are made on first use. The first two need astropy, whose
import costs about a second of CPU, and ``Array`` numpy (~0.1 s), which a process that never
touches such an object (``mirror pull``, a server answering queries) should not pay.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from butler.formatters.base import StorageClass


def _image_storage_class() -> StorageClass:
    from astropy.nddata import NDData

    from butler.image import Image

    def image_from_nddata(obj: Any) -> Image | None:
        if isinstance(obj, Image):
            return obj
        if isinstance(obj, NDData):
            return Image.from_nddata(obj)
        return None

    return StorageClass(
        "Image",
        (Image,),
        default_formatter="fits-image",
        doc="Image with variance, named mask planes, WCS, unit and header "
        "(astropy NDData/CCDData are converted).",
        coerce=image_from_nddata,
    )


def _table_storage_class() -> StorageClass:
    from astropy.table import Table

    return StorageClass(
        "Table",
        (Table,),
        default_formatter="parquet",
        doc="astropy Table; Parquet by default, FITS binary table with formatter='fits-table'.",
    )


def _array_storage_class() -> StorageClass:
    import numpy as np

    return StorageClass("Array", (np.ndarray,), default_formatter="npy", doc="numpy array (.npy).")


def _dict_from_mapping(obj: Any) -> dict[str, Any] | None:
    return dict(obj) if isinstance(obj, Mapping) and not isinstance(obj, dict) else None


def builtin_storage_classes() -> dict[str, StorageClass | Callable[[], StorageClass]]:
    """Each built-in storage class by name, or a function making it (see the docstring above)."""
    return {
        "Image": _image_storage_class,
        "Table": _table_storage_class,
        "Dict": StorageClass(
            "Dict",
            (dict,),
            default_formatter="json",
            doc="JSON- or YAML-serialisable mapping.",
            coerce=_dict_from_mapping,
        ),
        "Array": _array_storage_class,
    }
