"""Checks of what clients send to the API: JSON depth, field types and sizes.

Every request body and JSON parameter goes through here before any repository call, so a
wrongly typed or absurdly nested value is a 400 naming the field, never a 500 from deep
inside the registry.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Mapping
from typing import Any

from butler.errors import BadRequestError
from butler.formatters.structured import nests_deeper_than

MAX_DEPTH = 32
"""Nesting of JSON arrays and objects accepted in a request (real requests use about 5)."""
MAX_STRING = 1 << 20
"""Longest string accepted in a request field (a long ``where`` expression is a few KiB)."""
MAX_INT = 2**63 - 1
_INT_RANGE = (-(2**63), MAX_INT)  # what SQLite stores

Scalar = str | int | float | bool | None
_SCALARS = (str, int, float, bool, type(None))


def parse_json(text: str | bytes, what: str) -> Any:
    """``text`` parsed as JSON, or a 400 saying why not (also when nested too deeply)."""
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise BadRequestError(f"{what} must be JSON: {exc}") from None
    except RecursionError:
        raise BadRequestError(too_deep(what)) from None
    check_depth(value, what)
    return value


def too_deep(what: str) -> str:
    return f"{what} is nested more than {MAX_DEPTH} levels deep; flatten it"


def check_depth(value: Any, what: str) -> None:
    """A 400 if ``value`` nests lists and dicts more than :data:`MAX_DEPTH` deep."""
    if nests_deeper_than(value, MAX_DEPTH):
        raise BadRequestError(too_deep(what))


def _type_name(value: Any) -> str:
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean"}.get(
        type(value), "null" if value is None else "a number"
    )


def _wrong(field: str, expected: str, value: Any) -> BadRequestError:
    return BadRequestError(f"field {field!r} must be {expected}, got {_type_name(value)}")


def string(value: Any, field: str, *, required: bool = True, empty: bool = True) -> str:
    if value is None and not required:
        return ""
    if not isinstance(value, str):
        raise _wrong(field, "a string", value)
    if not empty and not value:
        raise BadRequestError(f"field {field!r} must not be empty")
    if len(value) > MAX_STRING:
        raise BadRequestError(f"field {field!r} is longer than {MAX_STRING} characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate (JSON allows "\ud800"): SQLite refuses it
        raise BadRequestError(f"field {field!r} is not valid Unicode text") from None
    return value


def optional_string(value: Any, field: str) -> str | None:
    return None if value is None else string(value, field)


def boolean(value: Any, field: str, default: bool) -> bool:
    if value is None:
        return default
    if not isinstance(value, bool):
        raise _wrong(field, "true or false", value)
    return value


def integer(value: Any, field: str, default: int, maximum: int | None = None) -> int:
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        raise _wrong(field, "an integer", value)
    if value < 0:
        raise BadRequestError(f"field {field!r} must not be negative")
    maximum = _INT_RANGE[1] if maximum is None else maximum
    if value > maximum:
        raise BadRequestError(f"field {field!r} is at most {maximum}")
    return value


def scalar(value: Any, field: str) -> Scalar:
    if not isinstance(value, _SCALARS):
        raise _wrong(field, "a string, number, boolean or null", value)
    if isinstance(value, int) and not _INT_RANGE[0] <= value <= _INT_RANGE[1]:
        raise BadRequestError(f"field {field!r}: integer {value} is out of range (64 bits)")
    if isinstance(value, str):
        string(value, field)
    result: Scalar = value
    return result


def string_list(value: Any, field: str) -> list[str]:
    if not isinstance(value, list):
        raise _wrong(field, "an array of strings", value)
    return [string(item, f"{field}[{i}]") for i, item in enumerate(value)]


def mapping(value: Any, field: str, check: Callable[[Any, str], Any] = scalar) -> dict[str, Any]:
    """An object whose values each pass ``check`` (scalars by default); None is empty."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise _wrong(field, "an object", value)
    return {
        string(key, f"{field} key"): check(item, f"{field}.{key}") for key, item in value.items()
    }


