"""Preparation: splits, schema, manifest, idempotence, atomicity, MNIST in the paper's setting."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.config import DataSpec
from pipeline.core.errors import DataError
from pipeline.data import load_split, load_unlabeled_labels, prepare, shards
from pipeline.data.splits import split_counts


@pytest.fixture(scope="module")
def digits(data_home):
    return prepare(DataSpec(source="digits", n_labeled=50, n_val=40, shard_rows=256, seed=0), data_home)


def test_layout_schema_and_manifest(digits):
    root, m = digits.root, digits.manifest
    assert root.parent.name == "data" and root.name.startswith("digits-")
    for split in ("labeled", "unlabeled", "val", "test"):
        assert sorted(p.name for p in (root / split).iterdir())[0] == "part-00000.parquet"
    assert m["counts"]["labeled"] == 50 and m["counts"]["val"] == 40
    assert m["counts"]["unlabeled"] == 1797 - m["counts"]["test"] - 90
    assert m["class_counts"]["labeled"] == [5] * 10 and m["class_counts"]["val"] == [4] * 10
    assert digits.kind == "image" and digits.shape == (1, 8, 8) and digits.num_classes == 10
    assert m["dtype"] == "uint8" and len(digits.class_names) == 10 and m["seed"] == 0
    assert m["code_version"] and "labeled" in m["label_summary"] and "validation" in m["label_summary"]
    shards = m["shards"]["unlabeled"]
    assert len(shards) == -(-m["counts"]["unlabeled"] // 256) and all(len(s["sha256"]) == 64 for s in shards)
    t = pq.read_table(root / "unlabeled" / "part-00000.parquet")
    assert t.schema.field("id").type == pa.int64()
    assert t.schema.field("x").type == pa.list_(pa.uint8(), 64)
    assert t.schema.field("y").type == pa.int64()
    # labels of unlabeled rows never reach the Parquet shards
    assert all(t.column("y").null_count == len(t) for t in [pq.read_table(root / s["file"]) for s in shards])


def test_load_split_and_disjoint_ids(digits):
    ids = {}
    for split in ("labeled", "unlabeled", "val"):
        x, y, i = load_split(digits, split, with_ids=True)
        assert x.dtype == np.uint8 and x.shape == (digits.counts[split], 1, 8, 8) and y.dtype == np.int64
        assert len(np.unique(i)) == len(i)
        ids[split] = set(i.tolist())
    assert not (ids["labeled"] & ids["unlabeled"]) and not (ids["labeled"] & ids["val"])
    assert not (ids["val"] & ids["unlabeled"])
    _, yu = load_split(digits, "unlabeled")
    assert (yu == -1).all()
    hidden = load_unlabeled_labels(digits)
    assert hidden.shape == yu.shape and hidden.min() >= 0
    xl, yl = load_split(digits, "labeled")
    assert np.bincount(yl).tolist() == [5] * 10


def test_idempotent_and_seeded(digits, data_home):
    mtime = (digits.root / "manifest.json").stat().st_mtime_ns
    again = prepare(DataSpec(source="digits", n_labeled=50, n_val=40, shard_rows=256, seed=0), data_home)
    assert again.root == digits.root and (again.root / "manifest.json").stat().st_mtime_ns == mtime
    other = prepare(DataSpec(source="digits", n_labeled=50, n_val=40, shard_rows=256, seed=1), data_home)
    assert other.root != digits.root
    assert not np.array_equal(load_split(other, "labeled")[0], load_split(digits, "labeled")[0])


def test_corrupt_shard_is_rebuilt_and_detected(data_home):
    spec = DataSpec(source="moons", n_points=300, n_labeled=10, n_val=10, shard_rows=64)
    p = prepare(spec, data_home)
    f = p.root / p.manifest["shards"]["unlabeled"][1]["file"]
    f.write_bytes(f.read_bytes()[:100])
    with pytest.raises(DataError, match=str(f.name)):
        load_split(p, "unlabeled")
    with pytest.raises(DataError, match="checksum"):
        p.verify()
    q = prepare(spec, data_home)  # the manifest no longer matches its shards: rebuilt atomically
    assert q.root == p.root
    q.verify()
    assert len(load_split(q, "unlabeled")[0]) == q.counts["unlabeled"]


def test_interrupted_build_leaves_existing_data_untouched(data_home, monkeypatch):
    spec = DataSpec(source="circles", n_points=300, n_labeled=10, n_val=10, shard_rows=64)
    p = prepare(spec, data_home)
    before = {f.name: f.stat().st_mtime_ns for f in p.root.rglob("*")}
    calls = {"n": 0}
    real = shards.write_split

    def crash(*a, **k):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt("simulated interruption")
        return real(*a, **k)

    monkeypatch.setattr(shards, "write_split", crash)
    with pytest.raises(KeyboardInterrupt):
        prepare(spec, data_home, force=True)
    after = {f.name: f.stat().st_mtime_ns for f in p.root.rglob("*")}
    assert before == after
    assert not [d for d in p.root.parent.iterdir() if d.name.startswith((".tmp-", ".old-"))]


def test_vector_manifest_stats_and_generated_test_set(data_home):
    p = prepare(DataSpec(source="breast_cancer", n_labeled=20, n_val=20), data_home)
    xl, _ = load_split(p, "labeled")
    xu, _ = load_split(p, "unlabeled")
    tr = np.concatenate([xl, xu]).astype(np.float64)
    np.testing.assert_allclose(p.feature_mean, tr.mean(0), rtol=1e-5)
    np.testing.assert_allclose(p.feature_std, tr.std(0), rtol=1e-5)
    assert p.manifest["feature_names"][0] == "mean radius" and p.manifest["dtype"] == "float32"
    assert pq.read_table(p.root / "labeled" / "part-00000.parquet").schema.field("x").type == pa.list_(pa.float32(), 30)
    m = prepare(DataSpec(source="pinwheel", n_points=500, n_test=200, n_labeled=10, n_val=10), data_home)
    assert m.counts == {"labeled": 10, "unlabeled": 480, "val": 10, "test": 200} and m.num_classes == 5


def test_table_manifest_carries_feature_names(data_home, tmp_path):
    rng = np.random.default_rng(0)
    t = pa.table(
        {"u": rng.normal(size=90), "v": rng.normal(size=90), "w": rng.normal(size=90), "cls": np.arange(90) % 3}
    )
    pq.write_table(t, tmp_path / "mine.parquet")
    p = prepare(
        DataSpec(
            source="table",
            path=str(tmp_path / "mine.parquet"),
            feature_columns=("u", "w"),
            label_column="cls",
            n_labeled=9,
            n_val=9,
        ),
        data_home,
    )
    assert p.manifest["feature_names"] == ["u", "w"] and p.shape == (2,) and p.num_classes == 3


def test_ray_data_reads_shards_into_torch(ray_local, digits):
    import ray
    import torch

    ds = ray.data.read_parquet(str(digits.split_dir("labeled"))).select_columns(["id", "x", "y"])
    got = list(ds.iter_torch_batches(batch_size=1000))
    x = torch.cat([b["x"] for b in got])
    ids = torch.cat([b["id"] for b in got])
    assert x.dtype == torch.uint8 and x.shape == (50, 64)
    ref_x, ref_y, ref_ids = load_split(digits, "labeled", with_ids=True)
    order = np.argsort(ids.numpy())
    np.testing.assert_array_equal(x.numpy()[order], ref_x.reshape(50, 64)[np.argsort(ref_ids)])


def test_mnist_paper_split(shared_data_dir, data_home):
    """The paper's MNIST setting, fully prepared (~3 s): 1000 labeled / 1000 val / 58000 unlabeled / 10000 test,
    with FashionMNIST and notMNIST test sets as out-of-domain splits."""
    spec = DataSpec.paper("mnist", data_dir=str(shared_data_dir), ood=("fashion_mnist", "notmnist"))
    p = prepare(spec, data_home)
    c = p.counts
    assert (c["labeled"], c["val"], c["unlabeled"], c["test"]) == (1000, 1000, 58000, 10000)
    assert c["ood/fashion_mnist"] == 10000 and c["ood/notmnist"] == 10000
    assert p.manifest["class_counts"]["labeled"] == [100] * 10 and p.manifest["class_counts"]["val"] == [100] * 10
    assert p.manifest["class_counts"]["test"] == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    assert p.shape == (1, 28, 28) and sorted(p.ood_names) == ["fashion_mnist", "notmnist"]
    assert p.split_dir("ood/notmnist").is_dir()
    x, y = load_split(p, "ood/notmnist")
    assert x.shape == (10000, 1, 28, 28) and set(np.unique(y)) == set(range(10))
    assert any(str(shared_data_dir) in k for k in p.manifest["inputs"])
    assert split_counts(spec)["counts"] == {"labeled": 1000, "unlabeled": 58000, "val": 1000, "test": 10000}


def test_mnist_capped(shared_data_dir, data_home, monkeypatch):
    monkeypatch.setenv("FLOWGMM_DATA", str(shared_data_dir))
    p = prepare(
        DataSpec(source="mnist", n_labeled=20, n_val=20, n_unlabeled=500, n_test=300, shard_rows=128), data_home
    )
    assert p.counts == {"labeled": 20, "unlabeled": 500, "val": 20, "test": 300}
    assert len(p.manifest["shards"]["unlabeled"]) == 4


def test_cifar10_and_svhn_prepare(tmp_path, data_home):
    from test_data_sources import write_cifar10_binary, write_svhn_mat

    write_cifar10_binary(tmp_path, n_train=20, n_test=30)
    write_svhn_mat(tmp_path, n_train=100, n_test=30)
    c = prepare(DataSpec(source="cifar10", data_dir=str(tmp_path), n_labeled=10, n_val=10, ood=("svhn",)), data_home)
    assert c.shape == (3, 32, 32) and c.counts["ood/svhn"] == 30 and c.counts["unlabeled"] == 80
    x, _ = load_split(c, "test")
    assert x.shape == (30, 3, 32, 32) and x.dtype == np.uint8
