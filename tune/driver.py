"""The sweep driver: hyperparameter sweeps of FlowGMM / FlowGMM-cons with Ray Tune over the pipeline's own Ray
Train loop (the entry script is ``tune/sweep.py``; also ``flowgmm-sweep`` and ``python -m tune.sweep``).

    python tune/sweep.py --config moons --smoke                         # 8 trials, ASHA + Optuna TPE, seconds each
    python tune/sweep.py --config digits --num-samples 16 --metric val_nll
    python tune/sweep.py --config mnist --num-samples 32 --max-concurrent 4 \\
        train.use_gpu=true train.num_workers=1 train.gpus_per_worker=0.25    # 4 trials share one GPU
    python tune/sweep.py --config moons --smoke --point lr=1.0              # also evaluate this point first
    ray job submit --working-dir . -- python tune/sweep.py --config digits

The configuration is the one of ``pipeline/run.py`` (``--config``, ``--smoke``, ``key=value`` overrides, ``--home``,
``--tracking-uri``, ``--storage-path``, ``--address``, ``--data-dir``); the sweep samples

    lr (log-uniform), consistency weight (0 = plain FlowGMM, > 0 = FlowGMM-cons), means scale, component variance
    (log-uniform) and whether the variances are learned                                    (see tune/space.py)

with a seeded Optuna TPE searcher (``--search random``: Tune's seeded random search) that evaluates the base
configuration first (the "default" trial), and ASHA on the validation metric (``--metric``) reported every
``train.eval_every`` steps, in training steps (``--grace-period``). Each trial trains with
``pipeline.train.trainer.TrainRun`` on at least one Ray Train worker (Tune's documented function-trainable pattern
with ``TuneReportCallback``); a trial that runs to the end is calibrated and evaluated with the pipeline's evaluation.

MLflow (experiment ``flowgmm-<data source>``): a parent run per sweep with one child run per trial (params,
metrics during training, final calibrated metrics; trials ASHA stopped end KILLED, failed ones FAILED); on the parent,
``sweep/trials.csv`` + ``.json``, ``plots/sweep_comparison.png`` and ``best_config/best.yaml``, also written to
``<home>/sweeps/<name>/best.yaml``:

    python pipeline/run.py --config ~/.flowgmm/sweeps/<name>/best.yaml

Console: one line per trial event (started, a few reports, completed / stopped early by ASHA / error), then the
trials table and best vs default (``tune/console.py``); the base configuration goes to
``<home>/sweeps/<name>/base.yaml``. ``--verbose`` adds Ray's and Tune's own output (status tables, the workers'
output) and prints the configuration.

Ray: Tune over Train V2 needs the Ray dashboard (State API): Train's placement-group cleaner polls it to release
the workers of a trial Tune stopped. A local Ray is started with it; on a cluster the sweep checks it first.
Each trial driver asks for no CPU (``{"cpu": 0, "memory": 1e8}``); the Train workers ask for
``train.cpus_per_worker`` (and a GPU share with ``train.use_gpu``). The MLflow SQLite store takes one writer at a
time: with ``--max-concurrent`` > 1 prefer a tracking server (``--tracking-uri http://127.0.0.1:5000``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from pipeline.config import EXPERIMENTS, Config, ConfigError, config_from_args, dump_yaml, experiment_name
from pipeline.core.atomic import atomic_write_bytes, atomic_write_text
from pipeline.core.cli import add_cluster_options, add_config_options, add_store_options
from pipeline.core.errors import DataError
from pipeline.core.home import resolve_home
from pipeline.core.raycluster import connect
from tune.console import SweepConsole, point_text, quiet_tune
from tune.report import COMPLETED, ERROR, FINAL_KEYS, STOPPED, best_row
from tune.resources import ReleaseTrialResources, live_placement_groups, wait_released
from tune.space import (
    METRICS,
    PARAMS,
    SEARCHERS,
    SearchSpace,
    SweepSettings,
    default_point,
    param_space,
    parse_point,
    same_point,
    trial_config,
)

TRIAL_RESOURCES = {"cpu": 0, "memory": 100_000_000}  # the trial driver; Train workers ask for their own


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="tune/sweep.py", description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    g = p.add_argument_group("configuration (as pipeline/run.py)")
    add_config_options(g, EXPERIMENTS)
    add_store_options(g)
    add_cluster_options(g)
    s = p.add_argument_group("sweep")
    d = SweepSettings()
    s.add_argument("--num-samples", type=int, default=d.num_samples, help="trials in total (default %(default)s)")
    s.add_argument("--max-concurrent", type=int, default=d.max_concurrent, help="trials at once (default %(default)s)")
    s.add_argument(
        "--metric",
        choices=sorted(METRICS),
        default=d.metric,
        help="validation metric for ASHA and the searcher (default %(default)s)",
    )
    s.add_argument(
        "--grace-period",
        type=int,
        default=d.grace_period,
        help="training steps before ASHA may stop a trial (0: the first evaluation, train.eval_every)",
    )
    s.add_argument("--reduction-factor", type=float, default=d.reduction_factor, help="ASHA halving rate")
    s.add_argument("--search", choices=SEARCHERS, default=d.search, help="search algorithm (default %(default)s)")
    s.add_argument("--seed", type=int, default=d.seed, help="searcher seed")
    s.add_argument("--no-default", action="store_true", help="do not evaluate the base configuration first")
    s.add_argument(
        "--point",
        action="append",
        default=[],
        metavar="k=v,...",
        help="a point to evaluate first, e.g. lr=1e-2,consistency_weight=0 (unset keys: the base "
        "configuration's); repeatable",
    )
    r = p.add_argument_group("search space (default: around the base configuration)")
    r.add_argument("--lr-range", type=float, nargs=2, metavar=("LOW", "HIGH"), help="log-uniform (base lr x/÷10)")
    r.add_argument(
        "--consistency-weights", default=None, metavar="W,...", help="choices; 0 = plain FlowGMM (default 0,0.3,1,3)"
    )
    r.add_argument("--means-scale-range", type=float, nargs=2, metavar=("LOW", "HIGH"), help="log-uniform (base x/÷2)")
    r.add_argument(
        "--variance-range", type=float, nargs=2, metavar=("LOW", "HIGH"), help="log-uniform (base x0.25..x2)"
    )
    r.add_argument("--learn-variance", choices=("both", "true", "false"), default="both")
    return p.parse_intermixed_args(argv)  # key=value words may come before or after the options


def settings_from_args(args: argparse.Namespace, cfg: Config) -> SweepSettings:
    space = SearchSpace()
    if args.consistency_weights:
        try:
            ws = tuple(float(w) for w in args.consistency_weights.split(",") if w.strip())
        except ValueError:
            raise ConfigError(f"--consistency-weights {args.consistency_weights!r} is not a list of numbers") from None
        space = replace(space, consistency_weights=ws)
    space = replace(
        space,
        lr=tuple(args.lr_range) if args.lr_range else None,
        means_scale=tuple(args.means_scale_range) if args.means_scale_range else None,
        variance=tuple(args.variance_range) if args.variance_range else None,
        learn_variance={"both": (False, True), "true": (True,), "false": (False,)}[args.learn_variance],
    )
    base_point = default_point(cfg)
    points = [parse_point(t, base_point) for t in args.point]
    for pt in points:
        trial_config(cfg, pt)  # a bad point fails here, before anything starts
    settings = SweepSettings(
        num_samples=args.num_samples,
        max_concurrent=args.max_concurrent,
        metric=args.metric,
        grace_period=args.grace_period,
        reduction_factor=args.reduction_factor,
        search=args.search,
        seed=args.seed,
        include_default=not args.no_default,
        points=points,
        space=space.for_config(cfg),
    )
    settings.check()
    settings.space.check()
    return settings


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    home = resolve_home(args.home)
    try:
        cfg = config_from_args(args)
        if cfg.train.num_workers == 0:  # Tune hears a trial's reports through a Ray Train callback: a worker group
            cfg = replace(cfg, train=replace(cfg.train, num_workers=1))
        settings = settings_from_args(args, cfg)
    except (ConfigError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if not args.verbose:
        quiet_tune()
    name = args.run_name or f"{cfg.name}{'-smoke' if args.smoke else ''}-sweep-{time.strftime('%Y%m%d-%H%M%S')}"
    base_yaml = home / "sweeps" / name / "base.yaml"
    atomic_write_text(base_yaml, dump_yaml(cfg))
    print(f"[sweep] sweep {name} · home {home} · base configuration: {base_yaml}", flush=True)
    if args.verbose:
        print(dump_yaml(cfg), flush=True)
    try:
        return Sweep(cfg, settings, home, name, args).run()
    except (DataError, DashboardMissing) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


class DashboardMissing(RuntimeError):
    """Tune over Train V2 without the Ray State API leaks the placement groups of stopped trials (and hangs)."""


class Sweep:
    """One sweep: data, Ray, the MLflow parent run, the Tuner, and what is recorded afterwards."""

    def __init__(self, cfg: Config, settings: SweepSettings, home: Path, name: str, args: argparse.Namespace):
        self.cfg, self.settings, self.home, self.name, self.args = cfg, settings, home, name, args
        self.storage = args.storage_path or str(home / "ray_results")
        self.out_dir = home / "sweeps" / name
        self.t0 = time.time()
        self.summary: dict[str, Any] = {}

    def run(self) -> int:
        import ray

        from pipeline.data import load_split, prepare
        from pipeline.results.tracking import data_hash, start_run
        from pipeline.train.budget import size_to_data

        self.home.mkdir(parents=True, exist_ok=True)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        prepared = prepare(self.cfg.data, self.home)
        self.cfg = size_to_data(self.cfg, prepared)  # the budget fields the configuration leaves to the data
        self.experiment = experiment_name(self.cfg, data_hash(prepared.manifest))  # the job's, for the same data
        # the trials' lines come from the driver (SweepConsole): the workers' output only with --verbose
        connect(self.args.address, verbose=self.args.verbose, pin_api_address=True, worker_output=self.args.verbose)
        check_state_api()
        pgs_before = live_placement_groups()
        self.release = ReleaseTrialResources(ray.get_runtime_context().gcs_address, pgs_before)
        val = load_split(prepared, "val")
        parent = start_run(
            self.home,
            self.experiment,
            self.name,
            tracking_uri=self.args.tracking_uri,
            tags={
                "sweep": self.name,
                "sweep_role": "parent",
                "config_name": self.cfg.name,
                "search": self.settings.search,
                "metric": self.settings.metric,
            },
        )
        self.parent = parent
        status = "FAILED"
        rc = 1
        try:
            parent.log_params({**{f"base.{k}": v for k, v in self.cfg.flat().items()}, **self.settings.flat()})
            parent.log_text(dump_yaml(self.cfg), "config/base.yaml")
            results = self._fit(prepared, val, parent)
            rows = self._close_child_runs(results, parent)
            self.release.release()
            self.summary["leaked_placement_groups"] = float(wait_released(pgs_before))
            self.summary["placement_groups_removed_by_sweep"] = float(len(self.release.removed))
            rc = self._record(rows, parent)
            status = "FINISHED" if rc == 0 else "FAILED"
            return rc
        finally:
            _mark_open_children(parent, "FAILED")  # anything still open after an error in the driver
            parent.end(status)
            print(
                f"[sweep] MLflow parent run {parent.run_id} ({status}) in {parent.tracking_uri}; "
                f"total {time.time() - self.t0:.1f} s",
                flush=True,
            )

    # --- the Tuner ---------------------------------------------------------------------------------------------
    def _fit(self, prepared, val, parent):
        from ray import tune

        st, cfg = self.settings, self.cfg
        points = ([default_point(cfg)] if st.include_default else []) + list(st.points)
        space = st.space.covering(points)
        if space != st.space:
            d = {k: [f"{v:.3g}" for v in vs] for k, vs in space.to_dict().items() if k != "learn_variance"}
            text = ", ".join(f"{k} {(',' if k == 'consistency_weights' else '..').join(v)}" for k, v in d.items())
            print(f"[sweep] search space widened to cover the points to evaluate: {text}", flush=True)
        self.points = points
        tuner = tune.Tuner(
            self._trainable(prepared, val, parent),
            param_space=param_space(space),
            tune_config=self._tune_config(points),
            run_config=tune.RunConfig(
                name=self.name,
                storage_path=self.storage,
                callbacks=[self._console(points), self.release],
                failure_config=tune.FailureConfig(max_failures=0),
                verbose=1 if self.args.verbose else 0,  # Tune's status tables
            ),
        )
        first = "; ".join(f"{label} ({point_text(p)})" for p, label in _labels(points, st.include_default))
        print(
            f"[sweep] {st.num_samples} trials, searcher {st.search} (seed {st.seed}), ASHA on {st.metric} "
            f"({st.mode}): grace {self._grace()} of {cfg.train.steps} steps, reduction factor "
            f"{st.reduction_factor:g}; {st.max_concurrent} at once" + (f"; first: {first}" if first else ""),
            flush=True,
        )
        t = time.time()
        results = tuner.fit()
        self.summary["tune_fit_seconds"] = time.time() - t
        return results

    def _console(self, points: list[dict[str, Any]]) -> SweepConsole:
        st = self.settings
        self.console = SweepConsole(
            self.cfg.train.steps,
            st.num_samples,
            labels=_labels(points, st.include_default),
            same_point=same_point,
            metric=st.metric,
        )
        return self.console

    def _grace(self) -> int:
        t = self.cfg.train
        return min(self.settings.grace_period or t.eval_every, t.steps)

    def _trainable(self, prepared, val, parent):
        """The trial function with the sweep's data, context and resources bound."""
        from ray import tune

        from tune.trial import run_trial

        ctx = {
            "home": str(self.home),
            "tracking_uri": parent.tracking_uri,
            "experiment": self.experiment,
            "parent_run_id": parent.run_id,
            "storage_path": self.storage,
            "sweep_name": self.name,
            "verbose": bool(self.args.verbose),
        }
        bound = tune.with_parameters(run_trial, base=self.cfg.to_dict(), prepared=prepared, val=val, ctx=ctx)
        return tune.with_resources(bound, TRIAL_RESOURCES)

    def _tune_config(self, points):
        """Searcher and ASHA; a surviving trial ends by itself, after evaluation."""
        from ray import tune
        from ray.tune.schedulers import ASHAScheduler

        st = self.settings
        scheduler = ASHAScheduler(
            time_attr="step",
            max_t=self.cfg.train.steps,
            grace_period=self._grace(),
            reduction_factor=st.reduction_factor,
            stop_last_trials=False,
        )
        return tune.TuneConfig(
            metric=st.metric,
            mode=st.mode,
            search_alg=make_searcher(st, points),
            scheduler=scheduler,
            num_samples=st.num_samples,
            max_concurrent_trials=st.max_concurrent,
            trial_name_creator=_trial_name,
            trial_dirname_creator=_trial_name,
        )

    # --- after the Tuner -----------------------------------------------------------------------------------------
    def _close_child_runs(self, results, parent) -> list[dict[str, Any]]:
        """Rows of the trials table; child runs left RUNNING (trials ASHA stopped, or that died) are ended:
        KILLED for a trial the scheduler stopped (also one whose stop came after it had finished), FAILED for one
        that failed."""
        from tune.report import STOPPED, trial_rows

        runs = {r.data.tags.get("trial_id"): r for r in child_runs(parent)}
        rows = trial_rows(results, runs, stopped=self.console.stopped)  # the console's outcome, the table's too
        client = parent.client
        for row in rows:
            run = runs.get(row["trial_id"])
            if run is None:
                continue
            status = run.info.status
            if status == "RUNNING":
                status = "KILLED" if row["status"] == STOPPED else "FAILED"
                client.set_terminated(run.info.run_id, status=status)
            elif status == "FINISHED" and row["status"] == STOPPED:
                # ASHA's stop arrived after the trial's last evaluation (a busy machine): the console and the table
                # count it as stopped, so its run says so too
                status = "KILLED"
                client.set_terminated(run.info.run_id, status=status)
            row["mlflow_status"] = status
            client.set_tag(run.info.run_id, "trial_status", row["status"])
            if row["status"] == STOPPED:
                client.set_tag(run.info.run_id, "stopped_by", f"ASHA ({self.settings.metric})")
        return rows

    def _record(self, rows: list[dict[str, Any]], parent) -> int:
        from tune.report import comparison_png, to_csv, to_json, to_text

        st = self.settings
        default = next((r for r in rows if st.include_default and same_point(r, default_point(self.cfg))), None)
        best = best_row(rows, st.metric)
        for r in rows:
            r["is_default"], r["is_best"] = r is default, r is best
            if r.get("mlflow_run_id"):
                parent.client.set_tag(r["mlflow_run_id"], "is_default", str(r is default))
                parent.client.set_tag(r["mlflow_run_id"], "is_best", str(r is best))
        m = self._sweep_metrics(rows, best, default)
        png = comparison_png(rows, st.metric, best and best["trial_id"], default and default["trial_id"])
        for name, text in (("trials.csv", to_csv(rows)), ("trials.json", to_json(rows))):
            parent.log_text(text, f"sweep/{name}")
            atomic_write_text(self.out_dir / name, text)
        parent.log_bytes(png, "plots/sweep_comparison.png")
        atomic_write_bytes(self.out_dir / "sweep_comparison.png", png)
        tags = {"n_stopped_early": str(int(m["n_stopped_early"]))}
        if default is not None:
            tags["default_trial_id"] = default["trial_id"]
        print(f"[sweep] trials:\n{to_text(rows)}", flush=True)
        parent.log_metrics(m)
        if best is None:
            parent.set_tags({**tags, "error": "no trial ran to the end"})
            print("[sweep] no trial ran to the end: no best configuration", file=sys.stderr, flush=True)
            return 1
        best_path = self._write_best(best, default, m, parent)
        parent.set_tags(
            {
                **tags,
                "best_trial_id": best["trial_id"],
                "best_run_id": str(best.get("mlflow_run_id")),
                "best_config": str(best_path),
            }
        )
        self._print_summary(best, default, m, best_path)
        return 0

    def _sweep_metrics(self, rows, best, default) -> dict[str, float]:
        counts = {s: sum(r["status"] == s for r in rows) for s in (COMPLETED, STOPPED, ERROR)}
        m = {
            "n_trials": float(len(rows)),
            "n_completed": float(counts[COMPLETED]),
            "n_stopped_early": float(counts[STOPPED]),
            "n_errors": float(counts[ERROR]),
            **self.summary,
        }
        for prefix, row in (("best", best), ("default", default)):
            if row is not None and row["status"] == COMPLETED:
                m.update({f"{prefix}_{k}": row[k] for k in FINAL_KEYS if row.get(k) is not None})
            if row is not None:
                m.update({f"{prefix}_param_{k}": float(row[k]) for k in PARAMS})
        if best is not None and default is not None and default["status"] == COMPLETED:
            for k in ("final_val_accuracy_calibrated", "test_accuracy_calibrated", "test_nll_calibrated"):
                if best.get(k) is not None and default.get(k) is not None:
                    m[f"best_minus_default_{k}"] = best[k] - default[k]
        m["sweep_seconds"] = time.time() - self.t0
        return m

    def _write_best(self, best, default, m, parent) -> Path:
        """best.yaml (a configuration run.py takes) and summary.json, in the sweep folder and on the parent run."""
        text = dump_yaml(trial_config(self.cfg, best))
        best_path = self.out_dir / "best.yaml"
        atomic_write_text(best_path, text)
        parent.log_text(text, "best_config/best.yaml")
        summary = {
            "sweep": self.name,
            "parent_run_id": parent.run_id,
            "best_config": str(best_path),
            "best": {k: v for k, v in best.items() if k != "curve"},
            "default": default and {k: v for k, v in default.items() if k != "curve"},
            "metrics": m,
        }
        atomic_write_text(self.out_dir / "summary.json", json.dumps(summary, indent=2, default=str))
        return best_path

    def _print_summary(self, best, default, m, best_path) -> None:
        print(
            f"[sweep] {int(m['n_trials'])} trials: {int(m['n_completed'])} completed, "
            f"{int(m['n_stopped_early'])} stopped early by ASHA, {int(m['n_errors'])} failed; "
            f"{m['sweep_seconds']:.1f} s",
            flush=True,
        )

        def line(tag, r):
            if r is None:
                return f"  {tag:8s} -"
            keys = (
                "final_val_accuracy_calibrated",
                "final_val_nll_calibrated",
                "test_accuracy_calibrated",
                "test_nll_calibrated",
                "test_ece_calibrated",
            )
            vals = " ".join(f"{k}={r[k]:.4f}" for k in keys if r.get(k) is not None)
            return f"  {tag:8s} trial {r['trial_id']} [{r['status']}] {point_text(r)} {vals}"

        print("[sweep] best vs default:\n" + line("best", best) + "\n" + line("default", default), flush=True)
        print(
            f"[sweep] best configuration: {best_path}\n        python pipeline/run.py --config {best_path}", flush=True
        )


