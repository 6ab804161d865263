"""A disk cache of what completion offers (dataset types, dimension values), per repository.

Completion must be quick and must keep working on a laptop with no network: answers are
kept in a diskcache under the user cache directory, keyed by repository and constraint.
A fresh answer (younger than ``ttl``) is used as is; an older one is refreshed, and used
anyway when the repository cannot be reached.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import diskcache

from butler.errors import RemoteUnavailableError

T = TypeVar("T")
DEFAULT_TTL = 300.0
"""Seconds an answer is used without asking the repository again."""
SIZE_LIMIT = 64 * 2**20


def default_completion_cache_dir() -> Path:
    explicit = os.environ.get("BUTLER_COMPLETION_CACHE_DIR")
    if explicit:
        return Path(explicit)
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "butler" / "completion"


def cache_key(repository: str, what: str, **parts: Any) -> str:
    """A stable text key: JSON with sorted keys, so equal constraints give equal keys."""
    return json.dumps(
        {"repository": repository, "what": what, **parts}, sort_keys=True, default=str
    )


def is_fresh(stored_at: float, now: float, ttl: float) -> bool:
    return 0 <= now - stored_at < ttl


class ValueCache:
    """Answers of completion queries, on disk, shared by every process of the user."""

    def __init__(
        self,
        directory: Path | None = None,
        ttl: float = DEFAULT_TTL,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.directory = directory or default_completion_cache_dir()
        self.ttl = ttl
        self._clock = clock
        self._cache: diskcache.Cache | None = None

    def _open(self) -> diskcache.Cache:
        if self._cache is None:
            self.directory.mkdir(parents=True, exist_ok=True)
            self._cache = diskcache.Cache(str(self.directory), size_limit=SIZE_LIMIT)
        return self._cache

    def get_or_fetch(self, key: str, fetch: Callable[[], T], max_age: float | None = None) -> T:
        """The cached answer if younger than ``max_age`` (default: the ttl); else
        ``fetch()`` (stored); else, if the repository cannot be reached, the stale one.

        ``max_age=0`` always asks the repository: what a user asks for explicitly is
        current, while completion (asked at every TAB) may use a recent answer.
        """
        cache = self._open()
        stored = cache.get(key)
        now = self._clock()
        if stored is not None and is_fresh(
            stored[0], now, self.ttl if max_age is None else max_age
        ):
            return stored[1]  # type: ignore[no-any-return]
        try:
            value = fetch()
        except RemoteUnavailableError:
            if stored is None:
                raise
            return stored[1]  # type: ignore[no-any-return]
        # Only JSON-able values go in, so nothing from a cache file is ever unpickled
        # into something other than plain data.
        cache.set(key, (now, json.loads(json.dumps(value, default=str))))
        return value

    def cached(self, key: str) -> Any:
        """The stored answer, however old, or None."""
        stored = self._open().get(key)
        return None if stored is None else stored[1]

    def close(self) -> None:
        if self._cache is not None:
            self._cache.close()
            self._cache = None
