"""Byte counts for humans, in one style everywhere (the CLIs, proxyd's settings and pages,
the interactive query views): exact binary units when they fit (``1 MiB``), else one
decimal (``1.5 GiB``), else bytes (``512 B``)."""

from __future__ import annotations

__all__ = ["human_size"]

_UNITS = (("PiB", 2**50), ("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10))


def human_size(n: float) -> str:
    for unit, factor in _UNITS:
        if abs(n) >= factor:
            whole = n % factor == 0
            return f"{int(n // factor)} {unit}" if whole else f"{n / factor:.1f} {unit}"
    return f"{n:.0f} B"
