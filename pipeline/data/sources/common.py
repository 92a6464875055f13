"""What every source shares: the in-memory :class:`RawSource`, label and value checks that name the file, row
and column, the stratified test hold-out of seed-free sources, the data directory and file checksums."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.core.errors import DataError

# Test sets of seed-free sources are held out with this fixed seed so that every seed sees the same test set.
HOLDOUT_SEED = 20240611
HOLDOUT_FRACTION = 0.2


@dataclass
class RawSource:
    name: str
    kind: str  # "image" | "vector"
    shape: tuple[int, ...]
    num_classes: int
    class_names: list[str]
    x_train: np.ndarray | None  # None for test-only sources
    y_train: np.ndarray | None
    x_test: np.ndarray | None  # None: hold the test split out of the train pool
    y_test: np.ndarray | None
    train_file: str = "<generated>"  # named in error messages
    test_file: str = "<generated>"
    feature_names: list[str] | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    levels: int | None = None  # images: grey levels the data really has (stored as round(255 q / (levels - 1)))

    @property
    def dtype(self) -> str:
        return "uint8" if self.kind == "image" else "float32"

    @property
    def quant_levels(self) -> int | None:
        """Images: their grey levels (256 unless the source says otherwise); vectors: None (continuous)."""
        return (self.levels or 256) if self.kind == "image" else None


def check_labels(y: np.ndarray, num_classes: int, where: str) -> None:
    """Labels must be -1 (unlabeled) or in [0, K)."""
    bad = (y != -1) & ((y < 0) | (y >= num_classes))
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise DataError(f"{where}: label {int(y[i])} at row {i} is outside [0, {num_classes})")


def check_class_minimum(y: np.ndarray, minimum: int, class_names: list[str], where: str, why: str) -> None:
    """Every class needs ``minimum`` labeled rows (``y`` in [0, K), -1 unlabeled); else one line naming the class,
    its count and its rows.

    >>> check_class_minimum(np.array([0, 1, 0, -1, 1, 0]), 2, ["a", "b"], "t.csv", "x")
    >>> check_class_minimum(np.array([0, 1, 0, -1, 0]), 2, ["a", "b"], "t.csv", "a test split")
    Traceback (most recent call last):
    ...
    pipeline.core.errors.DataError: t.csv: class 'b' has 1 labeled row (row 1); a test split needs at least 2 per class
    """
    for c, name in enumerate(class_names):
        rows = np.flatnonzero(y == c)
        if len(rows) < minimum:
            shown = ", ".join(str(int(r)) for r in rows[:5]) + (", ..." if len(rows) > 5 else "")
            at = f" ({'row' if len(rows) == 1 else 'rows'} {shown})" if len(rows) else ""
            count = f"{len(rows)} labeled row{'' if len(rows) == 1 else 's'}"
            raise DataError(f"{where}: class '{name}' has {count}{at}; {why} needs at least {minimum} per class")


def check_finite(x: np.ndarray, where: str, names: list[str] | None = None) -> None:
    if x.dtype.kind != "f":
        return
    bad = ~np.isfinite(x.reshape(len(x), -1))
    if bad.any():
        r, c = (int(v[0]) for v in np.nonzero(bad))
        col = f"column '{names[c]}'" if names and c < len(names) else f"feature {c}"
        raise DataError(f"{where}: {col} has non-finite value {x.reshape(len(x), -1)[r, c]} at row {r}")


def stratified_holdout(y: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split labeled row indices into (pool, test), class-stratified; unlabeled rows stay in the pool."""
    rng = np.random.default_rng(seed)
    test = []
    for c in np.unique(y[y >= 0]):
        idx = np.flatnonzero(y == c)
        idx = idx[rng.permutation(len(idx))]
        test.append(idx[: int(round(fraction * len(idx)))])
    test = np.sort(np.concatenate(test)) if test else np.zeros(0, np.int64)
    mask = np.ones(len(y), bool)
    mask[test] = False
    return np.flatnonzero(mask), test


def resolve_data_dir(data_dir: str | os.PathLike | None, source: str) -> Path:
    d = data_dir or os.environ.get("FLOWGMM_DATA")
    if not d:
        raise DataError(f"source '{source}' needs a data directory: pass --data-dir or set FLOWGMM_DATA")
    p = Path(d).expanduser()
    if not p.is_dir():
        raise DataError(f"{p}: data directory for source '{source}' does not exist")
    return p


def first_existing(candidates: list[Path]) -> Path | None:
    for c in candidates:
        if c.is_file():
            return c
    return None


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while b := f.read(chunk):
            h.update(b)
    return h.hexdigest()
