"""The classical anchors run on exactly the run's split: grids chosen on validation (label spreading with a kNN or an
RBF kernel, self-training around a supervised anchor), settings returned apart from the measured accuracies."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.config import resolve
from pipeline.config.methods import ANCHORS
from pipeline.data import prepare
from pipeline.results.anchors import DENSE_ROWS, GRIDS, Anchors, AnchorSplit, classical_baselines


def test_anchors_on_moons_choose_from_their_grids_and_label_spreading_uses_the_unlabeled_rows(tmp_path):
    prepared = prepare(resolve("moons").data, tmp_path)  # 10 labels, 50 validation, 940 unlabeled
    metrics, params = classical_baselines(prepared, max_unlabeled=20000)
    assert set(GRIDS) == set(ANCHORS)  # every anchor has a display name
    for method, grid in GRIDS.items():
        assert 0.0 <= metrics[f"baseline_{method}_test_accuracy"] <= 1.0
        assert 0.0 <= metrics[f"baseline_{method}_val_accuracy"] <= 1.0
        chosen = {
            k.removeprefix(f"baseline_{method}_"): v for k, v in params.items() if k.startswith(f"baseline_{method}_")
        }
        assert any(all(chosen[k] == v for k, v in point.items()) for point in grid)  # a point of its own grid
    # settings apart from measurements: metrics are numbers a tracker plots, settings are what was chosen
    assert all(isinstance(v, float) for v in metrics.values()) and not set(metrics) & set(params)
    assert {k.rsplit("_", 1)[-1] for k in metrics} == {"accuracy", "seconds"}
    assert params["baseline_knn_n_neighbors"] <= 10  # never more neighbours than labeled rows
    assert params["baseline_label_spreading_kernel"] in ("knn", "rbf")
    assert params["baseline_label_spreading_unlabeled_rows"] == prepared.counts["unlabeled"]  # under both caps
    assert params["baseline_self_training_base"] in ("logreg", "knn")
    # two moons is where a graph method shines: from 10 labels it must beat the linear model by a wide margin
    assert metrics["baseline_label_spreading_test_accuracy"] >= 0.95
    assert metrics["baseline_label_spreading_test_accuracy"] >= metrics["baseline_logreg_test_accuracy"] + 0.05
    _, capped = classical_baselines(prepared, max_unlabeled=100)
    assert capped["baseline_label_spreading_unlabeled_rows"] == 100


def _rings(seed: int = 0) -> AnchorSplit:
    """Two concentric rings (radius 1 and 2, noise 0.1): 20 labels, 100 validation, 600 unlabeled, 400 test rows.
    No line separates them; a graph over the unlabeled rows does."""
    rng = np.random.default_rng(seed)

    def draw(n: int, balanced: bool = False):
        y = np.arange(n) % 2 if balanced else rng.integers(0, 2, n)
        angle = rng.uniform(0, 2 * np.pi, n)
        x = (1.0 + y)[:, None] * np.stack([np.cos(angle), np.sin(angle)], 1) + rng.normal(0, 0.1, (n, 2))
        return x.astype(np.float32), y.astype(np.int64)

    (xl, yl), (xv, yv), (xt, yt), (xu, _) = draw(20, True), draw(100), draw(400), draw(600)
    return AnchorSplit(xl, yl, xv, yv, xt, yt, xu, np.arange(len(xu)))


def _validation_accuracies(anchors: Anchors, method: str, grid: list[dict]) -> list[float]:
    s = anchors.s
    return [float((anchors.fit(method, p).predict(s.xv) == s.yv).mean()) for p in grid]


@pytest.mark.filterwarnings("ignore")
def test_rbf_label_spreading_is_chosen_on_validation_and_beats_the_trivial_and_linear_baselines() -> None:
    anchors = Anchors(_rings())
    rbf = [p for p in GRIDS["label_spreading"] if p["kernel"] == "rbf"]
    anchors.run("logreg")
    anchors.run("label_spreading", rbf)
    chosen = anchors.chosen["label_spreading"]
    accs = _validation_accuracies(anchors, "label_spreading", rbf)
    assert anchors.metrics["baseline_label_spreading_val_accuracy"] == max(accs) == accs[rbf.index(chosen)]
    assert anchors.params["baseline_label_spreading_gamma"] == pytest.approx(chosen["gamma_scale"] / anchors.scale)
    majority = max(np.mean(anchors.s.yt), 1 - np.mean(anchors.s.yt))
    test = anchors.metrics["baseline_label_spreading_test_accuracy"]
    assert test >= 0.9 and test >= majority + 0.3
    assert test >= anchors.metrics["baseline_logreg_test_accuracy"] + 0.2


@pytest.mark.filterwarnings("ignore")
def test_self_training_wraps_a_chosen_supervised_anchor_and_picks_its_threshold_on_validation() -> None:
    split = _rings(seed=1)
    anchors = Anchors(split)
    anchors.run("logreg")
    anchors.run("knn")
    anchors.run("self_training")
    chosen = anchors.chosen["self_training"]
    accs = _validation_accuracies(anchors, "self_training", GRIDS["self_training"])
    assert anchors.metrics["baseline_self_training_val_accuracy"] == max(accs)
    assert accs[GRIDS["self_training"].index(chosen)] == max(accs)
    base = chosen["base"]  # the base at the setting chosen for it alone, recorded beside the threshold
    for k, v in anchors.chosen[base].items():
        assert anchors.params[f"baseline_self_training_base_{k}"] == v
    assert anchors.params["baseline_self_training_unlabeled_rows"] == min(len(split.xu), DENSE_ROWS - len(split.yl))
    majority = max(np.mean(split.yt), 1 - np.mean(split.yt))
    assert anchors.metrics["baseline_self_training_test_accuracy"] >= majority + 0.1


@pytest.mark.filterwarnings("ignore")
def test_with_many_labeled_rows_the_dense_anchors_are_skipped_and_say_so(monkeypatch) -> None:
    from pipeline.results import anchors as A

    monkeypatch.setattr(A, "DENSE_ROWS", 20)  # the rings have 20 labeled rows: no room for the dense settings
    anchors = Anchors(_rings())
    for method in GRIDS:
        anchors.run(method)
    assert anchors.params["baseline_label_spreading_kernel"] == "knn"
    assert anchors.params["baseline_label_spreading_unlabeled_rows"] == 600  # the kNN graph takes every row
    assert "baseline_self_training_test_accuracy" not in anchors.metrics
    assert anchors.params["baseline_self_training_skipped"] == "20 labeled rows (at most 19 for this anchor)"


@pytest.mark.filterwarnings("ignore")
def test_the_shared_knn_graph_spreads_labels_as_scikit_learns_knn_kernel_does(tmp_path):
    """The kNN label-spreading settings share one neighbour search (KnnGraph): every setting of the grid predicts
    what scikit-learn's own ``kernel="knn"`` predicts on digits' quantized pixels, and the kernel refuses other rows."""
    from sklearn.semi_supervised import LabelSpreading

    from pipeline.results.anchors import SPREAD_ITERATIONS, KnnGraph, load_anchor_split

    split = load_anchor_split(prepare(resolve("digits").data, tmp_path), max_unlabeled=20000)
    x, y = split.with_unlabeled(dense=False)
    graph = KnnGraph(x, k_max=20)
    for p in (p for p in GRIDS["label_spreading"] if p["kernel"] == "knn"):
        ours = LabelSpreading(kernel=graph.kernel(p["n_neighbors"]), alpha=p["alpha"], max_iter=SPREAD_ITERATIONS)
        theirs = LabelSpreading(
            kernel="knn", n_neighbors=p["n_neighbors"], alpha=p["alpha"], max_iter=SPREAD_ITERATIONS
        )
        ours.fit(x, y), theirs.fit(x, y)
        agree = (ours.predict(split.xt) == theirs.predict(split.xt)).mean()
        assert agree >= 0.995, (p, agree)  # equal up to ties at the k-th distance among 17 grey levels
        assert np.allclose(
            ours.label_distributions_[: len(split.yl)], theirs.label_distributions_[: len(split.yl)], atol=0.05
        )
    assert len(graph._found) == 2  # one search of the graph's rows, one of the test rows: not one per setting
    with pytest.raises(ValueError, match="rows it was built on"):
        LabelSpreading(kernel=graph.kernel(5)).fit(x[:-1], y[:-1])
    # on the cores the baselines own (after the main model: its cores), the same neighbours, found in parallel
    on_two = KnnGraph(x, k_max=20, threads=2)
    assert (on_two.neighbours(split.xt)[:, :5] == graph.neighbours(split.xt)[:, :5]).mean() >= 0.995
