"""The baselines a sceptical reader tries first, on exactly the run's split: logistic regression and kNN on the
labeled rows, and label spreading (scikit-learn's ``LabelSpreading``, kNN kernel) on the labeled plus unlabeled rows.

Inputs are scaled as the flow sees them (images: the grey levels dequantized at their centre, ``(q + 0.5) / L``;
vectors: standardized with the run's fixed feature mean and std). Each method's hyperparameters are chosen on the
validation split from the small grids below, then it predicts the test split once. Label spreading uses at most
``eval.anchor_unlabeled`` unlabeled rows (a subsample seeded by the data seed).

    >>> from pipeline.results.anchors import GRIDS
    >>> sorted(GRIDS)
    ['knn', 'label_spreading', 'logreg']
"""

from __future__ import annotations

import itertools
import warnings
from typing import Any, Callable

import numpy as np

from pipeline.data.manifest import Prepared
from pipeline.data.shards import load_split

GRIDS: dict[str, dict[str, tuple]] = {
    "logreg": {"C": (0.01, 0.1, 1.0, 10.0)},
    "knn": {"n_neighbors": (1, 3, 5, 10, 20)},
    "label_spreading": {"n_neighbors": (5, 10, 20), "alpha": (0.2, 0.5, 0.8, 0.99)},
}


def flow_view(prepared: Prepared, x: np.ndarray) -> np.ndarray:
    """Rows as the flow sees them, flattened to ``[N, D]`` float32."""
    x = x.reshape(len(x), -1).astype(np.float32)
    if prepared.kind == "image":
        levels = prepared.levels
        return (np.round(x / 255.0 * (levels - 1)) + 0.5) / levels
    mean, std = prepared.manifest.get("feature_mean"), prepared.manifest.get("feature_std")
    if mean is None:
        return x
    return (x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)


def _make(method: str, params: dict[str, Any]):
    from sklearn.linear_model import LogisticRegression
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.semi_supervised import LabelSpreading

    if method == "logreg":
        return LogisticRegression(max_iter=2000, **params)
    if method == "knn":
        return KNeighborsClassifier(**params)
    return LabelSpreading(kernel="knn", max_iter=200, **params)


def _choose(method: str, fit: Callable[[Any], Any], x_val: np.ndarray, y_val: np.ndarray, n_fit: int):
    """The grid point with the best validation accuracy (ties: the first); neighbours never exceed the fit rows."""
    grid = GRIDS[method]
    best: tuple[float, dict[str, Any], Any] = (-1.0, {}, None)
    for values in itertools.product(*grid.values()):
        params = dict(zip(grid, values))
        if params.get("n_neighbors", 0) > n_fit:
            continue
        with warnings.catch_warnings():
            # convergence notices of the grid's extremes; label spreading divides by zero for points whose kNN
            # graph component holds no label (scikit-learn then predicts class 0 for them: counted as it is)
            warnings.simplefilter("ignore")
            model = fit(_make(method, params))
            acc = float((model.predict(x_val) == y_val).mean())
        if acc > best[0]:
            best = (acc, params, model)
    return best


def classical_baselines(prepared: Prepared, max_unlabeled: int) -> dict[str, float]:
    """``baseline_{logreg,knn,label_spreading}_test_accuracy``, their validation accuracy and chosen parameters."""
    x_l, y_l = load_split(prepared, "labeled")
    x_v, y_v = load_split(prepared, "val")
    x_t, y_t = load_split(prepared, "test")
    x_u, _ = load_split(prepared, "unlabeled")
    if len(x_u) > max_unlabeled:
        keep = np.random.default_rng(prepared.manifest.get("seed", 0)).choice(len(x_u), max_unlabeled, replace=False)
        x_u = x_u[np.sort(keep)]
    xl, xv, xt, xu = (flow_view(prepared, a) for a in (x_l, x_v, x_t, x_u))
    x_ssl = np.concatenate([xl, xu])
    y_ssl = np.concatenate([y_l, np.full(len(xu), -1, np.int64)])
    fits = {
        "logreg": (lambda m: m.fit(xl, y_l), len(xl)),
        "knn": (lambda m: m.fit(xl, y_l), len(xl)),
        "label_spreading": (lambda m: m.fit(x_ssl, y_ssl), len(x_ssl)),
    }
    out: dict[str, float] = {}
    for method, (fit, n_fit) in fits.items():
        val_acc, params, model = _choose(method, fit, xv, y_v, n_fit)
        out[f"baseline_{method}_val_accuracy"] = val_acc
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            out[f"baseline_{method}_test_accuracy"] = float((model.predict(xt) == y_t).mean())
        out.update({f"baseline_{method}_{k}": float(v) for k, v in params.items()})
    out["baseline_label_spreading_unlabeled_rows"] = float(len(xu))
    return out
