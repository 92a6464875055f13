"""The main job end to end on 2 CPU workers: training, evaluation, calibration, MLflow contents, the logged model,
fault tolerance (a worker killed mid-run) and bad input. Iterations are capped by the smoke configuration."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pipeline.config import resolve
from pipeline.job import main

pytestmark = pytest.mark.slow


def _runs(home: Path, experiment: str):
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{home / 'mlflow.db'}")
    exp = client.get_experiment_by_name(experiment)
    assert exp is not None, f"no MLflow experiment {experiment}"
    return client, client.search_runs([exp.experiment_id])


def _artifacts(client, run_id: str, path: str = "") -> set[str]:
    out = set()
    for f in client.list_artifacts(run_id, path):
        if f.is_dir:
            out |= _artifacts(client, run_id, f.path)
        else:
            out.add(f.path)
    return out


def _expected_steps(cfg, home: Path) -> int:
    from pipeline.data import prepare, steps_per_epoch

    return cfg.train.epochs * steps_per_epoch(prepare(cfg.data, home), cfg.ingest, cfg.train.num_workers)


@pytest.fixture(scope="module")
def digits_run(ray_local, tmp_path_factory):
    """One smoke run of the default experiment, shared by the tests that inspect its results."""
    home = tmp_path_factory.mktemp("e2e") / "home"
    assert main(["--config", "digits", "--smoke", "--home", str(home), "--run-name", "e2e"]) == 0
    client, runs = _runs(home, "flowgmm-digits")
    assert len(runs) == 1
    return home, client, runs[0]


def test_smoke_digits_trains_end_to_end_and_is_recorded(digits_run):
    home, client, run = digits_run
    assert run.info.status == "FINISHED"
    m, params = run.data.metrics, run.data.params
    # learns: 10 classes, chance is 0.1
    assert m["test_accuracy"] > 0.5, m["test_accuracy"]
    assert m["baseline_logreg_test_accuracy"] > 0.5
    assert "baseline_supervised_flow_test_accuracy" in m
    for key in (
        "test_nll",
        "test_nll_calibrated",
        "test_ece",
        "test_ece_calibrated",
        "test_brier",
        "test_bpd",
        "variance_scale",
        "ood_threshold",
        "val_accuracy",
        "train_loss",
        "train_bpd",
    ):
        assert key in m, key
    # calibration is fit on validation: it cannot make validation NLL worse
    assert m["final_val_nll_calibrated"] <= m["final_val_nll"] + 1e-6
    cfg = resolve("digits", smoke=True)
    assert int(m["train_steps"]) == _expected_steps(cfg, home)
    assert params["train.lr"] == str(cfg.train.lr) and params["data.source"] == "digits"
    assert run.data.tags["code_version"]
    # per-epoch metrics
    hist = client.get_metric_history(run.info.run_id, "val_accuracy")
    assert len(hist) == cfg.train.epochs
    arts = _artifacts(client, run.info.run_id)
    for a in (
        "config/resolved.yaml",
        "data/manifest.json",
        "evaluation/calibration_table.json",
        "plots/reliability.png",
        "plots/confusion_matrix.png",
        "plots/class_means.png",
    ):
        assert a in arts, (a, sorted(arts))
    assert any(a.startswith("plots/samples_t") for a in arts)

    # the logged model loads as pyfunc and predicts on raw uint8 images like the evaluation did
    import mlflow

    from pipeline.data import load_split, prepare

    mlflow.set_tracking_uri(f"sqlite:///{home / 'mlflow.db'}")
    model_uri = run.data.tags["model_uri"]
    assert model_uri.startswith("models:/")
    model = mlflow.pyfunc.load_model(model_uri)
    assert model.metadata.signature is not None
    x, y = load_split(prepare(cfg.data, home), "test")
    assert x.dtype == np.uint8
    out = model.predict(x)
    assert list(out.columns[:2]) == ["label", "prob_0"] and {"log_px", "is_ood"} <= set(out.columns)
    acc = float((out["label"].to_numpy() == y).mean())
    assert acc == pytest.approx(m["test_accuracy_calibrated"], abs=1e-9)
    probs = out[[c for c in out.columns if c.startswith("prob_")]].to_numpy()
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-5)
    assert out["is_ood"].mean() == pytest.approx(m["test_ood_flag_rate"], abs=1e-9)


def test_scoring_the_test_split_reproduces_the_evaluation(digits_run, tmp_path, capsys):
    from pipeline.data import prepare
    from pipeline.results.score import main as score_main

    home, client, run = digits_run
    assert run.data.tags["promoted_to_champion"] == "True"
    prepared = prepare(resolve("digits", smoke=True).data, home)
    test_dir = prepared.split_dir("test")
    out = tmp_path / "scored.parquet"
    rc = score_main(
        [
            "--model",
            "models:/flowgmm-digits@champion",
            "--input",
            str(test_dir),
            "--output",
            str(out),
            "--home",
            str(home),
            "--actors",
            "2",
            "--batch-size",
            "100",
        ]
    )
    assert rc == 0
    assert "rows/s" in capsys.readouterr().out
    import pandas as pd

    scored = pd.read_parquet(out)
    m = run.data.metrics
    assert len(scored) == prepared.counts["test"]
    assert scored["id"].is_monotonic_increasing
    acc = float((scored["label"] == scored["y"]).mean())
    assert acc == pytest.approx(m["test_accuracy_calibrated"], abs=1e-9)
    assert scored["is_ood"].mean() == pytest.approx(m["test_ood_flag_rate"], abs=1e-9)


def test_scoring_bad_input_leaves_no_output(digits_run, tmp_path, capsys):
    from pipeline.data import prepare
    from pipeline.results.score import main as score_main

    home, _, _ = digits_run
    shard = sorted(prepare(resolve("digits", smoke=True).data, home).split_dir("test").glob("*.parquet"))[0]
    broken = tmp_path / "broken.parquet"
    broken.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    out = tmp_path / "out.parquet"
    rc = score_main(
        [
            "--model",
            "models:/flowgmm-digits@champion",
            "--input",
            str(broken),
            "--output",
            str(out),
            "--home",
            str(home),
        ]
    )
    err = capsys.readouterr().err.strip()
    assert rc == 2 and str(broken) in err and len(err.splitlines()) == 1
    assert not out.exists() and not list(tmp_path.glob(".out.parquet*"))
    wrong = tmp_path / "wrong.csv"
    wrong.write_text("a,b\n1,2\n")
    rc = score_main(
        ["--model", "models:/flowgmm-digits@champion", "--input", str(wrong), "--output", str(out), "--home", str(home)]
    )
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "wrong.csv" in err and "'x'" in err and not out.exists()


def test_worker_killed_mid_run_resumes_from_checkpoint(ray_local, tmp_path):
    home = tmp_path / "home"
    cfg = resolve("moons", smoke=True)
    from pipeline.data import prepare, steps_per_epoch

    per_epoch = steps_per_epoch(prepare(cfg.data, home), cfg.ingest, cfg.train.num_workers)
    kill_at = per_epoch + per_epoch // 2  # in the middle of epoch 2, after the epoch-1 checkpoint
    rc = main(
        [
            "--config",
            "moons",
            "--smoke",
            "--home",
            str(home),
            "--run-name",
            "ft",
            f"train.inject_failure_at_step={kill_at}",
            "train.max_failures=2",
            "eval.baselines=false",
            "eval.figures=false",
        ]
    )
    assert rc == 0
    marker = home / "ray_results" / "ft" / ".injected_failure"
    assert marker.exists(), "the worker was never killed"
    client, runs = _runs(home, "flowgmm-moons")
    assert len(runs) == 1, "a restart must keep logging into the same MLflow run"
    m = runs[0].data.metrics
    assert runs[0].info.status == "FINISHED"
    assert m["restored_from_step"] > 0, "the restarted worker group did not resume from a checkpoint"
    assert m["restored_from_step"] == per_epoch
    assert int(m["train_steps"]) == cfg.train.epochs * per_epoch


def test_bad_config_and_bad_data_exit_non_zero(tmp_path, capsys):
    assert main(["--home", str(tmp_path), "train.lr=fast"]) == 2
    assert "train.lr" in capsys.readouterr().err
    assert main(["--home", str(tmp_path), "--config", "nonexistent-experiment"]) == 2
    rc = main(["--home", str(tmp_path), "--config", "mnist", "--data-dir", str(tmp_path / "no-data-here")])
    assert rc == 2
    err = capsys.readouterr().err
    assert "error:" in err and "no-data-here" in err
