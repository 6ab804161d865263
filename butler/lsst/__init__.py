"""Data from the LSST butler (lsst-daf-butler): its export YAML files and the zip archives of
``butler retrieve-artifacts --zip``, read without lsst-daf-butler installed.

Reading (:mod:`.export_yaml`, :mod:`.zip_archive`) turns a source into :class:`.DafContents`,
with records already in this project's universe (:mod:`.records`) and each dataset's file
mapped to a storage class and formatter of ours (:mod:`.storage`); :func:`.importer.apply`
writes any :class:`.DafContents` into a repository as one transaction. A local LSST
repository as a mirror source (:mod:`mirror.daf_source`) reuses the mappings (records,
storage classes, dataset type dimensions) but not :func:`.importer.apply`: a pull records
each file once it is copied and verified, in batches, not all in one transaction.
"""

from butler.lsst.contents import DafCollection, DafContents, DafDataset, LsstFormatError

__all__ = ["DafCollection", "DafContents", "DafDataset", "LsstFormatError"]
