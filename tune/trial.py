"""One Tune trial: the pipeline's own training loop (``pipeline.train.make_trainer``) on the trial's configuration,
then the pipeline's calibrated evaluation of the best checkpoint, all recorded in an MLflow child run.

Runs inside the Tune trial actor (a function trainable; Ray Train V2's documented pattern for Tune over Train):

    trial driver (0 CPU)  ->  TorchTrainer(..., callbacks=[TuneReportCallback()]).fit()
                               rank 0 reports val_accuracy / val_nll / score every epoch -> Tune -> ASHA
                          ->  evaluate_checkpoint(best) in a Ray task (calibrated metrics)
                          ->  final metrics -> MLflow child run (FINISHED) and -> Tune (one last result)

A trial that ASHA stops is killed in the middle of ``fit()``: its child run is left RUNNING here and the sweep
driver marks it KILLED afterwards (``tune.sweep``).
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

EVALUATED = "evaluated"          # 1.0 in the last result of a trial that ran to the end and was evaluated


def run_trial(params: dict[str, Any], *, base: dict[str, Any], prepared, val, ctx: dict[str, Any]) -> None:
    """The Tune function trainable. ``params``: the sampled point (see ``tune.space``); ``base``: the sweep's
    base configuration as a dict; ``ctx``: home, tracking URI, experiment, parent run id, storage path, sweep
    name."""
    import ray
    from ray import tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from pipeline.config import Config, dump_yaml
    from pipeline.run import best_checkpoint, model_spec
    from pipeline.tracking import start_run
    from pipeline.train import make_trainer
    from tune.space import trial_config

    trial_id = tune.get_context().get_trial_id()
    cfg = trial_config(Config.from_dict(base), params)
    run_name = f"{ctx['sweep_name']}-trial_{trial_id}"
    handle = start_run(Path(ctx["home"]), ctx["experiment"], run_name, tracking_uri=ctx["tracking_uri"],
                       tags={"mlflow.parentRunId": ctx["parent_run_id"], "sweep": ctx["sweep_name"],
                             "trial_id": trial_id, "config_name": cfg.name, "method": cfg.train.method,
                             "n_labeled": str(cfg.data.n_labeled)})
    status = "FAILED"
    try:
        handle.log_params({**cfg.flat(), **{f"trial.{k}": v for k, v in params.items()}})
        handle.log_text(dump_yaml(cfg), "config/resolved.yaml")
        spec = model_spec(cfg, prepared)
        report = TuneReportCallback()
        trainer = make_trainer(cfg, prepared, spec, run_name=run_name, storage_path=ctx["storage_path"],
                               mlflow_info=handle.worker_info(), val=val, callbacks=[report])
        t0 = time.time()
        result = trainer.fit()
        train_seconds = time.time() - t0
        best = best_checkpoint(result)
        ev = ray.get(_evaluation_task(cfg).remote(best, prepared, cfg))
        final = {**ev.metrics, "train_seconds": train_seconds,
                 "train_steps": float((result.metrics or {}).get("step", 0))}
        handle.log_metrics(final)
        handle.log_json(ev.calibration_table, "evaluation/calibration_table.json")
        for path, png in ev.figures.items():
            handle.log_bytes(png, path)
        handle.set_tags({"best_checkpoint": best.path, "trial_status": "completed"})
        status = "FINISHED"
    finally:
        handle.end(status)   # not reached when Tune kills the trial: the sweep driver marks that run KILLED
    # The last result of the trial: the last epoch's metrics plus the final (calibrated) ones. Sent through the same
    # queue as the per-epoch reports, so it can never overtake the last epoch's result.
    last = {k: v for k, v in (result.metrics or {}).items() if isinstance(v, (int, float))}
    report.after_report(None, [{**last, **final, EVALUATED: 1.0, "mlflow_run_id": handle.run_id}], None)


def _evaluation_task(cfg):
    """``pipeline.run.evaluate_checkpoint`` as a Ray task with the resources of one training worker (so a trial
    sharing a GPU fractionally evaluates on its share)."""
    import ray

    from pipeline.run import evaluate_checkpoint

    t = cfg.train
    gpus = float(getattr(t, "gpus_per_worker", 1.0)) if t.use_gpu else 0.0
    return ray.remote(num_cpus=min(1.0, t.cpus_per_worker * max(1, t.num_workers)), num_gpus=gpus)(
        evaluate_checkpoint)
