"""``butler.query``: one attribute (and key) per dataset type of the repository."""

from __future__ import annotations

import difflib
from typing import TYPE_CHECKING

from butler.errors import DatasetTypeNotFoundError
from butler.interactive.builder import DatasetQuery, repository_id
from butler.interactive.value_cache import ValueCache, cache_key
from butler.refs import DatasetType

if TYPE_CHECKING:
    from butler.butler import Butler


class QueryFactory:
    """``butler.query.calexp`` or ``butler.query["calexp"]``: a query of every calexp.

    ``dir()`` and IPython's key completion list the repository's dataset types (cached on
    disk, so completion works offline too).
    """

    def __init__(self, butler: Butler, cache: ValueCache | None = None) -> None:
        self._butler = butler
        self._cache = cache or ValueCache()
        from butler.interactive.ipython import register_if_in_ipython

        register_if_in_ipython()  # value completion inside where(...) in IPython/Jupyter

    def dataset_types(self) -> list[DatasetType]:
        """The repository's dataset types (a recent cached list is good enough: a type
        registered since is still found by name, see ``__call__``)."""
        key = cache_key(repository_id(self._butler), "dataset_types")
        rows = self._cache.get_or_fetch(
            key, lambda: [t.to_dict() for t in self._butler.dataset_types()], max_age=None
        )
        return [DatasetType.from_dict(row) for row in rows]

    def names(self) -> list[str]:
        return [t.name for t in self.dataset_types()]

    def __call__(self, dataset_type: str | DatasetType) -> DatasetQuery:
        """A query of every dataset of ``dataset_type``."""
        if isinstance(dataset_type, DatasetType):
            return DatasetQuery(self._butler, dataset_type, self._cache)
        for known in self.dataset_types():
            if known.name == dataset_type:
                return DatasetQuery(self._butler, known, self._cache)
        # Registered since the list was cached, or a genuine typo: the repository knows.
        try:
            resolved = self._butler.get_dataset_type(dataset_type)
        except DatasetTypeNotFoundError as exc:
            close = difflib.get_close_matches(dataset_type, self.names(), n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise DatasetTypeNotFoundError(f"{exc}{hint}") from None
        return DatasetQuery(self._butler, resolved, self._cache)

    def __getattr__(self, name: str) -> DatasetQuery:
        if name.startswith("_"):
            raise AttributeError(name)
        try:
            return self(name)
        except DatasetTypeNotFoundError as exc:
            raise AttributeError(str(exc)) from None

    def __getitem__(self, name: str) -> DatasetQuery:
        try:
            return self(name)
        except DatasetTypeNotFoundError as exc:
            raise KeyError(str(exc)) from None

    def __dir__(self) -> list[str]:
        return sorted({*self.names(), "dataset_types", "names"})

    def _ipython_key_completions_(self) -> list[str]:
        return self.names()

    def __repr__(self) -> str:
        return f"<queries of {repository_id(self._butler)}: {', '.join(self.names())}>"
