"""Credentials out of access logs: :func:`butler.http.redact.redact_target` on its own.

Expected targets are written out by hand; the server and proxy tests
(``test_hardening_server.py``, ``test_hardening_proxyd.py``) check the logs themselves.
"""

from __future__ import annotations

import pytest

from butler.http.redact import redact_target


@pytest.mark.parametrize(
    ("target", "logged"),
    [
        ("/a/b.fits", "/a/b.fits"),  # no query at all
        ("/a?", "/a?"),  # an empty query stays as it came
        ("/a?x=1&y=2", "/a?x=1&y=2"),  # nothing secret-looking
        (
            "/o?X-Amz-Signature=abc&X-Amz-Date=20261206T000000Z&X-Amz-Credential=AK%2F1",
            "/o?X-Amz-Signature=REDACTED&X-Amz-Date=20261206T000000Z&X-Amz-Credential=REDACTED",
        ),
        ("/o?x-amz-security-token=t&part=1", "/o?x-amz-security-token=REDACTED&part=1"),
        ("/o?access_token=t", "/o?access_token=REDACTED"),
        ("/o?api_key=k&apikey=k&passwd=p", "/o?api_key=REDACTED&apikey=REDACTED&passwd=REDACTED"),
        ("/o?SESSION=s&oauth=o&code=c", "/o?SESSION=REDACTED&oauth=REDACTED&code=REDACTED"),
        ("/o?client_secret=s", "/o?client_secret=REDACTED"),
        # A name hidden behind percent-encoding is still recognised; it is logged as sent.
        ("/o?X%2DAmz%2DSignature=abc&n=1", "/o?X%2DAmz%2DSignature=REDACTED&n=1"),
        ("/o?%73ig=abc", "/o?%73ig=REDACTED"),
        # An empty value is replaced too (the name alone says a credential was there).
        ("/o?token=&n=1", "/o?token=REDACTED&n=1"),
        # A bare name has no value to hide; empty parts and order are kept.
        ("/o?token&&n=1&", "/o?token&&n=1&"),
        # Only the query: a path that looks like a parameter is a path.
        ("/token=abc/x?n=1", "/token=abc/x?n=1"),
        # A value holding '=' is hidden whole.
        ("/o?sig=a=b=c&n=1", "/o?sig=REDACTED&n=1"),
        # A second '?' belongs to the query.
        ("/o?n=1?token=x", "/o?n=1?token=x"),
    ],
)
def test_redact_target(target: str, logged: str) -> None:
    assert redact_target(target) == logged
