"""A user's own table on its defaults (issue 16, item 4): a CSV of 300 rows, about 10% labeled with text labels, runs
with ``--table PATH --smoke`` and nothing else; the splits are sized from the labels, the class names reach the
manifest and the model, and the results report the test rows and a 95% interval on accuracy. Bad tables and
conflicting options get one line and exit 2 before Ray starts."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pytest

from pipeline.job import main

N, SHIFT = 300, 3.0


def write_table(path: Path, labeled_every: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """Two well-separated classes 'no' / 'yes' in 4 features; every ``labeled_every``-th row (and the next) labeled,
    the others with an empty label. Returns the features and the true classes (0 = no, 1 = yes)."""
    rng = np.random.default_rng(7)
    y = rng.integers(0, 2, N)
    x = rng.normal(size=(N, 4)) + SHIFT * y[:, None]
    rows = []
    for i in range(N):
        label = ("no", "yes")[y[i]] if i % labeled_every in (0, 1) else ""
        rows.append(",".join(f"{v:.5f}" for v in x[i]) + f",{label}\n")
    path.write_text("f1,f2,f3,f4,label\n" + "".join(rows))
    return x, y


@pytest.fixture(scope="module")
def own_run(ray_local, tmp_path_factory):
    d = tmp_path_factory.mktemp("own")
    x, y = write_table(d / "mine.csv")
    home, console = d / "home", io.StringIO()
    with contextlib.redirect_stdout(console):
        rc = main(["--table", str(d / "mine.csv"), "--smoke", "--home", str(home), "--run-name", "own"])
    return home, x, y, rc, console.getvalue()


def _experiment(home) -> str:
    """The table's experiment: its file stem and content hash, as the run record holds it."""
    (record,) = (home / "runs").glob("*/flowgmm_run.json")
    return json.loads(record.read_text())["experiment"]


@pytest.mark.slow
def test_own_table_runs_on_its_defaults_and_reports_an_interval(own_run):
    home, x, y, rc, console = own_run
    assert rc == 0
    lines = console.splitlines()
    head = next(s for s in lines if s.startswith("[flowgmm] results on the test split"))
    assert head.startswith("[flowgmm] results on the test split (table, ") and head.endswith(" test rows)")
    assert any(s.startswith("  FlowGMM-cons test accuracy: 95% interval [") for s in lines), console
    assert any(s.startswith("  note: only ") and "validation rows (under 50)" in s for s in lines), console
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{home / 'mlflow.db'}")
    run = client.search_runs([client.get_experiment_by_name(_experiment(home)).experiment_id])[0]
    m, params = run.data.metrics, run.data.params
    assert params["data.n_labeled"] == "None" and params["data.n_val"] == "None"
    manifest = json.loads(next((home / "data").glob("table-*/manifest.json")).read_text())
    counts = manifest["counts"]
    assert manifest["class_names"] == ["no", "yes"]
    # every one of the 60 labels is used: test (held out) + validation + training; the rest are unlabeled
    assert counts["labeled"] + counts["val"] + counts["test"] == 60 and counts["unlabeled"] == N - 60
    assert counts["val"] >= 2 and counts["test"] >= 2
    rows = {k: float(params[f"{k}_rows"]) for k in ("test", "val", "labeled")}  # counts are params, not metrics
    assert rows == {"test": counts["test"], "val": counts["val"], "labeled": counts["labeled"]}
    assert 0.0 <= m["test_accuracy_ci_low"] <= m["test_accuracy"] <= m["test_accuracy_ci_high"] <= 1.0
    assert m["test_accuracy_ci_high"] - m["test_accuracy_ci_low"] > 0.1  # a dozen test rows: a wide interval


@pytest.mark.slow
def test_own_table_model_scores_by_class_name(own_run):
    home, x, y, rc, _ = own_run
    assert rc == 0
    import mlflow
    import pandas as pd

    mlflow.set_tracking_uri(f"sqlite:///{home / 'mlflow.db'}")
    run = mlflow.search_runs(experiment_names=[_experiment(home)], output_format="list")[0]
    model = mlflow.pyfunc.load_model(run.data.tags["model_uri"])
    out = model.predict(pd.DataFrame(x, columns=["f1", "f2", "f3", "f4"]))
    assert {"prob_no", "prob_yes"} <= set(out.columns)
    assert float((out["label"].to_numpy() == y).mean()) > 0.8  # the classes are SHIFT apart in every feature
    yes = out["prob_yes"].to_numpy()
    assert yes[y == 1].mean() > yes[y == 0].mean()


