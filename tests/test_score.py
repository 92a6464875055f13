"""Batch scoring (pipeline.results.score): Ray Data reads any pyarrow path/URI, the actor pool scores, write_parquet /
write_csv write the result (local: temporary directory renamed into place; remote: in place + _SUCCESS), rows in
input order with class names; bad input is one line naming the file and the column, before Ray is touched.

The model is a small untrained FlowGMM saved as spec + weights (what a registered model holds), so no training runs
here; the end-to-end scoring of a trained model is in test_job_e2e.py."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import own_lines

from pipeline.results.score import main as score_main

FEATURES = ["a", "b", "c", "d"]
CLASSES = ["setosa", "versicolor", "virginica"]
SHARD_ROWS = (300, 250, 350)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    from flowgmm.spec import build_model, save

    spec = {
        "kind": "vector",
        "shape": [len(FEATURES)],
        "num_classes": len(CLASSES),
        "class_names": CLASSES,
        "feature_columns": FEATURES,
        "model": {"num_couplings": 2, "hidden": 8},
        "variance_scale": 1.5,
        "ood_threshold": -8.0,
        "seed": 3,
    }
    d = tmp_path_factory.mktemp("model") / "model"
    save(build_model(spec), spec, d)
    return d


def _table(n: int, first_id: int, rng: np.random.Generator) -> pd.DataFrame:
    ids = first_id + rng.permutation(n)  # not sorted: the output must keep the input order, not sort by id
    frame = pd.DataFrame({"id": ids})
    for c in FEATURES:
        frame[c] = rng.normal(size=n) * 2
    frame["y"] = rng.integers(0, len(CLASSES), n)
    frame["extra"] = "ignored"
    return frame


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> tuple[Path, pd.DataFrame]:
    """Three Parquet shards (plus a marker file a reader must skip) and their rows in file order."""
    d = tmp_path_factory.mktemp("input") / "table"
    d.mkdir()
    rng = np.random.default_rng(0)
    parts, start = [], 0
    for i, n in enumerate(SHARD_ROWS):
        part = _table(n, start, rng)
        part.to_parquet(d / f"part-{i}.parquet", index=False)
        parts.append(part)
        start += n
    (d / "_SUCCESS").write_text("")
    return d, pd.concat(parts, ignore_index=True)


def _score(model_dir: Path, inp: str, out: Path, home: Path, *extra: str) -> int:
    args = ["--model", str(model_dir), "--input", inp, "--output", str(out), "--home", str(home)]
    return score_main([*args, "--batch-size", "128", *extra])


def _expected(model_dir: Path, frame: pd.DataFrame) -> pd.DataFrame:
    from flowgmm.spec import load
    from pipeline.results.serving import predict_frame

    model, spec = load(model_dir)
    model.set_variance_scale(spec["variance_scale"])
    return predict_frame(model, spec, CLASSES, spec["ood_threshold"], frame[FEATURES].to_numpy(np.float32))


def _no_leftovers(out: Path) -> None:
    assert not [p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}")]


def _one_line(capsys) -> str:
    err = own_lines(capsys.readouterr().err)
    assert len(err) == 1, err
    return err[0]


def test_file_uri_input_is_scored_in_input_order_with_class_names(ray_local, model_dir, shards, tmp_path, capsys):
    d, frame = shards
    out = tmp_path / "scored.parquet"
    assert _score(model_dir, d.as_uri(), out, tmp_path / "home", "--actors", "2") == 0
    printed = capsys.readouterr().out
    assert f"scored {len(frame)} rows from 3 file(s)" in printed and "rows/s" in printed
    assert out.is_dir() and list(out.glob("*.parquet"))
    _no_leftovers(out)
    scored = pd.read_parquet(out)
    assert len(scored) == len(frame)
    np.testing.assert_array_equal(scored["id"].to_numpy(), frame["id"].to_numpy())
    np.testing.assert_array_equal(scored["y"].to_numpy(), frame["y"].to_numpy())
    assert "extra" not in scored.columns and list(scored.columns[:2]) == ["id", "label"]
    want = _expected(model_dir, frame)
    np.testing.assert_array_equal(scored["label"].to_numpy(), want["label"].to_numpy())
    np.testing.assert_allclose(scored["log_px"].to_numpy(), want["log_px"].to_numpy(), rtol=1e-5, atol=1e-4)
    assert scored["class"].tolist() == [CLASSES[k] for k in scored["label"]]
    assert set(scored["class"]) <= set(CLASSES) and len(set(scored["class"])) > 1
    probs = scored[[f"prob_{c}" for c in CLASSES]].to_numpy()
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-5)


def test_csv_in_csv_out_keeps_every_row(ray_local, model_dir, shards, tmp_path, capsys):
    _, frame = shards
    src = tmp_path / "new.csv"
    frame.iloc[:500].to_csv(src, index=False)
    out = tmp_path / "scored.csv"
    assert _score(model_dir, str(src), out, tmp_path / "home") == 0
    assert "scored 500 rows" in capsys.readouterr().out
    files = sorted(out.glob("*.csv"))
    scored = pd.concat([pd.read_csv(f) for f in files], ignore_index=True)
    np.testing.assert_array_equal(scored["id"].to_numpy(), frame["id"].to_numpy()[:500])
    assert scored["class"].tolist() == [CLASSES[k] for k in scored["label"]]


def test_the_input_label_and_kept_columns_pass_through_beside_the_predictions(
    ray_local, model_dir, shards, tmp_path, capsys
):
    # a user's table with ground truth under `label` (the convention) and other columns: nothing is dropped or
    # overwritten; a kept column whose name an output has is written as input_<name>
    _, frame = shards
    src = tmp_path / "labeled.csv"
    given = frame.iloc[:300].assign(label=lambda f: [CLASSES[k] for k in f["y"]], log_px="theirs")
    given.to_csv(src, index=False)
    out = tmp_path / "scored.csv"
    assert _score(model_dir, str(src), out, tmp_path / "home", "--keep", "extra,log_px,a") == 0
    capsys.readouterr()
    scored = pd.concat([pd.read_csv(f) for f in sorted(out.glob("*.csv"))], ignore_index=True)
    assert scored["input_label"].tolist() == given["label"].tolist()
    assert scored["class"].tolist() == [CLASSES[k] for k in scored["label"]]  # the prediction, under its own name
    assert scored["extra"].tolist() == ["ignored"] * 300 and scored["input_log_px"].tolist() == ["theirs"] * 300
    np.testing.assert_allclose(scored["a"], given["a"], rtol=1e-6)  # a feature column may be kept too
    want = _expected(model_dir, given)
    np.testing.assert_allclose(scored["log_px"], want["log_px"], rtol=1e-5, atol=1e-4)


def test_a_kept_column_the_input_lacks_is_one_line(model_dir, shards, tmp_path, capsys, no_ray):
    d, _ = shards
    out = tmp_path / "scored.parquet"
    assert _score(model_dir, str(d), out, tmp_path / "home", "--keep", "extra,notes") == 2
    err = _one_line(capsys)
    assert err.startswith(f"error: {d / 'part-0.parquet'}: --keep column 'notes' is not in the input")
    assert not out.exists()


def test_row_groups_give_order_keys_in_input_order(model_dir, shards, tmp_path):
    from flowgmm.spec import load
    from pipeline.results.score import check_input

    d, frame = shards
    src = tmp_path / "in"
    src.mkdir()
    for i, f in enumerate(sorted(d.glob("*.parquet"))):
        pd.read_parquet(f).to_parquet(src / f.name, index=False, row_group_size=64 + 32 * i)
    plan = check_input(str(src), load(model_dir)[1], "x")
    assert plan.rows == len(frame)
    sizes = [min(64 + 32 * i, n - k) for i, n in enumerate(SHARD_ROWS) for k in range(0, n, 64 + 32 * i)]
    assert [p.first for p in plan.pieces] == list(np.cumsum([0, *sizes[:-1]]))
    assert [p.path for p in plan.pieces] == sorted(p.path for p in plan.pieces)


def test_many_small_batches_over_row_groups_keep_input_order(ray_local, model_dir, shards, tmp_path, capsys):
    """Ray Data does not promise an actor pool's output order: the order key and the sort must restore it."""
    d, frame = shards
    src = tmp_path / "in"
    src.mkdir()
    for f in sorted(d.glob("*.parquet")):
        pd.read_parquet(f).to_parquet(src / f.name, index=False, row_group_size=50)
    out = tmp_path / "scored.parquet"
    args = ["--model", str(model_dir), "--input", str(src), "--output", str(out), "--home", str(tmp_path / "h")]
    assert score_main([*args, "--batch-size", "16", "--actors", "2"]) == 0
    scored = pd.read_parquet(out)
    assert "__order" not in scored.columns
    np.testing.assert_array_equal(scored["id"].to_numpy(), frame["id"].to_numpy())
    np.testing.assert_array_equal(scored["label"].to_numpy(), _expected(model_dir, frame)["label"].to_numpy())


