"""The OpenAPI 3.1 description of the repository API, served at ``/api/v1/openapi.json``.

Written as data next to the handlers; the test suite checks that every route is described
here and that real responses validate against these schemas.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from butler.http.bundle import CONTENT_TYPE as BUNDLE_CONTENT_TYPE
from butler.http.bundle import MAX_FILES as BUNDLE_MAX_FILES
from butler.server.api import API, API_VERSION

_ANY_OBJECT: dict[str, Any] = {"type": "object"}
_VALUE: dict[str, Any] = {"type": ["integer", "string"]}

SCHEMAS: dict[str, Any] = {
    "Error": {
        "type": "object",
        "required": ["error_type", "message", "request_id"],
        "properties": {
            "error_type": {"type": "string", "description": "Stable error class name."},
            "message": {"type": "string"},
            "request_id": {"type": "string"},
            "details": _ANY_OBJECT,
        },
    },
    "DatasetType": {
        "type": "object",
        "required": ["name", "dimensions", "storage_class", "implied"],
        "properties": {
            "name": {"type": "string"},
            "dimensions": {"type": "array", "items": {"type": "string"}},
            "implied": {"type": "array", "items": {"type": "string"}},
            "storage_class": {"type": "string"},
            "formatter": {"type": ["string", "null"]},
        },
    },
    "DataCoordinate": {
        "type": "object",
        "required": ["values", "required"],
        "properties": {
            "values": {"type": "object", "additionalProperties": _VALUE},
            "required": {"type": "array", "items": {"type": "string"}},
        },
    },
    "DatasetRef": {
        "type": "object",
        "required": ["id", "dataset_type", "data_id", "run"],
        "properties": {
            "id": {"type": "string", "format": "uuid"},
            "dataset_type": {"$ref": "#/components/schemas/DatasetType"},
            "data_id": {"$ref": "#/components/schemas/DataCoordinate"},
            "run": {"type": "string"},
            "component": {"type": ["string", "null"]},
        },
    },
    "FileInfo": {
        "type": "object",
        "required": [
            "dataset_id",
            "path",
            "size",
            "checksum",
            "formatter",
            "storage_class",
            "index",
        ],
        "properties": {
            "dataset_id": {"type": "string", "format": "uuid"},
            "path": {"type": "string", "description": "Relative to /files/."},
            "size": {"type": "integer", "minimum": 0},
            "checksum": {"type": "string", "pattern": "^sha256:[0-9a-f]{64}$"},
            "formatter": {"type": "string"},
            "storage_class": {"type": "string"},
            "index": {
                "type": "object",
                "description": "Offset index (FITS HDUs, Parquet footer...).",
            },
        },
    },
    "DatasetWithFile": {
        "type": "object",
        "required": ["ref", "file"],
        "properties": {
            "ref": {"$ref": "#/components/schemas/DatasetRef"},
            "file": {"$ref": "#/components/schemas/FileInfo"},
        },
    },
    "Collection": {
        "type": "object",
        "required": ["name", "type"],
        "properties": {
            "name": {"type": "string"},
            "type": {"enum": ["RUN", "CHAINED"]},
            "doc": {"type": "string"},
            "created": {"type": "string"},
            "children": {"type": "array", "items": {"type": "string"}},
            "runs": {"type": "array", "items": {"type": "string"}},
        },
    },
    "RepoInfo": {
        "type": "object",
        "required": [
            "name",
            "format_version",
            "api_version",
            "read_only",
            "read_access",
            "universe",
        ],
        "properties": {
            "name": {"type": "string"},
            "format_version": {"type": "integer"},
            "api_version": {"type": "string"},
            "read_only": {"type": "boolean"},
            "read_access": {"enum": ["public", "token"]},
            "max_ranges": {"type": "integer"},
            "max_page_size": {"type": "integer"},
            "max_bundle_files": {
                "type": "integer",
                "description": f"Paths one {API}/files/bundle request may ask for",
            },
            "datasets": {"type": "integer"},
            "dataset_types": {"type": "array", "items": {"type": "string"}},
            "collections": {"type": "array", "items": {"type": "string"}},
            "universe": _ANY_OBJECT,
        },
    },
    "Operation": {
        "type": "object",
        "required": ["op"],
        "description": (
            "One write: put (an upload of this transaction, by dataset UUID), remove, "
            "insert_dimension_records, register_dataset_type, register_run or "
            "set_collection_chain."
        ),
        "properties": {
            "op": {
                "enum": [
                    "put",
                    "remove",
                    "insert_dimension_records",
                    "register_dataset_type",
                    "register_run",
                    "set_collection_chain",
                ]
            }
        },
    },
    "Operations": {
        "type": "object",
        "required": ["operations"],
        "properties": {
            "operations": {"type": "array", "items": {"$ref": "#/components/schemas/Operation"}}
        },
    },
    "Results": {
        "type": "object",
        "required": ["results"],
        "properties": {"results": {"type": "array", "items": _ANY_OBJECT}},
    },
}


def _ref(name: str) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{name}"}


def _page_of(key: str, items: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "object",
        "required": [key, "next_offset"],
        "properties": {
            key: {"type": "array", "items": items},
            "next_offset": {"type": ["integer", "null"], "description": "Offset of the next page."},
        },
    }


def _json(schema: dict[str, Any], description: str = "OK") -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


_ERRORS = {
    "400": _json(_ref("Error"), "Bad request (bad where expression, data ID, parameter)"),
    "401": _json(_ref("Error"), "A bearer token is needed or the one given is invalid"),
    "403": _json(_ref("Error"), "The token lacks the needed scope, or the server is read-only"),
    "404": _json(_ref("Error"), "Not found (dataset, dataset type, collection...)"),
    "408": _json(_ref("Error"), "The request body stopped arriving (see --body-timeout)"),
    "409": _json(_ref("Error"), "Conflict (dataset exists, ambiguous search...)"),
    "413": _json(
        _ref("Error"),
        "Request body too large (see --max-json-bytes and --max-upload-bytes)",
    ),
    "500": _json(_ref("Error"), "Server bug; the body carries a request ID"),
}


def _q(
    name: str,
    description: str,
    schema: dict[str, Any] | None = None,
    *,
    required: bool = False,
    repeat: bool = False,
) -> dict[str, Any]:
    schema = schema or {"type": "string"}
    if repeat:
        schema = {"type": "array", "items": schema}
    param: dict[str, Any] = {
        "name": name,
        "in": "query",
        "required": required,
        "description": description,
        "schema": schema,
    }
    if repeat:
        param.update(style="form", explode=True)
    return param


def _json_request(required: list[str], properties: dict[str, Any]) -> dict[str, Any]:
    """A required JSON object request body."""
    schema = {"type": "object", "required": required, "properties": properties}
    return {"required": True, "content": {"application/json": {"schema": schema}}}


def _p(name: str, description: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "path",
        "required": True,
        "description": description,
        "schema": {"type": "string"},
    }


_WHERE = _q("where", "Query expression, e.g. visit IN (100..120) AND band = 'r'.")
_BIND = _q("bind", "JSON object of bind values for the where expression.")
_DATA_ID = _q("data_id", "JSON object of data ID values to constrain to.")
_LIMIT = _q("limit", "Page size.", {"type": "integer", "minimum": 0})
_OFFSET = _q("offset", "Offset of the page.", {"type": "integer", "minimum": 0})
_COLLECTIONS = _q("collections", "Collections to search, in order.", repeat=True)


def _get(
    summary: str, response: dict[str, Any], params: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    return {
        "summary": summary,
        "parameters": params or [],
        "responses": {
            "200": _json(response),
            "304": {"description": "Not modified (If-None-Match)"},
            **_ERRORS,
        },
    }


def _write(
    summary: str,
    response: dict[str, Any] | None,
    params: list[dict[str, Any]] | None = None,
    body: dict[str, Any] | None = None,
    status: str = "200",
) -> dict[str, Any]:
    op: dict[str, Any] = {
        "summary": summary,
        "parameters": params or [],
        "security": [{"bearer": []}],
        "responses": {status: _json(response) if response else {"description": "Done"}, **_ERRORS},
    }
    if body is not None:
        op["requestBody"] = {"required": True, "content": {"application/json": {"schema": body}}}
    return op


def build_openapi() -> dict[str, Any]:
    file_headers = {
        "ETag": {"schema": {"type": "string"}, "description": "Strong, from the checksum"},
        "Accept-Ranges": {"schema": {"type": "string"}},
        "Cache-Control": {"schema": {"type": "string"}},
        "Last-Modified": {"schema": {"type": "string"}},
    }
    paths: dict[str, Any] = {
        f"{API}/": {"get": _get("Repository information", _ref("RepoInfo"))},
        f"{API}/openapi.json": {"get": _get("This document", {"type": "object"})},
        f"{API}/universe": {"get": _get("The dimension universe", {"type": "object"})},
        f"{API}/dataset-types": {
            "get": _get(
                "Registered dataset types",
                {
                    "type": "object",
                    "required": ["dataset_types"],
                    "properties": {
                        "dataset_types": {"type": "array", "items": _ref("DatasetType")}
                    },
                },
            )
        },
        f"{API}/dataset-types/{{name}}": {
            "get": _get("One dataset type", _ref("DatasetType"), [_p("name", "Dataset type name")])
        },
        f"{API}/collections": {
            "get": _get(
                "Collections",
                {
                    "type": "object",
                    "required": ["collections"],
                    "properties": {"collections": {"type": "array", "items": _ref("Collection")}},
                },
            )
        },
        f"{API}/collections/{{name}}": {
            "get": _get(
                "One collection, with the RUNs it searches",
                _ref("Collection"),
                [_p("name", "Collection name (may contain '/')")],
            )
        },
        f"{API}/dimensions/{{element}}/records": {
            "get": _get(
                "Dimension records",
                _page_of("records", {"type": "object"}),
                [_p("element", "Dimension element"), _WHERE, _BIND, _DATA_ID, _LIMIT, _OFFSET],
            )
        },
        f"{API}/dimensions/{{element}}/values": {
            "get": _get(
                "Distinct values of a dimension under constraints (for completion)",
                {
                    "type": "object",
                    "required": ["element", "values"],
                    "properties": {
                        "element": {"type": "string"},
                        "values": {"type": "array", "items": _VALUE},
                    },
                },
                [
                    _p("element", "Dimension"),
                    _WHERE,
                    _BIND,
                    _DATA_ID,
                    _q("prefix", "Only values starting with this"),
                    _q("dataset_type", "Only values that have datasets of this type"),
                    _COLLECTIONS,
                    _LIMIT,
                ],
            )
        },
        f"{API}/datasets": {
            "get": _get(
                "Query datasets (with their file records)",
                _page_of("datasets", _ref("DatasetWithFile")),
                [
                    _q("dataset_type", "Dataset type", required=True),
                    _COLLECTIONS,
                    _WHERE,
                    _BIND,
                    _DATA_ID,
                    _q(
                        "find_first",
                        "One dataset per data ID (first collection wins)",
                        {"type": "boolean"},
                    ),
                    _LIMIT,
                    _OFFSET,
                ],
            )
        },
        f"{API}/datasets/query": {
            "post": {
                "summary": "Query datasets with the parameters in a JSON body (long expressions)",
                "requestBody": _json_request(
                    ["dataset_type"],
                    {
                        "dataset_type": {"type": "string"},
                        "collections": {"type": ["array", "null"], "items": {"type": "string"}},
                        "where": {"type": "string"},
                        "bind": _ANY_OBJECT,
                        "data_id": _ANY_OBJECT,
                        "find_first": {"type": "boolean"},
                        "limit": {"type": "integer"},
                        "offset": {"type": "integer"},
                    },
                ),
                "responses": {
                    "200": _json(_page_of("datasets", _ref("DatasetWithFile"))),
                    **_ERRORS,
                },
            }
        },
        f"{API}/datasets/summary": {
            "get": _get(
                "Count and total file bytes of a dataset query (before fetching it)",
                {
                    "type": "object",
                    "required": ["dataset_type", "count", "size"],
                    "properties": {
                        "dataset_type": {"type": "string"},
                        "count": {"type": "integer", "minimum": 0},
                        "size": {"type": "integer", "minimum": 0, "description": "Bytes"},
                    },
                },
                [
                    _q("dataset_type", "Dataset type", required=True),
                    _COLLECTIONS,
                    _WHERE,
                    _BIND,
                    _DATA_ID,
                    _q(
                        "find_first",
                        "One dataset per data ID (first collection wins)",
                        {"type": "boolean"},
                    ),
                ],
            )
        },
        f"{API}/datasets/{{id}}": {
            "get": _get(
                "One dataset and its file record",
                _ref("DatasetWithFile"),
                [_p("id", "Dataset UUID")],
            )
        },
        f"{API}/find": {
            "get": _get(
                "Find one dataset by type + data ID in collections (in order)",
                _ref("DatasetWithFile"),
                [_q("dataset_type", "Dataset type", required=True), _DATA_ID, _COLLECTIONS],
            )
        },
        f"{API}/data-ids": {
            "get": _get(
                "Distinct data IDs",
                _page_of("data_ids", _ref("DataCoordinate")),
                [
                    _q("dimensions", "Dimensions", required=True, repeat=True),
                    _WHERE,
                    _BIND,
                    _DATA_ID,
                    _q("dataset_type", "Only data IDs with datasets of this type"),
                    _COLLECTIONS,
                    _LIMIT,
                    _OFFSET,
                ],
            )
        },
        f"{API}/operations": {
            "post": _write(
                "Apply registrations/removals atomically (no uploads)",
                _ref("Results"),
                body=_ref("Operations"),
            )
        },
        f"{API}/transactions": {
            "post": _write(
                "Begin a write transaction",
                {
                    "type": "object",
                    "required": ["id", "expires"],
                    "properties": {"id": {"type": "string"}, "expires": {"type": "number"}},
                },
            )
        },
        f"{API}/transactions/{{txn}}/uploads/{{upload}}": {
            "put": {
                **_write(
                    "Stage one dataset file (hashed as it streams)",
                    {
                        "type": "object",
                        "required": ["id", "size", "checksum"],
                        "properties": {
                            "id": {"type": "string"},
                            "size": {"type": "integer"},
                            "checksum": {"type": "string"},
                        },
                    },
                    [
                        _p("txn", "Transaction ID"),
                        _p("upload", "Dataset UUID"),
                        {
                            "name": "X-Checksum",
                            "in": "header",
                            "required": False,
                            "schema": {"type": "string"},
                            "description": "sha256:<hex> the server checks",
                        },
                    ],
                ),
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/octet-stream": {
                            "schema": {"type": "string", "format": "binary"}
                        }
                    },
                },
            }
        },
        f"{API}/transactions/{{txn}}/commit": {
            "post": _write(
                "Commit all operations atomically",
                _ref("Results"),
                [_p("txn", "Transaction ID")],
                body=_ref("Operations"),
            )
        },
        f"{API}/transactions/{{txn}}": {
            "delete": _write(
                "Abort and discard staged uploads",
                None,
                [_p("txn", "Transaction ID")],
                status="204",
            )
        },
        f"{API}/files/bundle": {
            "post": {
                "summary": "Many dataset files in one answer: for each path, a JSON header line "
                '({"path", "size"} or {"path", "error"}) then the file\'s bytes '
                "(butler.http.bundle); not cacheable, for clients fetching many small files",
                "requestBody": _json_request(
                    ["paths"],
                    {
                        "paths": {
                            "type": "array",
                            "items": {"type": "string"},
                            "minItems": 1,
                            "maxItems": BUNDLE_MAX_FILES,
                        }
                    },
                ),
                "responses": {
                    "200": {
                        "description": "The bundle",
                        "content": {
                            BUNDLE_CONTENT_TYPE: {"schema": {"type": "string", "format": "binary"}}
                        },
                    },
                    **_ERRORS,
                },
            }
        },
        "/files/{path}": {
            "get": {
                "summary": "A dataset file; RFC 9110 ranges (single, suffix, open, multipart), "
                "If-Range, conditional requests",
                "parameters": [
                    _p("path", "File path from FileInfo.path"),
                    {
                        "name": "Range",
                        "in": "header",
                        "required": False,
                        "schema": {"type": "string"},
                    },
                ],
                "responses": {
                    "200": {
                        "description": "The whole file",
                        "headers": file_headers,
                        "content": {"*/*": {"schema": {"type": "string", "format": "binary"}}},
                    },
                    "206": {
                        "description": "Partial content (one range, or multipart/byteranges)",
                        "headers": file_headers,
                    },
                    "304": {"description": "Not modified"},
                    "404": {"description": "No dataset file at this path"},
                    "412": {"description": "Precondition failed"},
                    "416": {
                        "description": "Range not satisfiable (Content-Range: bytes */SIZE), "
                        "or too many/overlapping ranges"
                    },
                },
            },
            "head": {
                "summary": "Headers of a dataset file",
                "parameters": [_p("path", "File path")],
                "responses": {
                    "200": {"description": "Headers only", "headers": file_headers},
                    "404": {"description": "Not found"},
                },
            },
        },
        "/": {
            "get": {
                "summary": "Landing page: the repository's name and dataset types (only to "
                "readers: with --read-access token, without a token the links alone) and "
                "links to this document and /healthz; HTML, or JSON when Accept asks for it",
                "responses": {
                    "200": {
                        "description": "OK",
                        "content": {
                            "text/html": {"schema": {"type": "string"}},
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "required": ["service", "links"],
                                    "properties": {
                                        "service": {"type": "string"},
                                        "links": {"type": "object"},
                                        "repository": {"type": "string"},
                                        "dataset_types": {
                                            "type": "array",
                                            "items": {"type": "string"},
                                        },
                                        "note": {"type": "string"},
                                    },
                                }
                            },
                        },
                    }
                },
            }
        },
        "/healthz": {
            "get": {
                "summary": "Liveness and registry latency",
                "responses": {
                    "200": _json(
                        {
                            "type": "object",
                            "required": ["status"],
                            "properties": {"status": {"const": "ok"}},
                        }
                    )
                },
            }
        },
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Butler repository API",
            "version": API_VERSION,
            "description": "Datasets by dataset type + data ID; files by byte range.",
        },
        "paths": paths,
        "components": {
            "schemas": SCHEMAS,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }


async def openapi_json(request: web.Request) -> web.Response:
    return web.json_response(build_openapi(), headers={"Cache-Control": "public, max-age=3600"})
