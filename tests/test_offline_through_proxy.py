"""The repository server down, a site proxy up (issue 18, item 4).

What a colleague asked through proxyd before (the repository's info, queries, files) is
answered by proxyd marked stale; what nobody asked gives an error naming the repository
that cannot be reached. Both for a public and for a private (token) repository.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import make_summary_repo
from proxies import Proxy, running
from servers import READ_TOKEN, ButlerServer

from butler import Butler
from butler.errors import ButlerError, RemoteUnavailableError


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    return make_summary_repo(tmp_path / "repo")


@pytest.mark.parametrize("access", ["public", "token"])
def test_cached_answers_survive_the_server(repo: Path, tmp_path: Path, access: str) -> None:
    workdir = tmp_path / "server"
    workdir.mkdir()
    server = ButlerServer(repo, workdir, "--read-access", access).start()
    token = READ_TOKEN if access == "token" else None
    try:
        with running(Proxy({"repo": server.url}, tmp_path / "proxy")) as proxy:
            url = proxy.upstream_url("repo")
            with Butler(url, collections="run1", token=token, cache_dir=tmp_path / "a") as a:
                refs = a.query_datasets("summary")
                assert a.query.summary.count() == 2
                values = [a.get(ref) for ref in refs]
            server.stop()
            mark = proxy.mark()
            with Butler(url, collections="run1", token=token, cache_dir=tmp_path / "b") as b:
                assert b.query_datasets("summary") == refs
                assert b.query.summary.count() == 2
                assert [b.get(ref) for ref in refs] == values
                with pytest.raises(ButlerError) as never:
                    b.query_datasets("summary", where="detector = 1")
            message = str(never.value)
            assert url in message
            assert "cannot be reached" in message
            assert isinstance(never.value, RemoteUnavailableError)
            served = proxy.entries_since(mark, 1)
            answered = [e for e in served if e["status"] in (200, 206)]
            assert answered
            assert {e["cache"] for e in answered} <= {"STALE", "HIT"}
            assert "STALE" in {e["cache"] for e in answered}
    finally:
        server.stop()