def bind_value(value: Any, field: str) -> Any:
    """A bind parameter: a scalar, or a list of scalars (for ``IN :name``)."""
    if isinstance(value, list):
        return [scalar(item, f"{field}[{i}]") for i, item in enumerate(value)]
    return scalar(value, field)


def collections(value: Any, field: str = "collections") -> list[str] | None:
    if value is None:
        return None
    if isinstance(value, str):
        return [string(value, field)]
    return string_list(value, field)


def dataset_uuid(value: Any, field: str) -> uuid.UUID:
    text = string(value, field)
    try:
        return uuid.UUID(text)
    except ValueError:
        raise BadRequestError(f"field {field!r} must be a dataset UUID, got {text!r:.80}") from None


def only_keys(body: Mapping[str, Any], allowed: set[str], what: str) -> None:
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise BadRequestError(f"{what} has unknown field(s) {unknown}; allowed: {sorted(allowed)}")


def _records(value: Any, field: str) -> list[dict[str, Any]]:
    records = []
    for i, item in enumerate(_list(value, field)):
        if not isinstance(item, dict):
            raise _wrong(f"{field}[{i}]", "an object", item)
        records.append(mapping(item, f"{field}[{i}]"))
    return records


def _ref(value: Any, field: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _wrong(field, "a dataset reference object", value)
    dataset_uuid(value.get("id"), f"{field}.id")
    return value


_OPERATIONS: dict[str, dict[str, Callable[[Any, str], Any]]] = {
    "put": {
        "id": lambda v, f: str(dataset_uuid(v, f)),
        "dataset_type": lambda v, f: string(v, f, empty=False),
        "data_id": lambda v, f: mapping(v, f),
        "run": lambda v, f: string(v, f, empty=False),
        "checksum": optional_string,
    },
    "remove": {"refs": lambda v, f: [_ref(r, f"{f}[{i}]") for i, r in enumerate(_list(v, f))]},
    "insert_dimension_records": {
        "element": lambda v, f: string(v, f, empty=False),
        "records": _records,
        "skip_existing": lambda v, f: boolean(v, f, False),
    },
    "register_dataset_type": {
        "name": lambda v, f: string(v, f, empty=False),
        "dimensions": string_list,
        "storage_class": lambda v, f: string(v, f, empty=False),
        "formatter": optional_string,
    },
    "register_run": {
        "name": lambda v, f: string(v, f, empty=False),
        "doc": lambda v, f: string(v, f, required=False),
    },
    "set_collection_chain": {
        "name": lambda v, f: string(v, f, empty=False),
        "children": string_list,
        "doc": lambda v, f: string(v, f, required=False),
    },
}
_OPTIONAL = {"checksum", "skip_existing", "formatter", "doc"}


def _list(value: Any, field: str) -> list[Any]:
    if not isinstance(value, list):
        raise _wrong(field, "an array", value)
    return value


def operations(body: Any) -> list[dict[str, Any]]:
    """The checked ``operations`` of a commit body: each a known ``op`` with its fields of
    the right types (a 400 naming the first wrong field otherwise)."""
    if not isinstance(body, dict):
        raise BadRequestError("the request body must be a JSON object")
    ops = body.get("operations")
    if not isinstance(ops, list):
        raise BadRequestError("body needs 'operations': a list of objects")
    return [_operation(op, f"operations[{n}]") for n, op in enumerate(ops)]


def _operation(op: Any, field: str) -> dict[str, Any]:
    if not isinstance(op, dict):
        raise _wrong(field, "an object", op)
    kind = op.get("op")
    fields = _OPERATIONS.get(kind) if isinstance(kind, str) else None
    if fields is None:
        raise BadRequestError(
            f"{field}: unknown operation {kind!r:.80}; expected one of {sorted(_OPERATIONS)}"
        )
    checked: dict[str, Any] = {"op": kind}
    for name, check in fields.items():
        if name not in op or op[name] is None:
            if name not in _OPTIONAL:
                raise BadRequestError(f"{field} ({kind!r}) lacks the field {name!r}")
            continue
        checked[name] = check(op[name], f"{field}.{name}")
    return checked
