"""The baselines are reused from the home's cache when the same split, recipe, seed and training code ran before: the
second job trains one model and fits no anchor, says so, and records the same baseline figures and where they came
from."""

from __future__ import annotations

import pytest

from pipeline.config import resolve
from pipeline.results import baseline_cache


def test_the_key_follows_what_the_baseline_depends_on():
    cfg = resolve("moons", smoke=True)
    man, h = {"name": "moons-abc"}, "1234abcd"
    key = baseline_cache.cache_key(cfg.to_dict(), man, h)
    same = resolve("moons", smoke=True, overrides=["eval.figures=false", "eval.ood_fpr=0.05", "experiment=x"])
    assert baseline_cache.cache_key(same.to_dict(), man, h) == key  # no figure of the baseline depends on these
    for other in (["train.seed=1"], ["train.lr=1e-3"], ["eval.ece_bins=10"]):
        assert baseline_cache.cache_key(resolve("moons", smoke=True, overrides=other).to_dict(), man, h) != key
    assert baseline_cache.cache_key(cfg.to_dict(), {"name": "moons-def"}, h) != key
    assert baseline_cache.cache_key(cfg.to_dict(), man, "ffff0000") != key


@pytest.mark.slow
def test_a_rerun_reuses_the_baseline(ray_local, tmp_path, capsys):
    from mlflow import MlflowClient

    from pipeline.job import main

    home = tmp_path / "home"
    args = ["--config", "moons", "--smoke", "--home", str(home)]
    assert main([*args, "--run-name", "first"]) == 0
    assert "labels-only flow and classical baselines: training beside the main model" in capsys.readouterr().out
    assert main([*args, "--run-name", "second"]) == 0
    out = capsys.readouterr().out
    assert "labels-only flow and classical baselines: reused from run first" in out  # the anchors ride along
    assert "labels-only flow  step" not in out and "training beside the main model" not in out  # nothing to run
    assert "labels-only flow, calibrated (reused from first" in out  # the results table says it too
    client = MlflowClient(tracking_uri=f"sqlite:///{home / 'mlflow.db'}")
    runs = {
        r.info.run_name: r for r in client.search_runs([client.get_experiment_by_name("flowgmm-moons").experiment_id])
    }
    first, second = runs["first"], runs["second"]
    assert first.data.tags["labels_only_path"] == "trained beside the main model"
    assert second.data.tags["labels_only_path"] == "reused"
    assert second.data.tags["labels_only_from_run"] == first.info.run_id
    for key in ("labels_only_flow_test_accuracy_calibrated", "baseline_label_spreading_test_accuracy"):
        assert second.data.metrics[key] == pytest.approx(first.data.metrics[key], abs=1e-12)
    assert second.data.params["baseline_label_spreading_kernel"] == first.data.params["baseline_label_spreading_kernel"]
