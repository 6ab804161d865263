"""``DatasetQuery``: an immutable, completable query for datasets of one type.

Each method returns a new query, so partial queries can be kept and reused
(``hsc = q.where(instrument="HSC")``). Counting, sizing and distinct values are asked of
the repository (its server, for a remote one) without listing datasets; value lists go
through the completion cache so they are offered quickly and offline.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from butler.errors import InvalidQueryError
from butler.interactive.display import QueryView, render_html, render_text
from butler.interactive.expression import (
    ConstraintValue,
    compose,
    inline_bind,
    normalise,
    where_text,
)
from butler.interactive.signature import where_doc, where_signature
from butler.interactive.value_cache import ValueCache, cache_key
from butler.refs import DataCoordinate, DatasetRef, DatasetType, FileInfo
from butler.units import human_size

if TYPE_CHECKING:
    from butler.butler import Butler, QuerySummary

PAGE_SIZE = 1000
PREVIEW_ROWS = 5


def repository_id(butler: Butler) -> str:
    """What names a repository in the completion cache: its URL or its directory."""
    url = getattr(butler, "url", None)
    mirror = getattr(butler, "mirror_root", None)
    if url is not None:
        return f"{url} (mirror {mirror})" if mirror is not None else str(url)
    return str(getattr(butler, "root", repr(butler)))


class DatasetQuery:
    """Datasets of one type under constraints; nothing is fetched until asked for.

    ``where(**dimensions)`` narrows (its signature lists the dataset type's dimensions),
    ``count()`` / ``size()`` / ``values(dim)`` ask the repository, iteration yields
    :class:`~butler.refs.DatasetRef`, ``get()`` reads the datasets.
    """

    where: Callable[..., DatasetQuery]
    values: DimensionValues
    choices: Choices

    def __init__(
        self,
        butler: Butler,
        dataset_type: DatasetType,
        cache: ValueCache,
        *,
        constraints: Mapping[str, ConstraintValue] | None = None,
        expressions: Sequence[str] = (),
        bind: Mapping[str, Any] | None = None,
        collections: Sequence[str] | None = None,
        find_first: bool = True,
    ) -> None:
        self.butler = butler
        self.dataset_type = dataset_type
        self.constraints: dict[str, ConstraintValue] = dict(constraints or {})
        self.expressions = tuple(expressions)
        self.bind: dict[str, Any] = dict(bind or {})
        self.collections = list(collections) if collections is not None else None
        self.find_first = find_first
        self._cache = cache
        # Instance attributes rather than properties or methods: completers evaluate them
        # without running code (IPython refuses properties), and each query's ``where``
        # carries a signature of its own dataset type's dimensions.
        self.where = _bound_where(self)
        self.values = DimensionValues(self)
        self.choices = Choices(self)
        # Fail now, not at the first count(), on a bad expression or unknown dimension.
        self._node = compose(self.constraints, self.expressions)

    # -- building -------------------------------------------------------------------------

    @property
    def dimensions(self) -> tuple[str, ...]:
        """Dimensions a constraint may name: required, then implied (``band``...)."""
        return self.dataset_type.all_dimensions

    def _replace(self, **changes: Any) -> DatasetQuery:
        args: dict[str, Any] = {
            "constraints": self.constraints,
            "expressions": self.expressions,
            "bind": self.bind,
            "collections": self.collections,
            "find_first": self.find_first,
        }
        args.update(changes)
        return DatasetQuery(self.butler, self.dataset_type, self._cache, **args)

    def _narrow(
        self, expression: str = "", bind: Mapping[str, Any] | None = None, **values: Any
    ) -> DatasetQuery:
        unknown = sorted(set(values) - set(self.dimensions))
        if unknown:
            raise InvalidQueryError(
                f"{self.dataset_type.name!r} has no dimension {', '.join(map(repr, unknown))}; "
                f"its dimensions are {', '.join(self.dimensions)}"
            )
        if not isinstance(expression, str):
            raise InvalidQueryError(
                f"the positional argument of where() is a where expression (str), not "
                f"{type(expression).__name__}; give dimension values as keywords"
            )
        merged_bind = dict(self.bind)
        for name, value in (bind or {}).items():
            if name in merged_bind and merged_bind[name] != value:
                raise InvalidQueryError(f"bind value {name!r} is given twice, differently")
            merged_bind[name] = value
        constraints = dict(self.constraints)
        for dim, value in values.items():
            if value is not None:
                # A later value for a dimension replaces the earlier one.
                constraints.pop(dim, None)
                constraints[dim] = normalise(dim, value)
        expressions = self.expressions + ((expression,) if expression.strip() else ())
        return self._replace(constraints=constraints, expressions=expressions, bind=merged_bind)

    def in_collections(self, *collections: str) -> DatasetQuery:
        """The same query searching these collections, in order."""
        return self._replace(collections=list(collections) or None)

    def all_runs(self) -> DatasetQuery:
        """Every matching dataset, not only the first per data ID in search order."""
        return self._replace(find_first=False)

    # -- what it means ----------------------------------------------------------------------

    @property
    def where_expression(self) -> str:
        """The ``where`` text sent to the repository (bind references kept)."""
        return where_text(self._node)

    def to_where(self) -> str:
        """The equivalent ``where`` string, bind values written in as quoted literals."""
        if self._node is None:
            return ""
        return where_text(inline_bind(self._node, self.bind))

    def _query_args(self) -> dict[str, Any]:
        return {
            "collections": self.collections,
            "where": self.where_expression,
            "bind": self.bind,
            "find_first": self.find_first,
        }

    # -- asking the repository ------------------------------------------------------------

    def summary(self) -> QuerySummary:
        """Count and total bytes, computed by the repository (no listing)."""
        return self.butler.query_summary(self.dataset_type.name, **self._query_args())

    def count(self) -> int:
        """How many datasets the query matches."""
        return self.summary().count

    def size(self) -> int:
        """Total bytes of the matching datasets' files."""
        return self.summary().size

    def distinct(self, dimension: str, *, max_age: float | None = 0) -> list[Any]:
        """Sorted distinct values of ``dimension`` among the matching datasets.

        Asked of the repository each time by default (``max_age=0``); completion passes
        ``max_age=None`` to accept a recent cached answer. Offline, the last answer is used.
        """
        if dimension not in self.dimensions:
            raise InvalidQueryError(
                f"{self.dataset_type.name!r} has no dimension {dimension!r}; "
                f"its dimensions are {', '.join(self.dimensions)}"
            )
        args = self._query_args()
        key = cache_key(
            repository_id(self.butler),
            "values",
            dataset_type=self.dataset_type.name,
            dimension=dimension,
            where=args["where"],
            bind=self.bind,
            collections=self.collections,
        )
        return list(
            self._cache.get_or_fetch(
                key,
                lambda: self.butler.query_dimension_values(
                    dimension,
                    args["where"],
                    self.bind,
                    dataset_type=self.dataset_type.name,
                    collections=self.collections,
                ),
                max_age,
            )
        )

    def with_files(self, limit: int | None = None) -> Iterator[tuple[DatasetRef, FileInfo]]:
        """(ref, file record) of each match, fetched a page at a time."""
        offset = 0
        while limit is None or offset < limit:
            page_size = PAGE_SIZE if limit is None else min(PAGE_SIZE, limit - offset)
            page = self.butler.query_datasets_with_files(
                self.dataset_type.name,
                self.collections,
                self.where_expression,
                self.bind,
                find_first=self.find_first,
                limit=page_size,
                offset=offset,
            )
            yield from page
            if len(page) < page_size:
                return
            offset += len(page)

    def __iter__(self) -> Iterator[DatasetRef]:
        for ref, _ in self.with_files():
            yield ref

    def refs(self) -> list[DatasetRef]:
        return list(self)

    def data_ids(self) -> list[DataCoordinate]:
        return [ref.data_id for ref in self]

    def get(self, parameters: Mapping[str, Any] | None = None) -> list[Any]:
        """Read every matching dataset (in data ID order)."""
        return [self.butler.get(ref, parameters=parameters) for ref in self]

    async def get_async(
        self, parameters: Mapping[str, Any] | None = None, *, concurrency: int = 8
    ) -> list[Any]:
        """:meth:`get` without blocking the event loop, ``concurrency`` reads at a time."""
        refs = await asyncio.to_thread(self.refs)
        limit = asyncio.Semaphore(concurrency)

        async def read(ref: DatasetRef) -> Any:
            async with limit:
                return await asyncio.to_thread(self.butler.get, ref, parameters=parameters)

        return list(await asyncio.gather(*(read(ref) for ref in refs)))

    # -- display --------------------------------------------------------------------------

    def _view(self) -> QueryView:
        columns = [*self.dataset_type.dimensions, "run", "size"]
        try:
            summary = self.summary()
            rows = [
                {**ref.data_id.required, "run": ref.run, "size": human_size(file.size)}
                for ref, file in self.with_files(limit=PREVIEW_ROWS)
            ]
        except Exception as exc:  # a repr must show the problem, not raise it
            return QueryView(
                self.dataset_type.name,
                repository_id(self.butler),
                self.to_where(),
                None,
                None,
                columns,
                [],
                error=f"{type(exc).__name__}: {exc}",
            )
        return QueryView(
            self.dataset_type.name,
            repository_id(self.butler),
            self.to_where(),
            summary.count,
            summary.size,
            columns,
            rows,
        )

    def __repr__(self) -> str:
        return render_text(self._view())

    def _repr_html_(self) -> str:
        return render_html(self._view())


def _bound_where(query: DatasetQuery) -> Callable[..., DatasetQuery]:
    def where(*args: Any, **kwargs: Any) -> DatasetQuery:
        if len(args) > 1:
            raise InvalidQueryError(
                "where() takes one positional where expression; give dimension values as keywords"
            )
        return query._narrow(*args, **kwargs)

    where.__signature__ = where_signature(  # type: ignore[attr-defined]
        query.dimensions, query.butler.universe, DatasetQuery
    )
    where.__doc__ = where_doc(query.dataset_type.name, query.dimensions)
    where.__qualname__ = "DatasetQuery.where"
    return where


class DimensionValues:
    """``q.values("visit")`` or ``q.values["visit"]``: values still possible (completable)."""

    def __init__(self, query: DatasetQuery) -> None:
        self._query = query

    def __call__(self, dimension: str) -> list[Any]:
        return self._query.distinct(dimension)

    def __getitem__(self, dimension: str) -> list[Any]:
        return self._query.distinct(dimension)

    def _ipython_key_completions_(self) -> list[str]:
        return list(self._query.dimensions)

    def __repr__(self) -> str:
        return f"<values of {', '.join(self._query.dimensions)}: call with a dimension name>"


class ValueChoices(Mapping[Any, DatasetQuery]):
    """Values of one dimension still possible; ``[value]`` narrows the query to it."""

    def __init__(self, query: DatasetQuery, dimension: str) -> None:
        self._query = query
        self.dimension = dimension

    def _values(self) -> list[Any]:
        return self._query.distinct(self.dimension)

    def __getitem__(self, value: Any) -> DatasetQuery:
        if value not in self._values():
            raise KeyError(
                f"{value!r} is not a possible {self.dimension} here; choose from "
                f"{self._values()[:20]}"
            )
        return self._query.where(**{self.dimension: value})

    def __contains__(self, value: object) -> bool:
        return value in self._values()

    def __iter__(self) -> Iterator[Any]:
        return iter(self._values())

    def __len__(self) -> int:
        return len(self._values())

    def _ipython_key_completions_(self) -> list[Any]:
        return self._query.distinct(self.dimension, max_age=None)

    def __repr__(self) -> str:
        return f"{self.dimension}: {self._values()!r}"


class Choices:
    """One attribute per dimension of the dataset type: ``q.choices.visit[1228]``."""

    def __init__(self, query: DatasetQuery) -> None:
        for dim in query.dimensions:
            setattr(self, dim, ValueChoices(query, dim))

    def __repr__(self) -> str:
        return f"<choices of {', '.join(vars(self))}>"
