"""RFC 9111 (HTTP caching) for a *shared* cache, as pure functions and a small state machine.

The I/O shell drives one request through these states (hishel's style)::

    decide(request, stored, now, settings)
        FRESH_HIT / STALE_HIT  -> serve the stored response (with Age)
        ONLY_IF_CACHED         -> 504, the client forbade contacting the origin
        MISS                   -> fetch; store it if storable(...)
        FORWARD                -> forward uncached (unsafe method); invalidation_targets(...)
        REVALIDATE             -> send decision.conditional_headers upstream, then
            after_revalidation(stored, status, headers, ...)
                NOT_MODIFIED   -> serve decision.updated (the freshened metadata; store it)
                REPLACE        -> the origin sent something new: serve it, store if storable
                MISS           -> the 304 does not match what is stored: fetch unconditionally
                STALE_ON_ERROR / ERROR (as below)
    origin unreachable or 5xx at any point with a stored response:
        on_origin_error(stored, request, now, settings) -> STALE_ON_ERROR or ERROR

Times are POSIX seconds (floats). Metadata is a :class:`StoredMeta`, plain data that the block
store persists with :meth:`StoredMeta.to_json`.
"""

from __future__ import annotations

import enum
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import TYPE_CHECKING, Any
from urllib.parse import urljoin, urlsplit

from multidict import CIMultiDict, CIMultiDictProxy

from butler.http.conditional import EntityTag, parse_http_date, weak_match
from butler.http.ranges import parse_content_range
from proxyd.policy import HeaderPairs, Headers, field_value, field_values, header_pairs
from proxyd.policy.cdn import cdn_cache_control
from proxyd.policy.requests import CACHEABLE_METHODS, strip_hop_by_hop

if TYPE_CHECKING:
    from proxyd.settings import ProxySettings

__all__ = [
    "ERROR_STATUSES",
    "HEURISTICALLY_CACHEABLE",
    "MAX_DELTA_SECONDS",
    "CacheControl",
    "CacheRequest",
    "Decision",
    "Outcome",
    "StoredMeta",
    "after_revalidation",
    "age_field",
    "current_age",
    "decide",
    "forbids_stale",
    "freshen",
    "freshness_lifetime",
    "headers_to_store",
    "invalidation_targets",
    "is_fresh",
    "not_storable_reason",
    "on_origin_error",
    "parse_cache_control",
    "stale_if_error_window",
    "storable",
    "vary_fields",
    "vary_matches",
]

#: RFC 9111 §1.2.2: a delta-seconds too large to represent, or overflowing a later
#: calculation, is taken as 2^31.
MAX_DELTA_SECONDS = 2**31

#: Status codes "heuristically cacheable" by default (RFC 9110 §15.1).
HEURISTICALLY_CACHEABLE = frozenset({200, 203, 204, 206, 300, 301, 308, 404, 405, 410, 414, 501})

#: Responses that count as an origin error for stale-if-error (RFC 5861 §4).
ERROR_STATUSES = frozenset({500, 502, 503, 504})

# Fields never stored: they describe one response or one connection, not the representation.
# Set-Cookie would hand one user's session to the next (RFC 9111 §7.3 warns about exactly
# this; RFC 6265 §8); Age is recomputed on every hit (§5.1); Content-Length and Content-Range
# describe the message that carried some bytes, the cache serves its own framing;
# Authentication-Info answers one request's credentials (RFC 9110 §11.6.3); Warning is
# obsolete (RFC 9111 §5.5).
_NEVER_STORED = frozenset(
    {
        "set-cookie",
        "set-cookie2",
        "age",
        "content-length",
        "content-range",
        "authentication-info",
        "proxy-authentication-info",
        "warning",
    }
)

# Fields a 304 must not change in the stored response (RFC 9111 §3.2: "the Content-Length
# header field"; the representation metadata below would describe other bytes than the ones
# stored, and a 304 that changes them is not about the stored representation).
_NOT_UPDATED_BY_304 = frozenset({"content-length", "content-encoding", "content-type"})


# -- Cache-Control --------------------------------------------------------------------------

_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_DIGITS = re.compile(r"[0-9]+")


