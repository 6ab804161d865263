"""The built-in storage classes: ``Image``, ``Table``, ``Dict`` and ``Array``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from astropy.nddata import NDData
from astropy.table import Table

from butler.formatters.base import StorageClass
from butler.image import Image


def _image_from_nddata(obj: Any) -> Image | None:
    if isinstance(obj, Image):
        return obj
    if isinstance(obj, NDData):
        return Image.from_nddata(obj)
    return None


def _dict_from_mapping(obj: Any) -> dict[str, Any] | None:
    return dict(obj) if isinstance(obj, Mapping) and not isinstance(obj, dict) else None


def builtin_storage_classes() -> list[StorageClass]:
    return [
        StorageClass(
            "Image",
            (Image,),
            default_formatter="fits-image",
            doc="Image with variance, named mask planes, WCS, unit and header "
            "(astropy NDData/CCDData are converted).",
            coerce=_image_from_nddata,
        ),
        StorageClass(
            "Table",
            (Table,),
            default_formatter="parquet",
            doc="astropy Table; Parquet by default, FITS binary table with formatter='fits-table'.",
        ),
        StorageClass(
            "Dict",
            (dict,),
            default_formatter="json",
            doc="JSON- or YAML-serialisable mapping.",
            coerce=_dict_from_mapping,
        ),
        StorageClass("Array", (np.ndarray,), default_formatter="npy", doc="numpy array (.npy)."),
    ]
