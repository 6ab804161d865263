"""Which requests proxyd accepts and where they go: a reverse proxy, never an open one.

:func:`route` maps ``/<upstream-name>/<path>?<query>`` to ``<upstream base URL>/<path>?<query>``
and refuses everything else with a status and a message a person can act on. The request
target is forwarded byte for byte as received (re-encoding could change its meaning at the
origin); it is only checked, never rewritten. The checks block the ways a target can escape
the upstream's base path at the origin or at a proxy behind it: dot-segments, in any
spelling (``..``, ``%2e%2e``, ``.%2E``, Tomcat's ``..;``), encoded slashes and backslashes
(which some servers decode into path separators), and NUL and other control characters.

:func:`strip_hop_by_hop` and :func:`forward_request_headers` implement RFC 9110 §7.6.1: the
fields that describe one connection are not forwarded.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import unquote_to_bytes

from multidict import CIMultiDict

from proxyd.policy import HeaderPairs, Headers, field_values, header_pairs
from proxyd.policy.keys import cache_key, credential_fingerprint, split_signing_params

if TYPE_CHECKING:
    from proxyd.settings import ProxySettings

__all__ = [
    "ALLOWED_METHODS",
    "CACHEABLE_METHODS",
    "HOP_BY_HOP_FIELDS",
    "VIA",
    "Refusal",
    "RequestLimits",
    "Route",
    "forward_request_headers",
    "forward_response_headers",
    "headers_of",
    "passed_through",
    "route",
    "strip_hop_by_hop",
    "via_entry",
    "with_via",
]

#: Methods proxyd forwards. CONNECT would make it a tunnel (an open proxy) and TRACE would
#: echo the request's fields, cookies included, back to whatever script sent it.
ALLOWED_METHODS = ("GET", "HEAD", "OPTIONS", "POST", "PUT", "PATCH", "DELETE")
#: Methods whose responses the cache stores and answers (RFC 9110 §9.2.3; HEAD from the
#: metadata of a GET, §9.3.2).
CACHEABLE_METHODS = frozenset({"GET", "HEAD"})

#: Fields that are meaningful for one connection only and never forwarded (RFC 9110 §7.6.1,
#: plus Proxy-Connection, which old clients send instead of Connection). Proxy-Authorization
#: and Proxy-Authenticate are exchanged between a client and the proxy it talks to (§11.7),
#: so proxyd consumes them rather than passing them on. Lower-case.
HOP_BY_HOP_FIELDS = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "proxy-authorization",
        "proxy-authenticate",
    }
)

#: The Via field value proxyd adds to what it forwards (RFC 9110 §7.6.3: a proxy MUST send
#: Via). A pseudonym, not the host name, as §7.6.3 allows.
VIA = "1.1 proxyd"

# token (RFC 9110 §5.6.2), used for method names.
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
# What may appear in an origin-form target: visible ASCII minus "#" (a fragment is never sent,
# RFC 9110 §4.2.4) and "\" (some servers treat it as "/"). Stricter characters such as "|" or
# "{" are accepted because common clients send them unencoded; they cannot change the path.
_TARGET_CHARS = re.compile(r"[!$-\[\]-~\"]*")
_BAD_PERCENT = re.compile(r"%(?![0-9A-Fa-f]{2})")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_ABSOLUTE_FORM = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")
_FIELD_NAME = _TOKEN


@dataclass(frozen=True, slots=True)
class RequestLimits:
    """Size limits on a request's target and header fields (RFC 9110 §15.5.15, RFC 6585 §5)."""

    max_url_bytes: int = 8190
    max_header_bytes: int = 8190
    max_headers_total_bytes: int = 65536

    @classmethod
    def from_settings(cls, settings: ProxySettings) -> RequestLimits:
        return cls(
            max_url_bytes=settings.max_url_bytes,
            max_header_bytes=settings.max_header_bytes,
            max_headers_total_bytes=settings.max_headers_total_bytes,
        )


