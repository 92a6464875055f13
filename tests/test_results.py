"""Using the results: the comparison table reproduces the runs' logged metrics; registration moves the champion alias
only when a new model is better on validation. (Scoring is tested on a trained run in test_pipeline_e2e.py.)"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from mlflow import MlflowClient

from pipeline.results.compare import compare
from pipeline.results.registry import register


@pytest.fixture
def store(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    exp = client.create_experiment("flowgmm-test", artifact_location=(tmp_path / "art").as_uri())
    return uri, client, exp


def _run(client, exp, method, seed, metrics):
    r = client.create_run(exp, run_name=f"{method}-{seed}")
    for k, v in {"train.method": method, "train.seed": seed, "data.n_labeled": 100}.items():
        client.log_param(r.info.run_id, k, v)
    for k, v in metrics.items():
        client.log_metric(r.info.run_id, k, v)
    client.set_terminated(r.info.run_id, "FINISHED")
    return r.info.run_id


def test_comparison_table_matches_logged_metrics(store):
    uri, client, exp = store
    accs = {("flowgmm", 0): 0.80, ("flowgmm", 1): 0.84, ("flowgmm_cons", 0): 0.90}
    for (method, seed), acc in accs.items():
        _run(
            client,
            exp,
            method,
            seed,
            {
                "test_accuracy": acc,
                "test_nll": 1.0 + seed,
                "test_nll_calibrated": 0.5,
                "test_ece": 0.1,
                "test_ece_calibrated": 0.02,
                "test_bpd": 3.0,
                "wall_seconds": 100.0 + seed,
                "ood_fashion_mnist_log_px_auroc": 0.9,
                "ood_notmnist_log_px_auroc": 0.7,
                "labels_only_flow_test_accuracy": 0.7 + seed / 10,
                "baseline_logreg_test_accuracy": 0.75,
                "baseline_knn_test_accuracy": 0.76 + seed / 100,
                "baseline_label_spreading_test_accuracy": 0.85,
            },
        )
    unfinished = client.create_run(exp, run_name="still-running")
    client.log_metric(unfinished.info.run_id, "test_accuracy", 0.0)
    table = {(r["method"], r["labels"]): r for r in compare(uri, "flowgmm-test")}
    f = table[("FlowGMM", 100)]
    assert f["n"] == 2 and f["accuracy"] == pytest.approx(0.82) and f["accuracy_std"] == pytest.approx(0.02)
    assert f["nll"] == pytest.approx(1.5) and f["ood_auroc"] == pytest.approx(0.8) and f["seeds"] == ["0", "1"]
    assert table[("FlowGMM-cons", 100)]["accuracy"] == pytest.approx(0.90)
    # the FlowGMM and FlowGMM-cons runs of seed 0 share a split: its baselines count once, not twice
    sup = table[("labels-only flow", 100)]
    assert sup["n"] == 2 and sup["accuracy"] == pytest.approx(np.mean([0.7, 0.8]))
    assert table[("logistic regression", 100)]["accuracy"] == pytest.approx(0.75)
    knn = table[("k-nearest neighbours", 100)]
    assert knn["n"] == 2 and knn["accuracy"] == pytest.approx(0.765)
    assert table[("label spreading", 100)]["n"] == 2
    runs = client.search_runs([exp], filter_string="tags.mlflow.runName = 'comparison'")
    assert len(runs) == 1
    arts = {a.path for a in client.list_artifacts(runs[0].info.run_id, "comparison")}
    assert {
        "comparison/table.md",
        "comparison/table.csv",
        "comparison/table.json",
        "comparison/accuracy_vs_nll.png",
    } <= arts


def test_registration_moves_champion_only_on_improvement(store, tmp_path):
    from flowgmm.spec import build_model, save
    from pipeline.results.tracking import RunHandle, log_model

    uri, client, exp = store
    spec = {
        "kind": "vector",
        "shape": [2],
        "num_classes": 2,
        "class_names": ["a", "b"],
        "model": {"num_couplings": 2, "hidden": 8},
        "variance_scale": 1.5,
        "ood_threshold": -9.0,
    }
    torch.manual_seed(0)
    save(build_model(spec), spec, tmp_path / "m")
    versions = []
    for acc in (0.80, 0.70, 0.90):
        run = client.create_run(exp)
        h = RunHandle(uri, exp, run.info.run_id)
        model_uri = log_model(h, tmp_path / "m", spec)
        metrics = {
            "final_val_accuracy_calibrated": acc,
            "final_val_nll_calibrated": 0.3,
            "variance_scale": 1.5,
            "ood_threshold": -9.0,
        }
        versions.append(register(uri, run.info.run_id, model_uri, "flowgmm-test", metrics))
        champion = client.get_model_version_by_alias("flowgmm-test", "champion")
        assert str(champion.version) == {0.80: "1", 0.70: "1", 0.90: "3"}[acc]
    assert [p for _, p in versions] == [True, False, True]
    v = client.get_model_version("flowgmm-test", "3")
    assert float(v.tags["variance_scale"]) == 1.5 and float(v.tags["ood_threshold"]) == -9.0

    import mlflow

    mlflow.set_tracking_uri(uri)
    served = mlflow.pyfunc.load_model("models:/flowgmm-test@champion")
    out = served.predict(__import__("pandas").DataFrame({"x0": [0.0, 1.0], "x1": [0.5, -0.5]}))
    assert list(out.columns) == ["label", "prob_a", "prob_b", "log_px", "is_ood", "class"]
    np.testing.assert_allclose(out[["prob_a", "prob_b"]].sum(axis=1), 1.0, atol=1e-6)
    assert list(out["class"]) == [["a", "b"][i] for i in out["label"]]
