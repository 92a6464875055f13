"""Hyperparameter sweeps (tune/): the search space and its mapping onto the pipeline configuration, the trials
table and best-trial selection, the release of a stopped trial's placement group, and a smoke sweep end to end:
4 trials on the 2-D moons set with 2 CPUs, a seeded Optuna searcher that evaluates the default configuration and a
deliberately bad point (lr=1.0) first, ASHA stopping the bad point, MLflow parent/child runs, the best
configuration through ``pipeline/run.py``, no Ray resources left reserved, and a console a person can read (one
line per trial event, no Ray or Tune output)."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from pipeline.config import ConfigError, dump_yaml, load_yaml, resolve
from tune.console import SweepConsole, reason
from tune.report import COMPLETED, ERROR, STOPPED, best_row, comparison_png, to_csv
from tune.space import SearchSpace, default_point, param_space, parse_point, same_point, trial_config

BAD_LR = 1.0
REPO = Path(__file__).resolve().parent.parent
CONSOLE_LINES = 40  # the smoke sweep's whole console (stdout + stderr), trials table and summary included


# ------------------------------------------------------------------------------------------------ no cluster
def test_consistency_weight_zero_is_plain_flowgmm():
    base = resolve("moons", smoke=True)
    p = {"lr": 2e-3, "consistency_weight": 0.0, "means_scale": 3.0, "variance": 0.5, "learn_variance": True}
    cfg = trial_config(base, p)
    assert cfg.train.method == "flowgmm" and cfg.train.lr == 2e-3
    assert (cfg.model.means_scale, cfg.model.variance, cfg.model.learn_variance) == (3.0, 0.5, True)
    cons = trial_config(base, {**p, "consistency_weight": 0.3})
    assert cons.train.method == "flowgmm_cons" and cons.train.consistency_weight == 0.3
    # everything else is the base configuration
    assert cons.data == base.data and cons.ingest == base.ingest and cons.train.steps == base.train.steps


@pytest.mark.parametrize("name", ["moons", "digits", "mnist"])
def test_default_point_is_the_base_configuration(name):
    base = resolve(name, smoke=True)
    assert trial_config(base, default_point(base)) == base


def test_best_config_yaml_round_trips_through_the_pipeline_loader(tmp_path):
    base = resolve("moons", smoke=True, overrides=["train.lr=1e-2"])
    cfg = trial_config(
        base, {"lr": 0.0123, "consistency_weight": 1.0, "means_scale": 1.5, "variance": 0.4, "learn_variance": True}
    )
    path = tmp_path / "best.yaml"
    path.write_text(dump_yaml(cfg))
    assert load_yaml(path) == cfg
    assert resolve(str(path)) == cfg


def test_points_and_space():
    base = resolve("moons", smoke=True, overrides=["train.lr=1e-2"])
    d = default_point(base)
    bad = parse_point(f"lr={BAD_LR}", d)
    assert bad == {**d, "lr": BAD_LR}
    assert parse_point("learn_variance=true, consistency_weight=3", d)["learn_variance"] is True
    for text in ("lr", "beta=1", "lr=fast", "learn_variance=maybe"):
        with pytest.raises(ConfigError):
            parse_point(text, d)
    space = SearchSpace().for_config(base)
    assert space.lr == pytest.approx((1e-3, 1e-1)) and 0.0 in space.consistency_weights
    wide = space.covering([d, bad])
    assert wide.lr == pytest.approx((1e-3, BAD_LR)) and wide.means_scale == space.means_scale
    assert same_point(d, dict(d)) and not same_point(d, bad)


def test_search_space_converts_for_optuna():
    from optuna.distributions import CategoricalDistribution, FloatDistribution
    from ray.tune.search.optuna import OptunaSearch

    space = SearchSpace().for_config(resolve("moons", smoke=True))
    dist = OptunaSearch.convert_search_space(param_space(space))
    assert isinstance(dist["lr"], FloatDistribution) and dist["lr"].log
    assert isinstance(dist["consistency_weight"], CategoricalDistribution)
    assert 0.0 in dist["consistency_weight"].choices
    assert set(dist["learn_variance"].choices) == {False, True}
    assert dist["means_scale"].log and dist["variance"].log


def test_sweep_cli_rejects_bad_settings(tmp_path, capsys):
    from tune.driver import main

    home = str(tmp_path)
    assert main(["--config", "moons", "--home", home, "--num-samples", "0"]) == 2
    assert main(["--config", "moons", "--home", home, "--point", "gamma=2"]) == 2
    assert main(["--config", "moons", "--home", home, "--lr-range", "1e-2", "1e-3"]) == 2
    assert main(["--config", "moons", "--home", home, "--consistency-weights=-1,0"]) == 2
    assert main(["--config", "moons", "--home", home, "train.lr=fast"]) == 2
    with pytest.raises(SystemExit):
        main(["--config", "moons", "--home", home, "--metric", "test_accuracy"])
    assert "error:" in capsys.readouterr().err
    assert not (tmp_path / "mlflow.db").exists(), "nothing may start before the settings are valid"


def _row(tid, status, lr, w, acc=None, nll=None, last_acc=0.5):
    return {
        "trial_id": tid,
        "status": status,
        "lr": lr,
        "consistency_weight": w,
        "means_scale": 1.0,
        "variance": 1.0,
        "learn_variance": False,
        "final_val_accuracy_calibrated": acc,
        "final_val_nll_calibrated": nll,
        "last_val_accuracy": last_acc,
        "curve": [{"step": 16.0, "val_accuracy": last_acc, "val_nll": 1.0, "score": last_acc}],
    }


def test_best_trial_is_chosen_on_calibrated_validation_among_completed():
    rows = [
        _row("a", COMPLETED, 1e-2, 0.0, acc=0.9, nll=0.30),
        _row("b", COMPLETED, 3e-3, 1.0, acc=0.9, nll=0.25),
        _row("c", STOPPED, 1.0, 0.0, last_acc=0.99),
        _row("d", ERROR, 1e-1, 3.0),
        _row("e", COMPLETED, 2e-2, 0.3, acc=0.8, nll=0.10),
    ]
    assert best_row(rows, "val_accuracy")["trial_id"] == "b"  # tie on accuracy -> lower NLL
    assert best_row(rows, "val_nll")["trial_id"] == "e"
    assert best_row([rows[2], rows[3]], "val_accuracy") is None  # nothing completed, nothing to pick
    png = comparison_png(rows, "val_accuracy", "b", "a")
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    csv_text = to_csv(rows)
    assert csv_text.splitlines()[0].startswith("trial_id,status,lr") and "curve" not in csv_text


# ------------------------------------------------------------------------------------------------ console
POINT = {"lr": 0.003, "consistency_weight": 0.0, "means_scale": 2.0, "variance": 1.0, "learn_variance": False}


def _trial(tid, config=POINT, error_file=None, path=None):
    return SimpleNamespace(trial_id=tid, config=dict(config), error_file=error_file, path=path)


def _console_lines(events, total_steps=48, num_samples=3) -> list[str]:
    buf = io.StringIO()
    c = SweepConsole(
        total_steps, num_samples, labels=[(POINT, "default")], same_point=same_point, metric="val_accuracy", out=buf
    )
    for name, trial, *result in events:
        getattr(c, f"on_trial_{name}")(0, [], trial, *result)
    return buf.getvalue().splitlines()


def _report(step, acc, done=False):
    return {"step": step, "val_accuracy": acc, "val_nll": 1.5, "done": done}


def test_quiet_console_drops_the_raylet_worker_pool_notice_and_keeps_other_raylet_lines(capsys, monkeypatch):
    # CI saw "(raylet) WARNING: 8 PYTHON worker processes have been started on node ..." in colour on the sweep console
    from ray._private import worker

    from pipeline.core.raycluster import WORKER_POOL_NOTICE, quiet

    monkeypatch.setattr(worker, "print_to_stdstream", worker.print_to_stdstream)  # undone after the test
    monkeypatch.delenv("RAY_COLOR_PREFIX", raising=False)
    quiet()
    notice = f"WARNING: 8 {WORKER_POOL_NOTICE}: 1a2b with address: 192.0.2.2, which is 4x the maximum (2)."
    worker.print_to_stdstream({"lines": [notice], "pid": "raylet", "is_err": False}, ignore_prefix=False)
    other = "WARNING: the object store is 91% full (test_quiet_console)"
    worker.print_to_stdstream({"lines": [notice, other], "pid": "raylet", "is_err": False}, ignore_prefix=False)
    out = capsys.readouterr().out
    assert WORKER_POOL_NOTICE not in out and other in out
    assert "\x1b[" not in out


def test_console_prints_one_line_per_trial_event():
    a, b = _trial("aaaa"), _trial("bbbb", {**POINT, "lr": 0.1, "consistency_weight": 3.0})
    lines = _console_lines(
        [
            ("start", a),
            *[("result", a, _report(s, 0.5 + s / 100)) for s in (16, 32, 48)],
            ("complete", a),
            ("start", b),
            ("result", b, _report(16, 0.4, done=True)),  # the report ASHA stopped the trial at
            ("complete", b),
        ]
    )
    assert lines[0].startswith("[sweep] trial aaaa (1/3) started: lr=0.003 cons=0 r=2 var=1 learn_var=False")
    assert lines[0].endswith("[default]")
    assert [ln.split(":")[0] for ln in lines[1:4]] == [f"[sweep] trial aaaa step {s}/48" for s in (16, 32, 48)]
    assert "val acc 0.660, val nll 1.500" in lines[1]
    assert lines[4].startswith("[sweep] trial aaaa completed: 48/48 steps, val acc 0.980")
    assert lines[5].startswith("[sweep] trial bbbb (2/3) started: lr=0.1 cons=3") and "[" not in lines[5][-10:]
    assert lines[6].startswith("[sweep] trial bbbb stopped early by ASHA at step 16/48: val acc 0.400")
    assert len(lines) == 7  # the stopping report is told once, as the stop


def test_console_reports_a_long_trial_at_four_points():
    a = _trial("aaaa")
    lines = _console_lines([("start", a), *[("result", a, _report(s, 0.5)) for s in range(10, 1001, 10)]], 1000)
    steps = [int(ln.split("step ")[1].split("/")[0]) for ln in lines[1:]]
    assert steps == [250, 500, 750, 1000]


def test_console_error_line_names_the_innermost_cause(tmp_path):
    text = (
        "Failure # 1 (occurred at 2026-12-06_14-02-55)\n"
        "\x1b[36mray::ImplicitFunc.train()\x1b[39m (pid=11011, ip=192.0.2.2, repr=run_trial)\n"
        '  File "/work/main/tune/trial.py", line 43, in run_trial\n'
        "ray.train.WorkerGroupError: Training failed due to worker errors:\n"
        "[Rank 0 Error Snippet]:\n"
        '  File "/work/main/pipeline/train/loop.py", line 116, in __init__\n'
        "    self.stopper = ValidationStop(self.t.patience, self.t.min_steps)\n"
        "                                  ^^^^^^^^^^^^^^^\n"
        "AttributeError: 'TrainConfig' object has no attribute 'patience'\n"
    )
    err = tmp_path / "error.txt"
    err.write_text(text)
    a = _trial("aaaa", error_file=str(err), path=str(tmp_path / "trial_aaaa"))
    lines = _console_lines([("start", a), ("result", a, _report(16, 0.5)), ("error", a)])
    assert lines[-1] == (
        "[sweep] trial aaaa error at step 16/48: AttributeError: 'TrainConfig' object has no attribute 'patience' "
        f"(traceback: {tmp_path / 'trial_aaaa' / 'error.txt'})"
    )
    assert reason("ray.exceptions.RaySystemError: System error: x\ntraceback: ...\nImportError: cannot import y") == (
        "ImportError: cannot import y"
    )
    assert reason("") == "unknown error" and len(reason("ValueError: " + "x" * 1000)) <= 240


# ------------------------------------------------------------------------------------------------ Ray
@pytest.fixture(scope="module")
def ray_tune():
    """A local Ray (2 CPUs) with its dashboard on 127.0.0.1: Tune over Train V2 needs the State API it serves.
    Reuses the session's Ray when an earlier test module started one."""
    import ray

    if ray.is_initialized():
        yield ray
        return
    from pipeline.core.raycluster import pinned_api_address

    ray.init(
        address="local",
        num_cpus=2,
        object_store_memory=512 * 1024**2,
        log_to_driver=True,
        configure_logging=True,
        logging_level="WARNING",
        include_dashboard=True,
        dashboard_host="127.0.0.1",
        **pinned_api_address(),
    )
    try:
        from ray.data import DataContext

        DataContext.get_current().enable_progress_bars = False
    except Exception:  # noqa: BLE001
        pass
    yield ray
    ray.shutdown()


