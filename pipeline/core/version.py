"""Code version recorded in manifests and runs: git sha (+ "-dirty") when available, else the package version."""

from __future__ import annotations

import functools
import subprocess
from pathlib import Path

_REPO = Path(__file__).resolve().parents[2]


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=_REPO, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def _package_version() -> str:
    try:
        from importlib.metadata import PackageNotFoundError, version

        for name in ("flowgmm-ray", "flowgmm_ray", "flowgmm"):
            try:
                return version(name)
            except PackageNotFoundError:
                continue
    except Exception:  # noqa: BLE001 - never fail
        pass
    return "0+unknown"


@functools.lru_cache(maxsize=1)
def code_version() -> str:
    """``<git sha>`` or ``<git sha>-dirty`` inside a git checkout, else the installed package version.

    Never raises.
    """
    try:
        if (_REPO / ".git").exists():
            sha = _git("rev-parse", "HEAD")
            if sha:
                status = _git("status", "--porcelain", "--untracked-files=no")
                return sha + ("-dirty" if status else "")
    except Exception:  # noqa: BLE001
        pass
    return _package_version()
