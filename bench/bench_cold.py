"""Issue 17, item 1: what cold reads through proxyd cost ``butler serve``, against the same
reads made directly.

A repository holds two images with variance and mask (float32 image and variance, int32
mask): 4096x4096 (192 MiB of pixels) and, unless ``--quick``, 10,000x10,000 (1.1 GiB). For
each read a new proxyd is started on an empty cache directory (cold), and the file bytes the
server sent are read from its access log:

    metadata           butler.get("calexp.metadata")             target <= 4x direct or <= 64 KiB
    cutout 200x200     butler.get("calexp", bbox=200x200)        target <= 2x direct
    cutout 500x500     the same on the 10,000x10,000 image        target <= 2x direct
    whole object       curl of the file, one client, then two     target <= 1.5x direct time,
                       at once (each object must cross once)       file bytes == its size;
                       beside it, the peer: nginx (proxy_cache + slice + cache lock)
                       and, for one client, the floor of any Python relay that stores
                       what it forwards (bench/cold_floor.py), storing and not

``--link RATE`` puts a far repository's link between both sides and ``butler serve``
(bench/link.py: one rate shared by every connection, as a site's link to the repository is).
Without it the origin is loopback with its file in the page cache: the hardest case for any
cache, whose own work is then most of the time.

Usage: PYTHONPATH=. python bench/bench_cold.py [--quick] [--block-size 1MiB] [--link 100MB]
Everything runs on 127.0.0.1; every read is bounded in time.
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import harness  # noqa: E402
from proxies import Proxy  # noqa: E402
from servers import ButlerServer  # noqa: E402

from butler import Box, Butler, Image  # noqa: E402
from proxyd.settings import parse_size  # noqa: E402

KiB = 1024
HSC = {"instrument": "HSC"}
SMALL = {"visit": 100, "detector": 0}
BIG = {"visit": 100, "detector": 1}


def make_repo(root: Path, big: bool) -> None:
    """The repository: dimensions, one dataset type, the images (random pixels: no two
    rows alike, so nothing compresses or repeats)."""
    rng = np.random.default_rng(17)
    with Butler.create(root) as butler:
        butler.insert_dimension_records("instrument", {"name": "HSC", "detector_max": 112})
        butler.insert_dimension_records("band", {"name": "r"})
        butler.insert_dimension_records(
            "physical_filter", {"instrument": "HSC", "name": "HSC-R", "band": "r"}
        )
        butler.insert_dimension_records("day_obs", {"instrument": "HSC", "id": 20240101})
        butler.insert_dimension_records(
            "detector", *[{"instrument": "HSC", "id": d, "full_name": f"ccd{d}"} for d in (0, 1)]
        )
        butler.insert_dimension_records(
            "visit",
            {
                "instrument": "HSC",
                "id": 100,
                "physical_filter": "HSC-R",
                "day_obs": 20240101,
            },
        )
        butler.register_dataset_type("calexp", ["visit", "detector"], "Image")
    with Butler(root, run="run1") as butler:
        sizes = [(SMALL, 4096)] + ([(BIG, 10_000)] if big else [])
        for ids, side in sizes:
            data = rng.standard_normal((side, side), dtype=np.float32)
            variance = rng.random((side, side), dtype=np.float32)
            mask = (rng.random((side, side), dtype=np.float32) < 0.01).astype(np.int32)
            butler.put(Image(data, variance=variance, mask=mask), "calexp", HSC, **ids)
            del data, variance, mask


@contextmanager
def cold_proxy(origin: str, work: Path, block_size: str) -> Iterator[Proxy]:
    """A proxyd on an empty cache directory in front of ``origin``."""
    shutil.rmtree(work, ignore_errors=True)
    proxy = Proxy({"repo": origin}, work, block_size=block_size)
    try:
        yield proxy.start()
    finally:
        proxy.terminate_quietly()
        shutil.rmtree(work, ignore_errors=True)


def file_cost(server: ButlerServer, read: Callable[[], object]) -> tuple[int, int]:
    """(file bytes the server sent, file requests it answered) for ``read``."""
    mark = server.mark()
    read()
    return server.file_bytes_sent(mark), len(server.file_requests(mark))


def butler_reads(url: str, cache: Path) -> dict[str, Callable[[], object]]:
    def get(component: str, ids: dict[str, int], box: Box | None = None) -> Callable[[], object]:
        def read() -> object:
            shutil.rmtree(cache, ignore_errors=True)
            params: dict[str, Any] = {"bbox": box} if box is not None else {}
            with Butler(url, collections="run1", cache_dir=cache) as butler:
                return butler.get(component, HSC, **ids, parameters=params)

        return read

    return {
        "metadata": get("calexp.metadata", SMALL),
        "cutout 200x200": get("calexp", SMALL, Box(1800, 2100, 200, 200)),
        "cutout 500x500": get("calexp", BIG, Box(4200, 6100, 500, 500)),
    }


def curl(url: str, results: list[float], limit: float = 600.0) -> None:
    start = time.perf_counter()
    subprocess.run(  # noqa: S603 - curl on loopback, fixed arguments
        ["curl", "-sS", "-f", "-o", "/dev/null", "--max-time", str(limit), url],
        check=True,
    )
    results.append(time.perf_counter() - start)


def timed_clients(url: str, clients: int) -> float:
    """Seconds until the slowest of ``clients`` simultaneous downloads of ``url`` ends."""
    results: list[float] = []
    threads = [threading.Thread(target=curl, args=(url, results)) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == clients, "a download failed"
    return max(results)


def file_path_of(
    server: ButlerServer, origin: str, cache: Path, ids: dict[str, int]
) -> tuple[str, int]:
    """The /files/ target of an image and its size, from a direct read's log."""
    mark = server.mark()
    shutil.rmtree(cache, ignore_errors=True)
    with Butler(origin, collections="run1", cache_dir=cache) as butler:
        butler.get("calexp.metadata", HSC, **ids)
        path = butler.get_uri("calexp", HSC, **ids)
    target = server.file_requests(mark)[0]["target"]
    size = int(
        subprocess.run(  # noqa: S603
            ["curl", "-sS", "-I", origin.rstrip("/") + target],
            capture_output=True,
            text=True,
            check=True,
        )
        .stdout.lower()
        .split("content-length:")[1]
        .split()[0]
    )
    del path
    return target, size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="skip the 10,000x10,000 image")
    parser.add_argument("--block-size", default="1MiB", help="proxyd's --block-size")
    parser.add_argument(
        "--link", type=parse_size, help="a far link's rate, shared by all (e.g. 100MB)"
    )
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-cold-"))
    try:
        print("making the repository ...", file=sys.stderr)
        make_repo(work / "repo", big=not args.quick)
        server = ButlerServer(work / "repo", work / "server", tokens=False)
        (work / "server").mkdir()
        server.start()
        try:
            if args.link is None:
                run(server, server.url, work, args.block_size, quick=args.quick)
            else:
                with far_link(server.url, args.link) as link:
                    print(f"through a link of {args.link:,} B/s shared by all connections")
                    run(server, link, work, args.block_size, quick=args.quick)
        finally:
            server.stop()
    finally:
        shutil.rmtree(work, ignore_errors=True)


