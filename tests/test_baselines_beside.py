"""What runs beside the main model. The baselines (the labels-only flow and the classical anchors) train beside it
where the cluster has room, in a Ray task of their own, and after it otherwise; either way they give the same
figures, and the console and the run's tags say which path the run took. A model trained in the driver on rows that
fit on its device needs no Ray at all, so Ray starts while it trains."""

from __future__ import annotations

import re

import pytest
from conftest import REPO

from pipeline.config import resolve
from pipeline.results import baselines


def _placement(monkeypatch, free: dict[str, float], *overrides: str):
    import ray

    monkeypatch.setattr(ray, "available_resources", lambda: dict(free))
    return baselines.placement(resolve("moons", smoke=True, overrides=list(overrides)))


def test_room_is_what_the_main_model_leaves(monkeypatch):
    # the main model in the driver on one core of two: the baselines take the other
    assert _placement(monkeypatch, {"CPU": 2.0}, "train.num_workers=0", "train.cpus_per_worker=0.5") == (
        "beside",
        {"num_cpus": 1.0, "num_gpus": 0.0},
    )
    # the main model's threads on both cores: no room, and the reason names what was free and needed
    where, why = _placement(monkeypatch, {"CPU": 2.0}, "train.num_workers=0", "train.cpus_per_worker=2")
    assert where == "after" and "2 CPU free, 4 CPU needed" in why
    # two workers of one CPU each on four CPUs: both runs' workers fit, but no CPU is left for Ray Data's reads
    where, _ = _placement(monkeypatch, {"CPU": 4.0}, "train.num_workers=2", "train.cpus_per_worker=1")
    assert where == "after"
    assert _placement(monkeypatch, {"CPU": 5.0}, "train.num_workers=2", "train.cpus_per_worker=1") == (
        "beside",
        {"num_cpus": 0, "num_gpus": 0},  # the task drives its own Ray Train run, whose workers hold the resources
    )


def test_the_baselines_own_their_tasks_cores_or_after_the_model_its_cores():
    import os

    cfg = resolve("moons", smoke=True, overrides=["train.num_workers=0", "train.cpus_per_worker=2"])
    assert baselines.cores(cfg, "beside", {"num_cpus": 1.0, "num_gpus": 0.0}) == 1
    assert baselines.cores(cfg, "beside", {"num_cpus": 0, "num_gpus": 0}) == 1  # a task that drives Ray Train workers
    assert baselines.cores(cfg, "after", "no room") == min(2, os.cpu_count() or 1)  # the main model's, now free


def test_on_gpus_the_baselines_take_another_gpu(monkeypatch):
    gpu = ["train.use_gpu=true", "train.num_workers=1", "train.cpus_per_worker=1", "train.gpus_per_worker=1"]
    assert _placement(monkeypatch, {"CPU": 8.0, "GPU": 2.0}, *gpu)[0] == "beside"
    where, why = _placement(monkeypatch, {"CPU": 8.0, "GPU": 1.0}, *gpu)
    assert where == "after" and "8 CPU and 1 GPU free, 3 CPU and 2 GPU needed" in why
    # the driver's own GPU is not Ray's to give: a task could be handed the same one
    where, why = _placement(monkeypatch, {"CPU": 8.0, "GPU": 4.0}, "train.use_gpu=true", "train.num_workers=0")
    assert where == "after" and "Ray does not account for" in why


