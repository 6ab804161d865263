"""Disk and crashes (issue 4, item 8): a size limit with LRU eviction between watermarks,
pinning, and a cache that survives SIGKILL and damaged blocks without serving a wrong byte.

Eviction runs in the background every 5 s: tests poll (bounded) for its effect.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from nginx import NginxOrigin
from proxies import BLOCK, Proxy, proxyd_cli, running, wait_until, write_old

KiB, MiB = 1 << 10, 1 << 20


@pytest.fixture
def origin(tmp_path: Path) -> Iterator[NginxOrigin]:
    with NginxOrigin(tmp_path / "root", tmp_path / "nginx") as nginx:
        yield nginx


def requests_for(origin: NginxOrigin, mark: int, name: str) -> list[dict[str, Any]]:
    return [e for e in origin.access_log(mark) if e["path"] == f"/{name}"]


def cli_args(proxy: Proxy, origin: NginxOrigin) -> list[str]:
    return ["--cache-dir", str(proxy.cache_dir), "--block-size", "64KiB"]


def test_size_limit_eviction_and_pinning(origin: NginxOrigin, tmp_path: Path) -> None:
    limit = 2 * MiB  # evict above 1.9 MiB (0.95), down to 1.8 MiB (0.9)
    objects = {
        f"obj{i}.bin": write_old(origin.root_dir, f"obj{i}.bin", 384 * KiB, i) for i in range(8)
    }
    pinned = write_old(origin.root_dir, "pinned.bin", 512 * KiB, seed=99)
    proxy = Proxy({"o": origin.url}, tmp_path / "p", "--cache-size", str(limit))
    with running(proxy):
        assert proxy.get("/o/pinned.bin").body == pinned
        pin = proxyd_cli(
            "pin", *cli_args(proxy, origin), "--upstream", f"o={origin.url}", "/o/pinned.bin"
        )
        assert pin.returncode == 0, pin.stderr
        assert pin.stdout.startswith(f"pinned {origin.url}pinned.bin (512 KiB)")
        not_cached = proxyd_cli(
            "pin", *cli_args(proxy, origin), "--upstream", f"o={origin.url}", "/o/obj0.bin"
        )
        assert not_cached.returncode == 1
        assert "not cached (warm it first)" in not_cached.stderr

        for name, data in objects.items():  # 3 MiB through a 2 MiB cache
            assert proxy.get(f"/o/{name}").body == data

        def evicted() -> bool:
            metrics = proxy.metrics()
            return (
                metrics["proxyd_evictions_total"] > 0
                and metrics["proxyd_cache_size_bytes"] <= limit
            )

        wait_until(evicted, timeout=15, interval=0.5, what="the background eviction")
        metrics = proxy.metrics()
        print(
            f"cache {metrics['proxyd_cache_size_bytes']:.0f} bytes of {limit} after "
            f"{metrics['proxyd_evictions_total']:.0f} evictions"
        )
        stats = proxyd_cli("stats", "--json", *cli_args(proxy, origin))
        assert stats.returncode == 0, stats.stderr
        figures = json.loads(stats.stdout)
        assert figures["volume"] + figures["pinned_volume"] <= limit
        assert figures["pinned_volume"] >= 512 * KiB

        # Least recently used went first: the last object read is still whole, the first
        # is not; the pinned object, read before all of them, was never touched.
        mark = origin.mark()
        last = proxy.get("/o/obj7.bin")
        assert (last.header("X-Cache"), last.body) == ("HIT", objects["obj7.bin"])
        pinned_again = proxy.get("/o/pinned.bin")
        assert (pinned_again.header("X-Cache"), pinned_again.body) == ("HIT", pinned)
        assert requests_for(origin, mark, "obj7.bin") == []
        assert requests_for(origin, mark, "pinned.bin") == []
        first = proxy.get("/o/obj0.bin")
        assert first.header("X-Cache") in ("MISS", "PARTIAL")
        assert first.body == objects["obj0.bin"]
        assert requests_for(origin, mark, "obj0.bin")

        listing = proxyd_cli("ls", *cli_args(proxy, origin))
        assert listing.returncode == 0, listing.stderr
        [line] = [row for row in listing.stdout.splitlines() if row.endswith("pinned.bin")]
        assert line.split()[0] == "8/8"
        assert "pinned" in line.split()

        # Unpinned, it is evictable again.
        unpin = proxyd_cli(
            "pin",
            "--unpin",
            *cli_args(proxy, origin),
            "--upstream",
            f"o={origin.url}",
            "/o/pinned.bin",
        )
        assert unpin.returncode == 0, unpin.stderr
        stats = json.loads(proxyd_cli("stats", "--json", *cli_args(proxy, origin)).stdout)
        assert stats["pinned_volume"] < 64 * KiB


def test_sigkill_during_heavy_filling_then_every_response_is_exact(
    origin: NginxOrigin, tmp_path: Path
) -> None:
    files = {
        f"big{i}.bin": write_old(origin.root_dir, f"big{i}.bin", 12 * MiB, 10 + i) for i in range(4)
    }
    cache = tmp_path / "cache"
    config = {"max_fetch_bytes": "1MiB"}

    async def download_all(proxy: Proxy) -> None:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:

            async def one(name: str) -> None:
                async with session.get(proxy.url + f"o/{name}") as response:
                    async for _ in response.content.iter_chunked(MiB):
                        pass

            await asyncio.gather(*(one(name) for name in files), return_exceptions=True)

    first = Proxy({"o": origin.url}, tmp_path / "p1", cache_dir=cache, config=config)
    with running(first):

        def filling() -> bool:
            return first.metric_sum("proxyd_bytes_from_origin_total") >= 12 * MiB

        async def kill_while_filling() -> None:
            task = asyncio.create_task(download_all(first))
            await asyncio.to_thread(wait_until, filling, 20, 0.005, "12 MiB fetched")
            first.kill()  # SIGKILL: no shutdown, blocks half written
            await task

        asyncio.run(kill_while_filling())

    second = Proxy({"o": origin.url}, tmp_path / "p2", cache_dir=cache, config=config)
    with running(second):
        mark = origin.mark()
        for name, data in files.items():
            response = second.get(f"/o/{name}")
            assert response.status == 200
            assert hashlib.sha256(response.body).digest() == hashlib.sha256(data).digest(), name
        fetched = sum(e["body_bytes_sent"] for e in origin.access_log(mark))
        # What survived the crash was reused: the restart fetched less than everything, and
        # more than nothing (the crash came mid-fill).
        assert 0 < fetched < 4 * 12 * MiB
        rng = random.Random(5)
        for _ in range(40):
            name = rng.choice(list(files))
            start = rng.randrange(12 * MiB)
            end = min(12 * MiB - 1, start + rng.randrange(1, 300 * KiB))
            response = second.get(f"/o/{name}", {"Range": f"bytes={start}-{end}"})
            assert response.status == 206
            assert response.body == files[name][start : end + 1]

    # Damage one stored block on disk while the proxy is down (a running proxy may serve
    # its verified copy from memory): it is detected, dropped and fetched again.
    db = sqlite3.connect(f"file:{cache / 'blocks' / 'cache.db'}?mode=ro", uri=True)
    try:
        rows = db.execute(
            "SELECT key, filename FROM Cache WHERE key LIKE 'block:%' AND filename IS NOT NULL"
        ).fetchall()
    finally:
        db.close()
    assert rows
    key, filename = rows[len(rows) // 2]
    index = int(key.rsplit(":", 1)[1])
    path = cache / "blocks" / filename
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    path.write_bytes(bytes(raw))
    third = Proxy({"o": origin.url}, tmp_path / "p3", cache_dir=cache, config=config)
    with running(third):
        mark = origin.mark()
        block_range = f"bytes={index * BLOCK}-{(index + 1) * BLOCK - 1}"
        for name, data in files.items():
            response = third.get(f"/o/{name}", {"Range": block_range})
            assert response.body == data[index * BLOCK : (index + 1) * BLOCK]
        # Exactly one block, of one object, was fetched again.
        assert [e["range"] for e in origin.access_log(mark)] == [block_range]
