"""MLflow for the pipeline: where the store lives, one experiment per data set, one run per training job.

The default store is SQLite inside the home (``sqlite:///<home>/mlflow.db``) with artifacts under
``<home>/mlartifacts`` (absolute, so Ray workers whose working directory is a temporary session folder never
write relative paths). ``--tracking-uri http://host:5000`` points the same code at a tracking server.

The driver creates the run and hands its id to rank 0 of the training workers, which logs per-epoch metrics into
it; a restarted worker group, or ``run.py --resume NAME``, keeps logging into the same run.

Only measurements are metrics: the numbers a run produces that are settings or counts (an anchor's chosen ``C`` or
``n_neighbors``, the rows of each split) become params (:func:`is_setting`). The prepared data is the run's dataset
input (name = the prepared data set, digest = :func:`data_hash` of its input files, the rows per split in its
profile), and the served model's measurements are attached to the logged model.
"""

from __future__ import annotations

import hashlib
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
from mlflow.data.meta_dataset import MetaDataset
from mlflow.entities import DatasetInput, InputTag, Metric, Param, RunTag
from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT, MLFLOW_RUN_NOTE

from pipeline.core.version import code_version

DATA_HASH_CHARS = 8
SETTING_SUFFIXES = ("_C", "_n_neighbors", "_alpha", "_rows")  # chosen hyperparameters of the anchors, row counts
MAX_TAG_CHARS = 8000  # MLflow's limit on a tag value
MODEL_METRIC_PREFIXES = ("test_", "final_val_", "ood_", "variance_scale", "unlabeled_boundary_", "sample_")


def default_tracking_uri(home: Path) -> str:
    return f"sqlite:///{(home / 'mlflow.db').resolve()}"


def ensure_store(tracking_uri: str, home: Path) -> None:
    """Create a new SQLite store with its ``Default`` experiment's artifacts under ``<home>/mlartifacts`` (MLflow's
    own default would be ``./mlruns`` in the working directory); an existing store or a server is left alone."""
    if not tracking_uri.startswith("sqlite:///"):
        return
    db = Path(tracking_uri[len("sqlite:///") :])
    if db.exists():
        return
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    db.parent.mkdir(parents=True, exist_ok=True)
    SqlAlchemyStore(tracking_uri, (home / "mlartifacts").resolve().as_uri())


def data_hash(manifest: dict[str, Any]) -> str:
    """The short content hash of a prepared data set's inputs, from the sha256 digests its manifest already holds
    (``inputs``: the fingerprint of the source files); file names and locations do not count. One input file: the
    start of its own sha256 (``sha256sum wine.csv``); several, or a generated source (the scikit-learn version):
    the sha256 of their sorted digests.

    >>> data_hash({"inputs": {"/d/wine.csv": {"bytes": 9, "sha256": "3f9a2c1b77"}}})
    '3f9a2c1b'
    """
    inputs = manifest.get("inputs") or {}
    digests = sorted(v["sha256"] if isinstance(v, dict) else f"{k}={v}" for k, v in inputs.items())
    if len(digests) == 1 and isinstance(next(iter(inputs.values())), dict):
        return digests[0][:DATA_HASH_CHARS]
    return hashlib.sha256("\n".join(digests).encode()).hexdigest()[:DATA_HASH_CHARS]


def is_setting(key: str) -> bool:
    """A number a run produces that is a setting or a count rather than a measurement: logged as a param."""
    return key.endswith(SETTING_SUFFIXES)


def is_model_metric(key: str) -> bool:
    """A measurement of the served model itself (not of a baseline, nor a time): attached to the logged model."""
    return key.startswith(MODEL_METRIC_PREFIXES)


class PreparedDataset(MetaDataset):
    """The prepared data of a run as an MLflow dataset: name = the prepared data set (source, spec hash), digest =
    :func:`data_hash`, source = its directory, profile = the rows (and labels per class) of each split."""

    def __init__(self, manifest: dict[str, Any], root: Path):
        from mlflow.data.sources import LocalArtifactDatasetSource

        counts = manifest.get("counts", {})
        self._profile = {
            "source": manifest.get("source"),
            "source_file": (manifest.get("source_files") or {}).get("train"),
            "rows": counts,
            "labels_per_class": (manifest.get("class_counts") or {}).get("labeled"),
            "class_names": manifest.get("class_names"),
            "seed": manifest.get("seed"),
        }
        source = LocalArtifactDatasetSource(str(Path(root).resolve()))
        super().__init__(source, name=manifest.get("name"), digest=data_hash(manifest), schema=_data_schema(manifest))

    @property
    def profile(self) -> dict[str, Any]:
        return self._profile

    def to_dict(self) -> dict[str, str]:
        return {**super().to_dict(), "profile": json.dumps(self._profile, default=str)}