def _wait_all_cpus_free(ray, timeout=60.0) -> tuple[float, float]:
    total = ray.cluster_resources().get("CPU", 0.0)
    deadline = time.time() + timeout
    while True:
        free = ray.available_resources().get("CPU", 0.0)
        if free == total or time.time() > deadline:
            return free, total
        time.sleep(1)


@pytest.mark.slow
def test_orphaned_train_placement_group_is_removed(ray_tune):
    """The stopped-trial leak in miniature: a Train worker group's placement group whose actors are all dead and
    that nobody removes is released by the sweep's callback."""
    import ray
    from ray.util.placement_group import placement_group
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    from tune.resources import ReleaseTrialResources, live_placement_groups

    baseline = live_placement_groups()

    @ray.remote(num_cpus=0.5)
    class RayTrainWorker:  # the class name Ray Train V2 gives its workers
        def ping(self):
            return 1

    pg = placement_group([{"CPU": 0.5}, {"CPU": 0.5}])
    ray.get(pg.ready(), timeout=60)
    workers = [
        RayTrainWorker.options(scheduling_strategy=PlacementGroupSchedulingStrategy(pg, i)).remote() for i in range(2)
    ]
    assert ray.get([w.ping.remote() for w in workers]) == [1, 1]
    for w in workers:
        ray.kill(w)  # the trial (and its controller) died: nothing removes the group
    time.sleep(2)
    assert pg.id.hex() in live_placement_groups()
    cb = ReleaseTrialResources(ray.get_runtime_context().gcs_address, baseline, timeout_s=3)
    cb.release()
    assert cb.removed == [pg.id.hex()]
    assert pg.id.hex() not in live_placement_groups()
    free, total = _wait_all_cpus_free(ray)
    assert free == total


