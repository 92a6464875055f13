"""Bad input: a one-line DataError naming the file and the column or value, exit status 2 from the CLI, and an
already-prepared data set left untouched (manifest mtime and every shard checksum unchanged)."""

from __future__ import annotations

import gzip
import hashlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.config import DataSpec, IngestSpec
from pipeline.core.errors import DataError
from pipeline.data import build_datasets, load_split, prepare, steps_per_epoch

REPO = Path(__file__).resolve().parent.parent
N = 120


def good_table(rng=None, n=N) -> pa.Table:
    rng = rng or np.random.default_rng(0)
    return pa.table(
        {
            "f1": rng.normal(size=n),
            "f2": rng.normal(size=n),
            "f3": rng.normal(size=n),
            "label": pa.array(np.arange(n) % 3, pa.int64()),
        }
    )


def snapshot(home: Path) -> dict:
    data = home / "data"
    return {
        str(f.relative_to(data)): (f.stat().st_mtime_ns, hashlib.sha256(f.read_bytes()).hexdigest())
        for f in sorted(data.rglob("*"))
        if f.is_file() and not f.name.endswith(".lock")
    }


@pytest.fixture
def table_home(tmp_path):
    """A table data set prepared from good files; tests then break the same files and prepare again."""
    home = tmp_path / "home"
    path = tmp_path / "train.parquet"
    pq.write_table(good_table(), path)
    spec = DataSpec(source="table", path=str(path), n_labeled=9, n_val=9)
    prepared = prepare(spec, home)
    return home, path, spec, prepared, snapshot(home)


def expect_error(spec, home, before, *needles):
    with pytest.raises(DataError) as ei:
        prepare(spec, home)
    msg = str(ei.value)
    assert "\n" not in msg, msg
    for n in needles:
        assert str(n) in msg, (n, msg)
    assert snapshot(home) == before, "existing prepared data was modified"
    assert not [p for p in (home / "data").iterdir() if p.name.startswith((".tmp-", ".old-"))]
    return msg


def test_missing_column(table_home):
    home, path, spec, _, before = table_home
    pq.write_table(good_table().drop(["label"]), path)
    expect_error(spec, home, before, path, "missing column 'label'")
    pq.write_table(good_table(), path)
    expect_error(DataSpec(**{**spec.__dict__, "feature_columns": ("f1", "f9")}), home, before, path, "'f9'")


def test_extra_column(table_home, tmp_path):
    home, path, spec, _, before = table_home
    test_path = tmp_path / "test.parquet"
    pq.write_table(good_table(n=30).append_column("leak", pa.array(np.zeros(30))), test_path)
    s = DataSpec(**{**spec.__dict__, "test_path": str(test_path)})
    expect_error(s, home, before, test_path, "extra column 'leak'")


def test_wrong_dtype(table_home):
    home, path, spec, _, before = table_home
    t = good_table()
    t = t.set_column(1, "f2", pa.array([f"v{i}" for i in range(N)]))  # text is one-hot encoded, up to 32 values
    pq.write_table(t, path)
    expect_error(spec, home, before, path, "column 'f2'", f"{N} distinct text values")
    t = good_table().set_column(1, "f2", pa.array([[float(i)] for i in range(N)]))
    pq.write_table(t, path)
    expect_error(spec, home, before, path, "column 'f2'", "dtype list")
    t = good_table().set_column(3, "label", pa.array([[i % 3] for i in range(N)]))  # text labels are fine; lists not
    pq.write_table(t, path)
    expect_error(spec, home, before, path, "column 'label'", "list")


def test_wrong_shape(table_home, tmp_path):
    home, path, spec, _, before = table_home
    imgs = [bytes(64)] * 50 + [bytes(49)]
    p = tmp_path / "img.parquet"
    pq.write_table(pa.table({"img": pa.array(imgs, pa.binary()), "label": np.arange(51) % 2}), p)
    expect_error(
        DataSpec(source="table", path=str(p), image_column="img", n_labeled=4, n_val=4),
        home,
        before,
        p,
        "column 'img'",
        "sizes",
    )


def test_ood_shape_mismatch(table_home, shared_data_dir):
    home, _, _, _, before = table_home
    from test_data_sources import write_cifar10_binary  # noqa: F401  (same directory)

    spec = DataSpec(source="digits", n_labeled=10, n_val=10, ood=("notmnist",), data_dir=str(shared_data_dir))
    expect_error(spec, home, before, "t10k-images", "notmnist", "(1, 28, 28)", "(1, 8, 8)")


