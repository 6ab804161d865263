"""How a miss's one upstream answer is handed to the client when it is not stored.

A miss sends the origin one request: the client's, with its end-to-end fields, except that
the range asked for is widened to whole blocks (:func:`proxyd.policy.blocks.initial_fetch`)
so that the answer can fill the cache, and a HEAD is sent as a GET of the first block (its
answer gives the size and validators a stored HEAD needs). When the answer turns out not to
be storable (``no-store``, ``private``, no range support and no validator, an error
status...), it is still the answer to the client's request: this module says how to cut it
back to what the client asked for, so the origin is not asked a second time (issue 22).

Pure: no I/O. The shell streams ``skip``/``length`` of the upstream body.
"""

from __future__ import annotations

from dataclasses import dataclass

from butler.http.ranges import (
    ByteRange,
    RangeOutcome,
    content_range,
    parse_content_range,
    parse_range_header,
)
from proxyd.policy import Headers, field_value


@dataclass(frozen=True, slots=True)
class RelayPlan:
    """The client's answer made from the upstream one.

    ``status`` to send; ``content_range`` the Content-Range field to send (None: none, and
    any upstream one dropped); ``skip`` body bytes of the upstream answer to discard first;
    ``length`` body bytes to send then (None: the rest of the upstream body, framed as it
    comes); ``body`` False for a HEAD."""

    status: int
    content_range: str | None = None
    skip: int = 0
    length: int | None = None
    body: bool = True


def relay_plan(
    method: str,
    client_range: str | None,
    status: int,
    headers: Headers,
    *,
    max_ranges: int = 64,
) -> RelayPlan | None:
    """The answer to give a client whose request was sent upstream widened to blocks
    (``client_range``: its Range field, None without one; ``method`` GET or HEAD).

    None when the upstream answer cannot answer it: a 206 that does not cover the bytes the
    client asked for (an object longer than one fetch, uncacheable), or several ranges.
    The caller then forwards the client's request as it is (the only case where a miss costs
    the origin two requests)."""
    head = method.upper() == "HEAD"
    if status != 206:
        # 200: the origin ignored Range, which it may (RFC 9110 §14.2): the whole object is
        # a valid answer to a range request too. Anything else (304, 404, 416, 5xx...) is the
        # origin's answer to the client's request as it stands.
        # A 416's ``bytes */size`` is kept; a 200 has no range to describe.
        kept = None if status == 200 else field_value(headers, "Content-Range")
        return RelayPlan(status, content_range=kept, body=not head)
    value = field_value(headers, "Content-Range")
    got = None if value is None else parse_content_range(value)
    if got is None or got.start is None or got.end is None or got.size is None:
        return None
    size = got.size
    if head or client_range is None:
        if head:
            # A HEAD's answer is the 200 the GET would give: its length is the object's.
            return RelayPlan(200, length=size, body=False)
        if got.start == 0 and got.end == size - 1:
            return RelayPlan(200, length=size)
        return None
    parsed = parse_range_header(client_range, size, max_ranges=max_ranges)
    if parsed.outcome is RangeOutcome.UNSATISFIABLE:
        return None  # the origin says the block exists: let the origin judge the client's
    if parsed.outcome is not RangeOutcome.SATISFIABLE:
        # An invalid or ignored Range: the client gets the whole object, if it is all here.
        if got.start == 0 and got.end == size - 1:
            return RelayPlan(200, length=size)
        return None
    if len(parsed.ranges) != 1:
        return None
    wanted: ByteRange = parsed.ranges[0]
    if wanted.start < got.start or wanted.end > got.end:
        return None
    return RelayPlan(
        206,
        content_range=content_range(wanted, size),
        skip=wanted.start - got.start,
        length=wanted.length,
    )


def framing_problem(status: int, headers: Headers, body_length: int | None) -> str | None:
    """Why an upstream 206 cannot be passed on, or None: its one Content-Range must describe
    exactly the bytes of its body (``body_length``: the body read, or its Content-Length;
    None when unknown). An answer that promises a client more bytes than it carries would
    leave the client waiting for the rest on a live connection."""
    if status != 206 or body_length is None:
        return None
    value = field_value(headers, "Content-Range")
    got = None if value is None else parse_content_range(value)
    if got is None or got.start is None or got.end is None:
        return None  # several parts (each says its own) or no range: not this check's
    covered = got.end - got.start + 1
    if covered == body_length:
        return None
    return f"its Content-Range ({value}) covers {covered} bytes but its body has {body_length}"
