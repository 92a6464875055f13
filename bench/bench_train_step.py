"""Training-step benchmark of the ``mnist`` configuration through the training loop's own step
(``pipeline.train.engine.Engine.train_step``: the fast path from the configuration, the fused optimizer, the
non-finite guard): the reference recipe and the fast settings side by side, in one process, on whatever device it
finds.

    python bench/bench_train_step.py                                   # reference, fast_eager, fast_full
    python bench/bench_train_step.py --settings reference,fast_full --batch 2048 --steps 15
    python bench/bench_train_step.py --check-bf16 --check-steps 200    # float32 vs bf16 loss tracking
    python bench/bench_train_step.py --tiny                            # CPU smoke test (seconds)
    python bench/bench_train_step.py --compile-cache /tmp/cc ...       # run twice: cold, then warm compile warm-up

Settings (``name`` or ``name@ROWS``; ROWS = labeled + unlabeled rows of the gradient forward, mixed 1:3 like the
mnist configuration, 64 + 192), each a set of configuration overrides that training itself applies:

    reference       train.bf16=false, compile none, NCHW, 32 labeled + 32 unlabeled: the paper's recipe.
    fast_eager      train.bf16=true train.channels_last=true train.batch_rows=ROWS (lr scaled, pipeline.config.scaling)
    fast_full       fast_eager + train.compile=full (the whole flow compiled)

Every step is a FlowGMM-cons step past the consistency ramp: the no-grad forward of the second augmentation plus
the forward/backward of labeled + unlabeled rows. images/s counts the rows of the gradient forward. Batches are built
by the training stream (rows on the device, augmentation included) before the timed window, four in rotation.

Columns: img/s (median step), TFLOP/s (measured FLOPs/image x img/s; FLOPs counted on an eager float32 step),
peak GiB, warm-up s (the first steps' time beyond their steady cost: compilation, from the compile cache when it
is warm), graphs (Dynamo graphs compiled), x ref, fwd err (relative error of the setting's forward against a float32
eager forward; in brackets the plain eager model in the setting's precision, the rounding it should match).
The bf16 check (``--check-bf16``) compares the mean loss of the last steps in bits/dim (see ``check_bf16``).
The table (and the bf16 check) go to stdout as the block of bench/RESULTS.md and to
``bench/results/bench_train_step_<device>[_tiny][_bf16].json`` (``--name`` to choose another).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

if not __package__:  # `python bench/bench_train_step.py`: import the project from this checkout
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import numpy as np  # noqa: E402
import torch  # noqa: E402

from bench.cli import add_dry_run, exit_if_dry_run  # noqa: E402
from bench.record import write_result  # noqa: E402
from flowgmm.spec import build_model  # noqa: E402
from pipeline.config import Config, resolve  # noqa: E402
from pipeline.core.atomic import atomic_write_text  # noqa: E402
from pipeline.data.ingest import Step  # noqa: E402
from pipeline.data.stream import SSLStream  # noqa: E402
from pipeline.train.engine import Engine  # noqa: E402
from pipeline.train.fastpath import CompileWarmup  # noqa: E402
from pipeline.train.step import compute_loss  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SETTINGS = {
    "reference": ["train.bf16=false", "train.channels_last=false", "train.compile=none"],
    "fast_eager": ["train.bf16=true", "train.channels_last=true", "train.compile=none"],
    "fast_full": ["train.bf16=true", "train.channels_last=true", "train.compile=full"],
}
DEFAULT_SETTINGS = "reference,fast_eager,fast_full"
ANALYTIC_GFLOP = 39.4  # the issue's figure for the reference step (per image, incl. the no-grad forward)


@dataclass
class Run:
    """One benchmark invocation: device, data, shared options."""

    device: torch.device
    x: np.ndarray
    y: np.ndarray
    steps: int
    warmup: int
    tiny: bool
    backend: str | None
    compile_cache: str | None


def setting_config(item: str, a: argparse.Namespace) -> Config:
    """The mnist configuration with a setting's overrides, as training would resolve it."""
    name, _, rows = item.partition("@")
    if name not in SETTINGS:
        raise SystemExit(f"unknown setting {name!r}; choose from {sorted(SETTINGS)}")
    over = list(SETTINGS[name])
    if name == "reference":
        n = int(rows or a.ref_batch)
        over += [f"ingest.labeled_batch={n // 2}", f"ingest.unlabeled_batch={n - n // 2}"]
    else:
        over.append(f"train.batch_rows={int(rows or a.batch)}")
    if a.backend:
        over.append(f"train.compile_backend={a.backend}")
    if a.tiny:
        over += ["model.mid_channels=8", "model.num_blocks=1"]
    return resolve("mnist", overrides=over)


