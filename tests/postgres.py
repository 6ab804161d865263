"""Debian's PostgreSQL as a throwaway registry server for tests and benchmarks.

:class:`PostgresServer` runs ``initdb`` on a new data directory and ``postgres`` on
127.0.0.1 and a free port (its socket in the data directory, never the system's), as the
``postgres`` user when run as root (PostgreSQL refuses root), with ``setpriv --pdeathsig``
so a killed pytest takes it down. :meth:`PostgresServer.new_registry` hands each test an
empty schema of its own (:meth:`PostgresServer.new_database` a database, for the bench).
"""

from __future__ import annotations

import contextlib
import itertools
import os
import pwd
import shutil
import signal
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from nginx import free_port


class PostgresNotFound(RuntimeError):
    """No PostgreSQL server binaries; install Debian's ``postgresql`` (scripts/test.sh does)."""


def postgres_bindir() -> Path:
    found = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/postgres"),
        key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit() else 0,
    )
    if not found:
        raise PostgresNotFound(
            "PostgreSQL not found under /usr/lib/postgresql (apt-get install postgresql)"
        )
    return found[-1].parent


class PostgresServer:
    """One ``postgres`` on a fresh data directory under ``workdir``.

    ``durable=False`` (tests) turns fsync off: nothing here outlives the run. The bench keeps
    PostgreSQL's defaults but ``synchronous_commit``, to match SQLite's WAL with
    ``synchronous=NORMAL`` (a commit waits for no disk flush in either)."""

    def __init__(self, workdir: Path, *, durable: bool = False) -> None:
        self.workdir = Path(workdir)
        self.datadir = self.workdir / "data"
        self.log_path = self.workdir / "postgres.log"
        self.durable = durable
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None
        self._names = itertools.count(1)
        self._tests_database = False
        self._as_user: list[str] = []
        self.user = pwd.getpwuid(os.getuid()).pw_name
        if os.getuid() == 0:
            self.user = "postgres"
            entry = pwd.getpwnam("postgres")
            self._as_user = [
                f"--reuid={entry.pw_uid}",
                f"--regid={entry.pw_gid}",
                "--clear-groups",
            ]

    def _command(self, argv: Sequence[str]) -> list[str]:
        return ["setpriv", *self._as_user, "--pdeathsig", "KILL", *argv]

    def restart(self) -> None:
        """Restart on the same port and data, as an operator would (a fast shutdown: every
        session is ended, every commit kept — the test server's ``synchronous_commit =
        off`` would lose the last ones in a crash)."""
        assert self.process is not None
        self.process.send_signal(signal.SIGINT)
        self.process.wait(timeout=60)
        self.process = None
        self._run_postgres(postgres_bindir(), [self.port])

    def start(self) -> None:
        bindir = postgres_bindir()
        self.workdir.mkdir(parents=True, exist_ok=True)
        if os.getuid() == 0:
            entry = pwd.getpwnam("postgres")
            os.chown(self.workdir, entry.pw_uid, entry.pw_gid)
            # The postgres user must reach the work directory through its parents.
            for parent in self.workdir.parents:
                if parent == Path("/"):
                    break
                mode = parent.stat().st_mode
                if not mode & 0o001:
                    os.chmod(parent, mode | 0o001)
        initdb = subprocess.run(  # noqa: S603 - Debian's initdb, our arguments
            self._command(
                [
                    str(bindir / "initdb"),
                    "-D",
                    str(self.datadir),
                    "-U",
                    self.user,
                    "--auth=trust",
                    "--encoding=UTF8",
                    "--no-sync",
                ]
            ),
            check=False,
            capture_output=True,
            text=True,
            timeout=120,
        )
        if initdb.returncode != 0:
            raise RuntimeError(f"initdb failed: {initdb.stdout}{initdb.stderr}")
        self._run_postgres(bindir, [free_port() for _ in range(5)])

    def _run_postgres(self, bindir: Path, ports: Sequence[int]) -> None:
        settings = {
            "listen_addresses": "127.0.0.1",
            "unix_socket_directories": str(self.datadir),
            "max_connections": "200",
            "shared_buffers": "128MB",
            "synchronous_commit": "off",
        }
        if not self.durable:
            settings.update(fsync="off", full_page_writes="off")
        for port in ports:
            self.port = port
            args = [str(bindir / "postgres"), "-D", str(self.datadir), "-p", str(self.port)]
            for key, value in settings.items():
                args += ["-c", f"{key}={value}"]
            log = open(self.log_path, "ab")  # noqa: SIM115 - owned by the process
            self.process = subprocess.Popen(  # noqa: S603 - Debian's postgres
                self._command(args), stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
            log.close()
            if self._wait_ready():
                return
            self.stop()
        log = self.log_path.read_text(errors="replace")[-3000:]
        raise RuntimeError(f"postgres did not start; the end of {self.log_path}:\n{log}")

    def _wait_ready(self) -> bool:
        import psycopg

        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                return False
            try:
                psycopg.connect(self.url("postgres"), connect_timeout=2).close()
                return True
            except psycopg.OperationalError:
                time.sleep(0.1)
        return False

    def url(self, database: str) -> str:
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{database}"

    def admin(self, sql: str) -> None:
        """Run one statement as the superuser, outside any transaction (CREATE DATABASE)."""
        import psycopg

        with psycopg.connect(self.url("postgres"), autocommit=True) as conn:
            conn.execute(sql)  # type: ignore[arg-type]

    def new_database(self, prefix: str = "t") -> str:
        """The URL of a new, empty database (names are made here, never by a caller)."""
        name = f"{prefix}_{os.getpid()}_{next(self._names)}"
        assert name.replace("_", "").isalnum()
        self.admin(f"CREATE DATABASE {name}")
        return self.url(name)

    def new_registry(self) -> str:
        """The URL of a new, empty schema of the shared ``tests`` database (its search path
        set in the URL): much cheaper than a database each, which copies a template's
        thousand files that the session's end must delete again."""
        if not self._tests_database:
            self.admin("CREATE DATABASE tests")
            self._tests_database = True
        name = f"r_{os.getpid()}_{next(self._names)}"
        assert name.replace("_", "").isalnum()
        with self._connect("tests") as conn:
            conn.execute(f"CREATE SCHEMA {name}")  # type: ignore[arg-type]
        return f"{self.url('tests')}?options=-csearch_path%3D{name}"

    def drop_registry(self, url: str) -> None:
        """End the sessions a test left open on its schema, and drop it."""
        name = url.rsplit("%3D", 1)[1]
        assert name.replace("_", "").isalnum()
        with self._connect("tests") as conn:
            conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE pid <> pg_backend_pid() AND datname = 'tests'"
            )
            conn.execute(f"DROP SCHEMA {name} CASCADE")  # type: ignore[arg-type]

    def _connect(self, database: str) -> Any:
        import psycopg

        return psycopg.connect(self.url(database), autocommit=True)

    def stop(self) -> None:
        if self.process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            # Immediate shutdown of the postmaster, which ends its children: nothing here
            # is kept, so there is no shutdown checkpoint to wait for.
            self.process.send_signal(signal.SIGQUIT)
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)
        self.process = None

    def remove(self) -> None:
        """Stop, and delete the work directory (and its parent, if this made it empty)."""
        self.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)
        with contextlib.suppress(OSError):
            self.workdir.parent.rmdir()