@dataclass(frozen=True, slots=True)
class Route:
    """An accepted request: what to fetch and under which key to cache it."""

    method: str
    upstream: str
    """The configured upstream name (the first path segment)."""
    upstream_url: str
    """Base URL + the rest of the path + the query, exactly as the client sent them
    (signing parameters included: the origin needs them)."""
    path: str
    """The rest of the path after ``/<name>``, as sent: "" or starting with "/"."""
    query: str
    """The query as sent, without "?"; "" when there is none."""
    cache_key: str
    """:func:`proxyd.policy.keys.cache_key` of ``upstream_url``."""
    credential: str | None
    """:func:`proxyd.policy.keys.credential_fingerprint` of the request, None if anonymous."""

    @property
    def cacheable_method(self) -> bool:
        """Whether the cache may answer this request (GET or HEAD)."""
        return self.method in CACHEABLE_METHODS


@dataclass(frozen=True, slots=True)
class Refusal:
    """A request proxyd will not forward: answer ``status`` with ``message`` (plain text)."""

    status: int
    message: str
    headers: HeaderPairs = ()


def _refuse_method(method: str) -> Refusal:
    allow = (("Allow", ", ".join(ALLOWED_METHODS)),)
    if method == "CONNECT":
        return Refusal(
            405,
            "CONNECT is not supported: proxyd is a reverse proxy for its configured upstreams, "
            "not a tunnel",
            allow,
        )
    shown = method if _TOKEN.fullmatch(method) and len(method) <= 32 else repr(method[:32])
    return Refusal(
        405,
        f"method {shown} is not allowed; proxyd forwards {', '.join(ALLOWED_METHODS)}",
        allow,
    )


def _check_headers(headers: HeaderPairs, limits: RequestLimits) -> Refusal | None:
    total = 0
    for name, value in headers:
        # name ": " value CRLF, as on the wire (RFC 9112 §5); UTF-8 length is an upper bound
        # of the bytes a server that decoded obs-text as Latin-1 saw.
        size = len(name.encode("utf-8", "replace")) + len(value.encode("utf-8", "replace")) + 4
        if size > limits.max_header_bytes:
            shown = name[:64] if _FIELD_NAME.fullmatch(name) else repr(name[:64])
            return Refusal(
                431,
                f"request header field {shown} is {size} bytes; at most "
                f"{limits.max_header_bytes} bytes are accepted per field",
            )
        total += size
        if not _FIELD_NAME.fullmatch(name) or "\r" in value or "\n" in value or "\0" in value:
            return Refusal(400, f"malformed request header field {name[:64]!r}")
    if total > limits.max_headers_total_bytes:
        return Refusal(
            431,
            f"request header fields total {total} bytes; at most "
            f"{limits.max_headers_total_bytes} bytes are accepted",
        )
    return None


def _unknown_upstream(name: str, upstreams: Mapping[str, str]) -> Refusal:
    configured = ", ".join(f"/{n}/" for n in sorted(upstreams)) or "none"
    if name:
        shown = name[:64] if re.fullmatch(r"[A-Za-z0-9_.~-]*", name) else repr(name[:64])
        what = f"no upstream named {shown}"
    else:
        what = "no upstream named in the path"
    return Refusal(
        404,
        f"{what}; request /<upstream>/<path> with one of the configured upstreams: {configured}",
    )


def _check_segment(raw: str) -> str | None:
    """Why a raw path segment is refused, or None if it is fine."""
    decoded = unquote_to_bytes(raw)
    if b"/" in decoded:
        return "an encoded slash (%2F) in the path is not allowed"
    if b"\\" in decoded:
        return "a backslash in the path is not allowed"
    if b"\0" in decoded:
        return "a NUL byte in the path is not allowed"
    if _CONTROL.search(decoded.decode("latin-1")):
        return "control characters in the path are not allowed"
    # Dot-segments (RFC 3986 §3.3, §5.2.4) in any spelling, including the ";"-parameter
    # variant that Tomcat-style servers strip before resolving dot-segments.
    if decoded.split(b";", 1)[0] in (b".", b".."):
        return "dot-segments ('.' or '..', also percent-encoded) in the path are not allowed"
    return None