def _split_directives(value: str) -> list[tuple[str, str | None]]:
    """Split a Cache-Control value into (name, argument) tolerantly.

    Commas inside quoted strings do not split; quoted arguments are unescaped; elements
    whose name is not a token are skipped, so one bad directive does not hide the others.
    """
    out: list[tuple[str, str | None]] = []
    i, n = 0, len(value)
    while i < n:
        j = i
        while j < n and value[j] not in ",=":
            j += 1
        name = value[i:j].strip(" \t").lower()
        arg: str | None = None
        if j < n and value[j] == "=":
            j += 1
            while j < n and value[j] in " \t":
                j += 1
            if j < n and value[j] == '"':
                chars: list[str] = []
                j += 1
                while j < n and value[j] != '"':
                    if value[j] == "\\" and j + 1 < n:
                        j += 1
                    chars.append(value[j])
                    j += 1
                arg = "".join(chars)
                j += 1  # closing quote (or past the end when unterminated)
                while j < n and value[j] != ",":
                    j += 1  # junk after a quoted string is ignored
            else:
                k = j
                while j < n and value[j] != ",":
                    j += 1
                arg = value[k:j].strip(" \t")
        if _TOKEN.fullmatch(name):
            out.append((name, arg))
        i = j + 1
    return out


def _delta_seconds(arg: str | None) -> int | None:
    """A valid delta-seconds (RFC 9111 §1.2.2) capped at 2^31, or None if invalid."""
    if arg is None or not _DIGITS.fullmatch(arg):
        return None
    return min(int(arg), MAX_DELTA_SECONDS) if len(arg) < 12 else MAX_DELTA_SECONDS


def _field_names(arg: str | None) -> tuple[str, ...]:
    if arg is None:
        return ()
    return tuple(sorted({f.strip(" \t").lower() for f in arg.split(",") if f.strip(" \t")}))


@dataclass(frozen=True, slots=True)
class CacheControl:
    """Parsed Cache-Control directives (RFC 9111 §5.2), request or response.

    ``directives`` maps lower-case names to their argument (None without "="); when a
    directive repeats, the first occurrence is kept (§4.2.1 allows that). The properties
    interpret the directives proxyd acts on, including the conservative readings §4.2.1
    recommends for invalid values.
    """

    directives: Mapping[str, str | None] = field(default_factory=lambda: MappingProxyType({}))

    def has(self, name: str) -> bool:
        return name in self.directives

    def _age(self, name: str) -> int | None:
        # §4.2.1: "caches are encouraged to consider responses that have invalid freshness
        # information (e.g., a max-age directive with non-integer content) to be stale".
        if name not in self.directives:
            return None
        value = _delta_seconds(self.directives[name])
        return 0 if value is None else value

    def _optional(self, name: str) -> int | None:
        return _delta_seconds(self.directives.get(name))

    @property
    def max_age(self) -> int | None:
        """max-age (§5.2.1.1, §5.2.2.1); an invalid value counts as 0."""
        return self._age("max-age")

    @property
    def s_maxage(self) -> int | None:
        """s-maxage (§5.2.2.10), for shared caches only; an invalid value counts as 0."""
        return self._age("s-maxage")

    @property
    def min_fresh(self) -> int | None:
        """min-fresh (§5.2.1.3); ignored when invalid."""
        return self._optional("min-fresh")

    @property
    def max_stale(self) -> float | None:
        """max-stale (§5.2.1.2): seconds of staleness accepted, ``math.inf`` without an
        argument, None when absent or invalid."""
        if "max-stale" not in self.directives:
            return None
        arg = self.directives["max-stale"]
        if arg is None:
            return math.inf
        value = _delta_seconds(arg)
        return None if value is None else float(value)

    @property
    def stale_if_error(self) -> int | None:
        """stale-if-error (RFC 5861 §4); ignored when invalid."""
        return self._optional("stale-if-error")

    @property
    def stale_while_revalidate(self) -> int | None:
        """stale-while-revalidate (RFC 5861 §3); ignored when invalid."""
        return self._optional("stale-while-revalidate")

    @property
    def no_store(self) -> bool:
        return "no-store" in self.directives

    @property
    def no_cache(self) -> bool:
        """Unqualified no-cache: no reuse without validation (§5.2.1.4, §5.2.2.4)."""
        return "no-cache" in self.directives and not self.no_cache_fields

    @property
    def no_cache_fields(self) -> tuple[str, ...]:
        """Fields named by a qualified no-cache="..." (§5.2.2.4), lower-case."""
        return _field_names(self.directives.get("no-cache"))

    @property
    def private(self) -> bool:
        """Unqualified private: a shared cache MUST NOT store the response (§5.2.2.7)."""
        return "private" in self.directives and not self.private_fields

    @property
    def private_fields(self) -> tuple[str, ...]:
        """Fields named by a qualified private="..." (§5.2.2.7), lower-case."""
        return _field_names(self.directives.get("private"))

    @property
    def public(self) -> bool:
        return "public" in self.directives

    @property
    def must_revalidate(self) -> bool:
        return "must-revalidate" in self.directives

    @property
    def proxy_revalidate(self) -> bool:
        return "proxy-revalidate" in self.directives

    @property
    def immutable(self) -> bool:
        """RFC 8246: the representation will not change while fresh."""
        return "immutable" in self.directives

    @property
    def only_if_cached(self) -> bool:
        return "only-if-cached" in self.directives