def test_nan_feature_is_named_by_column_and_row_id(ray_local, model_dir, shards, tmp_path, capsys):
    _, frame = shards
    bad = frame.copy()
    bad.loc[420, "c"] = np.nan
    src = tmp_path / "nan.parquet"
    bad.to_parquet(src, index=False)
    out = tmp_path / "scored.parquet"
    assert _score(model_dir, str(src), out, tmp_path / "home") == 2
    err = _one_line(capsys)
    assert err.startswith("error: ") and str(src) in err
    assert "column 'c'" in err and f"row id {bad.loc[420, 'id']}" in err
    assert not out.exists()
    _no_leftovers(out)


@pytest.fixture
def no_ray(monkeypatch):
    """Bad input must be refused before Ray is touched."""

    def refuse(*_a, **_k):
        raise AssertionError("Ray was started for input that the schema check should have refused")

    monkeypatch.setattr("pipeline.results.score.connect", refuse)


def test_missing_feature_column_names_column_and_file(model_dir, shards, tmp_path, capsys, no_ray):
    d, frame = shards
    src = tmp_path / "in"
    src.mkdir()
    for f in sorted(d.glob("*.parquet")):
        (src / f.name).write_bytes(f.read_bytes())
    pd.read_parquet(d / "part-1.parquet").drop(columns=["c"]).to_parquet(src / "part-1.parquet", index=False)
    out = tmp_path / "scored.parquet"
    assert _score(model_dir, str(src), out, tmp_path / "home") == 2
    err = _one_line(capsys)
    assert f"{src / 'part-1.parquet'}: missing feature column 'c'" in err
    assert not out.exists()


