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


def test_a_vector_run_reports_every_ood_score_against_shifted_test_rows(tmp_path):
    # tables and other vectors have no OOD data set: the evaluation makes two from the test split itself
    from flowgmm.spec import build_model, save
    from pipeline.results.summary import _ood_lines
    from pipeline.train.model import model_spec

    cfg = resolve("moons", smoke=True)
    prepared = prepare(cfg.data, tmp_path / "home")
    spec = model_spec(cfg, prepared)
    save(build_model(spec), spec, tmp_path / "model")
    ev = evaluate_model(str(tmp_path / "model"), prepared, cfg, figures_on=True)
    got = {(r["ood_set"], r["score"]) for r in ev.ood_table}
    assert got == {(s, score) for s in ("scaled", "permuted") for score in ("log_px", "latent", "max_prob")}
    for r in ev.ood_table:
        assert 0.0 <= r["auroc"] <= 1.0 and 0.0 <= r["fpr95"] <= 1.0
        assert ev.metrics[f"ood_{r['ood_set']}_{r['score']}_auroc"] == r["auroc"]
    assert {"plots/ood_log_px_hist.png", "plots/ood_latent_hist.png", "plots/ood_max_prob_hist.png"} <= set(ev.figures)
    lines = _ood_lines(ev.ood_table, ev.metrics)
    assert [ln.split(" (")[0].strip() for ln in lines if "out-of-domain" in ln] == [
        "out-of-domain scaled",
        "out-of-domain permuted",
    ]