# --------------------------------------------------------------------------------------------------------------
def make_searcher(st: SweepSettings, points: list[dict[str, Any]]):
    if st.search == "optuna":
        try:
            import optuna  # noqa: F401
            from ray.tune.search.optuna import OptunaSearch
        except ImportError as e:  # pragma: no cover - optuna is a dependency
            raise ConfigError(f"--search optuna needs the optuna package ({e}); or use --search random") from None
        return OptunaSearch(points_to_evaluate=[dict(p) for p in points] or None, seed=st.seed)
    from ray.tune.search.basic_variant import BasicVariantGenerator

    return BasicVariantGenerator(points_to_evaluate=[dict(p) for p in points] or None, random_state=st.seed)


def child_runs(parent) -> list:
    client = parent.client
    return client.search_runs(
        [parent.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent.run_id}'", max_results=10_000
    )


def _mark_open_children(parent, status: str) -> None:
    try:
        for run in child_runs(parent):
            if run.info.status == "RUNNING":
                parent.client.set_terminated(run.info.run_id, status=status)
    except Exception as e:  # noqa: BLE001 - best effort in a finally block
        print(f"[sweep] warning: could not close child runs: {e}", file=sys.stderr)


def check_state_api(timeout: float = 60.0) -> None:
    """Fail fast when the Ray State API (served by the dashboard) is missing: Train V2's placement-group cleaner
    needs it, and without it the second trial of a sweep waits forever for the first trial's workers."""
    import ray
    from ray.util.state import list_placement_groups

    address = ray.get_runtime_context().gcs_address  # this cluster's, not any other Ray on the host
    deadline = time.time() + timeout
    while True:
        try:
            list_placement_groups(address=address, limit=1, raise_on_missing_output=False)
            return
        except Exception as e:  # noqa: BLE001
            if time.time() > deadline:
                raise DashboardMissing(
                    "the Ray State API is not reachable (" + str(e)[:200] + "). Tune over Ray Train V2 needs the "
                    "Ray dashboard: start the cluster with it (`ray start --head --dashboard-host=127.0.0.1`, "
                    "needs `ray[default]`)"
                ) from None
            time.sleep(2)


def _labels(points: list[dict[str, Any]], include_default: bool) -> list[tuple[dict[str, Any], str]]:
    """The points evaluated first, named as the console marks their trials: the base configuration, then
    ``--point`` 1, 2, ..."""
    return [
        (p, "default" if include_default and i == 0 else f"--point {i + (not include_default)}")
        for i, p in enumerate(points)
    ]


def _trial_name(trial) -> str:
    return f"trial_{trial.trial_id}"
