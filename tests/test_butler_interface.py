"""One interface, one read path: what each backend declares it does, and reads that behave the
same through the blocking and the async client (they run the same code)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from servers import WRITE_TOKEN, ButlerServer

from butler import Butler
from butler.direct_butler import DirectButler
from butler.image import Image
from butler.mirrored import MirroredButler
from butler.reading import Reader
from butler.remote.async_butler import AsyncButler
from butler.remote.butler import RemoteButler
from mirror.source import HttpSource

HSC = {"instrument": "HSC"}
LOCAL_ONLY = ("ingest", "ingest_many", "verify")
EVERY_BACKEND = (
    "get",
    "open",
    "memmap",
    "exists",
    "get_local_path",
    "query_datasets",
    "query_summary",
    "put",
    "remove",
    "transaction",
    "register_dataset_type",
)


ODD_CHAIN = "u/me/chain #1%?"
"""A collection name that must be quoted in a URL (it keeps its ``/``)."""


@pytest.fixture
def server(repo_path: Path, tmp_path: Path) -> Iterator[ButlerServer]:
    with Butler(repo_path, run="run1") as butler:
        butler.put({"v": 1}, "summary", HSC, visit=100, detector=0)
        butler.put(np.arange(4.0), "flux", HSC, visit=100, detector=0)
        butler.set_collection_chain(ODD_CHAIN, ["run1"])
    srv = ButlerServer(repo_path, tmp_path).start()
    yield srv
    srv.stop()


def test_each_backend_shows_what_it_implements(repo_path: Path, server: ButlerServer) -> None:
    mirror = tmp_mirror(repo_path)
    with (
        Butler(repo_path) as local,
        Butler(server.url) as remote,
        Butler(server.url, mirror=mirror) as mirrored,
    ):
        assert (type(local), type(remote), type(mirrored)) == (
            DirectButler,
            RemoteButler,
            MirroredButler,
        )
        for butler in (local, remote, mirrored):
            assert isinstance(butler, Butler)
            assert set(EVERY_BACKEND) <= set(dir(butler))
        assert set(LOCAL_ONLY) <= set(dir(local))
        for butler in (remote, mirrored):
            for name in LOCAL_ONLY:
                # Absent, not a method that raises NotImplementedError when called.
                assert name not in dir(butler)
                assert not hasattr(butler, name)
                assert not hasattr(type(butler), name)
                with pytest.raises(AttributeError, match=rf"no {name}\(\).*local repository"):
                    getattr(butler, name)
        with pytest.raises(AttributeError, match="has no attribute 'no_such_thing'"):
            remote.no_such_thing  # noqa: B018 - the attribute access is the test


def test_a_backend_must_implement_the_whole_interface() -> None:
    """The interface is abstract at run time: a backend that leaves out a method cannot be
    made at all (rather than failing when that method is called)."""

    class Incomplete(Butler):
        def __init__(self) -> None:
            pass

    with pytest.raises(TypeError, match="abstract.*query_summary"):
        Incomplete()
    assert {"query_summary", "put", "transaction", "_read"} <= Butler.__abstractmethods__


def test_the_async_client_is_the_read_path_the_blocking_one_runs(server: ButlerServer) -> None:
    # One implementation: the blocking client's read methods run the async client's.
    assert issubclass(AsyncButler, Reader)
    for name in ("get", "read_file", "open", "exists", "memmap", "get_local_path"):
        assert name not in vars(AsyncButler)  # inherited from the Reader, not restated
        assert name not in vars(RemoteButler)
        assert name not in vars(DirectButler)
    with Butler(server.url, collections="run1") as remote:
        assert remote.get("summary", HSC, visit=100, detector=0) == {"v": 1}
        assert remote.io_stats is remote.remote.io_stats


def _open_paths() -> set[str]:
    found = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            found.add(os.readlink(f"/proc/self/fd/{fd}"))
        except OSError:
            continue
    return found


async def test_an_async_read_closes_its_byte_source(server: ButlerServer) -> None:
    """The file an async read opened is closed when the read returns, as a blocking read's
    is, even when what it returns keeps the source (a lazy image's bands read from the path
    again)."""
    image = Image(np.arange(20, dtype=np.float32).reshape(4, 5))
    butler = AsyncButler(server.url, run="txn", token=WRITE_TOKEN)
    async with butler, butler.transaction():
        ref = await butler.put(image, "calexp", HSC, visit=101, detector=0)
        local = str(await butler.get_local_path(ref))  # the uploaded bytes, read from here
        lazy = await butler.get(ref, parameters={"lazy": True})
        assert local not in _open_paths()
        np.testing.assert_array_equal(np.asarray(lazy.data.compute()), image.data)


async def test_exists_checks_the_file_in_both_clients(
    repo_path: Path, server: ButlerServer
) -> None:
    """A registered dataset whose file is gone does not exist, for every client."""
    with Butler(repo_path, collections="run1") as local:
        path = local.get_local_path("flux", HSC, visit=100, detector=0)
        assert local.exists("flux", HSC, visit=100, detector=0)
    path.unlink()
    with Butler(repo_path, collections="run1") as local:
        assert not local.exists("flux", HSC, visit=100, detector=0)
    with Butler(server.url, collections="run1") as remote:
        assert not remote.exists("flux", HSC, visit=100, detector=0)
        assert remote.exists("summary", HSC, visit=100, detector=0)
    async with AsyncButler(server.url, collections="run1") as butler:
        assert not await butler.exists("flux", HSC, visit=100, detector=0)
        assert await butler.exists("summary", HSC, visit=100, detector=0)


def tmp_mirror(repo_path: Path) -> Path:
    """A mirror is a local repository (an empty one will do to open a mirrored butler)."""
    mirror = repo_path.parent / "mirror"
    if not mirror.exists():
        with DirectButler.create_repository(mirror, universe=repo_path / "dimensions.yaml"):
            pass
    return mirror


def _collection_requests(server: ButlerServer, since: int) -> list[str]:
    return [
        e["target"]
        for e in server.access_log()[since:]
        if e["target"].startswith("/api/v1/collections/")
    ]


def test_the_remote_butler_and_the_mirror_ask_the_same_requests(server: ButlerServer) -> None:
    """One API client: a name that needs quoting is quoted the same way by both."""
    mark = server.mark()
    with Butler(server.url) as remote:
        assert remote.get_collection_chain(ODD_CHAIN) == ["run1"]
    asked_by_butler = _collection_requests(server, mark)
    mark = server.mark()
    source = HttpSource(server.url)
    try:
        assert source.get_collection_chain(ODD_CHAIN) == ["run1"]
    finally:
        source.close()
    asked_by_mirror = _collection_requests(server, mark)
    assert asked_by_butler == asked_by_mirror == ["/api/v1/collections/u/me/chain%20%231%25%3F"]
