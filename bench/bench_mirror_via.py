"""``mirror pull --via`` in front of a private repository (issue 18, item 5).

A ``butler serve --read-access token`` with ``--files`` files of 1 MiB, proxyd in front.
Side by side in one run, each into a new mirror, ``--jobs 8``:

- alice through the proxy, cold (she fills the proxy's cache);
- bob through the proxy, warm (each of his files is a revalidation with his token, 304);
- carol straight from the server (no proxy), the peer for bob's pull.

Bob's and carol's pulls alternate which goes first over ``--rounds``. Printed per pull: wall
seconds, the mirror process's CPU seconds, and what the server sent for files (body bytes and
requests, from its access log); then bob's wall time over carol's. The point is the server's
bytes (bob: 0); the times say what the revalidations cost a pull on loopback, where the
network is free (on a real link, bob's pull moves no file bytes over it).

Usage: python bench/bench_mirror_via.py [--files 200] [--rounds 2]
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from proxies import Proxy, running  # noqa: E402
from servers import ButlerServer, served  # noqa: E402

from butler import Butler  # noqa: E402

MiB = 2**20
TOKENS = {name: f"{name}-token-0123456789abcdef" for name in ("alice", "bob", "carol")}
TOKENS_YAML = "tokens:\n" + "".join(
    f'  - name: {name}\n    token: "{token}"\n    scopes: [read]\n'
    for name, token in TOKENS.items()
)


def make_source(root: Path, files: int) -> None:
    with Butler.create(root) as butler:
        butler.insert_dimension_records("instrument", {"name": "HSC"})
        butler.insert_dimension_records(
            "detector", *({"instrument": "HSC", "id": d} for d in range(100))
        )
        butler.insert_dimension_records(
            "visit", *({"instrument": "HSC", "id": v} for v in range(files // 100 + 1))
        )
        butler.register_dataset_type("blob", ["visit", "detector"], "Array")
    payload = np.random.default_rng(0).random((MiB - 128) // 8)  # 1 MiB with the header
    with Butler(root, run="big") as butler, butler.transaction():
        for i in range(files):
            payload[0] = i
            butler.put(payload, "blob", instrument="HSC", visit=i // 100, detector=i % 100)


def pull(
    server: ButlerServer, dest: Path, who: str, via: str | None
) -> tuple[float, float, int, int]:
    """One pull: wall seconds, CPU seconds, file bytes and file requests at the server."""
    token_file = dest.parent / f"{who}.token"
    token_file.write_text(TOKENS[who])
    command = [sys.executable, "-m", "mirror.cli", "pull", server.url, "--dest", str(dest)]
    command += ["--dataset-type", "blob", "--collections", "big", "--jobs", "8", "--quiet"]
    command += ["--token-file", str(token_file)] + (["--via", via] if via else [])
    mark = server.mark()
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run(command, check=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
    return wall, cpu, server.file_bytes_sent(mark), len(server.file_requests(mark))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--files", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-mirror-via-") as tmp:
        work = Path(tmp)
        make_source(work / "repo", args.files)
        with (
            served(
                work / "repo", work / "server", "--read-access", "token", tokens_yaml=TOKENS_YAML
            ) as server,
            running(Proxy({"repo": server.url}, work / "proxy", block_size="1MiB")) as proxy,
        ):

            def show(label: str, result: tuple[float, float, int, int]) -> None:
                wall, cpu, sent, requests = result
                print(
                    f"{label:<28} {wall:6.2f} s wall  {cpu:5.2f} s CPU  server: "
                    f"{sent / MiB:7.1f} MiB in {requests} file requests"
                )

            print(f"{args.files} files of 1 MiB, mirror pull --jobs 8")
            show("alice via proxy (cold)", pull(server, work / "alice", "alice", proxy.url))
            ratios = []
            for round_ in range(args.rounds):
                order = ["bob", "carol"] if round_ % 2 == 0 else ["carol", "bob"]
                walls = {}
                for who in order:
                    dest = work / f"{who}-{round_}"
                    via = proxy.url if who == "bob" else None
                    result = pull(server, dest, who, via)
                    walls[who] = result[0]
                    show(f"{who} {'via proxy (warm)' if via else 'direct'} #{round_ + 1}", result)
                ratios.append(walls["bob"] / walls["carol"])
            print("bob / carol wall: " + ", ".join(f"{r:.2f}" for r in ratios))


if __name__ == "__main__":
    main()
