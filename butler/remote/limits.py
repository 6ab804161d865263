"""What a client does not leave to chance: how far it follows a server's pages, and how it
knows that its own disk is full.

Pages (``limit``/``offset`` in, ``next_offset`` out): a client keeps every row of a paged
answer in memory, so it must not trust the server to end the pages; a faulty or hostile
server that always names a next page would make it grow without bound. :class:`Pages`
checks each page as it comes (the next offset moves forward, the page brings rows and not
the same rows as the one before, no more rows than asked) and stops after MAX_PAGES pages or
MAX_ROWS rows, with an error that says so.

Shared by the remote butler (aiohttp) and the mirror's blocking client; it imports nothing
of either, so the mirror's start pays nothing for it.
"""

from __future__ import annotations

import errno
import sqlite3
from collections.abc import Mapping, Sequence
from typing import Any

from butler.errors import ServerError

SQLITE_FULL = 13
"""SQLite's result code for "database or disk is full"."""
SQLITE_IOERR_SHMSIZE = 4874
"""SQLite's "disk I/O error" when it cannot enlarge a WAL database's ``-shm`` file: what
even opening such a database meets on a full disk."""
MAX_ROWS = 2_000_000
"""Rows of one paged answer at most: far beyond a query one pull or script handles (the
rows are all kept in memory), far below what exhausts a laptop's memory."""
MAX_ANSWER_BYTES = 512 * 2**20
"""The largest answer of the API (JSON, or an error's body) a client reads into memory: far
beyond any page of a query, far below what exhausts a laptop's memory. File bytes are not
API answers: they are streamed to disk or read by range."""
MAX_PAGES = 100_000
"""Pages of one paged answer at most (a server whose largest page is tiny, or that sends
short pages, would otherwise be followed for ever, a request at a time)."""


class Pages:
    """The paging state of one listing from ``url``: where the next page starts."""

    def __init__(self, url: str, offset: int = 0) -> None:
        self.url = url
        self.offset = offset
        """Where the next page to ask for starts."""
        self.pages = 0
        self.rows = 0
        self._previous: Sequence[Any] | None = None

    def rows_of(self, page: Any, key: str) -> list[Any]:
        """The rows of a page (the list under ``key``); a ServerError if it has none."""
        rows = page.get(key) if isinstance(page, dict) else None
        if not isinstance(rows, list):
            raise ServerError(
                f"{self.url}: the server's answer is not a page of {key!r} (the server, or a "
                "proxy in front of it, is faulty; tell its operator)"
            )
        return rows

    def follow(self, page: Mapping[str, Any], rows: Sequence[Any], limit: int) -> bool:
        """Take one page (asked for at :attr:`offset` with ``limit``) whose rows are ``rows``:
        True if another page follows (:attr:`offset` is then where it starts), False at the
        end. Raises :class:`~butler.errors.ServerError` when the pages do not end properly."""
        self.pages += 1
        self.rows += len(rows)
        if len(rows) > limit:
            raise self._error(f"a page brought {len(rows)} rows, {limit} were asked for")
        following = page.get("next_offset")
        if following is None:
            return False
        if isinstance(following, bool) or not isinstance(following, int):
            raise self._error(f"the next page's offset is {following!r}, not a number")
        if following <= self.offset:
            raise self._error(
                f"it named offset {following} as the next page after the page at {self.offset}"
            )
        if not rows:
            raise self._error(f"the page at offset {self.offset} brought no rows")
        if self._previous is not None and list(rows) == list(self._previous):
            raise self._error(f"the page at offset {self.offset} brought the same rows again")
        if self.rows >= MAX_ROWS or self.pages >= MAX_PAGES:
            raise self._error(f"it went on past {self.pages} pages and {self.rows} rows", True)
        self._previous = rows
        self.offset = following
        return True

    def _error(self, what: str, too_long: bool = False) -> ServerError:
        advice = (
            "narrow the query (a where expression, fewer collections)"
            if too_long
            else "the server (or a proxy in front of it) is faulty; tell its operator"
        )
        return ServerError(
            f"{self.url}: the server's pagination did not end after {self.pages} pages "
            f"({self.rows} rows): {what}. Stopped there, rather than follow it for ever; "
            f"{advice}"
        )


def is_disk_full(error: BaseException) -> bool:
    """Whether ``error`` says a disk has no room left: a write's ENOSPC (or a quota's
    EDQUOT), or SQLite's "database or disk is full" (or its failure to enlarge a ``-shm``
    file, which SQLite documents as a likely full disk), which are no OSError."""
    if isinstance(error, OSError):
        return error.errno in (errno.ENOSPC, errno.EDQUOT)
    if isinstance(error, sqlite3.Error):
        code = getattr(error, "sqlite_errorcode", None)  # Python 3.11+
        return code in (SQLITE_FULL, SQLITE_IOERR_SHMSIZE) or "disk is full" in str(error)
    return False


def answer_too_large(url: str, limit: int | None = None) -> ServerError:
    """What to say of an API answer longer than ``limit`` bytes (``MAX_ANSWER_BYTES``):
    nothing a butler server sends; a faulty or hostile server, or something else there."""
    limit = MAX_ANSWER_BYTES if limit is None else limit
    return ServerError(
        f"{url}: the server's answer is longer than {limit:,} bytes, more than any "
        "answer of the butler API; not read (the server, or a proxy in front of it, is "
        "faulty; tell its operator)"
    )
