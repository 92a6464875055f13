"""Sources: generated 2-D sets, scikit-learn sets, IDX (MNIST family), CIFAR-10 binary, SVHN .mat, user tables."""

from __future__ import annotations

import io
import tarfile

import numpy as np
import pytest

from pipeline.config import DataSpec
from pipeline.data import sources as S


@pytest.mark.parametrize("name,k", [("moons", 2), ("circles", 2), ("eight_gaussians", 8), ("pinwheel", 5)])
def test_generated_sets_are_seeded(name, k):
    a = S.load_source(DataSpec(source=name, n_points=400, seed=3))
    b = S.load_source(DataSpec(source=name, n_points=400, seed=3))
    c = S.load_source(DataSpec(source=name, n_points=400, seed=4))
    assert a.kind == "vector" and a.shape == (2,) and a.num_classes == k
    assert a.x_train.shape == (400, 2) and a.x_train.dtype == np.float32 and a.y_train.dtype == np.int64
    assert set(np.unique(a.y_train)) == set(range(k))
    np.testing.assert_array_equal(a.x_train, b.x_train)
    assert not np.array_equal(a.x_train, c.x_train)
    assert not np.array_equal(a.x_train, a.x_test)  # the test set comes from another seed
    assert np.isfinite(a.x_train).all()


def test_sklearn_sets():
    d = S.load_source(DataSpec(source="digits"))
    assert d.kind == "image" and d.shape == (1, 8, 8) and d.x_train.dtype == np.uint8
    assert d.x_train.max() == 255 and len(d.x_train) + len(d.x_test) == 1797
    b = S.load_source(DataSpec(source="breast_cancer"))
    assert b.kind == "vector" and b.shape == (30,) and b.num_classes == 2 and len(b.feature_names) == 30
    w = S.load_source(DataSpec(source="wine"))
    assert w.num_classes == 3 and w.shape == (13,)


def test_mnist_family_idx(shared_data_dir):
    m = S.load_source(DataSpec(source="mnist", data_dir=str(shared_data_dir)))
    assert m.x_train.shape == (60000, 1, 28, 28) and m.x_test.shape == (10000, 1, 28, 28)
    assert np.bincount(m.y_train).tolist() == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    n = S.load_source(DataSpec(source="notmnist", data_dir=str(shared_data_dir)), test_only=True)
    assert n.x_train is None and n.x_test.shape == (10000, 1, 28, 28) and n.class_names[0] == "A"


def test_data_dir_from_environment(shared_data_dir, monkeypatch):
    monkeypatch.setenv("FLOWGMM_DATA", str(shared_data_dir))
    f = S.load_source(DataSpec(source="fashion_mnist"), test_only=True)
    assert f.x_test.shape == (10000, 1, 28, 28) and f.class_names[-1] == "Ankle boot"


def test_missing_mnist_fails_under_ci(monkeypatch, tmp_path):
    """Under CI=true a missing data directory is a failure, not a skip."""
    import conftest

    monkeypatch.setenv("CI", "true")
    monkeypatch.setenv("FLOWGMM_DATA", str(tmp_path / "nowhere"))
    with pytest.raises(pytest.fail.Exception):
        conftest.require_mnist_dir()
    monkeypatch.setenv("CI", "false")
    with pytest.raises(pytest.skip.Exception):
        conftest.require_mnist_dir()


