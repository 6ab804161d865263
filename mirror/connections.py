"""Kept-alive ``http.client`` connections, for the mirror's blocking HTTP clients: the
download threads (:mod:`mirror.http`) and the questions to a source (:mod:`mirror.source`).

One :class:`KeptAlive` belongs to one thread and holds a connection per server. A request
on a kept-alive connection that the server closed meanwhile fails at once; it is sent again
on a new connection, without waiting, as browsers and libcurl do.
"""

from __future__ import annotations

import functools
import http.client
import ssl
from collections.abc import Callable, Mapping
from urllib.parse import urlsplit

USER_AGENT = "butler-mirror/1"
REDIRECT_STATUSES = {301, 302, 303, 307, 308}
MAX_REDIRECTS = 10
NETWORK_ERRORS = (OSError, http.client.HTTPException)
"""What a connection raises when the network or the server fails it mid-exchange."""
CREDENTIALS = frozenset({"authorization", "proxy-authorization", "cookie"})
"""Header fields (lower case) that are sent to the origin they were given for, and no other."""
DEFAULT_PORTS = {"http": 80, "https": 443}


class UnsupportedURLError(ValueError):
    """A URL that is not http(s) (a redirect may lead to one)."""


@functools.cache
def _tls() -> ssl.SSLContext:
    # Built once, on the first https connection: it loads the system's certificates.
    return ssl.create_default_context()


def origin(url: str) -> tuple[str, str, int | None]:
    """A URL's origin: scheme, host and port (the scheme's default port if none is given)."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    try:
        port = parts.port
    except ValueError:  # not a port: an origin of its own, equal to no other
        return scheme, parts.netloc.lower(), -1
    return scheme, (parts.hostname or "").lower(), port or DEFAULT_PORTS.get(scheme)


def redirected_headers(url: str, target: str, headers: Mapping[str, str]) -> dict[str, str]:
    """The header fields for a redirect from ``url`` to ``target``.

    Credentials (the bearer token, cookies) go on only to the same origin, as browsers (the
    Fetch standard) and curl do: a server must not be able to hand a client's token to
    another host, port or scheme by redirecting it there (an https -> http downgrade is
    another origin too, and would send the token in clear). Once dropped they stay dropped,
    on every later redirect of the same request.
    """
    if origin(url) == origin(target):
        return dict(headers)
    return {name: value for name, value in headers.items() if name.lower() not in CREDENTIALS}


class KeptAlive:
    """One thread's kept-alive connections, one per server (scheme, host and port).

    ``connected`` is called with each new connection once it is connected, to set its
    timeouts (or refuse it, by raising); ``closed`` with each connection closed here.
    """

    def __init__(
        self,
        connect_timeout: float,
        connected: Callable[[http.client.HTTPConnection], None],
        closed: Callable[[http.client.HTTPConnection], None] = lambda _: None,
    ) -> None:
        self._connect_timeout = connect_timeout
        self._connected = connected
        self._closed = closed
        self._by_server: dict[tuple[str, str], http.client.HTTPConnection] = {}

    def request(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str],
        body: bytes | None = None,
    ) -> tuple[http.client.HTTPResponse, http.client.HTTPConnection]:
        """Send a request (a read, whatever its method) and read its answer's head.

        Raises what the connection raises (:data:`NETWORK_ERRORS`) once a new connection
        failed too, and :class:`UnsupportedURLError`.
        """
        parts = urlsplit(url)
        target = parts.path + (f"?{parts.query}" if parts.query else "")
        while True:
            connection, reused = self.connection(url)
            try:
                connection.request(method, target, body=body, headers=dict(headers))
                return connection.getresponse(), connection
            except NETWORK_ERRORS:
                self.forget(url)
                if not reused:
                    raise

    def connection(self, url: str) -> tuple[http.client.HTTPConnection, bool]:
        """The connection to ``url``'s server, and whether it was open already."""
        parts = urlsplit(url)
        key = (parts.scheme, parts.netloc)
        connection = self._by_server.get(key)
        if connection is not None and connection.sock is not None:
            return connection, True
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise UnsupportedURLError(f"{url}: only http and https URLs can be fetched")
        if connection is None:
            if parts.scheme == "https":
                connection = http.client.HTTPSConnection(
                    parts.hostname, parts.port, timeout=self._connect_timeout, context=_tls()
                )
            else:
                connection = http.client.HTTPConnection(
                    parts.hostname, parts.port, timeout=self._connect_timeout
                )
            self._by_server[key] = connection
        try:
            connection.connect()
            self._connected(connection)
        except BaseException:
            self.forget(url)
            raise
        return connection, False

    def forget(self, url: str) -> None:
        """Close the connection to ``url``'s server, whose state is unknown; the next
        request opens a new one."""
        parts = urlsplit(url)
        connection = self._by_server.pop((parts.scheme, parts.netloc), None)
        if connection is not None:
            connection.close()
            self._closed(connection)

    def close(self) -> None:
        for connection in self._by_server.values():
            connection.close()
            self._closed(connection)
        self._by_server.clear()
