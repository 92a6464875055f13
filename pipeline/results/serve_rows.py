"""The online requests of the served FlowGMM: JSON rows in, checked row by row, one line per bad request.

A request body is a JSON list of rows, or an object ``{"rows": [...]}``. A table model's row is an object of its
feature columns (``{"mean radius": 17.99, ...}``) or a list of the values in the model's column order; an image
model's row is a list of the flattened uint8 pixels (as ``score.py`` reads the ``x`` column), ``{"x": [...]}``, or an
encoded image ``{"image": "<base64 of the PNG/JPEG bytes>"}`` (decoded, converted to the model's channels and resized
to its size: ``pipeline.data.images``).
Every problem is a :class:`BadRequest` whose message names the row and the field:

    row 3, field 'mean radius': NaN or infinite value
    row 0: 63 values, the model needs 64 pixels
    row 2, field 'image': not an image Pillow can decode (cannot identify image file ...)

The answer per row: ``label``, ``class``, ``probabilities`` (calibrated, by class name), ``log_px``, ``ood_score``
and ``ood_score_name`` (the served out-of-domain score), ``is_ood`` and ``model_version`` (the registered version
that answered).
"""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import pandas as pd

MAX_BODY_BYTES = 4 * 1024 * 1024
MAX_ROWS = 4096


class BadRequest(ValueError):
    """A request the model cannot answer; the message is one line naming the row and the field."""


def parse_body(body: bytes, spec: dict[str, Any], max_bytes: int = MAX_BODY_BYTES) -> np.ndarray:
    """The request's rows as a float32 array ``[N, *shape-flattened]`` (images: pixel values 0..255)."""
    if not body or not body.strip():
        raise BadRequest('empty body: send a JSON list of rows, or {"rows": [...]}')
    if len(body) > max_bytes:
        raise BadRequest(f"body of {len(body)} bytes is over the limit of {max_bytes} bytes")
    try:
        doc = json.loads(body, parse_constant=lambda c: float("nan"))
    except (ValueError, UnicodeDecodeError) as e:
        raise BadRequest(f"body is not JSON ({str(e).splitlines()[0]})") from None
    rows = doc.get("rows") if isinstance(doc, dict) else doc
    if not isinstance(rows, list):
        raise BadRequest("body must be a JSON list of rows, or an object with a list under 'rows'")
    if not rows:
        raise BadRequest("no rows: the list of rows is empty")
    if len(rows) > MAX_ROWS:
        raise BadRequest(f"{len(rows)} rows is over the limit of {MAX_ROWS} rows per request")
    names = field_names(spec)
    image = spec["kind"] == "image"
    if spec.get("encoding"):
        return encoded_table_rows(rows, spec, names)
    return np.stack(
        [
            encoded_row(i, row, spec)
            if image and isinstance(row, dict) and "image" in row
            else parse_row(i, row, names, image)
            for i, row in enumerate(rows)
        ]
    )


def encoded_row(i: int, row: dict[str, Any], spec: dict[str, Any]) -> np.ndarray:
    """An image row ``{"image": base64}``: the decoded pixels, flattened, as float32."""
    import base64
    import binascii

    from pipeline.data.images import ImageError, decode_image

    if set(row) != {"image"}:
        extra = sorted(set(row) - {"image"})[0]
        raise BadRequest(f'row {i}, field \'{extra}\': an encoded image row is {{"image": "<base64>"}} alone')
    v = row["image"]
    if not isinstance(v, str):
        raise BadRequest(f"row {i}, field 'image': a {_json_type(v)}, expected base64 text of PNG/JPEG bytes")
    try:
        data = base64.b64decode(v, validate=True)
    except (binascii.Error, ValueError):
        raise BadRequest(f"row {i}, field 'image': not base64 text") from None
    try:
        return decode_image(data, spec["shape"]).reshape(-1).astype(np.float32)
    except ImageError as e:
        raise BadRequest(f"row {i}, field 'image': {e}") from None


def field_names(spec: dict[str, Any]) -> list[str]:
    """The fields of a row: a table's input columns, or ``x[0]`` .. ``x[D-1]`` for an image's pixels."""
    if spec["kind"] == "image":
        return [f"x[{j}]" for j in range(int(np.prod(spec["shape"])))]
    from pipeline.results.serving import input_columns

    return input_columns(spec)


