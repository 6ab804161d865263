"""The client's local file cache (diskcache): whole files, verified, size-limited.

``get_local_path`` on a remote butler downloads a dataset's file once, verifies its checksum,
and keeps it here under that checksum (a checksum names the same bytes for ever), so the path
it returns can be memory-mapped and stays valid however many butlers share the cache.
"""

from __future__ import annotations

import os
from pathlib import Path

import diskcache

DEFAULT_SIZE_LIMIT = 10 * 2**30


def default_cache_dir() -> Path:
    base = os.environ.get("BUTLER_CACHE_DIR")
    if base:
        return Path(base)
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "butler" / "files"


class FileCache:
    def __init__(self, directory: Path | None = None, size_limit: int = DEFAULT_SIZE_LIMIT) -> None:
        self.directory = Path(directory) if directory else default_cache_dir()
        self.directory.mkdir(parents=True, exist_ok=True)
        # disk_min_file_size=0 keeps every value in a file of its own: the paths handed out
        # must be real files that can be memory-mapped.
        self._cache = diskcache.Cache(
            str(self.directory),
            size_limit=size_limit,
            disk_min_file_size=0,
            eviction_policy="least-recently-used",
        )

    def path(self, checksum: str) -> Path | None:
        """The cached file with this checksum, or None."""
        handle = self._cache.get(checksum, read=True)
        if handle is None:
            return None
        try:
            return Path(handle.name)
        finally:
            handle.close()

    def add(self, checksum: str, file: Path) -> Path:
        """Store a verified file (it is copied in; the caller removes its own copy)."""
        with open(file, "rb") as handle:
            self._cache.set(checksum, handle, read=True)
        stored = self.path(checksum)
        assert stored is not None
        return stored

    @property
    def volume(self) -> int:
        return int(self._cache.volume())

    def close(self) -> None:
        self._cache.close()
