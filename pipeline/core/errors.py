"""Errors of the data layer.

A ``DataError`` carries a one-line message that names the offending file and the column or value.
Callers (``pipeline/run.py``) print ``error: <msg>`` and exit with status 2.
"""

from __future__ import annotations

import re


class DataError(ValueError):
    """Bad input data: one line naming the file and the column or value."""

    def __init__(self, message: str):
        # keep it to one line whatever the underlying library said
        super().__init__(" ".join(str(message).split()))


def data_error(e: BaseException) -> DataError | None:
    """The DataError inside an exception that Ray wrapped (task error, user-code error, chained causes)."""
    seen: set[int] = set()
    stack: list[BaseException | None] = [e]
    while stack:
        x = stack.pop()
        if x is None or id(x) in seen:
            continue
        seen.add(id(x))
        if isinstance(x, DataError):
            return DataError(x.args[0] if x.args and isinstance(x.args[0], str) else str(x))
        stack += [x.__cause__, x.__context__, getattr(x, "cause", None)]
    # across processes the chain can arrive as text only (RayTaskError(UserCodeException) with the worker's trace)
    found = re.findall(r"(?m)^\S*\bDataError: (.+)$", str(e))
    return DataError(found[-1]) if found else None
