"""Completion candidates from one repository, for shells: through the completion cache.

A shell asks again on every TAB and from a new process each time, so answers come from the
same disk cache the query builder fills (same keys), and the repository is opened only
when the cache has nothing fresh. Completion never fails loudly: a repository that cannot
be opened or reached, with nothing cached, offers nothing.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from butler.butler import Butler, is_remote_uri
from butler.errors import ButlerError
from butler.interactive.expression import where_text
from butler.interactive.value_cache import ValueCache, cache_key
from butler.query import parse_where
from butler.refs import DatasetType

T = TypeVar("T")


def repository_id_for(target: str) -> str:
    """The cache name of a repository given as on a command line (as ``repository_id``)."""
    if is_remote_uri(target):
        return target.rstrip("/") + "/"
    return str(Path(target).expanduser().absolute())


class RepositoryCompletions:
    """Dataset types, collections, dimensions and values of the repository at ``target``."""

    def __init__(
        self, target: str, token: str | None = None, cache: ValueCache | None = None
    ) -> None:
        self.target = target
        self.token = token
        self.repository = repository_id_for(target)
        self.cache = cache or ValueCache()
        self._butler: Butler | None = None

    def _open(self) -> Butler:
        if self._butler is None:
            options: dict[str, Any] = {"token": self.token} if is_remote_uri(self.target) else {}
            self._butler = Butler(self.target, **options)
        return self._butler

    def close(self) -> None:
        if self._butler is not None:
            with contextlib.suppress(Exception):
                self._butler.close()
            self._butler = None
        self.cache.close()

    def _answer(self, key: str, fetch: Callable[[], T]) -> T | None:
        try:
            return self.cache.get_or_fetch(key, fetch)
        except (ButlerError, OSError):
            return None

    def dataset_types(self) -> list[DatasetType]:
        rows = self._answer(
            cache_key(self.repository, "dataset_types"),
            lambda: [t.to_dict() for t in self._open().dataset_types()],
        )
        return [DatasetType.from_dict(r) for r in rows or []]

    def collections(self) -> list[str]:
        rows = self._answer(
            cache_key(self.repository, "collections"),
            lambda: [c["name"] for c in self._open().query_collections()],
        )
        return list(rows or [])

    def dimensions(self, dataset_types: Sequence[str] = ()) -> list[str]:
        """Dimensions of these dataset types (in order, no repeats), else of the universe."""
        if dataset_types:
            known = {t.name: t for t in self.dataset_types()}
            names: dict[str, None] = {}
            for name in dataset_types:
                if name in known:
                    names.update(dict.fromkeys(known[name].all_dimensions))
            return list(names)
        rows = self._answer(
            cache_key(self.repository, "universe"), lambda: list(self._open().universe.dimensions)
        )
        return list(rows or [])

    def values(
        self,
        dimension: str,
        where: str = "",
        dataset_type: str | None = None,
        collections: Sequence[str] | None = None,
    ) -> list[Any]:
        """Distinct values under ``where`` (same cache entries as ``DatasetQuery.values``)."""
        with contextlib.suppress(ButlerError):
            where = where_text(parse_where(where))  # the builder's canonical spelling
        key = cache_key(
            self.repository,
            "values",
            dataset_type=dataset_type,
            dimension=dimension,
            where=where,
            bind={},
            collections=list(collections) if collections else None,
        )
        rows = self._answer(
            key,
            lambda: self._open().query_dimension_values(
                dimension,
                where,
                dataset_type=dataset_type,
                collections=list(collections) if collections else None,
            ),
        )
        return list(rows or [])
