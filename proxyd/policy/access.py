"""May a cached object be served to this client? Never one user's data to another.

An object fetched by a request *with* credentials (Authorization, Cookie or a signed URL) was
given to that client, not to everyone, even when the response said ``public``: proxyd
serves it to any other client — anonymous ones included — only after the origin has
authorised that client's credential for that object. The check is a conditional request
with the client's own credentials and the stored validators (:func:`auth_check_headers`):

* 304, or a 2xx with the stored validator -> authorised; the cached bytes are served;
* 401 / 403 -> the client gets that status and none of the object's bytes;
* another answer -> it is forwarded as the response (a different representation for this
  credential, a redirect to a login page, a 404 ...);
* 5xx or no answer -> no bytes either, unless the same credential was authorised for this
  object version recently enough (:func:`access_without_origin`).

The answers are kept briefly in an :class:`AuthDecisionCache`, keyed by the credential
fingerprint (:func:`proxyd.policy.keys.credential_fingerprint`) and the cache key, so a
client reading a file in many small ranges costs the origin one check per ``auth_ttl``.
Objects fetched anonymously whose response does not vary on credentials were public to begin
with and are served to everyone.
"""

from __future__ import annotations

import enum
from collections import OrderedDict
from dataclasses import dataclass

from butler.http.conditional import EntityTag, parse_http_date, weak_match
from proxyd.policy import HeaderPairs, Headers, field_value, field_values
from proxyd.policy.freshness import ERROR_STATUSES, StoredMeta, vary_fields
from proxyd.policy.keys import CREDENTIAL_FIELDS

__all__ = [
    "DENIAL_STATUSES",
    "Access",
    "AccessDecision",
    "AuthAnswer",
    "AuthDecisionCache",
    "AuthEntry",
    "AuthOutcome",
    "access_decision",
    "access_without_origin",
    "auth_check_headers",
    "authorization_needed",
    "interpret_auth_response",
    "requires_authorization",
]

#: Origin answers to an authorisation check that are cached as a denial: they are about the
#: credential (RFC 9110 §15.5.2, §15.5.4), not about the state of the object.
DENIAL_STATUSES = frozenset({401, 403})

# Key used for requests without credentials in the decision cache.
_ANONYMOUS = ""


def requires_authorization(request_had_credentials: bool, response_headers: Headers) -> bool:
    """Whether clients must be authorised by the origin before they get this object.

    True when the request that fetched it carried credentials (the origin answered that
    client, and RFC 9111 §3.5 only lets such a response be stored at all because of public,
    s-maxage or must-revalidate), and when the response varies on Authorization or Cookie
    (RFC 9110 §12.5.5: the representation depends on who asks, whoever asked first).
    """
    if request_had_credentials:
        return True
    varies = vary_fields(response_headers)
    if varies is None:
        return True
    return any(name in varies for name in ("authorization", "cookie"))


@dataclass(frozen=True, slots=True)
class AuthEntry:
    """The origin's answer for one (credential, object version)."""

    allowed: bool
    status: int
    """The origin's status: 304 or 2xx when allowed, 401 or 403 when denied."""
    validator: str | None
    """:attr:`StoredMeta.validator` of the object version the answer is about."""
    decided_at: float
    headers: HeaderPairs = ()
    """Fields to repeat when answering from a cached denial (WWW-Authenticate, §11.6.1)."""

    @classmethod
    def allow(cls, stored: StoredMeta, now: float, status: int = 200) -> AuthEntry:
        """The entry for the client whose own request filled the cache: the origin just
        gave it the object."""
        return cls(True, status, stored.validator, now)


