"""The out-of-domain models through the product: a table job with ``eval.ood_heldout`` and ``eval.ood_background``
trains the main model, a background model on perturbed rows and a model without one class, and records the
held-out-class figures and the likelihood ratio beside the other scores; the served score stays the kind's default."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pipeline.job import main

pytestmark = pytest.mark.slow


def _table(path, rows: int = 480, labels: int = 45) -> None:
    rng = np.random.default_rng(0)
    y = np.arange(rows) % 3
    x = rng.normal(size=(rows, 4)) + 3.0 * np.eye(3, 4)[y]
    names = np.array(["red", "green", "blue"])
    lines = ["a,b,c,d,label"] + [
        ",".join(f"{v:.4f}" for v in x[i]) + "," + (names[y[i]] if i < labels else "") for i in range(rows)
    ]
    path.write_text("\n".join(lines) + "\n")


def test_a_table_job_with_both_ood_models(ray_local, tmp_path, capsys):
    from mlflow import MlflowClient

    table, home = tmp_path / "three.csv", tmp_path / "home"
    _table(table)
    args = ["--table", str(table), "--home", str(home), "--run-name", "ood", "train.steps=60", "eval.baselines=false"]
    assert main([*args, "eval.ood_heldout=true", "eval.ood_background=true", "train.seed=1"]) == 0
    out = capsys.readouterr().out
    held = "green"  # class train.seed mod 3 of the sorted class names (blue, green, red)
    assert "background model" in out and f"without class {held}" in out
    assert f"out-of-domain held-out class {held} (AUROC/FPR95): log_px " in out
    client = MlflowClient(tracking_uri=f"sqlite:///{home / 'mlflow.db'}")
    run = client.search_runs([e.experiment_id for e in client.search_experiments()], "attributes.run_name = 'ood'")[0]
    m = run.data.metrics
    assert m["ood_heldout_class"] == 1.0 and m["time_ood_models_s"] > 0
    for score in ("log_px", "latent", "max_prob"):
        assert 0.0 <= m[f"ood_heldout_{score}_auroc"] <= 1.0
    for shifted in ("scaled", "permuted"):
        assert 0.0 <= m[f"ood_{shifted}_llr_auroc"] <= 1.0
    assert "ood_heldout_llr_auroc" not in m  # the held-out model has no background of its own
    plots = {f.path for f in client.list_artifacts(run.info.run_id, "plots")}
    assert {"plots/ood_heldout_log_px_hist.png", "plots/ood_llr_hist.png"} <= plots  # a picture per score and set
    spec = json.loads((home / "models" / "ood" / "spec.json").read_text())
    assert spec["ood_score"] == "log_px" and spec["num_classes"] == 3
    made = {p.name.rsplit("-", 1)[-1] for p in (home / "data").iterdir() if "-without-" in p.name}
    assert made == {"1"} and any("-perturbed-0.2-" in p.name for p in (home / "data").iterdir())
