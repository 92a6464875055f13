#!/usr/bin/env bash
# The project's test command (README, CI): sets up .venv if needed, then runs the whole suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export RAY_AUTH_MODE="${RAY_AUTH_MODE:-disabled}"
export FLOWGMM_DATA="${FLOWGMM_DATA:-$(cd .. && pwd)/shared/data}"
export FLOWGMM_HOME="${FLOWGMM_HOME:-$(mktemp -d -t flowgmm-test-home.XXXXXX)}"
export PATH="$PWD/.venv/bin:$PATH"
# the habits that keep the tree readable: lint (imports, unused names, complexity) and format, before the tests
.venv/bin/ruff check .
.venv/bin/ruff format --check .
exec .venv/bin/python -m pytest -q --timeout=1200 "$@"
