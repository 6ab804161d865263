"""``--via PROXY``: the path of a caching proxy that serves a source repository.

proxyd serves each configured upstream at ``/<name>/`` of its base URL (a request for
``/<name>/x`` goes to ``<upstream URL>/x``), and lists them in ``GET /healthz`` as
``"routes": {name: upstream URL}``. Given the proxy's base URL and the source's URL, a pull
looks the routes up and asks the proxy's path for the source, e.g. ``--via
http://proxy:8080/`` for ``https://data.example.org/butler/`` served by the route
``repo = "https://data.example.org"`` is ``http://proxy:8080/repo/butler/``.

The look-up carries no credential: the routes are no secret (the settings refuse user
information in an upstream URL) and a token goes only to where the questions and files are
asked, the proxy's path for the source (and, on redirects, only within its origin:
:func:`mirror.connections.redirected_headers`).

:func:`route_for` is the policy (no I/O); :func:`proxy_routes` asks the proxy.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from urllib.parse import urlsplit

from butler.butler import is_remote_uri
from butler.errors import RemoteUnavailableError, RepositoryConfigError
from mirror.connections import NETWORK_ERRORS, USER_AGENT, KeptAlive, origin

MAX_PARENTS = 8
"""Parent paths of ``--via`` asked for the routes when it is a route itself, as ``--via``
used to take (``http://proxy:8080/repo/``): a bound, for URLs of any depth."""
HEALTH = "healthz"


class NoRouteError(RepositoryConfigError):
    """The proxy has no route to the source repository."""

    error_type = "NoRouteError"


def _path(url: str) -> str:
    return urlsplit(url).path.rstrip("/")


def route_for(routes: Mapping[str, str], proxy: str, source: str) -> str | None:
    """The URL of ``source`` through the proxy at ``proxy`` (its base URL) whose ``routes``
    map names to upstream base URLs; None if no route leads to it.

    A route leads to the source when its upstream has the source's origin (scheme, host and
    port, the default port the same as none) and its path is the source's path or a parent
    of it, segment by segment; of several, the longest path is the closest.
    """
    wanted, path = origin(source), _path(source)
    best: tuple[str, str] | None = None
    for name, upstream in routes.items():
        if origin(upstream) != wanted:
            continue
        prefix = _path(upstream)
        if path != prefix and not path.startswith(prefix + "/"):
            continue
        if best is None or len(prefix) > len(best[1]):
            best = (name, prefix)
    if best is None:
        return None
    name, prefix = best
    return proxy.rstrip("/") + "/" + name + path[len(prefix) :] + "/"


def _candidates(via: str) -> list[str]:
    """``via`` as the proxy's base URL, then its parent paths (at most MAX_PARENTS)."""
    parts = urlsplit(via)
    segments = [s for s in parts.path.split("/") if s]
    root = f"{parts.scheme}://{parts.netloc}/"
    bases = []
    for keep in range(len(segments), max(-1, len(segments) - MAX_PARENTS - 1), -1):
        bases.append(root + "".join(s + "/" for s in segments[:keep]))
    return bases


def _routes_of(answer: bytes) -> dict[str, str] | None:
    """The ``routes`` of a /healthz answer, or None if it has none (not a proxyd's)."""
    try:
        data = json.loads(answer)
    except ValueError:
        return None
    routes = data.get("routes") if isinstance(data, dict) else None
    if not isinstance(routes, dict):
        return None
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in routes.items()):
        return None
    return routes


def proxy_routes(via: str, timeout: float = 10.0) -> tuple[str, dict[str, str]]:
    """The proxy's base URL and its routes, asked of ``GET <via>/healthz`` (or of a parent
    path's, when ``via`` is a route of the proxy rather than its base URL)."""
    if not is_remote_uri(via) or not urlsplit(via).hostname:
        raise RepositoryConfigError(
            f"--via {via} is not an http(s) URL; give the caching proxy's base URL, "
            "e.g. http://proxy:8080/"
        )
    headers = {"User-Agent": USER_AGENT, "Accept": "application/json"}  # no credential
    connections = KeptAlive(timeout, lambda c: c.sock.settimeout(timeout) if c.sock else None)
    try:
        for base in _candidates(via):
            url = base + HEALTH
            try:
                response, _ = connections.request("GET", url, headers)
                body = response.read()
            except NETWORK_ERRORS as exc:
                raise RemoteUnavailableError(f"cannot reach the proxy at {via}: {exc}") from exc
            if response.will_close:
                connections.forget(url)
            routes = _routes_of(body) if response.status == 200 else None
            if routes is not None:
                return base, routes
    finally:
        connections.close()
    raise RepositoryConfigError(
        f"the proxy at {via} does not list the repositories it serves ({via.rstrip('/')}/"
        f"{HEALTH} has no 'routes': it is no proxyd, or an older one); give its URL for the "
        "repository as the source instead (mirror pull http://PROXY/NAME/ ...)"
    )


def via_route(via: str, source: str) -> str:
    """The URL to ask for ``source`` through the proxy at ``via``; a clear error when the
    source is no URL or no route of the proxy leads to it."""
    if not is_remote_uri(source):
        raise RepositoryConfigError(
            f"--via needs the source repository's URL, and {source} is a local path; "
            "pull from it without --via"
        )
    base, routes = proxy_routes(via)
    route = route_for(routes, base, source)
    if route is not None:
        return route
    listed = "; ".join(f"/{n}/ -> {u}" for n, u in sorted(routes.items())) or "none"
    raise NoRouteError(
        f"no route in proxy {base} serves {source}; configure one in the proxy "
        f"(`proxyd serve --upstream NAME={source.rstrip('/')}`, or NAME = "
        f'"{source.rstrip("/")}" under [upstreams] in its config file), or pull without '
        f"--via. The proxy's routes: {listed}"
    )
