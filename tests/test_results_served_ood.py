"""The served out-of-domain score: the model's spec names it (``ood_score``), the served frame (scoring, serving and
the pyfunc model) computes that score as the evaluation does and flags it below the spec's threshold, and a score a
model does not have stops the job before training with one line."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import own_lines

from flowgmm import ood
from flowgmm.spec import build_model
from pipeline.results.serving import predict_frame
from pipeline.train.validate import encode


def _served(spec: dict, x: np.ndarray, threshold: float):
    torch.manual_seed(0)
    model = build_model(spec).eval()
    names = [str(i) for i in range(spec["num_classes"])]
    return model, predict_frame(model, spec, names, threshold, x, batch_size=7)


def test_a_vector_model_serving_the_latent_score():
    spec = {"kind": "vector", "shape": [3], "num_classes": 2, "model": {"num_couplings": 2, "hidden": 8}}
    x = np.random.default_rng(0).normal(size=(20, 3)).astype(np.float32)
    model, _ = _served({**spec, "ood_score": "latent"}, x, 0.0)
    e = encode(model, x, np.zeros(20), levels=None, device=torch.device("cpu"))
    expected = ood.latent_score(model.mixture, e.z)
    threshold = float(np.median(expected))
    _, out = _served({**spec, "ood_score": "latent"}, x, threshold)
    np.testing.assert_allclose(out["ood_score"], expected, rtol=1e-5, atol=1e-4)
    assert list(out["ood_score_name"]) == ["latent"] * 20
    assert list(out["is_ood"]) == list(out["ood_score"] < threshold) and out["is_ood"].sum() == 10


def test_an_image_model_serving_the_complexity_corrected_score():
    spec = {"kind": "image", "shape": [1, 4, 4], "num_classes": 2, "levels": 17, "ood_score": "complexity"}
    spec["model"] = {"flow": "vector", "num_couplings": 2, "hidden": 8}
    x = (np.random.default_rng(1).integers(0, 17, size=(12, 1, 4, 4)) * 255 // 16).astype(np.uint8)
    model, out = _served(spec, x, -np.inf)
    e = encode(model, x, np.zeros(12), levels=17, device=torch.device("cpu"))
    np.testing.assert_allclose(out["ood_score"], ood.complexity_score(e.log_px, x, 17), rtol=1e-5, atol=1e-3)
    assert not out["is_ood"].any()


def test_the_served_score_of_a_kind_and_the_one_line_for_a_score_it_lacks():
    assert ood.served("auto", "image") == ood.DEFAULT["image"] and ood.served("auto", "vector") == ood.DEFAULT["vector"]
    with pytest.raises(ValueError, match=r"^eval.ood_score=complexity: a vector model has log_px, latent, max_prob$"):
        ood.served("complexity", "vector")


def test_a_table_run_asking_for_the_complexity_score_stops_before_training(tmp_path, capsys):
    from pipeline.job import main

    table = tmp_path / "t.csv"
    rng = np.random.default_rng(0)
    rows = ["a,b,label"] + [f"{rng.normal():.3f},{rng.normal():.3f},{'xy'[i % 2] if i < 12 else ''}" for i in range(40)]
    table.write_text("\n".join(rows) + "\n")
    rc = main(["--table", str(table), "--home", str(tmp_path / "home"), "eval.ood_score=complexity"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(own_lines(err)) == 1, err
    assert own_lines(err)[0].startswith("error: eval.ood_score=complexity: a vector model has") and "vector data" in err
    assert not (tmp_path / "home" / "mlflow.db").exists()  # stopped before Ray and MLflow
