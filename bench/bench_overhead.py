"""What the pipeline costs beyond the math: the default job's training in plain single-process PyTorch (same model,
data, steps, batches, augmentation and loss) against the same job through ``pipeline/run.py``, side by side in one
run, with the job's breakdown (process start, Ray start, data preparation, trainer start, data pull, training,
evaluation, baseline, MLflow).

    python bench/bench_overhead.py --repeats 2          # the default job (digits): cold, then the baseline cached
    python bench/bench_overhead.py --config mnist_cpu --repeats 2 train.steps=500 train.consistency_start_step=250
    python bench/bench_overhead.py --config mnist_cpu --result bench_overhead_mnist_cpu_full    # the recipe's steps
    python bench/bench_overhead.py --config mnist_cpu --idle-ray 5 train.steps=150 train.consistency_start_step=20
    python bench/bench_overhead.py --busy-neighbour 5     # digits' loop alone vs beside a second one on the other core
    python bench/bench_overhead.py --config mnist_cpu --optimizer 3 train.steps=150 train.method=labels_only

Both sides train the main model with the same torch threads (a model trained in the driver: ``train.cpus_per_worker``
whole cores, ``pipeline.train.loop.driver_threads``). The plain loop draws its batches with the same seeded index
permutations and augmentation as the training stream, on tensors already in memory, and calls the same loss
(``pipeline.train.step``); it validates nothing and writes nothing. It runs in a new Python process each time, as a
plain script would, and the job's training time (model, optimizer, data onto the device, steps, validation) is
compared with its build and steps: the optimizer's first construction imports ``torch._dynamo`` (~1 s), which either
pays once per process. Where the job's baselines trained beside its model, the plain loop runs a second time with
the same baselines beside it (the job's conditions). Results go to stdout (the block of
bench/RESULTS.md), ``bench/results/bench_overhead_<config>.json`` (or ``--result``) and ``--json``. ``--idle-ray``
measures instead what an idle local Ray costs the plain loop (why a job with nothing for Ray to run never starts it);
``--busy-neighbour`` what a second copy of the loop on the other core costs it (the machine's share, whatever the
pipeline does: the price of training the baselines beside the model); ``--optimizer`` the plain loop with the
product's optimizer (AdamW fused: ``pipeline.train.engine.build_optimizer``) against torch's per-tensor AdamW, the CPU
default before it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

if not __package__:  # `python bench/bench_overhead.py`: import the project from this checkout
    sys.path[0] = str(Path(__file__).resolve().parents[1])

from bench.cli import add_dry_run, exit_if_dry_run  # noqa: E402
from bench.record import write_result  # noqa: E402
from pipeline.config.methods import ANCHORS, LABELS_ONLY  # noqa: E402
from pipeline.core.atomic import atomic_write_text  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def plain_pytorch(
    config: str, home: Path, overrides: list[str], threads: int | None = None, per_tensor: bool = False, **how: bool
) -> dict[str, float]:
    """The job's main model, trained in a plain loop: build, then ``train.steps`` steps on in-memory tensors, on the
    job's threads (or ``threads``); ``per_tensor``: torch's per-tensor AdamW instead of the product's fused one;
    ``beside=True``: with the job's baselines training beside the loop as a local job with room trains them."""
    import torch

    from flowgmm.spec import build_model
    from pipeline.config import resolve
    from pipeline.data import prepare
    from pipeline.data.stream import SSLStream
    from pipeline.train.engine import build_optimizer
    from pipeline.train.loop import driver_threads
    from pipeline.train.model import model_spec
    from pipeline.train.state import lr_lambda
    from pipeline.train.step import apply_gradients, compute_loss

    cfg = resolve(config, overrides=overrides)
    t = cfg.train
    prepared = prepare(cfg.data, home)
    torch.set_num_threads(threads or (driver_threads(t) if t.num_workers == 0 else torch.get_num_threads()))
    t0 = time.perf_counter()
    torch.manual_seed(t.seed)
    model = build_model(model_spec(cfg, prepared))
    opt = build_optimizer(model, t, torch.device("cpu"))
    if per_tensor:  # the same parameter groups and settings, updated one tensor at a time
        opt = torch.optim.AdamW([{**g, "fused": None, "foreach": False} for g in opt.param_groups])
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(cfg, t.steps))
    stream = SSLStream.in_memory(
        prepared, cfg.ingest, seed=t.seed, unlabeled=t.method != "labels_only", second_view=t.method == "flowgmm_cons"
    )
    it = stream.batches(0)
    beside = _baselines_beside(cfg, prepared, home) if how.get("beside") else None
    t_build = time.perf_counter()
    levels = prepared.levels
    for k in range(t.steps):
        loss, _ = compute_loss(model, model, next(it), t, k, levels)
        apply_gradients(loss, model, opt, sched, t.grad_clip)
    float(loss.detach())
    end = time.perf_counter()
    if beside is not None and (error := beside.result().error) is not None:
        raise SystemExit(f"the baselines beside the plain loop failed: {error}")
    return {
        "plain_build_s": t_build - t0,
        "plain_train_s": end - t_build,
        "plain_total_s": end - t0,
        "steps": float(t.steps),
        "plain_step_s": (end - t_build) / t.steps,
        "threads": float(torch.get_num_threads()),
    }


