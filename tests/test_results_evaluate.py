"""The evaluation reports how the served variance scale was chosen, and returns the anchors' settings apart from the
metrics, for the results table and MLflow."""

from __future__ import annotations

import numpy as np
import pytest

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


def test_the_likelihood_ratio_against_a_background_model(tmp_path):
    # llr = log p(x) - log p_background(x): with the model itself as its background it is 0 on every row, so it cannot
    # tell any set apart (AUROC 0.5); with another model it is the difference of the two flows' log-densities
    import torch

    from flowgmm import ood
    from flowgmm.spec import build_model, save
    from pipeline.train.model import model_spec

    cfg = resolve("moons", smoke=True)
    prepared = prepare(cfg.data, tmp_path / "home")
    spec = model_spec(cfg, prepared)
    save(build_model(spec), spec, tmp_path / "model")
    ev = evaluate_model(str(tmp_path / "model"), prepared, cfg, figures_on=True, background_dir=str(tmp_path / "model"))
    llr = [r for r in ev.ood_table if r["score"] == ood.RATIO]
    assert {r["ood_set"] for r in llr} == {"scaled", "permuted"}
    assert all(r["auroc"] == 0.5 for r in llr) and "plots/ood_llr_hist.png" in ev.figures
    assert ev.ood_score == "log_px"  # evaluation only: never the served score
    lp = torch.tensor([1.0, -2.0])
    out = ood.scores((ood.RATIO,), None, None, lp, background=torch.tensor([0.5, 0.5]))
    np.testing.assert_allclose(out[ood.RATIO], [0.5, -2.5])
    with pytest.raises(ValueError, match="llr"):
        ood.scores((ood.RATIO,), None, None, lp)  # no background: one clear error, not a silent log p(x)


def test_a_model_without_one_class_scores_that_class_by_every_score(tmp_path):
    from flowgmm import ood
    from flowgmm.spec import build_model, save
    from pipeline.data import load_split, load_unlabeled_labels
    from pipeline.data.derive import without_class
    from pipeline.results.evaluate import heldout_class_ood, predict_classes
    from pipeline.train.model import model_spec

    cfg = resolve("digits", smoke=True)
    prepared = prepare(cfg.data, tmp_path / "home")
    held = without_class(prepared, 2, load_unlabeled_labels(prepared) != 2)
    spec = model_spec(cfg, held)
    assert spec["num_classes"] == 9 and "2" not in spec["class_names"]
    save(build_model(spec), spec, tmp_path / "held")
    x, y = load_split(prepared, "test")
    rows, s_in, s_out = heldout_class_ood(str(tmp_path / "held"), held, cfg, x[y == 2])
    assert [r["score"] for r in rows] == list(ood.available("image")) == list(s_in) == list(s_out)
    assert len(s_out["log_px"]) == int((y == 2).sum()) and len(s_in["log_px"]) == held.counts["test"]
    assert all(0 <= r["auroc"] <= 1 and 0 <= r["fpr95"] <= 1 for r in rows)
    pred = predict_classes(str(tmp_path / "held"), x[:7])
    assert pred.shape == (7,) and set(pred.tolist()) <= set(range(9))


@pytest.mark.parametrize("config", ["digits", "moons"])  # ten classes, and two (one row of coefficients)
def test_the_sample_judge_is_fitted_once_per_data_set_and_labels_as_a_logistic_regression(
    config, tmp_path, monkeypatch
):
    from sklearn.linear_model import LogisticRegression

    from pipeline.data.shards import load_split
    from pipeline.results.anchors import flow_view
    from pipeline.results.evaluate import JUDGE_FILE, sample_judge

    prepared = prepare(resolve(config).data, tmp_path / "home")
    judge = sample_judge(prepared)
    assert (prepared.root / JUDGE_FILE).is_file()
    x, y = load_split(prepared, "test")
    x = flow_view(prepared, x)
    fitted = LogisticRegression(max_iter=1000).fit(
        flow_view(prepared, load_split(prepared, "labeled")[0]), load_split(prepared, "labeled")[1]
    )
    fitted.coef_, fitted.intercept_, fitted.classes_ = judge.coef, judge.intercept, judge.classes
    assert (judge.predict(x) == fitted.predict(x)).all()  # the same decision rule as sklearn's
    assert (judge.predict(x) == y).mean() > 0.8

    def no_refit(self, *a, **k):
        raise AssertionError("the judge was fitted again")

    monkeypatch.setattr(LogisticRegression, "fit", no_refit)
    again = sample_judge(prepared)  # read back from beside the shards
    assert np.array_equal(again.predict(x), judge.predict(x))
