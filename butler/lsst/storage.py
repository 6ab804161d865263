"""Which of this project's storage classes and formatters reads an LSST butler file.

Decided by the file's format (its extension, as the LSST butler's formatters write it) and,
for FITS, by whether the LSST storage class is an image or a table. The bytes are taken as
they are; this project's formatter indexes them when they go in, so a file it cannot read is
refused before anything is recorded. No file is ever unpickled: the LSST butler's pickle
formats (``NumpyArray``'s default, ``Packages``...) are not carried over.
"""

from __future__ import annotations

from pathlib import PurePath

from butler.lsst.contents import LsstFormatError

__all__ = ["our_storage"]

# LSST storage classes whose FITS files are images (lsst.afw's masked-image layout: IMAGE,
# MASK, VARIANCE extensions, which this project's Image reads) rather than tables.
_FITS_IMAGES = (
    "Exposure",
    "ExposureF",
    "ExposureI",
    "ExposureD",
    "ExposureU",
    "Image",
    "ImageF",
    "ImageI",
    "ImageD",
    "ImageU",
    "MaskedImage",
    "MaskedImageF",
    "MaskedImageI",
    "MaskedImageU",
    "DecoratedImageU",
    "Mask",
    "MaskX",
    "NumpyArray",
)


def our_storage(storage_class: str, path: PurePath, where: str) -> tuple[str, str]:
    """(storage class, formatter) of this project for an LSST dataset's file."""
    name = path.name.lower()
    if name.endswith((".parq", ".parquet")):
        return "Table", "parquet"
    if name.endswith(".json"):
        return "Dict", "json"
    if name.endswith((".yaml", ".yml")):
        return "Dict", "yaml"
    if name.endswith((".fits", ".fit", ".fits.fz", ".fz")):
        if storage_class in _FITS_IMAGES or storage_class.startswith(("Exposure", "Image")):
            return "Image", "fits-image"
        return "Table", "fits-table"
    raise LsstFormatError(
        f"{where}: {storage_class} in {path.name!r} has no storage class here (carried over: "
        "Parquet tables, JSON/YAML dicts, FITS images and tables; never pickles); leave that "
        "dataset type out of the export"
    )
