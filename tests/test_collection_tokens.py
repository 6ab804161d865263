"""Tokens limited to collections (issue 18, item 2), two groups of users.

Survey A's members (alice, amy) hold tokens for ``surveyA/*``, survey B's (bob) for
``surveyB/*``. The server filters queries over all collections to the token's, refuses
queries, files and writes naming the other group's, and through proxyd a token for A never
receives cached bytes (or a cached query answer) of B.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from conftest import populate_dimensions
from proxies import Proxy, running
from servers import WRITE_TOKEN, ButlerServer, bearer, served

from butler import Butler, Image
from butler.errors import AuthorizationError

HSC = {"instrument": "HSC"}
ALICE = "alice-token-0123456789abcdef"
AMY = "amy-token-0123456789abcdef01"
BOB = "bob-token-0123456789abcdef01"
TOKENS = f"""
tokens:
  - name: writer
    token: "{WRITE_TOKEN}"
    scopes: [read, write]
  - name: alice
    token: "{ALICE}"
    scopes: [read, write]
    collections: ["surveyA/*"]
  - name: amy
    token: "{AMY}"
    collections: ["surveyA/*"]
  - name: bob
    token: "{BOB}"
    collections: ["surveyB/*"]
"""


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    rng = np.random.default_rng(5)
    with Butler.create(root) as butler:
        populate_dimensions(butler)
        butler.register_dataset_type("calexp", ["visit", "detector"], "Image")
    for run, detector in (("surveyA/run1", 0), ("surveyB/run1", 1)):
        with Butler(root, run=run) as butler:
            image = rng.normal(size=(200, 200)).astype(np.float32)
            butler.put(Image(image), "calexp", HSC, visit=100, detector=detector)
    return root


@pytest.fixture
def server(repo: Path, tmp_path: Path) -> Iterator[ButlerServer]:
    with served(repo, tmp_path / "server", "--read-access", "token", tokens_yaml=TOKENS) as server:
        yield server


@pytest.fixture
def proxy(server: ButlerServer, tmp_path: Path) -> Iterator[Proxy]:
    with running(Proxy({"repo": server.url}, tmp_path / "proxy")) as p:
        yield p


def paths(server: ButlerServer) -> dict[str, str]:
    with Butler(server.url, token=WRITE_TOKEN) as butler:
        return {ref.run: butler.get_file_info(ref).path for ref in butler.query_datasets("calexp")}


def test_the_server_filters_and_refuses_by_collection(server: ButlerServer) -> None:
    with Butler(server.url, token=ALICE, writeable=True) as alice:
        # Over all collections: filtered to the token's (its view of the repository).
        assert {ref.run for ref in alice.query_datasets("calexp")} == {"surveyA/run1"}
        assert alice.query.calexp.count() == 1
        assert [c["name"] for c in alice.query_collections()] == ["surveyA/run1"]
        # Naming another group's collection: refused, not answered from a part.
        with pytest.raises(AuthorizationError, match="surveyB/run1"):
            alice.query_datasets("calexp", collections="surveyB/run1")
        with pytest.raises(AuthorizationError, match="surveyB/run1"):
            alice.query_datasets("calexp", collections=["surveyA/run1", "surveyB/run1"])
        # Writes into the other group's collections are refused too; its own are not.
        with pytest.raises(AuthorizationError, match="surveyB/new"):
            alice.register_run("surveyB/new")
        assert alice.register_run("surveyA/new")
    with Butler(server.url, token=BOB) as bob:
        assert {ref.run for ref in bob.query_datasets("calexp")} == {"surveyB/run1"}


def test_through_the_proxy_a_group_never_gets_the_other_groups_bytes(
    server: ButlerServer, proxy: Proxy
) -> None:
    files = paths(server)
    a_path, b_path = "repo/files/" + files["surveyA/run1"], "repo/files/" + files["surveyB/run1"]
    mark = server.mark()
    b_file = proxy.get(b_path, bearer(BOB))
    a_file = proxy.get(a_path, bearer(ALICE))
    assert (b_file.status, a_file.status) == (200, 200)
    assert server.file_bytes_sent(mark) == len(a_file.body) + len(b_file.body)

    mark = server.mark()
    for extra, method in (({}, "GET"), ({"Range": "bytes=0-4095"}, "GET"), ({}, "HEAD")):
        refused = proxy.get(b_path, {**bearer(ALICE), **extra}, method=method)
        assert refused.status == 403, (extra, method)
        assert b_file.body[-4096:] not in refused.body
        assert b_file.body[:4096] not in refused.body
    # amy (survey A too) shares alice's cached file: a 304, no bytes.
    shared = proxy.get(a_path, bearer(AMY))
    assert (shared.status, shared.body) == (200, a_file.body)
    answers = server.file_requests(mark)
    assert {e["status"] for e in answers} == {"403", "304"}
    assert sum(int(e["bytes"]) for e in answers if e["status"] == "304" and e["bytes"] != "-") == 0
    assert all(int(e["bytes"]) < 1000 for e in answers if e["status"] == "403")

    # One URL for a query over all collections: each token gets its own group's answer,
    # never the other group's cached one.
    query = "repo/api/v1/datasets?dataset_type=calexp"
    for token, run in ((BOB, "surveyB/run1"), (ALICE, "surveyA/run1"), (BOB, "surveyB/run1")):
        answer = proxy.get(query, bearer(token))
        assert answer.status == 200
        other = "surveyA/run1" if run == "surveyB/run1" else "surveyB/run1"
        assert run.encode() in answer.body
        assert other.encode() not in answer.body
