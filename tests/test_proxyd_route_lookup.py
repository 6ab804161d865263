"""The proxy's path for an origin URL (``GET /healthz?route=URL``, which ``mirror pull
--via`` asks): :func:`proxyd.policy.routes.route_path`, pure. The wire is in
tests/test_proxyd_ops.py (test_healthz) and tests/test_mirror_via_private.py."""

from __future__ import annotations

import pytest

from proxyd.policy.routes import route_path

UPSTREAMS = {
    # As ProxySettings holds them: scheme and host in lower case, no default port, no
    # trailing slash.
    "repo": "http://repo:8642",
    "site": "https://data.example.org",
    "survey": "https://data.example.org/survey",
}


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("http://repo:8642/", "/repo/"),
        ("http://repo:8642", "/repo/"),
        ("HTTP://REPO:8642/api/", "/repo/api/"),  # scheme and host in any case
        ("https://data.example.org/butler/", "/site/butler/"),
        ("https://data.example.org:443/butler", "/site/butler/"),  # the default port
        ("https://data.example.org/survey/a/", "/survey/a/"),  # the longest path
        ("https://data.example.org/survey", "/survey/"),
        ("https://data.example.org/surveys/a/", "/site/surveys/a/"),  # whole segments only
        ("http://data.example.org/butler/", None),  # another scheme: another origin
        ("http://repo:8643/", None),  # another port
        ("http://repo/", None),  # port 80 is another port
        ("ftp://repo:8642/", None),
        ("http://repo:notaport/", None),
        ("", None),
        ("/a/local/path", None),
    ],
)
def test_the_path_for_a_url(url: str, expected: str | None) -> None:
    assert route_path(UPSTREAMS, url) == expected


def test_a_path_below_an_upstream_with_a_path_only() -> None:
    assert route_path({"r": "https://h/a/b"}, "https://h/a") is None
    assert route_path({"r": "https://h/a/b"}, "https://h/a/b/c/d") == "/r/c/d/"
    assert route_path({}, "https://h/") is None
