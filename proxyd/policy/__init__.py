"""proxyd's HTTP policy as pure functions of (request, stored metadata, now): no I/O.

The aiohttp handlers ask these modules what to do and only carry it out:

* :mod:`.requests` — may this request be proxied, to which upstream URL (reverse proxy only),
  and which header fields cross the proxy (RFC 9110 §7.6);
* :mod:`.keys` — the cache key of a URL and the credential fingerprint of a request;
* :mod:`.freshness` — RFC 9111 for a shared cache: storable?, fresh?, revalidate?, stale?;
* :mod:`.blocks` — which fixed-size blocks a set of byte ranges needs and how to fetch the
  missing ones in few, bounded upstream range requests;
* :mod:`.access` — may a cached object be served to this client without asking the origin.

Byte ranges and validators come from :mod:`butler.http` (shared with ``butler serve``).

This module holds the one helper all of them need: reading header fields from whatever the
caller has (a plain dict, aiohttp's case-insensitive multidict, or a list of pairs).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from multidict import CIMultiDict, CIMultiDictProxy

__all__ = ["HeaderPairs", "Headers", "field_value", "field_values", "header_pairs"]

#: Header fields as ordered (name, value) pairs; names keep the case they arrived with.
HeaderPairs = tuple[tuple[str, str], ...]
#: Any header container: a mapping (aiohttp's ``CIMultiDictProxy`` yields repeated fields from
#: ``items()``) or an iterable of (name, value) pairs.
Headers = Mapping[str, str] | Iterable[tuple[str, str]]


def header_pairs(headers: Headers) -> HeaderPairs:
    """The fields of ``headers`` as a tuple of (name, value) pairs, repeats kept in order."""
    if isinstance(headers, Mapping):
        return tuple((str(k), str(v)) for k, v in headers.items())
    return tuple((str(k), str(v)) for k, v in headers)


def field_values(headers: Headers, name: str) -> list[str]:
    """Every value of field ``name`` (matched case-insensitively, RFC 9110 §5.1), in order."""
    if isinstance(headers, CIMultiDict | CIMultiDictProxy):
        # Already indexed by case-insensitive name (aiohttp's request headers, stored
        # metadata): no copy of every field per lookup.
        return [str(v) for v in headers.getall(name, ())]
    lowered = name.lower()
    return [v for k, v in header_pairs(headers) if k.lower() == lowered]


def field_value(headers: Headers, name: str) -> str | None:
    """The combined value of field ``name``, or None if absent.

    Several field lines of one name are joined with ", " (RFC 9110 §5.3), which is the right
    reading for list-based fields; for singleton fields callers parse the result and treat a
    list as invalid, as the RFCs require.
    """
    values = field_values(headers, name)
    return ", ".join(values) if values else None
