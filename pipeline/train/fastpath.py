"""The GPU fast path for the FlowGMM step: channels-last, ``torch.compile`` of a chosen unit, the learning rate
for large batches, and the compile warm-up / cache helpers.

The step itself stays in :mod:`pipeline.train.step`; this module only builds the ``forward`` that the step calls::

    cfg = resolve("mnist", overrides=["train.batch_rows=2048"])  # 512 + 1536 rows, lr/warm-up/ramp scaled
    model = build_model(spec).to(device)
    forward = accelerate(model, cfg.train, device)        # before building the optimizer
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.train.lr, fused=device.type == "cuda")
    loss, parts = compute_loss(forward, model, batch, cfg.train, step, image=True)
    apply_gradients(loss, model, optimizer, scheduler, cfg.train.grad_clip)

Switches (``TrainConfig``):

* ``channels_last``: every 4-D parameter (the conv weights, i.e. weight-norm's ``g`` and ``v``) and the input
  images are put in channels-last (NHWC) memory format, which is what cuDNN's bf16 tensor-core kernels want.
  The latent ``z`` keeps its logical (NCHW-flattened) order: ``flatten`` of a channels-last tensor copies.
* ``compile``:

  - ``"none"``: eager (the CPU default).
  - ``"couplings"``: each :class:`~flowgmm.coupling.AffineCoupling` is the compiled unit (``dynamic=False``).
    One compiled function, ``AffineCoupling.forward``, serves all 10 couplings: Dynamo lifts a module's
    parameters and buffers to graph inputs and guards on their shapes, not on the module's identity, so the
    couplings that share a shape share one graph. The paper's MNIST flow has 3 coupling shapes (1x28x28 with
    64 channels, 4x14x14 and 2x14x14 with 128), so a FlowGMM-cons step compiles 3 shapes x {train, no-grad}
    = 6 graphs instead of one 10-coupling graph twice; the compiled couplings are used only through the
    returned forward (the plain ``model`` called elsewhere, e.g. in validation, stays eager and triggers no
    recompilation for eval mode or other batch sizes). Two things make the sharing work: weight norm's
    parametrization gives every conv its own class, so :func:`share_parametrized_classes` lets identical ones share
    one (else each coupling compiles its own graphs and 20 of them overrun Dynamo's recompile limit of 8, after which
    the rest runs eagerly); and each unit's input is made dense and, in grad mode, requiring grad before the call
    (FactorOut passes a channel slice to the inner scale, and the first coupling's input needs no grad).
  - ``"full"``: the whole flow (``torch.compile(model)``): the most fusion, the longest warm-up.

* On CUDA, ``torch.backends.cudnn.benchmark`` is switched on (the shapes are fixed per run).

Numerics under bf16 autocast (checked against ``flowgmm/coupling.py`` and ``flowgmm/bijections.py``): the
nets run in bf16, but ``s = scale * tanh(s_raw) * (1 - mask)`` is float32 (the learned ``scale`` and the mask
are float32 tensors, so type promotion lifts the bf16 net output), ``z = (x + t) exp(s)`` is therefore float32
in every coupling, and the log-det is summed in ``logdet_dtype(x)`` = float32 and accumulated in float32 by
``Sequential``. Inductor keeps the same dtypes (it computes bf16 pointwise math in float32 internally). The only
bf16 rounding the log-det sees is that of ``s_raw``, the conv output, before the float32 sum.

Learning rate for large batches: ``train.batch_rows`` (``pipeline.config.scaling``, applied when the configuration
is resolved).
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
import types
from typing import Any, Callable, Iterator

import torch
from torch import Tensor, nn

from flowgmm.coupling import AffineCoupling

__all__ = [
    "accelerate",
    "FastForward",
    "CompileWarmup",
    "compile_stats",
    "enable_compile_cache",
    "save_compile_artifacts",
    "load_compile_artifacts",
    "share_parametrized_classes",
    "COMPILE_UNITS",
]

COMPILE_UNITS = ("none", "couplings", "full")

_STATE = threading.local()


def _units_active() -> bool:
    return getattr(_STATE, "active", False)


@contextlib.contextmanager
def _compiled_units() -> Iterator[None]:
    prev = _units_active()
    _STATE.active = True
    try:
        yield
    finally:
        _STATE.active = prev


def _unit_forward(self: nn.Module, x: Tensor) -> tuple[Tensor, Tensor]:
    """Installed as the ``forward`` of each compiled unit: the compiled function inside a
    :class:`FastForward` call, the class's own forward everywhere else."""
    if _units_active():
        # canonical inputs, so that couplings of one shape share one graph: dense (FactorOut hands the inner
        # scale a channel slice) and, in grad mode, requiring grad (the first coupling's input does not)
        fmt = torch.channels_last if (x.dim() == 4 and self._fastpath_channels_last) else torch.contiguous_format
        x = x.contiguous(memory_format=fmt)
        if torch.is_grad_enabled() and not x.requires_grad:
            x = x.detach().requires_grad_()
        return self._fastpath_compiled(self, x)
    return type(self).forward(self, x)


