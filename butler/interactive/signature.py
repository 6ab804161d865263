"""The signature of ``DatasetQuery.where`` for one dataset type (pure).

IPython and Jedi complete keyword arguments from ``inspect.signature``; giving each query's
``where`` a ``__signature__`` whose keyword-only parameters are exactly the dataset type's
dimensions is what makes ``q.where(vi<TAB>`` offer ``visit=`` and nothing that would fail.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from butler.universe import DimensionUniverse

_KINDS: dict[str, type] = {"int": int, "str": str, "float": float}


def where_signature(
    dimensions: Sequence[str], universe: DimensionUniverse, returns: Any
) -> inspect.Signature:
    """``(expression='', /, *, <dimension>=None ..., bind=None) -> returns``."""
    params = [
        inspect.Parameter(
            "expression",
            inspect.Parameter.POSITIONAL_ONLY,
            default="",
            annotation=str,
        )
    ]
    for dim in dimensions:
        kind = _KINDS[universe[dim].key_kind]
        params.append(
            inspect.Parameter(
                dim,
                inspect.Parameter.KEYWORD_ONLY,
                default=None,
                annotation=kind | Iterable[kind] | None,  # type: ignore[valid-type]
            )
        )
    params.append(
        inspect.Parameter(
            "bind",
            inspect.Parameter.KEYWORD_ONLY,
            default=None,
            annotation=Mapping[str, Any] | None,
        )
    )
    return inspect.Signature(params, return_annotation=returns)


def where_doc(dataset_type: str, dimensions: Sequence[str]) -> str:
    return (
        f"Narrow the {dataset_type!r} query: keywords are its dimensions "
        f"({', '.join(dimensions)}); a value, a list of values or a range. The optional "
        "positional expression is in the where language and may use :name bind values."
    )