def test_labels_outside_range(table_home):
    home, path, spec, _, before = table_home
    t = good_table()
    lab = np.arange(N) % 3
    lab[17] = 7
    pq.write_table(t.set_column(3, "label", pa.array(lab, pa.int64())), path)
    expect_error(DataSpec(**{**spec.__dict__, "num_classes": 3}), home, before, path, "label 7", "[0, 3)")
    lab[17] = -2
    pq.write_table(t.set_column(3, "label", pa.array(lab, pa.int64())), path)
    expect_error(spec, home, before, path, "label -2", "row 17", "negative")


def _two_class(n: int = 300, labeled_every: int = 10) -> tuple[pa.Table, list]:
    """A two-class table, every ``labeled_every``-th row labeled ('no'/'yes'), the rest unlabeled (null)."""
    rng = np.random.default_rng(3)
    lab = [("no", "yes")[i % 2] if i % labeled_every == 0 or i % labeled_every == 1 else None for i in range(n)]
    return pa.table({"f1": rng.normal(size=n), "f2": rng.normal(size=n)}), lab


def test_stray_label_is_named_with_its_row(table_home, tmp_path):
    """One row labeled 99 in a 0/1 table: without data.num_classes it is a class of one row, named with the row;
    with data.num_classes=2 it is outside [0, 2), named with the row."""
    home, _, _, _, before = table_home
    feats, lab = _two_class()
    y = [None if v is None else int(v == "yes") for v in lab]
    y[40] = 99
    p = tmp_path / "stray.parquet"
    pq.write_table(feats.append_column("label", pa.array(y, pa.int64())), p)
    spec = DataSpec(source="table", path=str(p))
    msg = expect_error(spec, home, before, p, "class '99'", "1 labeled row", "(row 40)", "at least 3 per class")
    assert "n_labeled" not in msg and "100 classes" not in msg
    expect_error(DataSpec(source="table", path=str(p), num_classes=2), home, before, p, "label 99 at row 40", "[0, 2)")
    t = tmp_path / "test.parquet"  # a test table's label that the train table does not have
    pq.write_table(pa.table({"f1": [0.0, 1.0], "f2": [0.0, 1.0], "label": pa.array([1, 7], pa.int64())}), t)
    y[40] = None
    pq.write_table(feats.append_column("label", pa.array(y, pa.int64())), p)
    expect_error(DataSpec(source="table", path=str(p), test_path=str(t)), home, before, t, "label 7 at row 1")


def test_single_labeled_row(table_home, tmp_path):
    home, _, _, _, before = table_home
    feats, _ = _two_class(n=50)
    p = tmp_path / "one.csv"
    lab = [""] * 50
    lab[7] = "yes"
    text = "f1,f2,label\n" + "".join(f"{a},{b},{c}\n" for a, b, c in zip(*feats.to_pydict().values(), lab))
    p.write_text(text)
    msg = expect_error(DataSpec(source="table", path=str(p)), home, before, p, "single class 'yes'", "1 labeled row")
    assert "empty split" not in msg
    lab[8] = "no"  # two classes, one row each: the class minimum names the class and its row
    p.write_text("f1,f2,label\n" + "".join(f"{a},{b},{c}\n" for a, b, c in zip(*feats.to_pydict().values(), lab)))
    expect_error(DataSpec(source="table", path=str(p)), home, before, p, "class 'no' has 1 labeled row (row 8)")


def test_text_labels_with_num_classes(table_home, tmp_path):
    home, _, _, _, before = table_home
    feats, lab = _two_class()
    p = tmp_path / "text.parquet"
    pq.write_table(feats.append_column("label", pa.array(lab)), p)
    expect_error(
        DataSpec(source="table", path=str(p), num_classes=2), home, before, p, "text labels", "data.num_classes=2"
    )


def test_too_few_labeled_rows_for_explicit_sizes(table_home, tmp_path):
    """The issue's failure: explicit sizes larger than the labels name the class and point at automatic sizes."""
    home, _, _, _, before = table_home
    feats, lab = _two_class()
    p = tmp_path / "few.parquet"
    pq.write_table(feats.append_column("label", pa.array(lab)), p)
    spec = DataSpec(source="table", path=str(p), n_labeled=20, n_val=60)
    msg = expect_error(spec, home, before, p, "n_val=60 needs 30", "leave them unset")
    assert "class '0'" in msg or "class 'no'" in msg, msg  # the name once prepare passes class_names