def route(
    method: str,
    raw_target: str,
    headers: Headers,
    upstreams: Mapping[str, str],
    limits: RequestLimits,
    *,
    signing_params: Sequence[str],
    via_name: str | None = None,
) -> Route | Refusal:
    """Decide whether to forward a request and where.

    ``raw_target`` is the request-target exactly as received (aiohttp: ``request.raw_path``),
    ``upstreams`` maps names to normalised base URLs (``ProxySettings.upstreams``) and
    ``signing_params`` are the glob patterns of ``ProxySettings.signing_params``.

    Refusals: 405 for CONNECT, TRACE and any other method not in :data:`ALLOWED_METHODS`
    (with an ``Allow`` field, RFC 9110 §15.5.6); 414 for a target longer than
    ``limits.max_url_bytes``; 431 for a header field or all fields together over their limits;
    400 for absolute-form (``http://host/...``: proxyd is not a forward proxy),
    authority-form and asterisk-form targets (RFC 9112 §3.2), malformed percent-encoding,
    control or non-ASCII characters, fragments, backslashes, encoded slashes, NUL and
    dot-segments; 404 for a first segment that names no configured upstream, listing the
    configured ones; 508 (Loop Detected, RFC 5842 §7.2) for a request whose ``Via`` already
    holds ``via_name``, this proxy's own name: an upstream URL leads back here.
    """
    if method not in ALLOWED_METHODS:
        return _refuse_method(method)
    target_bytes = len(raw_target.encode("utf-8", "replace"))
    if target_bytes > limits.max_url_bytes:
        return Refusal(
            414,
            f"request target is {target_bytes} bytes; at most {limits.max_url_bytes} bytes "
            "are accepted",
        )
    pairs = header_pairs(headers)
    refused = _check_headers(pairs, limits)
    if refused is not None:
        return refused
    if via_name is not None and passed_through(pairs, via_name):
        return Refusal(
            508,
            f"forwarding loop: this request has passed through this proxy ({via_name}) "
            "before, as its Via field shows; an upstream URL in the configuration leads "
            "back to this proxy (directly or through others): correct it",
        )

    if _ABSOLUTE_FORM.match(raw_target):
        return Refusal(
            400,
            "absolute-form request targets (a full URL) are refused: proxyd is a reverse proxy, "
            "not a forward proxy; request /<upstream>/<path> instead",
        )
    if raw_target == "*":
        return Refusal(400, "asterisk-form request target (OPTIONS *) is not forwarded")
    if not raw_target.startswith("/"):
        return Refusal(
            400,
            "request target must be a path starting with '/' (origin-form, RFC 9112 §3.2.1); "
            "authority-form targets (host:port) are only for CONNECT, which is refused",
        )
    if "\\" in raw_target:
        return Refusal(400, "a backslash in the request target is not allowed")
    if "#" in raw_target:
        return Refusal(400, "a fragment ('#') is not allowed in a request target")
    if not _TARGET_CHARS.fullmatch(raw_target):
        return Refusal(
            400,
            "request target contains spaces, control or non-ASCII characters; percent-encode them",
        )
    if _BAD_PERCENT.search(raw_target):
        return Refusal(400, "malformed percent-encoding in the request target ('%' not +2 hex)")

    path, _, query = raw_target.partition("?")
    segments = path[1:].split("/")
    for segment in segments:
        problem = _check_segment(segment)
        if problem is not None:
            return Refusal(400, problem)
    name = segments[0]
    base = upstreams.get(name)
    if base is None:
        return _unknown_upstream(name, upstreams)
    rest = path[1 + len(name) :]
    upstream_url = base + rest + (f"?{query}" if query else "")
    _, signing = split_signing_params(query, signing_params)
    return Route(
        method=method,
        upstream=name,
        upstream_url=upstream_url,
        path=rest,
        query=query,
        cache_key=cache_key(upstream_url, signing_params),
        credential=credential_fingerprint(pairs, signing),
    )