# --------------------------------------------------------------------------- small files in the standard formats
def write_cifar10_binary(root, n_train=20, n_test=10, seed=0, as_tar=False):
    rng = np.random.default_rng(seed)
    d = root / "cifar-10-batches-bin"
    d.mkdir(parents=True, exist_ok=True)
    blobs = {}
    labels = {}
    for name, n in [(f"data_batch_{i}.bin", n_train) for i in range(1, 6)] + [("test_batch.bin", n_test)]:
        y = rng.integers(0, 10, n).astype(np.uint8)
        x = rng.integers(0, 256, (n, 3072)).astype(np.uint8)
        blobs[name] = np.concatenate([y[:, None], x], 1).tobytes()
        labels[name] = (y, x.reshape(n, 3, 32, 32))
    blobs["batches.meta.txt"] = (
        "\n".join(["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]) + "\n"
    ).encode()
    if as_tar:
        d.rmdir()
        with tarfile.open(root / "cifar-10-binary.tar.gz", "w:gz") as tf:
            for name, b in blobs.items():
                ti = tarfile.TarInfo(f"cifar-10-batches-bin/{name}")
                ti.size = len(b)
                tf.addfile(ti, io.BytesIO(b))
    else:
        for name, b in blobs.items():
            (d / name).write_bytes(b)
    return labels


@pytest.mark.parametrize("as_tar", [False, True])
def test_cifar10_binary(tmp_path, as_tar):
    truth = write_cifar10_binary(tmp_path, as_tar=as_tar)
    r = S.load_source(DataSpec(source="cifar10", data_dir=str(tmp_path)))
    assert r.shape == (3, 32, 32) and r.x_train.shape == (100, 3, 32, 32) and r.x_test.shape == (10, 3, 32, 32)
    np.testing.assert_array_equal(r.x_test, truth["test_batch.bin"][1])
    np.testing.assert_array_equal(r.y_test, truth["test_batch.bin"][0].astype(np.int64))
    np.testing.assert_array_equal(r.x_train[:20], truth["data_batch_1.bin"][1])
    assert r.class_names[9] == "truck"


def write_svhn_mat(root, n_train=30, n_test=12, seed=0):
    import scipy.io

    rng = np.random.default_rng(seed)
    d = root / "SVHN"
    d.mkdir(parents=True, exist_ok=True)
    out = {}
    for split, n in (("train", n_train), ("test", n_test)):
        X = rng.integers(0, 256, (32, 32, 3, n)).astype(np.uint8)
        y = rng.integers(1, 11, (n, 1)).astype(np.uint8)  # 10 means digit 0
        y[0, 0] = 10
        scipy.io.savemat(d / f"{split}_32x32.mat", {"X": X, "y": y})
        out[split] = (X, y)
    return out


def test_svhn_mat(tmp_path):
    truth = write_svhn_mat(tmp_path)
    r = S.load_source(DataSpec(source="svhn", data_dir=str(tmp_path)))
    X, y = truth["test"]
    assert r.x_test.shape == (12, 3, 32, 32) and r.x_train.shape == (30, 3, 32, 32)
    np.testing.assert_array_equal(r.x_test[3], X[:, :, :, 3].transpose(2, 0, 1))
    assert r.y_test[0] == 0 and set(r.y_test.tolist()) <= set(range(10))
    np.testing.assert_array_equal(r.y_test, np.where(y[:, 0] == 10, 0, y[:, 0]))


# --------------------------------------------------------------------------- user tables
def test_table_parquet_with_unlabeled_rows(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(0)
    n = 60
    lab = [int(v) if i % 3 else None for i, v in enumerate(rng.integers(0, 3, n))]
    t = pa.table({"a": rng.normal(size=n), "b": rng.integers(0, 5, n), "label": pa.array(lab, pa.int64())})
    pq.write_table(t, tmp_path / "t.parquet")
    r = S.load_source(DataSpec(source="table", path=str(tmp_path / "t.parquet")))
    assert r.kind == "vector" and r.shape == (2,) and r.feature_names == ["a", "b"] and r.num_classes == 3
    assert (r.y_test >= 0).all()  # the test split is held out of the labeled rows
    assert (r.y_train == -1).sum() == 20  # unlabeled rows stay in the pool
    assert len(r.x_train) + len(r.x_test) == n


def test_table_csv_and_image_column(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(1)
    (tmp_path / "t.csv").write_text(
        "f1,f2,label\n" + "".join(f"{i * 0.1},{i % 7},{i % 2}\n" for i in range(40)) + "1.0,2.0,\n"
    )
    r = S.load_source(DataSpec(source="table", path=str(tmp_path / "t.csv")))
    assert r.shape == (2,) and r.num_classes == 2 and (r.y_train == -1).sum() == 1
    imgs = rng.integers(0, 256, (30, 64)).astype(np.uint8)
    t = pa.table({"img": pa.array([bytes(v) for v in imgs], pa.binary()), "label": np.arange(30) % 2})
    pq.write_table(t, tmp_path / "img.parquet")
    r = S.load_source(DataSpec(source="table", path=str(tmp_path / "img.parquet"), image_column="img"))
    assert r.kind == "image" and r.shape == (1, 8, 8) and r.x_train.dtype == np.uint8


def test_table_text_labels_are_classes_in_sorted_order(tmp_path):
    """Text (and categorical) labels: the classes are the sorted distinct labels, empty or null = unlabeled; the
    names go with the source (manifest, model); non-contiguous integers map the same way."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    lab = ["dog", None, "cat", "", " bird ", "dog", "cat", "bird", "dog", "cat", "bird", None] * 5
    t = pa.table({"a": np.arange(60.0), "label": pa.array(lab).dictionary_encode()})
    pq.write_table(t, tmp_path / "t.parquet")
    r = S.load_source(DataSpec(source="table", path=str(tmp_path / "t.parquet")))
    assert r.class_names == ["bird", "cat", "dog"] and r.num_classes == 3
    x = np.concatenate([r.x_train[:, 0], r.x_test[:, 0]]).astype(int)
    y = np.concatenate([r.y_train, r.y_test])
    expect = {"bird": 0, "cat": 1, "dog": 2, "": -1, None: -1}
    assert [int(v) for v in y] == [expect[lab[i].strip() if lab[i] else lab[i]] for i in x]
    (tmp_path / "n.csv").write_text("a,label\n" + "".join(f"{i},{[1, 2, 5][i % 3]}\n" for i in range(30)))
    r = S.load_source(DataSpec(source="table", path=str(tmp_path / "n.csv")))
    assert r.class_names == ["1", "2", "5"] and set(np.r_[r.y_train, r.y_test].tolist()) == {0, 1, 2}


def test_automatic_split_sizes():
    """n_labeled / n_val unset: validation = 20% of each class's labeled rows (at least 1), training = the other
    labeled rows; unlabeled rows stay unlabeled. One explicit size keeps its meaning."""
    from pipeline.core.errors import DataError
    from pipeline.data.splits import choose_splits

    y = np.r_[np.zeros(12, int), np.ones(3, int), -np.ones(50, int)]
    s = choose_splits(y, 2, None, None, None, seed=0)
    assert np.bincount(y[s["val"]]).tolist() == [2, 1] and np.bincount(y[s["labeled"]]).tolist() == [10, 2]
    assert len(s["unlabeled"]) == 50 and (y[s["unlabeled"]] == -1).all()
    assert set(s["labeled"]) | set(s["val"]) == set(np.flatnonzero(y >= 0))
    s = choose_splits(y, 2, 4, None, None, seed=0)
    assert len(s["labeled"]) == 4 and np.bincount(y[s["val"]]).tolist() == [2, 1] and len(s["unlabeled"]) == 58
    s = choose_splits(y, 2, None, 2, None, seed=0)
    assert np.bincount(y[s["val"]]).tolist() == [1, 1] and np.bincount(y[s["labeled"]]).tolist() == [11, 2]
    with pytest.raises(DataError, match="class 'b' has 1 labeled rows; automatic sizes"):
        choose_splits(np.r_[y[:13], -np.ones(5, int)], 2, None, None, None, seed=0, class_names=["a", "b"])
    with pytest.raises(DataError, match="empty split 'unlabeled': all 15 pool rows are labeled.*set data.n_labeled"):
        choose_splits(y[:15], 2, None, None, None, seed=0)
