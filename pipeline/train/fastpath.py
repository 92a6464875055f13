"""The GPU fast path: ``torch.compile`` of the whole model, channels-last, and the compile warm-up / cache helpers.
The step itself stays in :mod:`pipeline.train.step`; :class:`pipeline.train.engine.Engine` applies this module.

    forward = accelerate(model, cfg.train, device)   # the model itself, or torch.compile(model) (train.compile=full)

Switches (``TrainConfig``):

* ``compile``: ``"none"`` (eager, the CPU default) or ``"full"`` (``torch.compile`` of the whole flow,
  ``dynamic=False``: the shapes are fixed per run). Only the forward that training calls is compiled; validation
  and evaluation call the plain model. A per-coupling compile unit existed once; nothing measured it against
  compiling the whole model, so it was removed (compare them in ``bench/bench_train_step.py`` on a GPU before
  bringing it back).
* ``channels_last``: every 4-D parameter (the image flow's conv weights) is put in channels-last (NHWC) memory
  format, which is what cuDNN's bf16 tensor-core kernels want; the engine gives the step channels-last images.
* On CUDA, ``torch.backends.cudnn.benchmark`` is switched on.

Numerics under bf16 autocast: the nets run in bf16, but ``s = scale * tanh(s_raw) * (1 - mask)`` is float32 (the
learned ``scale`` and the mask are float32, so type promotion lifts the bf16 net output), ``z = (x + t) exp(s)`` is
therefore float32 in every coupling, and the log-det is summed in float32 (``flowgmm.bijections.logdet_dtype``).

Learning rate for large batches: ``train.batch_rows`` (``pipeline.config.scaling``, applied when the configuration
is resolved).
"""

from __future__ import annotations

import os
import time
from typing import Any

import torch
from torch import nn

__all__ = ["accelerate", "CompileWarmup", "compile_stats", "enable_compile_cache", "COMPILE_UNITS"]

COMPILE_UNITS = ("none", "full")


def accelerate(model: nn.Module, t: Any, device: torch.device | str, *, backend: str | None = None) -> nn.Module:
    """Apply ``t.channels_last`` to ``model`` (in place) and return what the step calls: ``model`` itself, or
    ``torch.compile(model)`` when ``t.compile == "full"``. Call it after ``model.to(device)`` (and after wrapping
    the model for data parallelism), before building the optimizer."""
    unit = getattr(t, "compile", "none") or "none"
    if unit not in COMPILE_UNITS:
        raise ValueError(f"train.compile={unit!r} is not one of {COMPILE_UNITS}")
    if getattr(t, "channels_last", False):
        model.to(memory_format=torch.channels_last)
    if torch.device(device).type == "cuda":
        torch.backends.cudnn.benchmark = True
    if unit == "none":
        return model
    return torch.compile(model, dynamic=False, **({"backend": backend} if backend else {}))


def compile_stats() -> dict[str, int]:
    """Dynamo's counters so far in this process: graphs compiled, frames compiled, recompilations."""
    try:
        from torch._dynamo.utils import counters
    except Exception:  # noqa: BLE001
        return {}
    stats = counters.get("stats", {})
    return {
        "unique_graphs": int(stats.get("unique_graphs", 0)),
        "frames_ok": int(counters.get("frames", {}).get("ok", 0)),
        "recompiles": int(sum(counters.get("recompiles", {}).values())),
    }


class CompileWarmup:
    """Wall time of the first steps (which include compilation), and the graphs compiled meanwhile.

    warm = CompileWarmup(device, steps=3)
    with warm:
        for _ in range(3):
            step()
    warm.seconds, warm.graphs, warm.compile_seconds(steady_step_seconds)
    """

    def __init__(self, device: torch.device | str | None = None, steps: int = 0):
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.steps = steps
        self.seconds = 0.0
        self.graphs = 0
        self._g0 = 0
        self._t0 = 0.0

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def __enter__(self) -> "CompileWarmup":
        self._sync()
        self._g0 = compile_stats().get("unique_graphs", 0)
        self._t0 = time.perf_counter()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._sync()
        self.seconds = time.perf_counter() - self._t0
        self.graphs = compile_stats().get("unique_graphs", 0) - self._g0

    def compile_seconds(self, steady_step_seconds: float) -> float:
        """The warm-up beyond the steady cost of as many steps."""
        return max(0.0, self.seconds - self.steps * steady_step_seconds)


def enable_compile_cache(directory: str | os.PathLike) -> str:
    """Point Inductor's on-disk caches (FX graphs, AOTAutograd, Triton kernels) at ``directory`` so that a later
    process (a restarted Ray Train worker, the next run) reuses them. Call it before the first compilation. An
    already set ``TORCHINDUCTOR_CACHE_DIR`` wins."""
    directory = os.fspath(directory)
    os.makedirs(directory, exist_ok=True)
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", directory)
    os.environ.setdefault("TRITON_CACHE_DIR", os.path.join(os.environ["TORCHINDUCTOR_CACHE_DIR"], "triton"))
    return os.environ["TORCHINDUCTOR_CACHE_DIR"]
