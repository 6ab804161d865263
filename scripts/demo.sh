#!/usr/bin/env bash
# The main job end to end on embedded defaults (SQLite, local disk, loopback):
# make a virtual environment, install the project, run the tour.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e .
exec .venv/bin/butler demo --workdir "${DEMO_WORKDIR:-demo-work}"
