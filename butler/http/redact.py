"""Credentials out of logs: request targets with secret-looking query values hidden.

A signed URL carries its credential in the query (``X-Amz-Signature=...``,
``X-Amz-Credential``, ``X-Amz-Security-Token``; ``access_token=``, ``api_key=``, ...). An
access log that writes targets as received would hand it to anyone who can read the log,
for as long as the signature is valid. Both ``butler serve`` and proxyd log targets through
:func:`redact_target`.
"""

from __future__ import annotations

import re
from urllib.parse import unquote

__all__ = ["SECRET_PARAM", "redact_target"]

SECRET_PARAM = re.compile(r"sig|token|credential|secret|passw|auth|session|key|code", re.I)
"""Query parameter names (percent-decoded, searched anywhere in the name) whose values are
hidden. Broad on purpose: a hidden harmless value costs a log reader little, a logged
secret is a leak."""


def redact_target(target: str) -> str:
    """``target`` with the values of credential-like query parameters replaced by
    ``REDACTED`` (names, order and everything else kept)."""
    path, question, query = target.partition("?")
    if not question:
        return target
    parts = []
    for part in query.split("&"):
        name, equals, _ = part.partition("=")
        if equals and SECRET_PARAM.search(unquote(name)):
            part = f"{name}=REDACTED"
        parts.append(part)
    return f"{path}?{'&'.join(parts)}"
