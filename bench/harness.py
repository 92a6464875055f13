"""Harness code for benchmarks and tests, importable by the Ray workers they start (the repository root is on the
workers' ``PYTHONPATH``): a Ray Train function that runs the training loop's ingest (:class:`SSLStream`) with an
optional small MLP step and records step counts and timings per rank. Never imported by product code.

    TorchTrainer(probe_loop, train_loop_config={"prepared": prepared, "ingest": {...}, "epochs": 2,
                                                 "out_dir": "/tmp/probe"}, ...)
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline.config import IngestSpec
from pipeline.data.ingest import Step, manifest_of
from pipeline.data.manifest import Prepared
from pipeline.data.stream import SSLStream


def probe_loop(config: dict) -> None:
    """A train function that runs SSLStream for ``epochs`` and records step counts and timings per rank.

    config: prepared (Prepared), ingest (dict for IngestSpec), epochs, seed, out_dir, source ("ray"|"memory"),
    model (None|"mlp"), warmup_epochs. Writes ``<out_dir>/rank-<r>.json``. Used by the tests and bench/."""
    import json

    import ray.train

    ctx = ray.train.get_context()
    rank, ws = ctx.get_world_rank(), ctx.get_world_size()
    spec = IngestSpec(**config.get("ingest", {}))
    prepared = config["prepared"]
    if config.get("source", "ray") == "memory":
        stream = SSLStream.in_memory(prepared, spec, ws, rank, config.get("seed", 0))
    else:
        stream = SSLStream(prepared, spec, ws, rank, config.get("seed", 0))
    model = opt = None
    if config.get("model"):
        import ray.train.torch

        model = _probe_model(prepared, config.get("hidden", 256))
        model = ray.train.torch.prepare_model(model) if ws > 1 else model
        opt = torch.optim.Adam(model.parameters(), 1e-3)
    rec: dict[str, Any] = {
        "rank": rank,
        "world_size": ws,
        "steps_per_epoch": stream.steps_per_epoch,
        "steps": [],
        "seconds": [],
        "rows": [],
        "first_labels": [],
        "first_unl_sum": [],
    }
    for epoch in range(int(config.get("epochs", 2))):
        t0 = time.perf_counter()
        n = rows = 0
        for step in stream.epoch(epoch):
            if n == 0:
                rec["first_labels"].append(step.y_lab[:8].tolist())
                rec["first_unl_sum"].append(float(step.x_unl.sum()))
            if model is not None:
                _probe_step(model, opt, step)
            n += 1
            rows += len(step.x_unl) + len(step.x_lab)
        rec["steps"].append(n)
        rec["rows"].append(rows)
        rec["seconds"].append(time.perf_counter() - t0)
    rec["recycled_steps"] = stream.stats["recycled_steps"]
    rec["on_device"] = stream.on_device
    out = Path(config["out_dir"])
    out.mkdir(parents=True, exist_ok=True)
    (out / f"rank-{rank}.json").write_text(json.dumps(rec))


def _probe_model(prepared: Prepared | dict, hidden: int) -> torch.nn.Module:
    m = manifest_of(prepared)
    d, k = int(np.prod(m["shape"])), int(m["num_classes"])
    return torch.nn.Sequential(
        torch.nn.Flatten(),
        torch.nn.Linear(d, hidden),
        torch.nn.ReLU(),
        torch.nn.Linear(hidden, hidden),
        torch.nn.ReLU(),
        torch.nn.Linear(hidden, k),
    )


def _probe_step(model, opt, step: Step) -> float:
    """One SSL-shaped step: a single forward on labeled + both unlabeled views, CE + consistency."""
    xs = [step.x_lab, step.x_unl] + ([step.x_unl2] if step.x_unl2 is not None else [])
    out = model(torch.cat(xs))
    nl, nu = len(step.x_lab), len(step.x_unl)
    loss = torch.nn.functional.cross_entropy(out[:nl], step.y_lab)
    if step.x_unl2 is not None:
        loss = loss + (out[nl : nl + nu].softmax(-1) - out[nl + nu :].softmax(-1)).pow(2).sum(-1).mean()
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return float(loss)
