"""The mirror's downloader against a recording fake origin: retries with Retry-After,
resume by Range, refusing bytes that fail the checksum (a bad partial is fetched anew),
error answers and a full disk (neither retried)."""

from __future__ import annotations

import hashlib
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web
from conftest import direct_io_in_tmp

from butler.refs import DataCoordinate, DatasetRef, DatasetType, FileInfo
from mirror.http import HttpFetcher
from mirror.plan import Item
from mirror.transfer import TransferError, TransferSettings, partial_path

PAYLOAD = bytes(range(256)) * 4096  # 1 MiB


class FakeOrigin:
    """Serves /files/blob with scripted failures and records every request."""

    def __init__(self) -> None:
        self.requests: list[dict[str, str]] = []
        self.script: list[str] = []
        self.body = PAYLOAD

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.requests.append(dict(request.headers))
        action = self.script.pop(0) if self.script else "ok"
        if action == "busy":
            return web.Response(status=503, headers={"Retry-After": "0"})
        if action == "missing":
            return web.Response(status=404, text="no such file")
        if action == "corrupt":
            return web.Response(body=b"x" * len(self.body))
        range_header = request.headers.get("Range")
        etag = '"' + hashlib.sha256(self.body).hexdigest() + '"'
        if range_header and request.headers.get("If-Range") == etag:
            start = int(range_header.removeprefix("bytes=").rstrip("-"))
            return web.Response(
                status=206,
                body=self.body[start:],
                headers={
                    "Content-Range": f"bytes {start}-{len(self.body) - 1}/{len(self.body)}",
                    "ETag": etag,
                },
            )
        return web.Response(body=self.body, headers={"ETag": etag})


@pytest.fixture
async def origin() -> AsyncIterator[tuple[FakeOrigin, str]]:
    fake = FakeOrigin()
    app = web.Application()
    app.router.add_get("/files/blob", fake.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield fake, f"http://127.0.0.1:{port}/"
    await runner.cleanup()


def item_for(body: bytes) -> Item:
    dataset_id = uuid.uuid4()
    dataset_type = DatasetType("blob", ("instrument",), "Array")
    ref = DatasetRef(
        dataset_id, dataset_type, DataCoordinate({"instrument": "HSC"}, ("instrument",)), "raw"
    )
    checksum = "sha256:" + hashlib.sha256(body).hexdigest()
    return Item(ref, FileInfo(dataset_id, "blob", len(body), checksum, "npy", "Array", {}))


async def fetch(url: str, item: Item, target: Path, attempts: int = 5) -> int:
    received = 0

    def progress(n: int) -> None:
        nonlocal received
        received += n

    settings = TransferSettings(jobs=2, attempts=attempts, backoff=0.01)
    async with HttpFetcher(url, None, settings) as fetcher:
        await fetcher.fetch(item, target, progress)
    return received


async def test_transient_errors_are_retried_honouring_retry_after(
    origin: tuple[FakeOrigin, str], tmp_path: Path
) -> None:
    fake, url = origin
    fake.script = ["busy", "busy"]
    target = tmp_path / "blob.part"
    started = time.monotonic()
    await fetch(url, item_for(PAYLOAD), target)
    assert time.monotonic() - started < 5  # Retry-After: 0 means no backoff wait
    assert len(fake.requests) == 3
    assert target.read_bytes() == PAYLOAD


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
    await fetch(url, item, target)
    assert target.read_bytes() == PAYLOAD


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
