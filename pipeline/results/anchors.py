"""The baselines a sceptical reader tries first, on exactly the run's split, each as strong as a careful user makes
it: logistic regression and kNN on the labeled rows; label spreading (scikit-learn's ``LabelSpreading``, kNN or RBF
kernel) on the labeled plus unlabeled rows; and self-training (``SelfTrainingClassifier``) around either supervised
anchor at its chosen setting.

Inputs are scaled as the flow sees them (images: the grey levels dequantized at their centre, ``(q + 0.5) / L``, so
pixels in [0, 1]; vectors: standardized with the run's fixed feature mean and std). Each method's settings are
chosen on the validation split (at most ``VAL_ROWS`` rows, a seeded subsample) from the grids below (ties: the
first), then it predicts the test split once. The RBF bandwidth is relative to the data: ``gamma = gamma_scale / m``
with ``m`` the median squared distance between rows. The graph methods use at most ``eval.anchor_unlabeled``
unlabeled rows (a subsample seeded by the data seed); the RBF kernel (a dense ``n x n`` matrix) and self-training
(up to 10 refits per setting) at most ``DENSE_ROWS`` rows, labeled ones first: with that many labeled rows they are
skipped (``baseline_<key>_skipped`` says so). The kNN label-spreading settings share one neighbour search over the
graph's rows (:class:`KnnGraph`, scikit-learn's ``NearestNeighbors`` through a callable kernel: the same graph as
its ``kernel="knn"``, searched once instead of once per setting: on MNIST's 21,000 rows, the same choice and
accuracies). Every fit runs on one BLAS thread: these matrices are small, and a BLAS thread per core beside training,
Ray or other jobs slowed them tens of times on a busy 2-core machine (and even on an idle one, two threads made
logistic regression 4x and self-training 6x slower on MNIST). The one large computation, the neighbour search, uses
the cores the baselines own (``threads``: after the main model, its cores; MNIST's 21,000-row graph in 6.5 s on two,
12.7 s on one).

``classical_baselines`` returns two dicts: metrics (``baseline_<key>_val_accuracy``, ``baseline_<key>_test_accuracy``,
``baseline_<key>_seconds``) and the chosen settings (``baseline_<key>_<setting>``, e.g.
``baseline_label_spreading_kernel``), with ``<key>`` one of ``pipeline.config.methods.ANCHORS``.

    >>> from pipeline.results.anchors import GRIDS
    >>> sorted(GRIDS)
    ['knn', 'label_spreading', 'logreg', 'self_training']
    >>> sorted({p["kernel"] for p in GRIDS["label_spreading"]})
    ['knn', 'rbf']
"""

from __future__ import annotations

import hashlib
import itertools
import time
import warnings
import weakref
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from pipeline.data.manifest import Prepared
from pipeline.data.shards import load_split

Params = dict[str, Any]


def _grid(**axes: tuple) -> list[Params]:
    return [dict(zip(axes, values)) for values in itertools.product(*axes.values())]


GRIDS: dict[str, list[Params]] = {
    "logreg": _grid(C=(0.01, 0.1, 1.0, 10.0)),
    "knn": _grid(n_neighbors=(1, 3, 5, 10, 20)),
    "label_spreading": _grid(kernel=("knn",), n_neighbors=(5, 10, 20), alpha=(0.2, 0.5, 0.8, 0.99))
    + _grid(kernel=("rbf",), gamma_scale=(2.0, 8.0, 32.0, 128.0), alpha=(0.2, 0.5, 0.8)),
    "self_training": _grid(base=("logreg", "knn"), threshold=(0.7, 0.8, 0.9, 0.95, 0.99)),
}
DENSE_ROWS = 2000  # rows (labeled first, then unlabeled) for the RBF kernel and self-training; none if more labeled
VAL_ROWS = 5000  # validation rows the grids are chosen on (a seeded subsample when there are more)
SPREAD_ITERATIONS = 100  # label spreading's iteration cap (alpha <= 0.8 converges in under 60 on digits)


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


