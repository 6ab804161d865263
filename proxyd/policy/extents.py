"""Sparse reads: which bytes to fetch, and when a request is better served by extents than
by whole blocks (pure: no I/O).

Blocks (``--block-size``, 1 MiB by default) suit long reads: one file per block, sent by
sendfile. A small read — a FITS header, a cutout's rows spread over a large image — would
cost the origin a whole block per piece. Such reads are kept as *extents*: byte-exact
pieces of one block, stored as fetched and merged with their neighbours, so a cold read
costs the origin the bytes asked for (plus at most ``GAP`` bytes between two pieces) and
one upstream range request per ``UPSTREAM_RANGES`` runs of missing bytes.

An :class:`Extent` is half-open (``stop`` excluded), like a slice; a client's or origin's
``Range`` is inclusive (:class:`butler.http.ranges.ByteRange`) and converted at the edge.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from butler.http.ranges import ByteRange

GAP = 512
"""Missing pieces closer than this are fetched as one: a multipart part costs about 100
bytes of headers, so a smaller gap is cheaper fetched than skipped."""
UPSTREAM_RANGES = 64
"""Ranges per upstream request: what origins accept (``butler serve`` takes 64 by default,
nginx any number); more missing pieces are fetched by several requests at once."""
SPARSE_MAX_BYTES = 8 * 1024 * 1024
"""The most bytes one response may take from extents: they are assembled in memory."""
SPARSE_RATIO = 2
"""A request goes to extents when the blocks it lacks would cost the origin more than this
many times the bytes it asks for."""


@dataclass(frozen=True, slots=True, order=True)
class Extent:
    """Bytes ``start`` up to ``stop`` (excluded) of an object."""

    start: int
    stop: int

    def __post_init__(self) -> None:
        if self.start < 0 or self.stop <= self.start:
            raise ValueError(f"invalid extent {self.start}:{self.stop}")

    @property
    def length(self) -> int:
        return self.stop - self.start

    @classmethod
    def of(cls, byte_range: ByteRange) -> Extent:
        """The extent of an inclusive byte range."""
        return cls(byte_range.start, byte_range.end + 1)

    @property
    def range_spec(self) -> str:
        """This extent as a range-spec of a ``Range`` field (RFC 9110 §14.1.1)."""
        return f"{self.start}-{self.stop - 1}"


def merged(extents: Iterable[Extent], gap: int = 0) -> list[Extent]:
    """``extents`` sorted, overlapping or adjacent ones (or closer than ``gap``) joined."""
    out: list[Extent] = []
    for e in sorted(extents):
        if out and e.start <= out[-1].stop + gap:
            if e.stop > out[-1].stop:
                out[-1] = Extent(out[-1].start, e.stop)
        else:
            out.append(e)
    return out


def missing(wanted: Sequence[Extent], have: Iterable[Extent]) -> list[Extent]:
    """The parts of ``wanted`` (sorted, disjoint) that ``have`` does not cover."""
    holes: list[Extent] = []
    covered = merged(have)
    i = 0
    for w in wanted:
        position = w.start
        while i < len(covered) and covered[i].stop <= position:
            i += 1
        j = i
        while position < w.stop:
            if j < len(covered) and covered[j].start <= position:
                position = max(position, covered[j].stop)
                j += 1
                continue
            end = w.stop if j >= len(covered) else min(w.stop, covered[j].start)
            holes.append(Extent(position, end))
            position = end
    return holes


def split_at_blocks(extent: Extent, block_size: int) -> list[Extent]:
    """``extent`` cut at block boundaries: each piece lies in one block."""
    if block_size <= 0:
        raise ValueError(f"block size must be positive, not {block_size}")
    pieces = []
    start = extent.start
    while start < extent.stop:
        stop = min(extent.stop, (start // block_size + 1) * block_size)
        pieces.append(Extent(start, stop))
        start = stop
    return pieces


def blocks_touched(extents: Iterable[Extent], block_size: int) -> list[int]:
    """Indexes of the blocks ``extents`` touch, in order."""
    return sorted(
        {i for e in extents for i in range(e.start // block_size, (e.stop - 1) // block_size + 1)}
    )


def block_bytes(indexes: Iterable[int], size: int, block_size: int) -> int:
    """Bytes of the blocks ``indexes`` of an object of ``size`` bytes."""
    return sum(max(0, min(block_size, size - i * block_size)) for i in indexes)


def prefers_extents(requested: int, lacking_block_bytes: int) -> bool:
    """Whether ``requested`` bytes are better fetched as extents than as the blocks that
    hold them (``lacking_block_bytes`` of blocks not stored): when those blocks would cost
    the origin more than :data:`SPARSE_RATIO` times the bytes asked for."""
    return 0 < requested <= SPARSE_MAX_BYTES and lacking_block_bytes > SPARSE_RATIO * requested


def fetch_requests(holes: Sequence[Extent], size: int) -> list[list[Extent]]:
    """The upstream requests that fetch ``holes`` (sorted, disjoint) of an object of ``size``
    bytes: holes closer than :data:`GAP` are fetched as one, then at most
    :data:`UPSTREAM_RANGES` ranges per request."""
    joined = [Extent(e.start, min(e.stop, size)) for e in merged(holes, GAP) if e.start < size]
    return [joined[i : i + UPSTREAM_RANGES] for i in range(0, len(joined), UPSTREAM_RANGES)]


def range_field(extents: Sequence[Extent]) -> str:
    """The ``Range`` field value asking for ``extents``."""
    if not extents:
        raise ValueError("no extents to ask for")
    return "bytes=" + ",".join(e.range_spec for e in extents)


def is_whole_blocks(extent: Extent, size: int, block_size: int) -> bool:
    """Whether ``extent`` covers whole blocks exactly (the last one may end at ``size``)."""
    return extent.start % block_size == 0 and (extent.stop % block_size == 0 or extent.stop == size)


def combinable(etag: str | None, last_modified: str | None) -> bool:
    """Whether pieces of an object fetched at different times may be served together: only
    with a validator, which every later fetch sends as a precondition (a changed object is
    then refused, never mixed in). An object without one is cached only whole, from one
    fetch (:func:`proxyd.policy.blocks.cacheable_in_blocks`)."""
    return etag is not None or last_modified is not None


def exact_first_fetch(first: int | None, last: int | None, block_size: int) -> Extent | None:
    """The bytes a first fetch asks for when the client's first range-spec is small (at
    most a quarter of a block): exactly those, kept as an extent; None for longer or
    open-ended ranges, which are fetched as whole blocks."""
    if first is None or last is None or last < first:
        return None
    if last - first + 1 > block_size // 4:
        return None
    return Extent(first, last + 1)
