"""The source of a pull: a local repository, or a server (or a proxy of one) over HTTP.

A pull asks its source a handful of questions before the files: the repository's info (its
dimension universe), the query, then the dimension records and collections the datasets
need. A local source is a :class:`~butler.direct_butler.DirectButler`. A server is asked
with :class:`HttpSource`, over one blocking keep-alive ``http.client`` connection, like the
files (:mod:`mirror.http`).

The questions are the remote butler's own: :class:`~butler.remote.api.RepositoryAPI` states
each request (paths with names quoted the same way, parameters, paging, reading the answers,
the header fields, the errors for a server out of reach) for both clients; this class is
only its transport. Why not the remote butler's aiohttp transport: it costs a process
~0.2-0.3 s to import on the bench machine (0.1 s of it for the two TLS contexts aiohttp
builds at import, even for ``http://``), which was a fifth of a pull's start, for a few
questions a pull asks in turn.
"""

from __future__ import annotations

import http.client
import json
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeAlias
from urllib.parse import urlencode, urljoin, urlsplit

from butler.blocking import run_in_place
from butler.errors import RemoteUnavailableError, RepositoryConfigError
from butler.http.errors import raise_for_error
from butler.refs import DatasetRef, FileInfo
from butler.remote import limits
from butler.remote.api import (
    API,
    Params,
    RepositoryAPI,
    dataset_query,
    header_fields,
    timed_out,
    unreachable,
)
from butler.universe import DimensionUniverse
from mirror.connections import (
    MAX_REDIRECTS,
    NETWORK_ERRORS,
    REDIRECT_STATUSES,
    USER_AGENT,
    KeptAlive,
    UnsupportedURLError,
    redirected_headers,
)

if TYPE_CHECKING:
    from butler.direct_butler import DirectButler
    from mirror.daf_source import DafSource

Source: TypeAlias = "DirectButler | HttpSource | DafSource"
"""What a pull asks its questions of: a local repository (this butler's or the LSST
butler's, :mod:`mirror.daf_source`), or a server over HTTP."""


class HttpSource:
    """A repository server (or a proxy of one), asked over one blocking connection."""

    def __init__(
        self,
        url: str,
        token: str | None = None,
        *,
        connect_timeout: float = 10.0,
        read_timeout: float = 300.0,
    ) -> None:
        self.url = url.rstrip("/") + "/"
        parts = urlsplit(self.url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise RepositoryConfigError(f"source {url} is not an http(s) URL")
        self._headers = {**header_fields(USER_AGENT, token), "Accept": "application/json"}

        def connected(connection: http.client.HTTPConnection) -> None:
            assert connection.sock is not None
            connection.sock.settimeout(read_timeout)

        self._connections = KeptAlive(connect_timeout, connected)
        self._api = RepositoryAPI(self, self.url)
        try:
            # Asked directly: the answer's header fields say whether a cache is in between.
            info, headers = self._answer("GET", "")
            self._universe = DimensionUniverse(info["universe"], source=self.url)
        except BaseException:
            self.close()
            raise
        self.info: dict[str, Any] = info
        self._api.use_info(info)
        self.cache_in_between = bool(headers.get("Via") or headers.get("X-Cache"))
        """Whether a cache answered for the server: it marked its answer with ``Via``
        (RFC 9110 §7.6.3) or ``X-Cache`` (proxyd, and many others)."""

    @property
    def bundle_files(self) -> int:
        """Small files to ask for per request (``POST files/bundle``), 0 for one GET each:
        what the server's info offers, unless a cache is in between, which a bundle would
        pass by (one GET per file is what it keeps)."""
        offered = self.info.get("max_bundle_files")
        if self.cache_in_between or not isinstance(offered, int) or offered < 2:
            return 0
        return offered

    @property
    def universe(self) -> DimensionUniverse:
        return self._universe

    def close(self) -> None:
        self._connections.close()

    # -- the questions (butler.remote.api, asked in place: nothing here waits) -------------

    def query_datasets_with_files(
        self,
        dataset_type: str,
        collections: Sequence[str] | None = None,
        where: str = "",
        bind: Mapping[str, Any] | None = None,
        *,
        find_first: bool = True,
    ) -> list[tuple[DatasetRef, FileInfo]]:
        query = dataset_query(dataset_type, collections or None, where, bind, find_first=find_first)
        return run_in_place(self._api.datasets(query))

    def query_dimension_records(
        self,
        element: str,
        where: str = "",
        bind: Mapping[str, Any] | None = None,
        **data_id: Any,
    ) -> list[dict[str, Any]]:
        return run_in_place(self._api.dimension_records(element, where, bind, data_id))

    def query_collections(self) -> list[dict[str, Any]]:
        return run_in_place(self._api.collections())

    def get_collection_chain(self, name: str) -> list[str]:
        return run_in_place(self._api.collection_chain(name))

    # -- the transport of the questions --------------------------------------------------------

    async def get_json(self, path: str, params: Params | None = None) -> Any:
        return self._answer("GET", path, params or ())[0]

    async def post_json(self, path: str, body: Any) -> Any:
        return self._answer("POST", path, body=body)[0]

    def _answer(
        self,
        method: str,
        path: str,
        params: Sequence[tuple[str, str]] = (),
        body: Any = None,
    ) -> tuple[Any, http.client.HTTPMessage]:
        """The JSON of an answer, and the answer's header fields."""
        url = self.url + API + path + (f"?{urlencode(params)}" if params else "")
        data = None if body is None else json.dumps(body).encode()
        headers = dict(self._headers)
        if data is not None:
            headers["Content-Type"] = "application/json"
        for _ in range(MAX_REDIRECTS + 1):
            status, fields, payload = self._exchange(method, url, headers, data)
            location = fields.get("Location")
            if status in REDIRECT_STATUSES and location:
                target = urljoin(url, location)
                headers = redirected_headers(url, target, headers)
                url = target
                if status == 303:
                    method, data = "GET", None
                    headers.pop("Content-Type", None)
                continue
            if status >= 400:
                raise_for_error(status, payload, url)
            try:
                return json.loads(payload), fields
            except ValueError as exc:
                raise RemoteUnavailableError(
                    f"{url} answered {status} with no JSON; is {self.url} a butler server?"
                ) from exc
        raise RemoteUnavailableError(f"{url}: more than {MAX_REDIRECTS} redirects")

    def _exchange(
        self, method: str, url: str, headers: Mapping[str, str], data: bytes | None
    ) -> tuple[int, http.client.HTTPMessage, bytes]:
        """One request and its whole answer: status, header fields and body."""
        try:
            response, _ = self._connections.request(method, url, headers, data)
            declared = response.length  # None when not declared (chunked, or to the close)
            if declared is not None and declared > limits.MAX_ANSWER_BYTES:
                payload = None
            else:
                payload = response.read(limits.MAX_ANSWER_BYTES + 1)
        except UnsupportedURLError:
            raise RemoteUnavailableError(f"{self.url} redirected to {url}") from None
        except TimeoutError as exc:
            self._connections.forget(url)
            raise timed_out(self.url, method, url) from exc
        except NETWORK_ERRORS as exc:
            self._connections.forget(url)
            raise unreachable(self.url, exc) from exc
        if payload is None or len(payload) > limits.MAX_ANSWER_BYTES:
            self._connections.forget(url)  # the rest of the answer is still on its way
            raise limits.answer_too_large(url)
        if response.will_close:
            self._connections.forget(url)
        return response.status, response.headers, payload
