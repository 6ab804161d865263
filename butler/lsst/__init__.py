"""Data from the LSST butler (lsst-daf-butler): its export YAML files and the zip archives of
``butler retrieve-artifacts --zip``, read without lsst-daf-butler installed.

Reading (:mod:`.export_yaml`, :mod:`.zip_archive`) turns a source into :class:`.DafContents`,
with records already in this project's universe (:mod:`.records`) and each dataset's file
mapped to a storage class and formatter of ours (:mod:`.storage`); :func:`.importer.apply`
writes any :class:`.DafContents` into a repository as one transaction. A later reader of a
local LSST repository (a mirror source) needs only to produce the same contents.
"""

from butler.lsst.contents import DafCollection, DafContents, DafDataset, LsstFormatError

__all__ = ["DafCollection", "DafContents", "DafDataset", "LsstFormatError"]