def model_spec(cfg: Config, shape=(1, 28, 28)) -> dict[str, Any]:
    return {"kind": "image", "shape": list(shape), "num_classes": 10, "model": vars(cfg.model).copy(), "seed": 0}


def find_mnist(data_dir: str | None) -> Path | None:
    for c in (
        data_dir,
        os.environ.get("FLOWGMM_DATA"),
        REPO / ".device_carry" / "data",
        REPO.parent / "shared" / "data",
    ):
        if c and (Path(c) / "MNIST" / "raw" / "train-images-idx3-ubyte.gz").is_file():
            return Path(c)
    return None


def load_images(data_dir: str | None, n: int | None = None) -> tuple[np.ndarray, np.ndarray, str]:
    """uint8 ``[N, 784]`` and labels: MNIST train images when found, else synthetic uint8 (same shapes)."""
    d = find_mnist(data_dir)
    if d is not None:
        from pipeline.data.sources import load_idx

        raw = load_idx("mnist", d)
        x, y, src = raw.x_train.reshape(len(raw.x_train), -1), raw.y_train.astype(np.int64), f"MNIST ({d})"
    else:
        rng = np.random.default_rng(0)
        x, y = rng.integers(0, 256, size=(12000, 784), dtype=np.uint8), rng.integers(0, 10, size=12000)
        src = "synthetic uint8"
    return (x[:n], y[:n], src) if n else (x, y, src)


def batches(cfg: Config, r: Run, k: int = 4, seed: int = 0) -> list[Step]:
    """``k`` FlowGMM-cons batches from the training stream, rows on the device."""
    n_lab = min(1000, len(r.x) // 4)
    arrays = {"x_lab": r.x[:n_lab], "y_lab": r.y[:n_lab], "x_unl": r.x[n_lab:]}
    man = {
        "name": "bench",
        "kind": "image",
        "shape": [1, 28, 28],
        "counts": {"labeled": n_lab, "unlabeled": len(r.x) - n_lab},
    }
    ingest = cfg.ingest if not r.tiny else type(cfg.ingest)(**{**vars(cfg.ingest), "translate": 0})
    stream = SSLStream.in_memory(man, ingest, seed=seed, device=r.device, arrays=arrays, second_view=True)
    it = stream.batches(0)
    return [next(it) for _ in range(k)]


def flops_per_image(cfg: Config, batch: Step, device: torch.device) -> float:
    """FLOPs of one eager float32 FlowGMM-cons step per row of the gradient forward (counted on a small batch of the
    same labeled:unlabeled mix; the count is linear in the batch)."""
    from torch.utils.flop_counter import FlopCounterMode

    nl, nu = cfg.ingest.labeled_batch, cfg.ingest.unlabeled_batch
    g = math.gcd(nl, nu)
    nl, nu = nl // g, nu // g
    while nl + nu < 4:
        nl, nu = 2 * nl, 2 * nu
    model = build_model(model_spec(cfg)).to(device)
    t = type(cfg.train)(**{**vars(cfg.train), "bf16": False, "compile": "none", "channels_last": False})
    small = Step(batch.x_lab[:nl], batch.y_lab[:nl], batch.x_unl[:nu], batch.x_unl2[:nu])
    with FlopCounterMode(display=False) as fc:
        loss, _ = compute_loss(model, model, small, t, t.consistency_ramp_steps + 1, 256)
        loss.backward()
    return fc.get_total_flops() / (nl + nu)


def time_steps(engine: Engine, bs: list[Step], steps: int) -> list[float]:
    """Per-step seconds of ``engine.train_step`` (CUDA events on a GPU: no host sync inside the timed window)."""
    dev = engine.device
    if dev.type == "cuda":
        ev = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(steps)]
        for i in range(steps):
            ev[i][0].record()
            engine.train_step(bs[i % len(bs)])
            ev[i][1].record()
        torch.cuda.synchronize(dev)
        return [a.elapsed_time(b) / 1000.0 for a, b in ev]
    out = []
    for i in range(steps):
        t0 = time.perf_counter()
        engine.train_step(bs[i % len(bs)])
        out.append(time.perf_counter() - t0)
    return out