def test_inf_features_are_named_and_nan_is_a_missing_cell(table_home):
    home, path, spec, _, before = table_home
    f3 = np.random.default_rng(0).normal(size=N)
    f3[42] = np.inf
    pq.write_table(good_table().set_column(2, "f3", pa.array(f3)), path)
    expect_error(spec, home, before, path, "column 'f3'", "row 42")
    f3[42] = np.nan  # a gap: imputed with the training mean, an indicator column beside it (pipeline.data.encoding)
    pq.write_table(good_table().set_column(2, "f3", pa.array(f3)), path)
    enc = {e["column"]: e for e in prepare(spec, home).manifest["encoding"]}
    assert enc["f3"]["indicator"] and not enc["f1"]["indicator"]


def test_nan_in_csv_is_a_missing_cell(table_home, tmp_path):
    home, _, _, _, _ = table_home
    p = tmp_path / "t.csv"
    p.write_text("a,b,label\n" + "".join(f"{i},{i},{i % 2}\n" for i in range(40)) + "1,nan,0\n")
    prepared = prepare(DataSpec(source="table", path=str(p), n_labeled=4, n_val=4), home)
    assert prepared.manifest["feature_names"] == ["a", "b", "b missing"]


def test_fewer_labeled_than_classes(table_home):
    home, _, spec, _, before = table_home
    expect_error(DataSpec(**{**spec.__dict__, "n_labeled": 2}), home, before, "n_labeled=2", "3 classes")
    expect_error(DataSpec(source="digits", n_labeled=5), home, before, "load_digits", "n_labeled=5")


def test_empty_split(table_home, tmp_path):
    home, path, spec, _, before = table_home
    expect_error(DataSpec(**{**spec.__dict__, "n_unlabeled": 0}), home, before, path, "empty split 'unlabeled'")
    expect_error(DataSpec(**{**spec.__dict__, "n_val": 0}), home, before, "empty split 'val'")
    empty = tmp_path / "test.parquet"
    pq.write_table(good_table(n=0), empty)
    expect_error(DataSpec(**{**spec.__dict__, "test_path": str(empty)}), home, before, empty, "empty split 'test'")


def test_truncated_or_corrupt_parquet(table_home):
    home, path, spec, _, before = table_home
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    expect_error(spec, home, before, path, "corrupt or truncated Parquet")
    path.write_bytes(b"PAR1" + os.urandom(200) + b"PAR1")
    expect_error(spec, home, before, path, "corrupt or truncated Parquet")


def test_corrupt_prepared_shard_is_named(table_home, ray_local):
    """A damaged shard of a prepared set is named before Ray reads it (ingest) and by load_split."""
    _, _, _, prepared, _ = table_home
    f = prepared.root / prepared.manifest["shards"]["labeled"][0]["file"]
    f.write_bytes(f.read_bytes()[:-40])
    with pytest.raises(DataError, match=str(f)):
        build_datasets(prepared)
    with pytest.raises(DataError, match=str(f)):
        load_split(prepared, "labeled")


def test_data_dir_without_expected_files(table_home, tmp_path):
    home, _, _, _, before = table_home
    empty = tmp_path / "data"
    empty.mkdir()
    expect_error(DataSpec(source="mnist", data_dir=str(empty)), home, before, empty, "train-images-idx3-ubyte.gz")
    expect_error(DataSpec(source="cifar10", data_dir=str(empty)), home, before, empty, "cifar-10-batches-bin")
    expect_error(DataSpec(source="svhn", data_dir=str(empty)), home, before, empty, "train_32x32.mat")
    expect_error(DataSpec(source="mnist", data_dir=str(tmp_path / "nope")), home, before, "nope", "does not exist")
    # a truncated IDX file is named too
    raw = empty / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for s, n in (("train", 60), ("t10k", 10)):
        with gzip.open(raw / f"{s}-images-idx3-ubyte.gz", "wb") as g:
            g.write(bytes([0, 0, 8, 3]) + n.to_bytes(4, "big") + (28).to_bytes(4, "big") * 2 + bytes(100))
        with gzip.open(raw / f"{s}-labels-idx1-ubyte.gz", "wb") as g:
            g.write(bytes([0, 0, 8, 1]) + n.to_bytes(4, "big") + bytes(n))
    expect_error(DataSpec(source="mnist", data_dir=str(empty)), home, before, "images-idx3-ubyte.gz", "truncated")


def test_too_few_unlabeled_rows_for_workers(table_home):
    _, _, _, prepared, _ = table_home
    with pytest.raises(DataError, match="unlabeled"):
        steps_per_epoch(prepared, IngestSpec(unlabeled_batch=1000), world_size=2)


def test_cli_exit_status_and_one_line(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "pipeline.data",
            "--source",
            "mnist",
            "--data-dir",
            str(tmp_path / "missing"),
            "--home",
            str(tmp_path / "home"),
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=120,
    )
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "missing" in lines[0]
