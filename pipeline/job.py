"""One training job, the three stages in order: prepare the data, train FlowGMM (or FlowGMM-cons) data-parallel
with Ray Train, then evaluate, calibrate, register and record everything in MLflow.

    python pipeline/run.py --config digits           # the entry script; also `flowgmm-run`, `python -m pipeline.run`

Everything the run writes (prepared shards, checkpoints, the MLflow store, the final model) lives under the home
(``pipeline.core.home``); on a multi-node cluster the home must be shared storage reachable from every node.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from pipeline.config import Config, ConfigError, config_from_args, dump_yaml, experiment_name
from pipeline.core.atomic import atomic_dir, atomic_write_text
from pipeline.core.cli import add_cluster_options, add_config_options, add_store_options
from pipeline.core.errors import DataError
from pipeline.core.home import resolve_home
from pipeline.core.raycluster import connect

USAGE = """examples:
  python pipeline/run.py                                  # embedded default: digits, local Ray, local MLflow
  python pipeline/run.py --config moons --smoke           # any shipped experiment, shrunk to seconds
  python pipeline/run.py --config mnist train.epochs=10   # the paper's MNIST setting (1k labels), on GPUs
  python pipeline/run.py --config my.yaml --home /data/flowgmm --tracking-uri http://127.0.0.1:5000
  python pipeline/run.py --resume digits-20261123-101500  # continue an interrupted run from its checkpoint
  ray job submit --working-dir . -- python pipeline/run.py --config mnist
