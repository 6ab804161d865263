"""Tokens limited to collections: what a token's ``collections: [PATTERN, ...]`` lets it see.

A token file entry may list glob patterns (:func:`fnmatch.fnmatchcase`: ``*``, ``?``,
``[...]``, case-sensitive, ``*`` also matching ``/``). Such a token reads a RUN collection
whose name matches one of them, and a CHAINED collection whose name matches and every RUN
it reaches does too (a chain is read through its RUNs: one forbidden RUN would leak).

How the server applies it, and why:

* a query that names collections is **refused** (403 ``CollectionNotPermitted``) if one of
  them is not readable: answering from the allowed part alone would give a different,
  plausible-looking answer (find-first through a chain returns other datasets);
* a query over all collections (none named) is **filtered** to the readable RUNs: the
  token's view of the repository is the collections it may read;
* the collection list shows only readable collections; a dataset, found by ID, and its
  file are refused (403) unless their RUN is readable, so a shared cache revalidating a file
  with the client's own token gets the 403 and serves none of its bytes.

Dimension records and dataset types are not in collections and stay visible to every token
with the ``read`` scope.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any

from butler.direct_butler import DirectButler
from butler.errors import AuthorizationError


class CollectionNotPermittedError(AuthorizationError):
    """The token may not read (or write) that collection."""

    error_type = "CollectionNotPermitted"
    http_status = 403


@dataclass(frozen=True)
class CollectionRule:
    """The collections a token may use: ``patterns`` None for every collection."""

    patterns: tuple[str, ...] | None = None
    who: str = ""

    @property
    def unrestricted(self) -> bool:
        return self.patterns is None

    def matches(self, name: str) -> bool:
        return self.patterns is None or any(fnmatchcase(name, p) for p in self.patterns)

    def readable(self, butler: DirectButler, name: str) -> bool:
        """(Blocking.) Whether ``name`` may be read: it matches and so do its RUNs."""
        if self.patterns is None:
            return True
        if not self.matches(name):
            return False
        return all(self.matches(run) for run in butler.registry.flatten([name]))

    def refusal(self, name: str) -> CollectionNotPermittedError:
        return CollectionNotPermittedError(
            f"token {self.who!r} may not use collection {name!r}; its collections are "
            f"{', '.join(self.patterns or ())}"
        )

    def searched(self, butler: DirectButler, collections: Sequence[str] | None) -> list[str] | None:
        """(Blocking.) The collections a query may search: those named, each checked
        (refused if not readable), or for None (all) every readable RUN."""
        if self.patterns is None:
            return None if collections is None else list(collections)
        if collections is None:
            return [run for run in butler.registry.all_runs() if self.matches(run)]
        for name in collections:
            if not self.readable(butler, name):
                raise self.refusal(name)
        return list(collections)

    def check_run(self, run: str) -> None:
        """Refuse a dataset (or its file) in a RUN this token may not read."""
        if not self.matches(run):
            raise self.refusal(run)

    def visible_collections(
        self, butler: DirectButler, rows: list[dict[str, Any]]
    ) -> list[dict[str, Any]]:
        """(Blocking.) The rows of a collection list this token may see."""
        if self.patterns is None:
            return rows
        return [row for row in rows if self.readable(butler, str(row["name"]))]


EVERYTHING = CollectionRule()


def parse_patterns(value: Any, where: str) -> tuple[str, ...] | None:
    """A token entry's ``collections`` (None when absent: every collection)."""
    from butler.errors import RepositoryConfigError

    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(p, str) and p for p in value):
        raise RepositoryConfigError(
            f"{where}: collections must be a list of collection names or glob patterns"
        )
    return tuple(value)


COLLECTION_RULE = "collection_rule"
"""Request key: the :class:`CollectionRule` of the request's token (set by the server's
authentication middleware; :data:`EVERYTHING` for a token without ``collections``)."""


def check_operations(
    rule: CollectionRule, butler: DirectButler, operations: Sequence[dict[str, Any]]
) -> None:
    """(Blocking.) Refuse a commit whose operations touch a collection the token may not
    write: a put into, a run created as, a chain defined as or through, or a removal from
    one. Dimension records and dataset types are shared by every collection: not limited."""
    if rule.patterns is None:
        return
    for op in operations:
        kind = op.get("op")
        if kind == "put":
            rule.check_run(str(op["run"]))
        elif kind == "register_run":
            rule.check_run(str(op["name"]))
        elif kind == "set_collection_chain":
            rule.check_run(str(op["name"]))
            for child in op["children"]:
                if not rule.readable(butler, str(child)):
                    raise rule.refusal(str(child))
        elif kind == "remove":
            for ref in op["refs"]:
                # The run the registry holds, not the one the client says.
                found = butler.registry.get_dataset(uuid.UUID(str(ref["id"])))
                if found is not None:
                    rule.check_run(found[0].run)