def plain_fresh(config: str, home: Path, overrides: list[str], beside: bool = False) -> dict[str, float]:
    """:func:`plain_pytorch` in a new Python process, as a plain PyTorch script runs: its model and optimizer built
    cold, like the job's (the optimizer's first construction imports ``torch._dynamo``: ~1 s on this machine)."""
    cmd = [sys.executable, __file__, "--config", config, "--home", str(home), "--plain", *overrides]
    cmd += ["--plain-beside"] if beside else []
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=dict(os.environ), timeout=3600)
    if proc.returncode != 0:
        raise SystemExit(f"the plain loop failed:\n{proc.stderr[-3000:]}")
    return json.loads([line for line in proc.stdout.splitlines() if line.startswith("{")][-1])


def _baselines_beside(cfg, prepared, home: Path):
    """The job's baselines (labels-only flow and anchors) in a process of their own, as a local job with room for
    them starts them beside its model (``BesideProcess``; a new run name each time: nothing reused)."""
    from pipeline.data.shards import load_split
    from pipeline.results.baselines import BaselineWork, BesideProcess
    from pipeline.train.model import model_spec

    val = load_split(prepared, "val")
    name = f"plain-labels-only-{time.time_ns()}"
    work = BaselineWork(cfg, prepared, model_spec(cfg, prepared), val, name, str(home / "plain_baselines"))
    return BesideProcess(replace(work, progress=False, compile_cache=str(home / "compile_cache")))


def through_run_py(config: str, home: Path, overrides: list[str]) -> dict[str, float]:
    """``python pipeline/run.py`` in a subprocess; its wall time and the breakdown it logged to MLflow."""
    from mlflow import MlflowClient

    name = f"overhead-{time.strftime('%H%M%S')}"
    cmd = [
        sys.executable,
        str(REPO / "pipeline" / "run.py"),
        "--config",
        config,
        "--home",
        str(home),
        "--run-name",
        name,
        *overrides,
    ]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=dict(os.environ), timeout=1800)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"run.py failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    client = MlflowClient(tracking_uri=f"sqlite:///{home / 'mlflow.db'}")
    run = next(
        r for e in client.search_experiments() for r in client.search_runs([e.experiment_id]) if r.info.run_name == name
    )
    m = run.data.metrics
    out = {"job_wall_s": wall, "console_lines": float(len(proc.stdout.splitlines()) + len(proc.stderr.splitlines()))}
    out["process_start_s"] = wall - m["wall_seconds"]
    accuracies = ["test_accuracy", f"{LABELS_ONLY.key}_test_accuracy"]
    accuracies += [f"baseline_{k}_test_accuracy" for k in ANCHORS]
    for k in ("wall_seconds", "train_seconds", "step_s", "time_trainer_start_s", "time_data_pull_s", *accuracies):
        if k in m:
            out[k] = m[k]
    out.update({k: v for k, v in m.items() if k.startswith("time_") and k.endswith("_s")})
    out["labels_only_path"] = run.data.tags.get("labels_only_path", "not run")  # type: ignore[assignment]
    out["console"] = proc.stdout  # type: ignore[assignment]
    return out


def idle_ray(config: str, home: Path, overrides: list[str], pairs: int) -> tuple[dict[str, Any], list[str]]:
    """The plain loop alone, then beside an idle local Ray started as the job starts it (``connect()``: GCS, raylet,
    dashboard), ``pairs`` times alternately: what an unused Ray costs a model trained in the driver."""
    import ray

    from pipeline.core.raycluster import connect

    def beside():
        connect()
        time.sleep(3.0)  # past Ray's start: its processes idle
        return ray.shutdown

    return _alone_vs_beside(config, home, overrides, pairs, beside, "an idle Ray")


def busy_neighbour(config: str, home: Path, overrides: list[str], pairs: int) -> tuple[dict[str, Any], list[str]]:
    """The plain loop alone, then beside a second copy of it training in another process on the other core (one
    thread), ``pairs`` times alternately: what any computation beside a model costs its steps on this machine (the
    shared caches and memory), whatever the pipeline does. The job's baselines beside its model are such work."""

    def beside():
        cmd = [sys.executable, __file__, "--config", config, "--home", str(home), "--busy", *overrides]
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=REPO)
        try:
            time.sleep(8.0)  # past its imports and model build: training
        except BaseException:
            proc.kill()
            raise
        return lambda: (proc.kill(), proc.wait(timeout=30))

    return _alone_vs_beside(config, home, overrides, pairs, beside, "a busy neighbour")


