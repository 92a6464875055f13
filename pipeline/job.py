"""One training job, the three stages in order: prepare the data, train FlowGMM (or FlowGMM-cons) with Ray Train
(and the same flow on the labels alone, the baseline), then evaluate, calibrate, register and record everything in
one MLflow run.

    python pipeline/run.py --config digits           # the entry script; also `flowgmm-run`, `python -m pipeline.run`

Everything the run writes (prepared shards, checkpoints, the MLflow store, the final model) lives under the home
(``pipeline.core.home``); on a multi-node cluster the home must be shared storage reachable from every node. The
console shows one progress line per model and a results table; ``--verbose`` brings back Ray's and MLflow's logs.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from pipeline.config import (
    EXPERIMENTS,
    Config,
    ConfigError,
    apply_override,
    config_from_args,
    dump_yaml,
    experiment_name,
    validate,
)
from pipeline.config.methods import LABELS_ONLY, method_name
from pipeline.config.parse import data_set_name
from pipeline.core.atomic import atomic_dir, atomic_write_text
from pipeline.core.cli import add_cluster_options, add_config_options, add_store_options
from pipeline.core.errors import DataError
from pipeline.core.home import resolve_home
from pipeline.core.raycluster import connect, quiet
from pipeline.results.summary import print_summary  # light: no Ray, torch or MLflow
from pipeline.train.state import NonFiniteLossError

RUN_RECORD = "flowgmm_run.json"

USAGE = """examples:
  python pipeline/run.py                                  # embedded default: digits, local Ray, local MLflow
  python pipeline/run.py --config moons --smoke           # any shipped experiment, shrunk to seconds
  python pipeline/run.py --config mnist train.steps=20000 # the paper's MNIST setting (1k labels), on GPUs
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
    add_config_options(p, EXPERIMENTS)
    add_store_options(p)
    add_cluster_options(p)
    p.add_argument("--resume", default=None, metavar="NAME", help="continue the interrupted run NAME")
    return p.parse_intermixed_args(argv)  # key=value words may come before or after the options


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    home = resolve_home(args.home)
    try:
        cfg, run_name, resume_info = _resolve_run(args, home)
    except (ConfigError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if not args.verbose:
        quiet()
    try:
        return Job(cfg, home, run_name, args, resume_info).run()
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except NonFiniteLossError as e:  # deterministic: a rerun would repeat it, so no retry and no traceback
        print(f"error: {e}", file=sys.stderr)
        return 1


def cli() -> None:
    """The ``flowgmm-run`` command: :func:`main`, then a quick exit (:func:`pipeline.core.cli.exit_now`)."""
    from pipeline.core.cli import exit_now

    try:
        code = main()
    except KeyboardInterrupt:  # one line, not a traceback from the thread the driver was waiting on
        print("\n[flowgmm] interrupted: the MLflow run is marked failed; --resume RUN_NAME continues it from its last "
              "checkpoint", file=sys.stderr, flush=True)  # fmt: skip
        code = 130
    exit_now(code)


def _resolve_run(args: argparse.Namespace, home: Path) -> tuple[Config, str, dict[str, Any] | None]:
    if args.resume:
        path = home / "runs" / args.resume / RUN_RECORD
        info, cfg = read_run_record(path, args.resume)
        conflicts = resume_conflicts(args, info)
        if conflicts:
            raise ConfigError(
                f"--resume {args.resume}: {conflicts} conflict with the run record {path}; "
                "resume without them (the run continues as recorded) or start a new run"
            )
        return cfg, args.resume, info
    cfg = config_from_args(args)
    name = args.run_name or f"{cfg.name}{'-smoke' if args.smoke else ''}-{time.strftime('%Y%m%d-%H%M%S')}"
    return cfg, name, None


def read_run_record(path: Path, name: str) -> tuple[dict[str, Any], Config]:
    """The run record a resumed run continues from, and its configuration; ConfigError (one line naming the file)
    when it is missing its keys or is not JSON."""
    if not path.exists():
        raise FileNotFoundError(f"--resume {name}: no run record at {path}")
    try:
        info = json.loads(path.read_text())
        missing = [k for k in ("config", "run_id") if k not in info]
        if missing:
            raise ValueError(f"missing {', '.join(missing)}")
        cfg = Config.from_dict(info["config"])
        validate(cfg)  # ranges and rules between fields, as for a new run
        return info, cfg
    except (ValueError, TypeError, AttributeError, ConfigError) as e:
        why = " ".join(str(e).split())
        raise ConfigError(f"--resume {name}: run record {path} is unreadable ({why})") from None


def resume_conflicts(args: argparse.Namespace, info: dict[str, Any]) -> str:
    """The options given with ``--resume`` that contradict the run record, with the recorded and the given
    values ('' when none): --run-name, --storage-path, --tracking-uri, and --config / --smoke / --data-dir /
    key=value overrides when they resolve to another configuration."""
    out = []
    for opt, given, recorded in (
        ("--run-name", args.run_name, args.resume),
        ("--storage-path", args.storage_path, info.get("storage_path")),
        ("--tracking-uri", args.tracking_uri, info.get("tracking_uri")),
    ):
        if given is not None and given != recorded:
            out.append(f"{opt} {given} (recorded: {recorded})")
    options = [*(["--config " + args.config] if args.config else []), *(["--smoke"] if args.smoke else [])]
    options += [*(["--data-dir " + args.data_dir] if args.data_dir else []), *args.overrides]
    if options:
        diffs = _config_changes(info["config"], _config_of_options(args, info["config"]))
        if diffs:
            out.append(f"{' '.join(options)} (changes {diffs})")
    return "; ".join(out)


def _config_of_options(args: argparse.Namespace, recorded: dict[str, Any]) -> Config:
    """The configuration the options name: resolved afresh with --config / --smoke, else the recorded one with the
    overrides (and --data-dir) applied."""
    if args.config or args.smoke:
        return config_from_args(args)
    cfg = Config.from_dict(recorded)
    for item in [*args.overrides, *([f"data.data_dir={args.data_dir}"] if args.data_dir else [])]:
        cfg = apply_override(cfg, item)
    return cfg


def _config_changes(recorded: dict[str, Any], cfg: Config, shown: int = 3) -> str:
    """'key: recorded -> given' for the fields that differ (the first ``shown``), '' when none."""
    a, b = _flat(recorded), _flat(json.loads(json.dumps(cfg.to_dict(), default=str)))
    first = ("data.source", "train.method")  # what most tells two configurations apart, then the rest in order
    keys = sorted((k for k in set(a) | set(b) if a.get(k) != b.get(k)), key=lambda k: (k not in first, k))
    if not keys:
        return ""
    text = ", ".join(f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in keys[:shown])
    return f"{len(keys)} field{'s' if len(keys) > 1 else ''}: {text}" + (", ..." if len(keys) > shown else "")


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


class Job:
    """One training job: its configuration, home, Ray, MLflow run and results. Methods run in order."""

    def __init__(
        self, cfg: Config, home: Path, run_name: str, args: argparse.Namespace, resume_info: dict[str, Any] | None
    ):
        self.cfg, self.home, self.run_name, self.args, self.resume_info = cfg, home, run_name, args, resume_info
        self.run_dir = home / "runs" / run_name
        self.storage = args.storage_path or (resume_info or {}).get("storage_path") or str(home / "ray_results")
        self.t0 = time.time()
        self.timing: dict[str, float] = {}
        self.baseline_reused: str | None = None  # the run whose labels-only baseline this one reused

    @contextlib.contextmanager
    def phase(self, name: str):
        t = time.time()
        try:
            yield
        finally:
            self.timing[name] = self.timing.get(name, 0.0) + time.time() - t

    def run(self) -> int:
        from flowgmm import ood
        from pipeline.data.prepare import prepare

        self.home.mkdir(parents=True, exist_ok=True)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.run_dir / "config.yaml", dump_yaml(self.cfg))
        print(f"[flowgmm] run {self.run_name} · home {self.home} · configuration: {self.run_dir / 'config.yaml'}")
        if self.args.verbose:
            print(dump_yaml(self.cfg), flush=True)
        if self.cfg.data.source == "images" and self.args.address:  # the folder is decoded on this cluster
            os.environ["RAY_ADDRESS"] = self.args.address
        with self.phase("prepare"):
            prepared = prepare(self.cfg.data, self.home)  # DataError -> exit 2, nothing half-written
        print(f"[flowgmm] data: {self.cfg.data.source}, {prepared.manifest['label_summary']} · {prepared.root}")
        if prepared.manifest.get("image_summary"):
            print(f"[flowgmm] images: {prepared.manifest['image_summary']}", flush=True)
        if prepared.manifest.get("encoding"):
            from pipeline.data.encoding import summary

            print(f"[flowgmm] table encoding: {summary(prepared.manifest['encoding'])}", flush=True)
        self._size_to_data(prepared)
        try:
            ood.served(self.cfg.eval.ood_score, prepared.kind)  # before any training
        except ValueError as e:
            raise DataError(f"{e} ({prepared.manifest['name']} is {prepared.kind} data)") from None
        tracking = _in_thread(self._start_tracking, prepared)  # meanwhile Ray starts (mostly waiting), if needed now
        if not self._ray_beside_training(prepared):
            with self.phase("ray_start"):
                self._connect(tracking)
        with self.phase("mlflow"):
            handle = tracking.result()  # what it raised, raised here
        status = "FAILED"
        try:
            result = self._train_and_evaluate(prepared, handle)
            status = "FINISHED"
            print_summary(self.cfg, result, handle, self.timing)
            return 0
        finally:
            handle.end(status)

    # --- steps -------------------------------------------------------------------------------------------------
    def _ray_beside_training(self, prepared) -> bool:
        """Whether Ray starts while the main model trains instead of before, and only if something needs it:
        training in this process on rows read straight from the files (``pipeline.train.trainer.reads_files``)
        uses no Ray, so Ray's start (~4 s on 2 cores) and the baselines' launch overlap it; with no room for the
        baselines beside the model (:meth:`_placement`) a local Ray is never started."""
        from pipeline.train.trainer import reads_files

        return reads_files(prepared, self.cfg)

    def _ensure_ray(self, phase: str) -> None:
        """Ray connected (started beside the training, or late: ``phase`` names the time it takes)."""
        import ray

        if not ray.is_initialized():
            with self.phase(phase):
                self._connect()

    def _placement(self) -> tuple[str, Any]:
        """Where the baselines train (``pipeline.results.baselines.placement``). A job on this machine alone with no
        Ray running (its model trains in the driver) starts none for them: with room beside the model they train in
        a process of their own (``BesideProcess``), else after it (Ray's start and its idle processes cost ~10% of
        each training step on 2 cores). A job on a cluster, or whose Ray runs already: a Ray task where there is
        room."""
        from pipeline.core.raycluster import expected_resources
        from pipeline.results.baselines import placement

        free = expected_resources(self.args.address)
        if free is not None and not _ray_running():  # this machine alone: a process beside the model, if room
            where, how = placement(self.cfg, free)
            return where, {**how, "process": True} if where == "beside" else how
        self._ensure_ray("ray_start_beside")
        return placement(self.cfg)

    def _connect(self, tracking=None) -> None:
        """Ray (``--address``, ``RAY_ADDRESS`` or a new local one); ``tracking``: the MLflow run opening meanwhile,
        ended as failed when Ray cannot start (not left running)."""
        try:
            connect(self.args.address, verbose=self.args.verbose)
        except BaseException:
            if tracking is not None:
                with contextlib.suppress(Exception):
                    tracking.result().end("FAILED")
            raise

    def _size_to_data(self, prepared) -> None:
        """The budget fields the configuration leaves unset, sized from the prepared data (the recorded configuration
        is the sized one: a resumed run continues with it)."""
        from pipeline.train.budget import budget_line, size_to_data, sized_fields

        sized = sized_fields(self.cfg)
        if sized:
            self.cfg = size_to_data(self.cfg, prepared)
            atomic_write_text(self.run_dir / "config.yaml", dump_yaml(self.cfg))
            print(budget_line(self.cfg, sized), flush=True)

    def _start_tracking(self, prepared):
        """The MLflow run in the data set's experiment (:func:`experiment_name` of the data's content hash), with the
        configuration as params, the prepared data as its dataset input and the run record written."""
        from pipeline.results.tracking import PreparedDataset, data_hash, start_run

        self.prepared, self.data_hash = prepared, data_hash(prepared.manifest)
        resume_id = self.resume_info["run_id"] if self.resume_info else None
        uri = self.args.tracking_uri or (self.resume_info or {}).get("tracking_uri")
        tags = {
            "config_name": self.cfg.name,
            "method": self.cfg.train.method,
            "n_labeled": str(self.cfg.data.n_labeled),
            **self._data_tags(),
        }
        experiment = experiment_name(self.cfg, self.data_hash)
        about = f"FlowGMM runs on {self._data_text()}: one run per job, one 'comparison' run per compare.py"
        handle = start_run(
            self.home,
            experiment,
            self.run_name,
            tracking_uri=uri,
            resume_run_id=resume_id,
            tags=tags,
            description=about,
        )
        record = {
            "run_id": handle.run_id,
            "tracking_uri": handle.tracking_uri,
            "experiment": experiment,
            "config": self.cfg.to_dict(),
            "run_name": self.run_name,
            "storage_path": self.storage,
        }
        atomic_write_text(self.run_dir / RUN_RECORD, json.dumps(record, indent=2, default=str))
        handle.use_dataset(PreparedDataset(prepared.manifest, prepared.root), log=not resume_id)
        if not resume_id:
            handle.log_params(self.cfg.flat())
            manifest = json.dumps(prepared.manifest, indent=2, default=str)
            _say(
                handle.log_files(
                    {"config/resolved.yaml": dump_yaml(self.cfg).encode(), "data/manifest.json": manifest.encode()}
                )
            )
        return handle

    def _data_tags(self) -> dict[str, str]:
        """What makes two runs' validation scores comparable: the data's content hash and the prepared split."""
        return {"data_hash": self.data_hash, "data_split": self.prepared.manifest["name"]}

    def _data_text(self) -> str:
        d = self.cfg.data
        return f"{Path(d.path).name} (content {self.data_hash})" if d.source == "table" and d.path else d.source

    def _train_and_evaluate(self, prepared, handle) -> dict[str, Any]:
        from pipeline.data.shards import load_split
        from pipeline.train.model import model_spec

        cfg = self.cfg
        spec = model_spec(cfg, prepared)
        val = load_split(prepared, "val")
        if self._ray_beside_training(prepared):  # the main model trains in a thread of this process meanwhile
            training = _in_thread(self._train_main, prepared, spec, val, handle)
            baselines = self._start_baselines(prepared, spec, val, handle)  # beside it where there is room
            trained = training.result()
        else:
            baselines = self._start_baselines(prepared, spec, val, handle)
            trained = self._train_main(prepared, spec, val, handle)
        background = None
        if cfg.eval.ood_background:
            with self.phase("ood_models"):
                background = self._background_model(prepared)
        if baselines is not None:
            self._flow_beside_evaluation(baselines)
        try:
            return self._evaluate_and_record(prepared, trained, spec, baselines, background, handle)
        finally:  # the flow's process ended (a failure or Ctrl-C before its result) and this one's threads back
            if baselines is not None and baselines.share is not None:
                baselines.ref.close()
                _restore_threads(cfg.train)

    def _evaluate_and_record(self, prepared, trained, spec, baselines, background, handle) -> dict[str, Any]:
        """Evaluation, the served model published (in a thread), the baselines' figures, MLflow; the job's result."""
        cfg = self.cfg
        with self.phase("evaluate"):
            ev = self._evaluate(trained.chosen, prepared, cfg, background=background)
        metrics = {**ev.metrics, **self._train_metrics(trained)}
        publishing = self._publish_beside(trained.chosen, spec, ev, handle, dict(metrics))
        try:
            if baselines is not None:
                with self.phase("baseline"):
                    metrics.update(self._finish_baselines(baselines, ev, handle))
            if cfg.eval.ood_heldout:
                with self.phase("ood_models"):
                    metrics.update(self._heldout_class(prepared, trained.chosen, ev))
        finally:
            with self.phase("mlflow"):
                model_dir, registration = publishing.result()  # waits for it (and raises what it raised)
        handle.log_params({**ev.params, "calibration": ev.calibration_note})  # the anchors' chosen settings
        with self.phase("mlflow"):
            self._log_evaluation(handle, ev)
        metrics["wall_seconds"] = time.time() - self.t0
        metrics.update({f"time_{k}_s": v for k, v in self.timing.items()})
        handle.log_metrics(metrics)
        return {
            "metrics": metrics,
            "calibration": ev.calibration_table,
            "calibration_note": ev.calibration_note,
            "ood": ev.ood_table,
            "model_dir": str(model_dir),
            "model_uri": registration.uri,
            "registration": registration,
            "baseline_reused": self.baseline_reused,
            "ray_started": _ray_running(),
        }

    def _train_main(self, prepared, spec, val, handle):
        with self.phase("train"):
            label = method_name(self.cfg.train.method)
            return self._train(
                self.cfg, prepared, spec, val, run_name=self.run_name, mlflow=handle.worker_info(), label=label
            )

    def _publish_beside(self, best, spec, ev, handle, metrics: dict[str, float]):
        """The served model saved, logged and registered in a thread, beside the baselines' training (it needs only
        the main model's figures); a future of ``(model_dir, registration)``. Its time: ``time_publish_s``."""

        def publish():
            with self.phase("publish"):
                model_dir, served_spec = self._save_served_model(best, spec, ev)
                return model_dir, self._register(handle, model_dir, served_spec, metrics, best)

        return _in_thread(publish)

    def _train(self, cfg: Config, prepared, spec, val, *, run_name: str, mlflow: dict | None, label: str):
        """Fit one model; its best checkpoint, last report and wall time."""
        from pipeline.train.trainer import TrainRun, reads_files

        if not reads_files(prepared, cfg):  # Ray Data and Ray Train workers (a job that trained in the driver so far)
            self._ensure_ray("ray_start")

        run = TrainRun(
            cfg,
            prepared,
            spec,
            run_name=run_name,
            storage_path=self.storage,
            mlflow_info=mlflow,
            val=val,
            label=label,
            resume=self.resume_info is not None,
            verbose=self.args.verbose,
            compile_cache=str(self.home / "compile_cache"),
        )
        return run.fit()

    def _train_metrics(self, trained) -> dict[str, float]:
        last = trained.metrics
        out = {
            "train_seconds": trained.seconds,
            "train_steps": float(last.get("step", 0)),
            "restored_from_step": float(last.get("restored_from_step", -1)),
        }
        keys = ("compile_warmup_s", "compile_frames", "step_s", "time_trainer_start_s", "time_data_pull_s")
        out.update({k: float(last[k]) for k in keys if k in last})
        return out

    def _evaluate(self, best, prepared, cfg: Config, background=None):
        """In the driver when training ran there (local mode), else as a Ray task on the workers' resources; the
        classical anchors are the baselines' work (:meth:`_start_baselines`)."""
        from pipeline.results.evaluate import evaluate_where_trained

        return evaluate_where_trained(best, prepared, cfg, background=background, anchors=False)

    def _on_checkpoint(self, fn, checkpoint, *args):
        """``fn(checkpoint directory, *args, device=...)`` where :meth:`_evaluate` runs."""
        from pipeline.results.evaluate import on_checkpoint, run_where_trained

        return run_where_trained(self.cfg, on_checkpoint, fn, checkpoint, self.cfg, *args)

    def _second_model(self, prepared, suffix: str, label: str):
        """The run's recipe trained on a derived data set (``pipeline.data.derive``); its chosen checkpoint."""
        from pipeline.data.shards import load_split
        from pipeline.train.model import model_spec

        cfg = replace(self.cfg, train=replace(self.cfg.train, inject_failure_at_step=-1))
        per_worker = prepared.counts["unlabeled"] // max(1, cfg.train.num_workers)
        if 0 < per_worker < cfg.ingest.unlabeled_batch:  # a class fewer: the run's batch can outgrow the pool
            cfg = replace(cfg, ingest=replace(cfg.ingest, unlabeled_batch=per_worker))
        val = load_split(prepared, "val")
        name = f"{self.run_name}-{suffix}"
        return self._train(cfg, prepared, model_spec(cfg, prepared), val, run_name=name, mlflow=None, label=label)

    def _background_model(self, prepared):
        """``eval.ood_background``: the recipe on training rows with a share of their cells randomised, the
        denominator of the likelihood-ratio score."""
        from pipeline.data.derive import perturbed

        rate = self.cfg.eval.ood_background_rate
        bg = perturbed(prepared, rate, self.cfg.data.seed)
        return self._second_model(bg, "background", "background model").chosen

    def _heldout_class(self, prepared, best, ev) -> dict[str, float]:
        """``eval.ood_heldout``: the recipe on every class but ``train.seed mod K``, that class's test rows scored as
        out of domain by every score. Unlabeled rows of the class are left out by their withheld label where the
        source has one, else by the main model's prediction. Rows join ``ev.ood_table``; metrics
        ``ood_heldout_<score>_<auroc|aupr_in|aupr_out|fpr95>``."""
        import numpy as np

        from pipeline.data.derive import without_class
        from pipeline.data.shards import load_split, load_unlabeled_labels
        from pipeline.results.evaluate import heldout_class_ood, predict_classes

        num = prepared.num_classes
        k = self.cfg.train.seed % num
        x_test, y_test = load_split(prepared, "test")
        if num < 3 or not (y_test == k).any():
            why = f"{num} classes (needs 3)" if num < 3 else f"no test rows of class {prepared.class_names[k]}"
            print(f"[flowgmm] held-out-class out-of-domain check skipped: {why}", flush=True)
            return {}
        known = load_unlabeled_labels(prepared)
        if (known < 0).any():
            x_u, _ = load_split(prepared, "unlabeled")
            known = np.where(known >= 0, known, self._on_checkpoint(predict_classes, best, x_u))
        name = prepared.class_names[k]
        held = without_class(prepared, k, known != k)
        try:
            trained = self._second_model(held, f"without-{k}", f"without class {name}")
        except DataError as e:  # the check, not the run: the main model stands
            print(f"[flowgmm] held-out-class out-of-domain check skipped: {e}", flush=True)
            return {}
        rows, s_in, s_out = self._on_checkpoint(heldout_class_ood, trained.chosen, held, self.cfg, x_test[y_test == k])
        ev.ood_table.extend({"ood_set": f"held-out class {name}", **r} for r in rows)
        if self.cfg.eval.figures:  # one picture per score, as for the other OOD sets
            from pipeline.results.figures import OOD_AXES, ood_histogram

            for score in s_in:
                axis = OOD_AXES[score].format(dim=prepared.dim)
                png = ood_histogram(s_in[score], {f"held-out class {name}": s_out[score]}, None, axis)
                ev.figures[f"plots/ood_heldout_{score}_hist.png"] = png
        out = {f"ood_heldout_{r['score']}_{m}": float(v) for r in rows for m, v in r.items() if m != "score"}
        return {**out, "ood_heldout_class": float(k)}

    def _start_baselines(self, prepared, spec, val, handle) -> _Baselines | None:
        """The baselines (``eval.baselines``): the classical anchors and the labels-only flow, the flow reused from
        the home's cache when the same split, recipe, seed and training code ran before (``baseline_cache``).
        Started now beside the main model where there is room (a Ray task, or with no Ray running a process of their
        own: :meth:`_placement`), else left for after it (``pipeline.results.baselines``); the console and the run's
        tags say which."""
        from pipeline.results import baseline_cache
        from pipeline.results.baselines import BaselineWork, BesideProcess, baselines_task, cores, labels_only_config

        if not self.cfg.eval.baselines:
            return None
        b = _Baselines(key=None, hit=None, where="after")
        if self.cfg.train.method != LABELS_ONLY.value:
            lo = labels_only_config(self.cfg, len(val[1]))
            b.key = baseline_cache.cache_key(lo.to_dict(), prepared.manifest, self.data_hash)
            b.hit = baseline_cache.load(self.home, b.key)
        work = BaselineWork(
            self.cfg,
            prepared,
            spec,
            val,
            run_name=f"{self.run_name}-labels-only",
            storage=self.storage,
            train_flow=b.key is not None and b.hit is None,
            anchors=not (b.hit or {}).get("anchors"),
            resume=self.resume_info is not None,
            verbose=self.args.verbose,
            compile_cache=str(self.home / "compile_cache"),
        )
        b.work = work
        if b.hit is not None:
            what = f"{LABELS_ONLY.display}{'' if work.anchors else ' and classical baselines'}"
            print(f"[flowgmm] {what}: reused from run {b.hit['run_name']} (same split, recipe, seed and training "
                  "code)", flush=True)  # fmt: skip
            handle.set_tags({"labels_only_path": "reused", "labels_only_from_run": b.hit["run_id"]})
            self.baseline_reused = b.hit["run_name"]
        if not (work.train_flow or work.anchors):  # everything from the cache: nothing to run
            return b
        b.where, how = self._placement()
        work.threads = cores(self.cfg, b.where, how)
        what = f"{LABELS_ONLY.display} and classical baselines" if work.train_flow else "classical baselines"
        if b.where == "beside":
            work.progress = False
            b.ref = BesideProcess(work) if how.get("process") else baselines_task(how).remote(work)
            own = f"{how['num_cpus']:g} CPU" + (f", {how['num_gpus']:g} GPU" if how["num_gpus"] else "")
            held = "" if self.cfg.train.num_workers == 0 else "; its workers hold what the main model's do"
            kind = "a process of its own" if how.get("process") else "a Ray task"
            print(f"[flowgmm] {what}: training beside the main model ({kind}, {own}{held})", flush=True)
        elif work.train_flow:
            print(f"[flowgmm] {what}: after the main model ({how})", flush=True)
        return b

    def _flow_beside_evaluation(self, b: _Baselines) -> None:
        """Baselines left for after the main model (it held every core) on this machine alone, with no Ray running:
        once it is trained, the labels-only flow starts in a process of its own on one core while the driver
        evaluates the model and fits the anchors on the others, and takes every core when the driver is done
        (``CoreShare``). Before, the three ran one after another in the driver, the evaluation and the anchors
        mostly on one thread (``mnist_cpu`` on 2 cores: 197 s after its model, 121-124 s now; bench/RESULTS.md)."""
        from pipeline.core.raycluster import expected_resources
        from pipeline.results.baselines import BesideProcess, CoreShare
        from pipeline.train.loop import driver_threads

        t, free = self.cfg.train, expected_resources(self.args.address)
        if b.where != "after" or not b.work.train_flow or t.num_workers > 0 or t.use_gpu:
            return
        if free is None or _ray_running():
            return
        # the cores the model held (its threads, at most this machine's CPUs: affinity and, in a container, quota)
        cores = min(driver_threads(t), len(os.sched_getaffinity(0)), int(free.get("CPU", 1)))
        if cores < 2:
            return
        import torch

        b.share = CoreShare(1)
        b.ref = BesideProcess(replace(b.work, anchors=False, share=b.share))
        b.work = replace(b.work, threads=cores - 1)  # what the driver's anchors get meanwhile
        b.cores = cores
        torch.set_num_threads(cores - 1)
        print(f"[flowgmm] {LABELS_ONLY.display}: training in a process of its own beside the evaluation (1 core, "
              f"then {cores})", flush=True)  # fmt: skip

    def _baseline_results(self, b: _Baselines):
        """The baselines' results: from the process or Ray task beside the main model, or run now. A labels-only flow
        in a process beside the evaluation (:meth:`_flow_beside_evaluation`): the anchors here meanwhile, then every
        core to it."""
        from pipeline.results.anchors import classical_baselines
        from pipeline.results.baselines import BesideProcess, run_baselines

        if b.share is not None:
            anchors = ({}, {})
            if b.work.anchors:
                anchors = classical_baselines(b.work.prepared, self.cfg.eval.anchor_unlabeled, b.work.threads)
            b.share.set(b.cores)
            res = b.ref.result()
            res.anchor_metrics, res.anchor_params = anchors
            return res
        if isinstance(b.ref, BesideProcess):
            return b.ref.result()
        if b.ref is not None:  # a Ray task
            import ray

            return ray.get(b.ref)
        return run_baselines(b.work)

    def _finish_baselines(self, b: _Baselines, ev, handle) -> dict[str, float]:
        """The baselines' figures (:meth:`_baseline_results`: waiting for them, or running them now): the anchors'
        metrics and chosen settings (into ``ev.params``), the labels-only flow's metrics (cached when trained), and
        its unlabeled points' distances to the decision boundary beside the main model's in ``ev``'s histogram."""
        from pipeline.results import baseline_cache
        from pipeline.results.figures import boundary_distances

        res = self._baseline_results(b)
        if res.error is not None:
            raise res.error
        anchors = {"metrics": res.anchor_metrics, "params": res.anchor_params}
        if not b.work.anchors:  # from the cache
            anchors = b.hit["anchors"]
        ev.params.update(anchors["params"])
        out = dict(anchors["metrics"])
        if b.where == "beside":
            out["time_baselines_beside_s"] = res.seconds
        flow = res.flow or b.hit
        if res.flow is not None:
            beside_eval = ", in a process of its own beside its evaluation" if b.share is not None else ""
            handle.set_tags({"labels_only_path": f"trained {b.where} the main model{beside_eval}"})
        if flow is None:
            return out
        if res.flow is not None or b.work.anchors:  # something new to keep (a hit without anchors gains them)
            run_name, run_id = (self.run_name, handle.run_id) if res.flow else (b.hit["run_name"], b.hit["run_id"])
            baseline_cache.store(
                self.home, b.key, flow["metrics"], flow["distances"], run_name, run_id, anchors=anchors
            )
        hist = "plots/boundary_distance_hist.png"
        if hist in ev.figures and flow["distances"] is not None:
            both = {method_name(self.cfg.train.method): ev.boundary_distances, LABELS_ONLY.display: flow["distances"]}
            ev.figures[hist] = boundary_distances(both)
        return {**out, **{f"{LABELS_ONLY.key}_{k}": v for k, v in flow["metrics"].items()}}

    def _save_served_model(self, best, spec, ev) -> tuple[Path, dict[str, Any]]:
        """The served model: best weights + calibration scale + OOD threshold, under <home>/models/<run>."""
        from flowgmm.spec import load as load_model
        from flowgmm.spec import save as save_model

        with best.as_directory() as best_dir:
            model, _ = load_model(best_dir)
        model.set_variance_scale(ev.variance_scale)
        served_spec = {
            **spec,
            "variance_scale": ev.variance_scale,
            "ood_score": ev.ood_score,
            "ood_threshold": ev.ood_threshold,
        }
        model_dir = self.home / "models" / self.run_name
        with atomic_dir(model_dir) as tmp:  # the whole directory appears at once
            save_model(model, served_spec, tmp)
        return model_dir, served_spec

    def _log_evaluation(self, handle, ev) -> None:
        files = {
            "evaluation/calibration_table.json": json.dumps(ev.calibration_table, indent=2, default=str).encode(),
            "evaluation/calibration_table.txt": _table_text(ev.calibration_table).encode(),
        }
        if ev.ood_table:  # no OOD sets: no empty file
            files["evaluation/ood_table.json"] = json.dumps(ev.ood_table, indent=2, default=str).encode()
        _say(handle.log_files({**files, **ev.figures}))  # one upload; a failure is one line, not a failed job

    def _register(self, handle, model_dir: Path, served_spec, metrics, best):
        """Log the pyfunc model (a validation row as its input example), register it under the data set's name,
        move ``champion`` if it is better on validation than the champion of the same data; the Registration."""
        from pipeline.data.shards import load_split
        from pipeline.results.registry import register_model
        from pipeline.results.tracking import log_model

        x_val, _ = load_split(self.prepared, "val")
        about = self._model_text(served_spec, metrics)
        model_uri = log_model(handle, model_dir, served_spec, example=x_val[:1], description=about)
        registered = registered_name(self.cfg, self.data_hash)
        reg = register_model(
            handle.tracking_uri,
            handle.run_id,
            model_uri,
            registered,
            metrics,
            data=self._data_tags(),
            tags={"ood_score": served_spec["ood_score"]},
            description=f"FlowGMM classifiers of {self._data_text()}; alias 'champion': the best on validation "
            "among the versions trained on the same data split",
            version_description=about,
        )
        handle.set_tags(
            {
                "model_uri": model_uri,
                "model_dir": str(model_dir),
                "best_checkpoint": best.path,
                "registered_model": registered,
                "registered_version": reg.version,
                "registered_uri": reg.uri,
                "promoted_to_champion": str(reg.promoted),
                "champion_decision": reg.reason,
            }
        )
        return reg

    def _model_text(self, served_spec, metrics) -> str:
        """The logged model's one-line description."""
        d = self.cfg.data
        labels = f"{d.n_labeled} labels" if d.n_labeled is not None else "labels sized from the data"
        acc, split = metrics.get("test_accuracy_calibrated"), self.prepared.manifest["name"]
        return (
            f"{method_name(self.cfg.train.method)} on {self._data_text()} ({labels}, split {split}),"
            f" calibrated (variance x{served_spec['variance_scale']:.3g}), out of domain below "
            f"{served_spec['ood_score']} = {served_spec['ood_threshold']:.4g}"
            + (f"; test accuracy {acc:.4f}" if acc is not None else "")
        )