def test_own_table_summary_line():
    """The summary's interval and note lines, from the metrics alone (no run)."""
    from types import SimpleNamespace

    from pipeline.config import resolve
    from pipeline.results.summary import summary_lines

    cfg = resolve("table", overrides=["data.path=/nowhere/mine.csv"])
    m = {"test_accuracy": 0.75, "test_rows": 12.0, "val_rows": 8.0, "labeled_rows": 40.0}
    m.update(test_accuracy_ci_low=0.468, test_accuracy_ci_high=0.911, wall_seconds=1.0, train_steps=1.0)
    result = {"metrics": m, "ood": [], "model_uri": "runs:/r/model", "model_dir": "/m"}
    lines = summary_lines(cfg, result, SimpleNamespace(run_id="r", tracking_uri="sqlite:///x.db"), {})
    assert lines[0] == "[flowgmm] results on the test split (table, 40 labels, 12 test rows)"
    assert "  FlowGMM-cons test accuracy: 95% interval [0.468, 0.911] over 12 test rows" in lines
    assert any(s.startswith("  note: only 8 validation rows (under 50)") for s in lines)
    m["val_rows"] = 50.0
    lines = summary_lines(cfg, result, SimpleNamespace(run_id="r", tracking_uri="sqlite:///x.db"), {})
    assert not any("note:" in s for s in lines)
    # the table's columns stay aligned even with a large variance scale in a row's name
    m.update(test_accuracy_calibrated=0.75, test_nll_calibrated=0.5, test_ece_calibrated=0.1, variance_scale=456.26)
    m.update(test_nll=0.9, test_ece=0.2)
    lines = summary_lines(cfg, result, SimpleNamespace(run_id="r", tracking_uri="sqlite:///x.db"), {})
    table = lines[1:4]  # header, uncalibrated, calibrated
    assert "variance x456.26)" in table[2], table
    assert len({len(s) for s in table}) == 1, table  # right-aligned columns end where the header's do
    assert table[1].endswith("0.750   0.900   0.200") and table[2].endswith("0.750   0.500   0.100"), table
    cfg = resolve("table", overrides=["data.path=/nowhere/mine.csv", "train.method=labels_only"])
    m["variance_scale"] = 12345.67
    lines = summary_lines(cfg, result, SimpleNamespace(run_id="r", tracking_uri="sqlite:///x.db"), {})
    assert "labels-only flow, calibrated (variance x12345.67)" in lines[3] and len({len(s) for s in lines[1:4]}) == 1


@pytest.mark.parametrize(
    "argv,needles",
    [
        (["--table", "{d}/missing.csv"], ["missing.csv", "does not exist"]),
        (["--table", "{d}/one.csv"], ["one.csv", "single class 'yes'"]),
        (["--table", "{d}/few.csv", "data.n_labeled=20", "data.n_val=60"], ["few.csv", "n_val=60 needs 30"]),
    ],
)
def test_bad_tables_get_one_line_and_exit_2(tmp_path, capsys, argv, needles):
    """Before Ray starts: a missing file, a single labeled row, explicit sizes larger than the labels."""
    (tmp_path / "one.csv").write_text(
        "a,b,label\n" + "".join(f"{i},{i % 3},{'yes' if i == 4 else ''}\n" for i in range(40))
    )
    write_table(tmp_path / "few.csv")
    args = [a.format(d=tmp_path) for a in argv] + ["--home", str(tmp_path / "home"), "--smoke"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    for n in needles:
        assert n in err[0], (n, err[0])


def test_table_and_another_config_conflict(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["--config", "digits", "--table", str(tmp_path / "mine.csv"), "--home", str(tmp_path)])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "error: --table runs the 'table' experiment; with --config digits set data.path=PATH instead "
        "(and data.source=table)"
    ]
