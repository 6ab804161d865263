"""Memory maps of one FITS HDU's pixels, found through a file's offset index.

Shared by every backend's ``memmap``: which HDU, whether a map may stand for what ``get()``
reads (it may not for scaled data), and the map itself once a local file holds the bytes.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from butler.refs import FileInfo

if TYPE_CHECKING:
    import numpy as np


def memmap_entry(file: FileInfo, hdu: str | int | None, raw: bool = False) -> dict[str, Any]:
    """The offset-index entry of the HDU :meth:`Butler.memmap` maps, once it is sure that the
    map gives what ``get()`` gives.

    ``hdu=None`` is the HDU holding the pixels ``get()`` reads (``IMAGE`` in the LSST
    layout, the ingest-recorded one for raws, else ``SCI`` or the first HDU with pixels).
    A map holds the stored values: for data with BZERO/BSCALE (unsigned integers stored as
    BZERO = 32768 too) or an integer BLANK they differ from ``get()``'s, so they are refused
    unless ``raw=True`` asks for the stored values.
    """
    from butler.errors import UnsupportedParameterError
    from butler.formatters.fits_image import _Layout, describe_hdus, select_hdu

    if file.index.get("format") != "fits" or not file.index.get("hdus"):
        raise UnsupportedParameterError(
            f"{file.path} is not a FITS file with an offset index; memmap maps FITS image "
            "HDUs (use get_local_path() and numpy.memmap/numpy.load for other files)"
        )
    if hdu is None:
        entry = dict(_Layout.of(file.index, file.path).image)
    else:
        entry = dict(select_hdu(file.index, hdu, file.path))
    where = f"HDU {entry['index']} ({entry['name'] or 'unnamed'}) of {file.path}"
    if entry.get("kind") not in ("image", "primary") or not entry.get("shape"):
        raise UnsupportedParameterError(
            f"{where} is a {entry.get('kind')} HDU without plain pixels; only uncompressed "
            f"image HDUs can be memory-mapped (the file's HDUs: {describe_hdus(file.index)}). "
            "Read it with get(..., parameters={'hdu': ...}), lazily with {'lazy': True}"
        )
    scaling = {
        key.upper(): entry[key]
        for key in ("bscale", "bzero", "blank")
        if key in entry and not (key == "blank" and entry["dtype"].lstrip("<>=").startswith("f"))
    }
    if scaling and not raw:
        cards = ", ".join(f"{k} = {v}" for k, v in scaling.items())
        raise UnsupportedParameterError(
            f"{where} is stored scaled ({cards}): a memory map would give the stored integers, "
            "not the values get() gives (value = BZERO + BSCALE * stored, BLANK -> NaN). Pass "
            "raw=True to map the stored values and apply BZERO/BSCALE yourself, or read "
            "the scaled values lazily without loading them: "
            "get(..., parameters={'lazy': True})"
        )
    return entry


def map_hdu(path: Path, entry: Mapping[str, Any], offset: int) -> np.memmap[Any, Any]:
    """A read-only map of an HDU's pixels, found at ``offset`` in the file at ``path``."""
    import numpy as np  # here: numpy costs a command-line tool's start ~0.07 s

    return np.memmap(
        path,
        dtype=np.dtype(entry["dtype"]),
        mode="r",
        offset=offset,
        shape=tuple(entry["shape"]),
    )
