"""Which of the proxy's paths serves a given origin URL (``GET /healthz?route=URL``).

A client that knows a repository's URL and the proxy's base URL asks the proxy for its path
to that repository (``mirror pull SOURCE --via PROXY``). The proxy answers for the URL it
is given, and lists no upstream URL: ``/healthz`` tells anyone who can reach the port the
upstreams' names, never their URLs (docs/security.md).

A request for ``/<name>/<rest>`` goes to ``<upstream URL>/<rest>`` (:func:`proxyd.policy.
requests.route`), so the upstream ``name`` serves a URL when it has the URL's origin (scheme,
host and port, a scheme's default port the same as none; RFC 9110 §4.2.3) and its path is
the URL's path or a parent of it, segment by segment. Of several, the longest path is the
closest. Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from urllib.parse import urlsplit

DEFAULT_PORTS = {"http": 80, "https": 443}


def _origin_and_path(url: str) -> tuple[tuple[str, str, int | None], str] | None:
    """A URL's origin and its path without a trailing slash; None if it is no http(s) URL."""
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS or not parts.hostname:
        return None
    return (scheme, parts.hostname.lower(), port or DEFAULT_PORTS[scheme]), parts.path.rstrip("/")


def route_path(upstreams: Mapping[str, str], url: str) -> str | None:
    """The proxy's path (``/<name>/<rest>/``) for ``url``, or None if no upstream serves it."""
    wanted = _origin_and_path(url)
    if wanted is None:
        return None
    origin, path = wanted
    best: tuple[str, str] | None = None
    for name, upstream in upstreams.items():
        served = _origin_and_path(upstream)
        if served is None or served[0] != origin:
            continue
        prefix = served[1]
        if path != prefix and not path.startswith(prefix + "/"):
            continue
        if best is None or len(prefix) > len(best[1]):
            best = (name, prefix)
    if best is None:
        return None
    name, prefix = best
    return f"/{name}{path[len(prefix) :]}/"
