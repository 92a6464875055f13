"""The GPU fast path on CPU: channels-last and the compiled model compute the plain model's function, the
benchmark's tiny path runs; the engine's non-finite guard names the step and the training loop
stops on it (a return value, not a retried failure); each rank's generators are its own and restored per rank."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from flowgmm.spec import build_model
from pipeline.config import resolve
from pipeline.config.scaling import scaled_lr
from pipeline.data.ingest import Step
from pipeline.train.fastpath import accelerate, compile_stats

REPO = Path(__file__).resolve().parent.parent
SPEC = {
    "kind": "image",
    "shape": [1, 28, 28],
    "num_classes": 10,
    "model": {"num_scales": 2, "mid_channels": 8, "num_blocks": 1},
}


def _model(dtype=torch.float32, seed=0):
    """A small mnist-shaped flow whose couplings are far from the identity (random output convs)."""
    torch.manual_seed(seed)
    m = build_model(SPEC).to(dtype)
    with torch.no_grad():
        for name, mod in m.named_modules():
            if name.endswith("out_conv"):
                mod.weight.normal_(0.0, 0.05)
                mod.bias.normal_(0.0, 0.05)
    return m


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 1e-4)])
@pytest.mark.parametrize("train", [True, False])
def test_channels_last_forward_matches_plain_model(dtype, tol, train):
    plain = _model(dtype)
    fast_model = copy.deepcopy(plain)
    fwd = accelerate(fast_model, SimpleNamespace(compile="none", channels_last=True), "cpu")
    plain.train(train)
    fwd.train(train)
    assert fast_model.training == train
    x = torch.rand(6, 1, 28, 28, dtype=dtype)
    with torch.no_grad():
        z0, l0 = plain(x)
        z1, l1 = fwd(x)
    assert z1.shape == z0.shape and l1.shape == l0.shape
    assert ((z1 - z0).norm() / z0.norm()).item() < tol
    assert ((l1 - l0).abs().max() / l0.abs().max()).item() < tol
    # the weights really are channels-last, and the checkpoint keys are those of the plain model
    conv_v = fast_model.flow.layers[1].layers[0].net.in_conv.parametrizations.weight.original1
    assert conv_v.is_contiguous(memory_format=torch.channels_last) and not conv_v.is_contiguous()
    assert list(fast_model.state_dict()) == list(plain.state_dict())


def test_logdet_and_latent_stay_float32_under_bf16_autocast():
    fwd = accelerate(_model(), SimpleNamespace(compile="none", channels_last=True), "cpu")
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        z, logdet = fwd(torch.rand(4, 1, 28, 28))
    assert z.dtype == torch.float32 and logdet.dtype == torch.float32
    assert torch.isfinite(logdet).all()


def test_compile_units():
    """train.compile is "none" (the model itself) or "full"; the per-coupling unit is gone."""
    model = _model()
    assert accelerate(model, SimpleNamespace(compile="none", channels_last=False), "cpu") is model
    for unit in ("couplings", "everything"):
        with pytest.raises(ValueError, match="train.compile"):
            accelerate(_model(), SimpleNamespace(compile=unit, channels_last=False), "cpu")


def test_full_compile_matches_eager_and_trains():
    """Dynamo with the eager backend (no code generation, seconds on a CPU): the compiled forward computes the plain
    model's function, gradients reach every parameter, and the plain model called directly stays eager."""
    torch._dynamo.reset()
    plain = _model()
    fast_model = copy.deepcopy(plain)
    fwd = accelerate(fast_model, SimpleNamespace(compile="full", channels_last=False), "cpu", backend="eager")
    assert fwd is not fast_model
    x = torch.rand(4, 1, 28, 28)
    g0 = compile_stats()["unique_graphs"]
    z, ld = fwd(x)
    (z.square().mean() + ld.mean()).backward()
    assert compile_stats()["unique_graphs"] > g0
    z0, l0 = plain(x)
    assert torch.allclose(z, z0, atol=1e-5) and torch.allclose(ld, l0, rtol=1e-5, atol=1e-3)
    assert all(p.grad is not None for p in fast_model.flow.parameters())
    torch._dynamo.reset()


