"""Hardening of ``butler serve``: shared staging, the token side door, request bodies,
secrets in the access log, malformed requests and slow clients — each against a real server
(``butler serve`` in a child process on 127.0.0.1)."""

from __future__ import annotations

import http.client
import json
import os
import select
import shutil
import socket
import subprocess
import sys
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import populate_dimensions, unavailable
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from servers import READ_TOKEN, TOKENS_YAML, WRITE_TOKEN, ButlerServer

from butler import Butler
from butler.datastore import STAGING_DIR, make_locked_dir, recover_stale_staging
from butler.server.transactions import REMOTE_STAGING_DIR, TransactionManager

HSC = {"instrument": "HSC"}
API = "api/v1/"
WRITE = {"Authorization": f"Bearer {WRITE_TOKEN}"}


def make_repo(root: Path) -> Path:
    with Butler.create(root) as butler:
        populate_dimensions(butler)
        butler.register_dataset_type("summary", ["visit", "detector"], "Dict")
    return root


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    return make_repo(tmp_path / "repo")


@pytest.fixture
def server(repo: Path, tmp_path: Path) -> Iterator[ButlerServer]:
    srv = ButlerServer(repo, tmp_path).start()
    yield srv
    srv.stop()


def call(
    method: str,
    url: str,
    body: Any = None,
    headers: dict[str, str] | None = None,
    raw: bytes | None = None,
) -> tuple[int, bytes]:
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    request = urllib.request.Request(url, data=data, method=method, headers=headers or {})  # noqa: S310
    try:
        with urllib.request.urlopen(request, timeout=60) as response:  # noqa: S310
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def transaction_dirs(repo: Path) -> list[Path]:
    root = repo / REMOTE_STAGING_DIR
    servers = [p for p in root.iterdir() if p.is_dir()] if root.exists() else []
    return [p for s in servers for p in s.iterdir() if p.is_dir()]


def staged_files(repo: Path) -> list[Path]:
    root = repo / REMOTE_STAGING_DIR
    return [p for p in root.rglob("*") if p.is_file() and p.name != "lock"] if root.exists() else []


# -- 1. staging shared by several servers; read-only servers write nothing ---------------------


