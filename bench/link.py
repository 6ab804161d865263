"""A long link on loopback, for benchmarks: a TCP relay to one origin port whose answers
(origin to client) all share one rate, as the connections of a site share the link to a
far repository. Requests (client to origin) pass unpaced. Nothing of the machine's network
settings is touched.

    python bench/link.py --to PORT --rate 100MB [--port 0]

Prints ``listening PORT`` once it accepts connections. Loopback only.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from proxyd.settings import parse_size  # noqa: E402

CHUNK = 64 * 1024


class SharedRate:
    """A token bucket every connection draws from; bursts of at most ``burst`` bytes."""

    def __init__(self, rate: int, burst: int = 256 * 1024) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = float(burst)
        self.stamp = time.monotonic()
        self.lock = asyncio.Lock()

    async def take(self, n: int) -> None:
        async with self.lock:  # first come, first served: the link is one queue
            while True:
                now = time.monotonic()
                self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
                self.stamp = now
                if self.tokens >= n:
                    self.tokens -= n
                    return
                await asyncio.sleep((n - self.tokens) / self.rate)


async def pipe(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, rate: SharedRate | None
) -> None:
    try:
        while chunk := await reader.read(CHUNK):
            if rate is not None:
                await rate.take(len(chunk))
            writer.write(chunk)
            await writer.drain()
    except ConnectionError:
        pass  # a side reset its connection: the relay of this connection simply ends
    finally:
        with contextlib.suppress(Exception):
            writer.close()


async def serve(port: int, origin_port: int, rate: SharedRate) -> None:
    async def relay(client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        try:
            origin_r, origin_w = await asyncio.open_connection("127.0.0.1", origin_port)
        except OSError:
            client_w.close()
            return
        await asyncio.gather(pipe(client_r, origin_w, None), pipe(origin_r, client_w, rate))

    server = await asyncio.start_server(relay, "127.0.0.1", port)
    print(f"listening {server.sockets[0].getsockname()[1]}", flush=True)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--to", type=int, required=True, help="the origin's port on 127.0.0.1")
    parser.add_argument("--rate", type=parse_size, required=True, help="bytes/s, e.g. 100MB")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    asyncio.run(serve(args.port, args.to, SharedRate(args.rate)))


if __name__ == "__main__":
    main()
