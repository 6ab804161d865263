"""The repository HTTP API as its clients ask it, written once for both of them.

Two clients ask a repository server the same questions: the remote butler over aiohttp
(:class:`~butler.remote.client.RepositoryClient`) and a mirror's pull over one blocking
``http.client`` connection (:class:`mirror.source.HttpSource`, which avoids aiohttp's import
cost). What they ask is stated here: each request's path, every name in it quoted as the
server's routes read it, its parameters and body, the paging of long answers, and how an
answer is read; so are the request header fields and the errors for a server that cannot be
reached. :class:`RepositoryAPI` asks through a :class:`Transport`, as coroutines: the aiohttp
client awaits them, the blocking one never waits and runs them in place
(:func:`butler.blocking.run_in_place`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any, Protocol
from urllib.parse import quote, urlencode

from butler.errors import RemoteUnavailableError
from butler.refs import DatasetRef, DatasetType, FileInfo, split_component
from butler.remote.limits import Pages

API = "api/v1/"
DEFAULT_PAGE_SIZE = 1000
"""Rows per page from a server that does not say its largest page (an older one)."""

Params = Sequence[tuple[str, str]]


def name_segment(name: str) -> str:
    """A name (dataset type, dimension element) as one path segment: everything quoted."""
    return quote(name, safe="")


def collection_path(name: str) -> str:
    """The API path of collection ``name``. Its ``/`` stay (the server's route takes the rest
    of the path, and proxies may refuse or decode ``%2F``); ``?``, ``#``, ``%``, spaces are
    quoted."""
    return "collections/" + quote(name, safe="/")


def header_fields(user_agent: str, token: str | None) -> dict[str, str]:
    """The header fields every request of a client carries."""
    fields = {"User-Agent": user_agent}
    if token:
        fields["Authorization"] = f"Bearer {token}"
    return fields


def plain(values: Mapping[str, Any]) -> dict[str, Any]:
    """A JSON-ready copy of a data ID or bind values: numpy scalars become Python numbers."""
    return {
        k: (v.item() if hasattr(v, "item") and not isinstance(v, (str, bytes)) else v)
        for k, v in values.items()
    }


def plain_json(values: Mapping[str, Any]) -> str:
    return json.dumps(plain(values))


def dataset_query(
    dataset_type: str,
    collections: Sequence[str] | None,
    where: str = "",
    bind: Mapping[str, Any] | None = None,
    data_id: Mapping[str, Any] | None = None,
    *,
    find_first: bool = True,
) -> dict[str, Any]:
    """The body of a dataset query (``POST datasets/query``); ``collections=None``: all."""
    return {
        "dataset_type": dataset_type,
        "collections": None if collections is None else list(collections),
        "where": where,
        "bind": plain(bind or {}),
        "data_id": plain(data_id or {}),
        "find_first": find_first,
    }


def constraint_params(
    where: str, bind: Mapping[str, Any] | None, data_id: Mapping[str, Any]
) -> list[tuple[str, str]]:
    """The query parameters of a ``where`` expression, its bind values and a data ID."""
    return [("where", where), ("bind", plain_json(bind or {})), ("data_id", plain_json(data_id))]


MAX_QUERY_PARAMS = 4000
"""Characters of a query's parameters beyond which it is sent by POST: servers and proxies
limit request lines (aiohttp to 8190 bytes), and quoting can triple a where expression."""


def query_params(query: Mapping[str, Any]) -> list[tuple[str, str]] | None:
    """The GET parameters of a dataset query (:func:`dataset_query`), or None when only a
    POST body can say it: an empty list of collections (no parameter means all), or
    parameters too long for a URL."""
    collections = query.get("collections")
    if collections is not None and not collections:
        return None
    params = [("dataset_type", str(query["dataset_type"]))]
    params += [("collections", str(c)) for c in collections or ()]
    params += constraint_params(
        query.get("where", ""), query.get("bind"), query.get("data_id") or {}
    )
    params.append(("find_first", "true" if query.get("find_first", True) else "false"))
    if len(urlencode(params)) > MAX_QUERY_PARAMS:
        return None
    return params


def unreachable(base_url: str, exc: BaseException) -> RemoteUnavailableError:
    return RemoteUnavailableError(f"cannot reach the repository at {base_url}: {exc}")


def timed_out(base_url: str, method: str, url: str) -> RemoteUnavailableError:
    return RemoteUnavailableError(
        f"the repository at {base_url} did not answer in time ({method} {url})"
    )


class Transport(Protocol):
    """Sends a request under ``api/v1/`` and gives the JSON of its answer (an error answer
    raised as the server's own exception class)."""

    async def get_json(self, path: str, params: Params | None = None) -> Any: ...

    async def post_json(self, path: str, body: Any) -> Any: ...


class RepositoryAPI:
    """The questions both clients ask a repository server, over a :class:`Transport`."""

    def __init__(
        self, transport: Transport, base_url: str, page_size: int = DEFAULT_PAGE_SIZE
    ) -> None:
        self.transport = transport
        self.base_url = base_url
        self.page_size = page_size
        """Rows per page: the server's largest page, once :meth:`info` has read it (a page
        is a request, and the server runs the query again for each)."""

    async def info(self) -> dict[str, Any]:
        """The repository's info; it also says the server's largest page."""
        info: dict[str, Any] = await self.transport.get_json("")
        self.use_info(info)
        return info

    def use_info(self, info: Mapping[str, Any]) -> None:
        """Take the server's largest page from its info (when it says it)."""
        self.page_size = int(info.get("max_page_size") or self.page_size)

    async def dataset_type(self, name: str) -> DatasetType:
        parent, _ = split_component(name)
        answer = await self.transport.get_json("dataset-types/" + name_segment(parent))
        return DatasetType.from_dict(answer)

    async def dataset_types(self) -> list[DatasetType]:
        answer = await self.transport.get_json("dataset-types")
        return [DatasetType.from_dict(d) for d in answer["dataset_types"]]

    async def collections(self) -> list[dict[str, Any]]:
        return list((await self.transport.get_json("collections"))["collections"])

    async def collection(self, name: str) -> dict[str, Any]:
        """The record of collection ``name`` (type, children, runs); raises
        ``CollectionNotFoundError`` if there is none."""
        return dict(await self.transport.get_json(collection_path(name)))

    async def collection_chain(self, name: str) -> list[str]:
        return list((await self.collection(name))["children"])

    async def datasets(
        self, query: Mapping[str, Any], *, limit: int | None = None, offset: int = 0
    ) -> list[tuple[DatasetRef, FileInfo]]:
        """The datasets (with their file records) of a dataset query: ``dataset_type``,
        ``collections``, ``where``, ``bind``, ``data_id``, ``find_first``. Asked by GET, so a
        shared cache (a site proxy) can store the answer and revalidate it by the registry's
        change count; by POST when the query does not fit a URL (:func:`query_params`)."""
        params = query_params(query)
        if params is None:
            rows = await self.paged(
                "datasets/query", "datasets", body=query, limit=limit, offset=offset
            )
        else:
            rows = await self.paged(
                "datasets", "datasets", params=params, limit=limit, offset=offset
            )
        return [(DatasetRef.from_dict(r["ref"]), FileInfo.from_dict(r["file"])) for r in rows]

    async def dimension_records(
        self,
        element: str,
        where: str = "",
        bind: Mapping[str, Any] | None = None,
        data_id: Mapping[str, Any] | None = None,
        *,
        limit: int | None = None,
    ) -> list[dict[str, Any]]:
        path = f"dimensions/{name_segment(element)}/records"
        params = constraint_params(where, bind, data_id or {})
        return await self.paged(path, "records", params=params, limit=limit)

    async def paged(
        self,
        path: str,
        key: str,
        *,
        params: Params = (),
        body: Mapping[str, Any] | None = None,
        limit: int | None = None,
        offset: int = 0,
    ) -> list[Any]:
        """Every row (up to ``limit``) of a paged answer: a POST of ``body``, else a GET
        with ``params``; the pages are checked to end properly (:class:`Pages`)."""
        rows: list[Any] = []
        pages = Pages(self.base_url + API + path, offset)
        while True:
            size = self.page_size if limit is None else min(self.page_size, limit - len(rows))
            if body is not None:
                paged = {**body, "limit": size, "offset": pages.offset}
                page = await self.transport.post_json(path, paged)
            else:
                paging = [("limit", str(size)), ("offset", str(pages.offset))]
                page = await self.transport.get_json(path, [*params, *paging])
            new = pages.rows_of(page, key)
            rows.extend(new)
            if (limit is not None and len(rows) >= limit) or not pages.follow(page, new, size):
                return rows
