"""The floor of a cold whole-object read through any Python process that stores what it
forwards: the least such a relay can do, as a peer for ``bench_cold.py``.

A thread per client; the origin is read with ``http.client`` straight into 1 MiB buffers
(``readinto``: one copy out of the kernel), each buffer is sent on with one ``sendall`` and,
with ``--store DIR``, stored as proxyd stores a block: an XXH3-128 digest per 64 KiB, then
header and data written to a new file. No cache index, no coalescing, no ranges, no
revalidation, no limits: nothing a cache needs beyond moving and keeping the bytes (the
encoding is proxyd's own, :class:`proxyd.store.EncodedBlock`). Whatever
proxyd costs above this is its own; what this costs above a direct read is the price of
being a store-and-forward process written in Python at all.

    python bench/cold_floor.py --port 0 --origin http://127.0.0.1:PORT/ [--store DIR]

Prints ``listening PORT`` once it accepts connections. Loopback only.
"""

from __future__ import annotations

import argparse
import http.client
import http.server
import os
import sys
import urllib.parse
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from proxyd.settings import ProxySettings  # noqa: E402
from proxyd.store import EncodedBlock  # noqa: E402

BLOCK = ProxySettings().block_size


def store_block(directory: Path, index: int, data: bytearray) -> None:
    """One block as proxyd writes it (header with its digests, then the data), to a new file."""
    block = EncodedBlock(data)
    fd = os.open(directory / f"{index:08d}.val", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, block.header.encoded())
        os.write(fd, block.data)
    finally:
        os.close(fd)


def make_handler(origin: urllib.parse.SplitResult, store: Path | None) -> type:
    class Relay(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            upstream = http.client.HTTPConnection(origin.hostname or "", origin.port, timeout=60)
            upstream.request("GET", origin.path.rstrip("/") + self.path)
            answer = upstream.getresponse()
            size = int(answer.getheader("Content-Length") or 0)
            self.send_response(answer.status)
            self.send_header("Content-Length", str(size))
            self.end_headers()
            directory = None
            if store is not None:
                directory = store / os.urandom(8).hex()
                directory.mkdir()
            sent = 0
            index = 0
            while sent < size:
                block = bytearray(min(BLOCK, size - sent))
                buffer = memoryview(block)
                filled = 0
                while filled < len(buffer):
                    got = answer.readinto(buffer[filled:])
                    if not got:
                        raise ConnectionError("the origin's body ended early")
                    filled += got
                self.wfile.write(buffer)
                if directory is not None:
                    store_block(directory, index, block)
                sent += filled
                index += 1
            upstream.close()

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002
            pass

    return Relay


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--origin", required=True, help="http://127.0.0.1:PORT/ of the origin")
    parser.add_argument("--store", type=Path, help="store each block under this directory")
    args = parser.parse_args()
    origin = urllib.parse.urlsplit(args.origin)
    if origin.hostname != "127.0.0.1":
        sys.exit("the floor relay talks to 127.0.0.1 only")
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", args.port), make_handler(origin, args.store)
    )
    print(f"listening {server.server_address[1]}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