def bench_setting(item: str, a: argparse.Namespace, r: Run) -> dict[str, Any]:
    cfg = setting_config(item, a)
    t = cfg.train
    bs = batches(cfg, r)
    rows = cfg.ingest.labeled_batch + cfg.ingest.unlabeled_batch
    res: dict[str, Any] = {
        "setting": item,
        "batch": rows,
        "lr": t.lr,
        "bf16": t.bf16,
        "compile": t.compile,
        "channels_last": t.channels_last,
        "flops_per_image": flops_per_image(cfg, bs[0], r.device),
    }
    if r.device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(r.device)
    torch._dynamo.reset()
    torch.manual_seed(0)
    engine = Engine(model_spec(cfg), cfg, r.device, compile_cache=r.compile_cache)
    engine.step = t.consistency_ramp_steps + 1  # past the ramp: every step runs the consistency forward
    warm = CompileWarmup(r.device, steps=r.warmup)
    with warm:
        for i in range(r.warmup):
            engine.train_step(bs[i % len(bs)])
    times = time_steps(engine, bs, r.steps)
    med = statistics.median(times)
    res.update(
        step_s_median=med,
        step_s_min=min(times),
        steps=r.steps,
        images_per_s=rows / med,
        warmup_s=warm.seconds,
        compile_s=warm.compile_seconds(med),
        graphs=warm.graphs,
        **engine.fast_path_metrics(),
    )
    res["tflops"] = res["flops_per_image"] * res["images_per_s"] / 1e12
    res["peak_mem_gib"] = torch.cuda.max_memory_allocated(r.device) / 2**30 if r.device.type == "cuda" else float("nan")
    engine.check_finite()
    res["fwd_rel_err"], res["fwd_rel_err_plain_eager"] = check_forward(engine, cfg, bs[1])
    del engine, bs
    if r.device.type == "cuda":
        torch.cuda.empty_cache()
    return res


def check_forward(engine: Engine, cfg: Config, batch: Step) -> tuple[float, float]:
    """Relative errors against the plain eager model in float32 (TF32 off) with the same weights: that of the
    engine's forward, and that of the plain eager model in the setting's own precision (the rounding baseline).
    The couplings' zero-initialised output convs are first set to random weights so that no coupling is the
    identity. Train-mode BatchNorm, no grad, the consistency forward's batch shape (no recompilation)."""
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for name, m in engine.model.named_modules():
            if name.endswith("out_conv"):
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * 0.05)
    plain = build_model(model_spec(cfg)).to(engine.device).train()
    plain.load_state_dict(engine.model.state_dict())
    x, dt = batch.x_unl2, engine.device.type
    tf32 = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    try:
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
        with torch.no_grad():
            z_ref, l_ref = plain(x)
            _, l_logit = plain.flow.layers[0](x)
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = tf32
    with torch.no_grad(), torch.autocast(dt, dtype=torch.bfloat16, enabled=cfg.train.bf16):
        z0, l0 = plain(x)
        z1, l1 = engine.forward(x)
    z_ref, l_ref, l_logit = z_ref.double(), l_ref.double(), l_logit.double()

    def err(z, ld):
        zr = ((z.double() - z_ref).norm() / z_ref.norm()).item()
        return max(zr, ((ld.double() - l_ref).norm() / (l_ref - l_logit).norm().clamp_min(1e-12)).item())

    return err(z1, l1), err(z0, l0)


def table_lines(results: list[dict], dev: str) -> list[str]:
    """The step table: one line per setting (a failed setting says why)."""
    gflop = f"the issue's analytic figure: {ANALYTIC_GFLOP} GFLOP/image"
    lines = [f"FlowGMM-cons step of the mnist flow on {dev} ({gflop})"]
    ref = next((r for r in results if r["setting"].startswith("reference") and "error" not in r), None)
    head = (
        f"{'setting':<22}{'batch':>6}{'GFLOP/img':>10}{'img/s':>9}{'TFLOP/s':>9}{'peak GiB':>9}{'warm-up s':>10}"
        f"{'graphs':>7}{'x ref':>7}{'fwd err (eager)':>18}"
    )
    lines += [head, "-" * len(head)]
    for r in results:
        if "error" in r:
            lines.append(f"{r['setting']:<22}  FAILED: {r['error'][:90]}")
            continue
        ratio = r["images_per_s"] / ref["images_per_s"] if ref else float("nan")
        lines.append(
            f"{r['setting']:<22}{r['batch']:>6}{r['flops_per_image'] / 1e9:>10.2f}{r['images_per_s']:>9.0f}"
            f"{r['tflops']:>9.1f}{r['peak_mem_gib']:>9.2f}{r['compile_s']:>10.1f}{r['graphs']:>7}{ratio:>7.2f}"
            f"{r['fwd_rel_err']:>9.1e} ({r['fwd_rel_err_plain_eager']:.1e})"
        )
    return lines