def test_a_second_server_keeps_the_first_servers_staged_uploads(repo: Path, tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first = ButlerServer(repo, tmp_path / "a").start()
    second = ButlerServer(repo, tmp_path / "b")
    try:
        with Butler(first.url, run="shared", token=WRITE_TOKEN) as butler:
            with butler.transaction():
                butler.put({"staged": "before B"}, "summary", HSC, visit=100, detector=0)
                assert len(transaction_dirs(repo)) == 1  # staged in A, not committed
                second.start()  # its start-up recovery must leave A's upload alone
                assert len(transaction_dirs(repo)) == 1
            assert butler.get("summary", HSC, visit=100, detector=0) == {"staged": "before B"}
        with Butler(second.url, collections="shared") as via_second:
            assert via_second.get("summary", HSC, visit=100, detector=0) == {"staged": "before B"}
    finally:
        second.stop()
        first.stop()


def test_recovery_leaves_a_live_remote_transaction_intact(repo: Path) -> None:
    """Deterministic: a live manager's staged upload survives another manager's start-up;
    a dead server's directory (its lock free) is removed."""
    dead, fd = make_locked_dir(repo / REMOTE_STAGING_DIR)
    (dead / "left-over").write_bytes(b"x")
    os.close(fd)  # the server that made it died
    live = TransactionManager(repo, ttl=3600)
    txn = live.begin("writer")
    upload = txn.upload_path(str(uuid.uuid4()))
    upload.write_bytes(b'{"a": 1}')
    other = TransactionManager(repo, ttl=3600)
    try:
        assert upload.read_bytes() == b'{"a": 1}'
        assert live.get(txn.id, "writer").directory.is_dir()
        assert not dead.exists()
        assert sorted(p.name for p in (repo / REMOTE_STAGING_DIR).iterdir()) == sorted(
            [live.directory.name, other.directory.name]
        )
    finally:
        other.close()
        live.close()
    assert list((repo / REMOTE_STAGING_DIR).iterdir()) == []


def test_recovery_leaves_a_live_local_transaction_intact(repo: Path) -> None:
    """Deterministic: explicit recovery during an open local transaction keeps its staged
    file; after the commit the dataset reads back."""
    with Butler(repo, run="local") as butler:
        with butler.transaction():
            butler.put({"v": 1}, "summary", HSC, visit=101, detector=0)
            staged = [p for p in (repo / STAGING_DIR).rglob("*") if p.is_file()]
            assert any(p.name != "lock" for p in staged)
            before = {p: p.read_bytes() for p in staged}
            assert recover_stale_staging(repo, lambda ids: set()) == 0
            assert {p: p.read_bytes() for p in staged if p.exists()} == before
        assert butler.get("summary", HSC, visit=101, detector=0) == {"v": 1}


@pytest.fixture
def read_only_mount(repo: Path, tmp_path: Path) -> Iterator[Path]:
    """``repo`` bind-mounted read-only (needs root and mount permission)."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        unavailable("a read-only bind mount needs root and mount(8)")
    with Butler(repo, run="run1") as butler:
        butler.put({"on": "read-only media"}, "summary", HSC, visit=102, detector=0)
    target = tmp_path / "ro"
    target.mkdir()
    made = subprocess.run(["mount", "--bind", str(repo), str(target)], capture_output=True)  # noqa: S603, S607
    if made.returncode != 0:
        unavailable(f"cannot bind-mount here: {made.stderr.decode(errors='replace')}")
    try:
        subprocess.run(  # noqa: S603
            ["mount", "-o", "remount,ro,bind", str(target)],  # noqa: S607
            check=True,
            capture_output=True,
        )
        assert not os.access(target, os.W_OK)  # really read-only, even for root
        yield target
    finally:
        subprocess.run(["umount", str(target)], check=True)  # noqa: S603, S607


def test_a_read_only_server_starts_and_serves_on_a_read_only_mount(
    read_only_mount: Path, tmp_path: Path
) -> None:
    with (
        ButlerServer(read_only_mount, tmp_path, "--read-only", tokens=False) as srv,
        Butler(srv.url, collections="run1") as butler,
    ):
        assert butler.get("summary", HSC, visit=102, detector=0) == {"on": "read-only media"}
    assert not (read_only_mount / REMOTE_STAGING_DIR).exists()


# -- 2. --read-access token: no side door; tokens files say only what is enforced ------------


@pytest.fixture
def token_server(repo: Path, tmp_path: Path) -> Iterator[ButlerServer]:
    with Butler(repo, run="secret-run") as butler:
        butler.put({"v": 1}, "summary", HSC, visit=100, detector=0)
    srv = ButlerServer(repo, tmp_path, "--read-access", "token").start()
    yield srv
    srv.stop()


@pytest.mark.parametrize(
    "path",
    [
        "dataset-types/x%2Fopenapi.json",
        "dataset-types/openapi.json",
        "collections/x/openapi.json",
        "collections/openapi.json",
        "datasets/openapi.json",
    ],
)
def test_paths_ending_in_openapi_json_need_a_token(token_server: ButlerServer, path: str) -> None:
    status, body = call("GET", token_server.url + API + path)
    assert status == 401
    for name in (b"summary", b"secret-run"):
        assert name not in body
    status, body = call(
        "GET", token_server.url + API + path, headers={"Authorization": f"Bearer {READ_TOKEN}"}
    )
    assert status in (400, 404)  # an ordinary answer, once authenticated


def test_only_the_openapi_document_itself_is_public(token_server: ButlerServer) -> None:
    status, body = call("GET", token_server.url + API + "openapi.json")
    assert status == 200
    assert json.loads(body)["openapi"].startswith("3.")


@pytest.mark.parametrize(
    ("tokens_yaml", "unknown"),
    [
        (TOKENS_YAML + "    max_bytes_per_day: 1000\n", "max_bytes_per_day"),
        (TOKENS_YAML + "rate_limit: 10\n", "rate_limit"),
    ],
)
def test_unknown_keys_in_the_tokens_file_stop_the_server(
    repo: Path, tmp_path: Path, tokens_yaml: str, unknown: str
) -> None:
    tokens = tmp_path / "tokens.yaml"
    tokens.write_text(tokens_yaml)
    result = subprocess.run(  # noqa: S603
        [sys.executable, "-m", "butler.cli.main", "serve", str(repo), "--port", "0"]
        + ["--tokens", str(tokens)],
        capture_output=True,
        timeout=60,
    )
    assert result.returncode != 0
    message = result.stderr.decode()
    assert unknown in message
    assert "allowed keys" in message
    assert "Traceback" not in message


# -- 3. request bodies: bounded memory, refused before they are read ------------------------


def rss_peak_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM in /proc status")


def send_until_answered(
    port: int, head: bytes, chunks: int, chunk: bytes, chunked: bool
) -> tuple[int, int]:
    """Send ``head`` then up to ``chunks`` body chunks, stopping as soon as the server
    answers; returns (status, body bytes sent)."""
    sent = 0
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(head)
        for _ in range(chunks):
            if select.select([sock], [], [], 0)[0]:
                break
            piece = (b"%x\r\n" % len(chunk) + chunk + b"\r\n") if chunked else chunk
            try:
                sock.sendall(piece)
            except (BrokenPipeError, ConnectionResetError):
                break
            sent += len(chunk)
        else:
            if chunked:
                sock.sendall(b"0\r\n\r\n")
        response = http.client.HTTPResponse(sock)
        response.begin()
        return response.status, sent


@pytest.mark.parametrize("chunked", [False, True])
def test_a_huge_json_body_is_413_and_server_memory_stays_bounded(
    server: ButlerServer, chunked: bool
) -> None:
    assert server.process is not None
    pid = server.process.pid
    before = rss_peak_kib(pid)
    total = 200 * 2**20
    chunk = b" " * 2**20
    length = b"Transfer-Encoding: chunked\r\n" if chunked else b"Content-Length: %d\r\n" % total
    head = (
        b"POST /api/v1/datasets/query HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        + length
        + b"\r\n"
    )
    status, sent = send_until_answered(server.port, head, total // len(chunk), chunk, chunked)
    grown_mib = (rss_peak_kib(pid) - before) / 1024
    assert grown_mib < 100, f"server peak memory grew {grown_mib:.0f} MiB"
    assert status == 413
    assert sent < total  # refused while the body was still coming
    status, _ = call("GET", server.url + "healthz")
    assert status == 200


def test_an_unauthenticated_upload_is_refused_before_its_body_is_read(
    repo: Path, server: ButlerServer
) -> None:
    status, body = call("POST", server.url + API + "transactions", raw=b"", headers=WRITE)
    txn = json.loads(body)["id"]
    head = (
        f"PUT /api/v1/transactions/{txn}/uploads/{uuid.uuid4()} HTTP/1.1\r\nHost: x\r\n"
        f"Content-Length: {2**30}\r\n\r\n"
    ).encode()
    status, sent = send_until_answered(server.port, head, 1024, b"x" * 2**20, chunked=False)
    assert status == 401
    assert sent < 2**30
    assert staged_files(repo) == [p for p in staged_files(repo) if p.name == "transaction.json"]


def test_an_upload_over_the_limit_is_413_before_it_is_read(repo: Path, tmp_path: Path) -> None:
    with ButlerServer(repo, tmp_path, "--max-upload-bytes", "1000000") as srv:
        status, body = call("POST", srv.url + API + "transactions", raw=b"", headers=WRITE)
        txn = json.loads(body)["id"]
        url = f"{srv.url}{API}transactions/{txn}/uploads/{uuid.uuid4()}"
        status, body = call("PUT", url, raw=b"x" * 1_000_001, headers=WRITE)
        assert status == 413
        assert b"1000000" in body
        status, _ = call("PUT", url, raw=b"{}", headers=WRITE)
        assert status == 200


# -- 4. no secrets in the access log -------------------------------------------------------


def test_signed_url_parameters_and_tokens_stay_out_of_the_access_log(
    server: ButlerServer,
) -> None:
    secrets = ["SIGsecret0123", "AKIAcredential456", "SESSIONtoken789", "bearer0secret"]
    query = (
        f"X-Amz-Signature={secrets[0]}&X-Amz-Credential={secrets[1]}"
        f"&X-Amz-Security-Token={secrets[2]}&access_token={secrets[3]}&visit=100"
    )
    status, _ = call("GET", f"{server.url}files/run1/summary/some/file.json?{query}", headers=WRITE)
    assert status == 404
    server.access_log()  # waits until the line is written
    log = server.log_text()
    assert "/files/run1/summary/some/file.json?" in log
    assert "visit=100" in log
    for secret in [*secrets, WRITE_TOKEN]:
        assert secret not in log


# -- 5. malformed requests are 400s that say what is wrong ---------------------------------


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


@pytest.mark.parametrize(
    ("body", "named"),
    [
        ({"dataset_type": "summary", "limit": [1]}, "limit"),
        ({"dataset_type": "summary", "offset": "x"}, "offset"),
        ({"dataset_type": ["summary"]}, "dataset_type"),
        ({"dataset_type": "summary", "data_id": {"visit": {"a": 1}}}, "data_id.visit"),
        ({"dataset_type": "summary", "bind": {"v": [[1]]}}, "bind.v[0]"),
        ({"dataset_type": "summary", "find_first": "yes"}, "find_first"),
        ({"dataset_type": "summary", "where": 3}, "where"),
        ({"dataset_type": "summary", "data_id": {"instrument": "\ud800"}}, "data_id.instrument"),
        ({"dataset_type": "summary", "data_id": {"visit": 2**64}}, "data_id.visit"),
        ({"dataset_type": "summary", "offset": 2**64}, "offset"),
        ({"dataset_type": "summary", "rows": 5}, "rows"),
    ],
)
def test_wrongly_typed_query_bodies_are_400_naming_the_field(
    server: ButlerServer, body: dict[str, Any], named: str
) -> None:
    status, answer = call("POST", server.url + API + "datasets/query", body)
    assert status == 400, answer
    assert named in json.loads(answer)["message"]


def test_deeply_nested_json_is_400(server: ButlerServer) -> None:
    raw = b'{"dataset_type": "summary", "bind": {"v": ' + nested(100_000).encode() + b"}}"
    status, answer = call("POST", server.url + API + "datasets/query", raw=raw)
    assert status == 400
    assert "nested" in json.loads(answer)["message"]
    url = f"{server.url}{API}datasets?dataset_type=summary&data_id=" + nested(50_000)
    status, answer = call("GET", url)
    assert status == 400


@pytest.mark.parametrize(
    "operation",
    [
        {"op": "register_run", "name": ["x"]},
        {"op": "insert_dimension_records", "element": "band", "records": "r"},
        {"op": "insert_dimension_records", "element": "band", "records": [{"name": {}}]},
        {"op": "register_dataset_type", "name": "t", "dimensions": "visit", "storage_class": 1},
        {"op": "remove", "refs": [{"id": 5}]},
        {"op": "remove", "refs": [{"id": str(uuid.UUID(int=1)), "dataset_type": 3}]},
        {"op": "remove", "refs": [{"id": str(uuid.UUID(int=1)), "dataset_type": {}, "run": []}]},
        {"op": "set_collection_chain", "name": "c", "children": [1]},
        {"op": 7},
    ],
)
def test_wrongly_typed_operations_are_400(server: ButlerServer, operation: dict[str, Any]) -> None:
    status, answer = call(
        "POST", server.url + API + "operations", {"operations": [operation]}, WRITE
    )
    assert status == 400, answer


@pytest.mark.parametrize("content", [b"not json at all", b"[1, 2]", nested(100_000).encode()])
def test_a_non_json_upload_committed_as_dict_is_400_without_server_paths(
    repo: Path, server: ButlerServer, content: bytes
) -> None:
    status, body = call("POST", server.url + API + "transactions", raw=b"", headers=WRITE)
    txn = json.loads(body)["id"]
    dataset_id = str(uuid.uuid4())
    status, _ = call(
        "PUT",
        f"{server.url}{API}transactions/{txn}/uploads/{dataset_id}",
        raw=content,
        headers=WRITE,
    )
    assert status == 200
    put = {
        "op": "put",
        "id": dataset_id,
        "dataset_type": "summary",
        "data_id": {**HSC, "visit": 100, "detector": 0},
        "run": "uploads",
    }
    status, answer = call(
        "POST", f"{server.url}{API}transactions/{txn}/commit", {"operations": [put]}, WRITE
    )
    assert status == 400, answer
    message = json.loads(answer)["message"]
    assert dataset_id in message
    assert "Dict" in message
    assert str(repo) not in message
    assert str(repo.parent) not in message
    with Butler(repo) as local:
        assert local.registry.count_datasets() == 0  # nothing became visible


SCALAR = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats()
    | st.text(max_size=20)
    | st.sampled_from(["HSC", "r", "summary", "100", "run1", ""])
)
KEYS = st.sampled_from(["instrument", "visit", "detector", "band", "v", "id"]) | st.text(max_size=8)
JSON = st.recursive(
    SCALAR,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(KEYS, inner, max_size=4),
    max_leaves=12,
)
"""Any JSON value; objects favour the names of real dimensions and fields."""


def fields_of(names: list[str]) -> st.SearchStrategy[dict[str, Any]]:
    """Objects with some of an endpoint's own fields (arbitrary values) and maybe others."""
    return st.dictionaries(st.sampled_from(names) | KEYS, JSON, max_size=len(names))


QUERY_FIELDS = [
    "dataset_type",
    "collections",
    "where",
    "bind",
    "data_id",
    "find_first",
    "limit",
    "offset",
]
OPERATION_FIELDS = [
    "op",
    "id",
    "dataset_type",
    "data_id",
    "run",
    "checksum",
    "refs",
    "element",
    "records",
    "skip_existing",
    "name",
    "dimensions",
    "storage_class",
    "formatter",
    "doc",
    "children",
]
OPS = [
    "put",
    "remove",
    "insert_dimension_records",
    "register_dataset_type",
    "register_run",
    "set_collection_chain",
]


def operation_bodies() -> st.SearchStrategy[Any]:
    op = st.builds(
        lambda kind, rest: {**rest, "op": kind},
        st.sampled_from(OPS) | JSON,
        fields_of(OPERATION_FIELDS),
    )
    return st.one_of(JSON, st.builds(lambda ops: {"operations": ops}, st.lists(op, max_size=3)))


INTEGER_TEXT = st.integers(min_value=-(2**70), max_value=2**70).map(str) | st.text(max_size=10)


@settings(
    max_examples=80,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    query=st.one_of(JSON, fields_of(QUERY_FIELDS)),
    params=st.tuples(JSON, JSON),
    operations=operation_bodies(),
    bundle=st.one_of(JSON, st.builds(lambda p: {"paths": p}, JSON)),
    page=st.tuples(INTEGER_TEXT, INTEGER_TEXT),
)
def test_arbitrary_json_never_gets_a_5xx(
    server: ButlerServer,
    query: Any,
    params: tuple[Any, Any],
    operations: Any,
    bundle: Any,
    page: tuple[str, str],
) -> None:
    base = server.url + API
    answers = [
        call("POST", base + "datasets/query", query),
        call("POST", base + "operations", operations, WRITE),
        call("POST", base + "files/bundle", bundle),
    ]
    status, body = call("POST", base + "transactions", raw=b"", headers=WRITE)
    txn = json.loads(body)["id"]
    answers.append(call("POST", f"{base}transactions/{txn}/commit", operations, WRITE))
    bind, data_id = (urllib.request.quote(json.dumps(v)) for v in params)
    limit, offset = (urllib.request.quote(v) for v in page)
    for path in (
        "datasets?dataset_type=summary&",
        "data-ids?dimensions=visit&",
        "dimensions/visit/records?",
        "dimensions/visit/values?",
        "datasets/summary?dataset_type=summary&",
        "find?dataset_type=summary&",
    ):
        query_string = f"bind={bind}&data_id={data_id}&limit={limit}&offset={offset}"
        answers.append(call("GET", f"{base}{path}{query_string}"))
    for status, body in answers:
        assert status < 500, body


# -- 6. slow clients -------------------------------------------------------------------------


def closed_by_peer(sock: socket.socket) -> bool:
    """Whether the server closed ``sock`` (EOF or reset); False while it is open."""
    if not select.select([sock], [], [], 0)[0]:
        return False
    try:
        return sock.recv(4096) == b""
    except (ConnectionResetError, BrokenPipeError):
        return True


def test_slow_header_clients_are_cut_off_and_others_still_served(
    repo: Path, tmp_path: Path
) -> None:
    with ButlerServer(repo, tmp_path, "--idle-timeout", "1", tokens=False) as srv:
        header = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"a" * 400 + b"\r\n\r\n"
        slow = [socket.create_connection(("127.0.0.1", srv.port), timeout=5) for _ in range(20)]
        assert slow
        try:
            open_ones = list(slow)
            for position in range(len(header)):  # bounded: one byte a step, never completes
                if not open_ones:
                    break
                readable = select.select(open_ones, [], [], 0.05)[0]
                for sock in list(open_ones):
                    if sock in readable and closed_by_peer(sock):
                        open_ones.remove(sock)
                        continue
                    try:
                        sock.sendall(header[position : position + 1])
                    except (BrokenPipeError, ConnectionResetError):
                        open_ones.remove(sock)
                status, _ = call("GET", srv.url + "healthz")
                assert status == 200
            assert open_ones == [], f"{len(open_ones)} slow connection(s) still open"
        finally:
            for sock in slow:
                sock.close()


def test_connections_over_the_limit_are_closed_and_service_resumes(
    repo: Path, tmp_path: Path
) -> None:
    with ButlerServer(
        repo, tmp_path, "--idle-timeout", "1", "--max-connections", "4", tokens=False
    ) as srv:
        held = [socket.create_connection(("127.0.0.1", srv.port), timeout=5) for _ in range(4)]
        extra = socket.create_connection(("127.0.0.1", srv.port), timeout=5)
        try:
            select.select([extra], [], [], 5)
            assert closed_by_peer(extra)
            for _ in range(100):  # bounded: the idle ones are closed after --idle-timeout
                if all(select.select([s], [], [], 0.05)[0] for s in held):
                    break
            assert all(closed_by_peer(s) for s in held)
            status, _ = call("GET", srv.url + "healthz")
            assert status == 200
        finally:
            for sock in [*held, extra]:
                sock.close()


@pytest.mark.parametrize("upload", [False, True])
def test_a_stalled_request_body_is_408(repo: Path, tmp_path: Path, upload: bool) -> None:
    with ButlerServer(repo, tmp_path, "--body-timeout", "1") as srv:
        if upload:
            status, body = call("POST", srv.url + API + "transactions", raw=b"", headers=WRITE)
            txn = json.loads(body)["id"]
            target = f"PUT /api/v1/transactions/{txn}/uploads/{uuid.uuid4()}"
        else:
            target = "POST /api/v1/datasets/query"
        head = (
            f"{target} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {WRITE_TOKEN}\r\n"
            "Content-Length: 100\r\n\r\n"
        ).encode()
        with socket.create_connection(("127.0.0.1", srv.port), timeout=30) as sock:
            sock.sendall(head + b'{"dataset_type": ')  # then nothing more
            response = http.client.HTTPResponse(sock)
            response.begin()
            assert response.status == 408
            assert b"1.0 s" in response.read()  # the message says how long it waited
        assert staged_files(repo) == [p for p in staged_files(repo) if p.name == "transaction.json"]
