"""Ingest: augmentation, in-memory stream, and Ray Train step parity with 2 workers (a mismatch hangs DDP)."""

from __future__ import annotations

import json
import sys
from dataclasses import replace

import numpy as np
import pytest
import torch

from bench.harness import probe_loop
from pipeline.config import DataSpec, IngestSpec
from pipeline.data import load_split, prepare
from pipeline.data.augment import jitter_vectors, translate_images
from pipeline.data.ingest import build_datasets, data_config, steps_per_epoch
from pipeline.data.stream import SSLStream


@pytest.fixture(scope="module")
def digits_uneven(data_home):
    # 301 unlabeled rows: 150 per worker with 2 workers, 9 steps of 16, and 6 + 1 rows that do not divide evenly
    return prepare(DataSpec(source="digits", n_labeled=50, n_val=20, n_unlabeled=301, shard_rows=64), data_home)


@pytest.fixture(scope="module")
def moons(data_home):
    return prepare(DataSpec(source="moons", n_points=600, n_labeled=100, n_val=20, shard_rows=100), data_home)


def test_translate_images():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(64, 1, 8, 8)
    y = translate_images(x, 2, g, "zero")
    assert y.shape == x.shape
    # a zero-padded shift keeps a 4x4 centre block of every image (shift <= 2 each way)
    for i in range(8):
        assert any(
            torch.equal(y[i, :, 2:6, 2:6], x[i, :, 2 - dy : 6 - dy, 2 - dx : 6 - dx])
            for dy in range(-2, 3)
            for dx in range(-2, 3)
        )
    assert not torch.equal(y, x)
    assert torch.equal(
        translate_images(x, 2, torch.Generator().manual_seed(5), "reflect"),
        translate_images(x, 2, torch.Generator().manual_seed(5), "reflect"),
    )
    assert torch.equal(translate_images(x, 0, g), x)


def test_jitter_vectors_scale():
    g = torch.Generator().manual_seed(0)
    x = torch.zeros(20000, 2)
    scale = torch.tensor([0.05 * 1.0, 0.05 * 10.0])
    d = jitter_vectors(x, scale, g)
    np.testing.assert_allclose(d.std(0).numpy(), scale.numpy(), rtol=0.05)


def test_in_memory_stream_equal_steps_and_shapes(digits_uneven):
    spec = IngestSpec(labeled_batch=16, unlabeled_batch=16)
    assert steps_per_epoch(digits_uneven, spec, 2) == 9 and steps_per_epoch(digits_uneven, spec, 1) == 18
    seen = []
    for rank in range(2):
        s = SSLStream.in_memory(digits_uneven, spec, world_size=2, rank=rank, seed=0)
        steps = list(s.epoch(0))
        assert len(steps) == 9
        st = steps[0]
        assert st.x_lab.shape == (16, 1, 8, 8) and st.x_unl.shape == (16, 1, 8, 8) and st.x_unl2.shape == (16, 1, 8, 8)
        assert st.x_lab.dtype == torch.float32 and st.y_lab.dtype == torch.int64
        assert 0.0 <= float(st.x_unl.min()) and float(st.x_unl.max()) <= 1.0
        assert not torch.equal(st.x_unl, st.x_unl2)  # two augmentations of the same rows
        seen.append(torch.cat([t.x_unl for t in steps]))
    assert seen[0].shape == seen[1].shape