def median_sq_distance(x: np.ndarray, rows: int = 1000, seed: int = 0) -> float:
    """Median squared Euclidean distance between distinct rows (of at most ``rows`` sampled ones): the RBF scale.

    >>> median_sq_distance(np.array([[0.0], [1.0], [3.0]]))
    4.0
    """
    if len(x) > rows:
        x = x[np.random.default_rng(seed).choice(len(x), rows, replace=False)]
    x = x.astype(np.float64)
    sq = (x * x).sum(1)
    d = sq[:, None] + sq[None, :] - 2.0 * x @ x.T
    iu = np.triu_indices(len(x), k=1)
    return float(max(np.median(d[iu]), 1e-12)) if len(iu[0]) else 1.0


@dataclass
class AnchorSplit:
    """The run's rows as the flow sees them (``dense``: the labeled plus unlabeled rows up to ``DENSE_ROWS``)."""

    xl: np.ndarray
    yl: np.ndarray
    xv: np.ndarray
    yv: np.ndarray
    xt: np.ndarray
    yt: np.ndarray
    xu: np.ndarray  # already shuffled and capped at anchor_unlabeled
    u_rows: np.ndarray  # their row numbers in the unlabeled split

    def capped(self, seed: int) -> AnchorSplit:
        """At most ``VAL_ROWS`` validation rows (a subsample seeded by ``seed``)."""
        if len(self.yv) <= VAL_ROWS:
            return self
        keep = np.sort(np.random.default_rng(seed + 1).choice(len(self.yv), VAL_ROWS, replace=False))
        return replace(self, xv=self.xv[keep], yv=self.yv[keep])

    def unlabeled(self, dense: bool) -> np.ndarray:
        return self.xu[: max(0, DENSE_ROWS - len(self.xl))] if dense else self.xu

    def with_unlabeled(self, dense: bool) -> tuple[np.ndarray, np.ndarray]:
        xu = self.unlabeled(dense)
        return np.concatenate([self.xl, xu]), np.concatenate([self.yl, np.full(len(xu), -1, np.int64)])


def load_anchor_split(prepared: Prepared, max_unlabeled: int) -> AnchorSplit:
    """The run's split as the anchors see it: at most ``max_unlabeled`` unlabeled rows and ``VAL_ROWS`` validation
    rows (subsamples seeded by the data seed)."""
    seed = prepared.manifest.get("seed", 0)
    x_u, _ = load_split(prepared, "unlabeled")
    order = np.random.default_rng(seed).permutation(len(x_u))[:max_unlabeled]
    parts = [load_split(prepared, s) for s in ("labeled", "val", "test")]
    (xl, yl), (xv, yv), (xt, yt) = ((flow_view(prepared, x), y) for x, y in parts)
    return AnchorSplit(xl, yl, xv, yv, xt, yt, flow_view(prepared, x_u[order]), order).capped(seed)


def _accuracy(model, x: np.ndarray, y: np.ndarray, rows: int = 4096) -> float:
    """Accuracy predicted ``rows`` at a time (an RBF model builds a ``rows x n`` kernel per call)."""
    hits = sum(int((model.predict(x[i : i + rows]) == y[i : i + rows]).sum()) for i in range(0, len(y), rows))
    return hits / max(1, len(y))


