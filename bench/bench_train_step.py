"""Training-step benchmark for the ``mnist`` configuration: the reference recipe and the fast settings side by side,
in one process, on whatever device it finds. Times exactly ``pipeline.train.step.compute_loss`` + ``apply_gradients``.

    python bench/bench_train_step.py                                    # step mode, default settings
    python bench/bench_train_step.py --settings reference,fast_eager,fast_couplings --batch 2048 --steps 15
    python bench/bench_train_step.py --check-bf16 --check-steps 200     # float32 vs bf16 loss tracking
    python bench/bench_train_step.py --mode ingest                      # Ray Data vs tensors on the device
    python bench/bench_train_step.py --tiny                             # CPU smoke test (seconds)

Settings (``name`` or ``name@BATCH``; BATCH = labeled + unlabeled rows of the gradient forward, split 1:3 as in
the mnist configuration, 64 + 192):

    reference       float32, eager, 32 labeled + 32 unlabeled, Adam (foreach, not fused), NCHW,
                    cudnn.benchmark off: the reference recipe.
    fast_eager      bf16 autocast, channels-last, --batch rows, AdamW(fused=True) as pipeline/train/loop.py builds it.
    fast_couplings  fast_eager + torch.compile of each coupling (pipeline.train.fastpath, compile="couplings").
    fast_full       fast_eager + torch.compile of the whole flow (compile="full").

Every step is a FlowGMM-cons step: ``compute_loss`` is called with ``step`` past the consistency ramp, so it runs
the no-grad forward of the second augmentation plus the forward/backward of labeled + unlabeled. images/s counts
the rows of the gradient forward (the second view is not counted again). FLOPs per image are measured once per
labeled:unlabeled mix with ``torch.utils.flop_counter.FlopCounterMode`` on an eager float32 step (convolutions and
matrix products, forward and backward). Timing: warm-up steps first (they include compilation: "warm-up s" is
their wall time minus the steady-state cost of as many steps), then ``--steps`` steps timed with CUDA events
around each step (no host synchronisation inside the timed window); the table gives the median step.

Columns: img/s (median step), TFLOP/s (measured FLOPs/image x img/s), peak GiB (torch.cuda.max_memory_allocated
over the setting), warm-up s (compilation), graphs (Dynamo graphs compiled), x ref (img/s over the reference's),
syncs (host-device synchronisations in one step, CUDA sync debug mode), fwd err (relative error of the setting's
forward against a float32 eager forward with TF32 off; in brackets the plain eager model in the same precision,
the rounding baseline it should match).
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

if not __package__:  # `python bench/bench_train_step.py`: import the project from this checkout
    sys.path[0] = str(Path(__file__).resolve().parents[1])
REPO = Path(__file__).resolve().parents[1]

import numpy as np  # noqa: E402
import torch  # noqa: E402

from flowgmm.model import FlowGMM  # noqa: E402
from flowgmm.spec import build_model  # noqa: E402
from pipeline.config import TrainConfig, resolve  # noqa: E402
from pipeline.data.ingest import IngestSpec, SSLStream, Step  # noqa: E402
from pipeline.train.fastpath import CompileWarmup, accelerate, scaled_lr  # noqa: E402
from pipeline.train.step import apply_gradients, compute_loss  # noqa: E402

BASE_SETTINGS = {
    # name: (bf16, channels_last, compile, optimizer)
    "reference": (False, False, "none", "adam"),
    "fast_eager": (True, True, "none", "adamw_fused"),
    "fast_couplings": (True, True, "couplings", "adamw_fused"),
    "fast_full": (True, True, "full", "adamw_fused"),
}
DEFAULT_SETTINGS = "reference,fast_eager,fast_couplings"
ANALYTIC_GFLOP = 39.4  # the issue's figure for the reference step (per image, incl. the no-grad forward)


# ---------------------------------------------------------------------------------------------------- setup
@dataclasses.dataclass
class Setting:
    name: str
    bf16: bool
    channels_last: bool
    compile: str
    optimizer: str
    n_lab: int
    n_unl: int

    @property
    def batch(self) -> int:
        return self.n_lab + self.n_unl


def parse_settings(text: str, batch: int, ref_batch: int) -> list[Setting]:
    out = []
    for item in [s.strip() for s in text.split(",") if s.strip()]:
        name, _, b = item.partition("@")
        if name not in BASE_SETTINGS:
            raise SystemExit(f"unknown setting {name!r}; choose from {sorted(BASE_SETTINGS)}")
        bf16, cl, comp, opt = BASE_SETTINGS[name]
        rows = int(b) if b else (ref_batch if name == "reference" else batch)
        n_lab = rows // 2 if name == "reference" else max(1, rows // 4)
        out.append(Setting(item, bf16, cl, comp, opt, n_lab, rows - n_lab))
    return out


def model_spec(cfg, tiny: bool, shape=(1, 28, 28)) -> dict[str, Any]:
    m = cfg.model
    model = {
        "num_scales": m.num_scales,
        "mid_channels": m.mid_channels,
        "num_blocks": m.num_blocks,
        "means_scale": m.means_scale,
        "variance": m.variance,
    }
    if tiny:
        model.update(mid_channels=8, num_blocks=1)
    return {"kind": "image", "shape": list(shape), "num_classes": 10, "model": model, "seed": 0}


def find_mnist(data_dir: str | None) -> Path | None:
    cands = [data_dir, os.environ.get("FLOWGMM_DATA"), REPO / ".device_carry" / "data", REPO.parent / "shared" / "data"]
    for c in cands:
        if c and (Path(c) / "MNIST" / "raw" / "train-images-idx3-ubyte.gz").is_file():
            return Path(c)
    return None


def load_images(data_dir: str | None, n: int | None = None) -> tuple[np.ndarray, np.ndarray, str]:
    """uint8 ``[N, 784]`` and labels: MNIST train images when found, else synthetic uint8 (same shapes)."""
    d = find_mnist(data_dir)
    if d is not None:
        from pipeline.data.sources import load_idx

        raw = load_idx("mnist", d)
        x, y = raw.x_train.reshape(len(raw.x_train), -1).astype(np.uint8), raw.y_train.astype(np.int64)
        src = f"MNIST ({d})"
    else:
        rng = np.random.default_rng(0)
        x = rng.integers(0, 256, size=(12000, 784), dtype=np.uint8)
        y = rng.integers(0, 10, size=12000).astype(np.int64)
        src = "synthetic uint8"
    if n is not None:
        x, y = x[:n], y[:n]
    return x, y, src


def make_stream(
    x: np.ndarray,
    y: np.ndarray,
    n_lab: int,
    n_unl: int,
    device,
    seed: int = 0,
    n_labeled: int = 1000,
    translate: int = 2,
) -> SSLStream:
    """The worker-side stream of pipeline.data.ingest over rows held in memory (augmentation on ``device``)."""
    n_labeled = min(n_labeled, len(x) // 4)
    arrays = {"x_lab": x[:n_labeled], "y_lab": y[:n_labeled], "x_unl": x[n_labeled:]}
    manifest = {
        "name": "bench",
        "kind": "image",
        "shape": [1, 28, 28] if x.shape[1] == 784 else [1, 8, 8],
        "counts": {"labeled": n_labeled, "unlabeled": len(x) - n_labeled},
    }
    spec = IngestSpec(labeled_batch=n_lab, unlabeled_batch=n_unl, translate=translate)
    return SSLStream.in_memory(manifest, spec, seed=seed, device=device, arrays=arrays)


def take_steps(stream: SSLStream, k: int) -> list[Step]:
    out: list[Step] = []
    epoch = 0
    while len(out) < k:
        for s in stream.epoch(epoch):
            out.append(s)
            if len(out) == k:
                break
        epoch += 1
    return out


def train_config(s: Setting, base: TrainConfig, lr: float) -> TrainConfig:
    return dataclasses.replace(base, bf16=s.bf16, channels_last=s.channels_last, compile=s.compile, lr=lr)


def make_optimizer(model: FlowGMM, kind: str, lr: float, device: torch.device) -> torch.optim.Optimizer:
    if kind == "adam":
        return torch.optim.Adam(model.parameters(), lr=lr)
    decay, no_decay = [], []  # the parameter groups of pipeline/train/loop.py
    for name, p in model.named_parameters():
        (no_decay if p.ndim <= 1 or "mixture" in name else decay).append(p)
    return torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.0}, {"params": no_decay, "weight_decay": 0.0}],
        lr=lr,
        fused=device.type == "cuda",
    )


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Runner:
    """One model + optimizer + forward for a setting; ``step(i)`` is the training loop's step (with its
    device-side non-finite guard), nothing more."""

    def __init__(
        self,
        spec: dict,
        s: Setting,
        t: TrainConfig,
        device: torch.device,
        seed: int = 0,
        compile_on_cpu: bool = False,
        backend: str | None = None,
    ):
        torch.manual_seed(seed)
        self.device, self.t, self.s = device, t, s
        self.model = build_model(spec).to(device)
        if s.name.startswith("reference"):
            if device.type == "cuda":
                torch.backends.cudnn.benchmark = False
            self.forward: torch.nn.Module = self.model
        else:
            self.forward = accelerate(self.model, t, device, compile_on_cpu=compile_on_cpu, backend=backend)
        self.model.train()
        self.opt = make_optimizer(self.model, s.optimizer, t.lr, device)
        warm = max(t.warmup_steps, 1)
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lambda k: min(1.0, (k + 1) / warm))
        self.first_bad = torch.full((), -1, dtype=torch.long, device=device)

    def step(self, batch: Step, step: int) -> torch.Tensor:
        loss, parts = compute_loss(self.forward, self.model, batch, self.t, step, True)
        apply_gradients(loss, self.model, self.opt, self.sched, self.t.grad_clip)
        bad = ~torch.isfinite(loss.detach())
        self.first_bad = torch.where(bad & (self.first_bad < 0), torch.full_like(self.first_bad, step), self.first_bad)
        return loss.detach()


# ---------------------------------------------------------------------------------------------------- FLOPs
_FLOPS_CACHE: dict[tuple, float] = {}


def flops_per_image(spec: dict, s: Setting, t: TrainConfig, device: torch.device, batch: Step) -> float:
    """FLOPs of one eager float32 FlowGMM-cons step per row of the gradient forward, for this labeled:unlabeled
    mix (counted on a small batch with the same mix; the count is linear in the batch)."""
    g = math.gcd(s.n_lab, s.n_unl)
    nl, nu = s.n_lab // g, s.n_unl // g
    while nl + nu < 4:
        nl, nu = 2 * nl, 2 * nu
    key = (nl, nu)
    if key in _FLOPS_CACHE:
        return _FLOPS_CACHE[key]
    from torch.utils.flop_counter import FlopCounterMode

    model = build_model(spec).to(device)
    tf = dataclasses.replace(t, bf16=False, compile="none", channels_last=False)
    small = Step(batch.x_lab[:nl], batch.y_lab[:nl], batch.x_unl[:nu], batch.x_unl2[:nu])
    with FlopCounterMode(display=False) as fc:
        loss, _ = compute_loss(model, model, small, tf, tf.consistency_ramp_steps + 1, True)
        loss.backward()
    _FLOPS_CACHE[key] = fc.get_total_flops() / (nl + nu)
    del model
    return _FLOPS_CACHE[key]


# ---------------------------------------------------------------------------------------------------- step mode
def check_forward(runner: Runner, spec: dict, batch: Step) -> tuple[float, float]:
    """Relative errors against the plain eager model in float32 (TF32 off) with the same weights: that of the
    accelerated forward, and that of the plain eager model run in the setting's own precision (the rounding
    baseline: a compiled/channels-last forward is right when its error is of the baseline's size). Error =
    ``max(|z - z_ref| / |z_ref|, |ld - ld_ref| / |ld_ref - ld_logit|)``, the log-det measured on the couplings' part.
    Train-mode BatchNorm, no grad. The couplings' zero-initialised output convs are first set to random weights
    (in the benchmarked model too, after its timing) so that every coupling is far from the identity. Runs on the
    consistency forward's batch shape, so a compiled forward needs no recompilation."""
    g = torch.Generator(device="cpu").manual_seed(7)
    with torch.no_grad():
        for name, m in runner.model.named_modules():
            if name.endswith("out_conv"):
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * 0.05)
    plain = build_model(spec).to(runner.device)
    plain.load_state_dict(runner.model.state_dict())
    plain.train()
    x = batch.x_unl2
    dt = runner.device.type
    tf32 = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    try:
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
        with torch.no_grad():
            z_ref, l_ref = plain(x)
            _, l_logit = plain.flow.layers[0](x)
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = tf32
    with torch.no_grad(), torch.autocast(dt, dtype=torch.bfloat16, enabled=runner.t.bf16):
        z0, l0 = plain(x)
        z1, l1 = runner.forward(x)
    z_ref, l_ref, l_logit = z_ref.double(), l_ref.double(), l_logit.double()

    def err(z, ld):
        return max(
            ((z.double() - z_ref).norm() / z_ref.norm()).item(),
            ((ld.double() - l_ref).norm() / (l_ref - l_logit).norm().clamp_min(1e-12)).item(),
        )

    out = err(z1, l1), err(z0, l0)
    del plain
    return out


