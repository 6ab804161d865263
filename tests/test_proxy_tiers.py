"""Issue 21, item 4: the site deployment of docs/deployment.md works as shipped.

Debian's nginx is the far repository; one parent proxyd, the child proxyd nodes site.cfg lists
and Debian's HAProxy run from the files in config/ (tests/tiers.py says what is substituted:
addresses, paths, cache sizes). 16 clients read 8 objects of 2-3 MiB at once through HAProxy.
What must hold: every body is byte-exact; each object crosses from the origin exactly once
(one request, its size in bytes) and from the parent to the children exactly once; the
objects are spread over more than one child and each object is served by one child only
(consistent hashing on the URI). Then a child is SIGKILLed: every object is still served,
byte-exact, at once (HAProxy retries on another node) and after the health check took the
node out; the origin sees no request at all (the parent holds everything), the objects of the
surviving children stay where they were (consistent, not rehashed), and only the killed
node's objects are fetched again from the parent (by at most two survivors while HAProxy
takes the node out, then by one), after which every read is a hit. Started again, the node
gets its objects back and serves them from the cache it kept on disk.

How these tests were shown to fail (each run against site.cfg edited one line at a time):
``balance roundrobin`` fails the once-per-object assertions at the parent and per node (each
child fetches each object; test_roundrobin_config_fails_the_once_per_node_assertion keeps
this proof in the suite); ``hash-type map-based`` fails "the survivors' objects did not
move" after the kill (or, in 1 of 6 runs, earlier: a read got 502/503, all retries having
gone to the dead node); without ``option redispatch`` three reads get 503 from HAProxy (the
requests sent to the dead node before it is marked down); restarting the killed node on an
emptied cache directory fails "served as hits from the cache it kept"; with
``stale_if_error = "0"`` in the child file, expired content is a 502 when the parent is down
instead of STALE. The origin-once assertion holds even with roundrobin: the parent tier
coalesces the children's fetches, which is what it is for.
"""

from __future__ import annotations

import http.client
import random
import re
import threading
import urllib.parse
from collections import Counter, defaultdict
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
from fixtures_nginx import write_object
from haproxy import haproxy_binary
from nginx import Location, NginxOrigin
from proxies import Proxy, age_file, wait_until
from tiers import (
    BACKEND,
    CHILD_TOML,
    NODE_HEADER,
    PARENT_TOML,
    SITE_CFG,
    Site,
    render_site_cfg,
    shipped_children,
    shipped_toml,
)

from proxyd.settings import load_settings

MiB = 1 << 20
CLIENTS = 16
OBJECTS = {
    f"run1/calexp/visit{100 + i}/calexp_{i:02d}.fits": 2 * MiB + i * 131_071 for i in range(8)
}
"""Object path -> size: 2 to 2.9 MiB; all but the first end in a short last block (1 MiB
blocks), and the first is exactly two blocks."""
EXPIRING = "/expiring/"
REQUEST_TIMEOUT = 60.0
"""Per request; a read of 3 MiB on loopback takes milliseconds, this only bounds a hang."""


@dataclass(frozen=True)
class Read:
    client: int
    name: str
    status: int
    node: str | None
    cache: str | None
    exact: bool
    length: int


def _get(base_url: str, name: str) -> tuple[int, http.client.HTTPMessage, bytes]:
    """GET through HAProxy (which sends field names in lower case: look them up in the
    case-insensitive message, not a dict)."""
    parts = urllib.parse.urlsplit(base_url + name)
    assert parts.hostname is not None
    assert parts.port is not None
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=REQUEST_TIMEOUT)
    try:
        conn.request("GET", parts.path)
        response = conn.getresponse()
        return response.status, response.headers, response.read()
    finally:
        conn.close()


def read_everything(
    base_url: str, objects: dict[str, bytes], clients: int = CLIENTS, seed: int = 0
) -> list[Read]:
    """Each of ``clients`` threads reads every object once, all starting together, each in
    its own order (so the same object is asked for by several clients at the same moment).
    Bodies are compared at once and dropped (16 x 8 x 3 MiB would be 380 MiB of memory)."""
    start = threading.Barrier(clients, timeout=30)

    def client(number: int) -> list[Read]:
        order = list(objects)
        random.Random(seed * 1000 + number).shuffle(order)
        start.wait()
        reads = []
        for name in order:
            status, headers, body = _get(base_url, name)
            reads.append(
                Read(
                    number,
                    name,
                    status,
                    headers.get(NODE_HEADER),
                    headers.get("X-Cache"),
                    body == objects[name],
                    len(body),
                )
            )
        return reads

    with ThreadPoolExecutor(clients) as pool:
        futures = [pool.submit(client, n) for n in range(clients)]
        # Bounded: every request has its own timeout; this bounds the whole read.
        return [r for f in futures for r in f.result(timeout=REQUEST_TIMEOUT * len(objects))]