SWEEP_ARGS = [
    "--config",
    "moons",
    "--smoke",
    "--num-samples",
    "4",
    "--max-concurrent",
    "1",
    "--metric",
    "val_accuracy",
    "--search",
    "optuna",
    "--seed",
    "0",
    "--point",
    f"lr={BAD_LR}",
    "--run-name",
    "smoke-sweep",
    # the test's base configuration: a learning rate that learns in the smoke steps, no extras
    "train.lr=1e-2",
    "eval.baselines=false",
    "eval.figures=false",
]


@pytest.fixture(scope="module")
def sweep(ray_tune, tmp_path_factory):
    """The sweep as a user runs it, ``python tune/sweep.py``, attached to this module's Ray (so that what it leaves
    reserved can be measured here); its whole console (stdout + stderr) is kept."""
    from tune.resources import live_placement_groups

    home = tmp_path_factory.mktemp("sweep_home")
    before = live_placement_groups()
    address = ray_tune.get_runtime_context().gcs_address
    cmd = [sys.executable, str(REPO / "tune" / "sweep.py"), *SWEEP_ARGS, "--home", str(home), "--address", address]
    t0 = time.time()
    proc = subprocess.run(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=1400, env=dict(os.environ)
    )
    rc, console = proc.returncode, proc.stdout
    wall = time.time() - t0
    # resources, measured before anything else runs on the cluster
    free, total = _wait_all_cpus_free(ray_tune)
    left = live_placement_groups() - before
    summary = json.loads((home / "sweeps" / "smoke-sweep" / "summary.json").read_text()) if rc == 0 else None
    print(
        f"\n[test_tune] smoke sweep: rc={rc} wall {wall:.1f} s; CPUs free {free}/{total}; "
        f"summary metrics {summary and summary['metrics']}; console ({len(console.splitlines())} lines):\n{console}"
    )
    return {
        "rc": rc,
        "home": home,
        "wall": wall,
        "free": free,
        "total": total,
        "left": left,
        "summary": summary,
        "console": console,
    }


