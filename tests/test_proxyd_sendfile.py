"""proxyd.sendfile on its own: queued file pieces reach the socket whole and in order, each
file is released exactly once, and nothing is released while a thread may still read it."""

from __future__ import annotations

import asyncio
import functools
import os
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from proxyd import sendfile
from proxyd.sendfile import FileSender

MiB = 1 << 20


async def _connected() -> tuple[asyncio.Transport, socket.socket]:
    """A transport for one end of a TCP connection on loopback, and the other end."""
    listener = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(listener.getsockname())
    server, _ = listener.accept()
    listener.close()
    server.setblocking(False)
    transport, _ = await asyncio.get_running_loop().connect_accepted_socket(
        asyncio.Protocol, server
    )
    return transport, client


async def test_queued_pieces_arrive_whole_and_in_order_and_are_each_released_once(
    tmp_path: Path,
) -> None:
    files = []
    for n in range(3):
        path = tmp_path / f"f{n}"
        path.write_bytes(os.urandom(2 * MiB + 17))
        files.append((path.read_bytes(), os.open(path, os.O_RDONLY)))
    pieces = [(n % 3, (n * 7919) % MiB, MiB - n * 1000) for n in range(12)]
    expected = b"".join(files[f][0][offset : offset + count] for f, offset, count in pieces)
    released: list[int] = []
    transport, client = await _connected()
    transport.write(b"HEAD:")  # bytes the transport holds go before any piece

    def receive() -> bytes:
        got = bytearray()
        while len(got) < len(expected) + 5:
            chunk = client.recv(1 << 16)
            if not chunk:
                break
            got += chunk
        return bytes(got)

    receiving = asyncio.get_running_loop().run_in_executor(None, receive)
    sender = FileSender(transport, idle_limit=10.0)
    for n, (f, offset, count) in enumerate(pieces):
        await sender.send(files[f][1], offset, count, functools.partial(released.append, n))
    await sender.flush()
    assert sorted(released) == list(range(12))  # every piece sent is released, once
    # Nagle's algorithm gathered the body; small answers that follow go out at once again.
    sock = transport.get_extra_info("socket")
    assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
    sender.close()
    assert await receiving == b"HEAD:" + expected
    assert sorted(released) == list(range(12))
    transport.close()
    client.close()
    for _, fd in files:
        os.close(fd)


async def test_a_client_that_stops_reading_times_out_and_every_piece_is_released(
    tmp_path: Path,
) -> None:
    path = tmp_path / "big"
    path.write_bytes(os.urandom(8 * MiB))
    fd = os.open(path, os.O_RDONLY)
    released: list[int] = []
    transport, client = await _connected()  # the client never reads
    sender = FileSender(transport, idle_limit=0.3)
    failure: BaseException | None = None
    handed = 0
    try:
        for n in range(40):  # far more than the socket buffers hold
            handed += 1
            await sender.send(fd, 0, 8 * MiB, functools.partial(released.append, n))
        await sender.flush()
    except (TimeoutError, ConnectionError) as exc:
        failure = exc
    assert isinstance(failure, TimeoutError)
    assert handed <= 4  # the queue never ran far ahead of the socket
    with pytest.raises(TimeoutError):  # what sending met is raised again, and
        await sender.send(fd, 0, MiB, functools.partial(released.append, handed))
    handed += 1  # ... the piece refused is released all the same
    sender.close()
    await asyncio.sleep(0.2)  # a thread still sending is waited for before releasing
    assert sorted(released) == list(range(handed))  # each piece handed over, released once
    assert sender._fd == -1  # the connection's duplicate is closed
    transport.close()
    client.close()
    os.close(fd)


async def test_downloads_take_turns_on_the_sending_threads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # One sending thread for two busy downloads: neither waits for the other to finish.
    monkeypatch.setattr(sendfile, "SENDERS", ThreadPoolExecutor(max_workers=1))
    path = tmp_path / "f"
    path.write_bytes(os.urandom(MiB))
    fd = os.open(path, os.O_RDONLY)
    pieces = 4 * sendfile.JOB_PIECES
    loop = asyncio.get_running_loop()

    async def download(transport: asyncio.Transport) -> None:
        sender = FileSender(transport, idle_limit=10.0)
        for _ in range(pieces):
            await sender.send(fd, 0, MiB)
        await sender.flush()
        sender.close()

    def receive(client: socket.socket, times: list[tuple[float, int]]) -> None:
        got = 0
        while got < pieces * MiB:
            chunk = client.recv(1 << 16)
            if not chunk:
                break
            got += len(chunk)
            times.append((time.monotonic(), got))
        assert got == pieces * MiB

    (a, a_client), (b, b_client) = await _connected(), await _connected()
    a_times: list[tuple[float, int]] = []
    b_times: list[tuple[float, int]] = []
    readers = [
        loop.run_in_executor(None, receive, a_client, a_times),
        loop.run_in_executor(None, receive, b_client, b_times),
    ]
    await asyncio.gather(download(a), download(b))
    await asyncio.gather(*readers)
    # When either saw its first byte, the other had not yet had half of its download.
    for first, other in ((a_times, b_times), (b_times, a_times)):
        started = first[0][0]
        had = max((n for t, n in other if t <= started), default=0)
        assert had < pieces * MiB // 2, (had, started)
    for end in (a, b):
        end.close()
    a_client.close()
    b_client.close()
    os.close(fd)
