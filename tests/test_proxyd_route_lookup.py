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


def test_the_closest_upstream_wins_whatever_the_order_or_names() -> None:
    # The one with the longest path wins, wherever it is listed and however it is named.
    upstreams = {"survey": "https://h/survey", "a-much-longer-name": "https://h"}
    assert route_path(upstreams, "https://h/butler/") == "/a-much-longer-name/butler/"
    assert route_path(upstreams, "https://h/survey/x") == "/survey/x/"
    reversed_order = dict(reversed(list(upstreams.items())))
    assert route_path(reversed_order, "https://h/survey/x") == "/survey/x/"
    # Two names for one URL: the first configured is the path.
    assert route_path({"one": "https://h/a", "two": "https://h/a"}, "https://h/a/b") == "/one/b/"


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("http://h:80/a", "/plain/a/"),  # http's default port is the same origin as none
        ("https://s:443/a", "/secure/a/"),
        ("http://s:443/a", None),
        ("ftp://h/a", None),  # no default port to fall back on: not an http(s) URL
        ("http:///a", None),  # no host
        ("https://", None),
    ],
)
def test_default_ports_and_urls_without_a_host(url: str, expected: str | None) -> None:
    assert route_path({"plain": "http://h", "secure": "https://s"}, url) == expected