def _client(home: Path):
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{home / 'mlflow.db'}")
    exp = client.get_experiment_by_name("flowgmm-moons")
    assert exp is not None
    return client, exp


def _sweep_runs(home: Path):
    client, exp = _client(home)
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    parents = [r for r in runs if r.data.tags.get("sweep_role") == "parent"]
    assert len(parents) == 1
    parent = parents[0]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    return client, parent, children


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_smoke_sweep_completes_and_releases_resources(sweep):
    assert sweep["rc"] == 0
    assert sweep["free"] == sweep["total"], f"CPUs still reserved after the sweep: {sweep['free']}/{sweep['total']}"
    assert not sweep["left"], f"placement groups left reserved: {sweep['left']}"
    m = sweep["summary"]["metrics"]
    assert m["n_trials"] == 4 and m["leaked_placement_groups"] == 0
    assert m["n_completed"] >= 1


@pytest.mark.slow
def test_sweep_console_is_short_and_tells_every_trial(sweep):
    """One line per trial event from the driver, then the trials table: no Ray/Tune tables, worker output, progress
    bars or configuration dump."""
    assert sweep["rc"] == 0, sweep["console"]
    console = sweep["console"]
    lines = console.splitlines()
    assert len(lines) <= CONSOLE_LINES, f"{len(lines)} console lines:\n{console}"
    for noise in ("(pid=", "Trial status:", "╭", "\x1b[", "Traceback", "Dataset"):
        assert noise not in console, noise
    rows = json.loads((sweep["home"] / "sweeps" / "smoke-sweep" / "trials.json").read_text())
    outcome = {COMPLETED: "completed:", STOPPED: "stopped early by ASHA at step", ERROR: "error at step"}
    for r in rows:
        tid = r["trial_id"]
        told = [ln for ln in lines if ln.startswith(f"[sweep] trial {tid} ")]
        assert any(" started: " in ln for ln in told), (tid, told)
        assert sum(outcome[r["status"]] in ln for ln in told) == 1, (tid, r["status"], told)
        assert not any(outcome[s] in ln for s in outcome if s != r["status"] for ln in told), (tid, told)
    base = sweep["home"] / "sweeps" / "smoke-sweep" / "base.yaml"
    assert f"base configuration: {base}" in lines[0]
    assert load_yaml(base).train.lr == pytest.approx(1e-2) and "train:" not in console


