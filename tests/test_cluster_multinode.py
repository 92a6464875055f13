"""The pipeline on a real multi-node Ray cluster on this machine (`cluster/local_cluster.py`: a head and one worker
node, each its own `ray start` with 1 CPU and a 300 MB object store, token auth, dashboard on 127.0.0.1).

- Placement: the same run with the two train workers on two nodes (``train.placement_strategy=SPREAD``) and on one
  node (``PACK``) gives the same metrics, within a relative tolerance of 1e-5 (fixed seed, seeded file order,
  order-preserving materialization; DDP's all-reduce over gloo of two ranks does not depend on placement, so in
  practice they agree to the bit). Ray Data's read tasks ran on both nodes (State API, task node ids;
  ``ingest.spread_reads``, else Ray's worker-lease reuse piles these millisecond reads onto one node).
- A worker node killed mid-training (SIGKILL of all its processes; Ray's health checks shortened so that the node is
  declared dead in ~5 s): the run restarts from the latest committed checkpoint on the remaining node, completes,
  redoes at most one checkpoint interval of steps and keeps one MLflow run.
- The driver killed after the first checkpoint: `run.py --resume NAME` continues from the latest checkpoint into the
  same MLflow run; here tracking goes to `cluster/mlflow_server.sh` (HTTP, SQLite backend, proxied artifacts).

Every driver is a `python pipeline/run.py` subprocess with the cluster's client environment. The clusters are
stopped by signalling exactly the processes they started (never `ray stop`). Timings and steps lost are printed
(run with -s) and recorded as junit properties. About 6-10 minutes on 2 cores.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from cluster.local_cluster import FAST_HEALTH_CHECKS, LocalCluster, Node, free_port  # noqa: E402

pytestmark = pytest.mark.slow

STEPS, EVERY = 56, 7  # training steps; validation + checkpoint interval
REL_TOL = 1e-5
# tiny Parquet files are packed into one 128 MiB read task by default; one task per file, as with real-size files,
# lets the reads spread over the nodes
DRIVER_ENV = {"RAY_DATA_PARQUET_BIN_PACKING_BYTES": "1", "RAY_DATA_DISABLE_PROGRESS_BARS": "1", "PYTHONUNBUFFERED": "1"}
RESULTS: dict[str, float] = {}


def _common(home: Path, strategy: str = "SPREAD") -> list[str]:
    return [
        "--config",
        "moons",
        "--home",
        str(home),
        "eval.baselines=false",
        "eval.figures=false",
        "train.num_workers=2",
        f"train.steps={STEPS}",
        f"train.eval_every={EVERY}",
        "train.log_every=1",
        "train.max_failures=3",
        f"train.placement_strategy={strategy}",
        "ingest.spread_reads=true",
    ]


def _record(record_property, key: str, value: float) -> None:
    RESULTS[key] = value
    record_property(key, value)
    print(f"[cluster-test] {key} = {value}", flush=True)


# --- fixtures --------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def cluster():
    env = {**FAST_HEALTH_CHECKS, "RAY_DATA_DISABLE_PROGRESS_BARS": "1"}
    t0 = time.time()
    with LocalCluster(workers=1, cpus_per_node=1, object_store_mb=300, node_env=env) as c:
        print(
            f"[cluster-test] cluster up in {time.time() - t0:.1f} s: {c.address}, dashboard {c.dashboard_url}",
            flush=True,
        )
        yield c


class Driver:
    """`python pipeline/run.py ARGS` against the cluster, in its own process group, output to a log file."""

    def __init__(self, cluster: LocalCluster, args: list[str], log: Path):
        self.log = log
        self.fh = open(log, "w")
        self.t0 = time.time()
        self.proc = subprocess.Popen(
            [sys.executable, str(REPO / "pipeline" / "run.py"), *args],
            env={**cluster.client_env(), **DRIVER_ENV},
            cwd=REPO,
            stdout=self.fh,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def wait(self, timeout: float = 900) -> tuple[int, float]:
        try:
            rc = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail(f"driver timed out after {timeout} s:\n{self.output()[-4000:]}")
        self.fh.close()
        return rc, time.time() - self.t0

    def kill(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait()
        self.fh.close()

    def output(self) -> str:
        if not self.fh.closed:
            self.fh.flush()
        return self.log.read_text(errors="replace")


def _run(cluster, args, log: Path, timeout: float = 900) -> tuple[str, float]:
    d = Driver(cluster, args, log)
    rc, wall = d.wait(timeout)
    out = d.output()
    assert rc == 0, out[-5000:]
    return out, wall


def _committed_step(storage: Path) -> int:
    """The step of the latest checkpoint Ray Train has committed for a run (its checkpoint manager snapshot)."""
    snap = storage / "checkpoint_manager_snapshot.json"
    try:
        st = json.loads(snap.read_text())
        return int(st["latest_checkpoint_result"]["metrics"]["step"])
    except (OSError, ValueError, KeyError, TypeError):
        return -1


def _wait_committed(storage: Path, min_step: int, driver: Driver, timeout: float = 600) -> int:
    deadline = time.time() + timeout
    while time.time() < deadline:
        s = _committed_step(storage)
        if s >= min_step and list(storage.glob("checkpoint_*")):
            return s
        if driver.proc.poll() is not None:
            pytest.fail(f"driver exited before checkpoint step {min_step}:\n{driver.output()[-4000:]}")
        time.sleep(0.1)
    driver.kill()
    pytest.fail(f"no committed checkpoint at step >= {min_step} after {timeout} s")


def _mlflow_runs(tracking_uri: str, experiment: str = "flowgmm-moons"):
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    assert exp is not None
    return client, client.search_runs([exp.experiment_id])


def _new(items: list[dict], before: set[str], key: str) -> list[dict]:
    return [x for x in items if x[key] not in before]


# --- tests -----------------------------------------------------------------------------------------------------------
def test_local_cluster_cli_start_status_stop(tmp_path):
    """`start` writes the state file (process groups, addresses), the dashboard is on 127.0.0.1 only and refuses
    requests without the token, a TLS + token client runs a task on the worker node, `stop` leaves nothing."""
    script = [sys.executable, str(REPO / "cluster" / "local_cluster.py"), "--state", str(tmp_path / "state.json")]
    out = subprocess.run([*script, "start", "--workers", "1", "--tls"], capture_output=True, text=True, timeout=400)
    assert out.returncode == 0, out.stdout + out.stderr
    st = json.loads((tmp_path / "state.json").read_text())
    nodes = [Node(**n) for n in st["nodes"]]
    try:
        assert [n.name for n in nodes] == ["head", "worker1"] and all(n.start > 0 for n in nodes)
        assert st["auth_mode"] == "token" and oct(os.stat(st["token_path"]).st_mode & 0o777) == "0o600"
        status = subprocess.run([*script, "status"], capture_output=True, text=True, timeout=60).stdout
        assert status.count(" alive ") == 2, status
        # dashboard: loopback only, and the token is required
        host_ip, dash_port = st["address"].rsplit(":", 1)[0], st["dashboard_port"]
        if host_ip != "127.0.0.1":
            with pytest.raises(OSError):
                socket.create_connection((host_ip, dash_port), timeout=3).close()
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(f"{st['dashboard_url']}/api/v0/nodes", timeout=10)
        assert e.value.code in (401, 403)
        env_lines = subprocess.run([*script, "env"], capture_output=True, text=True, timeout=60).stdout
        env = dict(line[len("export ") :].split("=", 1) for line in env_lines.splitlines())
        assert env["RAY_AUTH_MODE"] == "token" and env["RAY_USE_TLS"] == "1"
        code = (
            "import ray; ray.init()\n"
            "f = ray.remote(resources={'flowgmm_node_worker1': 0.01})(lambda: ray.get_runtime_context()"
            ".get_node_id())\n"
            "print('NODE', ray.get(f.remote()), len([n for n in ray.nodes() if n['Alive']]))\n"
        )
        run = subprocess.run(
            [sys.executable, "-c", code], env={**os.environ, **env}, capture_output=True, text=True, timeout=180
        )
        assert run.returncode == 0 and "NODE" in run.stdout, run.stdout + run.stderr[-3000:]
        assert run.stdout.split()[-1] == "2"
    finally:
        stop = subprocess.run([*script, "stop"], capture_output=True, text=True, timeout=120)
    assert stop.returncode == 0, stop.stderr
    assert not (tmp_path / "state.json").exists()
    # `stop` returns once its processes are gone; a process the kernel is still tearing down gets a bounded while more
    deadline = time.time() + 30
    while (left := [pid for n in nodes for pid in n.group()]) and time.time() < deadline:
        time.sleep(0.2)
    assert not left, f"processes left after stop: {left}"


def test_two_nodes_match_one_node_and_reads_span_both(cluster, tmp_path, record_property):
    home = tmp_path / "home"
    nodes = {n.name: n.node_id for n in cluster.nodes}
    assert len(set(nodes.values())) == 2 and all(nodes.values())
    placements, reads, walls = {}, {}, {}
    for name, strategy in (("one-node", "PACK"), ("two-nodes", "SPREAD")):
        actors0 = {a["actor_id"] for a in cluster.state_api("actors")}
        tasks0 = {t["task_id"] for t in cluster.state_api("tasks")}
        _, walls[name] = _run(cluster, [*_common(home, strategy), "--run-name", name], tmp_path / f"{name}.log")
        workers = [
            a for a in _new(cluster.state_api("actors"), actors0, "actor_id") if a["class_name"] == "RayTrainWorker"
        ]
        placements[name] = sorted(a["node_id"] for a in workers)
        reads[name] = {
            t["node_id"]
            for t in _new(cluster.state_api("tasks"), tasks0, "task_id")
            if t["name"].startswith("ReadFiles") and t.get("node_id")
        }
    assert len(placements["one-node"]) == 2 and len(set(placements["one-node"])) == 1, placements
    assert set(placements["two-nodes"]) == set(nodes.values()), placements
    assert reads["two-nodes"] == set(nodes.values()), f"read tasks ran on {reads['two-nodes']} only"

    client, runs = _mlflow_runs(f"sqlite:///{home / 'mlflow.db'}")
    by_name = {r.info.run_name: r for r in runs}
    a, b = by_name["one-node"], by_name["two-nodes"]
    assert a.info.status == b.info.status == "FINISHED"
    assert a.data.metrics["train_steps"] == b.data.metrics["train_steps"] == STEPS
    keys = [
        "test_accuracy",
        "test_nll",
        "test_bpd",
        "test_ece",
        "test_nll_calibrated",
        "variance_scale",
        "val_accuracy",
        "val_nll",
        "train_loss",
        "train_bpd",
    ]
    for k in keys:
        assert b.data.metrics[k] == pytest.approx(a.data.metrics[k], rel=REL_TOL, abs=1e-9), k
    hist_a = [m.value for m in client.get_metric_history(a.info.run_id, "train_loss")]
    hist_b = [m.value for m in client.get_metric_history(b.info.run_id, "train_loss")]
    assert len(hist_a) == STEPS // EVERY and hist_b == pytest.approx(hist_a, rel=REL_TOL)
    worst = max(abs(b.data.metrics[k] - a.data.metrics[k]) / max(abs(a.data.metrics[k]), 1e-12) for k in keys)
    _record(record_property, "placement_max_rel_diff", worst)
    _record(record_property, "one_node_wall_s", round(walls["one-node"], 1))
    _record(record_property, "two_nodes_wall_s", round(walls["two-nodes"], 1))
    _record(record_property, "two_nodes_train_s", round(b.data.metrics["train_seconds"], 1))
    _record(record_property, "two_nodes_test_accuracy", b.data.metrics["test_accuracy"])


@pytest.fixture
def mlflow_server(tmp_path):
    port = free_port()
    env = {
        **os.environ,
        "MLFLOW_HOME": str(tmp_path / "mlflow-server"),
        "MLFLOW_PORT": str(port),
        "PYTHON": sys.executable,
        "MLFLOW_WORKERS": "1",
    }
    proc = subprocess.Popen(
        ["bash", str(REPO / "cluster" / "mlflow_server.sh"), "run"],
        env=env,
        stdout=open(tmp_path / "mlflow-server.log", "w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 180
    try:
        while True:
            try:
                urllib.request.urlopen(f"{url}/health", timeout=2)
                break
            except OSError:
                if proc.poll() is not None or time.time() > deadline:
                    raise RuntimeError((tmp_path / "mlflow-server.log").read_text()[-3000:]) from None
                time.sleep(1)
        yield url, tmp_path / "mlflow-server"
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=30)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def test_driver_killed_then_resume_continues_from_checkpoint(cluster, tmp_path, mlflow_server, record_property):
    url, server_home = mlflow_server
    home = tmp_path / "home"
    name = "driver-killed"
    args = [*_common(home), "--run-name", name, "--tracking-uri", url]
    d = Driver(cluster, args, tmp_path / "first.log")
    committed = _wait_committed(home / "ray_results" / name, EVERY, d)
    d.kill()  # SIGKILL the driver's process group (only the driver itself)
    killed_at = time.time() - d.t0
    run_id = json.loads((home / "runs" / name / "flowgmm_run.json").read_text())["run_id"]
    client, runs = _mlflow_runs(url)
    assert [r.info.run_id for r in runs] == [run_id] and runs[0].info.status == "RUNNING"

    out, wall = _run(cluster, ["--home", str(home), "--resume", name], tmp_path / "resume.log")
    assert "resumed from step" in out
    client, runs = _mlflow_runs(url)
    assert [r.info.run_id for r in runs] == [run_id], "a resumed run keeps its MLflow run"
    run = runs[0]
    m = run.data.metrics
    assert run.info.status == "FINISHED"
    assert m["restored_from_step"] >= committed > 0
    assert m["train_steps"] == STEPS
    # artifacts went through the server's proxy into its artifact store
    assert run.info.artifact_uri.startswith("mlflow-artifacts:")
    assert any((server_home / "artifacts").rglob("calibration_table.json"))
    _record(record_property, "driver_kill_committed_step", committed)
    _record(record_property, "driver_kill_restored_from_step", m["restored_from_step"])
    _record(record_property, "driver_killed_after_s", round(killed_at, 1))
    _record(record_property, "resume_wall_s", round(wall, 1))


PROGRESS = re.compile(r"\(RayTrainWorker pid=(\d+)[^)]*\).*\[flowgmm\].*?step\s+(\d+)/\d+")


def test_worker_node_killed_mid_training_resumes(cluster, tmp_path, record_property):
    """Runs last in this module: it kills the cluster's worker node."""
    home = tmp_path / "home"
    name = "node-killed"
    interval = EVERY  # a checkpoint at every evaluation
    nodes = {n.name: n.node_id for n in cluster.nodes}
    actors0 = {a["actor_id"] for a in cluster.state_api("actors")}
    d = Driver(cluster, [*_common(home), "--run-name", name], tmp_path / "node-killed.log")
    committed = _wait_committed(home / "ray_results" / name, 2 * EVERY, d)
    first_workers = {
        a["actor_id"]: a["node_id"]
        for a in _new(cluster.state_api("actors"), actors0, "actor_id")
        if a["class_name"] == "RayTrainWorker" and a["state"] == "ALIVE"
    }
    assert set(first_workers.values()) == set(nodes.values()), "the first worker group spans both nodes"
    t_kill = time.time()
    killed = cluster.kill_node("worker1")
    assert killed
    rc, wall = d.wait(900)
    out = d.output()
    assert rc == 0, out[-5000:]

    # the node is gone from the cluster; the restarted workers ran on the head
    alive = {x["node_id"]: x["alive"] for x in cluster.gcs_nodes()}
    assert alive[nodes["worker1"]] is False and alive[nodes["head"]] is True
    later = [
        a
        for a in _new(cluster.state_api("actors"), actors0, "actor_id")
        if a["class_name"] == "RayTrainWorker" and a["actor_id"] not in first_workers
    ]
    assert later and {a["node_id"] for a in later} == {nodes["head"]}

    # one MLflow run, finished, resumed from the checkpoint committed before the kill
    client, runs = _mlflow_runs(f"sqlite:///{home / 'mlflow.db'}")
    assert len(runs) == 1 and runs[0].info.run_name == name
    m = runs[0].data.metrics
    assert runs[0].info.status == "FINISHED"
    assert m["train_steps"] == STEPS
    restored = int(m["restored_from_step"])
    assert restored >= committed > 0 and restored % interval == 0

    # steps lost: the last step the first worker group printed, minus the step it restarted from
    restart_at = out.index("resumed from step")
    first_steps = [int(s) for _pid, s in PROGRESS.findall(out[:restart_at])]
    assert first_steps, "no progress lines from the first worker group"
    steps_lost = max(first_steps) - restored
    # at most two intervals: the checkpoint being persisted when the node died is lost with it, and so is one
    # already on storage that the controller had not yet registered (CI saw 24 and 28 printed, restored from 14)
    assert 0 <= steps_lost <= 2 * interval, (max(first_steps), restored)
    _record(record_property, "node_kill_committed_step_at_kill", committed)
    _record(record_property, "node_kill_restored_from_step", restored)
    _record(record_property, "node_kill_last_step_before_failure", max(first_steps))
    _record(record_property, "node_kill_steps_lost", steps_lost)
    _record(record_property, "node_kill_checkpoint_interval_steps", interval)
    _record(record_property, "node_kill_killed_after_s", round(t_kill - d.t0, 1))
    _record(record_property, "node_kill_wall_s", round(wall, 1))
    _record(record_property, "node_kill_train_s", round(m["train_seconds"], 1))
    if "two_nodes_train_s" in RESULTS:
        _record(
            record_property, "failure_overhead_train_s", round(m["train_seconds"] - RESULTS["two_nodes_train_s"], 1)
        )
        _record(record_property, "failure_overhead_wall_s", round(wall - RESULTS["two_nodes_wall_s"], 1))
