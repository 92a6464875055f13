"""Metrics against hand-computed values on small fixed examples (scikit-learn only as a cross-check)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from flowgmm import metrics

PROBS = np.array([[0.9, 0.1], [0.6, 0.4], [0.3, 0.7], [0.45, 0.55], [0.2, 0.8]])
LABELS = np.array([0, 1, 1, 0, 0])  # correct, wrong, correct, wrong, wrong


def test_accuracy_nll_brier() -> None:
    assert metrics.accuracy(PROBS, LABELS) == pytest.approx(2 / 5)
    expected_nll = -(math.log(0.9) + math.log(0.4) + math.log(0.7) + math.log(0.45) + math.log(0.2)) / 5
    assert metrics.nll(PROBS, LABELS) == pytest.approx(expected_nll)
    brier = (2 * 0.1**2 + 2 * 0.6**2 + 2 * 0.3**2 + 2 * 0.55**2 + 2 * 0.8**2) / 5
    assert metrics.brier(PROBS, LABELS) == pytest.approx(brier)
    assert isinstance(metrics.accuracy(torch.tensor(PROBS), torch.tensor(LABELS)), float)


def test_ece_and_reliability_bins() -> None:
    # confidences 0.9, 0.6, 0.7, 0.55, 0.8; with 5 bins of width 0.2: (0.4, 0.6] holds 0.6 and 0.55,
    # (0.6, 0.8] holds 0.7 and 0.8, (0.8, 1.0] holds 0.9
    bins = metrics.reliability_bins(PROBS, LABELS, n_bins=5)
    np.testing.assert_allclose(bins["edges"], [0, 0.2, 0.4, 0.6, 0.8, 1.0])
    np.testing.assert_array_equal(bins["count"], [0, 0, 2, 2, 1])
    np.testing.assert_allclose(bins["accuracy"][2:], [0.0, 0.5, 1.0])
    np.testing.assert_allclose(bins["confidence"][2:], [0.575, 0.75, 0.9])
    expected = (2 * 0.575 + 2 * 0.25 + 1 * 0.1) / 5
    assert metrics.ece(PROBS, LABELS, n_bins=5) == pytest.approx(expected)
    # default: 15 equal-width bins, each example alone in its bin here
    conf = PROBS.max(1)
    correct = PROBS.argmax(1) == LABELS
    assert metrics.ece(PROBS, LABELS) == pytest.approx(np.abs(conf - correct).mean())
    assert metrics.ece(np.array([[1.0, 0.0]]), np.array([0])) == 0.0


def test_auroc_and_aupr_hand_computed() -> None:
    s_in, s_out = [0.9, 0.8, 0.4], [0.7, 0.4, 0.1]
    # pairs (in > out): 0.9 beats 3, 0.8 beats 3, 0.4 beats 0.1 and ties 0.4 -> (3 + 3 + 1.5) / 9
    assert metrics.auroc(s_in, s_out) == pytest.approx(7.5 / 9)
    # ranked: 0.9(+) 0.8(+) 0.7(-) {0.4(+), 0.4(-)} 0.1(-): AP = 1/3 * 1 + 1/3 * 1 + 1/3 * 3/5
    assert metrics.aupr(s_in, s_out) == pytest.approx(1 / 3 + 1 / 3 + 1 / 5)
    assert metrics.auroc([1.0, 2.0], [3.0, 4.0]) == 0.0
    assert metrics.auroc(torch.tensor([5.0]), torch.tensor([5.0])) == 0.5


def test_fpr_at_95_tpr_hand_computed() -> None:
    s_in = np.arange(1, 21, dtype=float)  # 20 in-domain scores; TPR >= 0.95 needs threshold 2 (19 of 20)
    s_out = np.array([0.5, 1.5, 2.0, 2.5, 30.0])  # at or above 2: 2.0, 2.5, 30.0
    assert metrics.fpr_at_tpr(s_in, s_out) == pytest.approx(3 / 5)
    assert metrics.fpr_at_tpr(s_in, s_out, tpr=1.0) == pytest.approx(4 / 5)
    report = metrics.ood_report(s_in, s_out)
    assert set(report) == {"auroc", "aupr_in", "aupr_out", "fpr95"}
    assert report["fpr95"] == pytest.approx(3 / 5)


def test_against_sklearn_on_random_scores() -> None:
    sk = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(0)
    s_in = np.round(rng.normal(1.0, 1.0, 300), 1)  # rounding creates ties
    s_out = np.round(rng.normal(0.0, 1.0, 200), 1)
    labels = np.r_[np.ones(300), np.zeros(200)]
    scores = np.r_[s_in, s_out]
    assert metrics.auroc(s_in, s_out) == pytest.approx(sk.roc_auc_score(labels, scores))
    assert metrics.aupr(s_in, s_out) == pytest.approx(sk.average_precision_score(labels, scores))
    assert metrics.ood_report(s_in, s_out)["aupr_out"] == pytest.approx(sk.average_precision_score(1 - labels, -scores))
    fpr, tpr, _ = sk.roc_curve(labels, scores)
    assert metrics.fpr_at_tpr(s_in, s_out) == pytest.approx(fpr[np.argmax(tpr >= 0.95)])
