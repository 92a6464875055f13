"""The baselines a job compares its model with: the same flow trained on the labels alone (the labels-only flow) and
the classical anchors (logistic regression, k-nearest neighbours, label spreading, self-training). They depend on
the data and the recipe, never on the main model, so where the cluster has room they train **beside** it, in a Ray
task with resources of their own (or, on a machine with no Ray running, a process of their own: ``BesideProcess``),
and cost no wall-clock time; else they train after it: in the driver, or on this machine alone with no Ray running
the labels-only flow in a process of its own beside the main model's evaluation and the anchors, on one core until
the driver is done and then on every core (``CoreShare``; ``pipeline.job``).

    work = BaselineWork(cfg, prepared, spec, val, run_name="run-labels-only", storage="/home/ray_results")
    where, how = placement(cfg)            # ("beside", task options) when the cluster has room, else ("after", why)
    done = run_baselines(work)             # "after", in the driver; "beside": ray.get(baselines_task(how).remote(work))
    done = BesideProcess(work).result()    # "beside" on this machine alone, no Ray started
    share = CoreShare(1)                   # "after" on this machine alone: the flow's cores, raised by the driver
    proc = BesideProcess(replace(work, anchors=False, share=share)); ...; share.set(2); proc.result()
    done.flow                              # {"metrics": ..., "distances": ...} of the labels-only flow, or None
    done.anchor_metrics, done.anchor_params

"Room": the resources free in the cluster (``ray.available_resources()``) cover the main model's and as much again
for the baselines (the same shape of training: its CPUs and GPUs; with Ray Train workers, one CPU more for Ray
Data's reads). On a 2-core machine the default job (the main model on one core in the driver) has room; a job whose
model takes both cores does not, and its baselines train after it (mostly beside its evaluation).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from pipeline.config import Config
from pipeline.config.methods import LABELS_ONLY
from pipeline.data.manifest import Prepared


@dataclass
class BaselineWork:
    """What the baselines need: the job's configuration and data, and where the labels-only flow's run lives."""

    cfg: Config  # the job's configuration (the labels-only flow's is derived from it)
    prepared: Prepared
    spec: dict[str, Any]  # the main model's spec: the labels-only flow is the same flow
    val: tuple[np.ndarray, np.ndarray]
    run_name: str  # the labels-only flow's run name
    storage: str
    train_flow: bool = True  # False: not asked for, or reused from the cache
    anchors: bool = True
    resume: bool = False
    verbose: bool = False
    progress: bool = True  # the labels-only flow's progress lines (off in a task beside the main model)
    compile_cache: str | None = None
    threads: int = 1  # the cores the baselines own (:func:`cores`): the anchors' neighbour search uses them
    share: CoreShare | None = None  # in a process after the main model: the labels-only flow's cores, growing


@dataclass
class BaselineResults:
    flow: dict[str, Any] | None = None  # {"metrics", "distances"} of the labels-only flow, when trained
    anchor_metrics: dict[str, float] = field(default_factory=dict)
    anchor_params: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    error: BaseException | None = None  # a deterministic failure (a non-finite loss), raised again by the driver


def labels_only_config(cfg: Config, val_rows: int) -> Config:
    """The labels-only flow's configuration: the job's recipe, method labels_only, no fault injection. A recipe that
    stops on validation keeps its rule. One that trains a fixed length chose that length for the model that sees the
    unlabeled rows; the labels-only flow, on the labeled rows alone, peaks earlier and then overfits, so with
    ``eval.labels_only_patience`` > 0 (and at least ``MIN_VAL_TO_STOP`` validation rows) it is evaluated twice as often,
    stops after that many evaluation points without a better score (unsmoothed) and is evaluated at its best score's
    checkpoint. Measured on the shipped recipes, 3-5 seeds, chosen on validation (``bench/labels_only_stop.py``,
    bench/RESULTS.md): higher validation accuracy on each (mnist_cpu 0.952 vs 0.946, digits 0.940 vs 0.915) in
    fewer steps (mnist_cpu 1,750 of 3,000).

    >>> from pipeline.config import resolve
    >>> t = labels_only_config(resolve("mnist_cpu"), val_rows=1000).train
    >>> t.method, t.eval_every, t.patience, t.stop_smoothing
    ('labels_only', 250, 2, 0.0)
    >>> labels_only_config(resolve("mnist_cpu"), val_rows=20).train.patience  # too few rows to stop on
    0
    """
    from pipeline.train.budget import MIN_VAL_TO_STOP

    t = replace(cfg.train, method=LABELS_ONLY.value, inject_failure_at_step=-1)
    p = cfg.eval.labels_only_patience
    if t.patience != 0 or p == 0 or val_rows < MIN_VAL_TO_STOP:
        return replace(cfg, train=t)
    if t.steps is None:  # not sized yet (the job sizes first): the recipe's rule
        return replace(cfg, train=t)
    every = max(1, (t.eval_every or t.steps) // 2)
    t = replace(t, eval_every=every, checkpoint_every=1, patience=p, min_steps=0, stop_smoothing=0.0)
    return replace(cfg, train=t, eval=replace(cfg.eval, checkpoint="best"))


def run_baselines(work: BaselineWork) -> BaselineResults:
    """The anchors (when asked) and the labels-only flow (trained, then evaluated like the main model)."""
    from pipeline.results.anchors import classical_baselines
    from pipeline.results.evaluate import evaluate_where_trained
    from pipeline.train.state import NonFiniteLossError
    from pipeline.train.trainer import TrainRun

    t0 = time.time()
    out = BaselineResults()
    if work.anchors:
        out.anchor_metrics, out.anchor_params = classical_baselines(
            work.prepared, work.cfg.eval.anchor_unlabeled, work.threads
        )
    if work.train_flow:
        cfg = labels_only_config(work.cfg, len(work.val[1]))
        run = TrainRun(
            cfg,
            work.prepared,
            work.spec,
            run_name=work.run_name,
            storage_path=work.storage,
            mlflow_info=None,
            val=work.val,
            label=LABELS_ONLY.display,
            progress=work.progress,
            resume=work.resume,
            verbose=work.verbose,
            compile_cache=work.compile_cache,
            cores=work.share,
        )
        try:
            trained = run.fit()
        except NonFiniteLossError as e:
            out.error = e
            return out
        ev = evaluate_where_trained(trained.chosen, work.prepared, cfg, accuracy_only=True)
        steps = {"steps_trained": float(trained.metrics.get("step", cfg.train.steps))}
        out.flow = {"metrics": {**ev.metrics, **steps}, "distances": ev.boundary_distances}
    out.seconds = time.time() - t0
    return out


class BesideProcess:
    """:func:`run_baselines` in a process of its own on this machine (spawned, a daemon: it ends with the job), for
    a job whose model trains in the driver with no Ray running: the baselines take the spare core without a Ray
    started for them (its start and its idle processes cost the model's steps: ~10% on 2 cores); or, after a model
    that held every core, the labels-only flow beside its evaluation (``work.share``).

        proc = BesideProcess(work)
        ...                                # the main model trains meanwhile
        done = proc.result()               # BaselineResults; a failure in the process raises here
        proc.close()                       # ends it if it still runs (the job failed before its result)
    """

    def __init__(self, work: BaselineWork):
        import multiprocessing

        ctx = multiprocessing.get_context("spawn")  # never fork a process that runs threads (the training's)
        self._recv, send = ctx.Pipe(duplex=False)
        self.proc = ctx.Process(target=_in_process, args=(work, send), name="flowgmm-baselines", daemon=True)
        self.proc.start()
        send.close()  # this end is the child's: EOF here once the child has gone

    def result(self) -> BaselineResults:
        try:
            out = self._recv.recv()
        except EOFError:
            self.proc.join(timeout=30)
            code = "still running" if self.proc.exitcode is None else f"exit code {self.proc.exitcode}"
            raise RuntimeError(f"the baselines' process ended without a result ({code})") from None
        finally:
            self._recv.close()
        self.proc.join(timeout=30)
        return out

    def close(self) -> None:
        if self.proc.is_alive():
            self.proc.terminate()
        self.proc.join(timeout=30)
        self._recv.close()


class CoreShare:
    """The cores a process of the job's may use now, in memory both processes see; the driver raises it as its own
    work ends, the process's training loop reads it every step (``pipeline.train.loop.use_cores``). Handed to the
    process when it is spawned (``BaselineWork.share``), never pickled otherwise. When the threads change barely
    changes the flow: one or two threads round a few reductions differently (the `mnist_cpu` flow's weights came
    out bit for bit the same; moons' figures agree to ~1e-7, ``tests/test_baselines_beside.py``).

    >>> share = CoreShare(1)
    >>> share(), (share.set(2), share())[1]
    (1, 2)
    """

    def __init__(self, cores: int):
        import multiprocessing

        self._cores = multiprocessing.get_context("spawn").RawValue("i", int(cores))

    def __call__(self) -> int:
        return int(self._cores.value)

    def set(self, cores: int) -> None:
        self._cores.value = int(cores)


def _in_process(work: BaselineWork, send) -> None:
    """The child: Ctrl-C is the job's to handle (it ends this daemon); the child also ends when the job is gone
    however it went (killed: no daemon clean-up), and leaves without the interpreter's teardown once it has sent."""
    import multiprocessing
    import os
    import signal
    import sys
    import threading
    from multiprocessing.connection import wait

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    parent = multiprocessing.parent_process()

    def orphaned() -> None:
        if parent is not None:
            wait([parent.sentinel])
            os._exit(1)

    threading.Thread(target=orphaned, daemon=True).start()
    try:
        out = _in_task(work)
    except Exception:  # noqa: BLE001 - sent whole to the driver, which raises it
        import traceback

        out = BaselineResults(error=RuntimeError(f"the baselines failed in their process:\n{traceback.format_exc()}"))
    sys.stdout.flush(), sys.stderr.flush()  # before the result: the job's console lines come after this one's
    send.send(out)
    send.close()
    os._exit(0)


def _in_task(work: BaselineWork) -> BaselineResults:
    if not work.verbose:  # no Ray Data progress bars, Ray Train notices or per-report lines from this worker
        from pipeline.core.raycluster import quiet

        quiet()
        logging.getLogger("ray").setLevel(logging.WARNING)
    return run_baselines(work)


def placement(cfg: Config, free: dict[str, float] | None = None) -> tuple[str, Any]:
    """``("beside", task options)`` when the cluster has room for the baselines beside the main model (see the
    module's doc), else ``("after", the reason in words)``. ``free``: the resources free to the job's tasks
    (default the running cluster's, ``ray.available_resources()``)."""
    t = cfg.train
    if free is None:
        import ray

        free = ray.available_resources()
    cpus, gpus = _main_needs(cfg)
    spare = 1.0 if t.num_workers > 0 else 0.0  # Ray Data's read tasks beside two worker groups
    need_cpu, need_gpu = 2 * cpus + spare, 2 * gpus
    have_cpu, have_gpu = free.get("CPU", 0.0), free.get("GPU", 0.0)
    if t.num_workers == 0 and t.use_gpu:
        return "after", "the main model trains on this process's GPU, which Ray does not account for"
    if have_cpu + 1e-9 < need_cpu or have_gpu + 1e-9 < need_gpu:
        have, need = f"{have_cpu:g} CPU", f"{need_cpu:g} CPU"
        if gpus:
            have, need = f"{have} and {have_gpu:g} GPU", f"{need} and {need_gpu:g} GPU"
        return "after", f"no room beside the main model: {have} free, {need} needed for both"
    if t.num_workers > 0:  # the task only drives its own Ray Train run, whose workers hold the resources
        return "beside", {"num_cpus": 0, "num_gpus": 0}
    return "beside", {"num_cpus": cpus, "num_gpus": gpus}


def cores(cfg: Config, where: str, how: Any) -> int:
    """The cores the baselines own where :func:`placement` put them: beside, their task's CPUs (at least one);
    after, the main model's (free by then), at most this machine's."""
    import os

    if where == "beside":
        return max(1, int(how["num_cpus"]))
    return max(1, min(int(_main_needs(cfg)[0]), len(os.sched_getaffinity(0))))


def _main_needs(cfg: Config) -> tuple[float, float]:
    """CPUs and GPUs the main model's training holds: its workers', or in the driver its threads (whole cores, at
    least one) and one GPU."""
    t = cfg.train
    if t.num_workers > 0:
        gpus = t.gpus_per_worker * t.num_workers if t.use_gpu else 0.0
        return t.cpus_per_worker * t.num_workers, gpus
    from pipeline.train.loop import driver_threads

    return float(driver_threads(t)), 1.0 if t.use_gpu else 0.0


def baselines_task(options: dict[str, Any]):
    """:func:`run_baselines` as a Ray task with ``options`` (from :func:`placement`), outside any placement group."""
    import ray

    return ray.remote(max_retries=0, scheduling_strategy="DEFAULT", **options)(_in_task)
