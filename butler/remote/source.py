"""Random access to a remote dataset file by HTTP range requests."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence

from butler.errors import ButlerError
from butler.io.source import ByteRange, ByteSource
from butler.refs import FileInfo
from butler.remote.client import RepositoryClient


class HttpByteSource(ByteSource):
    """A dataset file on a server; each ``read_ranges`` is one batch of range requests.

    Formatters run in a worker thread and block here while the event loop that owns the
    client's session fetches the bytes.
    """

    def __init__(
        self, client: RepositoryClient, file: FileInfo, loop: asyncio.AbstractEventLoop
    ) -> None:
        super().__init__(file.size, client.url("files/" + file.path))
        self._client = client
        self._path = file.path
        self._loop = loop
        self._loop_thread = getattr(loop, "_thread_id", None)

    def _fetch(self, ranges: Sequence[ByteRange]) -> list[bytes]:
        if self._loop_thread == threading.get_ident():
            raise ButlerError(
                "reading a remote file object from inside its event loop would block the "
                "loop; call it through asyncio.to_thread(...) or use the async butler's get()"
            )
        future = asyncio.run_coroutine_threadsafe(
            self._client.fetch_ranges(self._path, ranges), self._loop
        )
        return future.result()
