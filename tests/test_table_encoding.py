"""Tables as they come: text feature columns one-hot encoded and missing numbers imputed with an indicator, fitted
on the training table, recorded in the model, and applied alike by training, scoring, the pyfunc model and the
server (a row with a missing cell gets one answer everywhere)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from pipeline.core.errors import DataError
from pipeline.data import encoding


def _frame(n: int = 400, seed: int = 0, labels: int = 60) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 3
    df = pd.DataFrame(
        {
            "a": rng.normal(size=n) + y,
            "b": rng.normal(size=n) - y,
            "colour": np.array(["red", "green", "blue"])[y],
            "country": rng.choice(["fr", "de", "it"], n),
        }
    )
    gaps = rng.random((n, 2)) < 0.05
    df.loc[gaps[:, 0], "a"] = np.nan
    df.loc[gaps[:, 1], "b"] = np.nan
    df.loc[rng.random(n) < 0.05, "colour"] = None
    lab = np.array(["x", "y", "z"], dtype=object)[y]
    lab[labels:] = None
    return df.assign(label=lab)


def test_fit_transform_and_back():
    t = pa.table({"n": [1.0, None, 5.0, 2.0], "k": [3, 4, 5, 6], "c": ["u", "v", None, "u"]})
    enc = encoding.fit(t, ["n", "k", "c"], "t.csv")
    assert encoding.needed(enc) and encoding.feature_names(enc) == ["n", "n missing", "k", "c=u", "c=v"]
    x = encoding.transform({"n": [None, 7], "k": [1, np.nan], "c": ["v", "w"]}, enc, "rows")
    np.testing.assert_allclose(x, [[8 / 3, 1, 1, 0, 1], [7, 0, 4.5, 0, 0]], rtol=1e-6)  # k: imputed, no indicator
    assert encoding.raw_rows(x, enc) == [{"n": None, "k": 1.0, "c": "v"}, {"n": 7.0, "k": 4.5, "c": None}]
    assert not encoding.needed(encoding.fit(pa.table({"n": [1.0, 2.0]}), ["n"], "t.csv"))


def test_bad_columns_are_one_line_naming_them():
    many = pa.table({"city": [f"c{i}" for i in range(40)]})
    with pytest.raises(DataError, match=r"^t.csv: column 'city' has 40 distinct text values, over the 32"):
        encoding.fit(many, ["city"], "t.csv")
    with pytest.raises(DataError, match=r"^t.csv: column 'e' has no values"):
        encoding.fit(pa.table({"e": pa.array([None, None], pa.float64())}), ["e"], "t.csv")
    with pytest.raises(DataError, match=r"^t.csv: column 'l' has dtype list"):
        encoding.fit(pa.table({"l": [[1], [2]]}), ["l"], "t.csv")
    enc = encoding.fit(pa.table({"n": [1.0, 2.0]}), ["n"], "t.csv")
    with pytest.raises(DataError, match=r"^new.csv: column 'n' has 'abc' at row 1, expected a number"):
        encoding.transform({"n": [1.0, "abc"]}, enc, "new.csv")


@pytest.mark.slow
def test_a_table_with_text_and_gaps_trains_scores_and_serves_alike(ray_local, tmp_path, capsys):
    from pipeline.job import main
    from pipeline.results.serve_rows import model_input, parse_body
    from pipeline.results.serving import predict_frame

    table, home = tmp_path / "shop.csv", tmp_path / "home"
    _frame().to_csv(table, index=False)
    assert main(["--table", str(table), "--home", str(home), "--run-name", "enc", "train.steps=150"]) == 0
    out = capsys.readouterr().out
    assert "table encoding: one-hot colour (3 levels), country (3 levels); missing numbers imputed" in out
    from flowgmm.spec import load

    model, spec = load(home / "models" / "enc")
    assert [e["column"] for e in spec["encoding"]] == ["a", "b", "colour", "country"]
    # new rows with a missing number, a missing text and an unseen text value
    new = pd.DataFrame({"a": [np.nan, 0.5], "b": [1.0, None], "colour": ["red", None], "country": ["es", "fr"]})
    new.assign(label=["x", "y"]).to_csv(tmp_path / "new.csv", index=False)
    from pipeline.results.score import main as score_main

    args = ["--model", str(home / "models" / "enc"), "--input", str(tmp_path / "new.csv"), "--home", str(home)]
    assert score_main([*args, "--output", str(tmp_path / "scored.csv")]) == 0
    scored = pd.concat([pd.read_csv(f) for f in sorted((tmp_path / "scored.csv").glob("*.csv"))], ignore_index=True)
    rows = [
        {k: (None if isinstance(v, float) and np.isnan(v) else v) for k, v in r.items()} for r in new.to_dict("records")
    ]
    x = parse_body(json.dumps(rows).encode(), spec)
    model.set_variance_scale(spec["variance_scale"])
    names = spec["class_names"]
    served = predict_frame(model, spec, names, spec["ood_threshold"], model_input(x, spec))
    pyfunc = predict_frame(model, spec, names, spec["ood_threshold"], new)
    for frame in (served, pyfunc):
        np.testing.assert_allclose(frame["log_px"], scored["log_px"], rtol=1e-5, atol=1e-4)
        assert frame["class"].tolist() == scored["class"].tolist()
    assert scored["input_label"].tolist() == ["x", "y"]
    from pipeline.results.serving import input_example

    assert list(input_example(spec).columns) == ["a", "b", "colour", "country"]