class AuthDecisionCache:
    """A bounded LRU mapping (credential fingerprint, cache key) -> :class:`AuthEntry`.

    Pure data structure: the caller passes ``now`` and the ``ttl`` to judge entries by, so
    the same cache can answer "recent enough to skip the check" (``auth_ttl``) and "recent
    enough to serve while the origin is down" (a longer grace). Not thread-safe; proxyd
    uses it from its event loop only.
    """

    def __init__(self, max_entries: int = 100_000) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self.max_entries = max_entries
        self._entries: OrderedDict[tuple[str, str], AuthEntry] = OrderedDict()

    @staticmethod
    def _key(credential: str | None, object_key: str) -> tuple[str, str]:
        return (credential or _ANONYMOUS, object_key)

    def __len__(self) -> int:
        return len(self._entries)

    def get(
        self, credential: str | None, object_key: str, now: float, ttl: float
    ) -> AuthEntry | None:
        """The entry if it was decided less than ``ttl`` seconds before ``now``, else None.
        Entries too old for this ``ttl`` stay (a longer ttl may still want them) until LRU
        eviction; a clock that went backwards makes an entry count as fresh, never newer."""
        key = self._key(credential, object_key)
        entry = self._entries.get(key)
        if entry is None:
            return None
        self._entries.move_to_end(key)
        if now - entry.decided_at >= ttl:
            return None
        return entry

    def put(self, credential: str | None, object_key: str, entry: AuthEntry) -> None:
        key = self._key(credential, object_key)
        self._entries[key] = entry
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    def discard(self, credential: str | None, object_key: str) -> None:
        self._entries.pop(self._key(credential, object_key), None)

    def forget_object(self, object_key: str) -> None:
        """Drop every credential's entry for an object (after a purge or a change)."""
        for key in [k for k in self._entries if k[1] == object_key]:
            del self._entries[key]


class Access(enum.Enum):
    SERVE = "serve"
    """Serve the cached object to this client."""
    CHECK = "check"
    """Ask the origin first (:func:`auth_check_headers`, :func:`interpret_auth_response`)."""
    DENY = "deny"
    """Answer ``status`` with ``headers`` and none of the object's bytes."""


@dataclass(frozen=True, slots=True)
class AccessDecision:
    access: Access
    reason: str
    status: int | None = None
    headers: HeaderPairs = ()


def access_decision(
    object_meta: StoredMeta,
    credential_fingerprint: str | None,
    auth_cache_entry: AuthEntry | None,
    now: float,
    ttl: float,
) -> AccessDecision:
    """Serve, check with the origin, or deny, for a request that would be a cache hit.

    ``auth_cache_entry`` is the :class:`AuthDecisionCache` entry for this credential and
    object (None if there is none); it counts only if younger than ``ttl`` and about the
    stored version of the object.
    """
    if not object_meta.requires_authorization:
        return AccessDecision(Access.SERVE, "the object was fetched without credentials")
    who = "anonymous client" if credential_fingerprint is None else "credential"
    entry = auth_cache_entry
    if entry is None:
        return AccessDecision(Access.CHECK, f"the origin has not yet authorised this {who}")
    if now - entry.decided_at >= ttl:
        return AccessDecision(Access.CHECK, f"the origin's answer for this {who} has expired")
    if entry.validator != object_meta.validator:
        return AccessDecision(Access.CHECK, "the origin's answer was about another version")
    if entry.allowed:
        return AccessDecision(Access.SERVE, f"the origin authorised this {who}")
    return AccessDecision(
        Access.DENY, f"the origin refused this {who}", status=entry.status, headers=entry.headers
    )


def authorization_needed(
    object_meta: StoredMeta,
    credential_fingerprint: str | None,
    auth_cache_entry: AuthEntry | None,
    now: float,
    ttl: float,
) -> bool:
    """Whether the origin must be asked before serving ``object_meta`` to this client."""
    decision = access_decision(object_meta, credential_fingerprint, auth_cache_entry, now, ttl)
    return decision.access is Access.CHECK


def access_without_origin(
    object_meta: StoredMeta,
    credential_fingerprint: str | None,
    auth_cache_entry: AuthEntry | None,
    now: float,
    grace: float,
) -> AccessDecision:
    """The authorisation check failed because the origin is down (5xx, timeout, refused).

    Serve only if this credential was authorised for this object version within ``grace``
    seconds (look the entry up with ``ttl=grace``, e.g. ``settings.stale_if_error``); deny
    with 502 otherwise, since nobody can vouch for the client.
    """
    decision = access_decision(object_meta, credential_fingerprint, auth_cache_entry, now, grace)
    if decision.access is Access.CHECK:
        return AccessDecision(
            Access.DENY,
            "the origin, which must authorise this client for this object, cannot be reached",
            status=502,
        )
    return decision