def count_syncs(runner: Runner, batch: Step, step: int) -> int:
    """Host-device synchronisations in one step (CUDA sync debug mode); -1 off CUDA."""
    if runner.device.type != "cuda":
        return -1
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            runner.step(batch, step)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    _sync(runner.device)
    return sum(1 for x in w if "synchroniz" in str(x.message).lower())


@dataclasses.dataclass
class Bench:
    """What every setting of one step-mode run shares."""

    spec: dict
    base: TrainConfig
    device: torch.device
    x: np.ndarray
    y: np.ndarray
    steps: int
    warmup: int
    base_batch: int
    compile_on_cpu: bool = False
    tiny: bool = False
    backend: str | None = None


def bench_setting(b: Bench, s: Setting) -> dict[str, Any]:
    spec, base, device, steps, warmup = b.spec, b.base, b.device, b.steps, b.warmup
    lr = base.lr if s.name.startswith("reference") else scaled_lr(base.lr, s.batch, b.base_batch)
    t = train_config(s, base, lr)
    stream = make_stream(b.x, b.y, s.n_lab, s.n_unl, device, translate=0 if b.tiny else 2)
    batches = take_steps(stream, 4)  # rotate among 4 prepared batches already on the device
    r: dict[str, Any] = {
        "setting": s.name,
        "batch": s.batch,
        "n_lab": s.n_lab,
        "n_unl": s.n_unl,
        "lr": lr,
        "bf16": s.bf16,
        "channels_last": s.channels_last,
        "compile": s.compile,
        "optimizer": s.optimizer,
    }
    r["flops_per_image"] = flops_per_image(spec, s, base, device, batches[0])
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    if s.compile != "none":
        torch._dynamo.reset()
    runner = Runner(spec, s, t, device, compile_on_cpu=b.compile_on_cpu, backend=b.backend)
    r["unit"] = getattr(runner.forward, "unit", "none")
    r["backend"] = (b.backend or "inductor") if r["unit"] != "none" else ""
    k0 = t.consistency_ramp_steps + 1  # past the ramp: every step runs the consistency forward
    warm = CompileWarmup(device, steps=warmup)
    with warm:
        for i in range(warmup):
            runner.step(batches[i % 4], k0 + i)
    times, losses, wall = _time_steps(runner, batches, device, k0 + warmup, steps)
    r["peak_mem_gib"] = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
    med = statistics.median(times)
    r.update(
        step_s_median=med,
        step_s_min=min(times),
        step_s_max=max(times),
        wall_s=wall,
        steps=steps,
        images_per_s=s.batch / med,
        images_per_s_wall=s.batch * steps / wall,
        warmup_s=warm.seconds,
        warmup_steps=warmup,
        compile_s=warm.compile_seconds(med),
        graphs=warm.graphs,
    )
    r["tflops"] = r["flops_per_image"] * r["images_per_s"] / 1e12
    r["final_loss"] = float(losses[-1])
    r["first_bad_step"] = int(runner.first_bad)
    r["syncs_per_step"] = count_syncs(runner, batches[0], k0 + warmup + steps)
    r["fwd_rel_err"], r["fwd_rel_err_plain_eager"] = check_forward(runner, spec, batches[1])
    del runner, batches, stream
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return r