def parse_cache_control(value: str | Iterable[str] | None) -> CacheControl:
    """Parse one Cache-Control value, or several field lines, tolerantly. Never raises."""
    if value is None:
        return CacheControl()
    lines = [value] if isinstance(value, str) else list(value)
    directives: dict[str, str | None] = {}
    for line in lines:
        for name, arg in _split_directives(line):
            directives.setdefault(name, arg)
    return CacheControl(MappingProxyType(directives))


def _cache_control(headers: Headers) -> CacheControl:
    """A response's directives: its valid CDN-Cache-Control if it has one (RFC 9213: a
    site cache obeys it instead of Cache-Control), else its Cache-Control."""
    cdn = cdn_cache_control(headers)
    if cdn is not None:
        return parse_cache_control(cdn)
    return parse_cache_control(field_values(headers, "Cache-Control"))


def forbids_stale(cc: CacheControl) -> bool:
    """Whether a response's directives forbid serving it stale from a shared cache.

    RFC 9111 §4.2.4: no-cache, must-revalidate, proxy-revalidate, and s-maxage (which
    "incorporates the semantics of the proxy-revalidate response directive", §5.2.2.10).
    """
    return cc.no_cache or cc.must_revalidate or cc.proxy_revalidate or cc.s_maxage is not None


# -- storing --------------------------------------------------------------------------------


def vary_fields(headers: Headers) -> tuple[str, ...] | None:
    """The lower-case field names a response's Vary lists (RFC 9110 §12.5.5), sorted;
    None for ``Vary: *``, which no later request can match (RFC 9111 §4.1)."""
    names: set[str] = set()
    for value in field_values(headers, "Vary"):
        for item in value.split(","):
            name = item.strip(" \t").lower()
            if name == "*":
                return None
            if name:
                names.add(name)
    return tuple(sorted(names))


def not_storable_reason(
    request_method: str,
    request_has_credentials: bool,
    status: int,
    response_headers: Headers,
    *,
    request_cache_control: CacheControl | None = None,
) -> str | None:
    """Why a shared cache must not store this response, or None if it may (RFC 9111 §3).

    ``request_has_credentials`` covers Authorization, cookies and signing query parameters:
    proxyd applies the §3.5 Authorization rule to all three, since each identifies a user.
    A 206 is stored as part of the 200 it belongs to (§3.3, §3.4), so it needs a single
    Content-Range with a known complete length; a multipart 206 is not stored.
    """
    method = request_method.upper()
    if method not in CACHEABLE_METHODS:
        return f"{method} responses are not stored"
    if status < 200 or status == 304:
        return f"status {status} is not a storable final response"
    if request_cache_control is not None and request_cache_control.no_store:
        return "the request has Cache-Control: no-store"  # §5.2.1.5
    cc = _cache_control(response_headers)
    if cc.no_store:
        return "the response has Cache-Control: no-store"  # §5.2.2.5
    if cc.private:
        return "the response has Cache-Control: private"  # §5.2.2.7, shared cache
    if request_has_credentials and not (cc.public or cc.must_revalidate or cc.s_maxage is not None):
        # §3.5: a shared cache MUST NOT use a response to a request with Authorization
        # unless the response allows it with public, s-maxage or must-revalidate.
        return "a response to a request with credentials needs public, s-maxage or must-revalidate"
    if vary_fields(response_headers) is None:
        return "the response has Vary: *"
    if status == 206:
        value = field_value(response_headers, "Content-Range")
        parsed = None if value is None else parse_content_range(value)
        if parsed is None or parsed.start is None or parsed.size is None:
            return "a 206 without a single Content-Range of known size"
    explicit = (
        cc.public
        or cc.max_age is not None
        or cc.s_maxage is not None
        or field_value(response_headers, "Expires") is not None
    )
    if not explicit and status not in HEURISTICALLY_CACHEABLE:
        return f"status {status} is not cacheable without explicit freshness"
    return None


def storable(
    request_method: str,
    request_has_credentials: bool,
    status: int,
    response_headers: Headers,
    *,
    request_cache_control: CacheControl | None = None,
) -> bool:
    """Whether a shared cache may store this response (RFC 9111 §3); see
    :func:`not_storable_reason`. Set-Cookie does not prevent storing; :func:`headers_to_store`
    drops it."""
    return (
        not_storable_reason(
            request_method,
            request_has_credentials,
            status,
            response_headers,
            request_cache_control=request_cache_control,
        )
        is None
    )


