"""Shared fixtures: repositories with dimension records, ready for datasets."""

from __future__ import annotations

import contextlib
import errno
import os
import sqlite3
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar, NoReturn

import pytest
import yaml
from hypothesis import settings
from postgres import PostgresNotFound, PostgresServer, postgres_bindir

from butler import Butler
from butler.formatters.base import Formatter
from butler.io.source import ByteSource

# Property tests explore new examples on every developer run (that is how they find bugs);
# under CI they draw the same examples each time, so a red build is always reproducible and
# never a roll of the dice. Either way a failure prints the example that failed.
settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")

REGISTRY_BACKENDS = ("sqlite",)
"""The registry engines a test module's repositories use. A module that sets its own
``REGISTRY_BACKENDS = ("sqlite", "postgresql")`` runs each test using ``registry_url``
(and so ``repo_path``, ``butler``) on both: one suite, two engines."""

VISITS = list(range(100, 110))
DETECTORS = list(range(4))


def direct_io_in_tmp() -> bool:
    """Whether the file system of the temporary directory (where ``tmp_path`` lives) lets a
    file be opened for direct writes (O_DIRECT): not tmpfs, for one, which refuses it. Asked
    of the kernel itself, not of the mirror's PartFile, whose choice the tests check."""
    flag = getattr(os, "O_DIRECT", 0)
    if not flag:
        return False
    with tempfile.TemporaryDirectory() as directory:
        try:
            fd = os.open(Path(directory) / "probe", os.O_WRONLY | os.O_CREAT | flag, 0o644)
        except OSError as exc:
            if exc.errno == errno.EINVAL:
                return False
            raise
        os.close(fd)
    return True