def _in_thread(fn, *args):
    """``fn(*args)`` in a daemon thread (an interrupted job does not wait for it); a future of its result
    (``.result()`` waits, and raises what it raised)."""
    import threading
    from concurrent.futures import Future

    future: Future = Future()

    def target() -> None:
        future.set_running_or_notify_cancel()
        try:
            future.set_result(fn(*args))
        except BaseException as e:  # noqa: BLE001 - handed to whoever waits
            future.set_exception(e)

    threading.Thread(target=target, name=getattr(fn, "__name__", "job").strip("_"), daemon=True).start()
    return future


@dataclass
class _Baselines:
    """The job's baselines in flight: the cache key and hit of the labels-only flow, where they train ("beside" the
    main model in a Ray task or a process of their own, or "after" it: in the driver, or the labels-only flow in a
    process beside the evaluation), the work, the task's reference or the process, and that process's core share."""

    key: str | None
    hit: dict[str, Any] | None
    where: str
    work: Any = None
    ref: Any = None
    share: Any = None  # CoreShare: the labels-only flow's cores in a process beside the evaluation
    cores: int = 0  # with a share: the cores the main model held, the flow's once the driver is done


def _restore_threads(t) -> None:
    import torch

    from pipeline.train.loop import driver_threads

    torch.set_num_threads(driver_threads(t))


def _ray_running() -> bool:
    import ray

    return ray.is_initialized()


def _say(line: str | None) -> None:
    if line:
        print(f"[flowgmm] {line}", flush=True)


def _table_text(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return ""
    cols = list(rows[0])
    lines = [" | ".join(cols)]
    for r in rows:
        lines.append(" | ".join(f"{r[c]:.4f}" if isinstance(r[c], float) else str(r[c]) for c in cols))
    return "\n".join(lines) + "\n"


def registered_name(cfg: Config, data_hash: str | None = None) -> str:
    """The registry name: the data set's name (``flowgmm-<source>``; a user table
    ``flowgmm-table-<file stem>-<content hash>``), whatever experiment ``cfg.experiment`` names: two data sets never
    compete for one ``@champion``."""
    return data_set_name(cfg, data_hash)
