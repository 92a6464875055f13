"""Whether this Python has the project's stack. Every entry script calls :func:`require_stack` before it imports
anything else of the project, so that a Python without the stack (the machine's own, outside ``.venv``; a Ray
cluster started from another environment) prints one line saying what to run instead of a traceback, and exits 2.

Standard library only, in syntax Python 3.7 and later parse (the Python that runs it may be old or bare).

>>> missing(("os", "no_such_module_xyz"))
['no_such_module_xyz']
"""

from __future__ import annotations

import importlib.util
import os
import sys

# the import names of pyproject.toml's dependencies
STACK = tuple("torch torchvision ray mlflow pyarrow numpy yaml matplotlib sklearn scipy optuna".split())
MIN_PYTHON = (3, 10)  # pyproject.toml's requires-python
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def missing(names: tuple[str, ...] = STACK) -> list[str]:
    """The modules of ``names`` this Python cannot import (found without importing them)."""
    out = []
    for name in names:
        try:
            found = importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            out.append(name)
    return out


def advice(lacks: str) -> str:
    """The one line for a Python that ``lacks`` something: which environment to use, and how to get it."""
    here = os.path.abspath(os.curdir) == ROOT
    venv = ".venv" if here else os.path.join(ROOT, ".venv")
    setup = "bash scripts/setup.sh" if here else "bash " + os.path.join(ROOT, "scripts", "setup.sh")
    if os.path.exists(os.path.join(venv, "bin", "python")):
        how = f"run `source {venv}/bin/activate` (created by `{setup}`) or use {venv}/bin/python"
    else:
        how = f"create it with `{setup}`, then run `source {venv}/bin/activate` or use {venv}/bin/python"
    return (
        f"flowgmm-ray needs its environment: this Python ({sys.executable}) {lacks}; {how} (for `ray job submit`, "
        "start the cluster with that environment's `ray start`)"
    )


def require_stack() -> None:
    """Exit 2 with :func:`advice` when this Python is too old or lacks a module of :data:`STACK`."""
    if sys.version_info < MIN_PYTHON:
        lacks = "is Python {}.{}, not >= {}.{}".format(*sys.version_info[:2], *MIN_PYTHON)
    else:
        gone = missing()
        if not gone:
            return
        lacks = "has no " + ", ".join(gone[:3]) + (f" (nor {len(gone) - 3} more of the stack)" if len(gone) > 3 else "")
    print(advice(lacks), file=sys.stderr)
    raise SystemExit(2)