def _time_steps(runner: Runner, batches: list[Step], device: torch.device, k0: int, steps: int):
    """Per-step seconds (CUDA events on a GPU: no host sync inside the timed window), losses and wall time."""
    times, losses = [], []
    t0 = time.perf_counter()
    if device.type == "cuda":
        ev = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(steps)]
        for i in range(steps):
            ev[i][0].record()
            losses.append(runner.step(batches[i % 4], k0 + i))
            ev[i][1].record()
        torch.cuda.synchronize(device)
        times = [a.elapsed_time(b) / 1000.0 for a, b in ev]
    else:
        for i in range(steps):
            a = time.perf_counter()
            losses.append(runner.step(batches[i % 4], k0 + i))
            times.append(time.perf_counter() - a)
    return times, losses, time.perf_counter() - t0


def print_table(results: list[dict], ref_name: str = "reference") -> None:
    ref = next((r for r in results if r["setting"].startswith(ref_name) and "error" not in r), None)
    head = (
        f"{'setting':<22}{'batch':>6}{'GFLOP/img':>10}{'img/s':>9}{'TFLOP/s':>9}{'peak GiB':>9}{'warm-up s':>10}"
        f"{'graphs':>7}{'x ref':>7}{'syncs':>6}{'fwd err (eager)':>18}"
    )
    print(head)
    print("-" * len(head))
    for r in results:
        if "error" in r:
            print(f"{r['setting']:<22}{r.get('batch', 0):>6}  FAILED: {r['error'][:90]}")
            continue
        ratio = r["images_per_s"] / ref["images_per_s"] if ref else float("nan")
        print(
            f"{r['setting']:<22}{r['batch']:>6}{r['flops_per_image'] / 1e9:>10.2f}{r['images_per_s']:>9.0f}"
            f"{r['tflops']:>9.1f}"
            f"{r['peak_mem_gib']:>9.2f}{r['compile_s']:>10.1f}{r['graphs']:>7}{ratio:>7.2f}"
            f"{r['syncs_per_step']:>6}{r['fwd_rel_err']:>9.1e} ({r['fwd_rel_err_plain_eager']:.1e})"
        )


