"""The training engine: the model, the forward the step calls (with the fast path applied), the optimizer and
schedule, and one step with its non-finite guard. Ray-free, so that the training loop and the benchmarks run the
same object.

    engine = Engine(spec, cfg, device)           # the model, compiled / channels-last as cfg.train asks
    loss = engine.train_step(batch)              # compute_loss + apply_gradients + guard; engine.step += 1
    engine.first_bad_step()                      # the first non-finite step over all ranks, or -1
    engine.check_finite()                        # raises NonFiniteLossError naming the first bad step
    engine.pop_means()                           # mean loss parts since the last call

Save and restore with :meth:`save` / :meth:`load` (model spec + weights + optimizer, schedule, step, and each
rank's generators: ``Engine(..., rank=r, world=n)`` seeds this rank's CPU and CUDA generators from (seed, rank)).
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from flowgmm.spec import build_model, levels_of
from flowgmm.spec import save as save_model
from pipeline.config import Config, TrainConfig
from pipeline.data.ingest import Step
from pipeline.train.fastpath import accelerate, compile_stats, enable_compile_cache
from pipeline.train.state import STATE_FILE, NonFiniteLossError, lr_lambda, rank_seed
from pipeline.train.step import apply_gradients, compute_loss

NO_STEP = 1 << 62  # encodes "no bad step" for the all-reduce (MAX of NO_STEP - step picks the earliest)
LOSS_PARTS = ("loss", "labeled_nll", "unlabeled_nll", "ce", "consistency")
WARMUP_STEPS = 3  # the first steps, whose extra time is the compile warm-up


def build_optimizer(model: torch.nn.Module, t: TrainConfig, device: torch.device) -> torch.optim.Optimizer:
    """AdamW with weight decay on the coupling nets' weight matrices only (not on biases, gains or the mixture);
    fused (one vectorised kernel over every tensor) on CUDA and CPU: on CPU, torch's default per-tensor update made
    the `mnist_cpu` flow's labels-only step (64 rows, 11.8M parameters, 2 threads) ~1.2x slower and its main step
    ~1.05x (``bench/bench_overhead.py --optimizer``, bench/RESULTS.md)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (no_decay if p.ndim <= 1 or "mixture" in name else decay).append(p)
    groups = [{"params": decay, "weight_decay": t.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=t.lr, fused=device.type in ("cuda", "cpu"))


class Engine:
    """Model + forward + optimizer + schedule + step counter for one training run on one device."""

    def __init__(
        self,
        spec: dict[str, Any],
        cfg: Config,
        device: torch.device,
        *,
        compile_cache: str | None = None,
        rank: int = 0,
        world: int = 1,
    ):
        t = cfg.train
        self.rank, self.world = int(rank), int(world)
        self.spec, self.cfg, self.t, self.device = spec, cfg, t, torch.device(device)
        self.image = spec["kind"] == "image"
        self.levels = levels_of(spec)
        if compile_cache and t.compile != "none":
            enable_compile_cache(compile_cache)
        self.model = build_model(spec).to(self.device)
        # what the step calls: the model, compiled when train.compile=full (channels-last applied in place)
        self.forward: torch.nn.Module = accelerate(self.model, t, self.device, backend=t.compile_backend)
        self.optimizer = build_optimizer(self.model, t, self.device)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_lambda(cfg, t.steps))
        self.step = 0
        self.best_score = -math.inf
        self.restored_from_step = -1
        self._first_bad = torch.full((), -1, dtype=torch.long, device=self.device)
        self._sums = torch.zeros(len(LOSS_PARTS), device=self.device)
        self._count = 0
        self._calls = 0
        self._frames0 = compile_stats().get("frames_ok", 0)
        self.timing: dict[str, float] = {}
        self.seed_generators(0)  # after the model: its initial weights do not depend on the rank

    def seed_generators(self, step: int) -> None:
        """This rank's CPU and CUDA generators (the dequantization noise) from (seed, rank, step)."""
        torch.manual_seed(rank_seed(self.t.seed, self.rank, step))  # seeds the CUDA generators too

    def rng_state(self) -> dict[str, torch.Tensor | None]:
        cuda = torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None
        return {"cpu": torch.get_rng_state(), "cuda": cuda}

    def set_rng_state(self, state: dict[str, torch.Tensor | None]) -> None:
        torch.set_rng_state(state["cpu"])
        if self.device.type == "cuda" and state.get("cuda") is not None:
            torch.cuda.set_rng_state(state["cuda"], self.device)

    def distribute(self, wrap) -> None:
        """Wrap the model for data parallelism (``ray.train.torch.prepare_model``), then compile the wrapper when
        asked; checkpoints keep saving ``model``."""
        self.forward = accelerate(wrap(self.model), self.t, self.device, backend=self.t.compile_backend)

    def train_step(self, batch: Step) -> torch.Tensor:
        """One optimizer step. No host synchronisation: the loss stays on the device."""
        self._calls += 1
        if self._calls == 1:
            self._sync()
            self.timing["t0"] = time.perf_counter()
        if not (self.forward.training and self.model.training):  # validation left it in eval mode (~80 us a call)
            self.forward.train()
        if self.t.channels_last and self.image:
            batch = _channels_last(batch)
        loss, parts = compute_loss(self.forward, self.model, batch, self.t, self.step, self.levels)
        apply_gradients(loss, self.model, self.optimizer, self.scheduler, self.t.grad_clip)
        lv = loss.detach()
        bad = ~torch.isfinite(lv)  # remember the first bad step on the device, without a host sync
        self._first_bad = torch.where(
            bad & (self._first_bad < 0), torch.full_like(self._first_bad, self.step), self._first_bad
        )
        self._sums += torch.stack([_part(parts, lv, k) for k in LOSS_PARTS])
        self._count += 1
        self.step += 1
        if self._calls == WARMUP_STEPS:
            self._sync()
            self.timing["warmup_s"] = time.perf_counter() - self.timing["t0"]
            self.timing["t_warm"] = time.perf_counter()
        return lv

    def first_bad_step(self) -> int:
        """The first step whose loss was not finite, the earliest over all ranks (-1: none). A collective when
        torch.distributed runs: every rank must call it at the same step."""
        if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return int(self._first_bad)
        code = torch.where(self._first_bad >= 0, NO_STEP - self._first_bad, torch.zeros_like(self._first_bad))
        dist.all_reduce(code, op=dist.ReduceOp.MAX)
        code = int(code)
        return NO_STEP - code if code > 0 else -1

    def check_finite(self) -> None:
        """Raise NonFiniteLossError naming the first bad step (benchmarks; the loop returns it instead)."""
        bad_step = self.first_bad_step()
        if bad_step >= 0:
            raise NonFiniteLossError(bad_step, self.step)

    def pop_means(self) -> dict[str, float]:
        """Mean loss parts over the steps since the last call (one host sync)."""
        means = dict(zip(LOSS_PARTS, (self._sums / max(self._count, 1)).tolist()))
        self._sums.zero_()
        self._count = 0
        return means

    def fast_path_metrics(self) -> dict[str, float]:
        """Compile warm-up (the first steps' time beyond the steady cost of as many steps) and compiled frames."""
        out = {"compile_frames": float(compile_stats().get("frames_ok", 0) - self._frames0)}
        if "t_warm" in self.timing and self._calls > WARMUP_STEPS:
            self._sync()
            steady = (time.perf_counter() - self.timing["t_warm"]) / (self._calls - WARMUP_STEPS)
            out["compile_warmup_s"] = max(0.0, self.timing["warmup_s"] - WARMUP_STEPS * steady)
            out["step_s"] = steady
        return out

    # -- checkpoints
    def save(
        self, directory: str | os.PathLike, extra: dict[str, Any] | None = None, rng: list[dict] | None = None
    ) -> None:
        """``rng``: every rank's generator states in rank order (all-gathered by the caller); default this one's."""
        save_model(self.model, self.spec, directory)
        state = {
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "step": self.step,
            "best_score": self.best_score,
            "rng": rng if rng is not None else [self.rng_state()],
            "world": self.world,
            **(extra or {}),
        }
        torch.save(state, os.path.join(directory, STATE_FILE))

    def load(self, directory: str | os.PathLike) -> dict[str, Any]:
        d = Path(directory)
        self.model.load_state_dict(torch.load(d / "weights.pt", map_location=self.device, weights_only=True))
        st = torch.load(d / STATE_FILE, map_location="cpu", weights_only=True)
        self.optimizer.load_state_dict(st["optimizer"])
        self.scheduler.load_state_dict(st["scheduler"])
        self.step, self.best_score = int(st["step"]), float(st["best_score"])
        rng = st.get("rng")
        if isinstance(rng, list) and len(rng) == self.world:
            self.set_rng_state(rng[self.rank])
        else:  # another world size (or an older checkpoint): a deterministic fresh stream per rank
            self.seed_generators(self.step)
        self.restored_from_step = self.step
        return st

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


def _channels_last(batch: Step) -> Step:
    """The step's images in channels-last memory format (what the channels-last conv weights want)."""
    fmt = torch.channels_last
    return dataclasses.replace(
        batch,
        **{k: v.contiguous(memory_format=fmt) for k, v in vars(batch).items() if k.startswith("x") and v is not None},
    )


def _part(parts: dict[str, torch.Tensor], like: torch.Tensor, name: str) -> torch.Tensor:
    if name in parts:
        return torch.as_tensor(parts[name], dtype=torch.float32, device=like.device).reshape(())
    return like.new_zeros(())
