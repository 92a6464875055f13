"""The sweep's console: one line per trial event, printed by the driver (``SweepConsole``, a Tune callback), and
Ray's and Tune's own output kept for ``--verbose`` (``quiet_tune``).

    [sweep] trial 3eb241f4 (1/3) started: lr=0.003 cons=0 r=2 var=1 learn_var=False [default]
    [sweep] trial 3eb241f4 step 16/48: val acc 0.640, val nll 2.944
    [sweep] trial 3eb241f4 completed: 48/48 steps, val acc 0.760, evaluated (70 s)
    [sweep] trial 50645963 stopped early by ASHA at step 16/48: val acc 0.620, val nll 5.606 (41 s)
    [sweep] trial d5d1bfb3 error at step 0/48: AttributeError: 'TrainConfig' object has ... (traceback: .../error.txt)

The lines come from the driver, so they do not need the workers' output on the console: a quiet sweep connects
with ``worker_output=False``. A trial prints its reports at up to four points (the first report past each quarter
of ``train.steps``), so a long trial stays four lines however often it evaluates.

    >>> reason("Traceback (most recent call last):\\n  File 'x.py'\\nray.train.WorkerGroupError: Training failed:\\n"
    ...        "  File 'loop.py', line 1\\nAttributeError: 'TrainConfig' object has no attribute 'patience'")
    "AttributeError: 'TrainConfig' object has no attribute 'patience'"
    >>> point_text({"lr": 0.00375, "consistency_weight": 0.0, "means_scale": 2.448, "variance": 0.621,
    ...             "learn_variance": True})
    'lr=0.00375 cons=0 r=2.45 var=0.621 learn_var=True'
"""

from __future__ import annotations

import logging
import math
import os
import re
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Callable

from ray import tune

from pipeline.core.raycluster import quiet

# an exception's own line in a traceback: "AttributeError: ...", "ray.exceptions.RaySystemError: ..."
_EXCEPTION_LINE = re.compile(r"^([A-Za-z_][\w.]*(?:Error|Exception|Exit|Interrupt|Failure|Warning)): ?(.*)$")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
REASON_CHARS = 240


def quiet_tune() -> None:
    """``pipeline.core.raycluster.quiet`` plus what only a sweep prints: Tune's full traceback of every failed trial
    (the sweep prints one line and the traceback file instead), its closing "Trials did not complete" and Ray's
    deprecation warnings, Tune's experiment box and Optuna's info lines. Call before the Tuner runs; Tune's status
    tables are off through ``RunConfig(verbose=0)``."""
    quiet()
    os.environ.setdefault("TUNE_PRINT_ALL_TRIAL_ERRORS", "0")
    # Tune's new output engine prints its experiment box and each failed trial even at verbose=0; the old one
    # prints nothing at verbose=0 (both are read when the Tuner runs)
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    logging.getLogger("ray.tune").setLevel(logging.CRITICAL)
    from ray.util.annotations import RayDeprecationWarning

    warnings.filterwarnings("ignore", category=RayDeprecationWarning)
    try:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)  # "A new study created in memory"
    except ImportError:  # pragma: no cover - optuna is a dependency; --search random does not need it
        pass


def point_text(p: dict[str, Any]) -> str:
    """A sampled point in short form (the names of the trials table's best-vs-default lines)."""
    return (
        f"lr={float(p['lr']):.3g} cons={float(p['consistency_weight']):g} r={float(p['means_scale']):.3g} "
        f"var={float(p['variance']):.3g} learn_var={bool(p['learn_variance'])}"
    )


def reason(text: str) -> str:
    """The one-line reason of a failed trial: the last exception line of its traceback text (the innermost cause
    comes last in Ray's nested errors), shortened; else the text's last non-empty line."""
    lines = [_ANSI.sub("", line).rstrip() for line in text.splitlines()]
    found = [m for m in (_EXCEPTION_LINE.match(line) for line in lines) if m and m.group(2).strip()]
    if found:
        name, message = found[-1].groups()
        out = f"{name.rsplit('.', 1)[-1]}: {message.strip()}"
    else:
        out = next((line.strip() for line in reversed(lines) if line.strip()), "unknown error")
    return out if len(out) <= REASON_CHARS else out[: REASON_CHARS - 3] + "..."


