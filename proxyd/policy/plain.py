"""The one kind of request proxyd answers without its HTTP framework: a plain GET of bytes it
holds fresh, for anyone. Pure functions; :mod:`proxyd.fastlane` carries them out.

Most of a busy site proxy's requests are the same shape: ``GET /<upstream>/<path>``, maybe a
single ``Range``, no credentials, no conditions, no cache directives, for an object that is
fresh in the cache. Parsing such a request with a general HTTP parser, building a request
object, routing it and running it through every policy costs several times the work of
answering it. So the fast lane recognises exactly this shape, conservatively, and leaves
everything else -- including anything merely unusual -- to the full handler, byte for byte.

"Conservatively" is the point: :func:`recognise` accepts a strict subset of HTTP/1.1
(visible ASCII, a fixed set of field names each at most once, no message body possible), so
it can never read a request differently from aiohttp's parser, the one that handles all the
others. A request it does not recognise costs one failed match.
"""

from __future__ import annotations

import math
import re
from typing import TYPE_CHECKING, NamedTuple

from proxyd.policy.freshness import vary_fields

if TYPE_CHECKING:
    from proxyd.policy.freshness import StoredMeta
    from proxyd.settings import ProxySettings

__all__ = ["PLAIN_FIELDS", "PlainGet", "Recogniser", "plain_hit_until", "recognise"]

#: The only header fields a plain request may carry. None of them can change what a fresh,
#: public, non-varying stored response is served as: Host is not part of the route (the path
#: names the upstream); Accept and Accept-Encoding matter only through Vary, and a response
#: with Vary is not served here; User-Agent is informational; Range is applied here;
#: X-Forwarded-For, a load balancer's, only names the client in the access log; and
#: Connection may only ask for what HTTP/1.1 does anyway (keep-alive). Anything else --
#: credentials, conditionals, Cache-Control, Pragma, If-Range, a body's framing, a field
#: nobody has thought about -- sends the request to the full handler.
PLAIN_FIELDS = frozenset(
    {
        b"host",
        b"user-agent",
        b"accept",
        b"accept-encoding",
        b"range",
        b"connection",
        b"x-forwarded-for",
    }
)

# The whole head in one match: request line, then field lines of a token name, ":", and a
# value of visible ASCII and inner spaces (no obs-text; no obs-fold, whose continuation
# line starts with whitespace and so matches no name). Then each field, in a second pass.
_HEAD = re.compile(rb"GET (/[!-~]*) HTTP/1\.1((?:\r\n[A-Za-z-]+:[ \t]*[ -~]*)*)")
_FIELD = re.compile(rb"\r\n([A-Za-z-]+):[ \t]*((?:[!-~](?:[ -~]*[!-~])?)?)[ \t]*")


class PlainGet(NamedTuple):
    """A recognised plain request: its target exactly as sent, its Range value, and its
    X-Forwarded-For (for the access log, :mod:`proxyd.policy.clients`)."""

    target: str
    range: str | None
    forwarded_for: str | None = None


def recognise(head: bytes, max_bytes: int) -> PlainGet | None:
    """The plain GET that ``head`` (request line and fields, without the final blank line)
    is, or None when it is anything else or longer than ``max_bytes``.

    ``max_bytes`` keeps every field within the proxy's header limits, so a recognised
    request is never one the full handler would refuse for its size.
    """
    if len(head) > max_bytes:
        return None
    whole = _HEAD.fullmatch(head)
    if whole is None:
        return None
    seen: set[bytes] = set()
    range_value: str | None = None
    forwarded_for: str | None = None
    fields = _FIELD.findall(whole[2])
    if len(fields) != whole[2].count(b"\r\n"):  # every line read, none skipped
        return None
    for raw_name, value in fields:
        name = raw_name.lower()
        if name not in PLAIN_FIELDS or name in seen:
            return None
        seen.add(name)
        if name == b"range":
            range_value = value.decode("ascii")
        elif name == b"x-forwarded-for":
            forwarded_for = value.decode("ascii")
        elif name == b"connection" and value.lower() != b"keep-alive":
            return None
    if b"host" not in seen:  # required in HTTP/1.1 (RFC 9112 §3.2): the full handler decides
        return None
    return PlainGet(whole[1].decode("ascii"), range_value, forwarded_for)


# The Range line as nearly every client writes it, with one simple range.
_RANGE_LINE = re.compile(rb"\r\nRange: (bytes=[0-9]{1,18}-[0-9]{0,18})(?=\r\n|$)")


class Recogniser:
    """:func:`recognise`, with its work done once per request *shape*: the head without a
    Range line of the usual form (``Range: bytes=FIRST-LAST``).

    A client reading ranges of an object sends the same head again and again but for the
    range, so the answer for the rest is remembered (up to ``memory`` shapes; the table is
    emptied when full, hot shapes return). It is exactly :func:`recognise`'s: removing one
    whole, well-formed field line leaves a head that matches the same way, and a shape that
    still carries a Range field of its own (a second one) is left to :func:`recognise`.
    (tests/test_proxyd_plain.py checks the equivalence.)
    """

    def __init__(self, max_bytes: int, memory: int = 10_000) -> None:
        self.max_bytes = max_bytes
        self._memory = memory
        self._shapes: dict[bytes, PlainGet | None] = {}

    def __call__(self, head: bytes) -> PlainGet | None:
        if len(head) > self.max_bytes:
            return None
        line = _RANGE_LINE.search(head)
        shape = head if line is None else head[: line.start()] + head[line.end() :]
        try:
            plain = self._shapes[shape]
        except KeyError:
            plain = recognise(shape, self.max_bytes)
            if len(self._shapes) >= self._memory:
                self._shapes.clear()
            self._shapes[shape] = plain
        if plain is None or line is None:
            return plain
        if plain.range is not None:  # two Range fields: recognise refuses them
            return recognise(head, self.max_bytes)
        return PlainGet(plain.target, line[1].decode("ascii"), plain.forwarded_for)


def plain_hit_until(stored: StoredMeta, settings: ProxySettings) -> float:
    """Until when (POSIX time) a plain request for ``stored`` is a fresh hit that anyone may
    be served; ``-inf`` when it never is.

    This is :func:`proxyd.policy.freshness.decide` and
    :func:`proxyd.policy.access.access_decision` worked out in advance for a request with no
    Cache-Control, no conditions and no credentials: such a request is a FRESH_HIT exactly
    while the response is fresh, unless it has ``no-cache`` or varies on request fields, and
    it may be served without asking the origin unless the object was fetched with
    credentials. A response's age grows one second per second (RFC 9111 §4.2.3), so the
    freshness test ``lifetime > age(now)`` becomes one comparison with a fixed time.
    (tests/test_proxyd_plain.py checks the equivalence.)
    """
    if stored.requires_authorization or stored.cache_control.no_cache:
        return -math.inf
    if vary_fields(stored.headers) != ():
        return -math.inf
    received = stored.response_time
    return received + stored.freshness_lifetime(settings) - stored.current_age(received)
