"""The classical anchors run on exactly the run's split: grids chosen on validation, label spreading on the labeled
plus (at most ``anchor_unlabeled``) unlabeled rows."""

from __future__ import annotations

from pipeline.config import resolve
from pipeline.data import prepare
from pipeline.results.anchors import GRIDS, classical_baselines


def test_anchors_on_moons_choose_from_their_grids_and_label_spreading_uses_the_unlabeled_rows(tmp_path):
    prepared = prepare(resolve("moons").data, tmp_path)  # 10 labels, 50 validation, 940 unlabeled
    out = classical_baselines(prepared, max_unlabeled=20000)
    for method in GRIDS:
        assert 0.0 <= out[f"baseline_{method}_test_accuracy"] <= 1.0
        for param, grid in GRIDS[method].items():
            assert out[f"baseline_{method}_{param}"] in grid
    assert out["baseline_knn_n_neighbors"] <= 10  # never more neighbours than labeled rows
    assert out["baseline_label_spreading_unlabeled_rows"] == prepared.counts["unlabeled"]
    # two moons is where a graph method shines: from 10 labels it must beat the linear model by a wide margin
    assert out["baseline_label_spreading_test_accuracy"] >= 0.95
    assert out["baseline_label_spreading_test_accuracy"] >= out["baseline_logreg_test_accuracy"] + 0.05
    capped = classical_baselines(prepared, max_unlabeled=100)
    assert capped["baseline_label_spreading_unlabeled_rows"] == 100
