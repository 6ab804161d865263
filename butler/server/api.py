"""Handlers of the repository HTTP API (``/api/v1/...``) and of dataset files (``/files/...``).

Handlers are thin: they parse parameters, run one repository call in a worker thread (see
:mod:`butler.server.pool`) and shape JSON. Semantics (queries, find-first, errors) are the
local butler's own, so a remote butler behaves exactly like a local one.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import mimetypes
import time
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path, PurePosixPath
from typing import Any, TypeVar

from aiohttp import web

from butler.direct_butler import DirectButler
from butler.errors import BadRequestError, DatasetNotFoundError, RequestTimeoutError
from butler.http.bundle import MAX_FILES as MAX_BUNDLE_FILES
from butler.http.bundle import BundleEntry
from butler.http.bundle import parse_request as parse_bundle_request
from butler.http.conditional import evaluate_preconditions
from butler.refs import DatasetRef, FileInfo, split_component
from butler.server import validation
from butler.server.collection_access import (
    COLLECTION_RULE,
    EVERYTHING,
    CollectionNotPermittedError,
    CollectionRule,
    check_operations,
)
from butler.server.files import (
    OpenedFile,
    close_bundle,
    open_in_thread,
    open_regular_file,
    send_bundle,
    send_file,
)
from butler.server.pool import RepositoryPool
from butler.server.settings import ServerSettings
from butler.server.transactions import TransactionManager, UploadWriter, apply_operations

T = TypeVar("T")
API = "/api/v1"
TRANSACTION_HEADER = "X-Butler-Transaction"
API_VERSION = "1.0"

SETTINGS: web.AppKey[ServerSettings] = web.AppKey("settings", ServerSettings)
POOL: web.AppKey[RepositoryPool] = web.AppKey("pool", RepositoryPool)
TRANSACTIONS: web.AppKey[TransactionManager] = web.AppKey("transactions", TransactionManager)
REPO_ROOT: web.AppKey[Path] = web.AppKey("repo_root", Path)
"""The repository's resolved path, which every served file must lie under."""

_CONTENT_TYPES = {
    ".fits": "application/fits",
    ".parq": "application/vnd.apache.parquet",
    ".parquet": "application/vnd.apache.parquet",
    ".json": "application/json",
    ".yaml": "application/yaml",
    ".npy": "application/x-npy",
}


# -- parameters -------------------------------------------------------------------------


def _json_param(request: web.Request, name: str) -> dict[str, Any]:
    """A JSON-object parameter (``bind``, ``data_id``) whose values are checked."""
    raw = request.query.get(name)
    if not raw:
        return {}
    value = validation.parse_json(raw, f"parameter {name!r}")
    if not isinstance(value, dict):
        raise BadRequestError(f"parameter {name!r} must be a JSON object")
    check = validation.bind_value if name == "bind" else validation.scalar
    return validation.mapping(value, name, check)


def _int_param(
    request: web.Request, name: str, default: int | None, maximum: int | None = None
) -> int | None:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise BadRequestError(f"parameter {name!r} must be an integer, got {raw!r}") from None
    if value < 0:
        raise BadRequestError(f"parameter {name!r} must not be negative")
    maximum = validation.MAX_INT if maximum is None else maximum
    if value > maximum:
        raise BadRequestError(f"parameter {name!r} is at most {maximum}")
    return value


def _bool_param(request: web.Request, name: str, default: bool) -> bool:
    raw = request.query.get(name)
    if raw is None:
        return default
    if raw.lower() in ("1", "true", "yes"):
        return True
    if raw.lower() in ("0", "false", "no"):
        return False
    raise BadRequestError(f"parameter {name!r} must be true or false, got {raw!r}")


def _collections(request: web.Request) -> list[str] | None:
    values = request.query.getall("collections", [])
    return list(values) if values else None


def _page(request: web.Request) -> tuple[int, int]:
    settings = request.app[SETTINGS]
    limit = _int_param(request, "limit", settings.page_size, settings.max_page_size)
    offset = _int_param(request, "offset", 0)
    assert limit is not None
    assert offset is not None
    return limit, offset


# -- responses --------------------------------------------------------------------------