def run(server: ButlerServer, origin: str, work: Path, block_size: str, *, quick: bool) -> None:
    """Each read direct and through a cold proxyd (and peers); ``origin`` is where both
    send their requests (``server`` itself, or the far end of a link to it)."""
    targets = {"metadata": 4.0, "cutout 200x200": 2.0, "cutout 500x500": 2.0}
    print(f"proxyd --block-size {block_size}, cold cache for every read")
    print(f"{'read':<18}{'direct B':>12}{'proxyd B':>12}{'ratio':>8}  target   requests d/p")
    for name, direct_read in butler_reads(origin, work / "client").items():
        if quick and name == "cutout 500x500":
            continue
        direct, direct_n = file_cost(server, direct_read)
        with cold_proxy(origin, work / "proxy", block_size) as proxy:
            via_read = butler_reads(proxy.upstream_url("repo"), work / "client")[name]
            via, via_n = file_cost(server, via_read)
        ratio = via / direct
        ok = ratio <= targets[name] or (name == "metadata" and via <= 64 * KiB)
        goal = f"<={targets[name]:g}x" + (" or 64K" if name == "metadata" else "")
        print(
            f"{name:<18}{direct:>12,}{via:>12,}{ratio:>8.2f}  {goal:<8} {direct_n}/{via_n}"
            f"  {'ok' if ok else 'MISSED'}"
        )

    for ids in [SMALL] if quick else [SMALL, BIG]:
        whole_object(server, origin, work, block_size, ids)


