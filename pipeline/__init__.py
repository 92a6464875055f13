"""flowgmm-ray's pipeline: a run is three stages, each a package.

    data/     sources -> splits -> Parquet shards + manifest -> Ray Data ingest
    train/    the Ray Train loop, the FlowGMM step, the fast path, checkpoints
    results/  evaluation + calibration, pictures, MLflow, the served model, registry, compare, score

``job`` runs the stages for one job; ``config`` is the typed configuration; ``core`` holds what every part shares
(home, atomic writes, Ray connection, CLI options, errors). Entry points (``run.py``, ``score.py``,
``compare.py``) are thin scripts that are never imported. Dependencies point one way: core <- config <- data <-
train <- results <- job; ``flowgmm`` (plain PyTorch) never imports any of them.
"""