def _connection_options(pairs: HeaderPairs) -> set[str]:
    options: set[str] = set()
    for value in field_values(pairs, "Connection"):
        options |= {o.strip().lower() for o in value.split(",") if o.strip()}
    return options


def strip_hop_by_hop(headers: Headers) -> HeaderPairs:
    """The fields of ``headers`` minus the hop-by-hop ones (RFC 9110 §7.6.1).

    Removed: :data:`HOP_BY_HOP_FIELDS` and every field named in a ``Connection`` field
    ("a proxy ... MUST remove any header or trailer fields listed as connection options");
    the order and case of the others are kept.
    """
    pairs = header_pairs(headers)
    drop = HOP_BY_HOP_FIELDS | _connection_options(pairs)
    return tuple((k, v) for k, v in pairs if k.lower() not in drop)


def with_via(pairs: HeaderPairs, entry: str = VIA) -> HeaderPairs:
    """``pairs`` with ``entry`` appended to the Via chain (RFC 9110 §7.6.3: "a proxy MUST
    send an appropriate Via header field"), the entries already there kept in order."""
    via = field_values(pairs, "Via")
    others = tuple((k, v) for k, v in pairs if k.lower() != "via")
    return (*others, ("Via", ", ".join([*via, entry])))


def via_entry(via_name: str) -> str:
    """This proxy's entry in the Via of the requests it sends upstream."""
    return f"1.1 {via_name}"


def passed_through(headers: Headers, via_name: str) -> bool:
    """Whether a request's Via chain holds an entry received by ``via_name``.

    Each entry is ``protocol received-by [comment]`` (§7.6.3); the name is compared with the
    second word of each comma-separated entry, so a comment that merely mentions it does
    not count.
    """
    for value in field_values(header_pairs(headers), "Via"):
        for entry in value.split(","):
            words = entry.split()
            if len(words) >= 2 and words[1] == via_name:
                return True
    return False


def forward_request_headers(headers: Headers) -> HeaderPairs:
    """The fields to send upstream for a request forwarded as is (not from the cache).

    Hop-by-hop fields are removed; ``Host`` too, because the upstream request carries the
    upstream's authority (RFC 9110 §7.2: a proxy MUST replace Host for its target), and
    ``Expect``: the 100-continue handshake (§10.1.1) happens between the client and proxyd's
    server, which answers it before reading the body it forwards. ``Via`` is kept as the
    client sent it: every upstream request gets this proxy's entry where it is sent
    (:meth:`proxyd.upstream.UpstreamClients.request`), fills included. Everything else is
    end-to-end and passes, including credentials: the origin decides.
    """
    return tuple(
        (k, v) for k, v in strip_hop_by_hop(headers) if k.lower() not in ("host", "expect")
    )


def headers_of(pairs: Iterable[tuple[str, str]], *, drop: Iterable[str] = ()) -> CIMultiDict[str]:
    """Response fields to send as a multidict, without ``Content-Length`` (the proxy frames
    each response itself) and the fields named in ``drop``."""
    dropped = {"content-length", *(d.lower() for d in drop)}
    out: CIMultiDict[str] = CIMultiDict()
    for name, value in pairs:
        if name.lower() not in dropped:
            out.add(name, value)
    return out


def forward_response_headers(headers: Headers) -> HeaderPairs:
    """The fields of an upstream response to pass to the client: hop-by-hop fields removed
    (framing is the proxy's own: Content-Length or chunked on the client connection), Via
    added (§7.6.3)."""
    return with_via(strip_hop_by_hop(headers))