def test_in_memory_stream_is_deterministic(moons):
    spec = IngestSpec(labeled_batch=8, unlabeled_batch=32)
    a = list(SSLStream.in_memory(moons, spec, 2, 1, seed=3).epoch(4))
    b = list(SSLStream.in_memory(moons, spec, 2, 1, seed=3).epoch(4))
    c = list(SSLStream.in_memory(moons, spec, 2, 1, seed=3).epoch(5))
    assert all(torch.equal(p.x_unl, q.x_unl) and torch.equal(p.y_lab, q.y_lab) for p, q in zip(a, b))
    assert not torch.equal(a[0].x_unl, c[0].x_unl)
    # a resumed stream (started at a global step) yields exactly what an uninterrupted one yields there
    s = SSLStream.in_memory(moons, spec, 2, 1, seed=3)
    k = 4 * s.steps_per_epoch + 2
    resumed = s.batches(start=k)
    for p in a[2:]:
        q = next(resumed)
        assert torch.equal(p.x_lab, q.x_lab) and torch.equal(p.x_unl, q.x_unl) and torch.equal(p.x_unl2, q.x_unl2)
    # vectors: raw space, noise in standardized units (noise_std * feature_std)
    s = SSLStream.in_memory(moons, IngestSpec(augment=False, labeled_batch=8, unlabeled_batch=32), 1, 0, seed=0)
    st = next(iter(s.epoch(0)))
    assert st.x_unl.shape == (32, 2) and torch.equal(st.x_unl, st.x_unl2)
    xu, _ = load_split(moons, "unlabeled")
    assert set(map(tuple, st.x_unl.numpy().tolist())) <= set(map(tuple, xu.tolist()))


def _fit(prepared, ispec, out_dir, epochs=2, seed=1, materialize=False, loop=probe_loop):
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    datasets = build_datasets(prepared, seed=seed)
    if materialize:  # as pipeline/train/trainer.py does for small unlabeled sets
        datasets["unlabeled"] = datasets["unlabeled"].materialize()
    trainer = TorchTrainer(
        loop,
        train_loop_config={
            "prepared": prepared,
            "ingest": ispec.__dict__,
            "epochs": epochs,
            "out_dir": str(out_dir),
            "seed": seed,
        },
        scaling_config=ScalingConfig(num_workers=2, resources_per_worker={"CPU": 0.5}),
        datasets=datasets,
        dataset_config=data_config(ispec),
        run_config=RunConfig(name=f"ingest-{out_dir.name}", storage_path=str(out_dir.parent / "ray_results")),
    )
    trainer.fit()
    if loop is not probe_loop:
        return None
    return [json.loads((out_dir / f"rank-{r}.json").read_text()) for r in range(2)]


def _record_unlabeled_rows(config: dict) -> None:
    """Ray Train function (pickled by value, as a nested function would be): the unlabeled rows of this rank's
    first epoch, in order, to ``<out_dir>/rows-<rank>.npy``."""
    from pathlib import Path

    import numpy as np
    import ray.train

    from pipeline.config import IngestSpec
    from pipeline.data.stream import SSLStream

    rank, world = ray.train.get_context().get_world_rank(), ray.train.get_context().get_world_size()
    stream = SSLStream(config["prepared"], IngestSpec(**config["ingest"]), world, rank, config["seed"])
    rows = np.concatenate([step.x_unl.cpu().numpy() for step in stream.epoch(0)])
    np.save(Path(config["out_dir"]) / f"rows-{rank}.npy", rows)


def test_ray_rows_on_the_device_reshuffled_per_epoch_and_reproducible(ray_local, digits_uneven, tmp_path):
    """Rows pulled once onto the device (the default for data that fits): every epoch is a new permutation, and a
    second run with the same seed sees the same batches."""
    ispec = IngestSpec(labeled_batch=16, unlabeled_batch=16, augment=False)
    a = _fit(digits_uneven, ispec, tmp_path / "da")
    b = _fit(digits_uneven, ispec, tmp_path / "db")
    for r in a:
        assert r["on_device"] and r["first_unl_sum"][0] != r["first_unl_sum"][1], r
    assert [r["first_unl_sum"] for r in a] == [r["first_unl_sum"] for r in b]
    assert a[0]["first_unl_sum"] != a[1]["first_unl_sum"]  # the ranks hold different rows