def json_response(request: web.Request, data: Any, *, cacheable: bool = True) -> web.Response:
    """JSON with a validator, revalidated on every use, and 304 on If-None-Match.

    The ETag is the registry's change count (:func:`read`) and a digest of the body: a
    cache asks each time (``no-cache``) and gets a 304 without a body while nothing was
    committed, so an answer never outlives a write while this server answers; a shared
    cache may store it (``public``, which also covers answers to requests that carried a
    token, RFC 9111 §3.5) and serve it for ``stale-if-error`` seconds if the server is down.
    """
    body = json.dumps(data, separators=(",", ":"), default=str).encode()
    headers = {"Content-Type": "application/json"}
    if cacheable and request.method in ("GET", "HEAD"):
        settings = request.app[SETTINGS]
        digest = hashlib.sha256(body).hexdigest()[:32]
        version = request.get(_VERSION)
        etag = f'"{digest}"' if version is None else f'"{version}-{digest}"'
        headers["ETag"] = etag
        headers["Cache-Control"] = revalidated_cache_control(settings)
        status = evaluate_preconditions(request.method, request.headers, etag, None)
        if status is not None:
            return web.Response(
                status=status, headers={k: v for k, v in headers.items() if k != "Content-Type"}
            )
    else:
        headers["Cache-Control"] = "no-store"
    return web.Response(body=body, headers=headers)


_VERSION = "registry_change_count"
"""Request key: the registry's change count read with the request's answer."""


async def read(request: web.Request, work: Callable[[DirectButler], T]) -> T:
    """``work`` on a read connection, the registry's change count read first (for the
    ETag): a write committed between the two makes the body, hence the digest, differ."""

    def counted(butler: DirectButler) -> tuple[int, T]:
        return butler.registry.change_count(), work(butler)

    count, data = await request.app[POOL].read(counted)
    request[_VERSION] = count
    return data


def revalidated_cache_control(settings: ServerSettings) -> str:
    """Stored by any cache, reused only once this server confirmed it (or, for
    ``stale_if_error`` seconds, while it is down: 0 leaves that out, for shared caches that
    would serve stale answers without checking the client's token)."""
    if settings.stale_if_error == 0:
        return "public, no-cache"
    return f"public, no-cache, stale-if-error={settings.stale_if_error}"


def file_cache_control(settings: ServerSettings) -> str:
    """``Cache-Control`` of a dataset file.

    A public repository's files are the same for everyone and never change (a UUID names
    the same bytes): any cache keeps them a year. A private one's (``--read-access token``)
    are ``public, no-cache``: ``public`` lets a shared cache store an answer to a request
    that carried Authorization (RFC 9111 §3.5), and ``no-cache`` (§5.2.2.4) makes it ask
    this server before each reuse, with the asking client's own credential (a conditional
    request answered 304 with no body when that token may read, 401/403 when not). Any
    standard shared cache thus shares a private repository's files between the users this
    server authorises and no one else; ``private`` would keep it from sharing them at all.
    """
    if settings.read_access == "token":
        return revalidated_cache_control(settings)
    return f"public, max-age={settings.file_max_age}, immutable"


def _rule(request: web.Request) -> CollectionRule:
    rule = request.get(COLLECTION_RULE, EVERYTHING)
    assert isinstance(rule, CollectionRule)
    return rule


def _dataset_json(ref: DatasetRef, file: Any) -> dict[str, Any]:
    return {"ref": ref.to_dict(), "file": file.to_dict()}


# -- read handlers ----------------------------------------------------------------------


async def repo_info(request: web.Request) -> web.Response:
    settings = request.app[SETTINGS]

    def work(butler: DirectButler) -> dict[str, Any]:
        info = butler.info()
        for local in ("root", "registry"):  # where the server keeps things: not the client's
            info.pop(local, None)
        return {
            **info,
            "api_version": API_VERSION,
            "read_only": settings.read_only,
            "read_access": settings.read_access,
            "max_ranges": settings.max_ranges,
            "max_page_size": settings.max_page_size,
            "max_bundle_files": MAX_BUNDLE_FILES,
            "universe": butler.universe.config,
        }

    return json_response(request, await read(request, work))


async def universe(request: web.Request) -> web.Response:
    data = await read(request, lambda b: b.universe.config)
    return json_response(request, data)


async def list_dataset_types(request: web.Request) -> web.Response:
    types = await read(request, lambda b: [t.to_dict() for t in b.dataset_types()])
    return json_response(request, {"dataset_types": types})


