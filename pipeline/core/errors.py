"""Errors of the data layer.

A ``DataError`` carries a one-line message that names the offending file and the column or value.
Callers (``pipeline/run.py``) print ``error: <msg>`` and exit with status 2.
"""

from __future__ import annotations


class DataError(ValueError):
    """Bad input data: one line naming the file and the column or value."""

    def __init__(self, message: str):
        # keep it to one line whatever the underlying library said
        super().__init__(" ".join(str(message).split()))
