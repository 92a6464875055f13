"""Ingest benchmark: the real FlowGMM training step fed the way training feeds it (Ray Data -> the worker's rows on
the device -> index batches + augmentation) against the same step on tensors already on the device.

    python bench/bench_ingest.py                                  # digits, moons, breast_cancer (the default recipes)
    python bench/bench_ingest.py --configs digits --steps 600 --workers 0,2
    python bench/bench_ingest.py --configs mnist --steps 20 --workers 1 train.use_gpu=true train.batch_rows=2048 \
        train.bf16=true train.channels_last=true                 # on a GPU

Per configuration, three ways to run ``--steps`` steps of its main model (steady per-step time, the first steps
excluded):
    train loop    ``pipeline.train.trainer.TrainRun`` (Ray Train; ``--workers`` 0 = in the driver, else DDP workers)
                  with one evaluation at the end: what a job runs (its ``step_s`` metric)
    stream        ``Engine.train_step`` on ``SSLStream.in_memory`` batches (same rows, same augmentation, no Ray)
    tensors       ``Engine.train_step`` on four batches built in advance (no batching or augmentation at all)
The ratio train loop / tensors is what the pipeline adds to the math. The table goes to stdout as the block of
bench/RESULTS.md and its figures to ``bench/results/bench_ingest.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

if not __package__:  # `python bench/bench_ingest.py`: import the project from this checkout
    sys.path[0] = str(Path(__file__).resolve().parents[1])

from bench.cli import add_dry_run, exit_if_dry_run  # noqa: E402
from bench.record import write_result  # noqa: E402
from pipeline.core.atomic import atomic_write_text  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def engine_step_s(cfg, prepared, steps: int, prebuilt: bool) -> float:
    """Steady seconds per ``Engine.train_step`` on stream batches (or on 4 prebuilt ones)."""
    import torch

    from pipeline.data.stream import SSLStream
    from pipeline.train.engine import Engine
    from pipeline.train.model import model_spec

    t = cfg.train
    device = torch.device("cuda" if t.use_gpu and torch.cuda.is_available() else "cpu")
    torch.manual_seed(t.seed)
    engine = Engine(model_spec(cfg, prepared), cfg, device)
    stream = SSLStream.in_memory(
        prepared,
        cfg.ingest,
        seed=t.seed,
        device=device,
        unlabeled=t.method != "labels_only",
        second_view=t.method == "flowgmm_cons",
    )
    it = stream.batches(0)
    fixed = [next(it) for _ in range(4)] if prebuilt else None
    for i in range(3):
        engine.train_step(fixed[i % 4] if fixed else next(it))
    t0 = time.perf_counter()
    for i in range(steps):
        engine.train_step(fixed[i % 4] if fixed else next(it))
    engine.check_finite()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) / steps


def loop_step_s(cfg, prepared, home: Path, workers: int) -> dict[str, float]:
    """The training loop through Ray Train; its own steady step time and start-up figures."""
    from dataclasses import replace

    from pipeline.data import load_split
    from pipeline.train.model import model_spec
    from pipeline.train.trainer import TrainRun

    t = replace(cfg.train, num_workers=workers, eval_every=cfg.train.steps, log_every=cfg.train.steps)
    c = replace(cfg, train=t)
    run = TrainRun(
        c,
        prepared,
        model_spec(c, prepared),
        run_name=f"ingest-{time.time_ns()}",
        storage_path=str(home / "ray_results"),
        mlflow_info=None,
        val=load_split(prepared, "val"),
        label=f"{cfg.name} ({workers} workers)",
    )
    m = run.fit().metrics
    return {
        "step_s": m["step_s"],
        "trainer_start_s": m.get("time_trainer_start_s", 0.0),
        "data_pull_s": m.get("time_data_pull_s", 0.0),
    }


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--configs", default="digits,moons,breast_cancer", help="comma-separated")
    ap.add_argument("--steps", type=int, default=600, help="timed steps (digits starts consistency at 500)")
    ap.add_argument("--workers", default="0", help="comma-separated worker counts (0: in the driver)")
    ap.add_argument("--home", default=None)
    ap.add_argument("--json", default=None)
    ap.add_argument("overrides", nargs="*", metavar="key=value", help="configuration overrides for every config")
    add_dry_run(ap)
    return ap


def markdown(out: dict[str, dict[str, float]]) -> str:
    """One row per configuration and worker count: milliseconds per step three ways, and the ratio."""
    lines = [
        "| config | workers | tensors ms | stream ms | train loop ms | train loop / tensors | data pull s |",
        "|---|---|---|---|---|---|---|",
    ]
    for key, r in out.items():
        name, workers = key.split("/")
        lines.append(
            f"| {name} | {workers} | {r['tensors_step_s'] * 1e3:.2f} | {r['stream_step_s'] * 1e3:.2f} | "
            f"{r['step_s'] * 1e3:.2f} | {r['step_s'] / r['tensors_step_s']:.2f} | {r['data_pull_s']:.2f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    a = build_parser().parse_args(argv)
    os.environ.setdefault("FLOWGMM_DATA", str(REPO.parent / "shared" / "data"))
    from pipeline.config import ConfigError, resolve

    try:  # every configuration checked before anything starts
        cfgs = [resolve(n, overrides=[*a.overrides, f"train.steps={a.steps + 3}"]) for n in a.configs.split(",")]
    except ConfigError as e:
        raise SystemExit(f"error: {e}") from None
    exit_if_dry_run(a)
    from pipeline.core.raycluster import export_checkout, quiet

    quiet()  # before Ray is imported
    import ray
    import torch

    from pipeline.data import prepare

    export_checkout()  # a benchmark's own Ray: no dashboard (a GPU host may lack its packages)
    gpus = torch.cuda.device_count()
    ray.init(address="local", num_cpus=os.cpu_count(), num_gpus=gpus, include_dashboard=False, logging_level="WARNING")
    home = Path(a.home or tempfile.mkdtemp(prefix="bench-ingest-"))
    out = {}
    for name, cfg in zip(a.configs.split(","), cfgs):
        prepared = prepare(cfg.data, home)
        tensors = engine_step_s(cfg, prepared, a.steps, prebuilt=True)
        stream = engine_step_s(cfg, prepared, a.steps, prebuilt=False)
        for w in (int(v) for v in a.workers.split(",")):
            loop = loop_step_s(cfg, prepared, home, w)
            out[f"{name}/{w}"] = {"tensors_step_s": tensors, "stream_step_s": stream, **loop}
            print(f"[bench] {name}, {w} workers: {loop['step_s'] / tensors:.2f}x the tensors' step", flush=True)
    ray.shutdown()
    if a.json:
        atomic_write_text(a.json, json.dumps(out, indent=1))
    write_result("bench_ingest", {"steps": a.steps, "overrides": a.overrides, "runs": out}, markdown(out))
    return out


if __name__ == "__main__":
    main()