async def get_dataset_type(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    data = await read(request, lambda b: b.get_dataset_type(name).to_dict())
    return json_response(request, data)


async def list_collections(request: web.Request) -> web.Response:
    rule = _rule(request)
    rows = await read(request, lambda b: rule.visible_collections(b, b.query_collections()))
    return json_response(request, {"collections": rows})


async def get_collection(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    rule = _rule(request)

    def work(butler: DirectButler) -> dict[str, Any]:
        if not rule.matches(name):
            raise rule.refusal(name)  # before the lookup: no 404 telling what exists
        kind = butler.registry.collection_type(name)
        if not rule.readable(butler, name):
            raise rule.refusal(name)
        return {
            "name": name,
            "type": kind,
            "children": butler.get_collection_chain(name) if kind == "CHAINED" else [],
            "runs": butler.registry.flatten([name]),
        }

    return json_response(request, await read(request, work))


async def dimension_records(request: web.Request) -> web.Response:
    element = request.match_info["element"]
    where = request.query.get("where", "")
    bind = _json_param(request, "bind")
    data_id = _json_param(request, "data_id")
    limit, offset = _page(request)

    def work(butler: DirectButler) -> list[dict[str, Any]]:
        return butler.registry.query_dimension_records(
            element, where, bind, data_id, limit=limit + 1, offset=offset
        )

    rows = await read(request, work)
    return json_response(request, _paged("records", rows, limit, offset))


async def dimension_values(request: web.Request) -> web.Response:
    """Distinct values of one dimension under constraints (what completion offers)."""
    element = request.match_info["element"]
    where = request.query.get("where", "")
    bind = _json_param(request, "bind")
    data_id = _json_param(request, "data_id")
    prefix = request.query.get("prefix", "")
    dataset_type = request.query.get("dataset_type") or None
    collections = _collections(request)
    limit, _ = _page(request)

    rule = _rule(request)

    def work(butler: DirectButler) -> list[Any]:
        searched = rule.searched(butler, collections) if dataset_type else collections
        if searched == []:
            return []  # the token reads no collection (an empty list would mean all)
        values = butler.query_dimension_values(
            element, where, bind, dataset_type=dataset_type, collections=searched, **data_id
        )
        return [v for v in values if str(v).startswith(prefix)][:limit]

    values = await read(request, work)
    return json_response(request, {"element": element, "values": values})


async def datasets_summary(request: web.Request) -> web.Response:
    """Count and total bytes of a dataset query, without listing the datasets."""
    dataset_type = request.query.get("dataset_type")
    if not dataset_type:
        raise BadRequestError("parameter 'dataset_type' is required")
    collections = _collections(request)
    where = request.query.get("where", "")
    bind = _json_param(request, "bind")
    data_id = _json_param(request, "data_id")
    find_first = _bool_param(request, "find_first", True)

    rule = _rule(request)

    def work(butler: DirectButler) -> dict[str, Any]:
        searched = rule.searched(butler, collections)
        if searched == []:
            return {"dataset_type": dataset_type, "count": 0, "size": 0}
        summary = butler.query_summary(
            dataset_type, searched, where, bind, find_first=find_first, **data_id
        )
        return {"dataset_type": dataset_type, "count": summary.count, "size": summary.size}

    return json_response(request, await read(request, work))


_QUERY_FIELDS = {
    "dataset_type",
    "collections",
    "where",
    "bind",
    "data_id",
    "find_first",
    "limit",
    "offset",
}


def _query_body(body: dict[str, Any], settings: ServerSettings) -> tuple[dict[str, Any], int, int]:
    """The checked parameters, limit and offset of a ``POST datasets/query`` body."""
    validation.only_keys(body, _QUERY_FIELDS, "the query")
    params = {
        "dataset_type": validation.string(body.get("dataset_type"), "dataset_type", empty=False),
        "collections": validation.collections(body.get("collections")),
        "where": validation.string(body.get("where"), "where", required=False),
        "bind": validation.mapping(body.get("bind"), "bind", validation.bind_value),
        "data_id": validation.mapping(body.get("data_id"), "data_id"),
        "find_first": validation.boolean(body.get("find_first"), "find_first", True),
    }
    limit = validation.integer(
        body.get("limit"), "limit", settings.page_size, settings.max_page_size
    )
    offset = validation.integer(body.get("offset"), "offset", 0)
    return params, limit, offset


def _paged(key: str, rows: list[Any], limit: int, offset: int) -> dict[str, Any]:
    more = len(rows) > limit
    return {key: rows[:limit], "next_offset": offset + limit if more else None}


async def query_datasets(request: web.Request) -> web.Response:
    if request.method == "POST":
        params, limit, offset = _query_body(await _json_body(request), request.app[SETTINGS])
    else:
        params = {
            "dataset_type": request.query.get("dataset_type"),
            "collections": _collections(request),
            "where": request.query.get("where", ""),
            "bind": _json_param(request, "bind"),
            "data_id": _json_param(request, "data_id"),
            "find_first": _bool_param(request, "find_first", True),
        }
        limit, offset = _page(request)
    if not params["dataset_type"]:
        raise BadRequestError("parameter 'dataset_type' is required")

    rule = _rule(request)

    def work(butler: DirectButler) -> list[dict[str, Any]]:
        searched = rule.searched(butler, params["collections"])
        if searched == []:
            return []
        rows = butler.query_datasets_with_files(
            params["dataset_type"],
            searched,
            params["where"],
            params["bind"],
            find_first=params["find_first"],
            limit=limit + 1,
            offset=offset,
            **params["data_id"],
        )
        return [_dataset_json(ref, file) for ref, file in rows]

    rows = await read(request, work)
    # A POST query is a read too: its answer may be cached by the client, not by proxies.
    return json_response(request, _paged("datasets", rows, limit, offset))


async def get_dataset(request: web.Request) -> web.Response:
    try:
        dataset_id = uuid.UUID(request.match_info["id"])
    except ValueError:
        raise BadRequestError(f"{request.match_info['id']!r} is not a dataset UUID") from None

    rule = _rule(request)

    def work(butler: DirectButler) -> dict[str, Any]:
        found = butler.registry.get_dataset(dataset_id)
        if found is None:
            raise DatasetNotFoundError(f"no dataset with id {dataset_id} in this repository")
        rule.check_run(found[0].run)
        return _dataset_json(*found)

    return json_response(request, await read(request, work))


async def find_dataset(request: web.Request) -> web.Response:
    dataset_type = request.query.get("dataset_type")
    if not dataset_type:
        raise BadRequestError("parameter 'dataset_type' is required")
    parent, _ = split_component(dataset_type)
    data_id = _json_param(request, "data_id")
    collections = _collections(request)

    rule = _rule(request)

    def work(butler: DirectButler) -> dict[str, Any]:
        searched = rule.searched(butler, collections)
        if searched == []:
            raise DatasetNotFoundError(f"no {parent} dataset in the collections this token reads")
        ref, file = butler.resolve(parent, data_id, collections=searched)
        return _dataset_json(ref, file)

    return json_response(request, await read(request, work))


async def query_data_ids(request: web.Request) -> web.Response:
    dimensions = request.query.getall("dimensions", [])
    if not dimensions:
        raise BadRequestError("parameter 'dimensions' is required (repeat it for several)")
    where = request.query.get("where", "")
    bind = _json_param(request, "bind")
    data_id = _json_param(request, "data_id")
    dataset_type = request.query.get("dataset_type") or None
    collections = _collections(request)
    limit, offset = _page(request)

    rule = _rule(request)

    def work(butler: DirectButler) -> list[dict[str, Any]]:
        searched = rule.searched(butler, collections) if dataset_type else collections
        if searched == []:
            return []
        ids = butler.query_data_ids(
            dimensions,
            where,
            bind,
            dataset_type=dataset_type,
            collections=searched,
            limit=limit + 1,
            offset=offset,
            **data_id,
        )
        return [i.to_dict() for i in ids]

    rows = await read(request, work)
    return json_response(request, _paged("data_ids", rows, limit, offset))


async def serve_dataset_file(request: web.Request) -> web.StreamResponse:
    settings = request.app[SETTINGS]
    relative = request.match_info["path"]
    repo = request.app[REPO_ROOT]
    rule = _rule(request)
    # One thread hop per request for the lookup, the path check and the open: each hop
    # costs the loop a wake-up and GIL hand-offs, a good part of a small file's cost.
    found = await open_in_thread(
        request.app[POOL].read(lambda b: _locate_and_open(b, repo, relative, rule)), _close_found
    )
    if found is None:
        raise web.HTTPNotFound(text=_no_dataset_file(relative) + "\n")
    file, opened = found
    if opened is None:
        raise web.HTTPNotFound(text=_missing_file(file) + "\n")
    suffix = PurePosixPath(file.path).suffix
    content_type = _CONTENT_TYPES.get(suffix) or (
        mimetypes.guess_type(file.path)[0] or "application/octet-stream"
    )
    return await send_file(
        request,
        opened,
        etag=file.etag,
        last_modified=opened.mtime,
        content_type=content_type,
        cache_control=file_cache_control(settings),
        max_ranges=settings.max_ranges,
        extra_headers={"X-Dataset-Id": str(file.dataset_id), "X-Request-ID": request["request_id"]},
    )


async def serve_file_bundle(request: web.Request) -> web.StreamResponse:
    """Many dataset files in one answer (see :mod:`butler.http.bundle`)."""
    try:
        paths = parse_bundle_request(await _json_body(request))
    except ValueError as exc:
        raise BadRequestError(str(exc)) from None
    repo = request.app[REPO_ROOT]
    rule = _rule(request)

    def open_all(butler: DirectButler) -> list[tuple[BundleEntry, OpenedFile | None]]:
        entries: list[tuple[BundleEntry, OpenedFile | None]] = []
        try:
            for path in paths:
                try:
                    found = _locate_and_open(butler, repo, path, rule)
                except CollectionNotPermittedError as exc:
                    entries.append((BundleEntry(path, error=str(exc)), None))
                    continue
                if found is None:
                    entries.append((BundleEntry(path, error=_no_dataset_file(path)), None))
                elif found[1] is None:
                    entries.append((BundleEntry(path, error=_missing_file(found[0])), None))
                else:
                    entries.append((BundleEntry(path, found[1].size), found[1]))
        except BaseException:
            close_bundle(entries)
            raise
        return entries

    entries = await open_in_thread(request.app[POOL].read(open_all), close_bundle)
    return await send_bundle(request, entries)


def _locate_and_open(
    butler: DirectButler, repo: Path, relative: str, rule: CollectionRule
) -> tuple[FileInfo, OpenedFile | None] | None:
    """(Blocking.) The registered file at ``relative`` and the file opened (None: missing on
    disk); None if no dataset has that path or it resolves outside the repository.

    Paths from the network never leave the repository: only registered file paths are
    served, and those never contain "..", absolute parts or backslashes.
    """
    parts = PurePosixPath(relative).parts
    if not parts or any(p in ("..", ".") or "\\" in p or p.startswith("/") for p in parts):
        return None
    file = butler.registry.file_by_path("/".join(parts))
    if file is None:
        return None
    if not rule.unrestricted:
        # Before opening: a token limited to collections gets a 403 for another's file.
        found = butler.registry.get_dataset(file.dataset_id)
        if found is None:
            return None
        rule.check_run(found[0].run)
    path = (repo / file.path).resolve()
    if not path.is_relative_to(repo):  # a symlink or an external file: never served
        return None
    return file, open_regular_file(path)


def _close_found(found: tuple[FileInfo, OpenedFile | None] | None) -> None:
    OpenedFile.close_all([found[1] if found else None])


def _no_dataset_file(path: str) -> str:
    return f"no dataset file at {path}"


def _missing_file(file: FileInfo) -> str:
    return f"the file of dataset {file.dataset_id} is missing from the repository"


# -- write handlers ---------------------------------------------------------------------


async def _json_body(request: web.Request) -> dict[str, Any]:
    """The request's JSON object (size capped by ``client_max_size``, depth checked)."""
    try:
        async with asyncio.timeout(request.app[SETTINGS].body_timeout):
            raw = await request.read()
    except TimeoutError:
        raise RequestTimeoutError(
            f"the request body did not arrive within {request.app[SETTINGS].body_timeout} s"
        ) from None
    body = validation.parse_json(raw, "the request body")
    if not isinstance(body, dict):
        raise BadRequestError("the request body must be a JSON object")
    return body


def _operations(body: Mapping[str, Any]) -> list[dict[str, Any]]:
    return validation.operations(body)


async def apply_direct_operations(request: web.Request) -> web.Response:
    """Registrations and removals without uploads, committed atomically."""
    operations = _operations(await _json_body(request))
    pool = request.app[POOL]
    rule = _rule(request)

    def work(butler: DirectButler) -> list[dict[str, Any]]:
        check_operations(rule, butler, operations)
        return apply_operations(butler, pool.write_lock, operations, None)

    results = await pool.write(work)
    return json_response(request, {"results": results}, cacheable=False)


async def begin_transaction(request: web.Request) -> web.Response:
    pool = request.app[POOL]
    await pool.write(lambda b: None)  # refuse early on a read-only server
    txn = request.app[TRANSACTIONS].begin(request["principal"])
    response = json_response(request, {"id": txn.id, "expires": txn.expires}, cacheable=False)
    # Its staged uploads stay on this server: a load balancer in front of replicas keeps
    # the transaction's later requests here by this id (config/haproxy/butler-replicas.cfg).
    response.headers[TRANSACTION_HEADER] = txn.id
    return response


async def upload_file(request: web.Request) -> web.Response:
    settings = request.app[SETTINGS]
    txn = request.app[TRANSACTIONS].get(request.match_info["txn"], request["principal"])
    upload_id = request.match_info["upload"]
    path = txn.upload_path(upload_id)
    pool = request.app[POOL]
    writer = await pool.blocking(lambda: UploadWriter(path, settings.max_upload_bytes))
    try:
        while chunk := await _next_chunk(request, settings.body_timeout):
            await pool.blocking(lambda c=chunk: writer.write(c))  # type: ignore[misc]
        checksum = await pool.blocking(lambda: writer.finish(request.headers.get("X-Checksum")))
    except BaseException:
        await pool.blocking(writer.abort)
        raise
    return json_response(
        request, {"id": upload_id, "size": writer.size, "checksum": checksum}, cacheable=False
    )


async def _next_chunk(request: web.Request, stall: float) -> bytes:
    """The next part of an upload (b"" at its end); 408 if it stalls for ``stall`` s."""
    try:
        async with asyncio.timeout(stall):
            return await request.content.read(1 << 20)
    except TimeoutError:
        raise RequestTimeoutError(f"the upload stalled: no bytes for {stall} s; retry it") from None


async def commit_transaction(request: web.Request) -> web.Response:
    manager = request.app[TRANSACTIONS]
    txn = manager.get(request.match_info["txn"], request["principal"])
    operations = _operations(await _json_body(request))
    pool = request.app[POOL]
    try:
        rule = _rule(request)

        def work(butler: DirectButler) -> list[dict[str, Any]]:
            check_operations(rule, butler, operations)
            return apply_operations(butler, pool.write_lock, operations, txn)

        results = await pool.write(work)
    finally:
        await pool.blocking(lambda: manager.finish(txn))
    return json_response(request, {"results": results}, cacheable=False)


async def abort_transaction(request: web.Request) -> web.Response:
    manager = request.app[TRANSACTIONS]
    txn = manager.get(request.match_info["txn"], request["principal"])
    await request.app[POOL].blocking(lambda: manager.finish(txn))
    return web.Response(status=204, headers={"Cache-Control": "no-store"})


async def healthz(request: web.Request) -> web.Response:
    started = time.perf_counter()
    count = await request.app[POOL].read(lambda b: b.registry.count_datasets())
    return web.json_response(
        {
            "status": "ok",
            "datasets": count,
            "registry_ms": round((time.perf_counter() - started) * 1000, 2),
            "open_transactions": request.app[TRANSACTIONS].open_count,
        },
        headers={"Cache-Control": "no-store"},
    )


def add_routes(app: web.Application) -> None:
    from butler.server.openapi import openapi_json

    app.router.add_get(f"{API}/", repo_info)
    app.router.add_get(f"{API}/openapi.json", openapi_json)
    app.router.add_get(f"{API}/universe", universe)
    app.router.add_get(f"{API}/dataset-types", list_dataset_types)
    app.router.add_get(f"{API}/dataset-types/{{name}}", get_dataset_type)
    app.router.add_get(f"{API}/collections", list_collections)
    app.router.add_get(f"{API}/collections/{{name:.+}}", get_collection)
    app.router.add_get(f"{API}/dimensions/{{element}}/records", dimension_records)
    app.router.add_get(f"{API}/dimensions/{{element}}/values", dimension_values)
    app.router.add_get(f"{API}/datasets", query_datasets)
    app.router.add_post(f"{API}/datasets/query", query_datasets)
    app.router.add_get(f"{API}/datasets/summary", datasets_summary)
    app.router.add_get(f"{API}/datasets/{{id}}", get_dataset)
    app.router.add_get(f"{API}/find", find_dataset)
    app.router.add_get(f"{API}/data-ids", query_data_ids)
    app.router.add_post(f"{API}/operations", apply_direct_operations)
    app.router.add_post(f"{API}/transactions", begin_transaction)
    app.router.add_put(f"{API}/transactions/{{txn}}/uploads/{{upload}}", upload_file)
    app.router.add_post(f"{API}/transactions/{{txn}}/commit", commit_transaction)
    app.router.add_delete(f"{API}/transactions/{{txn}}", abort_transaction)
    app.router.add_post(f"{API}/files/bundle", serve_file_bundle)
    app.router.add_get("/files/{path:.+}", serve_dataset_file)
    app.router.add_get("/healthz", healthz)


# Requests that read even though their method is POST (for scopes and caching).
READ_POSTS = {f"{API}/datasets/query", f"{API}/files/bundle"}
