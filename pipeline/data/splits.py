"""Split selection: which rows of a source's train pool become labeled, validation and unlabeled rows
(class-balanced, seeded). Labels of the unlabeled rows never reach training."""

from __future__ import annotations

from typing import Any

import numpy as np

from pipeline.core.errors import DataError
from pipeline.data import sources as S
from pipeline.data.spec import DataSpec


def _balanced_take(by_class: list[np.ndarray], n: int, rng: np.random.Generator, what: str, where: str) -> np.ndarray:
    k = len(by_class)
    per = np.full(k, n // k)
    per[rng.permutation(k)[: n % k]] += 1
    out = []
    for c in range(k):
        if len(by_class[c]) < per[c]:
            raise DataError(f"{where}: class {c} has only {len(by_class[c])} labeled rows left, {what} needs {per[c]}")
        out.append(by_class[c][: per[c]])
        by_class[c] = by_class[c][per[c] :]
    return np.concatenate(out) if out else np.zeros(0, np.int64)


def choose_splits(
    y_pool: np.ndarray,
    num_classes: int,
    n_labeled: int,
    n_val: int,
    n_unlabeled: int | None,
    seed: int,
    where: str = "<pool>",
) -> dict[str, np.ndarray]:
    """Row indices into the train pool for labeled / val / unlabeled (class-balanced, seeded)."""
    if n_labeled < num_classes:
        raise DataError(f"{where}: n_labeled={n_labeled} is fewer labeled examples than the {num_classes} classes")
    if n_val < 1:
        raise DataError(f"{where}: empty split 'val' (n_val={n_val}); calibration needs labeled validation rows")
    rng = np.random.default_rng([seed, 1])
    by_class = []
    for c in range(num_classes):
        idx = np.flatnonzero(y_pool == c)
        by_class.append(idx[rng.permutation(len(idx))])
    lab = _balanced_take(by_class, n_labeled, rng, f"n_labeled={n_labeled}", where)
    val = _balanced_take(by_class, n_val, rng, f"n_val={n_val}", where)
    used = np.zeros(len(y_pool), bool)
    used[lab] = used[val] = True
    unl = np.flatnonzero(~used)
    unl = unl[rng.permutation(len(unl))]
    if n_unlabeled is not None:
        unl = unl[: max(0, int(n_unlabeled))]
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
        raw.y_train, raw.num_classes, spec.n_labeled, spec.n_val, spec.n_unlabeled, spec.seed, raw.train_file
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
