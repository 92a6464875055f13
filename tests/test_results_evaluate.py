"""The evaluation reports how the served variance scale was chosen, and returns the anchors' settings apart from the
metrics, for the results table and MLflow."""

from __future__ import annotations

from pipeline.config import resolve
from pipeline.data import prepare
from pipeline.results.evaluate import evaluate_model


def test_evaluation_reports_the_calibration_rule_and_the_anchor_settings(tmp_path):
    from flowgmm.spec import build_model, save
    from pipeline.train.model import model_spec

    cfg = resolve("moons", smoke=True)
    prepared = prepare(cfg.data, tmp_path / "home")
    spec = model_spec(cfg, prepared)
    save(build_model(spec), spec, tmp_path / "model")  # an untrained flow: any scale will do, the plumbing is tested
    ev = evaluate_model(str(tmp_path / "model"), prepared, cfg, figures_on=False)
    m = ev.metrics
    assert ev.calibration_note.startswith("cross-fit") and ev.calibration_note.endswith(f"n={prepared.counts['val']}")
    assert m["variance_scale"] == ev.variance_scale and m["variance_scale_fitted"] > 0
    assert (ev.variance_scale == 1.0) == ("kept x1" in ev.calibration_note)
    for row in ev.calibration_table:
        assert row["variance_scale_fitted"] == m["variance_scale_fitted"]
        assert row["calibration"] == (ev.calibration_note if row["model"] == "calibrated" else "none")
    assert ev.params["baseline_label_spreading_kernel"] in ("knn", "rbf")
    assert "baseline_self_training_test_accuracy" in m and not set(ev.params) & set(m)
