"""A FITS image formatter plugged into lsst-daf-butler for the tests.

The LSST butler writes images through lsst.afw (``ExposureF``, ``ImageF``), which is not on
PyPI. This formatter stands in for afw's writer: lsst-daf-butler calls it through its own
formatter interface (FormatterV2) for a ``NumpyArray`` dataset, and it writes the layout afw
writes for a masked image (an empty PRIMARY HDU, then ``IMAGE``, ``MASK`` and ``VARIANCE``
extensions) with astropy, and reads the ``IMAGE`` pixels back.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from astropy.io import fits
from lsst.daf.butler import FormatterV2
from lsst.resources import ResourcePath


class LsstLayoutFitsFormatter(FormatterV2):
    default_extension = ".fits"
    supported_extensions = frozenset({".fits"})
    can_read_from_local_file = True

    def read_from_local_file(
        self, path: str, component: str | None = None, expected_size: int = -1
    ) -> Any:
        with fits.open(path) as hdus:
            return np.array(hdus["IMAGE"].data)

    def write_local_file(self, in_memory_dataset: Any, uri: ResourcePath) -> None:
        image = np.asarray(in_memory_dataset, dtype=np.float32)
        primary = fits.PrimaryHDU()
        primary.header["INSTRUME"] = "LSSTCam"
        hdus = fits.HDUList(
            [
                primary,
                fits.ImageHDU(image, name="IMAGE"),
                fits.ImageHDU(np.zeros(image.shape, dtype=np.int32), name="MASK"),
                fits.ImageHDU(np.ones(image.shape, dtype=np.float32), name="VARIANCE"),
            ]
        )
        hdus.writeto(uri.ospath)