class KnnGraph:
    """The ``k_max`` nearest neighbours of the rows ``x`` (and of any rows queried against them), searched once and
    cut to each ``k``: ``kernel(k)`` is a label-spreading kernel equal to scikit-learn's ``kernel="knn"`` with
    ``n_neighbors=k`` (a row's neighbours include itself; neighbours beyond ``k`` tied at the ``k``-th distance may be
    chosen differently).

    >>> from sklearn.semi_supervised import LabelSpreading
    >>> x = np.random.default_rng(0).normal(size=(60, 3)); y = np.where(np.arange(60) < 6, np.arange(60) % 2, -1)
    >>> graph = KnnGraph(x, k_max=10)
    >>> ours = LabelSpreading(kernel=graph.kernel(5)).fit(x, y).predict(x[:20])
    >>> bool((ours == LabelSpreading(kernel="knn", n_neighbors=5).fit(x, y).predict(x[:20])).all())
    True
    """

    def __init__(self, x: np.ndarray, k_max: int, threads: int = 1):
        from sklearn.neighbors import NearestNeighbors

        self.k_max, self.threads = min(k_max, len(x)), max(1, int(threads))
        self.rows, self.digest = len(x), _digest(x)
        self.search = NearestNeighbors(n_neighbors=self.k_max).fit(x)
        self._found: dict[str, np.ndarray] = {}
        self._fitted: list[weakref.ref] = []  # arrays already checked to hold the rows ``x`` (scikit-learn's copies)

    def neighbours(self, q: np.ndarray) -> np.ndarray:
        """``[len(q), k_max]`` row numbers of each query row's nearest rows of ``x``, nearest first (cached)."""
        key = self.digest if self._is_fitted(q) else _digest(q)
        if key not in self._found:
            from threadpoolctl import threadpool_limits

            with threadpool_limits(limits=self.threads):  # scikit-learn's OpenMP search, and its BLAS
                self._found[key] = self.search.kneighbors(q, return_distance=False)
        return self._found[key]

    def _is_fitted(self, a: np.ndarray) -> bool:
        """Whether ``a`` holds the rows ``x`` (hashed once per array object)."""
        if any(r() is a for r in self._fitted):
            return True
        if len(a) != self.rows or _digest(a) != self.digest:
            return False
        self._fitted = [r for r in self._fitted if r() is not None] + [weakref.ref(a)]
        return True

    def kernel(self, k: int):
        """``f(a, b)``: ``a`` the fitted rows; ``f(a, a)`` the ``n x n`` graph (row ``i``: the ``k`` rows nearest
        ``i``), else the ``n x m`` weights of the query rows ``b`` (column ``j``: the ``k`` rows nearest ``b[j]``).
        scikit-learn passes the same array object twice only when it builds the graph, so predicting on the model's
        own ``X_`` object (not a copy or a slice of it) would be read as the graph: the anchors predict slices."""
        from scipy import sparse

        def f(a: np.ndarray, b: np.ndarray):
            if not self._is_fitted(a):
                raise ValueError("this KnnGraph's kernel is for the rows it was built on")
            ind = self.neighbours(b)[:, :k]
            m = len(ind)
            w = sparse.csr_matrix((np.ones(m * k), ind.ravel(), np.arange(0, m * k + 1, k)), shape=(m, self.rows))
            return w if b is a else w.T

        return f


def _digest(x: np.ndarray) -> str:
    x = np.ascontiguousarray(x)
    return f"{x.shape}{x.dtype}" + hashlib.blake2b(x.data, digest_size=16).hexdigest()