def assert_all_served(reads: list[Read], objects: dict[str, bytes], clients: int) -> None:
    assert len(reads) == clients * len(objects)
    bad = [r for r in reads if r.status != 200 or not r.exact]
    assert not bad, f"{len(bad)} reads failed or differ, e.g. {bad[:3]}"
    assert Counter(r.name for r in reads) == dict.fromkeys(objects, clients)


def node_of(reads: list[Read]) -> dict[str, str]:
    """Object -> the one node that served all its reads (asserting there was only one)."""
    nodes: dict[str, set[str | None]] = defaultdict(set)
    for r in reads:
        nodes[r.name].add(r.node)
    spread = {name: found for name, found in nodes.items() if len(found) != 1 or None in found}
    assert not spread, f"objects served by several nodes (or none): {spread}"
    return {name: str(next(iter(found))) for name, found in nodes.items()}


def origin_crossings(origin: NginxOrigin, mark: int) -> dict[str, tuple[int, int]]:
    """Origin path -> (requests, body bytes sent) after ``mark``."""
    found: dict[str, tuple[int, int]] = {}
    for entry in origin.access_log(mark):
        requests, sent = found.get(entry["path"], (0, 0))
        found[entry["path"]] = (requests + 1, sent + entry["body_bytes_sent"])
    return found


def fills(proxy: Proxy, mark: int) -> list[dict[str, object]]:
    """proxyd access-log entries after ``mark`` (the requests it received)."""
    return proxy.settled_access_log()[mark:]


_RETRIES = re.compile(r" \d+/\d+/\d+/\d+/\+\d+ ")
"""The actconn/feconn/beconn/srv_conn/retries field of an HAProxy httplog line whose request
was redispatched to another server ("+" before the retry count)."""


def redispatched(haproxy_log: str) -> int:
    """Requests HAProxy sent again to another node, from its log."""
    return sum(1 for line in haproxy_log.splitlines() if _RETRIES.search(line))


def upstream_bytes(proxy: Proxy) -> int:
    """Bytes the proxy received from its upstream (its metric counts what was read off the
    upstream connection; the access log's bytes_from_origin is per request, so coalesced
    requests would each count the bytes they shared)."""
    return int(proxy.metric_sum("proxyd_bytes_from_origin_total"))


# -- fixtures -----------------------------------------------------------------------------------


@pytest.fixture(scope="module", autouse=True)
def _haproxy_installed() -> None:
    haproxy_binary()  # fails with how to install it, rather than a confusing error later


@pytest.fixture
def origin(tmp_path: Path) -> Iterator[NginxOrigin]:
    """The far repository. /expiring/NAME serves NAME stale at once (max-age=0): a cache
    must ask upstream before reusing it, and may serve it stale when upstream is down."""
    expiring = Location(EXPIRING, headers={"Cache-Control": "max-age=0"})
    with NginxOrigin(
        tmp_path / "origin-root", tmp_path / "origin", locations=[expiring]
    ) as started:
        yield started


@pytest.fixture
def objects(origin: NginxOrigin) -> dict[str, bytes]:
    """The objects at the origin; backdated, so nginx's Last-Modified makes them fresh for a
    day (heuristic freshness) and no request in a test is a revalidation."""
    written = {}
    for seed, (name, size) in enumerate(OBJECTS.items()):
        written[name] = write_object(origin.root_dir, name, size, seed)
        age_file(origin.root_dir / name)
    return written


@pytest.fixture
def site(origin: NginxOrigin, objects: dict[str, bytes], tmp_path: Path) -> Iterator[Site]:
    with Site(origin.url, tmp_path / "site") as started:
        yield started


# -- the shipped files agree with one another ---------------------------------------------------


def test_shipped_configs_load_and_agree() -> None:
    """The proxyd files load without warnings, and what their comments promise holds: one
    block size on both tiers, the same upstream name, the child waits for the parent longer
    than the parent waits for the far repository, and HAProxy longer than the child."""
    child, child_warnings = load_settings(CHILD_TOML, {}, {})
    parent, parent_warnings = load_settings(PARENT_TOML, {}, {})
    assert child_warnings == []
    assert parent_warnings == []
    assert child.block_size == parent.block_size
    assert set(child.upstreams) == set(parent.upstreams) == {"far"}
    assert urllib.parse.urlsplit(child.upstreams["far"]).path == "/far"
    assert child.upstream_read_timeout > parent.upstream_read_timeout
    text = SITE_CFG.read_text()
    server_timeout = int(text.split("timeout server ")[1].split("s")[0])
    assert server_timeout > child.upstream_read_timeout
    assert len(shipped_children()) == 3
    assert shipped_toml(CHILD_TOML)["listen"] == shipped_toml(PARENT_TOML)["listen"]