def bf16_line(c: dict[str, Any]) -> str:
    """The bf16 check in one line: the figure it is judged on (bits/dim) first."""
    verdict = "passed" if c["passed"] else "FAILED"
    return (
        f"bf16 vs float32, {c['steps']} steps, mean loss of the last {c['compared_last']}: "
        f"{c['mean_loss_diff_bits_per_dim']:.4f} bits/dim apart (tolerance {c['tolerance_bits_per_dim']}: {verdict}); "
        f"per-step relative loss difference {c['mean_rel_loss_diff']:.3f} (mean); "
        f"{c['seconds']['float32']:.0f} s float32, {c['seconds']['bf16']:.0f} s bf16"
    )


def check_bf16(a: argparse.Namespace, r: Run) -> dict[str, Any]:
    """``--check-steps`` steps of the mnist recipe (its batch and lr, consistency ramp from step 0) from the same init,
    data and dequantization noise, float32 vs bf16 autocast (+ channels-last), both eager, through the engine; the
    mean losses over the last 50 steps (or the last half) are compared in bits per dimension. Passes when the
    difference is at most ``--bf16-tol`` (a relative tolerance is ill-posed: the NLL crosses zero early)."""
    n, runs = a.check_steps, {}
    for name, over in (
        ("float32", ["train.bf16=false", "train.channels_last=false"]),
        ("bf16", ["train.bf16=true", "train.channels_last=true"]),
    ):
        cfg = resolve(
            "mnist",
            overrides=over
            + (
                ["model.mid_channels=8", "model.num_blocks=1", "ingest.labeled_batch=4", "ingest.unlabeled_batch=12"]
                if a.tiny
                else []
            ),
        )
        torch.manual_seed(0)
        engine = Engine(model_spec(cfg), cfg, r.device)
        bs = batches(cfg, r, k=8, seed=1)
        torch.manual_seed(123)  # the dequantization noise: the same draws in both runs
        t0 = time.perf_counter()
        losses = [float(engine.train_step(bs[i % len(bs)])) for i in range(n)]
        runs[name] = {"loss": np.asarray(losses), "seconds": time.perf_counter() - t0}
    last = min(50, max(1, n // 2))
    lf, lb = runs["float32"]["loss"][-last:], runs["bf16"]["loss"][-last:]
    dim = 784
    out = {
        "steps": n,
        "compared_last": last,
        "finite": bool(np.isfinite(lf).all() and np.isfinite(lb).all()),
        "mean_rel_loss_diff": float((np.abs(lb - lf) / np.maximum(np.abs(lf), 1e-12)).mean()),
        "mean_loss_diff_bits_per_dim": float(abs(lb.mean() - lf.mean()) / (dim * math.log(2))),
        "tolerance_bits_per_dim": a.bf16_tol,
        "seconds": {k: v["seconds"] for k, v in runs.items()},
        "curves_every_10": {k: [round(float(v), 3) for v in runs[k]["loss"][::10]] for k in runs},
    }
    out["passed"] = out["finite"] and out["mean_loss_diff_bits_per_dim"] <= a.bf16_tol
    return out


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
            cuda=torch.version.cuda,
        )
        try:
            q = "--query-gpu=name,driver_version,power.limit,clocks.max.sm,memory.total"
            cmd = ["nvidia-smi", q, "--format=csv,noheader"]
            info["nvidia_smi"] = subprocess.run(cmd, capture_output=True, text=True, timeout=20).stdout.strip()
        except Exception:  # noqa: BLE001
            pass
    return info


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--settings", default=None, help=f"comma list (default {DEFAULT_SETTINGS})")
    ap.add_argument("--batch", type=int, default=None, help="rows per step of the fast settings (default 2048)")
    ap.add_argument("--ref-batch", type=int, default=None, help="rows per step of the reference (default 64)")
    ap.add_argument("--steps", type=int, default=None, help="timed steps per setting (default 15)")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--check-bf16", action="store_true", help="float32 vs bf16 loss tracking (after the table)")
    ap.add_argument("--check-steps", type=int, default=None, help="steps of the bf16 check (default 200)")
    ap.add_argument("--bf16-tol", type=float, default=0.01, help="bits/dim: largest accepted mean-loss difference")
    ap.add_argument("--no-step", action="store_true", help="skip the step table (e.g. only --check-bf16)")
    ap.add_argument("--tiny", action="store_true", help="CPU smoke test: tiny model and batches, 2 steps")
    ap.add_argument("--backend", default=None, help="torch.compile backend (train.compile_backend; default inductor)")
    ap.add_argument("--compile-cache", default=None, help="compile cache directory (run twice: cold, then warm)")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--json", default=None, help="write all results to this file")
    ap.add_argument("--name", default=None, help="name of the record in bench/results (default from the run)")
    add_dry_run(ap)
    return ap


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = build_parser()
    a = ap.parse_args(argv)
    a.settings = a.settings or ("reference,fast_eager" if a.tiny else DEFAULT_SETTINGS)
    unknown = [s for s in a.settings.split(",") if s.strip() and s.strip().partition("@")[0] not in SETTINGS]
    if unknown:
        ap.error(f"--settings: unknown setting {unknown[0]!r}; choose from {', '.join(SETTINGS)}")
    a.batch = a.batch or (16 if a.tiny else 2048)
    a.ref_batch = a.ref_batch or (8 if a.tiny else 64)
    a.steps = a.steps or (2 if a.tiny else 15)
    a.check_steps = a.check_steps or (4 if a.tiny else 200)
    if a.tiny:
        a.warmup = min(a.warmup, 1)
    return a


def save_json(path: str | None, out: dict[str, Any]) -> None:
    if path:
        atomic_write_text(path, json.dumps(out, indent=1, default=str))


def record(a: argparse.Namespace, out: dict[str, Any], device: torch.device) -> None:
    """The step table and the bf16 check as the block of bench/RESULTS.md, figures to bench/results."""
    lines = table_lines(out["results"], out["info"].get("gpu", "CPU")) if out["results"] else []
    if "bf16_check" in out:
        lines.append(bf16_line(out["bf16_check"]))
    name = a.name or "bench_train_step_" + device.type + ("_tiny" if a.tiny else "") + ("_bf16" if a.no_step else "")
    figures = {k: v for k, v in out.items() if k != "argv"}
    figures.get("bf16_check", {}).pop("curves_every_10", None)
    write_result(name, figures, "```\n" + "\n".join(lines) + "\n```")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    a = parse_args(argv)
    exit_if_dry_run(a)
    if a.tiny:
        torch.set_num_threads(1)  # tiny convolutions: threads only contend
    device = torch.device("cuda" if torch.cuda.is_available() and not a.tiny else "cpu")
    info = device_info(device)
    print("device:", json.dumps(info), flush=True)
    x, y, src = load_images(a.data_dir, n=4000 if a.tiny else None)
    print(f"data: {src}, {len(x)} rows", flush=True)
    r = Run(device, x, y, a.steps, a.warmup, a.tiny, a.backend, a.compile_cache)
    out: dict[str, Any] = {"info": info, "data": src, "argv": sys.argv if argv is None else argv, "results": []}
    for item in [s.strip() for s in a.settings.split(",") if s.strip()] if not a.no_step else []:
        print(f"... {item}", flush=True)
        try:
            res = bench_setting(item, a, r)
        except Exception as e:  # noqa: BLE001 - one failed setting (OOM, compiler error) must not lose the rest
            res = {"setting": item, "error": f"{type(e).__name__}: {e}"}
        print(
            "    " + json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in res.items()}), flush=True
        )
        out["results"].append(res)
        save_json(a.json, out)  # after every setting: a run stopped by its time limit keeps what it measured
    if a.check_bf16:
        out["bf16_check"] = check_bf16(a, r)
    save_json(a.json, out)
    record(a, out, device)
    return out


if __name__ == "__main__":
    main()