@pytest.mark.slow
def test_beside_and_after_give_the_same_baselines(ray_local, tmp_path, monkeypatch, capsys):
    from mlflow import MlflowClient

    from pipeline.job import main

    args = ["--config", "moons", "--smoke", "train.num_workers=0", "train.cpus_per_worker=0.5"]
    assert main([*args, "--home", str(tmp_path / "a"), "--run-name", "beside"]) == 0
    out = capsys.readouterr().out
    assert "training beside the main model (a Ray task, 1 CPU)" in out
    assert "labels-only flow  step" not in out  # its progress stays in its task: one line says where it is
    # their own time, overlapped (Ray's start too, when this job started it: here the session's Ray was running)
    assert re.search(r"; beside the training: (Ray's start \d+, )?baselines \d+", out), out[-800:]
    assert "Ray not started" not in out  # the session's Ray ran the baselines

    monkeypatch.setattr(baselines, "placement", lambda cfg, free=None: ("after", "no room beside the main model: test"))
    assert main([*args, "--home", str(tmp_path / "b"), "--run-name", "after"]) == 0
    out = capsys.readouterr().out
    assert "labels-only flow and classical baselines: after the main model (no room beside the main model: test)" in out
    assert "labels-only flow  step" in out  # trained in this process: its progress lines as the main model's

    runs = {}
    for name in ("a", "b"):
        client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / name / 'mlflow.db'}")
        exp = client.get_experiment_by_name("flowgmm-moons").experiment_id
        runs.update({r.info.run_name: r for r in client.search_runs([exp])})
    beside, after = runs["beside"].data, runs["after"].data
    assert beside.tags["labels_only_path"] == "trained beside the main model"
    assert after.tags["labels_only_path"] == "trained after the main model"
    assert "time_baselines_beside_s" in beside.metrics and "time_baselines_beside_s" not in after.metrics
    keys = [k for k in beside.metrics if k.startswith(("labels_only_flow_test_", "baseline_")) and "seconds" not in k]
    assert "labels_only_flow_test_accuracy_calibrated" in keys and "baseline_logreg_test_accuracy" in keys
    for k in keys:
        assert after.metrics[k] == pytest.approx(beside.metrics[k], rel=1e-5, abs=1e-6), k
    assert beside.params["baseline_label_spreading_kernel"] == after.params["baseline_label_spreading_kernel"]


@pytest.mark.slow
def test_a_model_trained_in_the_driver_on_rows_that_fit_needs_no_ray(tmp_path):
    import subprocess
    import sys

    code = f"""
import ray
from pathlib import Path
from pipeline.config import resolve
from pipeline.data.prepare import prepare
from pipeline.data.shards import load_split
from pipeline.train.model import model_spec
from pipeline.train.trainer import TrainRun, reads_files
cfg = resolve("moons", smoke=True, overrides=["train.num_workers=0"])
prepared = prepare(cfg.data, Path({str(tmp_path)!r}))
assert reads_files(prepared, cfg)
run = TrainRun(cfg, prepared, model_spec(cfg, prepared), run_name="r", storage_path={str(tmp_path / "ray")!r},
               mlflow_info=None, val=load_split(prepared, "val"))
trained = run.fit()
assert trained.metrics["step"] == cfg.train.steps, trained.metrics
assert not ray.is_initialized()
print("trained without Ray")
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "trained without Ray" in proc.stdout, proc.stderr[-2000:]


@pytest.mark.slow
def test_a_job_with_no_room_beside_its_model_never_starts_ray(tmp_path):
    """The model trains in the driver on every core, so a local Ray would have no room for the baselines: they train
    after it (the labels-only flow in a process of its own beside the evaluation, the anchors in the driver), and Ray
    (whose idle processes slow each step) is never started."""
    import os
    import subprocess
    import sys

    cores = len(os.sched_getaffinity(0))
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    cmd = [sys.executable, "pipeline/run.py", "--config", "moons", "--smoke", "--home", str(tmp_path)]
    cmd += ["train.num_workers=0", f"train.cpus_per_worker={cores}"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    need = f"{cores:g} CPU free, {2 * cores:g} CPU needed for both"
    assert f"after the main model (no room beside the main model: {need})" in proc.stdout
    assert "; Ray not started" in proc.stdout  # ray.is_initialized() at the end
    assert "labels-only flow, calibrated" in proc.stdout and "label spreading" in proc.stdout
    if cores >= 2:  # the flow in a process of its own beside the evaluation and the anchors, then on every core
        assert f"in a process of its own beside the evaluation (1 core, then {cores})" in proc.stdout
        from mlflow import MlflowClient

        client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
        run = client.search_runs([client.get_experiment_by_name("flowgmm-moons").experiment_id])[0]
        path = "trained after the main model, in a process of its own beside its evaluation"
        assert run.data.tags["labels_only_path"] == path and "time_baselines_beside_s" not in run.data.metrics


@pytest.mark.slow
def test_a_run_in_the_driver_takes_the_cores_its_share_allows(tmp_path):
    """A labels-only flow in a process beside the main model's evaluation trains on the cores its share allows
    (read before the model is built and at every step: a raise mid-run is taken up), never more than its recipe's
    threads."""
    from dataclasses import replace

    import torch

    from pipeline.data.prepare import prepare
    from pipeline.data.shards import load_split
    from pipeline.train.loop import use_cores
    from pipeline.train.model import model_spec

    cfg = resolve("moons", smoke=True, overrides=["train.num_workers=0", "train.cpus_per_worker=2"])
    before = torch.get_num_threads()
    seen: list[int] = []

    def share() -> int:  # one core for the first 10 reads, then two (the driver's evaluation done)
        seen.append(torch.get_num_threads())
        return 1 if len(seen) <= 10 else 2

    try:
        for cores, threads in ((1, 1), (8, 2), (0, 1), (2, 2)):
            use_cores(cores, cfg.train)
            assert torch.get_num_threads() == threads
        prepared = prepare(cfg.data, tmp_path / "home")
        work = baselines.BaselineWork(
            cfg, prepared, model_spec(cfg, prepared), load_split(prepared, "val"), run_name="lo",
            storage=str(tmp_path / "ray"), anchors=False, share=share,
        )  # fmt: skip
        done = baselines.run_baselines(work)  # in this process: its loop reads the share
        assert done.error is None and done.flow is not None
        steps = int(done.flow["metrics"]["steps_trained"])
        assert len(seen) == steps + 1  # before the build, then every step
        assert seen[1:11] == [1] * 10 and torch.get_num_threads() == 2  # one thread, then the raised share
        # when its threads changed barely changes the flow: one or two threads round a few reductions differently
        own = baselines.run_baselines(replace(work, share=None, run_name="own")).flow["metrics"]
        assert (
            own == pytest.approx(done.flow["metrics"], rel=1e-6)
            and own["test_accuracy"] == done.flow["metrics"]["test_accuracy"]
        )
    finally:
        torch.set_num_threads(before)


def test_a_baselines_process_is_ended_when_the_job_is_done_without_its_result(tmp_path):
    """A job that fails (or is interrupted) before its baselines' result ends their process, mid-work."""
    import signal

    from pipeline.data.prepare import prepare
    from pipeline.data.shards import load_split
    from pipeline.train.model import model_spec

    cfg = resolve("moons", overrides=["train.num_workers=0"])  # 600 steps and the anchors: seconds of work
    prepared = prepare(cfg.data, tmp_path / "home")
    val = load_split(prepared, "val")
    work = baselines.BaselineWork(cfg, prepared, model_spec(cfg, prepared), val, "x", str(tmp_path / "ray"))
    proc = baselines.BesideProcess(work)
    proc.close()  # still importing: terminated
    assert not proc.proc.is_alive() and proc.proc.exitcode == -signal.SIGTERM


