"""A server's error answers, read back as the exception classes the server raised."""

from __future__ import annotations

import json

from butler.errors import ButlerError, ServerError, error_classes


def raise_for_error(status: int, body: bytes, url: str) -> None:
    """Re-raise a server's JSON error as its own class; other failures as ServerError."""
    try:
        data = json.loads(body)
    except ValueError:
        data = None
    if isinstance(data, dict) and "error_type" in data:
        cls = error_classes().get(str(data["error_type"]))
        message = str(data.get("message", ""))
        if status >= 500 and data.get("request_id"):
            message = f"{message} (request ID {data['request_id']})"
        if cls is None:
            cls = ServerError if status >= 500 else ButlerError
        raise cls.from_wire(message, data.get("details") or {})
    text = body[:300].decode(errors="replace").strip()
    if status >= 500:
        raise ServerError(f"{url} answered {status}: {text}")
    raise ButlerError(f"{url} answered {status}: {text}")