class FastForward(nn.Module):
    """What the step calls as ``forward``: ``x -> (z, logdet)`` of ``model`` with the fast-path settings.

    ``model`` is registered as a submodule (``.parameters()``, ``.train()`` and DDP see its parameters);
    save checkpoints from ``model`` itself, whose state-dict keys are unchanged by the fast path.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        channels_last: bool,
        unit: str,
        full: Callable[[Tensor], tuple[Tensor, Tensor]] | None = None,
    ):
        super().__init__()
        self.model = model
        self.channels_last = channels_last
        self.unit = unit
        object.__setattr__(self, "_full", full)  # not a registered submodule: no duplicate state-dict keys

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        if self._full is not None:
            return self._full(x)
        if self.unit == "couplings":
            with _compiled_units():
                return self.model(x)
        return self.model(x)


def accelerate(
    model: nn.Module,
    t: Any,
    device: torch.device | str | None = None,
    *,
    backend: str | None = None,
    mode: str | None = None,
    compile_on_cpu: bool = False,
) -> FastForward:
    """Apply the fast-path settings of ``t`` (a :class:`~pipeline.config.TrainConfig`) to ``model`` and return the
    module the step calls as ``forward``. Call it after ``model.to(device)`` and before building the optimizer.

    Args:
        model: the :class:`~flowgmm.FlowGMM` (modified in place: memory format, and the compiled couplings'
            ``forward`` dispatch; its state dict and its behaviour outside the returned module are unchanged).
        t: reads ``t.channels_last`` and ``t.compile`` (``"none" | "couplings" | "full"``).
        device: where the model lives (default: the device of its first parameter).
        backend, mode: passed to ``torch.compile`` (default inductor, default mode).
        compile_on_cpu: compile on a CPU device too. Off by default: on CPU the fast path is channels-last at most
            and ``compile`` is ignored (with a warning), so a GPU configuration also runs on a CPU worker.
    """
    unit = getattr(t, "compile", "none") or "none"
    if unit not in COMPILE_UNITS:
        raise ValueError(f"train.compile={unit!r} is not one of {COMPILE_UNITS}")
    if device is None:
        p = next(model.parameters(), None)
        device = p.device if p is not None else torch.device("cpu")
    device = torch.device(device)
    channels_last = bool(getattr(t, "channels_last", False))
    if channels_last:
        model.to(memory_format=torch.channels_last)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    if unit != "none" and device.type != "cuda" and not compile_on_cpu:
        import warnings

        warnings.warn(
            f"train.compile={unit!r} ignored on {device.type} (pass compile_on_cpu=True to force)", stacklevel=2
        )
        unit = "none"
    kw: dict[str, Any] = {"dynamic": False}
    if backend is not None:
        kw["backend"] = backend
    if mode is not None:
        kw["mode"] = mode
    full = None
    if unit == "full":
        full = torch.compile(model, **kw)
    elif unit == "couplings":
        _compile_couplings(model, kw, channels_last)
    return FastForward(model, channels_last=channels_last, unit=unit, full=full)


def _compile_couplings(model: nn.Module, kw: dict[str, Any], channels_last: bool) -> None:
    units = [m for m in model.modules() if isinstance(m, AffineCoupling)]
    if not units:
        raise ValueError("train.compile='couplings' but the model has no AffineCoupling layers")
    # one compiled function per unit class, shared by all instances (see the module docstring); room in the
    # recompile budget for the (shape, grad mode, autocast) variants of one run
    share_parametrized_classes(model)
    cfg = torch._dynamo.config
    key = "recompile_limit" if hasattr(cfg, "recompile_limit") else "cache_size_limit"
    setattr(cfg, key, max(int(getattr(cfg, key)), 32))
    compiled: dict[type, Callable] = {}
    for m in units:
        cls = type(m)
        if cls not in compiled:
            compiled[cls] = torch.compile(cls.forward, **kw)
        m._fastpath_compiled = compiled[cls]
        m._fastpath_channels_last = channels_last
        m.forward = types.MethodType(_unit_forward, m)


def share_parametrized_classes(model: nn.Module) -> int:
    """Let modules parametrized alike share one class; returns how many modules changed class.

    ``torch.nn.utils.parametrize`` (used by ``weight_norm``) gives every parametrized module its own dynamically
    created class (``ParametrizedConv2d``), and Dynamo guards on a module's type, so without this every coupling
    would compile its own graphs (10 couplings x 2 grad modes = 20 graphs, over Dynamo's default recompile limit
    of 8, after which it silently runs the rest eagerly). The classes of modules with the same base class and
    the same parametrized tensor names are identical in content (one generic property per tensor name), so
    sharing one is safe. Caveat: ``parametrize.remove_parametrizations`` deletes the property from the (now
    shared) class; remove parametrizations on a fresh model rebuilt from the state dict, not on this one.
    """
    from torch.nn.utils import parametrize

    shared: dict[tuple, type] = {}
    changed = 0
    for m in model.modules():
        if not parametrize.is_parametrized(m):
            continue
        cls = type(m)
        key = (cls.__bases__[0], tuple(sorted(m.parametrizations.keys())))
        if key not in shared:
            shared[key] = cls
        elif cls is not shared[key]:
            m.__class__ = shared[key]
            changed += 1
    return changed


# ------------------------------------------------------------------------------------------- compile warm-up
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

        warm = CompileWarmup(device)
        with warm:
            for _ in range(3):
                step()
        warm.seconds, warm.graphs     # then: warm.compile_seconds(steady_step_seconds)

    ``compile_seconds(s)`` subtracts ``steps * s`` (the steady-state cost of the warm-up steps) from the wall time.
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
        return max(0.0, self.seconds - self.steps * steady_step_seconds)


# ------------------------------------------------------------------------------------------- compile cache
def enable_compile_cache(directory: str | os.PathLike) -> str:
    """Point Inductor's on-disk caches (FX graphs, AOTAutograd, Triton kernels) at ``directory`` so that a later
    process (a restarted Ray Train worker, the next run) reuses them: its warm-up is then Dynamo tracing plus cache
    loads. Call it before the first compilation. An already set ``TORCHINDUCTOR_CACHE_DIR`` wins."""
    directory = os.fspath(directory)
    os.makedirs(directory, exist_ok=True)
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", directory)
    os.environ.setdefault("TRITON_CACHE_DIR", os.path.join(os.environ["TORCHINDUCTOR_CACHE_DIR"], "triton"))
    return os.environ["TORCHINDUCTOR_CACHE_DIR"]


def save_compile_artifacts(path: str | os.PathLike) -> int:
    """Write this process's compiled artifacts (``torch.compiler.save_cache_artifacts``, "mega-cache") to ``path``,
    e.g. next to a checkpoint, so that a worker on another machine can preload them. Returns the bytes written
    (0 when this torch has no such API or nothing was compiled)."""
    fn = getattr(torch.compiler, "save_cache_artifacts", None)
    if fn is None:
        return 0
    got = fn()
    if not got:
        return 0
    data = got[0]
    with open(path, "wb") as fh:
        fh.write(data)
    return len(data)


def load_compile_artifacts(path: str | os.PathLike) -> bool:
    """Preload artifacts written by :func:`save_compile_artifacts` (before the first compilation)."""
    fn = getattr(torch.compiler, "load_cache_artifacts", None)
    if fn is None or not os.path.exists(path):
        return False
    with open(path, "rb") as fh:
        fn(fh.read())
    return True