def test_a_failure_in_the_baselines_process_reaches_the_driver(tmp_path):
    import numpy as np

    work = baselines.BaselineWork(
        resolve("moons", smoke=True), None, {}, (np.zeros((1, 2)), np.zeros(1)), run_name="x", storage=str(tmp_path)
    )
    done = baselines.BesideProcess(work).result()  # the anchors on no data: an AttributeError in the child
    assert isinstance(done.error, RuntimeError) and "AttributeError" in str(done.error), done.error


@pytest.mark.slow
def test_ctrl_c_during_training_is_one_line_and_a_failed_run(tmp_path):
    """Ctrl-C while the model trains (in a thread, its baselines in a process beside it): exit 130 with one line,
    the MLflow run marked FAILED, no traceback."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from mlflow import MlflowClient

    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    cmd = [sys.executable, "pipeline/run.py", "--home", str(tmp_path), "--run-name", "stopped", "train.steps=20000"]
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=REPO,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )  # fmt: skip
    seen, deadline = [], time.time() + 300
    while time.time() < deadline:  # the first progress line: the model is training
        line = proc.stdout.readline()
        seen.append(line)
        if "step " in line or not line:
            break
    proc.send_signal(signal.SIGINT)
    out = "".join(seen) + proc.communicate(timeout=120)[0]
    assert proc.returncode == 130, out[-2000:]
    assert "[flowgmm] interrupted: the MLflow run is marked failed" in out and "Traceback" not in out, out[-2000:]
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    run = client.search_runs([client.get_experiment_by_name("flowgmm-digits").experiment_id])[0]
    assert run.info.status == "FAILED"
