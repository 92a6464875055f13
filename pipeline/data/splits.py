"""Split selection: which rows of a source's train pool become labeled, validation and unlabeled rows
(class-balanced, seeded). Labels of the unlabeled rows never reach training."""

from __future__ import annotations

from typing import Any

import numpy as np

from pipeline.config.data import DataSpec
from pipeline.core.errors import DataError
from pipeline.data import sources as S

AUTO_VAL_FRACTION = 0.2  # n_val unset: this share of each class's labeled rows (at least 1) is validation
SIZE_HINT = "set data.n_labeled / data.n_val lower, or leave them unset to size them from the labels"


def _balanced_take(by_class: list[np.ndarray], n: int, rng: np.random.Generator, what: str, ctx: tuple) -> np.ndarray:
    k = len(by_class)
    per = np.full(k, n // k)
    per[rng.permutation(k)[: n % k]] += 1
    return _take(by_class, per, what, ctx)


def _take(by_class: list[np.ndarray], per: np.ndarray, what: str, ctx: tuple) -> np.ndarray:
    """Take ``per[c]`` rows of each class off the front of its shuffled list (one line naming the class if short)."""
    where, names = ctx
    out = []
    for c in range(len(by_class)):
        if len(by_class[c]) < per[c]:
            raise DataError(
                f"{where}: class {names[c]!r} has only {len(by_class[c])} labeled rows left, {what} needs {per[c]} "
                f"({SIZE_HINT})"
            )
        out.append(by_class[c][: per[c]])
        by_class[c] = by_class[c][per[c] :]
    return np.concatenate(out) if out else np.zeros(0, np.int64)


def auto_val_counts(class_counts: np.ndarray) -> np.ndarray:
    """Validation rows per class when ``n_val`` is unset: 20% of the class's labeled rows, at least 1.

    >>> auto_val_counts(np.array([2, 10, 13])).tolist()
    [1, 2, 3]
    """
    return np.maximum(1, np.round(AUTO_VAL_FRACTION * np.asarray(class_counts))).astype(np.int64)


def _check_sizes(n_labeled: int | None, n_val: int | None, num_classes: int, where: str) -> None:
    if n_labeled is not None and n_labeled < num_classes:
        raise DataError(f"{where}: n_labeled={n_labeled} is fewer labeled examples than the {num_classes} classes")
    if n_val is not None and n_val < 1:
        raise DataError(f"{where}: empty split 'val' (n_val={n_val}); calibration needs labeled validation rows")


def _auto_minimum(by_class: list[np.ndarray], n_labeled: int | None, n_val: int | None, ctx: tuple) -> None:
    """Automatic sizes need, per class, one validation row (n_val unset) and one training row (n_labeled unset)."""
    need = (n_labeled is None) + (n_val is None)
    where, names = ctx
    for c, rows in enumerate(by_class):
        if need and len(rows) < need:
            raise DataError(
                f"{where}: class {names[c]!r} has {len(rows)} labeled rows; automatic sizes (data.n_labeled / "
                f"data.n_val unset) need at least {need} per class"
            )


def choose_splits(
    y_pool: np.ndarray,
    num_classes: int,
    n_labeled: int | None,
    n_val: int | None,
    n_unlabeled: int | None,
    seed: int,
    where: str = "<pool>",
    *,
    class_names: list[str] | None = None,
) -> dict[str, np.ndarray]:
    """Row indices into the train pool for labeled / val / unlabeled (class-balanced, seeded). Unset sizes (None)
    come from the labels: validation ``auto_val_counts`` of each class, training every other labeled row."""
    _check_sizes(n_labeled, n_val, num_classes, where)
    ctx = (where, class_names or [str(c) for c in range(num_classes)])
    rng = np.random.default_rng([seed, 1])
    by_class = []
    for c in range(num_classes):
        idx = np.flatnonzero(y_pool == c)
        by_class.append(idx[rng.permutation(len(idx))])
    _auto_minimum(by_class, n_labeled, n_val, ctx)
    auto_val = auto_val_counts(np.array([len(b) for b in by_class]))
    lab = _balanced_take(by_class, n_labeled, rng, f"n_labeled={n_labeled}", ctx) if n_labeled is not None else None
    if n_val is None:
        val = _take(by_class, auto_val, "n_val=auto (20% of the class's labeled rows, at least 1)", ctx)
    else:
        val = _balanced_take(by_class, n_val, rng, f"n_val={n_val}", ctx)
    if lab is None:  # every labeled row not in validation
        lab = np.concatenate(by_class) if by_class else np.zeros(0, np.int64)
    return _with_unlabeled(y_pool, lab, val, n_unlabeled, rng, (where, n_labeled, n_val))


def _with_unlabeled(
    y_pool: np.ndarray, lab: np.ndarray, val: np.ndarray, n_unlabeled: int | None, rng: np.random.Generator, ctx: tuple
) -> dict[str, np.ndarray]:
    where, n_labeled, n_val = ctx
    used = np.zeros(len(y_pool), bool)
    used[lab] = used[val] = True
    unl = np.flatnonzero(~used)
    unl = unl[rng.permutation(len(unl))]
    if n_unlabeled is not None:
        unl = unl[: max(0, int(n_unlabeled))]
    if len(unl) == 0 and n_labeled is None and n_unlabeled != 0:
        raise DataError(
            f"{where}: empty split 'unlabeled': all {len(y_pool)} pool rows are labeled and data.n_labeled unset "
            "trains on every one; set data.n_labeled (labeled rows not picked become unlabeled)"
        )
    if len(unl) == 0:
        raise DataError(
            f"{where}: empty split 'unlabeled' ({len(y_pool)} pool rows, n_labeled={n_labeled}, "
            f"n_val={n_val}, n_unlabeled={n_unlabeled})"
        )
    return {"labeled": lab[rng.permutation(len(lab))], "val": val[rng.permutation(len(val))], "unlabeled": unl}


def split_counts(spec: DataSpec) -> dict[str, Any]:
    """Only the index split (no shards): counts per split and class, for a quick look at a configuration."""
    raw = S.load_source(spec)
    idx = choose_splits(
        raw.y_train,
        raw.num_classes,
        spec.n_labeled,
        spec.n_val,
        spec.n_unlabeled,
        spec.seed,
        raw.train_file,
        class_names=raw.class_names,
    )
    n_test = len(raw.y_test) if spec.n_test is None else min(spec.n_test, len(raw.y_test))
    return {
        "counts": {
            "labeled": len(idx["labeled"]),
            "unlabeled": len(idx["unlabeled"]),
            "val": len(idx["val"]),
            "test": n_test,
        },
        "class_counts": {
            k: np.bincount(raw.y_train[v][raw.y_train[v] >= 0], minlength=raw.num_classes).tolist()
            for k, v in idx.items()
        },
    }
