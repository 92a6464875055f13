"""Hyperparameter sweeps of FlowGMM / FlowGMM-cons: Ray Tune (ASHA + a seeded Optuna TPE searcher) over the
pipeline's own Ray Train loop, recorded in MLflow as a parent run with one child run per trial.

    python tune/sweep.py --config moons --smoke --num-samples 8

Modules: ``space`` (search space, sweep settings, point -> Config), ``trial`` (the Tune function trainable),
``report`` (trials table, best trial, comparison picture), ``resources`` (releasing a stopped trial's workers),
``console`` (one line per trial event), ``driver`` (the CLI and the driver; ``sweep.py`` is the entry script).
Importing the package does not import Ray.

Named ``tune`` at the repository root: always import Ray's as ``from ray import tune``.
"""
