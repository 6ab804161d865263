"""Two ``butler serve`` replicas of one repository behind HAProxy (issue 21, item 3).

The repository's registry is in PostgreSQL (the session's throwaway server) and both
replicas serve the same file tree. HAProxy runs config/haproxy/butler-replicas.cfg as
shipped, but for the addresses, the stats socket and the log target.
"""

from __future__ import annotations

import http.client
import os
import signal
import urllib.parse
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import make_summary_repo, unavailable
from haproxy import HAProxy, HAProxyNotFound, haproxy_binary, render
from nginx import free_port
from postgres import PostgresServer
from proxies import wait_until
from servers import READ_TOKEN, WRITE_TOKEN, ButlerServer, bearer
from test_proxy_tiers import redispatched

from butler import Butler

REPLICAS_CFG = Path(__file__).resolve().parent.parent / "config" / "haproxy" / "butler-replicas.cfg"
BACKEND = "butler_replicas"
HSC = {"instrument": "HSC"}


def render_replicas_cfg(frontend_port: int, ports: list[int], stats_socket: Path) -> str:
    return render(
        REPLICAS_CFG.read_text(),
        {
            "    bind :8080\n": f"    bind 127.0.0.1:{frontend_port}\n",
            "    log /dev/log local0\n": "    log stdout format raw local0\n",
            "stats socket /run/haproxy/admin.sock ": f"stats socket {stats_socket} ",
            "server replica1 10.0.0.21:8000": f"server replica1 127.0.0.1:{ports[0]}",
            "server replica2 10.0.0.22:8000": f"server replica2 127.0.0.1:{ports[1]}",
        },
        drop_lines=("chroot /var/lib/haproxy", "user haproxy", "group haproxy"),
    )


@dataclass
class Deployment:
    repo: Path
    replicas: dict[str, ButlerServer]
    haproxy: HAProxy

    def server_row(self, name: str) -> dict[str, str]:
        rows = [r for r in self.haproxy.stats() if r["pxname"] == BACKEND and r["svname"] == name]
        assert len(rows) == 1, rows
        return rows[0]


@pytest.fixture
def deployment(tmp_path: Path, postgres_server: PostgresServer) -> Iterator[Deployment]:
    try:
        haproxy_binary()
    except HAProxyNotFound as exc:
        unavailable(str(exc))
    repo = make_summary_repo(tmp_path / "repo", postgres_server.new_registry())
    replicas: dict[str, ButlerServer] = {}
    haproxy: HAProxy | None = None
    try:
        for name in ("replica1", "replica2"):
            workdir = tmp_path / name
            workdir.mkdir()
            replicas[name] = ButlerServer(repo, workdir).start()
        haproxy_dir = tmp_path / "haproxy"
        text = render_replicas_cfg(
            free_port(), [s.port for s in replicas.values()], haproxy_dir / "admin.sock"
        )
        haproxy = HAProxy(text, haproxy_dir, int(text.split("bind 127.0.0.1:")[1].split()[0]))
        haproxy.check()
        haproxy.start()
        running = haproxy
        wait_until(
            lambda: set(running.server_states(BACKEND).values()) == {"UP"},
            timeout=60,  # a loaded CI machine answers health checks slowly
            interval=0.1,
            what="both replicas pass HAProxy's first health check",
        )
        yield Deployment(repo, replicas, haproxy)
    finally:
        if haproxy is not None:
            haproxy.stop()
        for server in replicas.values():
            server.stop()


def get(url: str, token: str = READ_TOKEN) -> tuple[int, http.client.HTTPMessage, bytes]:
    parts = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=60)
    try:
        target = parts.path + (f"?{parts.query}" if parts.query else "")
        conn.request("GET", target, headers=bearer(token))
        response = conn.getresponse()
        return response.status, response.headers, response.read()
    finally:
        conn.close()