class SweepConsole(tune.Callback):
    """Prints each trial's start, a few of its reports, and its end (completed, stopped early by ASHA, error).

    Args:
        total_steps: ``train.steps`` (ASHA's ``max_t``).
        num_samples: trials in the sweep.
        labels: ``(point, label)`` pairs; a trial whose sampled point is ``point`` is marked ``[label]``.
        same_point: how points compare (``tune.space.same_point``).
        metric: the sweep metric, shown in report lines beside the validation accuracy and NLL.
        out: where lines go (default stdout).
    """

    def __init__(
        self,
        total_steps: int,
        num_samples: int,
        *,
        labels: list[tuple[dict[str, Any], str]] = (),
        same_point: Callable[[dict, dict], bool] | None = None,
        metric: str = "val_accuracy",
        out=None,
    ):
        self.total, self.num_samples, self.metric = int(total_steps), int(num_samples), metric
        self.labels, self.same_point = list(labels), same_point
        self.out = out
        self.marks = [math.ceil(self.total * k / 4) for k in range(1, 5)]  # report lines at up to four points
        self.started: dict[str, float] = {}
        self.next_mark: dict[str, int] = {}
        self.last: dict[str, dict[str, Any]] = {}
        self.stopped: set[str] = set()

    def say(self, text: str) -> None:
        print(f"[sweep] {text}", file=self.out or sys.stdout, flush=True)

    # --- Tune's hooks ------------------------------------------------------------------------------------------
    def on_trial_start(self, iteration: int, trials: list, trial, **info) -> None:
        tid = trial.trial_id
        self.started[tid], self.next_mark[tid] = time.time(), 0
        label = self._label(trial.config or {})
        mark = f" [{label}]" if label else ""
        self.say(f"trial {tid} ({len(self.started)}/{self.num_samples}) started: {point_text(trial.config)}{mark}")

    def on_trial_result(self, iteration: int, trials: list, trial, result: dict, **info) -> None:
        tid = trial.trial_id
        self.last[tid] = result
        if result.get("done"):  # set by Tune on the report the scheduler stopped the trial at
            self.stopped.add(tid)
            return
        step, i = _step(result), self.next_mark.get(tid, 0)
        if i < len(self.marks) and step >= self.marks[i]:
            self.next_mark[tid] = sum(m <= step for m in self.marks)
            self.say(f"trial {tid} step {step}/{self.total}: {self._values(result)}")

    def on_trial_complete(self, iteration: int, trials: list, trial, **info) -> None:
        tid = trial.trial_id
        last = self.last.get(tid, {})
        step, values, took = _step(last), self._values(last), self._took(tid)
        if tid in self.stopped:
            self.say(f"trial {tid} stopped early by ASHA at step {step}/{self.total}: {values}{took}")
        else:
            self.say(f"trial {tid} completed: {step}/{self.total} steps, {values}, evaluated{took}")

    def on_trial_error(self, iteration: int, trials: list, trial, **info) -> None:
        tid = trial.trial_id
        text = ""
        if trial.error_file and Path(trial.error_file).exists():
            text = Path(trial.error_file).read_text(errors="replace")
        where = f" (traceback: {Path(trial.path) / 'error.txt'})" if trial.path else ""
        self.say(f"trial {tid} error at step {_step(self.last.get(tid, {}))}/{self.total}: {reason(text)}{where}")

    # --- formatting ----------------------------------------------------------------------------------------------
    def _label(self, config: dict[str, Any]) -> str:
        if self.same_point is None:
            return ""
        return next((label for p, label in self.labels if self.same_point(config, p)), "")

    def _values(self, result: dict[str, Any]) -> str:
        parts = [("val acc", "val_accuracy", ".3f"), ("val nll", "val_nll", ".3f")]
        if self.metric not in ("val_accuracy", "val_nll"):
            parts.append((self.metric.replace("_", " "), self.metric, ".4g"))
        vals = [f"{name} {result[k]:{fmt}}" for name, k, fmt in parts if _number(result.get(k))]
        return ", ".join(vals) or "no validation reported"

    def _took(self, tid: str) -> str:
        t0 = self.started.get(tid)
        return "" if t0 is None else f" ({time.time() - t0:.0f} s)"


def _step(result: dict[str, Any]) -> int:
    v = result.get("step")
    return int(v) if _number(v) else 0


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
