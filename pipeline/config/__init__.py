"""Typed experiment configuration: the code here is the source of truth; YAML files and ``key=value`` overrides
only change fields of it.

    >>> cfg = resolve("moons", smoke=True, overrides=["train.lr=3e-3", "train.steps=20"])
    >>> cfg.train.lr, cfg.data.source
    (0.003, 'moons')

Shipped experiments: ``digits`` (the embedded default), ``moons``, ``mnist`` (1k labels, the paper's setting),
``mnist_cpu`` (the same data on 2 CPU cores), ``fashion_mnist`` and ``breast_cancer`` (tabular). ``--smoke`` shrinks
any of them to seconds on a laptop.

Modules: ``schema`` (the dataclasses), ``data`` (the data and ingest sections: ``DataSpec``, ``IngestSpec``),
``sources`` (the data source names), ``experiments`` (shipped recipes, ``smoke``), ``parse`` (resolution,
overrides, YAML, validation), ``fields`` (typed value parsing, ``ConfigError``).
"""

from pipeline.config.data import DataSpec, IngestSpec
from pipeline.config.experiments import EXPERIMENTS, smoke
from pipeline.config.fields import ConfigError
from pipeline.config.parse import (
    apply_override,
    config_from_args,
    dump_yaml,
    experiment_name,
    load_yaml,
    resolve,
    validate,
)
from pipeline.config.schema import Config, EvalConfig, ModelConfig, TrainConfig

__all__ = [
    "Config",
    "ModelConfig",
    "TrainConfig",
    "EvalConfig",
    "DataSpec",
    "IngestSpec",
    "EXPERIMENTS",
    "resolve",
    "load_yaml",
    "dump_yaml",
    "apply_override",
    "ConfigError",
    "experiment_name",
    "smoke",
    "validate",
    "config_from_args",
]
