"""`ray job submit --working-dir .` of the smoke configuration to a `ray start --head` cluster on 127.0.0.1.

The cluster is started with `--block` in its own process group and stopped by signalling exactly the processes it
started (never `ray stop`, which would stop every Ray instance on the host)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ray_bin() -> str:
    return str(Path(sys.executable).parent / "ray")


@pytest.fixture
def head_cluster(tmp_path):
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    env.pop("RAY_ADDRESS", None)
    gcs, dash = _free_port(), _free_port()
    tmp_ray = Path("/tmp") / f"rayjob{os.getpid()}"  # short: Ray's socket paths have a length limit
    proc = subprocess.Popen(
        [
            _ray_bin(),
            "start",
            "--head",
            "--block",
            f"--port={gcs}",
            "--dashboard-host=127.0.0.1",
            f"--dashboard-port={dash}",
            "--num-cpus=2",
            "--object-store-memory=400000000",
            "--disable-usage-stats",
            f"--temp-dir={tmp_ray}",
            "--include-dashboard=true",
            # every agent port free: another Ray in this session (the ray_local fixture) holds the defaults, and a
            # head whose job agent cannot bind answers "No available agent to submit job" forever
            f"--dashboard-agent-listen-port={_free_port()}",
            f"--dashboard-agent-grpc-port={_free_port()}",
            f"--runtime-env-agent-port={_free_port()}",
            f"--metrics-export-port={_free_port()}",
            f"--ray-client-server-port={_free_port()}",
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{dash}"
    deadline = time.time() + 120
    import urllib.request

    while time.time() < deadline:
        try:
            urllib.request.urlopen(f"{url}/api/version", timeout=2)
            break
        except Exception:
            if proc.poll() is not None:
                raise RuntimeError(proc.stdout.read().decode()[-3000:]) from None
            time.sleep(1)
    else:
        raise RuntimeError("ray head did not come up")
    # the dashboard answers before its job agent is ready: wait until a trivial job can be submitted
    from ray.job_submission import JobSubmissionClient

    client = JobSubmissionClient(url)
    while True:
        try:
            client.submit_job(entrypoint="true")
            break
        except Exception as e:  # noqa: BLE001
            if "No available agent" not in str(e) or time.time() > deadline + 60:
                agent_logs = sorted(tmp_ray.glob("session_latest/logs/dashboard_agent*.log"))
                tail = agent_logs[-1].read_text()[-2000:] if agent_logs else "(no agent log)"
                raise RuntimeError(f"{e}\n--- job agent log ---\n{tail}") from e
            time.sleep(2)
    try:
        yield url, env
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


def test_ray_job_submit_smoke(head_cluster, tmp_path):
    url, env = head_cluster
    home = tmp_path / "home"
    runtime_env = {
        "env_vars": {
            "FLOWGMM_HOME": str(home),
            "FLOWGMM_DATA": os.environ.get("FLOWGMM_DATA", ""),
            "RAY_AUTH_MODE": "disabled",
        }
    }
    cmd = [
        _ray_bin(),
        "job",
        "submit",
        "--address",
        url,
        "--working-dir",
        str(REPO),
        "--runtime-env-json",
        json.dumps(runtime_env),
        "--",
        sys.executable,
        "pipeline/run.py",
        "--config",
        "moons",
        "--smoke",
        "--run-name",
        "submitted",
        "eval.baselines=false",
    ]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    log = out.stdout + out.stderr
    assert out.returncode == 0, log[-4000:]
    assert "succeeded" in log.lower(), log[-2000:]
    # the job wrote into FLOWGMM_HOME, not into its temporary working directory
    assert (home / "mlflow.db").exists()
    assert (home / "runs" / "submitted" / "flowgmm_run.json").exists()