def _data_schema(manifest: dict[str, Any]):
    import numpy as np
    from mlflow.types import ColSpec, Schema, TensorSpec

    shape = [int(v) for v in manifest.get("shape") or []]
    if manifest.get("kind") == "image":
        return Schema([TensorSpec(np.dtype(manifest.get("dtype", "uint8")), (-1, *shape), "x")])
    names = manifest.get("feature_names") or [f"x{i}" for i in range(shape[0] if shape else 0)]
    return Schema([*(ColSpec("float", n) for n in names), ColSpec("long", "label")])


@dataclass
class RunHandle:
    tracking_uri: str
    experiment_id: str
    run_id: str
    model_id: str | None = None  # the logged model, once logged: its measurements are attached to it
    dataset: PreparedDataset | None = None  # the run's data, once known: metrics name it

    @property
    def client(self) -> MlflowClient:
        return MlflowClient(tracking_uri=self.tracking_uri)

    def worker_info(self) -> dict[str, str]:
        return {"tracking_uri": self.tracking_uri, "run_id": self.run_id}

    # --- logging -----------------------------------------------------------------------------------------------
    def log_params(self, params: dict[str, Any]) -> None:
        if not params:
            return
        existing = self.client.get_run(self.run_id).data.params
        items = [Param(k, _param(v)) for k, v in params.items() if k not in existing]
        for i in range(0, len(items), 100):
            self.client.log_batch(self.run_id, params=items[i : i + 100])

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        """The measurements as metrics; the settings and counts among the numbers (:func:`is_setting`) as params.
        Once the model is logged, its own measurements at step 0 are attached to it and to the run's dataset."""
        import math
        import time

        now = int(time.time() * 1000)
        numbers = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and math.isfinite(float(v))}
        self.log_params({k: _number_text(v) for k, v in numbers.items() if is_setting(k)})
        ms = [Metric(k, v, now, step or 0, **self._links(k, step)) for k, v in numbers.items() if not is_setting(k)]
        for i in range(0, len(ms), 500):
            self.client.log_batch(self.run_id, metrics=ms[i : i + 500])

    def _links(self, key: str, step: int | None) -> dict[str, str]:
        if self.model_id is None or step or not is_model_metric(key):
            return {}
        out = {"model_id": self.model_id}
        if self.dataset is not None:
            out.update(dataset_name=self.dataset.name, dataset_digest=self.dataset.digest)
        return out

    def use_dataset(self, dataset: PreparedDataset, log: bool = True) -> None:
        """The run's data: logged as its dataset input (context ``training``) unless ``log`` is False (a resumed
        run logged it already)."""
        self.dataset = dataset
        if log:
            ctx = InputTag(MLFLOW_DATASET_CONTEXT, "training")
            self.client.log_inputs(self.run_id, datasets=[DatasetInput(dataset._to_mlflow_entity(), tags=[ctx])])

    def describe(self, text: str) -> None:
        """The run's description (the run page shows it as Markdown): ``text`` in a code block."""
        self.set_tags({MLFLOW_RUN_NOTE: f"```\n{text.strip()}\n```"[:MAX_TAG_CHARS]})

    def set_tags(self, tags: dict[str, str]) -> None:
        self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_bytes(self, data: bytes, artifact_path: str) -> None:
        with tempfile.TemporaryDirectory() as d:
            p = Path(d) / Path(artifact_path).name
            p.write_bytes(data)
            parent = str(Path(artifact_path).parent)
            self.client.log_artifact(self.run_id, str(p), None if parent == "." else parent)

    def log_files(self, files: dict[str, bytes]) -> str | None:
        """Upload ``files`` (artifact path -> bytes) in one call. None, or one line saying what was not uploaded and
        why: a failed upload (an artifact store out of reach) never fails a job, whose run stays recorded."""
        if not files:
            return None
        try:
            with tempfile.TemporaryDirectory() as d:
                for path, data in files.items():
                    p = Path(d) / path
                    p.parent.mkdir(parents=True, exist_ok=True)
                    p.write_bytes(data)
                self.client.log_artifacts(self.run_id, d)
        except Exception as e:  # noqa: BLE001 - any store's failure: reported, the run goes on
            names = ", ".join(list(files)[:3]) + (", ..." if len(files) > 3 else "")
            why = " ".join(f"{type(e).__name__}: {e}".split())[:200]
            n = f"{len(files)} artifact{'s' if len(files) > 1 else ''}"
            return f"MLflow: {n} not uploaded ({names}): {why}; the run is recorded without them"
        return None

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
    description: str = "",
) -> RunHandle:
    """A new run (or the resumed one) in ``experiment``, created when missing with its artifacts under
    ``<home>/mlartifacts/<experiment>`` and ``description`` as its one line."""
    uri = tracking_uri or default_tracking_uri(home)
    exp_id = experiment_id(uri, home, experiment, description)
    client = MlflowClient(tracking_uri=uri)
    if resume_run_id:
        client.update_run(resume_run_id, status="RUNNING")
        return RunHandle(uri, exp_id, resume_run_id)
    from mlflow.tracking.context.registry import resolve_tags  # MLflow's own: user, source script, git commit

    all_tags = resolve_tags({"mlflow.runName": run_name, **environment_tags(), **(tags or {})})
    run = client.create_run(exp_id, run_name=run_name, tags=all_tags)
    return RunHandle(uri, exp_id, run.info.run_id)