def test_corrupt_parquet_file_is_named(model_dir, shards, tmp_path, capsys, no_ray):
    d, _ = shards
    src = tmp_path / "in"
    src.mkdir()
    for f in sorted(d.glob("*.parquet")):
        (src / f.name).write_bytes(f.read_bytes())
    whole = (src / "part-2.parquet").read_bytes()
    (src / "part-2.parquet").write_bytes(whole[: len(whole) // 2])
    out = tmp_path / "scored.parquet"
    assert _score(model_dir, src.as_uri(), out, tmp_path / "home") == 2
    err = _one_line(capsys)
    assert f"{src / 'part-2.parquet'}: truncated or corrupt Parquet file" in err
    assert not out.exists()


@pytest.mark.parametrize(
    "inp,out,needle",
    [
        ("nosuchscheme://bucket/x.parquet", "scored.parquet", "nosuchscheme://bucket/x.parquet: not a path or URI"),
        ("{tmp}/absent.parquet", "scored.parquet", "absent.parquet: input does not exist"),
        ("{table}", "scored.txt", "scored.txt: output must end in .parquet or .csv"),
        ("{tmp}", "scored.parquet", ": no .parquet files"),
    ],
)
def test_bad_locations_are_one_line(model_dir, shards, tmp_path, capsys, no_ray, inp, out, needle):
    inp = inp.format(tmp=tmp_path, table=shards[0])
    assert _score(model_dir, inp, tmp_path / out, tmp_path / "home") == 2
    err = _one_line(capsys)
    assert needle in err, err
    assert not (tmp_path / out).exists()


def test_model_that_cannot_be_loaded_is_one_line(shards, tmp_path, capsys, no_ray):
    assert _score(tmp_path / "no-model", str(shards[0]), tmp_path / "o.parquet", tmp_path / "home") == 2
    assert "no-model" in _one_line(capsys)


def test_remote_output_is_written_in_place_with_a_success_marker(ray_local, tmp_path):
    """A file system that is not the local one stands for s3/gcs: no rename, files in place, _SUCCESS last (with the
    row count); a previous output there is replaced."""
    import fsspec
    import pyarrow.fs as pafs
    import ray

    from pipeline.results.score import Location, write_output

    fs = pafs.PyFileSystem(pafs.FSSpecHandler(fsspec.filesystem("file")))
    target = tmp_path / "remote" / "scored.parquet"
    target.mkdir(parents=True)
    (target / "stale.parquet").write_bytes(b"old")
    (target / "_SUCCESS").write_text("7\n")
    loc = Location(fs, str(target), f"remote://{target}")
    assert not loc.local
    rows = write_output(ray.data.range(1000, override_num_blocks=4), loc, "parquet")
    assert rows == 1000
    assert (target / "_SUCCESS").read_text() == "1000\n"
    assert not (target / "stale.parquet").exists()
    assert sorted(pd.read_parquet(target)["id"]) == list(range(1000))


def test_signature_and_frame_carry_the_class_name(model_dir):
    from flowgmm.spec import load
    from pipeline.results.serving import predict_frame, signature

    model, spec = load(model_dir)
    outputs = signature(spec).outputs.input_names()
    assert outputs[-1] == "class" and outputs[0] == "label"
    x = np.random.default_rng(1).normal(size=(50, len(FEATURES))).astype(np.float32)
    frame = predict_frame(model, spec, CLASSES, -8.0, x)
    assert list(frame.columns) == outputs
    assert frame["class"].tolist() == [CLASSES[k] for k in frame["label"]]
