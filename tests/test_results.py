"""Using the results: the comparison table reproduces the runs' logged metrics and never pools runs whose recipes or
data differ; registration moves the champion alias only when a new model on the same data is better on validation,
and the console prints the URI the registry resolves. (Scoring is tested on a trained run in test_job_e2e.py.)"""

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


def _run(client, exp, method, seed, metrics, params=None, tags=None):
    r = client.create_run(exp, run_name=f"{method}-{seed}", tags=tags)
    base = {"train.method": method, "train.seed": seed, "data.seed": seed, "data.n_labeled": 100}
    for k, v in {**base, **(params or {})}.items():
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


def test_comparison_never_pools_recipes_or_data_sets(store, capsys):
    """Two tables (content hashes) in one experiment, FlowGMM-cons at 300 and 3,000 steps on each, two seeds per
    recipe: four separate FlowGMM-cons rows under two data headings, each the mean of its own two runs; the anchors,
    which do not depend on the steps, are one row per table; the comparison run names the runs it covers."""
    uri, client, exp = store
    acc = {("aaaa1111", "300"): 0.70, ("aaaa1111", "3000"): 0.80, ("bbbb2222", "300"): 0.60, ("bbbb2222", "3000"): 0.90}
    ids = []
    for (data, steps), a in acc.items():
        for seed in (0, 1):
            params = {"train.steps": steps, "data.path": f"/d/{data}.csv", "data.source": "table"}
            metrics = {"test_accuracy": a + seed / 100, "baseline_logreg_test_accuracy": 0.5 + seed / 10}
            ids.append(_run(client, exp, "flowgmm_cons", seed, metrics, params, tags={"data_hash": data}))
    table = compare(uri, "flowgmm-test")
    cons = {(r["data"], r["recipe"]["train.steps"]): r for r in table if r["method"] == "FlowGMM-cons"}
    assert len(cons) == 4 and all(r["recipe"] == {"train.steps": k[1]} for k, r in cons.items())
    for key, a in acc.items():
        assert cons[key]["n"] == 2 and cons[key]["accuracy"] == pytest.approx(a + 0.005), key
    logreg = [r for r in table if r["method"] == "logistic regression"]
    assert [(r["data"], r["n"], r["recipe"]) for r in logreg] == [("aaaa1111", 2, {}), ("bbbb2222", 2, {})]
    assert logreg[0]["accuracy"] == pytest.approx(0.55)
    out = capsys.readouterr().out
    assert "data aaaa1111 (aaaa1111.csv) · 4 runs" in out and "data bbbb2222 (bbbb2222.csv) · 4 runs" in out
    assert sum(line.startswith("| FlowGMM-cons · train.steps=") for line in out.splitlines()) == 4
    (run,) = client.search_runs([exp], filter_string="tags.kind = 'comparison'")
    assert set(run.data.tags["compared_runs"].split(",")) == set(ids)
    assert all(f"/runs/{i})" in run.data.tags["mlflow.note.content"] for i in ids)


def _served_spec(tmp_path) -> dict:
    from flowgmm.spec import build_model, save

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
    return spec


def test_champion_moves_only_between_runs_on_the_same_data(store, tmp_path):
    """A better model on another split (data seed, label counts) never takes ``champion`` from the current one;
    a better one on the same split does; each version says why."""
    from pipeline.results.registry import register_model
    from pipeline.results.tracking import RunHandle, log_model

    uri, client, exp = store
    spec = _served_spec(tmp_path)
    split_a, split_b = (
        {"data_hash": "aaaa1111", "data_split": "moons-aaa"},
        {"data_hash": "aaaa1111", "data_split": "moons-bbb"},
    )
    regs = []
    for acc, data in ((0.80, split_a), (0.95, split_b), (0.85, split_a), (0.82, split_a)):
        h = RunHandle(uri, exp, client.create_run(exp).info.run_id)
        metrics = {"final_val_accuracy_calibrated": acc, "final_val_nll_calibrated": 0.3}
        regs.append(
            register_model(uri, h.run_id, log_model(h, tmp_path / "m", spec), "flowgmm-test", metrics, data=data)
        )
    assert [r.promoted for r in regs] == [True, False, True, False]
    assert regs[0].reason == "no champion yet"
    assert regs[1].reason == "champion v1 was trained on other data (data_split moons-aaa vs moons-bbb)"
    assert regs[2].reason.startswith("validation score ") and " > champion v1's " in regs[2].reason
    assert " <= champion v3's " in regs[3].reason
    assert str(client.get_model_version_by_alias("flowgmm-test", "champion").version) == "3"
    assert client.get_model_version("flowgmm-test", "2").tags["champion_decision"] == regs[1].reason


def test_printed_model_uri_is_the_registry_s(store, tmp_path):
    """The results table's model line names the registered version exactly as the registry resolves it, a table's
    name with its content hash (not ``models:/flowgmm-table/1``)."""
    import re
    from types import SimpleNamespace

    from pipeline.config import resolve
    from pipeline.config.parse import experiment_name
    from pipeline.results.registry import register_model
    from pipeline.results.summary import summary_lines
    from pipeline.results.tracking import RunHandle, log_model

    uri, client, exp = store
    cfg = resolve("table", overrides=["data.path=/d/wine.csv"])
    name = experiment_name(cfg, "3f9a2c1b")
    assert name == "flowgmm-table-wine-3f9a2c1b"
    h = RunHandle(uri, exp, client.create_run(exp).info.run_id)
    model_uri = log_model(h, tmp_path / "m", _served_spec(tmp_path))
    reg = register_model(uri, h.run_id, model_uri, name, {"final_val_accuracy_calibrated": 0.9})
    result = {"metrics": {}, "ood": [], "model_uri": reg.uri, "registration": reg, "model_dir": "/m"}
    lines = summary_lines(cfg, result, SimpleNamespace(run_id=h.run_id, tracking_uri=uri), {})
    (line,) = [s for s in lines if s.startswith("  model: ")]
    assert line.startswith(f"  model: models:/{name}/1 (@champion: no champion yet) · weights in /m"), line
    printed_name, printed_version = re.match(r"  model: models:/([^/ ]+)/(\d+) ", line).groups()
    assert client.get_model_version(printed_name, printed_version).run_id == h.run_id


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
    assert list(out.columns) == [
        "label", "prob_a", "prob_b", "log_px", "ood_score", "ood_score_name", "is_ood", "class"
    ]  # fmt: skip
    # a model saved before the served score was a choice serves log p(x), thresholded as before
    assert list(out["ood_score_name"]) == ["log_px"] * 2 and np.array_equal(out["ood_score"], out["log_px"])
    assert list(out["is_ood"]) == list(out["log_px"] < -9.0)
    np.testing.assert_allclose(out[["prob_a", "prob_b"]].sum(axis=1), 1.0, atol=1e-6)
    assert list(out["class"]) == [["a", "b"][i] for i in out["label"]]
