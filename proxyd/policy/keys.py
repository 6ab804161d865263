"""Cache keys and credential fingerprints.

A cache key names an upstream resource, independent of how a client happened to
percent-encode its URL and of the query parameters that only sign the request (S3 pre-signed
URLs carry ``X-Amz-Signature``, ``X-Amz-Date``, ... which change on every request for the
same object). Those parameters are credentials: they are left out of the key but go into
the credential fingerprint, so a signed URL is treated like a request with an
``Authorization`` field (see :mod:`proxyd.policy.access`). Everything else in the URL, the
order of the query parameters included, is part of the key (see :func:`cache_key`).
"""

from __future__ import annotations

import fnmatch
import hashlib
import re
from collections.abc import Sequence
from urllib.parse import unquote

from proxyd.policy import Headers, field_values

__all__ = [
    "CREDENTIAL_FIELDS",
    "QueryParam",
    "cache_key",
    "credential_fingerprint",
    "is_signing_param",
    "normalise_percent_encoding",
    "split_query",
    "split_signing_params",
]

#: Request fields that identify the client to the origin (RFC 9110 §11.6.2; cookies per
#: RFC 6265). A request with any of them, or with a signing query parameter, has credentials.
CREDENTIAL_FIELDS = ("Authorization", "Cookie")

#: (name, value) of one query parameter, both still percent-encoded as sent; value is None
#: for a parameter without "=".
QueryParam = tuple[str, str | None]

_PERCENT = re.compile(r"%([0-9A-Fa-f]{2})")
# unreserved = ALPHA / DIGIT / "-" / "." / "_" / "~" (RFC 3986 §2.3)
_UNRESERVED = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")


def normalise_percent_encoding(text: str) -> str:
    """Percent-encoding normalisation of RFC 3986 §6.2.2.2 (used by RFC 9110 §4.2.3).

    Triplets that encode an unreserved character are decoded (``%7E`` -> ``~``) and the hex
    digits of all others are upper-cased (``%2f`` -> ``%2F``); the result identifies the same
    resource. Nothing else is changed: ``+`` and ``%20`` stay different, as they are in a
    generic URI.
    """

    def fix(m: re.Match[str]) -> str:
        byte = int(m.group(1), 16)
        return chr(byte) if byte in _UNRESERVED else "%" + m.group(1).upper()

    return _PERCENT.sub(fix, text)


def split_query(query: str) -> list[QueryParam]:
    """The parameters of a query string (no leading "?"), empty members skipped."""
    params: list[QueryParam] = []
    for member in query.split("&"):
        if not member:
            continue
        name, eq, value = member.partition("=")
        params.append((name, value if eq else None))
    return params


def is_signing_param(name: str, patterns: Sequence[str]) -> bool:
    """Whether query parameter ``name`` (percent-encoded) matches one of the glob patterns.

    Matching is case-insensitive: S3 accepts ``x-amz-signature`` as well as
    ``X-Amz-Signature``, and a key must not depend on which one a client used.
    """
    decoded = unquote(name).lower()
    return any(fnmatch.fnmatchcase(decoded, p.lower()) for p in patterns)


def split_signing_params(
    query: str, patterns: Sequence[str]
) -> tuple[list[QueryParam], list[QueryParam]]:
    """Split a query into (the parameters that identify the resource, the signing ones)."""
    kept: list[QueryParam] = []
    signing: list[QueryParam] = []
    for param in split_query(query):
        (signing if is_signing_param(param[0], patterns) else kept).append(param)
    return kept, signing


def _join(params: Sequence[QueryParam]) -> str:
    return "&".join(n if v is None else f"{n}={v}" for n, v in params)


def cache_key(url: str, signing_params: Sequence[str]) -> str:
    """The cache key of an upstream URL.

    ``url`` is ``scheme://authority/path?query`` with scheme and authority already normalised
    (:mod:`proxyd.settings` does that for upstream base URLs). The key is the URL with
    percent-encoding normalised in the path and in every query parameter's name and value
    (RFC 3986 §6.2.2.2: the same resource however a client spelled it) and the signing
    parameters removed; an empty query and no query are the same, as are empty ``&&``
    members. A fragment never reaches a server (RFC 9110 §4.2.4) and is dropped.

    The parameters keep the order they were sent in. Order carries meaning for many origins:
    a repeated parameter can be an ordered list (``butler serve`` reads ``collections=`` as a
    search path, first match wins) or read first-wins or last-wins, so two URLs that differ
    only in the order of their parameters may name different responses, and sorting them
    into one key would serve one client's answer to the other (and let anyone poison the
    entry for the other spelling). As in nginx's ``$args`` and Varnish's default hash, only
    what is known not to name the resource -- the signing parameters -- is left out.
    """
    url = url.partition("#")[0]
    base, _, query = url.partition("?")
    scheme, sep, rest = base.partition("://")
    authority, slash, path = rest.partition("/")
    key = f"{scheme}{sep}{authority}{slash}{normalise_percent_encoding(path)}"
    kept, _ = split_signing_params(query, signing_params)
    normalised = [
        (normalise_percent_encoding(n), None if v is None else normalise_percent_encoding(v))
        for n, v in kept
    ]
    if normalised:
        key += "?" + _join(normalised)
    return key


def credential_fingerprint(headers: Headers, signing: Sequence[QueryParam] = ()) -> str | None:
    """A stable SHA-256 hex digest of the request's credentials, or None if it has none.

    Covers every ``Authorization`` and ``Cookie`` field line (in order) and the signing query
    parameters (``signing``, as returned by :func:`split_signing_params`, sorted here). The
    digest is what the authorisation cache is keyed by, so raw secrets never sit in memory
    longer than one request, nor in logs or metrics. ``Proxy-Authorization`` is for proxyd
    itself (RFC 9110 §11.7.2), never forwarded, and not part of it.
    """
    parts: list[str] = []
    for name in CREDENTIAL_FIELDS:
        parts += [f"{name.lower()}:{value.strip()}" for value in field_values(headers, name)]
    for n, v in sorted(signing, key=lambda p: (p[0], p[1] or "")):
        value = "" if v is None else normalise_percent_encoding(v)
        parts.append(f"query:{normalise_percent_encoding(n)}={value}")
    if not parts:
        return None
    # "\n" cannot occur inside a field value or a query (both are checked upstream of this),
    # so the joined text is an unambiguous encoding of the list.
    return hashlib.sha256(("proxyd-credential-v1\n" + "\n".join(parts)).encode()).hexdigest()
