"""MLflow for the pipeline: where the store lives, one experiment per data set, one run per training job.

The default store is SQLite inside the home (``sqlite:///<home>/mlflow.db``) with artifacts under
``<home>/mlartifacts`` (absolute, so Ray workers whose working directory is a temporary session folder never
write relative paths). ``--tracking-uri http://host:5000`` points the same code at a tracking server.

The driver creates the run and hands its id to rank 0 of the training workers, which logs per-epoch metrics into
it; a restarted worker group, or ``run.py --resume NAME``, keeps logging into the same run.
"""

from __future__ import annotations

import json
import os
import platform
import socket
import sys
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag

from pipeline.core.version import code_version


def default_tracking_uri(home: Path) -> str:
    return f"sqlite:///{(home / 'mlflow.db').resolve()}"


@dataclass
class RunHandle:
    tracking_uri: str
    experiment_id: str
    run_id: str

    @property
    def client(self) -> MlflowClient:
        return MlflowClient(tracking_uri=self.tracking_uri)

    def worker_info(self) -> dict[str, str]:
        return {"tracking_uri": self.tracking_uri, "run_id": self.run_id}

    # --- logging -----------------------------------------------------------------------------------------------
    def log_params(self, params: dict[str, Any]) -> None:
        existing = self.client.get_run(self.run_id).data.params
        items = [Param(k, _param(v)) for k, v in params.items() if k not in existing]
        for i in range(0, len(items), 100):
            self.client.log_batch(self.run_id, params=items[i : i + 100])

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        import math
        import time

        now = int(time.time() * 1000)
        ms = [
            Metric(k, float(v), now, step or 0)
            for k, v in metrics.items()
            if isinstance(v, (int, float)) and math.isfinite(float(v))
        ]
        for i in range(0, len(ms), 500):
            self.client.log_batch(self.run_id, metrics=ms[i : i + 500])

    def set_tags(self, tags: dict[str, str]) -> None:
        self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_bytes(self, data: bytes, artifact_path: str) -> None:
        with tempfile.TemporaryDirectory() as d:
            p = Path(d) / Path(artifact_path).name
            p.write_bytes(data)
            parent = str(Path(artifact_path).parent)
            self.client.log_artifact(self.run_id, str(p), None if parent == "." else parent)

    def log_text(self, text: str, artifact_path: str) -> None:
        self.log_bytes(text.encode(), artifact_path)

    def log_json(self, obj: Any, artifact_path: str) -> None:
        self.log_text(json.dumps(obj, indent=2, default=str), artifact_path)

    def end(self, status: str = "FINISHED") -> None:
        self.client.set_terminated(self.run_id, status=status)


def start_run(
    home: Path,
    experiment: str,
    run_name: str,
    *,
    tracking_uri: str | None = None,
    resume_run_id: str | None = None,
    tags: dict[str, str] | None = None,
) -> RunHandle:
    uri = tracking_uri or default_tracking_uri(home)
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        artifact_location = None
        if uri.startswith("sqlite:") or uri.startswith("file:"):
            artifact_location = (home / "mlartifacts" / experiment).resolve().as_uri()
        exp_id = client.create_experiment(experiment, artifact_location=artifact_location)
    else:
        exp_id = exp.experiment_id
    if resume_run_id:
        client.update_run(resume_run_id, status="RUNNING")
        return RunHandle(uri, exp_id, resume_run_id)
    all_tags = {"mlflow.runName": run_name, **environment_tags(), **(tags or {})}
    run = client.create_run(exp_id, run_name=run_name, tags=all_tags)
    return RunHandle(uri, exp_id, run.info.run_id)


def environment_tags() -> dict[str, str]:
    import numpy
    import ray
    import torch

    return {
        "code_version": code_version(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "host": socket.gethostname(),
        "torch": torch.__version__,
        "ray": ray.__version__,
        "mlflow": mlflow.__version__,
        "numpy": numpy.__version__,
        "cuda": str(torch.version.cuda),
        "cpu_count": str(os.cpu_count()),
    }


def log_model(handle: RunHandle, model_dir: Path, spec: dict[str, Any]) -> str:
    """Log the served model as an MLflow pyfunc "model from code": the weights as a state dict plus a JSON spec,
    the ``flowgmm`` package as code, and a signature. Loading it never unpickles arbitrary objects."""
    from pipeline.results import serving

    repo = Path(__file__).resolve().parents[2]
    mlflow.set_tracking_uri(handle.tracking_uri)
    with mlflow.start_run(run_id=handle.run_id), warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # MLflow's advice on type hints; the signature is given
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=str(Path(serving.__file__).resolve()),
            artifacts={"model_dir": str(model_dir)},
            code_paths=[str(repo / "flowgmm")],
            signature=serving.signature(spec),
            input_example=serving.input_example(spec),
            pip_requirements=pinned_requirements(),
        )
    # leave the run RUNNING: the caller ends it with the final status
    handle.client.update_run(handle.run_id, status="RUNNING")
    return info.model_uri


def pinned_requirements() -> list[str]:
    """What the served model imports, pinned to the versions this run used (a local label such as ``+cpu`` is
    dropped: the same release installs from the package index on a GPU host)."""
    from importlib.metadata import version

    return [f"{name}=={version(name).split('+')[0]}" for name in ("torch", "numpy", "pandas")]


def _param(v: Any) -> str:
    s = json.dumps(v) if isinstance(v, (list, tuple, dict)) else str(v)
    return s[:6000]
