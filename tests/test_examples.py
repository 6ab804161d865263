"""The docs/examples scripts still run and still make their figures."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import matplotlib.image

EXAMPLES = Path(__file__).resolve().parent.parent / "docs" / "examples"


def test_two_telescopes_example(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-W",
            "error",
            str(EXAMPLES / "two_telescopes.py"),
            "--output",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
        # A writable matplotlib cache, so a read-only home cannot turn into a warning.
        env={**os.environ, "MPLCONFIGDIR": str(tmp_path / "mpl")},
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert sum(line.lstrip().startswith("ingested") for line in lines) == 2
    dss = next(line for line in lines if line.lstrip().startswith("UK 48-inch Schmidt:"))
    decam = next(line for line in lines if line.lstrip().startswith("DECam:"))
    # 45" at the plate's 1.7"/pixel and at DECam's 0.263"/pixel (rotated 25 deg: wider box).
    assert "29 x 29 pixels" in dss
    assert "228 x 228 pixels" in decam
    assert "median variance unknown" in dss  # the plate stores none and has no gain
    png = tmp_path / "two_telescopes.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    height, width, _ = matplotlib.image.imread(png).shape
    assert (width, height) == (810, 414)
    committed = EXAMPLES / "two_telescopes.png"
    assert committed.exists(), "commit the figure the example makes"