@pytest.mark.slow
def test_bad_point_is_stopped_early_by_asha(sweep):
    assert sweep["rc"] == 0
    home = sweep["home"]
    rows = json.loads((home / "sweeps" / "smoke-sweep" / "trials.json").read_text())
    steps = resolve("moons", smoke=True).train.steps
    bad = [r for r in rows if r["lr"] == pytest.approx(BAD_LR)]
    assert len(bad) == 1
    assert bad[0]["status"] == STOPPED and bad[0]["steps_run"] < steps, bad[0]
    default = [r for r in rows if r["is_default"]]
    assert len(default) == 1 and default[0]["lr"] == pytest.approx(1e-2)
    assert default[0]["status"] == COMPLETED  # evaluated first: ASHA has nothing to compare it with
    assert sweep["summary"]["metrics"]["n_stopped_early"] >= 1


@pytest.mark.slow
def test_mlflow_parent_and_children(sweep):
    assert sweep["rc"] == 0
    client, parent, children = _sweep_runs(sweep["home"])
    assert parent.info.status == "FINISHED"
    assert len(children) == 4
    assert not [c for c in children if c.info.status == "RUNNING"]
    rows = {
        r["trial_id"]: r for r in json.loads((sweep["home"] / "sweeps" / "smoke-sweep" / "trials.json").read_text())
    }
    expected = {COMPLETED: "FINISHED", STOPPED: "KILLED", ERROR: "FAILED"}
    for c in children:
        row = rows[c.data.tags["trial_id"]]
        assert c.info.status == expected[row["status"]], (row["status"], c.info.status)
        assert c.data.tags["trial_status"] == row["status"]
        assert float(c.data.params["train.lr"]) == pytest.approx(row["lr"])
        assert c.data.params["train.method"] == ("flowgmm_cons" if row["consistency_weight"] > 0 else "flowgmm")
        hist = client.get_metric_history(c.info.run_id, "val_accuracy")
        assert len(hist) >= 1  # validation metrics from rank 0
        if row["status"] == COMPLETED:
            for k in (
                "test_accuracy_calibrated",
                "test_nll_calibrated",
                "test_ece_calibrated",
                "final_val_nll_calibrated",
                "variance_scale",
            ):
                assert k in c.data.metrics, k
            t = resolve("moons", smoke=True).train
            assert len(hist) == -(-t.steps // t.eval_every)
    arts = {
        f.path
        for d in ("sweep", "plots", "best_config", "config")
        for f in client.list_artifacts(parent.info.run_id, d)
    }
    assert {
        "sweep/trials.csv",
        "sweep/trials.json",
        "plots/sweep_comparison.png",
        "best_config/best.yaml",
        "config/base.yaml",
    } <= arts
    for k in ("n_trials", "n_stopped_early", "best_test_accuracy_calibrated", "best_final_val_accuracy_calibrated"):
        assert k in parent.data.metrics, k
    best_id = parent.data.tags["best_trial_id"]
    assert rows[best_id]["status"] == COMPLETED and rows[best_id]["is_best"]
    import csv

    text = (sweep["home"] / "sweeps" / "smoke-sweep" / "trials.csv").read_text()
    assert len(list(csv.DictReader(io.StringIO(text)))) == 4


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_best_config_runs_through_the_pipeline(sweep):
    assert sweep["rc"] == 0
    from pipeline.job import main as run_main

    home = sweep["home"]
    best_yaml = home / "sweeps" / "smoke-sweep" / "best.yaml"
    client, parent, children = _sweep_runs(home)
    best_child = next(c for c in children if c.data.tags["trial_id"] == parent.data.tags["best_trial_id"])
    # the artifact on the parent is the same file
    local = client.download_artifacts(parent.info.run_id, "best_config/best.yaml", str(home / "dl"))
    assert Path(local).read_text() == best_yaml.read_text()
    assert run_main(["--config", str(best_yaml), "--home", str(home), "--run-name", "from-best"]) == 0
    exp = client.get_experiment_by_name("flowgmm-moons")
    run = client.search_runs([exp.experiment_id], filter_string="tags.`mlflow.runName` = 'from-best'")[0]
    assert run.info.status == "FINISHED"
    for key in (
        "train.lr",
        "train.method",
        "train.consistency_weight",
        "model.means_scale",
        "model.variance",
        "model.learn_variance",
        "train.steps",
        "data.n_labeled",
    ):
        assert run.data.params[key] == best_child.data.params[key], key
    assert "test_accuracy_calibrated" in run.data.metrics
