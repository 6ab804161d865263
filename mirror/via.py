"""``--via PROXY``: the path of a caching proxy that serves a source repository.

proxyd serves each configured upstream at ``/<name>/`` of its base URL (a request for
``/<name>/x`` goes to ``<upstream URL>/x``) and answers ``GET /healthz?route=URL`` with
``"route"``: its path for that URL, or null when no upstream serves it
(:mod:`proxyd.policy.routes`). So given the proxy's base URL and the source's, a pull asks
the proxy the way, e.g. ``--via http://proxy:8080/`` for ``https://data.example.org/butler/``
served by the upstream ``repo = "https://data.example.org"`` is
``http://proxy:8080/repo/butler/``.

The question carries no credential (the source's URL is no secret, and the answer needs
none); the token goes only where the repository's questions and files are asked, the
proxy's path for the source (and, on redirects, only within its origin:
:func:`mirror.connections.redirected_headers`).
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote, urlsplit

from butler.butler import is_remote_uri
from butler.errors import RemoteUnavailableError, RepositoryConfigError
from mirror.connections import NETWORK_ERRORS, USER_AGENT, KeptAlive

MAX_PARENTS = 8
"""Parent paths of ``--via`` asked in turn when it is not the proxy's base URL but one of
its routes, as ``--via`` took before (``http://proxy:8080/repo/``): a bound, for URLs of
any depth."""
HEALTH = "healthz"


class NoRouteError(RepositoryConfigError):
    """The proxy has no route to the source repository."""

    error_type = "NoRouteError"


def candidates(via: str) -> list[str]:
    """``via`` as the proxy's base URL, then its parent paths (at most MAX_PARENTS)."""
    parts = urlsplit(via)
    segments = [s for s in parts.path.split("/") if s]
    root = f"{parts.scheme}://{parts.netloc}/"
    last = max(0, len(segments) - MAX_PARENTS)
    return [
        root + "".join(s + "/" for s in segments[:keep])
        for keep in range(len(segments), last - 1, -1)
    ]


def _health(answer: bytes) -> dict[str, Any] | None:
    """A proxyd's /healthz answer to a route question (it has ``route`` and ``upstreams``),
    or None for any other answer (a repository server's health, a page, an error)."""
    try:
        data = json.loads(answer)
    except ValueError:
        return None
    if not isinstance(data, dict) or "route" not in data:
        return None
    route, upstreams = data["route"], data.get("upstreams")
    if route is not None and not (isinstance(route, str) and route.startswith("/")):
        return None
    if not isinstance(upstreams, list):
        return None
    return data


def ask_route(via: str, source: str, timeout: float = 10.0) -> tuple[str, dict[str, Any]]:
    """The proxy's base URL and its answer to ``GET <base>/healthz?route=<source>``: ``via``
    itself, or a parent path of it when ``via`` is a route of the proxy (whose /healthz is
    the repository's, which has no ``route``)."""
    if not is_remote_uri(via) or not urlsplit(via).hostname:
        raise RepositoryConfigError(
            f"--via {via} is not an http(s) URL; give the caching proxy's base URL, "
            "e.g. http://proxy:8080/"
        )
    headers = {"User-Agent": USER_AGENT, "Accept": "application/json"}  # no credential

    def connected(connection: Any) -> None:
        connection.sock.settimeout(timeout)

    connections = KeptAlive(timeout, connected)
    try:
        for base in candidates(via):
            url = f"{base}{HEALTH}?route={quote(source, safe='')}"
            try:
                response, _ = connections.request("GET", url, headers)
                body = response.read()
            except NETWORK_ERRORS as exc:
                raise RemoteUnavailableError(f"cannot reach the proxy at {via}: {exc}") from exc
            if response.will_close:
                connections.forget(url)
            health = _health(body) if response.status == 200 else None
            if health is not None:
                return base, health
    finally:
        connections.close()
    raise RepositoryConfigError(
        f"the proxy at {via} cannot say which of its paths serves {source} "
        f"({via.rstrip('/')}/{HEALTH}?route=... has no answer: it is no proxyd, or an older "
        "one); give its URL for the repository as the source instead "
        "(mirror pull http://PROXY/NAME/ ...)"
    )


def via_route(via: str, source: str) -> str:
    """The URL to ask for ``source`` through the proxy at ``via``; a clear error when the
    source is no URL or no route of the proxy leads to it."""
    if not is_remote_uri(source):
        raise RepositoryConfigError(
            f"--via needs the source repository's URL, and {source} is a local path; "
            "pull from it without --via"
        )
    base, health = ask_route(via, source)
    route = health["route"]
    if isinstance(route, str):  # a path from the proxy's root (checked by _health)
        return base.rstrip("/") + route
    names = ", ".join(f"/{name}/" for name in health["upstreams"]) or "none"
    wanted = source.rstrip("/")
    raise NoRouteError(
        f"no route in proxy {base} serves {source}; configure one in the proxy "
        f'(`proxyd serve --upstream NAME={wanted}`, or NAME = "{wanted}" under [upstreams] '
        f"in its config file), or pull without --via. The proxy's routes: {names}"
    )