# -- the deployment -----------------------------------------------------------------------------


def test_each_object_crosses_once_and_is_spread_over_children(
    site: Site, origin: NginxOrigin, objects: dict[str, bytes]
) -> None:
    assert site.haproxy is not None
    assert site.parent is not None
    assert set(site.haproxy.server_states(BACKEND).values()) == {"UP"}
    origin_mark = origin.mark()

    reads = read_everything(site.url, objects)

    assert_all_served(reads, objects, CLIENTS)
    # Once from the origin: one request per object, exactly its size, nothing else.
    assert origin_crossings(origin, origin_mark) == {
        f"/{name}": (1, len(data)) for name, data in objects.items()
    }
    # Once from the parent to the children: one request per object at the parent.
    parent_log = fills(site.parent, 0)
    assert Counter(e["target"] for e in parent_log) == {f"/far/{name}": 1 for name in objects}
    assert upstream_bytes(site.parent) == sum(map(len, objects.values()))
    # One node per object (consistent hashing on the URI) and more than one node in use.
    placed = node_of(reads)
    assert set(placed) == set(objects)
    assert len(set(placed.values())) > 1, f"all objects on one node: {placed}"
    # Each child's own log agrees with HAProxy's header: it served the 16 reads of exactly
    # the objects placed on it, and fetched each of them once.
    for name, child in site.children.items():
        log = fills(child, 0)
        mine = {obj for obj, node in placed.items() if node == name}
        assert Counter(e["target"] for e in log) == {f"/far/{obj}": CLIENTS for obj in mine}
        assert upstream_bytes(child) == sum(len(objects[o]) for o in mine)


def test_killed_child_objects_still_served_without_origin(
    site: Site, origin: NginxOrigin, objects: dict[str, bytes]
) -> None:
    assert site.haproxy is not None
    assert site.parent is not None
    placed = node_of(read_everything(site.url, objects))
    by_node = Counter(placed.values())
    victim = by_node.most_common(1)[0][0]
    moved = {obj for obj, node in placed.items() if node == victim}
    stayed = set(objects) - moved
    origin_mark, parent_mark = origin.mark(), len(fills(site.parent, 0))

    site.kill(victim)

    # At once, before the health check has noticed: the killed node refuses connections and
    # HAProxy retries those requests on another node.
    at_once = read_everything(site.url, objects, seed=1)
    assert_all_served(at_once, objects, CLIENTS)
    assert victim not in {r.node for r in at_once}
    assert redispatched(site.haproxy.log_text()) >= 1  # the retry path was taken
    # Consistent: the survivors' objects did not move, and came from their caches.
    assert {(r.name, r.node) for r in at_once if r.name in stayed} == {
        (obj, placed[obj]) for obj in stayed
    }
    assert {r.cache for r in at_once if r.name in stayed} == {"HIT"}
    # Nothing from the origin; the parent sent only moved objects, from its cache. A moved
    # object may be fetched by two survivors meanwhile: a retry goes to the next node on the
    # hash ring, while the node's removal from the ring (after 3 refused connections, or the
    # health check) hands its objects to the nearest node on either side.
    assert origin.access_log(origin_mark) == []
    parent_log = fills(site.parent, parent_mark)
    per_object = Counter(e["target"] for e in parent_log)
    assert set(per_object) == {f"/far/{obj}" for obj in moved}
    assert max(per_object.values()) <= len(site.children) - 1, per_object
    assert {e["cache"] for e in parent_log} == {"HIT"}
    assert upstream_bytes(site.parent) == sum(map(len, objects.values()))  # unchanged

    # The health check takes the node out (bounded: fall 2 x inter 1s, plus slack) ...
    wait_until(
        lambda: (
            site.haproxy is not None
            and site.haproxy.server_states(BACKEND)[victim].startswith("DOWN")
        ),
        timeout=30,
        interval=0.2,
        what=f"HAProxy marks {victim} DOWN",
    )
    # ... and afterwards each object has one node again, the survivors' objects the same as
    # at first, and still nothing comes from the origin.
    parent_mark = len(fills(site.parent, 0))
    later = read_everything(site.url, objects, seed=2)
    assert_all_served(later, objects, CLIENTS)
    final = node_of(later)
    assert victim not in final.values()
    assert {obj: final[obj] for obj in stayed} == {obj: placed[obj] for obj in stayed}
    assert origin.access_log(origin_mark) == []
    per_object = Counter(e["target"] for e in fills(site.parent, parent_mark))
    assert set(per_object) <= {f"/far/{obj}" for obj in moved}
    assert max(per_object.values(), default=1) == 1
    # Settled: a third read is all hits, on the same nodes, and asks nobody upstream.
    parent_mark = len(fills(site.parent, 0))
    settled = read_everything(site.url, objects, seed=3)
    assert_all_served(settled, objects, CLIENTS)
    assert node_of(settled) == final
    assert {r.cache for r in settled} == {"HIT"}
    assert fills(site.parent, parent_mark) == []
    assert origin.access_log(origin_mark) == []

    # The node comes back (same port, same cache directory). After HAProxy's rise checks its
    # objects return to it, and it serves them from the cache it kept on disk: hits, with
    # nothing asked of the parent or the origin.
    site.restart(victim)
    wait_until(
        lambda: site.haproxy is not None and site.haproxy.server_states(BACKEND)[victim] == "UP",
        timeout=30,
        interval=0.2,
        what=f"HAProxy marks {victim} UP again",
    )
    parent_mark = len(fills(site.parent, 0))
    back = read_everything(site.url, objects, seed=5)
    assert_all_served(back, objects, CLIENTS)
    assert node_of(back) == placed
    assert {r.cache for r in back} == {"HIT"}
    assert fills(site.parent, parent_mark) == []
    assert origin.access_log(origin_mark) == []