def headers_to_store(headers: Headers) -> HeaderPairs:
    """The fields of a response that the cache keeps and replays on hits.

    Dropped: hop-by-hop fields and those named in Connection (RFC 9111 §3.1, RFC 9110
    §7.6.1); Set-Cookie and the other per-response fields of ``_NEVER_STORED``; and the fields
    named by a qualified ``private="..."`` (a shared cache MUST NOT store them, §5.2.2.7) or
    ``no-cache="..."`` (not to be sent without revalidation, §5.2.2.4; dropping them is the
    simple way to honour that).
    """
    cc = _cache_control(headers)
    drop = _NEVER_STORED | set(cc.private_fields) | set(cc.no_cache_fields)
    return tuple((k, v) for k, v in strip_hop_by_hop(headers) if k.lower() not in drop)


# -- freshness and age ----------------------------------------------------------------------


def _date(headers: Headers, name: str) -> int | None:
    value = field_value(headers, name)
    return None if value is None else parse_http_date(value)


def freshness_lifetime(
    headers: Headers, response_time: float, settings: ProxySettings, *, status: int = 200
) -> float:
    """Seconds a stored response is fresh for, in a shared cache (RFC 9111 §4.2.1, §4.2.2).

    In order: s-maxage, max-age, Expires minus Date (the time of receipt ``response_time``
    when Date is absent or invalid; an invalid Expires means already expired, §5.3), then a
    heuristic only for a response with Last-Modified and a heuristically cacheable status (or
    ``public``): ``settings.heuristic_fraction`` of the time between Last-Modified and Date,
    at most ``settings.heuristic_max`` (§4.2.2 suggests 10%). Otherwise 0: the response is
    stale at once and must be revalidated before reuse.
    """
    cc = _cache_control(headers)
    if cc.s_maxage is not None:
        return float(cc.s_maxage)
    if cc.max_age is not None:
        return float(cc.max_age)
    date = _date(headers, "Date")
    date_value = response_time if date is None else float(date)
    expires_value = field_value(headers, "Expires")
    if expires_value is not None:
        expires = parse_http_date(expires_value)
        return 0.0 if expires is None else max(0.0, expires - date_value)
    if status in HEURISTICALLY_CACHEABLE or cc.public:
        last_modified = _date(headers, "Last-Modified")
        if last_modified is not None:
            heuristic = max(0.0, date_value - last_modified) * settings.heuristic_fraction
            return min(heuristic, settings.heuristic_max)
    return 0.0


def current_age(
    *,
    age_value: float,
    date_value: float,
    request_time: float,
    response_time: float,
    now: float,
) -> float:
    """The current age of a stored response (RFC 9111 §4.2.3), in seconds.

    ``age_value`` is the response's Age field (0 without one), ``date_value`` its Date
    (``response_time`` without one), ``request_time``/``response_time`` when the request
    that produced it was sent and when the response was received.
    """
    apparent_age = max(0.0, response_time - date_value)
    response_delay = response_time - request_time
    corrected_age_value = age_value + response_delay
    corrected_initial_age = max(apparent_age, corrected_age_value)
    resident_time = now - response_time
    return corrected_initial_age + resident_time


def age_field(age: float) -> str:
    """The Age field value for a response of this current age (RFC 9111 §5.1)."""
    return str(min(max(0, int(age)), MAX_DELTA_SECONDS))


def _age_value(headers: Headers) -> int:
    values = field_values(headers, "Age")
    # §5.1: Age is a singleton; of a list (on one line or several) the first member is
    # used, as the suite expects and other caches do: "7200, 0" is old, and reading it as
    # no Age at all would serve a stale response as fresh. An invalid value is ignored; the
    # corrected age from the response delay and the Date still applies.
    first = values[0].split(",")[0] if values else None
    value = None if first is None else _delta_seconds(first.strip(" \t"))
    return 0 if value is None else value


