"""``CDN-Cache-Control`` (RFC 9213): cache directives for the CDNs and site caches of an
origin, which such a cache obeys *instead of* Cache-Control.

proxyd is the kind of cache the field is for (a shared cache the origin's operators put in
front of it), so a valid ``CDN-Cache-Control`` replaces the response's Cache-Control in
every decision (storing, freshness, revalidation); Cache-Control still travels to the
clients. The field is a Structured Field Dictionary (RFC 8941, RFC 9213 §2): one that does
not parse, or whose ``max-age``/``s-maxage``/``stale-*`` is not an Integer, is ignored as a
whole (§2.1: "a cache that ... fails to parse ... MUST ignore the entire field"), and
Cache-Control applies. Pure: no I/O.
"""

from __future__ import annotations

import re

from proxyd.policy import Headers, field_values

__all__ = ["cdn_cache_control"]

_KEY = r"[a-z*][a-z0-9_\-.*]*"
_BARE_ITEM = (
    r"(?:-?[0-9]{1,12}\.[0-9]{1,3}"  # decimal
    r"|-?[0-9]{1,15}"  # integer
    r'|"(?:[ !#-\[\]-~]|\\["\\])*"'  # string
    r"|[A-Za-z*][!#$%&'*+\-.^_`|~0-9A-Za-z:/]*"  # token
    r"|:[A-Za-z0-9+/=]*:"  # byte sequence
    r"|\?[01])"  # boolean
)
_PARAMS = rf"(?:;[ ]*{_KEY}(?:={_BARE_ITEM})?)*"
_MEMBER = re.compile(rf"({_KEY})(?:=({_BARE_ITEM}))?{_PARAMS}")
_INTEGER = re.compile(r"-?[0-9]{1,15}")
_INTEGER_DIRECTIVES = frozenset({"max-age", "s-maxage", "stale-while-revalidate", "stale-if-error"})


def _members(value: str) -> list[str] | None:
    """Split a dictionary's members on commas outside strings; None if a string is open."""
    members: list[str] = []
    current: list[str] = []
    quoted = escaped = False
    for char in value:
        if quoted:
            current.append(char)
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                quoted = False
        elif char == ",":
            members.append("".join(current))
            current = []
        else:
            current.append(char)
            quoted = char == '"'
    if quoted:
        return None
    members.append("".join(current))
    return members


def cdn_cache_control(headers: Headers) -> str | None:
    """The response's CDN-Cache-Control, as a Cache-Control value to obey instead of its
    Cache-Control; None when it has none or an invalid one."""
    lines = field_values(headers, "CDN-Cache-Control")
    if not lines:
        return None
    members = _members(",".join(lines))
    if members is None:
        return None
    out: list[str] = []
    for raw in members:
        # Keys are lower case in Structured Fields; directives are matched without regard
        # to case in Cache-Control, and origins write them both ways: accept either.
        member = _MEMBER.fullmatch(raw.strip(" \t").lower())
        if member is None:
            return None
        key, value = member.group(1), member.group(2)
        if key in _INTEGER_DIRECTIVES and (value is None or not _INTEGER.fullmatch(value)):
            return None
        out.append(key if value is None else f"{key}={value}")
    return ", ".join(out)