def whole_object(
    server: ButlerServer, origin: str, work: Path, block_size: str, ids: dict[str, int]
) -> None:
    """Cold whole reads of one image's file: direct, through proxyd and the peers."""
    target, size = file_path_of(server, origin, work / "client", ids)
    print(f"whole object: {size:,} bytes ({target.rsplit('/', 1)[-1]})")
    direct_url = origin.rstrip("/") + target
    direct_one = 0.0
    for clients in (1, 2):
        timed_clients(direct_url, 1)  # the origin's page cache warm for both sides
        direct_s = timed_clients(direct_url, clients)
        direct_one = direct_one or direct_s
        with cold_proxy(origin, work / "proxy", block_size) as proxy:
            mark = server.mark()
            via_s = timed_clients(proxy.upstream_url("repo") + target.lstrip("/"), clients)
            crossed = server.file_bytes_sent(mark)
        peer_s = cold_nginx(origin, work / "nginx", block_size, target, clients)
        ratio = via_s / direct_s
        ok = ratio <= 1.5 and crossed == size
        print(
            f"whole, {clients} client{'s' if clients > 1 else ' '}  direct {direct_s:6.2f} s"
            f" ({size / direct_s / 1e6:,.0f} MB/s)  proxyd {via_s:6.2f} s"
            f"  ratio {ratio:5.2f} (<=1.5x)  crossed {crossed / size:.2f}x"
            f"  {'ok' if ok else 'MISSED'}"
            f"   [nginx slice cache {peer_s:6.2f} s, {peer_s / direct_s:5.2f}x]"
        )
    for store in (False, True):
        floor_s = cold_floor(origin, work / "floor", target, store=store)
        what = "storing each block" if store else "storing nothing"
        print(
            f"  floor: a threaded Python relay {what} (bench/cold_floor.py), 1 client:"
            f" {floor_s:6.2f} s, {floor_s / direct_one:5.2f}x direct"
        )


@contextmanager
def bench_process(script: str, *args: str) -> Iterator[str]:
    """A helper server of bench/ (it prints ``listening PORT``); yields its base URL."""
    argv = [sys.executable, str(Path(__file__).with_name(script)), *args]
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)  # noqa: S603
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        if not line.startswith("listening "):
            raise RuntimeError(f"{script} did not start: {line!r}")
        yield f"http://127.0.0.1:{int(line.split()[1])}/"
    finally:
        process.terminate()
        process.wait(timeout=10)


def far_link(origin: str, rate: int) -> contextlib.AbstractContextManager[str]:
    """bench/link.py in front of ``origin``: the URL of its far end."""
    port = urllib.parse.urlsplit(origin).port
    return bench_process("link.py", "--to", str(port), "--rate", str(rate))


def cold_floor(origin: str, work: Path, target: str, *, store: bool) -> float:
    """One cold read through bench/cold_floor.py (see there): the least any Python process
    that forwards (and stores) the object costs, beside the direct read."""
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    args = ["--origin", origin, *(("--store", str(work)) if store else ())]
    try:
        with bench_process("cold_floor.py", *args) as relay:
            return timed_clients(relay.rstrip("/") + target, 1)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def cold_nginx(origin: str, work: Path, block_size: str, target: str, clients: int) -> float:
    """The same cold read through the peer, nginx with proxy_cache + slice (slice = proxyd's
    block size) + cache lock, on an empty cache: what the field's cache does here."""
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    peer = harness.start_nginx_peer(origin, work, parse_size(block_size))
    try:
        return timed_clients(peer.url.rstrip("/") + target, clients)
    finally:
        peer.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
