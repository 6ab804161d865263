"""The answer from a stored version, whichever lane reads it: its status, its fields, the
layout of its body (the whole object, one range, several ranges as multipart/byteranges)
and, for a small range, its bytes in hand.

Both lanes build their answers here: the full handler (:func:`proxyd.reading.respond_from_blocks`)
turns a :class:`Layout` into an aiohttp response and streams its parts; the fast lane
(:mod:`proxyd.fastlane`) writes the same status and fields to the socket itself, with the
bytes from :func:`small_body`. What differs between them is only how the answer is written
(and the fields aiohttp adds on its own, which the fast lane adds the same way).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

from butler.http.ranges import (
    ByteRange,
    content_range,
    make_boundary,
    multipart_content_type,
    multipart_layout,
)
from proxyd.policy import freshness
from proxyd.policy.requests import forward_response_headers, headers_of
from proxyd.store import BlockStore

SENDFILE_MIN = 128 * 1024
"""Stored pieces at least this long go from the block's file to the socket (sendfile);
shorter ones are sent from memory."""

# Statuses whose responses have no content (RFC 9110 §15.3.5, §15.4.5): no Content-Length.
NO_CONTENT = frozenset({204, 304})

# Stored fields a response from cache does not repeat: proxyd frames each response itself
# (length, range, Accept-Ranges, Age, its own X-Cache), and X-Request-ID names the origin's
# log line of the request that filled the cache, not this one. Every other stored field is
# replayed, unknown ones included: RFC 9111 §3.1 and §4 (a cache answers with the stored
# header fields), so new end-to-end fields work through the proxy. headers_to_store has
# already dropped hop-by-hop fields, Set-Cookie and the other per-response ones.
NOT_REPLAYED = {
    "content-length",
    "content-range",
    "transfer-encoding",
    "accept-ranges",
    "age",
    "x-cache",
    "x-request-id",
}


@functools.lru_cache(maxsize=1024)
def replayed(stored: tuple[tuple[str, str], ...]) -> tuple[tuple[str, str], ...]:
    """The stored fields a response from cache repeats (worked out once per stored version:
    every hit of a hot object asks)."""
    kept = [(k, v) for k, v in stored if k.lower() not in NOT_REPLAYED]
    return tuple(headers_of(forward_response_headers(kept)).items())


@dataclass(frozen=True, slots=True)
class StoredAnswer:
    """What every answer from one stored version carries, before the per-request parts
    (worked out once per version by the fast lane, per request by the full handler)."""

    stored: freshness.StoredMeta
    status: int
    """The stored status: a 200's answers may be partial; a stored 301, 404... is replayed."""
    fields: tuple[tuple[str, str], ...]
    """The stored fields replayed, then Accept-Ranges."""
    content_type: str
    """The representation's type, repeated in each part of a multipart answer."""
    age_at_receipt: float
    """The response's age when it was received: its age now is that plus the time since
    (RFC 9111 §4.2.3, resident time)."""

    def age(self, now: float) -> str:
        """The Age field of an answer sent at ``now``."""
        return freshness.age_field(self.age_at_receipt + now - self.stored.response_time)


def stored_answer(stored: freshness.StoredMeta) -> StoredAnswer:
    return StoredAnswer(
        stored,
        stored.status,
        (*replayed(stored.headers), ("Accept-Ranges", "bytes")),
        stored.field("Content-Type") or "application/octet-stream",
        stored.current_age(stored.response_time),
    )


class Layout(NamedTuple):
    """The status, framing fields and body of one answer from a stored version (a named
    tuple: the fast lane makes one per request, and a tuple is quicker to make than a
    frozen dataclass)."""

    status: int
    fields: tuple[tuple[str, str], ...]
    """Set over the stored fields (replacing those of the same name): the Content-Range of
    a single range, the Content-Type of a multipart answer."""
    length: int | None
    """Content-Length; None for a status without content."""
    parts: tuple[tuple[bytes, ByteRange], ...]
    """Send, in order, each part's header bytes then the stored bytes of its range..."""
    closing: bytes
    """... then these."""


def layout(answer: StoredAnswer, size: int, ranges: Sequence[ByteRange] | None) -> Layout:
    """The answer to a request for ``ranges`` (already satisfiable and within ``size``) of
    a ``size``-byte stored object, or for all of it (``ranges`` None)."""
    if ranges is None:
        whole = ((b"", ByteRange(0, size - 1)),) if size else ()
        length = None if answer.status in NO_CONTENT else size
        return Layout(answer.status, (), length, whole, b"")
    if len(ranges) == 1:
        only = ranges[0]
        return Layout(
            206, (("Content-Range", content_range(only, size)),), only.length, ((b"", only),), b""
        )
    boundary = make_boundary()
    multipart = multipart_layout(ranges, size, answer.content_type, boundary)
    return Layout(
        206,
        (("Content-Type", multipart_content_type(boundary)),),
        multipart.content_length,
        multipart.parts,
        multipart.closing,
    )


def small_body(
    store: BlockStore, version: str, block_size: int, byte_range: ByteRange
) -> bytes | tuple[int, int, int] | None:
    """The bytes of a small range whose blocks are held in memory or verified in the page
    cache (read in the loop: no thread hop); or the first (block, start, stop) piece found
    in neither; or None for a range long enough to go out from the block files."""
    pieces = small_pieces(block_size, byte_range)
    if pieces is None:
        return None
    parts = []
    for piece in pieces:
        part = store.on_loop.quick_slice(version, *piece)
        if part is None:
            return piece
        parts.append(part)
    return parts[0] if len(parts) == 1 else b"".join(parts)


def small_pieces(block_size: int, byte_range: ByteRange) -> list[tuple[int, int, int]] | None:
    """(block, start, stop) of each block a range short enough to send from memory
    touches; None for longer ranges, which go out from the block files (sendfile)."""
    if byte_range.length >= SENDFILE_MIN:
        return None
    pieces = []
    for index in range(byte_range.start // block_size, byte_range.end // block_size + 1):
        base = index * block_size
        start = max(byte_range.start, base) - base
        stop = min(byte_range.end + 1, base + block_size) - base
        pieces.append((index, start, stop))
    return pieces
