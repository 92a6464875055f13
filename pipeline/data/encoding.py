"""Tables as they come: text feature columns one-hot encoded, missing numbers imputed with a missing-indicator column.
Fitted on the training table, recorded in the manifest and the model (``encoding``), and applied the same way by
training, scoring (``score.py``), the logged pyfunc model and the server, so that a row gets one answer everywhere.

    >>> import pyarrow as pa
    >>> t = pa.table({"size": [1.0, None, 3.0], "colour": ["red", "blue", None]})
    >>> enc = fit(t, ["size", "colour"], "t.csv")
    >>> feature_names(enc)
    ['size', 'size missing', 'colour=blue', 'colour=red']
    >>> transform({"size": [None, 5.0], "colour": ["red", "green"]}, enc, "rows").tolist()
    [[2.0, 1.0, 0.0, 1.0], [5.0, 0.0, 0.0, 0.0]]

A missing number becomes the training mean and its indicator 1 (the indicator exists only for columns with gaps in
the training table; elsewhere a gap is imputed the same way without one); a missing or unseen text value is a row of
zeros over that column's levels. A text column with more than ``MAX_LEVELS`` distinct values is an error naming it.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from pipeline.core.errors import DataError

MAX_LEVELS = 32  # a text column with more distinct values is not one-hot encoded: the run stops naming it
MISSING = " missing"  # the indicator column of a number column with gaps: "<column> missing"


def fit(table: Any, features: list[str], where: str) -> list[dict[str, Any]]:
    """The encoding of ``features`` of a pyarrow table: per column ``{"column", "kind": "number", "fill",
    "indicator"}`` or ``{"column", "kind": "category", "levels"}``; DataError naming the file and column."""
    import pyarrow as pa

    out = []
    for c in features:
        if c not in table.column_names:
            raise DataError(f"{where}: missing column '{c}' (feature column)")
        a = table.column(c)
        t = a.type
        if pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t) or pa.types.is_null(t):
            v = _numbers(a.to_numpy(zero_copy_only=False), c, where)
            gaps = np.isnan(v)
            if gaps.all():
                raise DataError(f"{where}: column '{c}' has no values (every cell is missing)")
            out.append({"column": c, "kind": "number", "fill": float(v[~gaps].mean()), "indicator": bool(gaps.any())})
        elif pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_dictionary(t):
            levels = sorted({str(s) for s in a.to_pylist() if s is not None and s != ""})
            if not levels:
                raise DataError(f"{where}: column '{c}' has no values (every cell is missing)")
            if len(levels) > MAX_LEVELS:
                raise DataError(
                    f"{where}: column '{c}' has {len(levels)} distinct text values, over the {MAX_LEVELS} a one-hot "
                    "encoding takes (leave it out with data.feature_columns, or encode it as numbers)"
                )
            out.append({"column": c, "kind": "category", "levels": levels})
        else:
            raise DataError(f"{where}: column '{c}' has dtype {t}, expected numbers or text")
    return out


def needed(encoding: list[dict[str, Any]] | None) -> bool:
    """Whether the encoding does anything a plain numeric table would not (text columns or indicators)."""
    return bool(encoding) and any(e["kind"] == "category" or e["indicator"] for e in encoding)


def input_columns(encoding: list[dict[str, Any]]) -> list[str]:
    return [e["column"] for e in encoding]


def feature_names(encoding: list[dict[str, Any]]) -> list[str]:
    """The flow's features, in order: a number (and its indicator), a text column's levels as ``column=level``."""
    out: list[str] = []
    for e in encoding:
        if e["kind"] == "number":
            out += [e["column"], *([e["column"] + MISSING] if e["indicator"] else [])]
        else:
            out += [f"{e['column']}={lvl}" for lvl in e["levels"]]
    return out


def transform(columns: Mapping[str, Any], encoding: list[dict[str, Any]], where: str) -> np.ndarray:
    """The float32 features ``[N, D]`` of raw columns (arrays or lists; None/NaN/empty text = missing)."""
    parts = []
    for e in encoding:
        c = e["column"]
        if c not in columns:
            raise DataError(f"{where}: missing column '{c}'")
        if e["kind"] == "number":
            v = _numbers(columns[c], c, where)
            gaps = np.isnan(v)
            parts.append(np.where(gaps, e["fill"], v)[:, None])
            if e["indicator"]:
                parts.append(gaps[:, None].astype(np.float64))
        else:
            text = np.array([_text(s) for s in columns[c]], dtype=object)
            parts.append((text[:, None] == np.array(e["levels"], dtype=object)[None, :]).astype(np.float64))
    n = len(next(iter(columns.values()))) if columns else 0
    return np.concatenate(parts, axis=1).astype(np.float32) if parts else np.zeros((n, 0), np.float32)


def raw_rows(x: np.ndarray, encoding: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Encoded rows back in the input's form (for a logged model's input example): a number, or None where its
    indicator is set; a text column's level, or None where no level is set."""
    out = []
    for row in np.asarray(x, dtype=np.float64).reshape(len(x), -1):
        raw, j = {}, 0
        for e in encoding:
            if e["kind"] == "number":
                missing = bool(e["indicator"] and row[j + 1] > 0.5)
                raw[e["column"]] = None if missing else float(row[j])
                j += 2 if e["indicator"] else 1
            else:
                k = len(e["levels"])
                hot = row[j : j + k]
                raw[e["column"]] = e["levels"][int(hot.argmax())] if hot.max() > 0.5 else None
                j += k
        out.append(raw)
    return out


def summary(encoding: list[dict[str, Any]]) -> str:
    """One line for the console: what was encoded and imputed."""
    cats = [f"{e['column']} ({len(e['levels'])} levels)" for e in encoding if e["kind"] == "category"]
    gaps = [e["column"] for e in encoding if e["kind"] == "number" and e["indicator"]]
    parts = []
    if cats:
        parts.append("one-hot " + ", ".join(cats))
    if gaps:
        parts.append("missing numbers imputed with the training mean + an indicator: " + ", ".join(gaps))
    return "; ".join(parts)


def _numbers(values: Any, column: str, where: str) -> np.ndarray:
    """Float64 with NaN for missing (None, NaN, empty text); DataError naming the row of a non-number or an
    infinite value."""
    arr = np.asarray(values, dtype=object) if not isinstance(values, np.ndarray) else values
    if arr.dtype.kind in "fiub":
        v = arr.astype(np.float64)
    else:
        v = np.empty(len(arr), np.float64)
        for i, s in enumerate(arr):
            if s is None or (isinstance(s, str) and not s.strip()):
                v[i] = np.nan
                continue
            try:
                v[i] = float(s)
            except (TypeError, ValueError):
                raise DataError(f"{where}: column '{column}' has {s!r} at row {i}, expected a number") from None
    bad = np.isinf(v)
    if bad.any():
        raise DataError(f"{where}: column '{column}' has an infinite value at row {int(np.flatnonzero(bad)[0])}")
    return v


def _text(s: Any) -> Any:
    if s is None or (isinstance(s, float) and np.isnan(s)):
        return None
    return str(s)
