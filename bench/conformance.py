"""Run the public HTTP caching conformance suite (cache-tests) through proxyd (issue 22).

    python bench/conformance.py                  # the whole suite, summary + per-group table
    python bench/conformance.py --id freshness-max-age   # one test, every request/response
    python bench/conformance.py --keep           # leave the scratch directory for a look

What it does, as ``../shared/CONFORMANCE.md`` describes a run:

1. copies the suite (``--suite``, default ``<repo>/../shared/cache-tests``) to a scratch
   directory and runs ``npm install`` there; ``node_modules`` is kept in
   ``bench/out/conformance-node_modules`` between runs, so only the first run downloads;
2. starts the suite's origin on 127.0.0.1 and a free port, under
   ``node --import listen-local.mjs`` (``--tools``, default ``<repo>/../shared/cache-tests-tools``);
3. starts proxyd (scratch cache directory, 127.0.0.1 and a free port) with upstreams ``test``,
   ``config`` and ``state`` pointing at the origin;
4. runs ``npm run --silent cli --base=...``, writes the results JSON to
   ``bench/out/conformance-results.json`` and prints ``summarize.mjs``'s totals and its
   per-group table (``--groups --failed``).

Every server is stopped at the end, each within a bounded time. Not part of CI: one run
takes a minute or two.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as a script: import the proxyd of this tree

from butler.server.process import free_port  # noqa: E402
from proxyd.process import ProxydProcess  # noqa: E402

OUT = REPO / "bench" / "out"
NODE_MODULES = OUT / "conformance-node_modules"
RESULTS = OUT / "conformance-results.json"
SUITE_TIMEOUT = 900.0
"""Seconds the whole suite may take (a run takes one or two minutes)."""


def fail(message: str) -> None:
    print(f"conformance: {message}", file=sys.stderr)
    sys.exit(2)


def prepare_suite(suite: Path, scratch: Path) -> Path:
    """Copy the suite to ``scratch`` and install its dependencies (cached under bench/out)."""
    work = scratch / "cache-tests"
    shutil.copytree(suite, work, ignore=shutil.ignore_patterns("node_modules", ".git"))
    lock = suite / "package-lock.json"
    stamp = NODE_MODULES / ".package.json"
    wanted = (suite / "package.json").read_text() + (lock.read_text() if lock.exists() else "")
    if NODE_MODULES.is_dir() and stamp.exists() and stamp.read_text() == wanted:
        shutil.copytree(NODE_MODULES, work / "node_modules", symlinks=True)
        return work
    print("conformance: npm install (first run; cached in bench/out afterwards)", flush=True)
    done = subprocess.run(
        ["npm", "install", "--no-audit", "--no-fund", "--loglevel=error"],
        cwd=work,
        timeout=600,
        check=False,
    )
    if done.returncode != 0:
        fail(f"npm install failed in {work} (exit {done.returncode})")
    shutil.rmtree(NODE_MODULES, ignore_errors=True)
    shutil.copytree(work / "node_modules", NODE_MODULES, symlinks=True)
    stamp.write_text(wanted)
    return work


@contextlib.contextmanager
def origin(work: Path, tools: Path, scratch: Path) -> Iterator[str]:
    """The suite's origin on 127.0.0.1 and a free port: yields its URL."""
    port = free_port()
    env = {
        **os.environ,
        "npm_config_port": str(port),
        "npm_config_protocol": "http",
        "npm_config_pidfile": str(scratch / "origin.pid"),
    }
    log = open(scratch / "origin.log", "ab")  # noqa: SIM115 - closed below
    process = subprocess.Popen(
        ["node", "--import", str(tools / "listen-local.mjs"), "test-engine/server/server.mjs"],
        cwd=work,
        env=env,
        stdout=log,
        stderr=log,
        start_new_session=True,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        wait_for_port(port, process)
        yield url
    finally:
        stop(process)
        log.close()


def wait_for_port(port: int, process: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    """Wait until something accepts connections on ``port`` (the origin answers 404 to
    unknown paths, so an HTTP probe would prove no more)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            fail(f"the suite's origin exited with status {process.returncode}; see origin.log")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
            return
        time.sleep(0.1)
    fail(f"the suite's origin did not listen on port {port} within {timeout} s")


def stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM the process group, SIGKILL after 10 s."""
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)


def run_cli(work: Path, base: str, test_id: str | None) -> subprocess.CompletedProcess[str]:
    args = ["npm", "run", "--silent", "cli", f"--base={base}"]
    if test_id:
        args.append(f"--id={test_id}")
    return subprocess.run(
        args, cwd=work, capture_output=True, text=True, timeout=SUITE_TIMEOUT, check=False
    )


def summarize(work: Path, tools: Path, results: Path) -> str:
    done = subprocess.run(
        ["node", str(tools / "summarize.mjs"), str(results), "--groups", "--failed"],
        env={**os.environ, "CACHE_TESTS_SRC": str(work)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if done.returncode != 0:
        fail(f"summarize.mjs failed: {done.stderr.strip()}")
    return done.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    shared = REPO.parent / "shared"
    parser.add_argument("--suite", type=Path, default=shared / "cache-tests")
    parser.add_argument("--tools", type=Path, default=shared / "cache-tests-tools")
    parser.add_argument("--id", dest="test_id", help="run one test and show its exchanges")
    parser.add_argument("--keep", action="store_true", help="keep the scratch directory")
    parser.add_argument(
        "--proxy-arg", action="append", default=[], help="extra argument for `proxyd serve`"
    )
    args = parser.parse_args()
    for path, what in ((args.suite, "the suite (--suite)"), (args.tools, "its tools (--tools)")):
        if not path.is_dir():
            fail(f"{what} not found at {path}; see CONFORMANCE.md")
    if not (args.suite / "tests" / "index.mjs").exists():
        fail(f"{args.suite} is not the cache-tests suite (no tests/index.mjs)")
    for tool in ("node", "npm"):
        if shutil.which(tool) is None:
            fail(f"{tool} is not installed (Debian: apt-get install nodejs npm)")
    OUT.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="conformance-"))
    try:
        work = prepare_suite(args.suite, scratch)
        with origin(work, args.tools, scratch) as origin_url:
            upstreams = {name: f"{origin_url}/{name}/" for name in ("test", "config", "state")}
            proxy = ProxydProcess(
                upstreams, scratch / "cache", scratch / "proxyd.log", *args.proxy_arg
            )
            with proxy:
                started = time.monotonic()
                done = run_cli(work, proxy.url.rstrip("/"), args.test_id)
                took = time.monotonic() - started
        if args.test_id:
            print(done.stdout, end="")
            print(done.stderr, end="", file=sys.stderr)
            return
        try:
            results = json.loads(done.stdout)
        except json.JSONDecodeError:
            fail(f"the suite printed no results (exit {done.returncode}): {done.stderr[-2000:]}")
        RESULTS.write_text(json.dumps(results, indent=1, sort_keys=True) + "\n")
        print(f"conformance: {len(results)} tests in {took:.0f} s; results in {RESULTS}")
        print(summarize(work, args.tools, RESULTS), end="")
    finally:
        if args.keep:
            print(f"conformance: scratch directory kept: {scratch}")
        else:
            shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
