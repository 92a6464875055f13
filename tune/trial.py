"""One Tune trial: the pipeline's own training loop (``pipeline.train.trainer.TrainRun``) on the trial's
configuration, then the pipeline's calibrated evaluation of the best checkpoint, all recorded in an MLflow child run.

Runs inside the Tune trial actor (a function trainable; Ray Train V2's documented pattern for Tune over Train):

    trial driver (0 CPU)  ->  TorchTrainer(..., callbacks=[TuneReportCallback()]).fit()
                               rank 0 reports val_accuracy / val_nll / score every eval_every steps -> Tune -> ASHA
                          ->  evaluate_checkpoint(best) in a Ray task (calibrated metrics)
                          ->  final metrics -> MLflow child run (FINISHED)

A trial that ASHA stops is interrupted in the middle of ``fit()``: its child run is left RUNNING here (as is the run
of a trial that raised) and the sweep driver ends it afterwards, KILLED or FAILED from Tune's record
(``tune.sweep``).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

EVALUATED = "evaluated"  # child-run metric: 1.0 once a trial ran to the end and was evaluated


def run_trial(params: dict[str, Any], *, base: dict[str, Any], prepared, val, ctx: dict[str, Any]) -> None:
    """The Tune function trainable. ``params``: the sampled point (see ``tune.space``); ``base``: the sweep's
    base configuration as a dict; ``ctx``: home, tracking URI, experiment, parent run id, storage path, sweep
    name, verbose."""
    from ray import tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from pipeline.config import Config, dump_yaml
    from pipeline.core.raycluster import quiet
    from tune.space import trial_config

    if not ctx.get("verbose"):
        quiet()  # this actor builds the trial's datasets: no Ray Data progress bars (and no MLflow info lines)
    trial_id = tune.get_context().get_trial_id()
    cfg = trial_config(Config.from_dict(base), params)
    ctx = {**ctx, "run_name": f"{ctx['sweep_name']}-trial_{trial_id}"}
    handle = _child_run(cfg, trial_id, ctx)
    report = TuneReportCallback()
    try:
        handle.log_params({**cfg.flat(), **{f"trial.{k}": v for k, v in params.items()}})
        handle.log_text(dump_yaml(cfg), "config/resolved.yaml")
        _train_and_evaluate(cfg, prepared, val, handle, report, ctx)
    except BaseException as e:
        # Left RUNNING on purpose: a trial that ASHA stops ends here too (Tune interrupts the trainable), and only
        # the sweep driver knows which it was; it ends the run KILLED (stopped) or FAILED (an error) from Tune's
        # record, and FAILED if it dies itself.
        try:
            handle.set_tags({"trial_exception": f"{type(e).__name__}: {e}"[:500]})
        except Exception:  # noqa: BLE001
            pass
        raise
    handle.end("FINISHED")
    # The final (calibrated) metrics live in the child run, where the sweep driver reads them. They are not sent
    # to Tune as one more result: the trial's main thread may still be forwarding the last report from
    # TuneReportCallback's queue, and a second producer on Tune's one-slot result queue can deadlock the trial.
    # Return only once that queue is drained, so the last report always reaches Tune.
    _drain(report)


def _child_run(cfg, trial_id: str, ctx: dict[str, Any]):
    from pipeline.results.tracking import start_run

    return start_run(
        Path(ctx["home"]),
        ctx["experiment"],
        ctx["run_name"],
        tracking_uri=ctx["tracking_uri"],
        tags={
            "mlflow.parentRunId": ctx["parent_run_id"],
            "sweep": ctx["sweep_name"],
            "trial_id": trial_id,
            "config_name": cfg.name,
            "method": cfg.train.method,
            "n_labeled": str(cfg.data.n_labeled),
        },
    )


def _train_and_evaluate(cfg, prepared, val, handle, report, ctx: dict[str, Any]) -> None:
    import ray

    from pipeline.results.evaluate import evaluation_task
    from pipeline.train.model import model_spec
    from pipeline.train.trainer import TrainRun

    run = TrainRun(
        cfg,
        prepared,
        model_spec(cfg, prepared),
        run_name=ctx["run_name"],
        storage_path=ctx["storage_path"],
        mlflow_info=handle.worker_info(),
        val=val,
        callbacks=[report],
        label=ctx["run_name"].rsplit("-", 1)[-1],
        verbose=bool(ctx.get("verbose")),
    )
    trained = run.fit()
    ev = ray.get(evaluation_task(cfg).remote(trained.chosen, prepared, cfg))
    steps = float(trained.metrics.get("step", 0))
    handle.log_metrics({**ev.metrics, "train_seconds": trained.seconds, "train_steps": steps, EVALUATED: 1.0})
    handle.log_json(ev.calibration_table, "evaluation/calibration_table.json")
    for path, png in ev.figures.items():
        handle.log_bytes(png, path)
    handle.set_tags({"best_checkpoint": trained.chosen.path, "trial_status": "completed"})


def _drain(report, timeout_s: float = 60.0) -> None:
    q = getattr(report, "_training_actor_item_queue", None)
    deadline = time.time() + timeout_s
    try:
        while q is not None and not q.empty() and time.time() < deadline:
            time.sleep(0.2)
        time.sleep(0.5)
    except Exception:  # noqa: BLE001 - the queue actor may be gone; nothing left to forward then
        pass