def experiment_id(tracking_uri: str, home: Path, experiment: str, description: str = "") -> str:
    """The id of ``experiment``; a missing one is created with an explicit artifact root under the home (a local
    store) and ``description``."""
    ensure_store(tracking_uri, home)
    client = MlflowClient(tracking_uri=tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is not None:
        if description and not exp.tags.get(MLFLOW_RUN_NOTE):  # an experiment from before descriptions
            client.set_experiment_tag(exp.experiment_id, MLFLOW_RUN_NOTE, description)
        return exp.experiment_id
    artifact_location = None
    if tracking_uri.startswith(("sqlite:", "file:")):
        artifact_location = (home / "mlartifacts" / experiment).resolve().as_uri()
    tags = {MLFLOW_RUN_NOTE: description} if description else None
    return client.create_experiment(experiment, artifact_location=artifact_location, tags=tags)


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


def log_model(
    handle: RunHandle, model_dir: Path, spec: dict[str, Any], example: Any = None, description: str = ""
) -> str:
    """Log the served model as an MLflow pyfunc "model from code": the weights as a state dict plus a JSON spec,
    the ``flowgmm`` package as code, a signature, ``example`` (raw input rows, e.g. one validation row) as its
    input example, and ``description``. Loading it never unpickles arbitrary objects. Sets ``handle.model_id``:
    the run's later measurements of the served model are attached to it."""
    from pipeline.results import serving

    repo = Path(__file__).resolve().parents[2]
    mlflow.set_tracking_uri(handle.tracking_uri)
    mlflow.set_experiment(experiment_id=handle.experiment_id)  # before any fluent call: never `Default`
    with mlflow.start_run(run_id=handle.run_id), warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # MLflow's advice on type hints; the signature is given
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=str(Path(serving.__file__).resolve()),
            artifacts={"model_dir": str(model_dir)},
            code_paths=[str(repo / "flowgmm")],
            signature=serving.signature(spec),
            input_example=serving.input_example(spec, example),
            pip_requirements=pinned_requirements(),
        )
    # leave the run RUNNING: the caller ends it with the final status
    handle.client.update_run(handle.run_id, status="RUNNING")
    handle.model_id = info.model_id
    if description:
        handle.client.set_logged_model_tags(info.model_id, {MLFLOW_RUN_NOTE: description})
    return info.model_uri


def pinned_requirements() -> list[str]:
    """What the served model imports, pinned to the versions this run used (a local label such as ``+cpu`` is
    dropped: the same release installs from the package index on a GPU host)."""
    from importlib.metadata import version

    return [f"{name}=={version(name).split('+')[0]}" for name in ("torch", "numpy", "pandas")]


def _param(v: Any) -> str:
    s = json.dumps(v) if isinstance(v, (list, tuple, dict)) else str(v)
    return s[:6000]


def _number_text(v: float) -> str:
    """10.0 -> '10', 0.1 -> '0.1': a count or a grid value as it was chosen."""
    return str(int(v)) if float(v).is_integer() else repr(float(v))
