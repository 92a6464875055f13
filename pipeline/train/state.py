"""What training carries from step to step and saves in every checkpoint: :class:`TrainState` (model, optimizer,
schedule, step, epoch, best score, RNG), the learning-rate schedule, and the error raised on a non-finite loss."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from flowgmm.model import FlowGMM
from pipeline.config import Config

STATE_FILE = "train_state.pt"


class NonFiniteLossError(FloatingPointError):
    """Raised when a training loss is NaN or infinite; the message names the step."""


@dataclass
class TrainState:
    """Everything that changes while training; saved in every checkpoint."""

    model: FlowGMM
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    step: int = 0
    epoch: int = 0  # the next epoch to run
    best_score: float = -math.inf
    restored_from_step: int = -1

    def state_dict(self) -> dict[str, Any]:
        return {
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "step": self.step,
            "epoch": self.epoch,
            "best_score": self.best_score,
            "torch_rng": torch.get_rng_state(),
        }

    def load(self, directory: Path, device: torch.device) -> None:
        weights = torch.load(directory / "weights.pt", map_location=device, weights_only=True)
        self.model.load_state_dict(weights)
        st = torch.load(directory / STATE_FILE, map_location="cpu", weights_only=True)
        self.optimizer.load_state_dict(st["optimizer"])
        self.scheduler.load_state_dict(st["scheduler"])
        self.step, self.epoch, self.best_score = int(st["step"]), int(st["epoch"]), float(st["best_score"])
        torch.set_rng_state(st["torch_rng"])
        self.restored_from_step = self.step


def lr_lambda(cfg: Config, total_steps: int):
    warm, kind = max(cfg.train.warmup_steps, 0), cfg.train.lr_schedule

    def f(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        if kind == "constant":
            return 1.0
        progress = min(1.0, (step - warm) / max(1, total_steps - warm))
        return 0.01 + 0.99 * 0.5 * (1.0 + math.cos(math.pi * progress))

    return f
