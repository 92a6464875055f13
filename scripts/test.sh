#!/usr/bin/env bash
# The project's test command (README, CI). Uses the active Python environment.
set -euo pipefail
cd "$(dirname "$0")/.."
export RAY_AUTH_MODE="${RAY_AUTH_MODE:-disabled}"
export FLOWGMM_DATA="${FLOWGMM_DATA:-$(cd .. && pwd)/shared/data}"
export FLOWGMM_HOME="${FLOWGMM_HOME:-$(mktemp -d -t flowgmm-test-home.XXXXXX)}"
exec python -m pytest -q --timeout=900 "$@"