def run_butler(*args: str) -> subprocess.CompletedProcess[str]:
    """``butler ARGS`` in a child interpreter, output captured."""
    return subprocess.run(  # noqa: S603 - our interpreter, test arguments
        [sys.executable, "-m", "butler.cli.main", *args],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def run_mirror(*args: str) -> subprocess.CompletedProcess[str]:
    """``mirror ARGS`` in a child interpreter, output captured, without the environment's
    ``BUTLER_TOKEN`` (a test gives its token)."""
    return subprocess.run(  # noqa: S603 - our interpreter, test arguments
        [sys.executable, "-m", "mirror.cli", *args],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env={k: v for k, v in os.environ.items() if k != "BUTLER_TOKEN"},
    )


def new_repo(path: Path, registry: str | None = None) -> Path:
    """An empty repository at ``path`` (its registry in ``registry``, a PostgreSQL URL)."""
    Butler.create(path, registry=registry).close()
    return path


@contextlib.contextmanager
def raw_registry(root: Path) -> Iterator[Any]:
    """A plain autocommit connection to a repository's registry, whichever engine holds it
    (``?`` placeholders on both): for tests that look at or spoil rows behind the butler."""
    url = yaml.safe_load((root / "butler.yaml").read_text()).get("registry")
    conn: Any
    if url is None:
        conn = sqlite3.connect(root / "registry.sqlite3", isolation_level=None)
    else:
        from butler.registry_db import PostgresConnection

        conn = PostgresConnection(url, writeable=True)
    try:
        yield conn
    finally:
        conn.close()


def unavailable(reason: str) -> NoReturn:
    """Skip a test whose environment lacks something (mount rights, a browser...) -- except
    under CI, whose scripts/test.sh installs all of it: there a missing piece is a failure,
    not a silent skip."""
    if os.environ.get("CI"):
        pytest.fail(f"CI should provide this: {reason}")
    pytest.skip(reason)


def make_summary_repo(root: Path, registry: str | None = None) -> Path:
    """A repository at ``root`` with the dimensions of :func:`populate_dimensions` and two
    ``summary`` dicts (visit 100, detectors 0 and 1) in RUN ``run1``."""
    with Butler.create(root, registry=registry) as butler:
        populate_dimensions(butler)
        butler.register_dataset_type("summary", ["visit", "detector"], "Dict")
    with Butler(root, run="run1") as butler:
        for detector in (0, 1):
            butler.put(
                {"d": detector}, "summary", {"instrument": "HSC"}, visit=100, detector=detector
            )
    return root


class TextFormatter(Formatter):
    """A plugin-like formatter of ``Dict`` datasets as text, for tests of how a plugin's
    files are checked; subclasses change ``index`` or ``read``."""

    name: ClassVar[str] = "text-test"
    storage_class: ClassVar[str] = "Dict"
    extension: ClassVar[str] = ".txt"

    def write(self, obj: Any, path: Path) -> None:
        path.write_text(str(obj))

    def index(self, path: Path) -> dict[str, Any]:
        return {"format": self.name}

    def read(self, source: ByteSource, index: Any, **kwargs: Any) -> Any:
        return source.read(0, source.size).decode()


def populate_dimensions(butler: Butler) -> None:
    """An HSC-like instrument with 4 detectors and 10 visits alternating r and i bands."""
    butler.insert_dimension_records("instrument", {"name": "HSC", "detector_max": 112})
    butler.insert_dimension_records("band", {"name": "r"}, {"name": "i"})
    butler.insert_dimension_records(
        "physical_filter",
        {"instrument": "HSC", "name": "HSC-R", "band": "r"},
        {"instrument": "HSC", "name": "HSC-I", "band": "i"},
    )
    butler.insert_dimension_records(
        "day_obs", {"instrument": "HSC", "id": 20240101}, {"instrument": "HSC", "id": 20240102}
    )
    butler.insert_dimension_records(
        "detector", *[{"instrument": "HSC", "id": d, "full_name": f"ccd{d}"} for d in DETECTORS]
    )
    butler.insert_dimension_records(
        "visit",
        *[
            {
                "instrument": "HSC",
                "id": v,
                "physical_filter": "HSC-R" if v % 2 else "HSC-I",
                "day_obs": 20240101 if v < 105 else 20240102,
                "exposure_time": 30.0 + v - 100,
                "target_name": "COSMOS" if v < 103 else "SXDS",
            }
            for v in VISITS
        ],
    )
    butler.insert_dimension_records(
        "exposure",
        *[
            {
                "instrument": "HSC",
                "id": v,
                "physical_filter": "HSC-R" if v % 2 else "HSC-I",
                "day_obs": 20240101 if v < 105 else 20240102,
            }
            for v in VISITS
        ],
    )
    butler.insert_dimension_records("skymap", {"name": "rings"})
    butler.insert_dimension_records("tract", {"skymap": "rings", "id": 9813})
    butler.insert_dimension_records(
        "patch", *[{"skymap": "rings", "tract": 9813, "id": p} for p in range(3)]
    )


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "registry_url" in metafunc.fixturenames:
        backends = getattr(metafunc.module, "REGISTRY_BACKENDS", REGISTRY_BACKENDS)
        metafunc.parametrize("registry_url", backends, indirect=True)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """Debian's PostgreSQL on loopback, a free port and a throwaway data directory, once
    per session. The directory is not under pytest's base temporary directory: another
    pytest run on the machine makes that private again (mode 700), which would shut the
    postgres user out of its data while it runs."""
    try:
        postgres_bindir()
    except PostgresNotFound as exc:
        unavailable(str(exc))
    server = PostgresServer(Path(tempfile.mkdtemp(prefix="butler-tests-postgres-")) / "pg")
    server.start()
    try:
        yield server
    finally:
        server.remove()


@pytest.fixture
def registry_url(request: pytest.FixtureRequest) -> Iterator[str | None]:
    """Where a test's repository keeps its registry: None for SQLite in the repository, or
    the URL of a new PostgreSQL database (``REGISTRY_BACKENDS`` decides which)."""
    backend = getattr(request, "param", "sqlite")
    if backend == "sqlite":
        yield None
        return
    server: PostgresServer = request.getfixturevalue("postgres_server")
    url = server.new_registry()
    yield url
    server.drop_registry(url)


@pytest.fixture
def repo_path(tmp_path: Path, registry_url: str | None) -> Path:
    """A new repository with dimension records and a few dataset types registered."""
    root = tmp_path / "repo"
    with Butler.create(root, registry=registry_url) as butler:
        populate_dimensions(butler)
        butler.register_dataset_type("summary", ["visit", "detector"], "Dict")
        butler.register_dataset_type("config", ["instrument"], "Dict", formatter="yaml")
        butler.register_dataset_type("flux", ["visit", "detector"], "Array")
        butler.register_dataset_type("src", ["visit", "detector"], "Table")
        butler.register_dataset_type("calexp", ["visit", "detector"], "Image")
        butler.register_dataset_type("deepCoadd", ["tract", "patch", "band"], "Image")
    return root


@pytest.fixture
def butler(repo_path: Path) -> Iterator[Butler]:
    with Butler(repo_path, run="run1") as b:
        yield b