def device_info(device: torch.device) -> dict[str, Any]:
    info: dict[str, Any] = {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "host": platform.node(),
        "device": str(device),
        "cpus": os.cpu_count(),
    }
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        info.update(
            gpu=p.name,
            capability=f"{p.major}.{p.minor}",
            gpu_mem_gib=round(p.total_memory / 2**30, 1),
            sms=p.multi_processor_count,
            cuda=torch.version.cuda,
            cudnn=torch.backends.cudnn.version(),
            cudnn_allow_tf32=torch.backends.cudnn.allow_tf32,
            matmul_allow_tf32=torch.backends.cuda.matmul.allow_tf32,
        )
        try:
            info["nvidia_smi"] = subprocess.run(
                [
                    "nvidia-smi",
                    "--query-gpu=name,driver_version,power.limit,clocks.max.sm,memory.total",
                    "--format=csv,noheader",
                ],
                capture_output=True,
                text=True,
                timeout=20,
            ).stdout.strip()
        except Exception:  # noqa: BLE001
            pass
    return info


def step_mode(a, cfg, device, spec, x, y) -> list[dict]:
    base = cfg.train
    base_batch = cfg.ingest.labeled_batch + cfg.ingest.unlabeled_batch
    settings = parse_settings(a.settings, a.batch, a.ref_batch)
    results = []
    for s in settings:
        print(
            f"... {s.name}: batch {s.n_lab}+{s.n_unl}, bf16={s.bf16}, channels_last={s.channels_last}, "
            f"compile={s.compile}, {s.optimizer}",
            flush=True,
        )
        steps = a.ref_steps if s.name.startswith("reference") else a.steps
        warm = a.warmup if s.compile != "none" or s.name.startswith("reference") else max(2, a.warmup - 1)
        try:
            bench = Bench(spec, base, device, x, y, steps, warm, base_batch, a.compile_on_cpu, a.tiny, a.backend)
            r = bench_setting(bench, s)
        except Exception as e:  # noqa: BLE001 - one failed setting (OOM, compiler error) must not lose the rest
            r = {"setting": s.name, "batch": s.batch, "error": f"{type(e).__name__}: {e}"}
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()
        print("    " + json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()}), flush=True)
        results.append(r)
    return results


