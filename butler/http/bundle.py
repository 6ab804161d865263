"""File bundles: many dataset files in one HTTP answer (pure framing, no I/O).

A client that wants many small files (``mirror pull``) asks ``POST /api/v1/files/bundle``
with ``{"paths": [...]}``, registered file paths, at most :data:`MAX_FILES` of them. The
answer (``200``, :data:`CONTENT_TYPE`, with a Content-Length) holds, for each path in the
order asked, one header line and then the file's bytes::

    {"path": "a/b.fits", "size": 2880}\\n<2880 bytes>
    {"path": "a/c.fits", "error": "no dataset file at a/c.fits"}\\n

A header line is a JSON object in UTF-8 ending in a newline, at most :data:`MAX_HEADER`
bytes; an ``error`` entry has no bytes after it. Why: each request costs a server a few
hundred microseconds of its event loop whatever the file's size, and costs the client a
round trip; for many small files that is most of the work. A bundle is not cacheable (it
is a POST): a pull through a caching proxy uses one GET per file instead.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

CONTENT_TYPE = "application/x-butler-file-bundle"
MAX_FILES = 64
"""Most paths one bundle may ask for (the server holds them all open while it answers)."""
MAX_HEADER = 4096
"""Longest header line, newline included."""


class BundleFormatError(ValueError):
    """A bundle answer that does not follow the format (a broken or foreign server)."""


@dataclass(frozen=True)
class BundleEntry:
    """One file's header: its path and size, or why it is missing (then no bytes follow)."""

    path: str
    size: int = 0
    error: str | None = None

    def encode(self) -> bytes:
        fields: dict[str, object] = {"path": self.path}
        if self.error is None:
            fields["size"] = self.size
        else:
            fields["error"] = self.error
        line = json.dumps(fields, separators=(",", ":")).encode() + b"\n"
        if len(line) > MAX_HEADER:
            raise ValueError(f"bundle header for {self.path!r} is longer than {MAX_HEADER} bytes")
        return line

    @classmethod
    def decode(cls, line: bytes) -> BundleEntry:
        if not line.endswith(b"\n"):
            raise BundleFormatError(
                "a bundle header line is missing its newline (the answer was cut short or is "
                f"longer than {MAX_HEADER} bytes)"
            )
        try:
            fields = json.loads(line)
        except ValueError as exc:
            raise BundleFormatError(f"a bundle header line is not JSON: {exc}") from None
        if not isinstance(fields, dict) or not isinstance(fields.get("path"), str):
            raise BundleFormatError("a bundle header line has no 'path'")
        error = fields.get("error")
        if error is not None:
            return cls(fields["path"], 0, str(error))
        size = fields.get("size")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise BundleFormatError(f"bundle header for {fields['path']!r} has no valid 'size'")
        return cls(fields["path"], size)


def parse_request(body: object) -> list[str]:
    """The paths a bundle request asks for; ValueError saying what is wrong otherwise."""
    paths = body.get("paths") if isinstance(body, dict) else None
    if not isinstance(paths, list) or not all(isinstance(p, str) for p in paths):
        raise ValueError('the request body must be {"paths": [registered file paths]}')
    if not paths:
        raise ValueError("a bundle needs at least one path")
    if len(paths) > MAX_FILES:
        raise ValueError(f"a bundle asks for at most {MAX_FILES} files, not {len(paths)}")
    return paths
