#!/usr/bin/env bash
# The whole test suite: lint, type checks and pytest, in a fresh virtual environment.
# Installs Debian's nginx (the independent origin the proxy tests use), HAProxy (the load
# balancer of the site deployment, tests/test_proxy_tiers.py) and PostgreSQL (the second
# registry engine) when they are missing.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v nginx >/dev/null 2>&1 && [ ! -x /usr/sbin/nginx ]; then
    if [ "$(id -u)" = 0 ]; then
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx-light >/dev/null
    else
        echo "nginx is missing; install it (apt-get install nginx-light) for the proxy tests" >&2
    fi
fi
# Debian's HAProxy balances the proxyd nodes of the site deployment (config/haproxy/site.cfg).
if ! command -v haproxy >/dev/null 2>&1 && [ ! -x /usr/sbin/haproxy ]; then
    if [ "$(id -u)" = 0 ]; then
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq haproxy >/dev/null
    else
        echo "haproxy is missing; install it (apt-get install haproxy) for the proxy tier tests" >&2
    fi
fi
# Debian's PostgreSQL serves the registry of the tests that run on both registry engines
# (tests/postgres.py starts a throwaway server from its binaries; the package's own cluster
# is not used).
if ! ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ]; then
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
    else
        echo "postgresql is missing; install it (apt-get install postgresql) for the registry tests" >&2
    fi
fi
# Debian's chromium drives proxyd's /status page headless (tests/test_proxyd_status.py):
# about 150 MB to download, 530 MB installed, 1.5 min, once per machine.
if ! command -v chromium >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ]; then
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
    else
        echo "chromium is missing; install it (apt-get install chromium) for the status page test" >&2
    fi
fi
python3 -m venv .venv
# The suite runs in this environment, whatever one the calling shell has activated: IPython
# warns when VIRTUAL_ENV names another, and the suite turns warnings into errors.
export VIRTUAL_ENV="$PWD/.venv"
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e '.[test]'
# lsst-daf-butler (a test dependency) installs a `butler` command too: ours must win.
if ! grep -q "from butler.cli.main import" .venv/bin/butler; then
    .venv/bin/python -m pip install --quiet --no-deps --force-reinstall -e .
fi
echo "== ruff"
.venv/bin/ruff check .
.venv/bin/ruff format --check .
echo "== mypy (strict)"
.venv/bin/mypy
echo "== pytest"
exec .venv/bin/pytest "$@"
