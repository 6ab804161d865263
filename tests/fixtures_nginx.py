"""pytest fixtures for real nginx servers, imported by the test modules that need them.

Use from any test module (``tests/`` is on ``sys.path``)::

    from fixtures_nginx import nginx_caching_proxy, nginx_origin  # noqa: F401

pytest finds fixtures in a module's namespace, so importing them is enough; no conftest or
plugin hook is involved, and modules that do not import them never start nginx. Ruff flags
test arguments that shadow an imported name (F811); binding by assignment avoids that::

    import fixtures_nginx

    nginx_origin = fixtures_nginx.nginx_origin
"""

from __future__ import annotations

import os
import random
from collections.abc import Iterator
from pathlib import Path

import pytest
from nginx import NginxCachingProxy, NginxOrigin

#: Block (slice) size of the :func:`nginx_caching_proxy` fixture: small, so tests span slices.
TEST_BLOCK_SIZE = 64 * 1024


def write_object(root: Path, name: str, size: int, seed: int = 0) -> bytes:
    """Write ``size`` deterministic pseudo-random bytes at ``root/name``; return them."""
    data = _pattern(size, seed)
    path = root / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return data


def _pattern(size: int, seed: int) -> bytes:
    # Deterministic and non-repeating at block granularity (unlike os.urandom, reproducible),
    # so a response stitched from the wrong blocks can never compare equal by accident.
    return random.Random(seed).randbytes(size)


@pytest.fixture
def nginx_origin(tmp_path: Path) -> Iterator[NginxOrigin]:
    """A started :class:`NginxOrigin` serving an empty ``tmp_path/origin-root``.

    Write files into ``nginx_origin.root_dir`` (e.g. with :func:`write_object`) and fetch
    ``nginx_origin.url + name``; ``/private/`` wants ``Bearer nginx.GOOD_TOKEN``.
    """
    with NginxOrigin(tmp_path / "origin-root", tmp_path / "nginx-origin") as origin:
        yield origin


@pytest.fixture
def nginx_caching_proxy(nginx_origin: NginxOrigin, tmp_path: Path) -> Iterator[NginxCachingProxy]:
    """nginx slice cache in front of :func:`nginx_origin`; base URL ``.url`` = origin's ``/``."""
    proxy = NginxCachingProxy(
        nginx_origin.url,
        tmp_path / "nginx-cache",
        tmp_path / "nginx-proxy",
        TEST_BLOCK_SIZE,
        worker_processes=min(2, os.cpu_count() or 1),
    )
    try:
        yield proxy.start()
    finally:
        proxy.stop()