def test_the_fused_cpu_optimizer_takes_the_per_tensor_optimizers_steps():
    """``build_optimizer`` fuses AdamW on CPU too (one kernel over every tensor: mnist_cpu's labels-only step ~1.2x
    faster); it takes the steps torch's per-tensor AdamW takes, weight-decay groups included."""
    from pipeline.train.engine import build_optimizer

    t = resolve("digits", overrides=["train.weight_decay=0.05", "train.lr=0.01"]).train
    fused_model = _model()
    plain_model = copy.deepcopy(fused_model)
    fused = build_optimizer(fused_model, t, torch.device("cpu"))
    assert all(g["fused"] for g in fused.param_groups) and fused.param_groups[0]["weight_decay"] == 0.05
    by_name, name_of = dict(plain_model.named_parameters()), {id(p): n for n, p in fused_model.named_parameters()}
    plain = torch.optim.AdamW(  # the same groups over the copy's parameters, updated one tensor at a time
        [
            {**g, "params": [by_name[name_of[id(p)]] for p in g["params"]], "fused": None, "foreach": False}
            for g in fused.param_groups
        ]
    )
    gen = torch.Generator().manual_seed(0)
    for _ in range(20):
        for (_, p), (_, q) in zip(fused_model.named_parameters(), plain_model.named_parameters()):
            p.grad = torch.randn(p.shape, generator=gen)
            q.grad = p.grad.clone()
        fused.step()
        plain.step()
    for (name, p), (_, q) in zip(fused_model.named_parameters(), plain_model.named_parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6, msg=name)
    moved = max((p - q).abs().max().item() for p, q in zip(fused_model.parameters(), _model().parameters()))
    assert moved > 0.05  # 20 steps of lr 0.01 moved the weights: the comparison is not of two untouched models


def test_scaled_lr():
    assert scaled_lr(1e-3, 256, 256) == pytest.approx(1e-3)
    assert scaled_lr(1e-3, 2048, 256) == pytest.approx(1e-3 * 8**0.5)
    assert scaled_lr(1e-3, 2048, 256, rule="linear") == pytest.approx(8e-3)
    with pytest.raises(ValueError):
        scaled_lr(1e-3, 0, 256)


