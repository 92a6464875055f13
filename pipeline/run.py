"""flowgmm-ray's main job: prepare the data, train FlowGMM (or FlowGMM-cons) data-parallel with Ray Train,
evaluate and calibrate, and record everything in MLflow.

    python pipeline/run.py                                  # embedded default: digits, local Ray, local MLflow
    python pipeline/run.py --config moons --smoke           # any shipped experiment, shrunk to seconds
    python pipeline/run.py --config mnist train.epochs=10   # the paper's MNIST setting (1k labels), on GPUs
    python pipeline/run.py --config my.yaml --home /data/flowgmm --tracking-uri http://127.0.0.1:5000
    python pipeline/run.py --resume digits-20261123-101500  # continue an interrupted run from its checkpoint
    ray job submit --working-dir . -- python pipeline/run.py --config mnist

Everything the run writes (prepared shards, checkpoints, the MLflow store, the final model) lives under the home:
``--home``, else ``$FLOWGMM_HOME``, else ``~/.flowgmm`` (never the working directory, which is a temporary copy
under ``ray job submit``). On a multi-node cluster the home must be shared storage reachable from every node.

Headline (this machine: 2 CPU cores, no GPU): the default job trains and evaluates digits in about 2-3 minutes.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # `python pipeline/run.py`: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline.config import Config, ConfigError, dump_yaml, experiment_name, resolve  # noqa: E402
from pipeline.errors import DataError  # noqa: E402


def default_home() -> Path:
    return Path(os.environ.get("FLOWGMM_HOME") or Path.home() / ".flowgmm").expanduser().resolve()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="pipeline/run.py", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=None, help="experiment name (digits, moons, mnist, fashion_mnist, "
                   "breast_cancer) or a YAML file of the same schema; default: digits")
    p.add_argument("--smoke", action="store_true", help="shrink the experiment to seconds")
    p.add_argument("--home", default=None, help="where everything is written (default $FLOWGMM_HOME or ~/.flowgmm)")
    p.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (default: SQLite in the home)")
    p.add_argument("--storage-path", default=None, help="checkpoint storage, shared by all nodes on a cluster "
                   "(a path or a URI such as s3://bucket/flowgmm; default <home>/ray_results)")
    p.add_argument("--address", default=None, help="Ray cluster address (default: RAY_ADDRESS, else a local Ray)")
    p.add_argument("--run-name", default=None, help="name of this run (default: <config>-<timestamp>)")
    p.add_argument("--resume", default=None, metavar="NAME", help="continue the interrupted run NAME")
    p.add_argument("--data-dir", default=None, help="directory of downloaded data sets (default $FLOWGMM_DATA)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="override config fields, e.g. train.lr=3e-4")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    home = Path(args.home).expanduser().resolve() if args.home else default_home()
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
    overrides = list(args.overrides)
    if args.data_dir:
        overrides.append(f"data.data_dir={args.data_dir}")
    cfg = resolve(args.config, smoke=args.smoke, overrides=overrides)
    name = args.run_name or f"{cfg.name}{'-smoke' if args.smoke else ''}-{time.strftime('%Y%m%d-%H%M%S')}"
    return cfg, name, None


class Job:
    """One training job: its configuration, home, Ray, MLflow run and results. Methods run in order."""

    def __init__(self, cfg: Config, home: Path, run_name: str, args: argparse.Namespace,
                 resume_info: dict[str, Any] | None):
        self.cfg, self.home, self.run_name, self.args, self.resume_info = cfg, home, run_name, args, resume_info
        self.run_dir = home / "runs" / run_name
        self.storage = args.storage_path or (resume_info or {}).get("storage_path") or str(home / "ray_results")
        self.t0 = time.time()

    def run(self) -> int:
        import ray

        from pipeline.prepare import prepare

        self.home.mkdir(parents=True, exist_ok=True)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        os.environ.setdefault("RAY_AUTH_MODE", "token")   # explicit; a local Ray enables token auth anyway
        prepared = prepare(self.cfg.data, self.home)       # DataError -> exit 2, nothing half-written
        print(f"[flowgmm] data: {prepared.root} counts {json.dumps(prepared.manifest.get('counts'))}", flush=True)
        address = self.args.address or os.environ.get("RAY_ADDRESS")
        if not ray.is_initialized():
            # a local Ray gets its dashboard on 127.0.0.1: Train V2 cleans up placement groups through it
            local = {} if address else {"include_dashboard": True, "dashboard_host": "127.0.0.1"}
            ray.init(address=address, log_to_driver=True, configure_logging=True, logging_level="WARNING", **local)
        handle = self._start_tracking(prepared)
        status = "FAILED"
        try:
            result = self._train_and_evaluate(prepared, handle)
            status = "FINISHED"
            self._print_summary(result)
            return 0
        finally:
            handle.end(status)
            print(f"[flowgmm] MLflow run {handle.run_id} ({status}) in {handle.tracking_uri}; "
                  f"total {time.time() - self.t0:.1f} s", flush=True)

    # --- steps -------------------------------------------------------------------------------------------------
    def _start_tracking(self, prepared):
        from pipeline.tracking import start_run

        resume_id = self.resume_info["run_id"] if self.resume_info else None
        uri = self.args.tracking_uri or (self.resume_info or {}).get("tracking_uri")
        handle = start_run(self.home, experiment_name(self.cfg), self.run_name, tracking_uri=uri,
                           resume_run_id=resume_id, tags={"config_name": self.cfg.name, "method": self.cfg.train.method,
                                                          "n_labeled": str(self.cfg.data.n_labeled)})
        record = {"run_id": handle.run_id, "tracking_uri": handle.tracking_uri, "config": self.cfg.to_dict(),
                  "run_name": self.run_name, "storage_path": self.storage}
        _atomic_write_text(self.run_dir / "flowgmm_run.json", json.dumps(record, indent=2, default=str))
        if not resume_id:
            handle.log_params(self.cfg.flat())
            handle.log_text(dump_yaml(self.cfg), "config/resolved.yaml")
            handle.log_json(prepared.manifest, "data/manifest.json")
        return handle

    def _train_and_evaluate(self, prepared, handle) -> dict[str, Any]:
        import ray

        from pipeline.prepare import load_split
        from pipeline.train import make_trainer

        cfg = self.cfg
        spec = model_spec(cfg, prepared)
        val = load_split(prepared, "val")
        trainer = make_trainer(cfg, prepared, spec, run_name=self.run_name, storage_path=self.storage,
                               mlflow_info=handle.worker_info(), val=val)
        t_train = time.time()
        result = trainer.fit()
        train_seconds = time.time() - t_train
        best = best_checkpoint(result)
        ev = ray.get(_remote(evaluate_checkpoint, cfg).remote(best, prepared, cfg))
        metrics = {**ev.metrics, "train_seconds": train_seconds,
                   "train_steps": float((result.metrics or {}).get("step", 0)),
                   "restored_from_step": float((result.metrics or {}).get("restored_from_step", -1))}

        if cfg.eval.baselines and cfg.train.method != "supervised":
            metrics.update(self._supervised_baseline(prepared, spec, val))
        metrics["wall_seconds"] = time.time() - self.t0

        # the served model: best weights + calibration scale + OOD threshold
        from flowgmm.spec import load as load_model, save as save_model

        with best.as_directory() as best_dir:
            model, _ = load_model(best_dir)
        model.set_variance_scale(ev.variance_scale)
        served_spec = {**spec, "variance_scale": ev.variance_scale, "ood_threshold": ev.ood_threshold}
        model_dir = self.home / "models" / self.run_name
        save_model(model, served_spec, model_dir)

        handle.log_metrics(metrics)
        handle.log_json(ev.calibration_table, "evaluation/calibration_table.json")
        handle.log_text(_table_text(ev.calibration_table), "evaluation/calibration_table.txt")
        handle.log_json(ev.ood_table, "evaluation/ood_table.json")
        for path, png in ev.figures.items():
            handle.log_bytes(png, path)
        from pipeline.tracking import log_model

        model_uri = log_model(handle, model_dir, served_spec)
        from pipeline.registry import register

        registered = f"flowgmm-{cfg.data.source}"
        version, promoted = register(handle.tracking_uri, handle.run_id, model_uri, registered, metrics)
        print(f"[flowgmm] registered {registered} version {version}"
              f"{' -> @champion' if promoted else ' (champion unchanged: not better on validation)'}", flush=True)
        handle.set_tags({"model_uri": model_uri, "model_dir": str(model_dir), "best_checkpoint": best.path,
                         "registered_model": registered, "registered_version": version,
                         "promoted_to_champion": str(promoted)})
        return {"metrics": metrics, "calibration": ev.calibration_table, "ood": ev.ood_table,
                "model_dir": str(model_dir), "model_uri": model_uri}

    def _supervised_baseline(self, prepared, spec, val) -> dict[str, float]:
        """The same flow and budget trained on the labeled rows only; evaluated like the main model."""
        import ray

        from pipeline.train import make_trainer

        cfg = replace(self.cfg, train=replace(self.cfg.train, method="supervised", inject_failure_at_step=-1))
        trainer = make_trainer(cfg, prepared, spec, run_name=f"{self.run_name}-supervised",
                               storage_path=self.storage, mlflow_info=None, val=val)
        result = trainer.fit()
        m = ray.get(_remote(evaluate_checkpoint, cfg).remote(best_checkpoint(result), prepared, cfg,
                                                             accuracy_only=True))
        return {f"baseline_supervised_flow_{k}": v for k, v in m.items()}

    def _print_summary(self, result: dict[str, Any]) -> None:
        m = result["metrics"]
        keys = ["test_accuracy", "test_accuracy_calibrated", "test_nll", "test_nll_calibrated", "test_ece",
                "test_ece_calibrated", "test_bpd", "variance_scale", "baseline_supervised_flow_test_accuracy",
                "baseline_logreg_test_accuracy", "train_seconds", "wall_seconds"]
        print("[flowgmm] results:")
        for k in keys:
            if k in m:
                print(f"  {k:45s} {m[k]:.4f}")
        for row in result["ood"]:
            print(f"  OOD {row['ood_set']:>15s} by {row['score']:8s} AUROC {row['auroc']:.4f} "
                  f"AUPR {row['aupr']:.4f} FPR95 {row['fpr95']:.4f}")
        print(f"  model: {result['model_uri']} (weights in {result['model_dir']})", flush=True)


def model_spec(cfg: Config, prepared) -> dict[str, Any]:
    man = prepared.manifest
    spec: dict[str, Any] = {"kind": prepared.kind, "shape": list(prepared.shape), "num_classes": prepared.num_classes,
                            "class_names": list(prepared.class_names), "model": vars(cfg.model).copy(),
                            "seed": cfg.train.seed}
    if prepared.kind == "vector":
        spec["feature_mean"], spec["feature_std"] = man["feature_mean"], man["feature_std"]
        if man.get("feature_names"):
            spec["feature_columns"] = list(man["feature_names"])
    counts = man.get("class_counts", {}).get("labeled")
    if counts is not None:
        spec["class_counts"] = list(counts)
    return spec


def best_checkpoint(result):
    """The checkpoint with the best validation score (Ray keeps the best two and the latest)."""
    best = result.best_checkpoints or []
    ckpt = max(best, key=lambda cm: cm[1].get("score", float("-inf")))[0] if best else result.checkpoint
    if ckpt is None:
        raise RuntimeError("training reported no checkpoint")
    return ckpt


def evaluate_checkpoint(checkpoint, prepared, cfg: Config, accuracy_only: bool = False):
    """Runs as a Ray task (on a GPU when training used GPUs): fetch the checkpoint, wherever it is stored, and
    evaluate it."""
    from pipeline.evaluate import evaluate_accuracy_only, evaluate_model

    device = "cuda" if cfg.train.use_gpu else "cpu"
    with checkpoint.as_directory() as d:
        if accuracy_only:
            return evaluate_accuracy_only(d, prepared, cfg, device=device)
        return evaluate_model(d, prepared, cfg, device=device)


def _remote(fn, cfg: Config):
    import ray

    return ray.remote(num_cpus=min(1.0, cfg.train.cpus_per_worker * max(1, cfg.train.num_workers)),
                      num_gpus=1 if cfg.train.use_gpu else 0)(fn)


def _table_text(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return ""
    cols = list(rows[0])
    lines = [" | ".join(cols)]
    for r in rows:
        lines.append(" | ".join(f"{r[c]:.4f}" if isinstance(r[c], float) else str(r[c]) for c in cols))
    return "\n".join(lines) + "\n"


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


if __name__ == "__main__":
    sys.exit(main())
