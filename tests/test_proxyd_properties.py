"""Property tests (issue 4, item 11): for random objects, block sizes and Range headers, the
proxy's answer is the origin file's bytes for that range, and status, Content-Range and
Content-Length follow RFC 9110.

The oracle is :func:`butler.http.ranges.parse_range_header` on the same header and size, with
the proxy's limits. Two proxies with different block sizes (64 KiB and 128 KiB, short runs
and read-aheads so that responses span blocks and runs) front one nginx; every example writes
a new object (sizes 0 to a little over three of the larger blocks) and sends three requests
for it, so the first is cold and the others hit a partly or wholly filled cache.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import pytest
from fixtures_nginx import write_object
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from nginx import NginxOrigin
from proxies import Proxy, parse_multipart, request

from butler.http.ranges import RangeOutcome, parse_range_header

KiB = 1024
MAX_SIZE = 3 * 128 * KiB + 5000
_names = itertools.count()


@pytest.fixture(scope="module")
def origin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NginxOrigin]:
    base = tmp_path_factory.mktemp("properties")
    with NginxOrigin(base / "root", base / "nginx") as nginx:
        yield nginx


@pytest.fixture(scope="module")
def proxies(origin: NginxOrigin, tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[Proxy]]:
    configs = [
        ("64KiB", {"max_fetch_bytes": "192KiB", "readahead_bytes": "64KiB"}),
        ("128KiB", {"max_fetch_bytes": "256KiB", "readahead_bytes": "128KiB"}),
    ]
    started: list[Proxy] = []
    try:
        for block_size, config in configs:
            workdir = tmp_path_factory.mktemp(f"properties-{block_size}")
            proxy = Proxy({"o": origin.url}, workdir, block_size=block_size, config=config)
            started.append(proxy)
            proxy.start()
        yield started
    finally:
        for proxy in started:
            proxy.terminate_quietly()


@st.composite
def range_headers(draw: st.DrawFn, size: int) -> str:
    """Range header values: mostly valid specs near interesting offsets (0, block edges,
    the end, past the end), sometimes malformed ones, which a server must ignore."""
    edges = [0, 1, size - 1, size, size + 1, 64 * KiB - 1, 64 * KiB, 128 * KiB, 128 * KiB + 1]
    position = st.one_of(
        st.sampled_from([e for e in edges if e >= 0]), st.integers(0, max(0, size + 100))
    )

    def spec() -> str:
        kind = draw(st.sampled_from(["int", "int", "open", "suffix"]))
        if kind == "suffix":
            return f"-{draw(st.one_of(st.integers(0, size + 10), st.sampled_from([1, 10**9])))}"
        first = draw(position)
        if kind == "open":
            return f"{first}-"
        return f"{first}-{first + draw(st.integers(0, 200 * KiB))}"

    if draw(st.integers(0, 19)) == 0:
        return draw(
            st.sampled_from(
                ["bytes=", "bytes=abc", "items=0-10", "bytes=10-5", "bytes=--1", "bytes 0-1"]
            )
        )
    count = draw(st.sampled_from([1, 1, 1, 2, 3, 4]))
    return "bytes=" + ",".join(spec() for _ in range(count))


def check(proxy: Proxy, path: str, data: bytes, header: str) -> None:
    size = len(data)
    response = request(proxy.url, path.lstrip("/"), {"Range": header})
    expected = parse_range_header(header, size, max_ranges=200)
    body = response.body
    assert response.header("Content-Length") == str(len(body))
    if expected.outcome is RangeOutcome.IGNORE:
        assert response.status == 200, header
        assert body == data
        assert response.header("Content-Range") is None
        return
    if expected.outcome in (RangeOutcome.UNSATISFIABLE, RangeOutcome.REJECTED):
        assert response.status == 416, header
        assert response.header("Content-Range") == f"bytes */{size}"
        return
    ranges = expected.ranges
    assert response.status == 206, header
    if len(ranges) == 1:
        [r] = ranges
        assert response.header("Content-Range") == f"bytes {r.start}-{r.end}/{size}"
        assert body == data[r.as_slice()], header
        return
    assert response.header("Content-Range") is None
    parts = parse_multipart(response.header("Content-Type") or "", body)
    assert [p[0] for p in parts] == [f"bytes {r.start}-{r.end}/{size}" for r in ranges]
    assert [p[1] for p in parts] == [data[r.as_slice()] for r in ranges], header


@settings(
    max_examples=40,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(data=st.data(), size=st.integers(0, MAX_SIZE), which=st.sampled_from([0, 1]))
def test_ranges_through_the_proxy_match_the_origin_file(
    origin: NginxOrigin, proxies: list[Proxy], data: st.DataObject, size: int, which: int
) -> None:
    proxy = proxies[which]
    name = f"prop/{next(_names)}.bin"  # a new object: no earlier example's cache applies
    content = write_object(origin.root_dir, name, size, seed=size)
    for _ in range(3):
        check(proxy, f"/o/{name}", content, data.draw(range_headers(size), label="Range"))
    full = request(proxy.url, f"o/{name}")
    assert (full.status, full.body) == (200, content)
