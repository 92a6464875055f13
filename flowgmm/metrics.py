"""Classification, calibration and out-of-domain metrics (numpy or torch inputs, python float outputs).

* :func:`accuracy`, :func:`nll` (mean ``-log p(y | x)``), :func:`brier` (mean over examples of
  ``sum_k (p_k - 1[y = k])^2``).
* :func:`ece`: expected calibration error with ``n_bins`` equal-width confidence bins on ``[0, 1]``
  (15 by default; bin ``i`` holds confidences in ``(i/n, (i+1)/n]``, bin 0 also holds 0), confidence =
  max probability; ``ECE = sum_b |B_b| / N * |acc(B_b) - conf(B_b)|``.  :func:`reliability_bins` returns
  the per-bin numbers.
* :func:`wilson_interval`: the Wilson score interval of a proportion (e.g. accuracy, ``k`` right out of ``n``),
  95% by default; it stays inside [0, 1] and is honest about small test splits.
* Out-of-domain detection, in-domain = positive class, higher score = more in-domain:
  :func:`auroc` (ties count 1/2), :func:`aupr` (average precision, as scikit-learn),
  :func:`fpr_at_tpr` (fraction of out-of-domain scores at or above the highest threshold that keeps a
  true-positive rate >= ``tpr``), :func:`ood_report`.

Example:
    >>> from flowgmm import metrics
    >>> metrics.auroc([3.0, 2.0], [1.0, 2.0])        # pairs: 1 + 1 + 1 + 0.5 out of 4
    0.875
    >>> metrics.ece([[0.9, 0.1], [0.2, 0.8]], [0, 0], n_bins=10)   # |1 - 0.9|/2 + |0 - 0.8|/2
    0.45
    >>> [round(v, 3) for v in metrics.wilson_interval(8, 10)]     # 80% accuracy on 10 rows: a wide interval
    [0.49, 0.943]
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

__all__ = [
    "accuracy",
    "nll",
    "ece",
    "brier",
    "reliability_bins",
    "auroc",
    "aupr",
    "fpr_at_tpr",
    "ood_report",
    "wilson_interval",
    "selection_score",
]


def _np(a: Any, dtype: type = np.float64) -> np.ndarray:
    if hasattr(a, "detach"):
        a = a.detach().cpu().numpy()
    return np.asarray(a, dtype=dtype)


def accuracy(probs: Any, y: Any) -> float:
    """Fraction of examples whose most probable class is ``y``."""
    return float((_np(probs).argmax(1) == _np(y, np.int64)).mean())


def nll(probs: Any, y: Any, eps: float = 1e-12) -> float:
    """Mean ``-log p(y | x)`` (probabilities clipped at ``eps``)."""
    p, labels = _np(probs), _np(y, np.int64)
    return float(-np.log(np.clip(p[np.arange(len(labels)), labels], eps, None)).mean())


def brier(probs: Any, y: Any) -> float:
    """Mean over examples of ``sum_k (p_k - onehot_k)^2`` (between 0 and 2)."""
    p, labels = _np(probs), _np(y, np.int64)
    onehot = np.eye(p.shape[1])[labels]
    return float(((p - onehot) ** 2).sum(1).mean())


def reliability_bins(probs: Any, y: Any, n_bins: int = 15) -> dict[str, np.ndarray]:
    """Per-bin ``edges`` (``n_bins + 1``), ``count``, ``accuracy`` and ``confidence`` (NaN when empty)."""
    p, labels = _np(probs), _np(y, np.int64)
    conf, correct = p.max(1), (p.argmax(1) == labels).astype(np.float64)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    index = np.clip(np.ceil(conf * n_bins).astype(np.int64) - 1, 0, n_bins - 1)
    count = np.bincount(index, minlength=n_bins).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        acc = np.bincount(index, weights=correct, minlength=n_bins) / count
        mean_conf = np.bincount(index, weights=conf, minlength=n_bins) / count
    return {"edges": edges, "count": count, "accuracy": acc, "confidence": mean_conf}


def ece(probs: Any, y: Any, n_bins: int = 15) -> float:
    """Expected calibration error with ``n_bins`` equal-width bins (15 by default)."""
    bins = reliability_bins(probs, y, n_bins)
    filled = bins["count"] > 0
    gap = np.abs(bins["accuracy"][filled] - bins["confidence"][filled])
    return float((bins["count"][filled] * gap).sum() / bins["count"].sum())


def wilson_interval(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval ``(low, high)`` of the proportion ``k / n`` (``z = 1.96``: 95%); ``(0, 1)`` when
    ``n = 0``.

    >>> wilson_interval(0, 5)[0], round(wilson_interval(0, 5)[1], 3)
    (0.0, 0.434)
    >>> [round(v, 4) for v in wilson_interval(900, 1000)]
    [0.8798, 0.9171]
    """
    if n <= 0:
        return 0.0, 1.0
    if not 0 <= k <= n:
        raise ValueError(f"wilson_interval: k={k} must be in [0, n={n}]")
    p, z2 = k / n, z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    return (0.0 if k == 0 else max(0.0, centre - half)), (1.0 if k == n else min(1.0, centre + half))


