"""The main job end to end: the default experiment trained in the driver process (Ray Train local mode), evaluation,
calibration, MLflow contents, the logged model, scoring; fault tolerance with 2 DDP workers (a worker killed
mid-run) and resume in local mode; bad input. Steps are capped by the smoke configuration."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import own_lines

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


def _evaluation_points(cfg) -> int:
    return -(-cfg.train.steps // cfg.train.eval_every)


@pytest.fixture(scope="module")
def digits_run(ray_local, tmp_path_factory):
    """One smoke run of the default experiment, shared by the tests that inspect its results."""
    home = tmp_path_factory.mktemp("e2e") / "home"
    assert main(["--config", "digits", "--smoke", "--home", str(home), "--run-name", "e2e"]) == 0
    client, runs = _runs(home, "flowgmm-digits")
    assert len(runs) == 1
    return home, client, runs[0]


def _assert_served_scale_minimises_validation_nll(home: Path, m: dict) -> None:
    """The served model's variance scale is where the validation NLL of the flow's latents is lowest: lower than
    a scale 20% either side and, when it moved away from 1, lower than the uncalibrated NLL by more than rounding;
    and the logged calibrated NLL is that minimum. (Fails if the fit returns another scale or the served model
    carries a scale other than the fitted one.)"""
    import torch

    from flowgmm.calibration import validation_nll
    from flowgmm.spec import load as load_model
    from pipeline.data import load_split, prepare
    from pipeline.train.validate import encode

    model, spec = load_model(home / "models" / "e2e")
    s = float(spec["variance_scale"])
    assert s == pytest.approx(m["variance_scale"], rel=1e-9)
    x, y = load_split(prepare(resolve("digits", smoke=True).data, home), "val")
    enc = encode(model, x, y, levels=spec.get("levels"), device=torch.device("cpu"))

    def nll(scale: float) -> float:
        return validation_nll(model.mixture, enc.z, torch.as_tensor(y), scale)

    assert nll(s) == pytest.approx(m["final_val_nll_calibrated"], rel=1e-4)
    assert nll(s) <= min(nll(s * 1.2), nll(s / 1.2))
    if abs(s - 1.0) > 0.2:
        # (the logged uncalibrated NLL clips probabilities at 1e-12, so it can sit below the exact one)
        assert nll(s) < nll(1.0) - 1e-4 and nll(1.0) >= m["final_val_nll"] - 1e-4


def _assert_mlflow_contents(home: Path, client, run) -> None:
    """Issue 22: measurements as metrics, settings and counts as params; the prepared data as the run's dataset
    input; the served model's measurements on the logged model, with a real validation row as its input example;
    descriptions; the registered URI the registry resolves; nothing under the working directory."""
    import mlflow

    from pipeline.config.methods import method_name
    from pipeline.data import load_split, prepare

    m, params, tags = run.data.metrics, run.data.params, run.data.tags
    for key in ("baseline_logreg_C", "baseline_knn_n_neighbors", "test_rows", "val_rows", "labeled_rows"):
        assert key in params and key not in m, key
    assert "registered_version" not in m and "promoted_to_champion" not in m
    prepared = prepare(resolve("digits", smoke=True).data, home)
    assert params["test_rows"] == str(prepared.counts["test"])
    (inp,) = run.inputs.dataset_inputs
    assert (inp.dataset.name, inp.dataset.digest) == (prepared.manifest["name"], tags["data_hash"])
    assert [(t.key, t.value) for t in inp.tags] == [("mlflow.data.context", "training")]
    (out,) = run.outputs.model_outputs
    logged = client.get_logged_model(out.model_id)
    linked = {x.key: x.value for x in logged.metrics}
    assert linked["test_accuracy"] == m["test_accuracy"] and "baseline_logreg_test_accuracy" not in linked
    method = method_name(resolve("digits", smoke=True).train.method)
    assert logged.tags["mlflow.note.content"].startswith(f"{method} on digits (")
    assert tags["mlflow.note.content"].startswith("```\n[flowgmm] results on the test split (digits")
    exp = client.get_experiment(run.info.experiment_id)
    assert exp.tags["mlflow.note.content"].startswith("FlowGMM runs on digits")
    for e in client.search_experiments():  # `Default` too: nothing under the working directory
        assert e.artifact_location.startswith((home / "mlartifacts").resolve().as_uri()), e
    assert tags["registered_uri"] == "models:/flowgmm-digits/1" and tags["champion_decision"] == "no champion yet"
    assert client.get_model_version("flowgmm-digits", "1").run_id == run.info.run_id
    assert client.get_registered_model("flowgmm-digits").description
    mlflow.set_tracking_uri(f"sqlite:///{home / 'mlflow.db'}")
    model = mlflow.models.Model.load(tags["registered_uri"])
    example = model.load_input_example(mlflow.artifacts.download_artifacts(tags["registered_uri"]))
    x_val, _ = load_split(prepared, "val")
    np.testing.assert_array_equal(np.asarray(example), x_val[:1])


def test_smoke_digits_trains_end_to_end_and_is_recorded(digits_run):
    home, client, run = digits_run
    assert run.info.status == "FINISHED"
    m, params = run.data.metrics, run.data.params
    # learns: 10 classes, chance is 0.1; 48 smoke steps of the shipped recipe reach 0.3-0.4 (the recipe's accuracy
    # is tested in test_method_regression.py and measured in bench/RESULTS.md)
    assert m["test_accuracy"] > 0.2, m["test_accuracy"]
    assert m["baseline_logreg_test_accuracy"] > 0.5
    assert "labels_only_flow_test_accuracy" in m
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
    _assert_served_scale_minimises_validation_nll(home, m)
    cfg = resolve("digits", smoke=True)
    assert int(m["train_steps"]) == cfg.train.steps
    assert params["train.lr"] == str(cfg.train.lr) and params["data.source"] == "digits"
    assert run.data.tags["code_version"]
    # validation every eval_every steps and at the last
    hist = client.get_metric_history(run.info.run_id, "val_accuracy")
    assert [h.step for h in hist] == [min((i + 1) * cfg.train.eval_every, cfg.train.steps) for i in range(len(hist))]
    assert len(hist) == _evaluation_points(cfg)
    assert "compile_warmup_s" in m and m["compile_frames"] == 0  # eager: no compiled frames
    arts = _artifacts(client, run.info.run_id)
    for a in (
        "config/resolved.yaml",
        "data/manifest.json",
        "evaluation/calibration_table.json",
        "plots/reliability.png",
        "plots/confusion_matrix.png",
        "plots/class_means.png",
        "plots/interpolations.png",
        "plots/boundary_distance_hist.png",
    ):
        assert a in arts, (a, sorted(arts))
    assert "evaluation/ood_table.json" not in arts  # no OOD sets in the smoke recipe: no empty file
    _assert_mlflow_contents(home, client, run)
    # the paper's low-density separation, for the model and the labels-only flow beside it (same unlabeled rows)
    assert m["unlabeled_boundary_distance_median"] > 0
    assert m["labels_only_flow_unlabeled_boundary_distance_median"] > 0
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
    assert rc == 2 and str(broken) in err and len(own_lines(err)) == 1
    assert not out.exists() and not list(tmp_path.glob(".out.parquet*"))
    wrong = tmp_path / "wrong.csv"
    wrong.write_text("a,b\n1,2\n")
    rc = score_main(
        ["--model", "models:/flowgmm-digits@champion", "--input", str(wrong), "--output", str(out), "--home", str(home)]
    )
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "wrong.csv" in err and "'x'" in err and not out.exists()


def test_worker_killed_mid_run_resumes_from_checkpoint(ray_local, tmp_path):
    """2 DDP workers; rank 1 dies hard between two checkpoints; Ray Train restarts the group from the last one."""
    home = tmp_path / "home"
    cfg = resolve("moons", smoke=True, overrides=["train.num_workers=2"])
    every = cfg.train.eval_every
    kill_at = every + every // 2  # after the first checkpoint, before the second
    rc = main(
        [
            "--config",
            "moons",
            "--smoke",
            "--home",
            str(home),
            "--run-name",
            "ft",
            "train.num_workers=2",
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
    assert m["restored_from_step"] == every, "the restarted worker group did not resume from the last checkpoint"
    assert int(m["train_steps"]) == cfg.train.steps


def _weights(checkpoint) -> dict:
    import torch

    with checkpoint.as_directory() as d:
        return torch.load(Path(d) / "weights.pt", map_location="cpu", weights_only=True)


def _assert_same_weights(a: dict, b: dict) -> None:
    import torch

    assert list(a) == list(b)
    differ = [k for k in a if not torch.equal(a[k], b[k])]
    assert not differ, f"{len(differ)} of {len(a)} tensors differ, e.g. {differ[:3]}"


def test_two_workers_killed_between_checkpoints_end_with_the_uninterrupted_weights(ray_local, tmp_path):
    """2 DDP workers on digits (images: every step draws dequantization noise from each rank's own generators).
    Rank 1 dies between two checkpoints; Ray Train restarts the group from the first one, each rank restores its
    own generator state, and the run ends with the weights of an uninterrupted run, bit for bit (CPU, one thread
    per worker, and a sum of two gradients is the same in either order), and the same final metrics."""
    from pipeline.data import load_split, prepare
    from pipeline.train.model import model_spec
    from pipeline.train.trainer import TrainRun

    over = ["train.num_workers=2", "train.max_failures=1", "train.steps=32", "train.eval_every=8"]
    cfg = resolve("digits", smoke=True, overrides=over)
    home = tmp_path / "home"
    prepared = prepare(cfg.data, home)
    spec, val = model_spec(cfg, prepared), load_split(prepared, "val")
    assert spec["kind"] == "image" and spec.get("levels"), "the run must draw dequantization noise"
    kill_at = 2 * 8 + 3  # after the checkpoint at step 16, before the one at 24

    def fit(name: str, c):
        run = TrainRun(
            c, prepared, spec, run_name=name, storage_path=str(home / "ray_results"), mlflow_info=None, val=val
        )
        return run.fit()

    whole = fit("whole", cfg)
    cut = fit("cut", resolve("digits", smoke=True, overrides=[*over, f"train.inject_failure_at_step={kill_at}"]))
    assert (home / "ray_results" / "cut" / ".injected_failure").exists(), "the worker was never killed"
    assert cut.metrics["restored_from_step"] == 16 and whole.metrics["restored_from_step"] == -1
    assert cut.metrics["step"] == whole.metrics["step"] == cfg.train.steps
    _assert_same_weights(_weights(whole.latest), _weights(cut.latest))
    same = [k for k in whole.metrics if k.startswith(("train_", "val_")) or k in ("score", "lr", "epoch")]
    assert "val_nll" in same and "train_loss" in same
    assert {k: cut.metrics[k] for k in same} == {k: whole.metrics[k] for k in same}


def test_local_mode_resume_equals_uninterrupted(ray_local, tmp_path):
    """Training in the driver keeps its own checkpoints: a driver killed (SIGKILL) between two checkpoints is
    continued with --resume from the latest one, into the same MLflow run, and ends with the same weights as an
    uninterrupted run, bit for bit (batches are a function of the step; the generators that draw the digits'
    dequantization noise and the optimizer state are restored)."""
    import os
    import subprocess
    import sys

    from pipeline.train.state import CheckpointStore

    home = tmp_path / "home"
    cfg = resolve("digits", smoke=True)
    every = cfg.train.eval_every
    common = ["--config", "digits", "--smoke", "--home", str(home)]
    extra = ["eval.baselines=false", "eval.figures=false"]
    assert main([*common, "--run-name", "whole", *extra]) == 0
    repo = Path(__file__).resolve().parent.parent
    killed = subprocess.run(
        [
            sys.executable,
            str(repo / "pipeline" / "run.py"),
            *common,
            "--run-name",
            "cut",
            *extra,
            f"train.inject_failure_at_step={2 * every + every // 2}",
        ],
        capture_output=True,
        text=True,
        cwd=repo,
        env=dict(os.environ),
        timeout=900,
    )
    assert killed.returncode == -9, killed.stdout[-2000:] + killed.stderr[-2000:]
    assert main(["--home", str(home), "--resume", "cut"]) == 0
    client, runs = _runs(home, "flowgmm-digits")
    by_name = {r.info.run_name: r for r in runs}
    assert set(by_name) == {"whole", "cut"}, "the resumed run keeps its MLflow run"
    cut, whole = by_name["cut"].data.metrics, by_name["whole"].data.metrics
    assert cut["restored_from_step"] == 2 * every and cut["train_steps"] == whole["train_steps"] == cfg.train.steps
    stores = [CheckpointStore(str(home / "ray_results" / n)) for n in ("whole", "cut")]
    _assert_same_weights(*(_weights(s.checkpoint(s.latest())) for s in stores))
    for k in ("final_val_nll", "test_nll", "test_accuracy", "variance_scale", "train_loss"):
        assert cut[k] == whole[k], k


def test_non_finite_loss_with_two_workers_is_one_line_and_exit_1_not_a_retry(ray_local, tmp_path, capsys):
    """A learning rate that blows the flow up, 2 DDP workers, max_failures=2: every rank stops at the same check
    (the first bad step all-reduced), the driver prints one line naming the step and what to try, exits 1, and the
    MLflow run is FAILED. A retried failure would end in Ray's TrainingFailedError instead of this return code."""
    home = tmp_path / "home"
    over = ["train.num_workers=2", "train.max_failures=2", "train.lr=1e6", "eval.baselines=false"]
    rc = main(["--config", "moons", "--smoke", "--home", str(home), "--run-name", "nan", *over])
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert rc == 1 and len(lines) == 1, err[-3000:]
    assert lines[0].startswith("error: run nan: non-finite training loss at step ")
    assert "(checked at step " in lines[0] and "train.lr" in lines[0]
    assert "NonFiniteLossError" not in err and "TrainingFailedError" not in err and "resumed from step" not in err
    # the driver's own output has no traceback (Ray's actors' forwarded logs, "(Name pid=N) ...", are the test's)
    assert not [ln for ln in err.splitlines() if "Traceback" in ln and "pid=" not in ln]
    _, runs = _runs(home, "flowgmm-moons")
    assert [r.info.status for r in runs] == ["FAILED"]


def test_resume_with_conflicting_options_or_a_corrupt_record_exits_2_in_one_line(tmp_path, capsys):
    """--resume NAME continues the recorded configuration: options that would change it are named with the
    recorded and the given values (exit 2, before any work); options that repeat it are accepted; a run record that
    is not JSON, or lacks its keys, is one line naming the file."""
    import argparse
    import json

    from pipeline.job import parse_args, resume_conflicts

    home = tmp_path / "home"
    record = home / "runs" / "r1" / "flowgmm_run.json"
    record.parent.mkdir(parents=True)
    cfg = resolve("moons", smoke=True)
    info = {"config": json.loads(json.dumps(cfg.to_dict(), default=str)), "run_id": "x", "storage_path": "/s"}
    record.write_text(json.dumps(info))
    base = ["--home", str(home), "--resume", "r1"]
    cases = {
        ("train.lr=0.5",): ["train.lr=0.5", f"train.lr: {cfg.train.lr!r} -> 0.5"],
        ("--config", "digits"): ["--config digits", "data.source: 'moons' -> 'digits'"],
        ("--smoke",): ["--smoke", "data.source: 'moons' -> 'digits'"],
        ("--data-dir", "/elsewhere"): ["--data-dir /elsewhere", "-> '/elsewhere'"],
        ("--run-name", "r2"): ["--run-name r2 (recorded: r1)"],
        ("--storage-path", "/t"): ["--storage-path /t (recorded: /s)"],
    }
    for extra, names in cases.items():
        assert main([*base, *extra]) == 2, extra
        err = capsys.readouterr().err.strip()
        assert len(own_lines(err)) == 1 and own_lines(err)[0].startswith("error: --resume r1: "), err
        assert str(record) in err, err
        for name in names:
            assert name in err, (extra, err)
    same = parse_args([*base, "--config", "moons", "--smoke", f"train.lr={cfg.train.lr}", "--run-name", "r1"])
    assert resume_conflicts(same, info) == ""
    assert resume_conflicts(argparse.Namespace(**{**vars(same), "config": None, "smoke": False}), info) == ""
    for text in ('{"config": {', "[]", json.dumps({**info, "config": {"train": {"lr": "fast"}}})):
        record.write_text(text)
        assert main(base) == 2
        err = capsys.readouterr().err.strip()
        assert len(own_lines(err)) == 1 and f"run record {record} is unreadable" in err, err


def test_bad_config_and_bad_data_exit_non_zero(tmp_path, capsys):
    assert main(["--home", str(tmp_path), "train.lr=fast"]) == 2
    assert "train.lr" in capsys.readouterr().err
    assert main(["--home", str(tmp_path), "--config", "nonexistent-experiment"]) == 2
    rc = main(["--home", str(tmp_path), "--config", "mnist", "--data-dir", str(tmp_path / "no-data-here")])
    assert rc == 2
    err = capsys.readouterr().err
    assert "error:" in err and "no-data-here" in err


def test_compiled_model_runs_in_training_and_tracks_the_eager_loss(ray_local, tmp_path):
    """train.compile=full acts on the model training runs: compiled frames execute inside the training loop
    (the compile_frames metric) and, with the cheap `eager` backend on CPU, the losses track the eager run's
    within 1e-4 relative (the same math, traced by Dynamo)."""
    home = tmp_path / "home"
    common = ["--config", "moons", "--smoke", "--home", str(home)]
    extra = ["eval.baselines=false", "eval.figures=false"]
    assert main([*common, "--run-name", "eager", *extra]) == 0
    compiled = ["train.compile=full", "train.compile_backend=eager"]
    assert main([*common, "--run-name", "compiled", *extra, *compiled]) == 0
    client, runs = _runs(home, "flowgmm-moons")
    by_name = {r.info.run_name: r for r in runs}
    eager, compiled = by_name["eager"], by_name["compiled"]
    assert eager.data.metrics["compile_frames"] == 0 and compiled.data.metrics["compile_frames"] > 0
    assert "compile_warmup_s" in compiled.data.metrics
    h_e = [m.value for m in client.get_metric_history(eager.info.run_id, "train_loss")]
    h_c = [m.value for m in client.get_metric_history(compiled.info.run_id, "train_loss")]
    assert len(h_e) == len(h_c) > 0 and h_c == pytest.approx(h_e, rel=1e-4)
