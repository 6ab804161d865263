"""``proxyd warm``: fetch URLs through a running proxy so their blocks land in its cache."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field

import aiohttp


@dataclass
class WarmResult:
    ok: int = 0
    bytes: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)


async def warm_urls(urls: Sequence[str], jobs: int, token: str | None = None) -> WarmResult:
    """GET every URL through the proxy (bodies read and dropped), ``jobs`` at a time."""
    result = WarmResult()
    queue: asyncio.Queue[str] = asyncio.Queue()
    for url in urls:
        queue.put_nowait(url)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=30, sock_read=300)

    async def worker(session: aiohttp.ClientSession) -> None:
        while True:
            try:
                url = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            try:
                async with session.get(url, headers=headers) as response:
                    if response.status >= 400:
                        result.failed.append((url, f"HTTP {response.status}"))
                        continue
                    async for chunk in response.content.iter_chunked(1 << 20):
                        result.bytes += len(chunk)
                result.ok += 1
            except (TimeoutError, aiohttp.ClientError) as exc:
                result.failed.append((url, str(exc) or type(exc).__name__))

    async with aiohttp.ClientSession(timeout=timeout) as session:
        await asyncio.gather(*(worker(session) for _ in range(min(jobs, len(urls)))))
    return result


def butler_query_urls(
    repository_url: str,
    dataset_types: Sequence[str],
    collections: Sequence[str],
    where: str,
    token: str | None,
) -> list[str]:
    """File URLs (through the proxy) of the datasets a butler query selects."""
    from butler import Butler

    urls: list[str] = []
    with Butler(repository_url, collections=list(collections) or None, token=token) as butler:
        for dataset_type in dataset_types:
            for _, file in butler.query_datasets_with_files(dataset_type, where=where):
                urls.append(repository_url + "files/" + file.path)
    return urls
