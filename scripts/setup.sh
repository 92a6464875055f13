#!/usr/bin/env bash
# Create (or reuse) the project's virtual environment .venv with the pinned CPU stack. Idempotent.
# pip, not uv: pip finds the CPU torch wheel on this kind of machine; torch and torchvision pinned in one call.
set -euo pipefail
cd "$(dirname "$0")/.."
export PIP_DISABLE_PIP_VERSION_CHECK=1
PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
stamp=.venv/.flowgmm-installed
want=$(cat pyproject.toml constraints-ci.txt .ci/torchvision_shim.py | sha256sum | cut -c1-16)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    .venv/bin/pip install -q -c constraints-ci.txt -e '.[test]'
    # Environment fix for the light torch/torchvision pair (see .ci/torchvision_shim.py); not product code.
    if .venv/bin/python -c 'import torch, sys; sys.exit(0 if torch.version.cuda is None else 1)'; then
        site=$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
        cp .ci/torchvision_shim.py "$site/_flowgmm_ci_torchvision_shim.py"
        echo "import _flowgmm_ci_torchvision_shim" > "$site/_flowgmm_ci_torchvision_shim.pth"
    fi
    echo "$want" > "$stamp"
fi