class Anchors:
    """Fits each anchor over its grid, keeps the best on validation, scores it on test; ``models`` holds the kept
    fits."""

    def __init__(self, split: AnchorSplit, threads: int = 1):
        self.s, self.threads = split, threads
        self.scale = median_sq_distance(np.concatenate([split.xl, split.unlabeled(dense=True)]))
        self.metrics: dict[str, float] = {}
        self.params: Params = {}
        self.chosen: dict[str, Params] = {}
        self.models: dict[str, Any] = {}
        self._graph: KnnGraph | None = None

    def graph(self) -> KnnGraph:
        """The kNN search over the labeled plus unlabeled rows, shared by every kNN label-spreading setting."""
        if self._graph is None:
            k_max = max(p.get("n_neighbors", 0) for p in GRIDS["label_spreading"])
            self._graph = KnnGraph(self.s.with_unlabeled(dense=False)[0], k_max, self.threads)
        return self._graph

    def model(self, method: str, p: Params):
        from sklearn.linear_model import LogisticRegression
        from sklearn.neighbors import KNeighborsClassifier
        from sklearn.semi_supervised import LabelSpreading, SelfTrainingClassifier

        if method == "logreg":
            return LogisticRegression(max_iter=2000, **p)
        if method == "knn":
            return KNeighborsClassifier(**p)
        if method == "self_training":
            return SelfTrainingClassifier(self.model(p["base"], self.chosen[p["base"]]), threshold=p["threshold"])
        if p["kernel"] == "knn":
            kernel = self.graph().kernel(p["n_neighbors"])
            return LabelSpreading(kernel=kernel, alpha=p["alpha"], max_iter=SPREAD_ITERATIONS)
        gamma = p["gamma_scale"] / self.scale
        return LabelSpreading(kernel="rbf", gamma=gamma, alpha=p["alpha"], max_iter=SPREAD_ITERATIONS)

    def fit(self, method: str, p: Params):
        s = self.s
        if method in ("logreg", "knn"):
            return self.model(method, p).fit(s.xl, s.yl)
        return self.model(method, p).fit(*s.with_unlabeled(_dense(method, p)))

    def fits(self, method: str, p: Params) -> bool:
        """Neighbours never exceed the rows they are drawn from; dense settings need fewer than ``DENSE_ROWS``
        labeled rows (above that, a kNN graph only and no self-training: plenty of labels, and bounded cost)."""
        if _dense(method, p) and len(self.s.yl) >= DENSE_ROWS:
            return False
        rows = len(self.s.yl) if method == "knn" else len(self.s.yl) + len(self.s.xu)
        return p.get("n_neighbors", 0) <= rows

    def run(self, method: str, grid: list[Params] | None = None) -> None:
        """Fit ``method`` at every point of ``grid`` (default ``GRIDS[method]``); keep the best on validation."""
        t0 = time.perf_counter()
        s, best = self.s, (-1.0, {}, None)
        for p in (p for p in (grid or GRIDS[method]) if self.fits(method, p)):
            with warnings.catch_warnings():
                # convergence notices of the grid's extremes; label spreading divides by zero for points whose graph
                # component holds no label (scikit-learn then predicts class 0 for them: counted as it is)
                warnings.simplefilter("ignore")
                model = self.fit(method, p)
                acc = _accuracy(model, s.xv, s.yv)
            if acc > best[0]:
                best = (acc, p, model)
        acc, p, model = best
        key = f"baseline_{method}"
        if model is None:
            self.params[f"{key}_skipped"] = f"{len(s.yl)} labeled rows (at most {DENSE_ROWS - 1} for this anchor)"
            return
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            test = _accuracy(model, s.xt, s.yt)
        self.chosen[method], self.models[method] = p, model
        self.metrics.update({f"{key}_val_accuracy": acc, f"{key}_test_accuracy": test})
        self.metrics[f"{key}_seconds"] = time.perf_counter() - t0
        self.params.update({f"{key}_{k}": v for k, v in self.settings(method, p).items()})

    def settings(self, method: str, p: Params) -> Params:
        """The chosen grid point, plus what it implies: the RBF ``gamma``, the base's own setting, the rows used."""
        out = dict(p)
        if method == "label_spreading" and p["kernel"] == "rbf":
            out["gamma"] = p["gamma_scale"] / self.scale
        if method == "self_training":
            out.update({f"base_{k}": v for k, v in self.chosen[p["base"]].items()})
        if method in ("label_spreading", "self_training"):
            out["unlabeled_rows"] = len(self.s.unlabeled(_dense(method, p)))
        return out


def _dense(method: str, p: Params) -> bool:
    """Settings whose cost grows with the square of the rows (or that refit many times): RBF, self-training."""
    return method == "self_training" or p.get("kernel") == "rbf"


def classical_baselines(prepared: Prepared, max_unlabeled: int, threads: int = 1) -> tuple[dict[str, float], Params]:
    """``(metrics, settings)`` of the anchors (see the module docstring for the keys); ``threads``: the cores the
    neighbour search may use (every other fit uses one)."""
    from threadpoolctl import threadpool_limits

    anchors = Anchors(load_anchor_split(prepared, max_unlabeled), threads)
    with threadpool_limits(limits=1):
        for method in GRIDS:  # self-training last: it wraps the supervised anchors' chosen settings
            anchors.run(method)
    return anchors.metrics, anchors.params
