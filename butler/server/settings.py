"""Settings of ``butler serve``: one object, passed explicitly to everything that needs it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

ReadAccess = Literal["public", "token"]


@dataclass(frozen=True)
class ServerSettings:
    repo: Path
    host: str = "127.0.0.1"
    port: int = 8642
    tokens_file: Path | None = None
    read_only: bool = False
    read_access: ReadAccess = "public"
    """``public``: anyone may read; ``token``: reads need a token with the ``read`` scope."""
    stale_if_error: int = 86400
    """Seconds after which a cache may no longer serve API answers and a private
    repository's files when this server cannot be reached (RFC 5861 ``stale-if-error``);
    they are otherwise revalidated on every use (``no-cache``), so never out of date while
    the server answers."""
    file_max_age: int = 365 * 24 * 3600
    """Dataset files never change (a UUID names the same bytes), so caches keep them long."""
    page_size: int = 1000
    max_page_size: int = 10_000
    max_ranges: int = 200
    """Ranges per file request; more is refused (RFC 9110 §14.2 warns of range abuse)."""
    staging_ttl: int = 3600
    """Seconds an unfinished remote transaction's uploads are kept before being removed."""
    read_workers: int = 4
    """Read-only registry connections used in parallel by API requests."""
    max_upload_bytes: int = 64 * 2**30
    """Largest upload accepted (413 above it); uploads stream to disk, never to memory."""
    max_json_bytes: int = 16 * 2**20
    """Largest JSON request body (413 above it): JSON bodies are read into memory whole."""
    idle_timeout: float = 15.0
    """Seconds a connection may sit without a complete request: it bounds both a slow
    client's request headers and an idle keep-alive connection."""
    body_timeout: float = 30.0
    """Seconds the server waits for the next bytes of a request body before giving up (408)."""
    max_connections: int | None = None
    """Connections served at once (more are closed at once); None: from the process's
    descriptor limit, leaving room for files and the registry."""