def optimizer_pairs(config: str, home: Path, overrides: list[str], pairs: int) -> tuple[dict[str, Any], list[str]]:
    """The plain loop with torch's per-tensor AdamW and with the product's fused one, ``pairs`` times, the order
    swapped every pair."""
    rows, lines = [], []
    for i in range(pairs):
        steps = {}
        for per_tensor in (True, False) if i % 2 == 0 else (False, True):
            steps[per_tensor] = plain_pytorch(config, home, overrides, per_tensor=per_tensor)["plain_step_s"]
        old, new = steps[True], steps[False]
        rows.append({"per_tensor_step_s": old, "fused_step_s": new, "ratio": old / new})
        lines.append(f"pair {i + 1}: {old * 1000:.1f} ms per step with per-tensor AdamW, {new * 1000:.1f} ms fused: "
                     f"{old / new:.3f}x")  # fmt: skip
    ratios = sorted(r["ratio"] for r in rows)
    lines.append(f"median {ratios[len(ratios) // 2]:.3f}x faster fused, range {ratios[0]:.3f}-{ratios[-1]:.3f}x")
    return {"config": config, "overrides": overrides, "pairs": rows}, lines


def _alone_vs_beside(config, home, overrides, pairs, beside, what) -> tuple[dict[str, Any], list[str]]:
    rows, lines = [], []
    for i in range(pairs):
        alone = plain_pytorch(config, home, overrides)["plain_step_s"]
        stop = beside()
        try:
            near = plain_pytorch(config, home, overrides)["plain_step_s"]
        finally:
            stop()
        rows.append({"alone_step_s": alone, "beside_step_s": near, "ratio": near / alone})
        lines.append(f"pair {i + 1}: {alone * 1000:.1f} ms per step alone, {near * 1000:.1f} ms beside {what}: "
                     f"{near / alone:.3f}x")  # fmt: skip
    ratios = sorted(r["ratio"] for r in rows)
    lines.append(f"median {ratios[len(ratios) // 2]:.3f}x, range {ratios[0]:.3f}-{ratios[-1]:.3f}x over {pairs} pairs")
    return {"config": config, "overrides": overrides, "beside": what, "pairs": rows}, lines


def report(p: dict[str, float], j: dict[str, Any], near: dict[str, float] | None = None) -> list[str]:
    lines = [
        f"{'':34}{'seconds':>10}",
        f"{'plain PyTorch: build model':34}{p['plain_build_s']:>10.1f}",
        f"{'plain PyTorch: ' + str(int(p['steps'])) + ' training steps':34}{p['plain_train_s']:>10.1f}",
        f"{'run.py: whole job (wall)':34}{j['job_wall_s']:>10.1f}",
        f"{'  process start, imports':34}{j['process_start_s']:>10.1f}",
    ]
    for key, label in (
        ("time_ray_start_s", "Ray start"),
        ("time_ray_start_beside_s", "Ray start (beside the training)"),
        ("time_prepare_s", "data preparation"),
        ("time_train_s", "training (the main model)"),
        ("time_trainer_start_s", "    trainer start"),
        ("time_data_pull_s", "    data pull onto the device"),
        ("train_seconds", "    fit()"),
        ("time_evaluate_s", "evaluation + calibration"),
        ("time_baseline_s", "baselines (waiting for them)"),
        ("time_baselines_beside_s", "baselines (beside the training)"),
        ("time_mlflow_s", "MLflow (run, model, registry)"),
    ):
        if key in j:
            lines.append(f"{'  ' + label:34}{j[key]:>10.1f}")
        if key == "time_ray_start_beside_s" and not {"time_ray_start_s", key} & set(j):
            lines.append(f"{'  Ray start':34}{'not started':>14}")
    ratio = j["time_train_s"] / (p["plain_build_s"] + p["plain_train_s"])
    lines.append(
        f"training through run.py / plain PyTorch (build + steps): {ratio:.2f}x (per step "
        f"{j.get('step_s', float('nan')) * 1000:.1f} ms vs {p['plain_step_s'] * 1000:.1f} ms; {p['threads']:.0f} "
        f"thread{'s' if p['threads'] > 1 else ''} each"
        + (f"; the machine shared with {_shared(j)})" if "time_baselines_beside_s" in j else ")")
    )
    if near is not None:  # the plain loop in the job's conditions: its baselines on the other core
        both = j["time_train_s"] / (near["plain_build_s"] + near["plain_train_s"])
        lines.append(
            f"training through run.py / plain PyTorch, both beside the baselines: {both:.2f}x (per step "
            f"{j.get('step_s', float('nan')) * 1000:.1f} ms vs {near['plain_step_s'] * 1000:.1f} ms); the baselines "
            f"beside cost the plain loop {near['plain_step_s'] / p['plain_step_s']:.2f}x"
        )
    lines.append(
        f"job wall / main-model training: {j['job_wall_s'] / j['time_train_s']:.2f}x "
        f"(labels-only baseline {j.get('labels_only_path', 'not run')})"
    )
    names = {"test_accuracy": "the job's model", f"{LABELS_ONLY.key}_test_accuracy": LABELS_ONLY.display}
    names.update({f"baseline_{k}_test_accuracy": v for k, v in ANCHORS.items()})
    lines.append("test accuracy: " + ", ".join(f"{v} {j[k]:.3f}" for k, v in names.items() if k in j))
    lines.append(f"console lines: {j['console_lines']:.0f}")
    return lines