def test_parent_down_children_serve_what_they_hold(
    site: Site, origin: NginxOrigin, objects: dict[str, bytes]
) -> None:
    """The parent (or the link to it) down: what the children hold is still served, fresh
    as it is and expired content marked stale (stale_if_error); what they do not hold gets
    the child's 502, not retried by HAProxy on another child (which would fail the same)."""
    assert site.haproxy is not None
    read_everything(site.url, objects)
    names = list(objects)
    expiring = {EXPIRING.strip("/") + "/" + name: objects[name] for name in names[:2]}
    for name, data in expiring.items():
        status, headers, body = _get(site.url, name)
        assert (status, headers.get("X-Cache"), body == data) == (200, "MISS", True)
    unread = "run1/calexp/visit200/calexp_unread.fits"
    write_object(origin.root_dir, unread, MiB, seed=99)
    origin_mark = origin.mark()

    site.kill("parent")

    reads = read_everything(site.url, objects, seed=4)
    assert_all_served(reads, objects, CLIENTS)
    assert {r.cache for r in reads} == {"HIT"}
    for name, data in expiring.items():
        status, headers, body = _get(site.url, name)
        assert (status, headers.get("X-Cache"), body == data) == (200, "STALE", True)
    status, headers, _ = _get(site.url, unread)
    assert status == 502
    assert headers.get(NODE_HEADER) in site.children  # a child's answer, not HAProxy's
    assert redispatched(site.haproxy.log_text()) == 0
    assert origin.access_log(origin_mark) == []


def test_roundrobin_config_fails_the_once_per_node_assertion(
    origin: NginxOrigin, objects: dict[str, bytes], tmp_path: Path
) -> None:
    """The proof the main test can fail: the same site with ``balance roundrobin`` (a config
    mistake a reviewer could miss) sends each object to every child, so each child fetches
    it from the parent: the parent sees each object more than once."""
    text = SITE_CFG.read_text()
    broken = text.replace("    balance uri path-only\n", "    balance roundrobin\n")
    assert broken != text
    with Site(origin.url, tmp_path / "site", cfg_text=broken) as site:
        assert site.parent is not None
        reads = read_everything(site.url, objects)
        assert_all_served(reads, objects, CLIENTS)  # still correct, only wasteful
        with pytest.raises(AssertionError):
            node_of(reads)
        per_object = Counter(e["target"] for e in fills(site.parent, 0))
        assert all(count > 1 for count in per_object.values()), per_object


def test_render_refuses_a_config_that_drifted(tmp_path: Path) -> None:
    """The test runs the shipped file: if the lines it substitutes change, rendering fails
    rather than silently running something else."""
    text = SITE_CFG.read_text()
    with pytest.raises(ValueError, match="bind"):
        render_site_cfg(1, [2, 3, 4], tmp_path / "s", text=text.replace("bind :8080", "bind :80"))
    with pytest.raises(ValueError, match="children"):
        render_site_cfg(1, [2, 3], tmp_path / "s", text=text)
