#!/usr/bin/env bash
# The main job on the embedded default (digits, local Ray, local MLflow): sets up .venv if needed.
# Arguments are passed to pipeline/run.py (e.g. --config moons --smoke, train.lr=3e-4).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export RAY_AUTH_MODE="${RAY_AUTH_MODE:-token}"
export FLOWGMM_DATA="${FLOWGMM_DATA:-$(cd .. && pwd)/shared/data}"
exec .venv/bin/python pipeline/run.py "$@"