def auth_check_headers(object_meta: StoredMeta, client_headers: Headers) -> HeaderPairs:
    """Fields of the authorisation check sent upstream (with the client's method and URL).

    The client's credentials (every Authorization and Cookie line; a signed URL carries its
    signature in the URL itself) and the stored validators, so that an authorised client
    costs a 304 without a body (RFC 9110 §13.1.2, §13.1.3), and ``Accept-Encoding:
    identity`` so that a 200 is comparable with the stored bytes.
    """
    out: list[tuple[str, str]] = []
    for name in CREDENTIAL_FIELDS:
        out += [(name, value) for value in field_values(client_headers, name)]
    out += object_meta.conditional_headers()
    out.append(("Accept-Encoding", "identity"))
    return tuple(out)


class AuthOutcome(enum.Enum):
    ALLOWED = "allowed"
    """Serve the cached object (a 2xx body may be discarded or forwarded: it is the same)."""
    DENIED = "denied"
    """Forward the origin's answer; none of the cached bytes."""
    CHANGED = "changed"
    """The origin has another version for this client: forward its response, and treat
    the stored object as stale."""
    UNAVAILABLE = "unavailable"
    """The origin failed: see :func:`access_without_origin`."""


@dataclass(frozen=True, slots=True)
class AuthAnswer:
    outcome: AuthOutcome
    reason: str
    entry: AuthEntry | None = None
    """What to put in the :class:`AuthDecisionCache` (None: nothing)."""


def _same_version(object_meta: StoredMeta, headers: Headers) -> bool:
    etag = field_value(headers, "ETag")
    if etag is not None:
        new = EntityTag.parse(etag)
        old = None if object_meta.etag is None else EntityTag.parse(object_meta.etag)
        return new is not None and old is not None and weak_match(new, old)
    last_modified = field_value(headers, "Last-Modified")
    if last_modified is not None:
        old_date = (
            None
            if object_meta.last_modified is None
            else parse_http_date(object_meta.last_modified)
        )
        return old_date is not None and parse_http_date(last_modified) == old_date
    return False


def interpret_auth_response(
    object_meta: StoredMeta, status: int, headers: Headers, now: float
) -> AuthAnswer:
    """Read the origin's answer to an authorisation check (see the module docstring)."""
    if status == 304:
        # A 304 answers the conditional request: the client may have the stored version. Its
        # validator, when present, must name that version (RFC 9111 §4.3.4).
        has_validator = field_value(headers, "ETag") or field_value(headers, "Last-Modified")
        if has_validator and not _same_version(object_meta, headers):
            return AuthAnswer(AuthOutcome.CHANGED, "the 304 names another version")
        return AuthAnswer(
            AuthOutcome.ALLOWED,
            "the origin confirmed the stored version for this client",
            AuthEntry(True, status, object_meta.validator, now),
        )
    if 200 <= status < 300:
        if _same_version(object_meta, headers):
            return AuthAnswer(
                AuthOutcome.ALLOWED,
                f"the origin answered {status} with the stored version",
                AuthEntry(True, status, object_meta.validator, now),
            )
        return AuthAnswer(AuthOutcome.CHANGED, f"the origin answered {status} with another version")
    if status in ERROR_STATUSES or status >= 500:
        return AuthAnswer(AuthOutcome.UNAVAILABLE, f"the origin answered {status}")
    if status in DENIAL_STATUSES:
        keep = tuple(
            ("WWW-Authenticate", value) for value in field_values(headers, "WWW-Authenticate")
        )
        return AuthAnswer(
            AuthOutcome.DENIED,
            f"the origin refused the client with {status}",
            AuthEntry(False, status, object_meta.validator, now, keep),
        )
    return AuthAnswer(AuthOutcome.DENIED, f"the origin answered {status}; forwarded as is")