def _shared(j: dict[str, Any]) -> str:
    if "time_ray_start_beside_s" in j:
        return "Ray's start and the baselines"
    return "the baselines" if "time_ray_start_s" in j else "the baselines (no Ray started)"


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default="digits")
    ap.add_argument(
        "--repeats",
        type=int,
        default=1,
        help="alternate plain / run.py this many times (one home: the second job "
        "reuses the labels-only baseline from the cache)",
    )
    ap.add_argument("--home", default=None)
    ap.add_argument("--json", default=None)
    ap.add_argument("--result", default=None, help="the result's name in bench/results (default bench_overhead_CONFIG)")
    ap.add_argument(
        "--idle-ray", type=int, default=0, metavar="PAIRS", help="instead: the plain loop alone vs beside an idle Ray"
    )
    ap.add_argument(
        "--busy-neighbour", type=int, default=0, metavar="PAIRS", help="instead: alone vs beside a second plain loop"
    )
    ap.add_argument(
        "--optimizer", type=int, default=0, metavar="PAIRS", help="instead: per-tensor vs fused AdamW in the plain loop"
    )
    ap.add_argument("--plain", action="store_true", help=argparse.SUPPRESS)  # plain_fresh's process
    ap.add_argument("--plain-beside", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--busy", action="store_true", help=argparse.SUPPRESS)  # that second loop: trains until killed
    ap.add_argument("overrides", nargs="*", metavar="key=value")
    add_dry_run(ap)
    return ap


def main(argv: list[str] | None = None) -> dict[str, Any]:
    a = build_parser().parse_args(argv)
    exit_if_dry_run(a, [a.config], a.overrides)
    home = Path(a.home or tempfile.mkdtemp(prefix="bench-overhead-"))
    os.environ.setdefault("FLOWGMM_DATA", str(REPO.parent / "shared" / "data"))
    if a.plain:  # one plain loop in this new process: its figures as the last line
        print(json.dumps(plain_pytorch(a.config, home, a.overrides, beside=a.plain_beside)), flush=True)
        return {}
    if a.busy:
        import torch

        torch.set_num_threads(1)
        parent = os.getppid()
        while os.getppid() == parent:  # until killed, or orphaned
            plain_pytorch(a.config, home, a.overrides, threads=1)
        return {}
    modes = ((a.idle_ray, idle_ray, "idle_ray"), (a.busy_neighbour, busy_neighbour, "neighbour"))
    for pairs, measure, name in (*modes, (a.optimizer, optimizer_pairs, f"optimizer_{a.config}")):
        if pairs:
            figures, lines = measure(a.config, home, a.overrides, pairs)
            print("\n".join(lines), flush=True)
            write_result(a.result or f"bench_overhead_{name}", figures, "```\n" + "\n".join(lines) + "\n```")
            return figures
    out: dict[str, Any] = {"config": a.config, "overrides": a.overrides, "runs": []}
    blocks = []
    for i in range(a.repeats):
        p = plain_fresh(a.config, home, a.overrides)
        j = through_run_py(a.config, home, a.overrides)
        console = j.pop("console")
        near = plain_fresh(a.config, home, a.overrides, beside=True) if "time_baselines_beside_s" in j else None
        blocks.append(f"--- repeat {i + 1}: {a.config} {' '.join(a.overrides)}\n" + "\n".join(report(p, j, near)))
        print(blocks[-1], flush=True)
        out["runs"].append({"plain": p, "job": j, **({"plain_beside_baselines": near} if near else {})})
        out["console_of_last_job"] = console
    if a.json:
        atomic_write_text(a.json, json.dumps(out, indent=1))
    figures = {k: v for k, v in out.items() if k != "console_of_last_job"}
    write_result(a.result or f"bench_overhead_{a.config}", figures, "```\n" + "\n".join(blocks) + "\n```")
    return out


if __name__ == "__main__":
    main()
