"""A server's error answers, read back as the exception classes the server raised."""

from __future__ import annotations

import json

from butler.errors import ButlerError, RemoteUnavailableError, ServerError, error_classes

GATEWAY_FAILURES = (502, 504)
"""Statuses a proxy answers itself when the server behind it cannot be reached (RFC 9110
§15.6.3, §15.6.5); the repository server never sends them."""


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
    if status in GATEWAY_FAILURES:
        # A site proxy whose repository is down, for what it has not cached: say so plainly.
        raise RemoteUnavailableError(
            f"the repository behind {url} cannot be reached: a proxy answered {status}: {text}"
        )
    if status >= 500:
        raise ServerError(f"{url} answered {status}: {text}")
    raise ButlerError(f"{url} answered {status}: {text}")