@dataclass(frozen=True, slots=True)
class StoredMeta:
    """What the cache keeps about a stored response: the metadata of one object version.

    ``status`` is that of the full representation (200 when the cache was filled by 206
    responses); ``headers`` are :func:`headers_to_store` of the origin's response;
    ``age_value`` its Age field; ``size`` the representation length when known;
    ``requires_authorization`` whether clients must be authorised by the origin before it is
    served to them (:func:`proxyd.policy.access.requires_authorization`); ``vary_request``
    the values the request that filled the entry had for the fields Vary names (§4.1).
    """

    headers: HeaderPairs
    request_time: float
    response_time: float
    status: int = 200
    age_value: int = 0
    size: int | None = None
    requires_authorization: bool = False
    vary_request: HeaderPairs = ()
    _fields: CIMultiDictProxy[str] = field(
        default_factory=lambda: CIMultiDictProxy(CIMultiDict()),
        init=False,
        repr=False,
        compare=False,
    )
    """The stored fields indexed by name, built once: a hit looks up a dozen fields, and
    stored metadata never changes (revalidation makes a new one)."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "_fields", CIMultiDictProxy(CIMultiDict(self.headers)))

    @classmethod
    def from_response(
        cls,
        status: int,
        headers: Headers,
        *,
        request_time: float,
        response_time: float,
        request_headers: Headers = (),
        requires_authorization: bool = False,
        size: int | None = None,
    ) -> StoredMeta:
        """Metadata for a response the caller has established is :func:`storable`.

        The size comes from a 206's Content-Range or a 200's Content-Length unless given.
        ``request_headers`` are those of the request *sent upstream* (they selected this
        response when it varies).
        """
        pairs = header_pairs(headers)
        if size is None:
            if status == 206:
                value = field_value(pairs, "Content-Range")
                parsed = None if value is None else parse_content_range(value)
                size = None if parsed is None else parsed.size
            elif status == 200:
                length = field_value(pairs, "Content-Length")
                if length is not None and _DIGITS.fullmatch(length.strip(" \t")):
                    size = int(length)
        selecting: list[tuple[str, str]] = []
        for name in vary_fields(pairs) or ():
            value = field_value(request_headers, name)
            if value is not None:
                selecting.append((name, value))
        return cls(
            headers=headers_to_store(pairs),
            request_time=request_time,
            response_time=response_time,
            status=200 if status == 206 else status,
            age_value=_age_value(pairs),
            size=size,
            requires_authorization=requires_authorization,
            vary_request=tuple(selecting),
        )

    def field(self, name: str) -> str | None:
        """A stored field's value (several lines joined), or None."""
        values = self._fields.getall(name, None)
        return None if values is None else ", ".join(values)

    @property
    def cache_control(self) -> CacheControl:
        return _cache_control(self._fields)

    @property
    def etag(self) -> str | None:
        """The ETag field if it is a valid entity-tag, else None."""
        value = self.field("ETag")
        return None if value is None or EntityTag.parse(value) is None else value.strip(" \t")

    @property
    def last_modified(self) -> str | None:
        """The Last-Modified field if it is a valid HTTP-date, else None."""
        value = self.field("Last-Modified")
        return None if value is None or parse_http_date(value) is None else value.strip(" \t")

    @property
    def validator(self) -> str | None:
        """What identifies this version of the object: the ETag, else Last-Modified."""
        return self.etag or self.last_modified

    @property
    def date_value(self) -> float:
        date = _date(self._fields, "Date")
        return self.response_time if date is None else float(date)

    def freshness_lifetime(self, settings: ProxySettings) -> float:
        return freshness_lifetime(self._fields, self.response_time, settings, status=self.status)

    def current_age(self, now: float) -> float:
        return current_age(
            age_value=self.age_value,
            date_value=self.date_value,
            request_time=self.request_time,
            response_time=self.response_time,
            now=now,
        )

    def staleness(self, now: float, settings: ProxySettings) -> float:
        """Seconds past the end of the freshness lifetime; 0 while fresh."""
        return max(0.0, self.current_age(now) - self.freshness_lifetime(settings))

    def conditional_headers(self) -> HeaderPairs:
        """Validators for revalidating this response (RFC 9111 §4.3.1): If-None-Match with
        the ETag and If-Modified-Since with Last-Modified, each when present."""
        out: list[tuple[str, str]] = []
        if self.etag is not None:
            out.append(("If-None-Match", self.etag))
        if self.last_modified is not None:
            out.append(("If-Modified-Since", self.last_modified))
        return tuple(out)

    def to_json(self) -> dict[str, Any]:
        """A JSON-serialisable dict; :meth:`from_json` restores it exactly."""
        return {
            "headers": [list(p) for p in self.headers],
            "request_time": self.request_time,
            "response_time": self.response_time,
            "status": self.status,
            "age_value": self.age_value,
            "size": self.size,
            "requires_authorization": self.requires_authorization,
            "vary_request": [list(p) for p in self.vary_request],
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> StoredMeta:
        return cls(
            headers=tuple((str(k), str(v)) for k, v in data["headers"]),
            request_time=float(data["request_time"]),
            response_time=float(data["response_time"]),
            status=int(data["status"]),
            age_value=int(data["age_value"]),
            size=None if data["size"] is None else int(data["size"]),
            requires_authorization=bool(data["requires_authorization"]),
            vary_request=tuple((str(k), str(v)) for k, v in data["vary_request"]),
        )


def is_fresh(stored: StoredMeta, now: float, settings: ProxySettings) -> bool:
    """Whether the freshness lifetime exceeds the current age (RFC 9111 §4.2)."""
    return stored.freshness_lifetime(settings) > stored.current_age(now)


def freshen(
    stored: StoredMeta,
    headers_304: Headers,
    *,
    request_time: float,
    response_time: float,
) -> StoredMeta:
    """Update stored metadata with a 304's fields (RFC 9111 §4.3.4, §3.2).

    Each stored field the 304 carries is replaced, new ones are added, except fields never
    stored and those that describe the stored bytes (Content-Length, -Encoding, -Type). The
    request/response times and Age of the 304 restart the age calculation.
    """
    update = [(k, v) for k, v in headers_to_store(headers_304)]
    replaced = {k.lower() for k, _ in update if k.lower() not in _NOT_UPDATED_BY_304}
    kept = [(k, v) for k, v in stored.headers if k.lower() not in replaced]
    added = [(k, v) for k, v in update if k.lower() in replaced]
    return replace(
        stored,
        headers=(*kept, *added),
        request_time=request_time,
        response_time=response_time,
        age_value=_age_value(headers_304),
    )


# -- Vary -----------------------------------------------------------------------------------

_WS_AROUND_COMMA = re.compile(r"[ \t]*,[ \t]*")
_QVALUE = re.compile(r"(?:^|;)q=([01](?:\.[0-9]{0,3})?)(?:;|$)")


def _identity_acceptable(accept_encoding: str | None) -> bool:
    """Whether identity is acceptable per Accept-Encoding (RFC 9110 §12.5.3)."""
    if accept_encoding is None:
        return True
    star: bool | None = None
    for item in accept_encoding.split(","):
        coding, _, params = item.partition(";")
        coding = coding.strip(" \t").lower()
        # weight = OWS ";" OWS "q=" qvalue (RFC 9110 §12.4.2)
        q = _QVALUE.search(params.replace(" ", "").replace("\t", "").lower())
        zero = q is not None and float(q.group(1)) == 0.0
        if coding == "identity":
            return not zero
        if coding == "*":
            star = not zero
    return star is not False


def vary_matches(stored: StoredMeta, request_headers: Headers) -> bool:
    """Whether a request may be answered with ``stored`` as far as Vary goes (RFC 9111 §4.1).

    Each field named by the stored response's Vary must have the same value (after
    normalising whitespace around commas) in this request as in the one that filled the
    entry, or be absent from both. Two fields are handled by proxyd itself:
    Accept-Encoding matches whenever identity is acceptable, since the cache holds the
    identity coding only; Authorization and Cookie are left to the access policy, which asks
    the origin about every credential with a conditional request on the stored ETag.
    """
    fields = vary_fields(stored.headers)
    if fields is None:
        return False
    selecting = {k.lower(): v for k, v in stored.vary_request}
    for name in fields:
        if name in ("authorization", "cookie"):
            continue
        value = field_value(request_headers, name)
        if name == "accept-encoding":
            if not _identity_acceptable(value):
                return False
            continue
        before = selecting.get(name)
        if (value is None) != (before is None):
            return False
        if value is not None and before is not None:
            norm_now = _WS_AROUND_COMMA.sub(",", value.strip(" \t"))
            norm_before = _WS_AROUND_COMMA.sub(",", before.strip(" \t"))
            if norm_now != norm_before:
                return False
    return True


# -- decisions ------------------------------------------------------------------------------


class Outcome(enum.Enum):
    """What to do next with a request (see the module docstring for the state machine)."""

    FRESH_HIT = "fresh-hit"
    """Serve the stored response; it is fresh (or immutable and fresh)."""
    STALE_HIT = "stale-hit"
    """Serve the stored response although stale: the client's max-stale allows it."""
    REVALIDATE = "revalidate"
    """Ask the origin with ``conditional_headers``; then :func:`after_revalidation`."""
    MISS = "miss"
    """Fetch from the origin; store the response if :func:`storable` (and ``store``)."""
    FORWARD = "forward"
    """Forward uncached (a method the cache does not answer); see invalidation_targets."""
    ONLY_IF_CACHED = "only-if-cached"
    """Answer ``status`` 504: the client allowed no origin contact (§5.2.1.7)."""
    NOT_MODIFIED = "not-modified"
    """The origin confirmed the stored response: store ``updated`` and serve it."""
    REPLACE = "replace"
    """The origin answered with a new response: forward it, store it if storable."""
    STALE_ON_ERROR = "stale-on-error"
    """The origin failed: serve the stored response, marked stale."""
    ERROR = "error"
    """The origin failed and nothing may be served in its place: 502/504 (or its 5xx)."""


@dataclass(frozen=True, slots=True)
class Decision:
    outcome: Outcome
    reason: str
    conditional_headers: HeaderPairs = ()
    """Validators to add to the upstream request (REVALIDATE)."""
    age: float | None = None
    """Current age of the stored response, for the Age field of a hit."""
    store: bool = True
    """Whether a response fetched for this request may be stored (False for a request with
    no-store, §5.2.1.5)."""
    status: int | None = None
    """Status to answer with when the decision implies one (504 for ONLY_IF_CACHED)."""
    updated: StoredMeta | None = None
    """The freshened metadata (NOT_MODIFIED)."""


@dataclass(frozen=True, slots=True)
class CacheRequest:
    """The parts of a client request the caching decisions depend on."""

    method: str
    cache_control: CacheControl = field(default_factory=CacheControl)
    headers: HeaderPairs = ()

    @classmethod
    def from_headers(cls, method: str, headers: Headers) -> CacheRequest:
        """Parse the request's Cache-Control. Without one, ``Pragma: no-cache`` counts as
        ``Cache-Control: no-cache`` (RFC 9111 §5.4 deprecates Pragma, but HTTP/1.0 clients
        still use it to ask for an end-to-end reload)."""
        pairs = header_pairs(headers)
        values = field_values(pairs, "Cache-Control")
        if not values:
            pragma = field_value(pairs, "Pragma") or ""
            if "no-cache" in {p.strip(" \t").lower() for p in pragma.split(",")}:
                values = ["no-cache"]
        return cls(method.upper(), parse_cache_control(values), pairs)


def _revalidate(stored: StoredMeta, request: CacheRequest, age: float, why: str) -> Decision:
    store = not request.cache_control.no_store
    if request.cache_control.only_if_cached:
        return Decision(
            Outcome.ONLY_IF_CACHED,
            f"{why}, and the request has only-if-cached",
            age=age,
            store=store,
            status=504,
        )
    conditional = stored.conditional_headers()
    if not conditional:
        return Decision(Outcome.MISS, f"{why}; no validator to revalidate with", store=store)
    return Decision(Outcome.REVALIDATE, why, conditional, age=age, store=store)


def decide(
    request: CacheRequest, stored: StoredMeta | None, now: float, settings: ProxySettings
) -> Decision:
    """The first step for a request: serve from cache, revalidate, fetch or pass.

    ``stored`` is the metadata of the cached object, None if there is none. Access control
    is separate (:mod:`proxyd.policy.access`) and applies to every hit.
    """
    rq = request.cache_control
    store = not rq.no_store
    if request.method not in CACHEABLE_METHODS:
        return Decision(
            Outcome.FORWARD, f"{request.method} is not answered from cache", store=False
        )
    if stored is None:
        if rq.only_if_cached:
            return Decision(
                Outcome.ONLY_IF_CACHED,
                "not cached, and the request has only-if-cached",
                store=store,
                status=504,
            )
        return Decision(Outcome.MISS, "not cached", store=store)
    if not vary_matches(stored, request.headers):
        return Decision(
            Outcome.MISS, "the stored response varies on a different request", store=store
        )

    rc = stored.cache_control
    lifetime = stored.freshness_lifetime(settings)
    age = stored.current_age(now)
    fresh = lifetime > age

    if rc.no_cache:
        # §5.2.2.4: never reused without successful validation.
        return _revalidate(stored, request, age, "the response has no-cache")
    if fresh and rc.immutable:
        # RFC 8246 §2: while fresh, an immutable response is not revalidated, even when the
        # client asks for it with no-cache or max-age=0 (a browser's reload); butler's dataset
        # files are immutable by construction (a UUID always names the same bytes).
        return Decision(Outcome.FRESH_HIT, "fresh and immutable", age=age, store=store)
    if rq.no_cache:
        return _revalidate(stored, request, age, "the request has no-cache")  # §5.2.1.4
    if rq.max_age is not None and age > rq.max_age:
        # §5.2.1.1: the client does not accept a response older than max-age.
        return _revalidate(
            stored, request, age, f"age {age:.0f}s exceeds the request's max-age={rq.max_age}"
        )
    if rq.min_fresh is not None and lifetime - age < rq.min_fresh:
        return _revalidate(
            stored, request, age, f"fresh for less than the request's min-fresh={rq.min_fresh}"
        )
    if fresh:
        return Decision(
            Outcome.FRESH_HIT, f"fresh for {lifetime - age:.0f}s more", age=age, store=store
        )
    staleness = age - lifetime
    if rq.max_stale is not None and staleness <= rq.max_stale and not forbids_stale(rc):
        # §5.2.1.2 and §4.2.4: the client accepts this much staleness and the response
        # does not forbid it.
        return Decision(
            Outcome.STALE_HIT, f"stale by {staleness:.0f}s, within max-stale", age=age, store=store
        )
    return _revalidate(stored, request, age, f"stale by {staleness:.0f}s")


def stale_if_error_window(
    stored: StoredMeta, request: CacheRequest, settings: ProxySettings
) -> float | None:
    """Seconds of staleness that may be served when the origin fails; None if none may.

    A response's own stale-if-error (RFC 5861 §4) wins, "regardless of other freshness
    information". Otherwise must-revalidate, proxy-revalidate, s-maxage and no-cache forbid
    serving stale (RFC 9111 §4.2.4); failing those, the request's stale-if-error or, by
    default, ``settings.stale_if_error`` applies (an explicit configuration of the cache,
    which §4.2.4 lets serve stale responses when disconnected).
    """
    rc = stored.cache_control
    if rc.stale_if_error is not None:
        return float(rc.stale_if_error)
    if forbids_stale(rc):
        return None
    requested = request.cache_control.stale_if_error
    return float(requested) if requested is not None else settings.stale_if_error


def on_origin_error(
    stored: StoredMeta | None,
    request: CacheRequest,
    now: float,
    settings: ProxySettings,
    *,
    status: int | None = None,
) -> Decision:
    """The origin could not be reached or answered with a 5xx (``status``): serve the stored
    response marked stale if :func:`stale_if_error_window` allows, else ERROR (the caller
    answers 502/504, or passes the origin's 5xx on)."""
    what = "the origin is unreachable" if status is None else f"the origin answered {status}"
    if stored is None:
        return Decision(Outcome.ERROR, f"{what} and nothing is cached", status=status)
    window = stale_if_error_window(stored, request, settings)
    if window is None:
        return Decision(
            Outcome.ERROR, f"{what}; the stored response forbids serving it stale", status=status
        )
    age = stored.current_age(now)
    staleness = stored.staleness(now, settings)
    if staleness > window:
        return Decision(
            Outcome.ERROR,
            f"{what}; the stored response is stale by {staleness:.0f}s, beyond stale-if-error "
            f"({window:.0f}s)",
            status=status,
        )
    return Decision(Outcome.STALE_ON_ERROR, f"{what}; serving the stored response", age=age)


def _selects(stored: StoredMeta, headers_304: Headers) -> bool:
    """Whether a 304 is about the stored response (RFC 9111 §4.3.4 selection)."""
    etag_value = field_value(headers_304, "ETag")
    if etag_value is not None:
        new = EntityTag.parse(etag_value)
        old = None if stored.etag is None else EntityTag.parse(stored.etag)
        return new is not None and old is not None and weak_match(new, old)
    last_modified = field_value(headers_304, "Last-Modified")
    if last_modified is not None:
        new_date = parse_http_date(last_modified)
        old_date = None if stored.last_modified is None else parse_http_date(stored.last_modified)
        return new_date is not None and new_date == old_date
    return True  # no validator in the 304: it can only be about the one stored response


def after_revalidation(
    stored: StoredMeta,
    status: int,
    headers: Headers,
    *,
    request: CacheRequest,
    request_time: float,
    response_time: float,
    now: float,
    settings: ProxySettings,
) -> Decision:
    """The step after a REVALIDATE request came back with ``status`` and ``headers``."""
    if status == 304:
        if not _selects(stored, headers):
            return Decision(
                Outcome.MISS,
                "the 304's validator does not match the stored response",
                store=not request.cache_control.no_store,
            )
        updated = freshen(stored, headers, request_time=request_time, response_time=response_time)
        return Decision(
            Outcome.NOT_MODIFIED,
            "the origin confirmed the stored response",
            age=updated.current_age(now),
            store=not request.cache_control.no_store,
            updated=updated,
        )
    if status in ERROR_STATUSES:
        return on_origin_error(stored, request, now, settings, status=status)
    return Decision(
        Outcome.REPLACE,
        f"the origin answered {status} to the conditional request",
        store=not request.cache_control.no_store,
        status=status,
    )


def invalidation_targets(
    method: str, status: int, request_url: str, response_headers: Headers
) -> tuple[str, ...]:
    """URLs whose stored responses an unsafe request invalidates (RFC 9111 §4.4).

    After a non-error response (2xx or 3xx) to a method other than GET, HEAD, OPTIONS and
    TRACE: the target URI, and the URIs in Location and Content-Location when they have the
    same origin as the target (invalidating another origin's entries would let one origin
    evict another's). Empty otherwise. Map each URL to a key with
    :func:`proxyd.policy.keys.cache_key`.
    """
    if method.upper() in ("GET", "HEAD", "OPTIONS", "TRACE") or not 200 <= status < 400:
        return ()
    origin = urlsplit(request_url)
    targets = [request_url]
    for name in ("Location", "Content-Location"):
        value = field_value(response_headers, name)
        if value is None:
            continue
        url = urljoin(request_url, value.strip(" \t"))
        parts = urlsplit(url)
        if (parts.scheme, parts.netloc) == (origin.scheme, origin.netloc) and url not in targets:
            targets.append(url)
    return tuple(targets)