# ---------------------------------------------------------------------------------------------------- bf16 check
def check_bf16(a, cfg, device, spec, x, y) -> dict[str, Any]:
    """``n`` steps of the mnist recipe (batch, lr, warm-up, consistency ramp from step 0) from the same init and the
    same data and dequantization noise, float32 vs bf16 autocast (+ channels-last), both eager; the losses are
    compared over the last 50 steps (or the last half for short runs).

    Reported: the max per-step relative difference (next to the float32 run's own step-to-step relative spread:
    two runs that drift apart differ per step by about that much), the relative difference of the mean loss, and
    that difference in bits per dimension, ``|mean_bf16 - mean_fp32| / (D ln 2)``; the check passes when the latter
    is at most ``--bf16-tol`` (0.01 bits/dim; a relative tolerance is ill-posed here because the loss, an NLL in
    nats on [0, 1]^D, crosses zero early in training)."""
    t0 = cfg.train
    n = a.check_steps
    nl, nu = cfg.ingest.labeled_batch, cfg.ingest.unlabeled_batch
    if a.tiny:
        nl, nu = 4, 12
    runs = {
        name: _bf16_run(Setting(name, bf16, cl, "none", "adamw_fused", nl, nu), a, cfg, device, spec, x, y)
        for name, bf16, cl in (("float32", False, False), ("bf16", True, True))
    }
    last = min(50, max(1, n // 2))
    f, b = runs["float32"], runs["bf16"]
    lf, lb = f["loss"][-last:], b["loss"][-last:]
    rel = np.abs(lb - lf) / np.maximum(np.abs(lf), 1e-12)
    out = {
        "steps": n,
        "compared_last": last,
        "batch": f"{nl}+{nu}",
        "lr": t0.lr,
        "finite": bool(np.isfinite(f["loss"]).all() and np.isfinite(b["loss"]).all()),
        "max_rel_loss_diff": float(rel.max()),
        "mean_rel_loss_diff": float(rel.mean()),
        "rel_diff_of_mean_loss": float(abs(lb.mean() - lf.mean()) / max(abs(lf.mean()), 1e-12)),
        "max_abs_ce_diff": float(np.abs(b["ce"][-last:] - f["ce"][-last:]).max()),
        "loss_fp32_first_last": [float(f["loss"][0]), float(f["loss"][-1])],
        "loss_bf16_first_last": [float(b["loss"][0]), float(b["loss"][-1])],
        "fp32_step_to_step_rel_std": float(np.std(np.diff(lf)) / max(abs(lf.mean()), 1e-12)),
        "seconds": {"float32": f["seconds"], "bf16": b["seconds"]},
    }
    dim = int(np.prod(spec["shape"]))
    out["mean_loss_diff_bits_per_dim"] = float(abs(lb.mean() - lf.mean()) / (dim * math.log(2)))
    out["tolerance_bits_per_dim"] = a.bf16_tol
    out["passed"] = out["finite"] and out["mean_loss_diff_bits_per_dim"] <= a.bf16_tol
    out["curves_every_10"] = {
        "float32": [round(float(v), 3) for v in f["loss"][::10]],
        "bf16": [round(float(v), 3) for v in b["loss"][::10]],
    }
    return out


def _bf16_run(s: Setting, a, cfg, device, spec, x, y) -> dict[str, Any]:
    """``a.check_steps`` steps of one precision from a fixed init, data order and dequantization noise."""
    n, t = a.check_steps, train_config(s, cfg.train, cfg.train.lr)
    stream = make_stream(x, y, s.n_lab, s.n_unl, device, seed=1, translate=0 if a.tiny else 2)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = False
    runner = Runner(spec, s, t, device, seed=0)
    torch.manual_seed(123)  # the dequantization noise: the same draws in both runs
    losses, ces = [], []
    start = time.perf_counter()
    done, epoch = 0, 0
    while done < n:
        for batch in stream.epoch(epoch):
            loss, parts = compute_loss(runner.forward, runner.model, batch, t, done, True)
            apply_gradients(loss, runner.model, runner.opt, runner.sched, t.grad_clip)
            losses.append(loss.detach())
            ces.append(parts["ce"])
            done += 1
            if done == n:
                break
        epoch += 1
    _sync(device)
    out = {
        "loss": torch.stack(losses).float().cpu().numpy(),
        "ce": torch.stack(ces).cpu().numpy(),
        "seconds": time.perf_counter() - start,
    }
    del runner
    gc.collect()
    return out


# ---------------------------------------------------------------------------------------------------- ingest mode
def _ingest_loop(c: dict) -> None:
    """Ray Train worker: the same step fed (a) from batches already on the device, (b) by SSLStream over Ray Data
    (the training loop's path), (c) the Ray Data stream alone, no step. Writes ``<out_dir>/ingest.json``."""
    import ray.train
    import ray.train.torch

    device = ray.train.torch.get_device()
    if c.get("threads"):
        torch.set_num_threads(c["threads"])
    cfg = resolve("mnist")
    ispec = IngestSpec(**c["ingest"])
    s = Setting(c["setting"], *BASE_SETTINGS[c["setting"]], ispec.labeled_batch, ispec.unlabeled_batch)
    base_batch = cfg.ingest.labeled_batch + cfg.ingest.unlabeled_batch
    t = train_config(s, cfg.train, scaled_lr(cfg.train.lr, s.batch, base_batch))
    runner = Runner(c["spec"], s, t, device, compile_on_cpu=False)
    ray_stream = SSLStream(c["manifest"], ispec, 1, 0, 0, device)
    mem_stream = SSLStream.in_memory(c["prepared"], ispec, 1, 0, 0, device)
    prebuilt = take_steps(mem_stream, 4)
    n = ray_stream.steps_per_epoch
    k0 = t.consistency_ramp_steps + 1
    rec: dict[str, Any] = {"setting": s.name, "batch": s.batch, "steps_per_epoch": n, "device": str(device)}
    warm = CompileWarmup(device, steps=c["warmup"])
    with warm:
        for i in range(c["warmup"]):
            runner.step(prebuilt[i % 4], k0 + i)
    rec["warmup_s"] = warm.seconds

    def timed(source: str, epoch: int, with_step: bool = True) -> float:
        _sync(device)
        t_start = time.perf_counter()
        it = (
            (prebuilt[i % 4] for i in range(n))
            if source == "device"
            else (mem_stream.epoch(epoch) if source == "memory" else ray_stream.epoch(epoch))
        )
        for i, batch in enumerate(it):
            if with_step:
                runner.step(batch, k0 + i)
        _sync(device)
        return time.perf_counter() - t_start

    rec["device_s"] = [timed("device", 0) for _ in range(c["epochs"])]
    rec["memory_stream_s"] = [timed("memory", e) for e in range(c["epochs"])]
    rec["ray_s"] = [timed("ray", e) for e in range(c["epochs"])]
    rec["ray_data_only_s"] = [timed("ray", c["epochs"] + e, with_step=False) for e in range(c["epochs"])]
    Path(c["out_dir"]).mkdir(parents=True, exist_ok=True)
    (Path(c["out_dir"]) / "ingest.json").write_text(json.dumps(rec))


def ingest_mode(a, cfg, device, spec) -> dict[str, Any]:
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from bench.bench_train_step import _ingest_loop  # by module path, not __main__: the worker imports it
    from pipeline.core.raycluster import export_checkout
    from pipeline.data import data_config
    from pipeline.train.trainer import training_datasets

    prepared = _ingest_data(a)
    export_checkout()
    spec = dict(spec, shape=list(prepared.shape))
    s = parse_settings(a.ingest_setting, a.batch, a.ref_batch)[0]
    ispec = dataclasses.replace(cfg.ingest, labeled_batch=s.n_lab, unlabeled_batch=s.n_unl)
    ncpu = os.cpu_count() or 2
    ray.init(
        address="local",
        num_cpus=ncpu,
        num_gpus=1 if device.type == "cuda" else 0,
        include_dashboard=False,
        logging_level="WARNING",
        log_to_driver=True,
    )
    out = Path(tempfile.mkdtemp(prefix="bench-ingest-"))
    cfg2 = dataclasses.replace(cfg, ingest=ispec)
    loop = {
        "spec": spec,
        "manifest": prepared.manifest,
        "prepared": prepared,
        "ingest": dataclasses.asdict(ispec),
        "setting": s.name.partition("@")[0],
        "epochs": a.ingest_epochs,
        "warmup": a.warmup,
        "out_dir": str(out),
        "threads": 1 if a.tiny else 0,
    }
    t0 = time.perf_counter()
    TorchTrainer(
        _ingest_loop,
        train_loop_config=loop,
        scaling_config=ScalingConfig(
            num_workers=1, use_gpu=device.type == "cuda", resources_per_worker={"CPU": max(0.5, min(4, ncpu / 4))}
        ),
        datasets=training_datasets(prepared, cfg2),
        dataset_config=data_config(ispec),
        run_config=RunConfig(name=out.name, storage_path=str(out / "ray_results")),
    ).fit()
    rec = json.loads((out / "ingest.json").read_text())
    rec["fit_wall_s"] = time.perf_counter() - t0
    rec["data"] = prepared.manifest.get("name", "")
    ray.shutdown()
    return _ingest_summary(rec)


def _ingest_data(a):
    from pipeline.core.errors import DataError
    from pipeline.data import DataSpec, prepare

    home = a.home or tempfile.mkdtemp(prefix="bench-home-")
    d = find_mnist(a.data_dir)
    try:
        if d is None or a.tiny:
            raise DataError("tiny run or no MNIST")
        return prepare(DataSpec(source="mnist", n_labeled=1000, n_val=1000, data_dir=str(d), shard_rows=4096), home)
    except DataError as e:
        print(f"(ingest: {e}; using scikit-learn digits, 8x8)")
        return prepare(DataSpec(source="digits", n_labeled=100, n_val=100), home)


def _ingest_summary(rec: dict[str, Any]) -> dict[str, Any]:
    n, b = rec["steps_per_epoch"], rec["batch"]
    dev, ray_s, mem_s, only = (min(rec[k]) for k in ("device_s", "ray_s", "memory_stream_s", "ray_data_only_s"))
    rec["summary"] = {
        "device_img_s": n * b / dev,
        "memory_stream_img_s": n * b / mem_s,
        "ray_img_s": n * b / ray_s,
        "ray_data_only_img_s": n * b / only,
        "ray_overhead_frac_of_step": max(0.0, 1.0 - dev / ray_s),
    }
    return rec


# ---------------------------------------------------------------------------------------------------- main
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mode", choices=("step", "ingest"), default="step")
    ap.add_argument("--settings", default=None, help=f"comma list (default {DEFAULT_SETTINGS})")
    ap.add_argument("--batch", type=int, default=None, help="rows per step of the fast settings (default 2048)")
    ap.add_argument("--ref-batch", type=int, default=None, help="rows per step of the reference (default 64)")
    ap.add_argument("--steps", type=int, default=None, help="timed steps of the fast settings (default 15)")
    ap.add_argument("--ref-steps", type=int, default=None, help="timed steps of the reference (default 30)")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--check-bf16", action="store_true", help="float32 vs bf16 loss tracking (after step mode)")
    ap.add_argument("--check-steps", type=int, default=None, help="steps of the bf16 check (default 200)")
    ap.add_argument(
        "--bf16-tol",
        type=float,
        default=0.01,
        help="bits/dim: the largest accepted difference of the mean loss over the last 50 steps",
    )
    ap.add_argument("--no-step", action="store_true", help="skip the step table (e.g. only --check-bf16)")
    ap.add_argument("--tiny", action="store_true", help="CPU smoke test: tiny model and batches, 2 steps")
    ap.add_argument("--compile-on-cpu", action="store_true", help="compile on a CPU device too (smoke tests)")
    ap.add_argument(
        "--backend",
        default=None,
        help="torch.compile backend (default inductor; 'eager' or "
        "'aot_eager' trace without code generation: CPU smoke tests of the compiled settings)",
    )
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--home", default=None)
    ap.add_argument("--ingest-setting", default="fast_couplings")
    ap.add_argument("--ingest-epochs", type=int, default=2)
    ap.add_argument("--json", default=None, help="write all results to this file")
    a = ap.parse_args(argv)
    tiny = a.tiny
    a.settings = a.settings or ("reference,fast_eager" if tiny else DEFAULT_SETTINGS)
    a.batch = a.batch or ((64 if a.mode == "ingest" else 16) if tiny else 2048)
    if tiny and a.mode == "ingest":
        a.ingest_epochs = 1
    a.ref_batch = a.ref_batch or (8 if tiny else 64)
    a.steps = a.steps or (2 if tiny else 15)
    a.ref_steps = a.ref_steps or (2 if tiny else 30)
    a.check_steps = a.check_steps or (4 if tiny else 200)
    if tiny:
        a.warmup = min(a.warmup, 1)
        torch.set_num_threads(1)  # tiny convolutions: threads only contend (and a shared CI box is busy)
    return a


def main(argv: list[str] | None = None) -> dict[str, Any]:
    a = parse_args(argv)
    tiny = a.tiny
    device = torch.device("cuda" if torch.cuda.is_available() and not tiny else "cpu")
    cfg = resolve("mnist")
    spec = model_spec(cfg, tiny)
    info = device_info(device)
    print("device:", json.dumps(info), flush=True)
    out: dict[str, Any] = {"info": info, "argv": sys.argv if argv is None else argv}
    if a.mode == "ingest":
        out["ingest"] = ingest_mode(a, cfg, device, spec)
        print(json.dumps(out["ingest"], indent=1))
    else:
        x, y, src = load_images(a.data_dir, n=4000 if tiny else None)
        out["data"] = src
        print(f"data: {src}, {len(x)} rows", flush=True)
        if not a.no_step:
            out["results"] = step_mode(a, cfg, device, spec, x, y)
            print(
                f"\nFlowGMM-cons step of the mnist flow on {info.get('gpu', 'CPU')} (the issue's analytic figure: "
                f"{ANALYTIC_GFLOP} GFLOP/image)"
            )
            print_table(out["results"])
        if a.check_bf16:
            out["bf16_check"] = check_bf16(a, cfg, device, spec, x, y)
            bc = {k: v for k, v in out["bf16_check"].items() if k != "curves_every_10"}
            print("bf16 check:", json.dumps(bc), flush=True)
    if a.json:
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(json.dumps(out, indent=1, default=str))
    return out


if __name__ == "__main__":
    main()