def encoded_table_rows(rows: list[Any], spec: dict[str, Any], names: list[str]) -> np.ndarray:
    """Rows of a table model with an encoding (``pipeline.data.encoding``): a number or null for a number column, a
    text value or null for a text column; the encoded float32 features."""
    from pipeline.core.errors import DataError
    from pipeline.data.encoding import transform

    kinds = {e["column"]: e["kind"] for e in spec["encoding"]}
    cols: dict[str, list[Any]] = {c: [] for c in names}
    for i, row in enumerate(rows):
        for c, v in zip(names, row_values(i, row, names, False)):
            if v is not None and (isinstance(v, (bool, dict, list)) or (kinds[c] == "number" and isinstance(v, str))):
                raise BadRequest(
                    f"row {i}, field '{c}': a {_json_type(v)} ({_short(v)}), expected a {_wanted(kinds[c])}"
                )
            if kinds[c] == "number" and v is not None:
                check_value(i, c, v, False)
            cols[c].append(v)
    try:
        return transform(cols, spec["encoding"], "request")
    except DataError as e:
        raise BadRequest(str(e)) from None


def _wanted(kind: str) -> str:
    return "number or null" if kind == "number" else "text value or null"


def parse_row(i: int, row: Any, names: list[str], image: bool) -> np.ndarray:
    """One row checked: its shape (list of the right length, or an object of the right fields), then each value."""
    values = row_values(i, row, names, image)
    out = np.empty(len(names), np.float32)
    for j, v in enumerate(values):
        out[j] = check_value(i, names[j], v, image)
    return out


def row_values(i: int, row: Any, names: list[str], image: bool) -> list[Any]:
    """A row's values in the model's field order: a list of the right length, or an object of the right fields."""
    if isinstance(row, dict):
        values = _row_values(i, row, names, image)
    elif isinstance(row, list):
        values = row
    else:
        raise BadRequest(f"row {i}: a {_json_type(row)}, expected a list of values or an object of fields")
    if len(values) != len(names):
        what = "pixels" if image else f"feature values ({', '.join(names[:3])}{', ...' if len(names) > 3 else ''})"
        raise BadRequest(f"row {i}: {len(values)} values, the model needs {len(names)} {what}")
    return values


def _row_values(i: int, row: dict[str, Any], names: list[str], image: bool) -> list[Any]:
    if image:
        if set(row) != {"x"}:
            extra = sorted(set(row) - {"x"})
            raise BadRequest(
                f"row {i}, field '{extra[0] if extra else 'x'}': an image row is "
                '{"x": [pixels]} or {"image": "<base64 PNG/JPEG>"}'
            )
        if not isinstance(row["x"], list):
            raise BadRequest(f"row {i}, field 'x': a {_json_type(row['x'])}, expected a list of pixels")
        return row["x"]
    unknown = [k for k in row if k not in set(names)]
    if unknown:
        raise BadRequest(f"row {i}, field '{unknown[0]}': unknown column (the model has {len(names)} columns)")
    missing = [c for c in names if c not in row]
    if missing:
        raise BadRequest(f"row {i}, field '{missing[0]}': missing column")
    return [row[c] for c in names]


def check_value(i: int, name: str, v: Any, image: bool) -> float:
    """A number (never a bool, string or null), finite; a pixel is an integer in 0..255."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise BadRequest(f"row {i}, field '{name}': a {_json_type(v)} ({_short(v)}), expected a number")
    if not math.isfinite(v):
        raise BadRequest(f"row {i}, field '{name}': NaN or infinite value")
    if image and (v != int(v) or not 0 <= v <= 255):
        raise BadRequest(f"row {i}, field '{name}': pixel {v}, expected an integer in 0..255")
    if not image and abs(v) > 3.0e38:
        raise BadRequest(f"row {i}, field '{name}': {v} is out of float32 range")
    return float(v)


def _json_type(v: Any) -> str:
    names = {bool: "boolean", str: "string", dict: "object", list: "list", type(None): "null"}
    return names.get(type(v), "number")


def _short(v: Any) -> str:
    s = json.dumps(v)
    return s if len(s) <= 20 else s[:17] + "..."


def model_input(x: np.ndarray, spec: dict[str, Any]) -> Any:
    """What ``serving.predict_frame`` takes: uint8 pixels ``[N, *shape]`` or a frame of the feature columns."""
    if spec["kind"] == "image":
        return x.astype(np.uint8).reshape(len(x), *spec["shape"])
    if spec.get("encoding"):  # already encoded by parse_body: the features as they are
        return np.asarray(x, dtype=np.float32)
    return pd.DataFrame(x, columns=field_names(spec))


def answer_rows(frame: pd.DataFrame, names: list[str], version: str) -> list[dict[str, Any]]:
    """The scored frame as the JSON rows of the answer."""
    probs = frame[[f"prob_{n}" for n in names]].to_numpy()
    return [
        {
            "label": int(frame["label"].iat[r]),
            "class": str(frame["class"].iat[r]),
            "probabilities": {n: float(p) for n, p in zip(names, probs[r])},
            "log_px": float(frame["log_px"].iat[r]),
            "ood_score": float(frame["ood_score"].iat[r]),
            "ood_score_name": str(frame["ood_score_name"].iat[r]),
            "is_ood": bool(frame["is_ood"].iat[r]),
            "model_version": version,
        }
        for r in range(len(frame))
    ]
