"""A user's own table: a Parquet or CSV file with feature columns (or an image column) and a label column; null
labels mark unlabeled rows. Every problem names the file, the column and the row."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.core.errors import DataError
from pipeline.data.sources.common import (
    HOLDOUT_FRACTION,
    HOLDOUT_SEED,
    RawSource,
    check_class_minimum,
    stratified_holdout,
)


def read_table_file(path: str | os.PathLike):
    """Read a Parquet or CSV file into a pyarrow Table (DataError on a missing/corrupt file)."""
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    p = Path(path).expanduser()
    if not p.is_file():
        raise DataError(f"{p}: table file does not exist")
    suffix = p.suffix.lower()
    try:
        if suffix in (".parquet", ".pq"):
            return pq.read_table(p)
        if suffix in (".csv", ".tsv", ".txt") or suffix == ".gz" and p.stem.lower().endswith(".csv"):
            opts = pacsv.ParseOptions(delimiter="\t") if suffix == ".tsv" else None
            return pacsv.read_csv(p, parse_options=opts)
    except (pa.ArrowException, OSError, EOFError) as e:
        kind = "Parquet" if suffix in (".parquet", ".pq") else "CSV"
        raise DataError(
            f"{p}: corrupt or truncated {kind} file ({str(e).splitlines()[0] if str(e) else type(e).__name__})"
        ) from None
    raise DataError(f"{p}: unsupported table format '{suffix}' (use .parquet or .csv)")


@dataclass
class _Labels:
    """The label column of one table: ``values`` (text, or integer values as float64), ``known`` (False where the
    label is null, NaN or an empty string: an unlabeled row) and ``text`` (string/categorical labels)."""

    values: np.ndarray
    known: np.ndarray
    text: bool


def _read_labels(table, path: Path, col: str, allow_null: bool) -> _Labels:
    import pyarrow as pa

    if col not in table.column_names:
        raise DataError(f"{path}: missing column '{col}' (label column)")
    arr = table.column(col).combine_chunks()
    if pa.types.is_dictionary(arr.type):
        arr = arr.cast(arr.type.value_type)
    t = arr.type
    if pa.types.is_null(t):
        if not allow_null:
            raise DataError(f"{path}: column '{col}' has no labels")
        return _Labels(np.zeros(len(arr)), np.zeros(len(arr), bool), False)
    if pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t):
        values = np.array([None if v is None else v.strip() for v in arr.to_pylist()], dtype=object)
        labels = _Labels(values, np.array([bool(v) for v in values], bool), True)
    elif pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t):
        v = np.asarray(arr.cast(pa.float64()).fill_null(np.nan).to_numpy(zero_copy_only=False), np.float64)
        labels = _Labels(v, ~np.isnan(v), False)
        _check_integer_labels(labels, path, col)
    else:
        raise DataError(f"{path}: column '{col}' has dtype {t}, expected class labels (integers or text)")
    if not allow_null and not labels.known.all():
        i = int(np.flatnonzero(~labels.known)[0])
        raise DataError(f"{path}: column '{col}' has no label at row {i} (test rows need labels)")
    return labels


def _check_integer_labels(labels: _Labels, path: Path, col: str) -> None:
    v, known = labels.values, labels.known
    bad = known & (~np.isfinite(v) | (v != np.round(v)))
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise DataError(f"{path}: column '{col}' has non-integer label {v[i]} at row {i}")
    neg = known & (v < 0)
    if neg.any():
        i = int(np.flatnonzero(neg)[0])
        raise DataError(
            f"{path}: column '{col}': label {int(v[i])} at row {i} is negative (leave it empty or null for an "
            "unlabeled row)"
        )


def _label_key(labels: _Labels, i: int) -> str | int:
    return labels.values[i] if labels.text else int(labels.values[i])


def _classes(labels: _Labels, num_classes: int | None, path: Path, col: str) -> list[str | int]:
    """Class keys in index order: 0..K-1 with ``num_classes``, else the sorted distinct labels of the train table."""
    where = f"{path}: column '{col}'"
    if num_classes is not None:
        if labels.text:
            raise DataError(
                f"{where} has text labels (e.g. '{labels.values[labels.known][0]}'); data.num_classes={num_classes} "
                "is for integer labels 0..K-1: leave it unset and the classes are the distinct labels"
            )
        return list(range(int(num_classes)))
    keys = sorted({_label_key(labels, int(i)) for i in np.flatnonzero(labels.known)})
    if not keys:
        raise DataError(f"{where} has no labels at all")
    if len(keys) < 2:
        n = int(labels.known.sum())
        raise DataError(
            f"{where} has labels of a single class '{keys[0]}' ({n} labeled row{'s' if n != 1 else ''}); "
            "a classifier needs labeled rows of at least 2 classes"
        )
    return keys


def _encode(labels: _Labels, classes: list[str | int], path: Path, col: str) -> np.ndarray:
    """Class indices (int64, -1 for an unlabeled row); a label that is not a class names its row."""
    index = {k: c for c, k in enumerate(classes)}
    y = np.full(len(labels.known), -1, np.int64)
    for i in np.flatnonzero(labels.known):
        key = _label_key(labels, int(i))
        c = index.get(key)
        if c is None:
            shown = f"'{key}'" if labels.text else str(key)
            if not labels.text and len(classes) and classes == list(range(len(classes))):
                kinds = f"outside [0, {len(classes)})"
            else:
                kinds = f"not one of the {len(classes)} classes ({', '.join(map(str, classes[:10]))})"
            raise DataError(f"{path}: column '{col}': label {shown} at row {int(i)} is {kinds}")
        y[i] = c
    return y


def _image_from_column(table, path: Path, col: str) -> np.ndarray:
    import pyarrow as pa

    if col not in table.column_names:
        raise DataError(f"{path}: missing column '{col}' (image column)")
    arr = table.column(col).combine_chunks()
    t = arr.type
    n = len(arr)
    if arr.null_count:
        i = int(np.flatnonzero(arr.is_null().to_numpy(zero_copy_only=False))[0])
        raise DataError(f"{path}: column '{col}' has a null image at row {i}")
    if pa.types.is_binary(t) or pa.types.is_large_binary(t) or pa.types.is_fixed_size_binary(t):
        items = arr.to_pylist()
        sizes = {len(b) for b in items}
        if len(sizes) != 1:
            raise DataError(f"{path}: column '{col}' has images of different sizes {sorted(sizes)[:4]} bytes")
        flat = np.frombuffer(b"".join(items), np.uint8).reshape(n, -1)
        return _infer_image_shape(flat, path, col)
    if pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t):
        try:
            if pa.types.is_fixed_size_list(t):
                x = arr.flatten().to_numpy(zero_copy_only=False).reshape(n, -1)
            else:
                x = np.asarray(arr.to_pylist())
        except ValueError:
            x = None
        if x is None or x.dtype == object:
            raise DataError(f"{path}: column '{col}' has images of different shapes")
        if x.dtype.kind not in "iub":
            raise DataError(f"{path}: column '{col}' has dtype {x.dtype}, expected uint8 pixel values")
        if x.size and (x.min() < 0 or x.max() > 255):
            raise DataError(
                f"{path}: column '{col}' has pixel value {int(x.max() if x.max() > 255 else x.min())} outside [0, 255]"
            )
        x = x.astype(np.uint8)
        if x.ndim == 2:
            return _infer_image_shape(x, path, col)
        if x.ndim == 3:
            return x[:, None]
        if x.ndim == 4:
            return (
                x
                if x.shape[1] in (1, 3) or x.shape[-1] not in (1, 3)
                else np.ascontiguousarray(x.transpose(0, 3, 1, 2))
            )
        raise DataError(f"{path}: column '{col}' has images of shape {x.shape[1:]}, expected [H,W], [C,H,W] or [H,W,C]")
    raise DataError(f"{path}: column '{col}' has dtype {t}, expected binary or a list of uint8 pixels")


def _infer_image_shape(flat: np.ndarray, path: Path, col: str) -> np.ndarray:
    d = flat.shape[1]
    for c in (1, 3):
        s = int(round(math.sqrt(d / c)))
        if c * s * s == d:
            return flat.reshape(len(flat), c, s, s)
    raise DataError(f"{path}: column '{col}' has {d} values per image, not a square 1- or 3-channel image")


# A test split held out of the table takes ~20% of each class's labeled rows (at least 1), and the pool keeps at least
# one validation and one training row per class: 3 labeled rows per class at the least (2 with a test table).
MIN_PER_CLASS_HELD_OUT, MIN_PER_CLASS = 3, 2


def load_table(
    path: str | os.PathLike,
    test_path: str | os.PathLike | None,
    feature_columns: tuple[str, ...],
    label_column: str,
    image_column: str | None,
    num_classes: int | None,
) -> RawSource:
    """The train pool from ``path`` and the test split from ``test_path`` (else a stratified hold-out). Labels are
    integers or text (empty or null: unlabeled); the classes are the sorted distinct labels of the train table, or
    0..K-1 with ``num_classes``; their names (the labels as text) go into the manifest and the model."""
    p = Path(path).expanduser().resolve()
    table = read_table_file(p)
    if table.num_rows == 0:
        raise DataError(f"{p}: empty table (no rows for the training pool)")
    reader = _TableReader(
        p, table, _feature_list(table, p, feature_columns, label_column, image_column), label_column, image_column
    )
    labels = _read_labels(table, p, label_column, allow_null=True)
    classes = _classes(labels, num_classes, p, label_column)
    names = [str(k) for k in classes]
    y = _encode(labels, classes, p, label_column)
    xt = yt = tp = None
    if test_path:
        tp = Path(test_path).expanduser().resolve()
        tt = read_table_file(tp)
        if tt.num_rows == 0:
            raise DataError(f"{tp}: empty split 'test' (the test table has no rows)")
        reader.check_columns(tt, tp)
        yt = _encode(_read_labels(tt, tp, label_column, allow_null=False), classes, tp, label_column)
    _check_enough_labels(y, names, f"{p}: column '{label_column}'", held_out=tp is None)
    x = reader.rows(table, p)
    if tp is not None:
        xt = reader.rows(tt, tp)
        if xt.shape[1:] != x.shape[1:]:
            raise DataError(f"{tp}: column '{image_column}' has image shape {xt.shape[1:]}, train has {x.shape[1:]}")
    else:
        pool, test = stratified_holdout(y, HOLDOUT_FRACTION, HOLDOUT_SEED)
        x, y, xt, yt = x[pool], y[pool], x[test], y[test]
    return RawSource(
        "table",
        "image" if image_column else "vector",
        tuple(x.shape[1:]),
        len(classes),
        names,
        x,
        y,
        xt,
        yt,
        str(p),
        str(tp) if tp else str(p),
        feature_names=reader.feature_names or None,
        extra={
            "label_column": label_column,
            "image_column": image_column,
            "test_held_out": test_path is None,
            "encoding": reader.encoding,
        },
    )


def _check_enough_labels(y: np.ndarray, names: list[str], where: str, held_out: bool) -> None:
    if held_out:
        why = "holding out a test split (no data.test_path) with validation and training rows"
        check_class_minimum(y, MIN_PER_CLASS_HELD_OUT, names, where, why)
    else:
        check_class_minimum(y, MIN_PER_CLASS, names, where, "a validation and a training row")


NOT_FEATURES = ("id", "path")  # a row's identity (pipeline.data.embed writes both), never a feature


def _feature_list(
    table, p: Path, feature_columns: tuple[str, ...], label_column: str, image_column: str | None
) -> list[str]:
    if image_column:
        if feature_columns:
            raise DataError(f"{p}: give either image_column '{image_column}' or feature_columns, not both")
        return []
    if feature_columns:
        return list(feature_columns)
    features = [c for c in table.column_names if c not in (label_column, *NOT_FEATURES)]
    if not features:
        raise DataError(f"{p}: no feature columns besides '{label_column}'")
    return features


class _TableReader:
    """Reads the feature (or image) rows of the train table and of a test table with the same columns."""

    def __init__(self, path: Path, table, features: list[str], label_column: str, image_column: str | None):
        self.path, self.names, self.features = path, table.column_names, features
        self.label_column, self.image_column = label_column, image_column
        self.encoding: list[dict] | None = None  # recorded (manifest, model) when it does more than read numbers
        self.check_columns(table, path, train=True)
        if not image_column:  # text columns one-hot, gaps imputed (pipeline.data.encoding)
            self.fit_encoding(table)

    def fit_encoding(self, table) -> None:
        from pipeline.data import encoding

        self._encoding = encoding.fit(table, self.features, str(self.path))
        self.encoding = self._encoding if encoding.needed(self._encoding) else None

    @property
    def feature_names(self) -> list[str]:
        """The flow's features: the encoded ones when the table has an encoding, else the columns."""
        from pipeline.data import encoding

        return encoding.feature_names(self.encoding) if self.encoding else self.features

    def check_columns(self, tab, where: Path, train: bool = False) -> None:
        if len(set(tab.column_names)) != len(tab.column_names):
            raise DataError(f"{where}: duplicate column names")
        if not train:  # the test table must have the train table's columns, no more
            for c in tab.column_names:
                if c not in self.names:
                    raise DataError(f"{where}: unexpected extra column '{c}' (not in the train table {self.path.name})")

    def rows(self, tab, where: Path) -> np.ndarray:
        if self.image_column:
            return _image_from_column(tab, where, self.image_column)
        from pipeline.data import encoding

        cols = {c: tab.column(c).to_numpy(zero_copy_only=False) for c in self.features if c in tab.column_names}
        return encoding.transform(cols, self._encoding, str(where))