def test_a_write_through_one_replica_is_seen_through_the_other_at_once(
    deployment: Deployment,
) -> None:
    one, other = deployment.replicas.values()
    expected: dict[tuple[int, int], int] = {}
    for i in range(8):
        writer, reader = (one, other) if i % 2 == 0 else (other, one)
        visit, detector = 101 + i // 4, i % 4
        with Butler(writer.url, run="shared", token=WRITE_TOKEN) as remote:
            remote.put({"i": i}, "summary", HSC, visit=visit, detector=detector)
        expected[(visit, detector)] = i
        # The very next request, to the other replica: the write is there.
        with Butler(reader.url, collections="shared", token=READ_TOKEN) as remote:
            assert remote.get("summary", HSC, visit=visit, detector=detector) == {"i": i}
            refs = remote.query_datasets("summary")
            assert {(r.data_id["visit"], r.data_id["detector"]) for r in refs} == set(expected)
    # Through the balancer, reads alternate between the replicas and all agree.
    answered_by = []
    for _ in range(4):
        with Butler(deployment.haproxy.url, collections="shared", token=READ_TOKEN) as remote:
            got = {
                (r.data_id["visit"], r.data_id["detector"]): remote.get(r)["i"]
                for r in remote.query_datasets("summary")
            }
        assert got == expected
        status, headers, _ = get(deployment.haproxy.url + "api/v1/collections")
        assert status == 200
        answered_by.append(headers["X-Butler-Replica"])
    assert set(answered_by) == {"replica1", "replica2"}


def test_a_remote_transaction_stays_on_the_replica_that_began_it(
    deployment: Deployment,
) -> None:
    # Begin, uploads and commit are separate requests; the balancer alternates replicas,
    # so without the stick table half of them would reach the replica that never saw it.
    for round_ in range(4):
        with (
            Butler(deployment.haproxy.url, run=f"txn{round_}", token=WRITE_TOKEN) as remote,
            remote.transaction(),
        ):
            for detector in range(4):
                remote.put({"d": detector}, "summary", HSC, visit=105, detector=detector)
    with Butler(deployment.repo) as local:
        for round_ in range(4):
            refs = local.query_datasets("summary", collections=f"txn{round_}")
            assert sorted(local.get(r)["d"] for r in refs) == [0, 1, 2, 3]


def test_a_replica_killed_mid_request_leaves_clients_served_by_the_other(
    deployment: Deployment,
) -> None:
    with Butler(deployment.repo) as local:
        files = {
            local.get_file_info(r).path: (deployment.repo / local.get_file_info(r).path)
            for r in local.query_datasets("summary", collections="run1")
        }
    expected = {path: full.read_bytes() for path, full in files.items()}
    victim = deployment.replicas["replica1"]
    assert victim.process is not None
    # The victim stops answering: requests the balancer sends it wait on its connections.
    os.kill(victim.process.pid, signal.SIGSTOP)
    try:
        urls = [deployment.haproxy.url + "files/" + p for p in sorted(expected)] * 4
        with ThreadPoolExecutor(len(urls)) as pool:
            futures = [pool.submit(get, url) for url in urls]
            wait_until(
                lambda: int(deployment.server_row("replica1")["scur"] or 0) >= 1,
                timeout=30,
                interval=0.05,
                what="requests held by the stopped replica",
            )
            held = int(deployment.server_row("replica1")["scur"])
            victim.kill()  # SIGKILL, mid-request: its connections drop unanswered
            answers = [f.result(timeout=120) for f in futures]
    finally:
        if victim.process is not None:
            os.kill(victim.process.pid, signal.SIGCONT)
    for url, (status, headers, body) in zip(urls, answers, strict=True):
        assert status == 200, (url, status, body[:200])
        assert body == expected[url.split("/files/", 1)[1]]
        assert headers["X-Butler-Replica"] == "replica2"
    assert held >= 1
    # Each request the victim held was sent again, to the other replica (HAProxy writes a
    # request's log line just after its answer: wait for them).
    wait_until(
        lambda: redispatched(deployment.haproxy.log_text()) >= held,
        timeout=10,
        what=f"{held} redispatched requests in HAProxy's log",
    )
    # Writes and reads go on through the balancer, on the surviving replica.
    with Butler(deployment.haproxy.url, run="after", token=WRITE_TOKEN) as remote:
        remote.put({"after": True}, "summary", HSC, visit=109, detector=3)
        assert remote.get("summary", HSC, visit=109, detector=3, collections="after") == {
            "after": True
        }