def test_ray_two_workers_equal_steps_uneven_count(ray_local, digits_uneven, tmp_path):
    """Replicated labeled set, 301 unlabeled rows over 2 workers: both run steps_per_epoch steps, 2 epochs."""
    ispec = IngestSpec(labeled_batch=16, unlabeled_batch=16, labeled_mode="replicate")
    recs = _fit(digits_uneven, ispec, tmp_path / "rep")
    expected = steps_per_epoch(digits_uneven, ispec, 2)
    assert expected == 9
    for r in recs:
        assert r["steps"] == [expected, expected], r
        assert r["steps_per_epoch"] == expected and r["recycled_steps"] == 0
    assert recs[0]["first_labels"][0] != recs[0]["first_labels"][1]  # labeled order reshuffled per epoch


def test_ray_materialized_unlabeled_reshuffled_per_epoch_and_reproducible(ray_local, digits_uneven, tmp_path):
    """Streamed (in_memory_bytes=0), a materialized unlabeled set (the same blocks every epoch): each worker's first
    unlabeled batch differs between epochs (per-epoch local shuffle) and is identical in a second run with the same
    seed; with the shuffle off the epochs repeat."""
    ispec = IngestSpec(labeled_batch=16, unlabeled_batch=16, augment=False, in_memory_bytes=0)  # rows as stored
    a = _fit(digits_uneven, ispec, tmp_path / "a", materialize=True)
    b = _fit(digits_uneven, ispec, tmp_path / "b", materialize=True)
    off = _fit(digits_uneven, replace(ispec, shuffle_buffer=0), tmp_path / "off", materialize=True)
    for r in a:
        assert r["first_unl_sum"][0] != r["first_unl_sum"][1], r
    assert [r["first_unl_sum"] for r in a] == [r["first_unl_sum"] for r in b]
    for r in off:
        assert r["first_unl_sum"][0] == r["first_unl_sum"][1], r


def test_ray_two_workers_equal_steps_split_mode(ray_local, moons, tmp_path):
    """Labeled split across workers too (480 unlabeled, even count): equal steps, labeled cycled in lockstep."""
    ispec = IngestSpec(labeled_batch=16, unlabeled_batch=40, labeled_mode="split")
    recs = _fit(moons, ispec, tmp_path / "split")
    expected = steps_per_epoch(moons, ispec, 2)
    assert expected == 6
    for r in recs:
        assert r["steps"] == [expected, expected], r


@pytest.mark.parametrize("mode", ["on_device", "streamed"])
def test_ray_ranks_hold_disjoint_unlabeled_rows_that_cover_the_set(ray_local, moons, tmp_path, mode):
    """480 unlabeled rows over 2 workers, 6 steps of 40: in one epoch each rank sees 240 distinct rows, no row is
    seen by both ranks, and together they see every unlabeled row (rows held on the device, or streamed from a
    materialized set with Ray Data's split). Fails if the ranks were fed the same rows or overlapping shards."""
    from ray import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the workers cannot import this test module
    try:
        ispec = IngestSpec(labeled_batch=16, unlabeled_batch=40, augment=False)
        if mode == "streamed":
            ispec = replace(ispec, in_memory_bytes=0)
        out = tmp_path / mode
        out.mkdir()
        _fit(moons, ispec, out, materialize=mode == "streamed", loop=_record_unlabeled_rows)
    finally:
        cloudpickle.unregister_pickle_by_value(sys.modules[__name__])
    per_rank = [set(map(tuple, np.load(out / f"rows-{r}.npy").tolist())) for r in range(2)]
    counts = [len(np.load(out / f"rows-{r}.npy")) for r in range(2)]
    xu, _ = load_split(moons, "unlabeled")
    every = set(map(tuple, xu.tolist()))
    assert len(every) == len(xu) == 480
    assert counts == [240, 240] and [len(p) for p in per_rank] == counts, "a rank saw a row twice in one epoch"
    assert not per_rank[0] & per_rank[1], f"{len(per_rank[0] & per_rank[1])} rows reached both ranks"
    assert per_rank[0] | per_rank[1] == every
