"""The labels-only flow of a fixed-length recipe stops on validation: evaluated twice as often as the main model,
stopped two evaluation points after its best (unsmoothed) score, and evaluated at that best checkpoint; with
``eval.labels_only_patience=0`` it trains the recipe's length. Through the product's ``run_baselines``."""

from __future__ import annotations

import pytest

from pipeline.config import resolve
from pipeline.data.prepare import prepare
from pipeline.data.shards import load_split
from pipeline.results.baselines import BaselineWork, labels_only_config, run_baselines
from pipeline.train.model import model_spec
from pipeline.train.state import CheckpointStore


def _labels_only(tmp_path, name: str, *overrides: str, resume: bool = False):
    cfg = resolve("moons", overrides=["train.num_workers=0", *overrides])
    prepared = prepare(cfg.data, tmp_path / "home")
    val = load_split(prepared, "val")
    storage = str(tmp_path / "ray")
    spec = model_spec(cfg, prepared)
    work = BaselineWork(cfg, prepared, spec, val, run_name=name, storage=storage, anchors=False, resume=resume)
    done = run_baselines(work)
    assert done.error is None and done.flow is not None
    return done.flow["metrics"], CheckpointStore(f"{storage}/{name}"), (prepared, labels_only_config(cfg, len(val[1])))


def test_a_fixed_length_recipe_keeps_its_rule_where_validation_is_too_small():
    cfg = resolve("moons")
    assert cfg.train.patience == 0 and cfg.eval.labels_only_patience == 2
    t = labels_only_config(cfg, val_rows=50).train
    assert (t.eval_every, t.patience, t.min_steps, t.stop_smoothing) == (cfg.train.eval_every // 2, 2, 0, 0.0)
    assert labels_only_config(cfg, val_rows=50).eval.checkpoint == "best"
    for c, rows in ((cfg, 49), (resolve("moons", overrides=["eval.labels_only_patience=0"]), 50)):
        lo = labels_only_config(c, val_rows=rows)
        assert (lo.train.eval_every, lo.train.patience, lo.eval.checkpoint) == (cfg.train.eval_every, 0, "last")
    # a recipe that stops on validation already: the labels-only flow stops by the same rule
    own = resolve("moons", overrides=["train.patience=4", "train.min_steps=200"])
    assert labels_only_config(own, val_rows=500).train == labels_only_config(own, 0).train
    assert labels_only_config(own, val_rows=500).train.patience == 4


@pytest.mark.slow
def test_the_labels_only_flow_stops_two_points_after_its_best(tmp_path):
    steps = resolve("moons").train.steps
    cadence = resolve("moons").train.eval_every // 2
    from pipeline.results.evaluate import evaluate_where_trained

    stopped, store, (prepared, cfg) = _labels_only(tmp_path, "stopped")
    trained = int(stopped["steps_trained"])
    assert trained < steps and trained % cadence == 0, trained  # moons' labels-only flow peaks early (bench/RESULTS.md)
    best = max(store.entries(), key=lambda e: (e["score"], e["step"]))
    assert best["step"] == trained - 2 * cadence, store.entries()  # two points without a better score, then stopped
    again = evaluate_where_trained(store.checkpoint(best["path"]), prepared, cfg, accuracy_only=True).metrics
    assert stopped["test_accuracy_calibrated"] == again["test_accuracy_calibrated"]  # the best one was evaluated
    assert stopped["test_nll"] == pytest.approx(again["test_nll"], rel=1e-6)

    # a job interrupted after the flow had stopped, then resumed: the stopped run is not trained further
    again, store_again, _ = _labels_only(tmp_path, "stopped", resume=True)
    assert again["steps_trained"] == trained and store_again.entries() == store.entries()
    assert again["test_accuracy_calibrated"] == stopped["test_accuracy_calibrated"]

    full, _, _ = _labels_only(tmp_path, "full", "eval.labels_only_patience=0")
    assert full["steps_trained"] == steps
