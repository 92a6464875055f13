"""A user's own table: a Parquet or CSV file with feature columns (or an image column) and a label column; null
labels mark unlabeled rows. Every problem names the file, the column and the row."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np

from pipeline.core.errors import DataError
from pipeline.data.sources.common import (
    HOLDOUT_FRACTION,
    HOLDOUT_SEED,
    RawSource,
    check_finite,
    check_labels,
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


def _table_labels(table, path: Path, col: str, allow_null: bool) -> np.ndarray:
    import pyarrow as pa
    import pyarrow.compute as pc

    if col not in table.column_names:
        raise DataError(f"{path}: missing column '{col}' (label column)")
    arr = table.column(col)
    t = arr.type
    if pa.types.is_null(t):
        if not allow_null:
            raise DataError(f"{path}: column '{col}' has no labels")
        return np.full(len(arr), -1, np.int64)
    if not (pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t)):
        raise DataError(f"{path}: column '{col}' has dtype {t}, expected integer labels")
    nulls = arr.is_null()
    if pc.any(nulls).as_py() and not allow_null:
        i = int(np.flatnonzero(nulls.to_numpy(zero_copy_only=False))[0])
        raise DataError(f"{path}: column '{col}' has a null label at row {i} (test rows need labels)")
    v = arr.to_numpy(zero_copy_only=False)
    mask = nulls.to_numpy(zero_copy_only=False)
    v = np.asarray(v, dtype=np.float64)
    if pa.types.is_floating(t):
        mask = mask | np.isnan(v)
        if not allow_null and mask.any():
            i = int(np.flatnonzero(mask)[0])
            raise DataError(f"{path}: column '{col}' has a null label at row {i} (test rows need labels)")
        fin = v[~mask]
        bad = ~np.isfinite(fin) | (fin != np.round(fin))
        if bad.any():
            raise DataError(f"{path}: column '{col}' has non-integer label {fin[bad][0]}")
    y = np.where(mask, -1, np.nan_to_num(v, nan=-1)).astype(np.int64)
    neg = (~mask) & (y < 0)
    if neg.any():
        i = int(np.flatnonzero(neg)[0])
        raise DataError(
            f"{path}: column '{col}': label {int(y[i])} at row {i} is outside [0, K) (use null for unlabeled rows)"
        )
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


def _table_features(table, path: Path, features: list[str]) -> np.ndarray:
    import pyarrow as pa

    cols = []
    for c in features:
        if c not in table.column_names:
            raise DataError(f"{path}: missing column '{c}' (feature column)")
        a = table.column(c)
        t = a.type
        if not (pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t)):
            raise DataError(f"{path}: column '{c}' has dtype {t}, expected a number")
        if a.null_count:
            i = int(np.flatnonzero(a.is_null().to_numpy(zero_copy_only=False))[0])
            raise DataError(f"{path}: column '{c}' has a null (NaN) value at row {i}")
        cols.append(np.asarray(a.to_numpy(zero_copy_only=False), np.float64))
    x64 = np.stack(cols, 1) if cols else np.zeros((table.num_rows, 0))
    x = x64.astype(np.float32)
    check_finite(x, str(path), features)
    return x


def load_table(
    path: str | os.PathLike,
    test_path: str | os.PathLike | None,
    feature_columns: tuple[str, ...],
    label_column: str,
    image_column: str | None,
    num_classes: int | None,
) -> RawSource:
    """The train pool from ``path`` and the test split from ``test_path`` (else a stratified hold-out)."""
    p = Path(path).expanduser().resolve()
    table = read_table_file(p)
    if table.num_rows == 0:
        raise DataError(f"{p}: empty table (no rows for the training pool)")
    reader = _TableReader(
        p, table, _feature_list(table, p, feature_columns, label_column, image_column), label_column, image_column
    )
    y = _table_labels(table, p, label_column, allow_null=True)
    x = reader.rows(table, p)
    xt = yt = tp = None
    if test_path:
        tp = Path(test_path).expanduser().resolve()
        tt = read_table_file(tp)
        if tt.num_rows == 0:
            raise DataError(f"{tp}: empty split 'test' (the test table has no rows)")
        reader.check_columns(tt, tp)
        yt = _table_labels(tt, tp, label_column, allow_null=False)
        xt = reader.rows(tt, tp)
        if xt.shape[1:] != x.shape[1:]:
            raise DataError(f"{tp}: column '{image_column}' has image shape {xt.shape[1:]}, train has {x.shape[1:]}")
    k = _num_classes(y, yt, num_classes, p, label_column)
    check_labels(y, k, f"{p}: column '{label_column}'")
    if yt is not None:
        check_labels(yt, k, f"{tp}: column '{label_column}'")
    if xt is None:
        pool, test = stratified_holdout(y, HOLDOUT_FRACTION, HOLDOUT_SEED)
        x, y, xt, yt = x[pool], y[pool], x[test], y[test]
    kind = "image" if image_column else "vector"
    return RawSource(
        "table",
        kind,
        tuple(x.shape[1:]),
        k,
        [str(i) for i in range(k)],
        x,
        y,
        xt,
        yt,
        str(p),
        str(tp) if tp else str(p),
        feature_names=reader.features or None,
        extra={"label_column": label_column, "image_column": image_column, "test_held_out": test_path is None},
    )


def _feature_list(
    table, p: Path, feature_columns: tuple[str, ...], label_column: str, image_column: str | None
) -> list[str]:
    if image_column:
        if feature_columns:
            raise DataError(f"{p}: give either image_column '{image_column}' or feature_columns, not both")
        return []
    if feature_columns:
        return list(feature_columns)
    features = [c for c in table.column_names if c not in (label_column, "id")]
    if not features:
        raise DataError(f"{p}: no feature columns besides '{label_column}'")
    return features


class _TableReader:
    """Reads the feature (or image) rows of the train table and of a test table with the same columns."""

    def __init__(self, path: Path, table, features: list[str], label_column: str, image_column: str | None):
        self.path, self.names, self.features = path, table.column_names, features
        self.label_column, self.image_column = label_column, image_column
        self.check_columns(table, path, train=True)

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
        return _table_features(tab, where, self.features)


def _num_classes(y: np.ndarray, yt: np.ndarray | None, num_classes: int | None, p: Path, label_column: str) -> int:
    if num_classes is not None:
        return int(num_classes)
    labeled = y[y >= 0]
    if len(labeled) == 0:
        raise DataError(f"{p}: column '{label_column}' has no labels at all")
    return int(max(labeled.max(), yt.max() if yt is not None and len(yt) else 0)) + 1
