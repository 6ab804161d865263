"""The mirror's downloader against a recording fake origin: retries with Retry-After,
resume by Range, refusing bytes that fail the checksum (a bad partial is fetched anew),
error answers and a full disk (neither retried), and file bundles (a server without them,
a bundle cut short)."""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web
from conftest import direct_io_in_tmp
from servers import served_app

from butler.http.bundle import CONTENT_TYPE as BUNDLE_CONTENT_TYPE
from butler.http.bundle import MAX_FILES as MAX_BUNDLE_FILES
from butler.http.bundle import BundleEntry
from butler.refs import DataCoordinate, DatasetRef, DatasetType, FileInfo
from mirror.http import HttpFetcher
from mirror.plan import Item
from mirror.transfer import BundleResult, TransferError, TransferSettings, partial_path

PAYLOAD = bytes(range(256)) * 4096  # 1 MiB


class FakeOrigin:
    """Serves /files/blob with scripted failures and records every request."""

    def __init__(self) -> None:
        self.requests: list[dict[str, str]] = []
        self.script: list[str] = []
        self.body = PAYLOAD
        self.others: dict[str, bytes] = {}
        """Files besides /files/blob, by name."""
        self.bundles = False
        """Whether POST /api/v1/files/bundle is served."""
        self.cut_bundle_after: int | None = None
        """Body bytes of a bundle answer sent before the connection is dropped."""

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.requests.append(dict(request.headers))
        name = request.match_info["name"]
        if name != "blob":
            return self.serve(request, self.others[name])
        action = self.script.pop(0) if self.script else "ok"
        if action == "busy":
            return web.Response(status=503, headers={"Retry-After": "0"})
        if action == "stall":  # the head, half the body, then nothing for a while
            response = web.StreamResponse(headers={"Content-Length": str(len(self.body))})
            await response.prepare(request)
            await response.write(self.body[: len(self.body) // 2])
            await asyncio.sleep(3)
            assert request.transport is not None
            request.transport.close()  # then hangs up: a client still waiting sees the end
            return response
        if action == "missing":
            return web.Response(status=404, text="no such file")
        if action == "corrupt":
            return web.Response(body=b"x" * len(self.body))
        return self.serve(request, self.body)

    @staticmethod
    def serve(request: web.Request, body: bytes) -> web.Response:
        range_header = request.headers.get("Range")
        etag = '"' + hashlib.sha256(body).hexdigest() + '"'
        if range_header and request.headers.get("If-Range") == etag:
            start = int(range_header.removeprefix("bytes=").rstrip("-"))
            return web.Response(
                status=206,
                body=body[start:],
                headers={
                    "Content-Range": f"bytes {start}-{len(body) - 1}/{len(body)}",
                    "ETag": etag,
                },
            )
        return web.Response(body=body, headers={"ETag": etag})

    async def bundle(self, request: web.Request) -> web.StreamResponse:
        self.requests.append({"bundle": "yes", **request.headers})
        if not self.bundles:
            raise web.HTTPNotFound()
        files = {"blob": self.body, **self.others}
        answer = b"".join(
            BundleEntry(p, len(files[p])).encode() + files[p]
            for p in (await request.json())["paths"]
        )
        response = web.StreamResponse(headers={"Content-Type": BUNDLE_CONTENT_TYPE})
        response.content_length = len(answer)
        await response.prepare(request)
        if self.cut_bundle_after is None:
            await response.write(answer)
            return response
        await response.write(answer[: self.cut_bundle_after])
        assert request.transport is not None
        request.transport.close()  # the connection drops mid-answer
        return response


@pytest.fixture
async def origin() -> AsyncIterator[tuple[FakeOrigin, str]]:
    fake = FakeOrigin()
    app = web.Application()
    app.router.add_get("/files/{name}", fake.handle)
    app.router.add_post("/api/v1/files/bundle", fake.bundle)
    async with served_app(app) as url:
        yield fake, url


def item_for(body: bytes, path: str = "blob") -> Item:
    dataset_id = uuid.uuid4()
    dataset_type = DatasetType("blob", ("instrument",), "Array")
    ref = DatasetRef(
        dataset_id, dataset_type, DataCoordinate({"instrument": "HSC"}, ("instrument",)), "raw"
    )
    checksum = "sha256:" + hashlib.sha256(body).hexdigest()
    return Item(ref, FileInfo(dataset_id, path, len(body), checksum, "npy", "Array", {}))


async def fetch(
    url: str, item: Item, target: Path, attempts: int = 5, read_timeout: float = 120.0
) -> int:
    received = 0

    def progress(n: int) -> None:
        nonlocal received
        received += n

    settings = TransferSettings(jobs=2, attempts=attempts, backoff=0.01, read_timeout=read_timeout)
    async with HttpFetcher(url, None, settings) as fetcher:
        await fetcher.fetch(item, target, progress)
    return received


def spy_on_waits(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The delays the fetcher waits between attempts (none is waited for real)."""
    waits: list[float] = []

    async def no_wait(delay: float) -> None:
        waits.append(delay)

    monkeypatch.setattr(HttpFetcher, "_wait", staticmethod(no_wait))
    return waits


async def test_transient_errors_are_retried_honouring_retry_after(
    origin: tuple[FakeOrigin, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake, url = origin
    fake.script = ["busy", "busy"]
    target = tmp_path / "blob.part"
    waits = spy_on_waits(monkeypatch)
    await fetch(url, item_for(PAYLOAD), target)
    assert waits == [0.0, 0.0]  # Retry-After: 0 means no backoff wait
    assert len(fake.requests) == 3
    assert target.read_bytes() == PAYLOAD


async def test_the_last_failed_attempt_gives_up_without_waiting(
    origin: tuple[FakeOrigin, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake, url = origin
    fake.script = ["busy", "busy", "busy"]
    waits = spy_on_waits(monkeypatch)
    with pytest.raises(TransferError, match="gave up after 2 attempts"):
        await fetch(url, item_for(PAYLOAD), tmp_path / "blob.part", attempts=2)
    assert len(fake.requests) == 2
    assert waits == [0.0]  # between the two attempts; none after the last


async def test_partial_file_is_resumed_with_range(
    origin: tuple[FakeOrigin, str], tmp_path: Path
) -> None:
    fake, url = origin
    item = item_for(PAYLOAD)
    target = tmp_path / "blob.part"
    target.write_bytes(PAYLOAD[:300_000])
    received = await fetch(url, item, target)
    assert fake.requests[0]["Range"] == "bytes=300000-"
    assert fake.requests[0]["If-Range"] == item.file.etag
    assert received == len(PAYLOAD) - 300_000
    assert target.read_bytes() == PAYLOAD


async def test_a_partial_of_other_bytes_is_detected_and_fetched_again(
    origin: tuple[FakeOrigin, str], tmp_path: Path
) -> None:
    fake, url = origin
    item = item_for(PAYLOAD)
    target = tmp_path / "blob.part"
    target.write_bytes(b"old version bytes" * 1000)  # a partial of something else
    fake.body = PAYLOAD
    # The stale partial fails the checksum once completed: it is dropped and fetched whole.
    received = await fetch(url, item, target)
    assert target.read_bytes() == PAYLOAD
    # Progress nets out to the file (the stale bytes were counted as already there).
    assert received == len(PAYLOAD) - len(b"old version bytes" * 1000)


async def test_bytes_failing_the_checksum_are_never_kept(
    origin: tuple[FakeOrigin, str], tmp_path: Path
) -> None:
    fake, url = origin
    fake.script = ["corrupt", "corrupt", "corrupt"]
    target = tmp_path / "blob.part"
    with pytest.raises(TransferError, match="checksum"):
        await fetch(url, item_for(PAYLOAD), target, attempts=3)
    assert not target.exists()
    assert partial_path(tmp_path, item_for(PAYLOAD)).name.endswith(".part")


async def test_a_body_larger_than_the_gather_buffer_is_written_whole_and_resumed(
    origin: tuple[FakeOrigin, str], tmp_path: Path
) -> None:
    fake, url = origin
    fake.body = bytes(range(251)) * 15_000  # 3.6 MiB: several 1 MiB flushes and a remainder
    item = item_for(fake.body)
    target = tmp_path / "blob.part"
    target.write_bytes(fake.body[:1_500_000])
    received = await fetch(url, item, target)
    assert fake.requests[0]["Range"] == "bytes=1500000-"
    assert received == len(fake.body) - 1_500_000
    assert target.read_bytes() == fake.body


async def test_a_fresh_body_goes_to_disk_directly_and_its_tail_through_the_cache(
    origin: tuple[FakeOrigin, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import mirror.partfile

    fake, url = origin
    fake.body = bytes(range(253)) * 20_000  # 4.8 MiB: four whole MiB and an unaligned tail
    opened: list[mirror.partfile.PartFile] = []
    direct = direct_io_in_tmp()
    original_init = mirror.partfile.PartFile.__init__

    def spy(self: mirror.partfile.PartFile, path: Path, append: bool) -> None:
        original_init(self, path, append)
        opened.append(self)
        assert self.direct == direct

    monkeypatch.setattr(mirror.partfile.PartFile, "__init__", spy)
    target = tmp_path / "blob.part"
    received = await fetch(url, item_for(fake.body), target)
    assert received == len(fake.body)
    assert target.read_bytes() == fake.body
    assert len(opened) == 1
    assert not opened[0].direct  # the tail switched the file to buffered writes


async def test_an_answer_longer_than_the_registry_says_is_refused_without_retrying(
    origin: tuple[FakeOrigin, str], tmp_path: Path
) -> None:
    fake, url = origin
    item = item_for(PAYLOAD)  # 1 MiB: received whole into one buffer
    fake.body = PAYLOAD + b"and then some"
    target = tmp_path / "blob.part"
    with pytest.raises(TransferError, match="larger than the 1048576 bytes"):
        await fetch(url, item, target)
    assert len(fake.requests) == 1
    assert not target.exists() or target.stat().st_size == 0


async def test_an_error_answer_is_reported_with_its_text_and_not_kept(
    origin: tuple[FakeOrigin, str], tmp_path: Path
) -> None:
    fake, url = origin
    fake.script = ["missing"]
    target = tmp_path / "blob.part"
    with pytest.raises(TransferError, match="answered 404: no such file"):
        await fetch(url, item_for(PAYLOAD), target)
    assert len(fake.requests) == 1  # a 404 is not retried
    assert not target.exists()


async def test_a_full_disk_fails_the_file_without_retrying(
    origin: tuple[FakeOrigin, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake, url = origin
    import mirror.partfile

    def full(fd: int, data: object) -> int:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(mirror.partfile.os, "write", full)
    with pytest.raises(OSError, match="No space left"):
        await fetch(url, item_for(PAYLOAD), tmp_path / "blob.part")
    assert len(fake.requests) == 1


async def fetch_bundle(
    url: str, items: list[Item], dest: Path, bundle_files: int = MAX_BUNDLE_FILES
) -> tuple[BundleResult, tuple[int, int]]:
    """One bundle for ``items`` (files to ``dest``), from a fetcher told that the server
    offers ``bundle_files`` per request; the result, and how many groups the fetcher makes
    of such fresh items before and after it."""
    settings = TransferSettings(jobs=2, attempts=2, backoff=0.01)
    received: list[int] = []
    fresh = [item_for(PAYLOAD, f"fresh-{i}") for i in range(len(items))]
    async with HttpFetcher(url, None, settings, set(), bundle_files) as fetcher:
        before = len(fetcher.bundles(fresh, dest))
        targets = [partial_path(dest, item) for item in items]
        dest.joinpath(targets[0].parent.name).mkdir(parents=True, exist_ok=True)
        result = await fetcher.fetch_bundle(items, targets, received.append)
        return result, (before, len(fetcher.bundles(fresh, dest)))


async def test_small_fresh_files_come_in_one_bundle(
    origin: tuple[FakeOrigin, str], tmp_path: Path
) -> None:
    fake, url = origin
    fake.bundles = True
    fake.others = {"other": bytes(range(7)) * 50_000}
    items = [item_for(PAYLOAD), item_for(fake.others["other"], "other")]
    result, groups = await fetch_bundle(url, items, tmp_path)
    assert result.done == items
    assert result.failed == []
    assert [r.get("bundle") for r in fake.requests] == ["yes"]  # one request for both
    assert partial_path(tmp_path, items[0]).read_bytes() == PAYLOAD
    assert partial_path(tmp_path, items[1]).read_bytes() == fake.others["other"]
    assert groups == (1, 1)


async def test_a_server_without_bundles_gets_one_request_per_file(
    origin: tuple[FakeOrigin, str], tmp_path: Path
) -> None:
    fake, url = origin
    items = [item_for(PAYLOAD), item_for(PAYLOAD[:1000], "other")]
    result, groups = await fetch_bundle(url, items, tmp_path, bundle_files=0)
    assert result == BundleResult()  # nothing settled: each file is fetched on its own
    assert fake.requests == []  # none offered (or a cache in between): none asked for
    assert groups == (2, 2)


async def test_bundles_offered_but_refused_are_asked_for_once(
    origin: tuple[FakeOrigin, str], tmp_path: Path
) -> None:
    fake, url = origin  # the POST is answered 404 (say, by a filtering proxy)
    items = [item_for(PAYLOAD), item_for(PAYLOAD[:1000], "other")]
    result, groups = await fetch_bundle(url, items, tmp_path)
    assert result == BundleResult()
    assert len(fake.requests) == 1  # asked once; from then on the fetcher groups no more
    assert groups == (1, 2)


async def test_a_bundle_cut_short_keeps_what_arrived_for_the_resume(
    origin: tuple[FakeOrigin, str], tmp_path: Path
) -> None:
    fake, url = origin
    fake.bundles = True
    other = bytes(range(11)) * 100_000
    fake.others = {"other": other}
    items = [item_for(PAYLOAD), item_for(other, "other")]
    first_header = len(BundleEntry("blob", len(PAYLOAD)).encode())
    second_header = len(BundleEntry("other", len(other)).encode())
    fake.cut_bundle_after = first_header + len(PAYLOAD) + second_header + 300_000
    result, _ = await fetch_bundle(url, items, tmp_path)
    assert result.done == [items[0]]
    target = partial_path(tmp_path, items[1])
    assert 0 < target.stat().st_size <= 300_000  # kept, up to what was received
    kept = target.stat().st_size
    received = await fetch(url, items[1], target)
    assert fake.requests[-1]["Range"] == f"bytes={kept}-"
    assert received == len(other) - kept
    assert target.read_bytes() == other


def test_bundles_hold_fresh_small_files_up_to_the_limits(tmp_path: Path) -> None:
    from mirror.http import BUNDLE_BYTES, BUNDLE_FILE_BYTES

    tiny = [item_for(b"t", f"tiny-{i}") for i in range(MAX_BUNDLE_FILES + 1)]
    mid = [item_for(b"m" * (BUNDLE_BYTES // 2), f"mid-{i}") for i in range(4)]
    big = item_for(b"b" * (BUNDLE_FILE_BYTES + 1), "big")
    resumed = item_for(b"r", "resumed")
    settings = TransferSettings()
    local = "http://127.0.0.1:9/"
    fetcher = HttpFetcher(
        local, None, settings, {partial_path(tmp_path, resumed).name}, MAX_BUNDLE_FILES
    )
    groups = fetcher.bundles([*tiny, *mid, big, resumed], tmp_path)
    # 64 tiny ones; the last tiny one and a half-bundle; two halves; the last half alone.
    assert [len(g) for g in groups] == [MAX_BUNDLE_FILES, 2, 2, 1, 1, 1]
    assert [big] in groups  # too big for a bundle
    assert [resumed] in groups  # a partial file to resume
    unknown = HttpFetcher(local, None, settings, None, MAX_BUNDLE_FILES)  # partials unknown
    assert all(len(g) == 1 for g in unknown.bundles(tiny, tmp_path))
    unbundled = HttpFetcher(local, None, settings, set(), bundle_files=0)
    assert all(len(g) == 1 for g in unbundled.bundles(tiny, tmp_path))
    fewer = HttpFetcher(local, None, settings, set(), bundle_files=8)  # the server's limit
    assert [len(g) for g in fewer.bundles(tiny[:10], tmp_path)] == [8, 2]


async def test_a_stalled_answer_times_out_and_keeps_what_arrived(
    origin: tuple[FakeOrigin, str], tmp_path: Path
) -> None:
    fake, url = origin
    fake.script = ["stall"]
    target = tmp_path / "blob.part"
    # The server stalls 3 s, then ends the connection short of the body (another error):
    # one read timeout of 1.6 s notices the stall first, two would not.
    with pytest.raises(TransferError, match="no data within the read timeout"):
        await fetch(url, item_for(PAYLOAD), target, attempts=1, read_timeout=1.6)
    assert target.read_bytes() == PAYLOAD[: len(PAYLOAD) // 2]  # kept for the resume
