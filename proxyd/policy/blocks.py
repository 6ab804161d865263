"""Block planning: which fixed-size blocks a request needs, and how to fetch the missing ones.

An object of ``size`` bytes is cut into blocks of ``block_size`` bytes (the last one shorter);
block ``i`` holds bytes ``i*block_size`` up to ``min((i+1)*block_size, size) - 1``. Blocks are
stored under (URL, validator, index), so every request — full, single range, suffix,
open-ended or multi-range — becomes "these blocks, these slices of them", and overlapping
reads share blocks. Missing blocks are fetched with one upstream range request per contiguous
run, each at most ``max_fetch_bytes`` long, so a miss never costs more than the blocks it
needs and a 2 KB read of a 4 GB file fetches one block.

When the size is not known yet (nothing cached about the object), :func:`initial_fetch` says
what to ask for first and :func:`interpret_fetch_response` reads the size off the answer
(Content-Range of a 206, Content-Length of a 200, or the ``*/size`` of a 416).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import NamedTuple

from butler.http.conditional import EntityTag
from butler.http.ranges import ByteRange, RangeSpec, parse_content_range
from proxyd.policy import HeaderPairs, Headers, field_value

__all__ = [
    "RunPlan",
    "BlockSlice",
    "FetchProblem",
    "FetchResult",
    "block_count",
    "block_span",
    "blocks_for",
    "cacheable_in_blocks",
    "initial_fetch",
    "interpret_fetch_response",
    "iter_slices",
    "missing_runs",
    "needed_in_order",
    "precondition_headers",
    "run_request_headers",
    "shorter_answer",
    "slice_plan",
]


def _check_block_size(block_size: int) -> None:
    if block_size <= 0:
        raise ValueError(f"block size must be positive, got {block_size}")


def block_count(size: int, block_size: int) -> int:
    """Number of blocks of an object of ``size`` bytes (0 for an empty object)."""
    _check_block_size(block_size)
    if size < 0:
        raise ValueError(f"size must be >= 0, got {size}")
    return -(-size // block_size)


def block_span(index: int, size: int, block_size: int) -> ByteRange:
    """The bytes of the object that block ``index`` holds."""
    if not 0 <= index < block_count(size, block_size):
        raise ValueError(f"block {index} is outside an object of {size} bytes")
    start = index * block_size
    return ByteRange(start, min(start + block_size, size) - 1)


def blocks_for(ranges: Iterable[ByteRange], size: int, block_size: int) -> list[int]:
    """Indexes of the blocks holding any byte of ``ranges``, sorted, each once.

    The ranges are satisfiable ranges of the object (as :func:`parse_range_header` returns
    them); a range reaching past the end is an error of the caller.
    """
    _check_block_size(block_size)
    needed: set[int] = set()
    for r in ranges:
        if r.end >= size:
            raise ValueError(f"range {r.start}-{r.end} is outside an object of {size} bytes")
        needed.update(range(r.start // block_size, r.end // block_size + 1))
    return sorted(needed)


@dataclass(frozen=True, slots=True)
class RunPlan:
    """A run planned: contiguous blocks ``first..last`` to fetch with one upstream range
    request for bytes ``byte_start..byte_end`` (inclusive, like a ``Range`` header). The run
    being fetched is :class:`proxyd.inflight.BlockRun` (``start``/``end``, end excluded)."""

    first: int
    last: int
    byte_start: int
    byte_end: int

    @property
    def length(self) -> int:
        """Bytes in the run."""
        return self.byte_end - self.byte_start + 1

    @property
    def blocks(self) -> range:
        """The block indexes of the run."""
        return range(self.first, self.last + 1)

    @property
    def byte_range(self) -> ByteRange:
        return ByteRange(self.byte_start, self.byte_end)

    @property
    def range_header(self) -> str:
        """The ``Range`` field value requesting this run (RFC 9110 §14.2)."""
        return f"bytes={self.byte_start}-{self.byte_end}"


def _run(first: int, last: int, size: int | None, block_size: int) -> RunPlan:
    end = (last + 1) * block_size - 1
    if size is not None:
        end = min(end, size - 1)
    return RunPlan(first, last, first * block_size, end)


def missing_runs(
    needed_block_indexes: Iterable[int],
    present: Collection[int],
    block_size: int,
    size: int,
    max_fetch_bytes: int,
) -> list[RunPlan]:
    """Group the needed blocks that are not ``present`` into runs to fetch, in block order.

    Each run is a maximal sequence of consecutive missing blocks, split so that no run is
    longer than ``max_fetch_bytes`` — except that a run always holds at least one block, so
    a block larger than the cap is fetched whole rather than never. Present blocks split runs:
    fetching them again would cost the origin bytes the cache already has.
    """
    _check_block_size(block_size)
    if max_fetch_bytes <= 0:
        raise ValueError(f"max_fetch_bytes must be positive, got {max_fetch_bytes}")
    count = block_count(size, block_size)
    per_run = max(1, max_fetch_bytes // block_size)
    missing = sorted({i for i in needed_block_indexes if i not in present})
    if missing and (missing[0] < 0 or missing[-1] >= count):
        raise ValueError(f"block indexes must be within 0..{count - 1} for {size} bytes")
    runs: list[RunPlan] = []
    start = prev = None
    for i in missing:
        if start is not None and prev is not None and i == prev + 1 and i - start < per_run:
            prev = i
            continue
        if start is not None and prev is not None:
            runs.append(_run(start, prev, size, block_size))
        start = prev = i
    if start is not None and prev is not None:
        runs.append(_run(start, prev, size, block_size))
    return runs


class BlockSlice(NamedTuple):
    """Bytes ``start:stop`` (a Python slice: ``stop`` exclusive) of block ``block_index``."""

    block_index: int
    start: int
    stop: int


def slice_plan(r: ByteRange, block_size: int) -> list[BlockSlice]:
    """The slices of blocks whose concatenation, in order, is exactly the bytes of ``r``
    (as a list: for ranges known to be short; see :func:`iter_slices`)."""
    return list(iter_slices(r, block_size))


def iter_slices(r: ByteRange, block_size: int) -> Iterator[BlockSlice]:
    """:func:`slice_plan` lazily, one slice at a time: a range of a huge object (a 4 TiB
    file is four million 1 MiB blocks) must cost memory and time for what is actually sent,
    not for every block it spans."""
    _check_block_size(block_size)
    pos = r.start
    while pos <= r.end:
        index = pos // block_size
        block_start = index * block_size
        stop = min(r.end + 1, block_start + block_size)
        yield BlockSlice(index, pos - block_start, stop - block_start)
        pos = stop


def needed_in_order(ranges: Iterable[ByteRange], block_size: int) -> Iterator[tuple[int, int]]:
    """(offset in the response body, block index) of each block slice the ``ranges`` need,
    in the order a response sends them, lazily (a block needed twice, by overlapping or
    neighbouring ranges, comes twice)."""
    offset = 0
    for r in ranges:
        for piece in iter_slices(r, block_size):
            yield offset, piece.block_index
            offset += piece.stop - piece.start


def initial_fetch(
    specs: Sequence[RangeSpec] | None, block_size: int, max_fetch_bytes: int
) -> RunPlan:
    """The first upstream range request for an object whose size is not known yet.

    ``specs`` are the client's range-specs (:func:`butler.http.ranges.parse_range_specs`),
    None for an unranged GET. The request is block-aligned so that what comes back can be
    stored as blocks, and its answer reveals the size (:func:`interpret_fetch_response`):

    * no Range: the first ``max_fetch_bytes`` (the client wants it all, in order);
    * the first int-range spec in request order: the blocks from its first byte to its last
      (to the cap for an open-ended range), at most ``max_fetch_bytes``;
    * only suffix ranges: block 0, since where a suffix starts depends on the size.

    The run's ``byte_end`` may lie past the end of the object: the origin clips it (RFC 9110
    §14.1.2), and a start past the end yields a 416 that carries the size.
    """
    _check_block_size(block_size)
    per_run = max(1, max_fetch_bytes // block_size)
    for spec in specs or ():
        if spec.first is not None:
            first = spec.first // block_size
            last = first + per_run - 1
            if spec.last is not None:
                last = min(last, spec.last // block_size)
            return _run(first, last, None, block_size)
    if specs:
        return _run(0, 0, None, block_size)
    return _run(0, per_run - 1, None, block_size)


def cacheable_in_blocks(
    etag: str | None, last_modified: str | None, size: int, block_size: int
) -> bool:
    """Whether an object may be cached as blocks fetched at different times.

    Blocks of one response are fetched by separate upstream requests (and refetched after
    an eviction), and only a validator tells whether they are still of the same version:
    every later fetch sends a precondition or has its ETag compared
    (:func:`run_request_headers`, :func:`interpret_fetch_response`). An object with neither
    ETag nor Last-Modified could change between two fetches with its size unchanged, and a
    response would mix both versions; unless it fits in one block (always one fetch), it
    is not cached: the origin answers each request itself, in one response.
    """
    return etag is not None or last_modified is not None or size <= block_size


def run_request_headers(run: RunPlan, etag: str | None, last_modified: str | None) -> HeaderPairs:
    """Fields of the upstream request for ``run`` of a known object version.

    ``Range`` for the run's bytes; ``Accept-Encoding: identity`` because byte ranges apply to
    the content coding sent (RFC 9110 §14.1.2) and blocks must be slices of one fixed coding;
    and a precondition so that a changed object is refused (412) instead of mixing versions:
    ``If-Match`` with a strong ETag (§13.1.1 uses strong comparison, so a weak tag would
    always fail), else ``If-Unmodified-Since`` with Last-Modified (§13.1.4). Without either
    validator the caller must compare the response's size with the stored one
    (:func:`interpret_fetch_response` does).
    """
    return (("Range", run.range_header), *precondition_headers(etag, last_modified))


def precondition_headers(etag: str | None, last_modified: str | None) -> HeaderPairs:
    """The fields of a range request for more bytes of a stored version (see
    :func:`run_request_headers`): the identity coding, and ``If-Match`` (strong ETag) or
    ``If-Unmodified-Since`` so that a changed object is refused with a 412."""
    out: list[tuple[str, str]] = [("Accept-Encoding", "identity")]
    tag = None if etag is None else EntityTag.parse(etag)
    if tag is not None and not tag.weak:
        out.append(("If-Match", str(tag)))
    elif last_modified is not None:
        out.append(("If-Unmodified-Since", last_modified))
    return tuple(out)


@dataclass(frozen=True, slots=True)
class FetchResult:
    """What an upstream answer to a block-run request carries.

    ``size`` is the object's complete length (None if the origin did not say: a 200 without
    Content-Length); ``received`` the object bytes the body holds, None for none (a 416, or
    an empty object). For a 200 the origin ignored Range and ``received`` starts at 0; the
    caller skips ahead to the run it asked for. A 200 without Content-Length (chunked) has
    both None: the body runs to its end, and its length is the size.
    """

    status: int
    size: int | None
    received: ByteRange | None


@dataclass(frozen=True, slots=True)
class FetchProblem:
    """Why an upstream answer to a block-run request cannot be used (never stored).
    ``changed``: the object is no longer the stored version (another size or ETag): the
    caller drops its metadata and starts over, so no response mixes two versions."""

    reason: str
    changed: bool = False


def shorter_answer(requested: RunPlan, status: int, headers: Headers) -> FetchResult | None:
    """A 206 that starts where ``requested`` starts but ends sooner (the origin sent less
    than asked, RFC 9110 §14.2 lets it), with the object's complete length: its bytes are
    a valid piece of the object, kept as an extent; None for anything else."""
    if status != 206:
        return None
    value = field_value(headers, "Content-Range")
    parsed = None if value is None else parse_content_range(value)
    if parsed is None or parsed.start is None or parsed.end is None or parsed.size is None:
        return None
    if parsed.start != requested.byte_start:
        return None
    if parsed.end >= min(requested.byte_end, parsed.size - 1):
        return None  # not shorter: interpret_fetch_response judges it
    return FetchResult(206, parsed.size, ByteRange(parsed.start, parsed.end))


def interpret_fetch_response(
    requested: RunPlan,
    status: int,
    headers: Headers,
    *,
    known_size: int | None = None,
    expected_etag: str | None = None,
) -> FetchResult | FetchProblem:
    """Check an upstream answer to a block-run request; a :class:`FetchProblem` says what is
    wrong.

    Refused (never stored): a 206 whose Content-Range is missing, multipart, of
    unknown length, or not the bytes asked for (start at ``byte_start``; end at ``byte_end``
    or the object's last byte); a size different from ``known_size`` or an ETag different
    from ``expected_etag`` (the object changed: the caller drops its metadata and starts
    over, so no response mixes two versions); a 416 without ``bytes */size``; any other
    status.
    """
    if expected_etag is not None:
        etag = field_value(headers, "ETag")
        if etag is not None and etag.strip(" \t") != expected_etag.strip(" \t"):
            return FetchProblem(
                f"the object changed: ETag {etag.strip()} instead of {expected_etag.strip()}",
                changed=True,
            )

    def changed(size: int) -> FetchProblem | None:
        if known_size is not None and size != known_size:
            return FetchProblem(
                f"the object changed: {size} bytes instead of {known_size}", changed=True
            )
        return None

    if status == 206:
        value = field_value(headers, "Content-Range")
        parsed = None if value is None else parse_content_range(value)
        if parsed is None or parsed.start is None or parsed.end is None:
            return FetchProblem("a 206 without a single valid Content-Range")
        if parsed.size is None:
            return FetchProblem("a 206 whose Content-Range does not give the complete length")
        problem = changed(parsed.size)
        if problem is not None:
            return problem
        expected_end = min(requested.byte_end, parsed.size - 1)
        if parsed.start != requested.byte_start or parsed.end != expected_end:
            return FetchProblem(
                f"asked for bytes {requested.byte_start}-{expected_end}, the origin sent "
                f"{parsed.start}-{parsed.end}"
            )
        return FetchResult(206, parsed.size, ByteRange(parsed.start, parsed.end))
    if status == 200:
        length = field_value(headers, "Content-Length")
        size = int(length) if length is not None and length.strip().isdigit() else None
        if size is not None:
            problem = changed(size)
            if problem is not None:
                return problem
        received = None if size == 0 else ByteRange(0, size - 1) if size is not None else None
        return FetchResult(200, size, received)
    if status == 416:
        value = field_value(headers, "Content-Range")
        parsed = None if value is None else parse_content_range(value)
        if parsed is None or parsed.size is None or parsed.start is not None:
            return FetchProblem("a 416 without Content-Range: bytes */size")
        problem = changed(parsed.size)
        if problem is not None:
            return problem
        return FetchResult(416, parsed.size, None)
    return FetchProblem(f"unexpected status {status} for a range request")
