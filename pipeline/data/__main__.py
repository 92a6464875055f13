"""Prepare a data set from the command line (``prepare`` in ``pipeline.data.prepare``)."""

from __future__ import annotations

from pipeline.core.stack import require_stack

require_stack()  # one line, not a traceback, from a Python without the stack (outside .venv)

import dataclasses  # noqa: E402
import typing  # noqa: E402

from pipeline.config.data import DataSpec  # noqa: E402
from pipeline.core.errors import DataError  # noqa: E402
from pipeline.core.home import resolve_home  # noqa: E402
from pipeline.data.prepare import prepare  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    """``python -m pipeline.data --source mnist --data-dir ../shared/data --n-labeled 1000 --n-val 1000``"""
    import argparse
    import sys

    from pipeline.config.rules import type_hints

    ap = argparse.ArgumentParser(prog="python -m pipeline.data", description=main.__doc__)
    hints = type_hints(DataSpec)
    for f in dataclasses.fields(DataSpec):
        flag = "--" + f.name.replace("_", "-")
        tp = hints[f.name]
        if f.name in ("ood", "feature_columns"):
            ap.add_argument(flag, default="", help="comma-separated")
        elif tp in (int, float):
            ap.add_argument(flag, type=tp, default=f.default)
        elif int in typing.get_args(tp):  # int | None
            ap.add_argument(flag, type=int, default=f.default)
        else:
            ap.add_argument(flag, default=f.default)
    ap.add_argument("--home", default=None, help="default $FLOWGMM_HOME or ~/.flowgmm")
    ap.add_argument("--force", action="store_true")
    a = vars(ap.parse_args(argv))
    home, force = a.pop("home"), a.pop("force")
    a["ood"] = tuple(s for s in a["ood"].split(",") if s)
    a["feature_columns"] = tuple(s for s in a["feature_columns"].split(",") if s)
    try:
        p = prepare(DataSpec(**a), resolve_home(home), force=force)
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    m = p.manifest
    print(
        f"{p.root}\n{m['source']} {m['kind']} shape={m['shape']} dtype={m['dtype']} classes={m['num_classes']}: "
        f"{m['label_summary']}; " + ", ".join(f"{k}={v}" for k, v in m["counts"].items())
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
