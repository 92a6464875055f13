"""What a run records in MLflow besides its table (issue 22): only measurements as metrics (settings and counts as
params), the prepared data as the run's dataset input, the served model's measurements attached to the logged
model, descriptions, one experiment per data content, and nothing under the working directory."""

from __future__ import annotations

import hashlib
import json

import pytest
from mlflow import MlflowClient

from pipeline.config import resolve
from pipeline.config.parse import experiment_name
from pipeline.results.tracking import PreparedDataset, data_hash, start_run

MANIFEST = {
    "name": "table-wine-0123456789ab",
    "source": "table",
    "source_files": {"train": "/d/wine.csv", "test": "/d/wine.csv"},
    "inputs": {"/d/wine.csv": {"bytes": 10, "sha256": "3f9a2c1b" + "0" * 56}},
    "kind": "vector",
    "shape": [2],
    "feature_names": ["alcohol", "ash"],
    "counts": {"labeled": 20, "unlabeled": 100, "val": 10, "test": 12},
    "class_counts": {"labeled": [10, 10]},
    "class_names": ["red", "white"],
    "seed": 0,
}


def test_a_table_s_experiment_is_its_stem_and_content_hash(tmp_path):
    """The hash is the file's own sha256 (``sha256sum``), wherever the file lives; the experiment (and registered
    model) name carries it, so two versions of one file never share an experiment; shipped sources keep theirs."""
    f = tmp_path / "wine.csv"
    f.write_text("a,b,label\n1,2,x\n")
    digest = hashlib.sha256(f.read_bytes()).hexdigest()
    moved = {"inputs": {"/elsewhere/wine.csv": {"bytes": 16, "sha256": digest}}}
    assert data_hash({"inputs": {str(f): {"bytes": 16, "sha256": digest}}}) == data_hash(moved) == digest[:8]
    two = {"inputs": {"/a": {"sha256": digest}, "/b": {"sha256": "0" * 64}}}
    assert data_hash(two) != digest[:8] and len(data_hash(two)) == 8
    cfg = resolve("table", overrides=[f"data.path={f}"])
    assert experiment_name(cfg, digest[:8]) == f"flowgmm-table-wine-{digest[:8]}"
    assert experiment_name(resolve("moons"), "ffff0000") == "flowgmm-moons"
    named = resolve("table", overrides=[f"data.path={f}", "experiment=mine"])
    assert experiment_name(named, digest[:8]) == "mine"


@pytest.fixture
def handle(tmp_path, monkeypatch):
    """A run in a fresh home's store, started from another working directory."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    home = tmp_path / "home"
    h = start_run(home, "flowgmm-table-wine-3f9a2c1b", "r1", description="FlowGMM runs on wine.csv")
    return home, cwd, h


def test_nothing_lands_in_the_working_directory(handle):
    """A fresh store's ``Default`` experiment and the run's experiment keep their artifacts under the home."""
    home, cwd, h = handle
    client = h.client
    for exp in client.search_experiments():
        assert exp.artifact_location.startswith((home / "mlartifacts").resolve().as_uri()), exp
    assert client.get_experiment(h.experiment_id).tags["mlflow.note.content"] == "FlowGMM runs on wine.csv"
    assert list(cwd.iterdir()) == []


def test_settings_and_counts_are_params_and_model_measurements_link_to_model_and_data(handle):
    home, _, h = handle
    client = h.client
    ds = PreparedDataset(MANIFEST, home / "data" / MANIFEST["name"])
    h.use_dataset(ds)
    model = client.create_logged_model(h.experiment_id, source_run_id=h.run_id, name="model")
    h.model_id = model.model_id
    numbers = {
        "test_accuracy": 0.9,
        "baseline_logreg_test_accuracy": 0.8,
        "baseline_logreg_C": 0.1,
        "baseline_knn_n_neighbors": 5.0,
        "baseline_label_spreading_alpha": 0.99,
        "baseline_label_spreading_unlabeled_rows": 100.0,
        "test_rows": 12.0,
        "wall_seconds": 3.5,
    }
    h.log_metrics(numbers)
    run = client.get_run(h.run_id)
    assert set(run.data.metrics) == {"test_accuracy", "baseline_logreg_test_accuracy", "wall_seconds"}
    p = run.data.params
    assert (p["baseline_logreg_C"], p["baseline_knn_n_neighbors"], p["test_rows"]) == ("0.1", "5", "12")
    assert p["baseline_label_spreading_alpha"] == "0.99" and p["baseline_label_spreading_unlabeled_rows"] == "100"
    (inp,) = run.inputs.dataset_inputs
    assert (inp.dataset.name, inp.dataset.digest) == (MANIFEST["name"], "3f9a2c1b")
    assert {(t.key, t.value) for t in inp.tags} == {("mlflow.data.context", "training")}
    profile = json.loads(inp.dataset.profile)
    assert profile["rows"] == MANIFEST["counts"] and profile["source_file"] == "/d/wine.csv"
    assert json.loads(inp.dataset.source)["uri"].endswith(MANIFEST["name"])
    assert "alcohol" in inp.dataset.schema
    linked = {m.key: m for m in client.get_logged_model(model.model_id).metrics}
    assert set(linked) == {"test_accuracy"}  # the served model's own measurement, not a baseline's nor a time
    assert (linked["test_accuracy"].dataset_name, linked["test_accuracy"].dataset_digest) == (
        MANIFEST["name"],
        "3f9a2c1b",
    )


def test_run_description_is_the_results_text(handle):
    _, _, h = handle
    h.describe("[flowgmm] results on the test split\n  model  accuracy\n")
    note = MlflowClient(tracking_uri=h.tracking_uri).get_run(h.run_id).data.tags["mlflow.note.content"]
    assert note == "```\n[flowgmm] results on the test split\n  model  accuracy\n```"


def test_artifacts_go_up_in_one_call_and_a_failed_upload_is_one_line(handle, monkeypatch):
    _, _, h = handle
    files = {"evaluation/table.json": b"{}", "plots/a.png": b"\x89PNG", "plots/b.png": b"\x89PNG"}
    assert h.log_files(files) is None
    client = MlflowClient(tracking_uri=h.tracking_uri)
    assert {a.path for a in client.list_artifacts(h.run_id, "plots")} == {"plots/a.png", "plots/b.png"}

    def unreachable(self, run_id, local_dir, artifact_path=None):
        raise ConnectionError("artifact store at s3://bucket unreachable\n(retries exhausted)")

    monkeypatch.setattr(MlflowClient, "log_artifacts", unreachable)
    line = h.log_files({"evaluation/ood_table.json": b"[]"})
    assert line is not None and "\n" not in line
    assert "1 artifact not uploaded (evaluation/ood_table.json): ConnectionError: artifact store" in line
    assert line.endswith("the run is recorded without them")
    assert client.get_run(h.run_id).info.status == "RUNNING"  # still recorded, ended by the job as usual