def test_bench_tiny_runs_two_steps(tmp_path):
    out = tmp_path / "bench.json"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.run(
        [sys.executable, str(REPO / "bench" / "bench_train_step.py"), "--tiny", "--steps", "2", "--json", str(out)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        cwd=REPO,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(out.read_text())["results"]
    assert [r["setting"] for r in res] == ["reference", "fast_eager"]
    for r in res:
        assert "error" not in r, r
        assert r["steps"] == 2 and r["images_per_s"] > 0 and r["flops_per_image"] > 0
    assert "img/s" in proc.stdout


def test_non_finite_guard_names_the_step():
    """The training engine's device-side guard (what the loop checks every log_every steps) fed a poisoned step:
    its check raises NonFiniteLossError naming the first bad step; finite steps pass."""
    from pipeline.train.engine import Engine
    from pipeline.train.state import NonFiniteLossError

    cfg = resolve("mnist", smoke=True)
    torch.manual_seed(0)
    engine = Engine(SPEC, cfg, torch.device("cpu"))

    def batch(poison: bool) -> Step:
        xl, xu = torch.rand(4, 1, 28, 28), torch.rand(8, 1, 28, 28)
        if poison:
            xu[3, 0, 5, 5] = float("nan")
        return Step(xl, torch.arange(4) % 10, xu, torch.rand(8, 1, 28, 28))

    for step in range(4):
        engine.train_step(batch(poison=step == 2))
        if step < 2:
            engine.check_finite()  # no error before the poisoned step
    with pytest.raises(NonFiniteLossError, match=r"non-finite training loss at step 2\b"):
        engine.check_finite()


def test_large_batch_recipe():
    """train.batch_rows applies the large-batch recipe when the configuration is resolved (what training reads)."""
    cfg = resolve("mnist")
    big = resolve("mnist", overrides=["train.batch_rows=2048"])
    assert (big.ingest.labeled_batch, big.ingest.unlabeled_batch) == (512, 1536)
    assert big.train.lr == pytest.approx(1e-3 * 8**0.5)
    assert (big.train.warmup_steps, big.train.consistency_ramp_steps) == (25, 250)
    assert (cfg.ingest.labeled_batch, cfg.train.lr) == (64, 1e-3)
    again = resolve("mnist", overrides=["train.batch_rows=2048", f"train.lr={big.train.lr}"])
    assert again.train.lr == pytest.approx(big.train.lr * 8**0.5)  # scaled from the lr it was given
    from pipeline.config import Config

    assert Config.from_dict(big.to_dict()) == big  # a resolved record re-read (resume) is not scaled twice


def test_training_loop_stops_on_a_non_finite_loss(ray_local, tmp_path):
    """The loop's own guard, run by Ray Train (in the driver: train.num_workers=0): a learning rate that blows the
    flow up ends training with NonFiniteLossError naming the first bad step and the check step, and no checkpoint
    is written after it. Without the loop's check the run would finish (and fit() return)."""
    from pipeline.data import load_split, prepare
    from pipeline.train.model import model_spec
    from pipeline.train.state import CheckpointStore, NonFiniteLossError
    from pipeline.train.trainer import TrainRun

    cfg = resolve("moons", smoke=True, overrides=["train.lr=1e6", "train.num_workers=0"])
    prepared = prepare(cfg.data, tmp_path / "home")
    run = TrainRun(
        cfg,
        prepared,
        model_spec(cfg, prepared),
        run_name="nan",
        storage_path=str(tmp_path / "ray_results"),
        mlflow_info=None,
        val=load_split(prepared, "val"),
    )
    with pytest.raises(NonFiniteLossError, match=r"^run nan: non-finite training loss at step \d+ \(checked at") as e:
        run.fit()
    assert 0 <= e.value.step < e.value.checked_at <= cfg.train.log_every
    assert "train.lr" in str(e.value) and "\n" not in str(e.value)
    assert CheckpointStore(str(tmp_path / "ray_results" / "nan")).latest() is None


def test_each_rank_draws_its_own_noise_and_gets_its_own_state_back(tmp_path):
    """Engines of ranks 0 and 1 (same seed) start with the same weights but draw different noise; a checkpoint
    holding both ranks' generator states gives each rank its own stream back; a checkpoint of another world size
    reseeds every rank deterministically from (seed, rank, step)."""
    from pipeline.train.engine import Engine
    from pipeline.train.state import rank_seed

    cfg = resolve("mnist", smoke=True)
    engines = []
    for rank in (0, 1):
        torch.manual_seed(cfg.train.seed)  # the loop's initial weights: the same on every rank
        engines.append(Engine(SPEC, cfg, torch.device("cpu"), rank=rank, world=2))
        engines[-1].state0 = engines[-1].rng_state()
    w0, w1 = (e.model.state_dict() for e in engines)
    assert all(torch.equal(w0[k], w1[k]) for k in w0)
    states = [e.state0 for e in engines]
    draws = []
    for e in engines:
        e.set_rng_state(e.state0)
        draws.append(torch.rand(64))
    assert not torch.equal(draws[0], draws[1]), "ranks draw the same dequantization noise"
    engines[0].step = 7
    engines[0].save(tmp_path, rng=states)
    for rank, e in enumerate(engines):
        torch.rand(5)  # move the generator on: load must put this rank's state back
        e.load(tmp_path)
        assert torch.equal(torch.rand(64), draws[rank]), rank
    torch.manual_seed(cfg.train.seed)
    solo = Engine(SPEC, cfg, torch.device("cpu"), rank=0, world=1)
    solo.load(tmp_path)  # saved by 2 ranks, restored by 1: a fresh stream from (seed, rank 0, step 7)
    a = torch.rand(64)
    expected = torch.rand(64, generator=torch.Generator().manual_seed(rank_seed(cfg.train.seed, 0, 7)))
    assert solo.step == 7 and torch.equal(a, expected) and not torch.equal(a, draws[0])