"""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="pipeline/run.py",
        description=__doc__.split("\n\n")[0],
        epilog=USAGE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_config_options(p)
    add_store_options(p)
    add_cluster_options(p)
    p.add_argument("--resume", default=None, metavar="NAME", help="continue the interrupted run NAME")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    home = resolve_home(args.home)
    try:
        cfg, run_name, resume_info = _resolve_run(args, home)
    except (ConfigError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"[flowgmm] home: {home}", flush=True)
    print(f"[flowgmm] run: {run_name}\n[flowgmm] resolved configuration:\n{dump_yaml(cfg)}", flush=True)
    try:
        return Job(cfg, home, run_name, args, resume_info).run()
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def _resolve_run(args: argparse.Namespace, home: Path) -> tuple[Config, str, dict[str, Any] | None]:
    if args.resume:
        info_path = home / "runs" / args.resume / "flowgmm_run.json"
        if not info_path.exists():
            raise FileNotFoundError(f"--resume {args.resume}: no run record at {info_path}")
        info = json.loads(info_path.read_text())
        cfg = Config.from_dict(info["config"])
        return cfg, args.resume, info
    cfg = config_from_args(args)
    name = args.run_name or f"{cfg.name}{'-smoke' if args.smoke else ''}-{time.strftime('%Y%m%d-%H%M%S')}"
    return cfg, name, None


class Job:
    """One training job: its configuration, home, Ray, MLflow run and results. Methods run in order."""

    def __init__(
        self, cfg: Config, home: Path, run_name: str, args: argparse.Namespace, resume_info: dict[str, Any] | None
    ):
        self.cfg, self.home, self.run_name, self.args, self.resume_info = cfg, home, run_name, args, resume_info
        self.run_dir = home / "runs" / run_name
        self.storage = args.storage_path or (resume_info or {}).get("storage_path") or str(home / "ray_results")
        self.t0 = time.time()

    def run(self) -> int:
        from pipeline.data.prepare import prepare

        self.home.mkdir(parents=True, exist_ok=True)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        prepared = prepare(self.cfg.data, self.home)  # DataError -> exit 2, nothing half-written
        print(f"[flowgmm] data: {prepared.root} counts {json.dumps(prepared.manifest.get('counts'))}", flush=True)
        connect(self.args.address)
        handle = self._start_tracking(prepared)
        status = "FAILED"
        try:
            result = self._train_and_evaluate(prepared, handle)
            status = "FINISHED"
            self._print_summary(result)
            return 0
        finally:
            handle.end(status)
            print(
                f"[flowgmm] MLflow run {handle.run_id} ({status}) in {handle.tracking_uri}; "
                f"total {time.time() - self.t0:.1f} s",
                flush=True,
            )

    # --- steps -------------------------------------------------------------------------------------------------
    def _start_tracking(self, prepared):
        from pipeline.results.tracking import start_run

        resume_id = self.resume_info["run_id"] if self.resume_info else None
        uri = self.args.tracking_uri or (self.resume_info or {}).get("tracking_uri")
        handle = start_run(
            self.home,
            experiment_name(self.cfg),
            self.run_name,
            tracking_uri=uri,
            resume_run_id=resume_id,
            tags={
                "config_name": self.cfg.name,
                "method": self.cfg.train.method,
                "n_labeled": str(self.cfg.data.n_labeled),
            },
        )
        record = {
            "run_id": handle.run_id,
            "tracking_uri": handle.tracking_uri,
            "config": self.cfg.to_dict(),
            "run_name": self.run_name,
            "storage_path": self.storage,
        }
        atomic_write_text(self.run_dir / "flowgmm_run.json", json.dumps(record, indent=2, default=str))
        if not resume_id:
            handle.log_params(self.cfg.flat())
            handle.log_text(dump_yaml(self.cfg), "config/resolved.yaml")
            handle.log_json(prepared.manifest, "data/manifest.json")
        return handle

    def _train_and_evaluate(self, prepared, handle) -> dict[str, Any]:
        import ray

        from pipeline.data.shards import load_split
        from pipeline.results.evaluate import evaluation_task
        from pipeline.train.model import model_spec

        cfg = self.cfg
        spec = model_spec(cfg, prepared)
        val = load_split(prepared, "val")
        best, train_metrics = self._train(prepared, spec, val, handle)
        ev = ray.get(evaluation_task(cfg).remote(best, prepared, cfg))
        metrics = {**ev.metrics, **train_metrics}
        if cfg.eval.baselines and cfg.train.method != "supervised":
            metrics.update(self._supervised_baseline(prepared, spec, val))
        metrics["wall_seconds"] = time.time() - self.t0
        model_dir, served_spec = self._save_served_model(best, spec, ev)
        handle.log_metrics(metrics)
        handle.log_json(ev.calibration_table, "evaluation/calibration_table.json")
        handle.log_text(_table_text(ev.calibration_table), "evaluation/calibration_table.txt")
        handle.log_json(ev.ood_table, "evaluation/ood_table.json")
        for path, png in ev.figures.items():
            handle.log_bytes(png, path)
        model_uri = self._register(handle, model_dir, served_spec, metrics, best)
        return {
            "metrics": metrics,
            "calibration": ev.calibration_table,
            "ood": ev.ood_table,
            "model_dir": str(model_dir),
            "model_uri": model_uri,
        }

    def _train(self, prepared, spec, val, handle):
        """Fit the trainer; the best checkpoint and the training metrics."""
        from pipeline.train.trainer import best_checkpoint, make_trainer

        trainer = make_trainer(
            self.cfg,
            prepared,
            spec,
            run_name=self.run_name,
            storage_path=self.storage,
            mlflow_info=handle.worker_info(),
            val=val,
        )
        t_train = time.time()
        result = trainer.fit()
        last = result.metrics or {}
        return best_checkpoint(result), {
            "train_seconds": time.time() - t_train,
            "train_steps": float(last.get("step", 0)),
            "restored_from_step": float(last.get("restored_from_step", -1)),
        }

    def _save_served_model(self, best, spec, ev) -> tuple[Path, dict[str, Any]]:
        """The served model: best weights + calibration scale + OOD threshold, under <home>/models/<run>."""
        from flowgmm.spec import load as load_model
        from flowgmm.spec import save as save_model

        with best.as_directory() as best_dir:
            model, _ = load_model(best_dir)
        model.set_variance_scale(ev.variance_scale)
        served_spec = {**spec, "variance_scale": ev.variance_scale, "ood_threshold": ev.ood_threshold}
        model_dir = self.home / "models" / self.run_name
        with atomic_dir(model_dir) as tmp:  # the whole directory appears at once
            save_model(model, served_spec, tmp)
        return model_dir, served_spec

    def _register(self, handle, model_dir: Path, served_spec, metrics, best) -> str:
        """Log the pyfunc model, register it, move ``champion`` if it is better on validation; the model URI."""
        from pipeline.results.registry import register
        from pipeline.results.tracking import log_model

        model_uri = log_model(handle, model_dir, served_spec)
        registered = f"flowgmm-{self.cfg.data.source}"
        version, promoted = register(handle.tracking_uri, handle.run_id, model_uri, registered, metrics)
        verdict = " -> @champion" if promoted else " (champion unchanged: not better on validation)"
        print(f"[flowgmm] registered {registered} version {version}{verdict}", flush=True)
        handle.set_tags(
            {
                "model_uri": model_uri,
                "model_dir": str(model_dir),
                "best_checkpoint": best.path,
                "registered_model": registered,
                "registered_version": version,
                "promoted_to_champion": str(promoted),
            }
        )
        return model_uri

    def _supervised_baseline(self, prepared, spec, val) -> dict[str, float]:
        """The same flow and budget trained on the labeled rows only; evaluated like the main model."""
        import ray

        from pipeline.results.evaluate import evaluation_task
        from pipeline.train.trainer import best_checkpoint, make_trainer

        cfg = replace(self.cfg, train=replace(self.cfg.train, method="supervised", inject_failure_at_step=-1))
        trainer = make_trainer(
            cfg,
            prepared,
            spec,
            run_name=f"{self.run_name}-supervised",
            storage_path=self.storage,
            mlflow_info=None,
            val=val,
        )
        result = trainer.fit()
        m = ray.get(evaluation_task(cfg).remote(best_checkpoint(result), prepared, cfg, accuracy_only=True))
        return {f"baseline_supervised_flow_{k}": v for k, v in m.items()}

    def _print_summary(self, result: dict[str, Any]) -> None:
        m = result["metrics"]
        keys = [
            "test_accuracy",
            "test_accuracy_calibrated",
            "test_nll",
            "test_nll_calibrated",
            "test_ece",
            "test_ece_calibrated",
            "test_bpd",
            "variance_scale",
            "baseline_supervised_flow_test_accuracy",
            "baseline_logreg_test_accuracy",
            "train_seconds",
            "wall_seconds",
        ]
        print("[flowgmm] results:")
        for k in keys:
            if k in m:
                print(f"  {k:45s} {m[k]:.4f}")
        for row in result["ood"]:
            print(
                f"  OOD {row['ood_set']:>15s} by {row['score']:8s} AUROC {row['auroc']:.4f} "
                f"AUPR {row['aupr']:.4f} FPR95 {row['fpr95']:.4f}"
            )
        print(f"  model: {result['model_uri']} (weights in {result['model_dir']})", flush=True)


def _table_text(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return ""
    cols = list(rows[0])
    lines = [" | ".join(cols)]
    for r in rows:
        lines.append(" | ".join(f"{r[c]:.4f}" if isinstance(r[c], float) else str(r[c]) for c in cols))
    return "\n".join(lines) + "\n"