def auroc(scores_in: Any, scores_out: Any) -> float:
    """``P(score_in > score_out) + P(equal) / 2`` (Mann-Whitney), in-domain positive."""
    s_in, s_out = _np(scores_in), _np(scores_out)
    ranks = _average_ranks(np.concatenate([s_in, s_out]))
    n_in, n_out = len(s_in), len(s_out)
    return float((ranks[:n_in].sum() - n_in * (n_in + 1) / 2) / (n_in * n_out))


def _average_ranks(a: np.ndarray) -> np.ndarray:
    """1-based ranks with ties given their average rank."""
    order = np.argsort(a, kind="mergesort")
    sorted_a = a[order]
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_a)) + 1]
    ends = np.r_[starts[1:], len(a)]
    avg = (starts + ends + 1) / 2.0  # mean of ranks start+1 .. end
    ranks = np.empty(len(a))
    ranks[order] = np.repeat(avg, ends - starts)
    return ranks


def aupr(scores_in: Any, scores_out: Any) -> float:
    """Average precision with in-domain as positive: ``sum_n (R_n - R_{n-1}) P_n`` over distinct thresholds."""
    s_in, s_out = _np(scores_in), _np(scores_out)
    scores = np.concatenate([s_in, s_out])
    labels = np.r_[np.ones(len(s_in)), np.zeros(len(s_out))]
    order = np.argsort(-scores, kind="mergesort")
    scores, labels = scores[order], labels[order]
    last = np.r_[np.flatnonzero(np.diff(scores)), len(scores) - 1]  # last index of each distinct score
    tp = np.cumsum(labels)[last]
    precision = tp / (last + 1)
    recall = tp / len(s_in)
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def fpr_at_tpr(scores_in: Any, scores_out: Any, tpr: float = 0.95) -> float:
    """False-positive rate at the highest threshold whose true-positive rate is at least ``tpr``."""
    s_in, s_out = np.sort(_np(scores_in))[::-1], _np(scores_out)
    k = max(math.ceil(tpr * len(s_in) - 1e-9), 1)
    threshold = s_in[k - 1]
    return float((s_out >= threshold).mean())


def ood_report(in_scores: Any, out_scores: Any) -> dict[str, float]:
    """``{"auroc", "aupr_in", "aupr_out", "fpr95"}`` (``aupr_out`` treats out-of-domain as positive)."""
    s_in, s_out = _np(in_scores), _np(out_scores)
    return {
        "auroc": auroc(s_in, s_out),
        "aupr_in": aupr(s_in, s_out),
        "aupr_out": aupr(-s_out, -s_in),
        "fpr95": fpr_at_tpr(s_in, s_out, 0.95),
    }


def selection_score(accuracy: float, nll: float) -> float:
    """The one model-selection score (checkpoints, the registry's ``@champion``, sweeps): validation accuracy, ties
    broken by the validation NLL of p(y|x). Higher is better.

    >>> selection_score(0.9, 0.3) > selection_score(0.9, 0.4) > selection_score(0.89, 0.0)
    True
    """
    return float(accuracy) - 1e-3 * float(nll)
