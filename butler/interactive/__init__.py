"""Interactive queries: ``butler.query.calexp.where(instrument="HSC").count()``.

Built for IPython and Jupyter: attribute and key completion list dataset types, ``where``
has a real signature naming the dataset type's dimensions, and ``values`` / ``choices``
offer the values still possible given what was chosen. See ``docs/queries.md``.
"""

from butler.interactive.builder import DatasetQuery
from butler.interactive.factory import QueryFactory

__all__ = ["DatasetQuery", "QueryFactory"]
