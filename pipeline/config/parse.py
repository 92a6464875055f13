"""Resolution: an experiment name or YAML file, then ``key=value`` overrides, then ``--smoke``; then validation."""

from __future__ import annotations

import argparse
import os
import typing
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

import yaml

from pipeline.config.experiments import EXPERIMENTS
from pipeline.config.experiments import smoke as shrink
from pipeline.config.fields import ConfigError, build, merge, parse_text, plain, resolve_type, set_path
from pipeline.config.scaling import apply_batch_rows
from pipeline.config.schema import Config


def resolve(name_or_path: str | None = None, *, smoke: bool = False, overrides: typing.Sequence[str] = ()) -> Config:
    name_or_path = name_or_path or "digits"
    if name_or_path in EXPERIMENTS:
        cfg = EXPERIMENTS[name_or_path]()
    elif os.path.exists(name_or_path):
        cfg = load_yaml(name_or_path)
    else:
        raise ConfigError(f"unknown config {name_or_path!r}: not a file and not one of {sorted(EXPERIMENTS)}")
    if smoke:  # shrink first: explicit overrides win over the smoke settings
        cfg = shrink(cfg)
    for item in overrides:
        cfg = apply_override(cfg, item)
    cfg = apply_batch_rows(cfg)
    validate(cfg)
    return cfg


def load_yaml(path: str | Path) -> Config:
    """A YAML file of the same schema. ``base: NAME`` starts from a shipped experiment; other keys override it."""
    with open(path) as fh:
        raw = yaml.safe_load(fh) or {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: top level must be a mapping")
    base = raw.pop("base", None)
    if base is not None and base not in EXPERIMENTS:
        raise ConfigError(f"{path}: base {base!r} is not one of {sorted(EXPERIMENTS)}")
    cfg = EXPERIMENTS[base]() if base else Config()
    merged = merge(asdict(cfg), raw, str(path), "")
    return build(Config, merged, f"{path}: ")


def dump_yaml(cfg: Config) -> str:
    return yaml.safe_dump(plain(cfg.to_dict()), sort_keys=False)


def apply_override(cfg: Config, item: str) -> Config:
    if "=" not in item:
        raise ConfigError(f"override {item!r} is not key=value")
    key, text = item.split("=", 1)
    valid = sorted(cfg.flat())
    if key not in valid:
        raise ConfigError(f"unknown key {key!r}; valid keys: {', '.join(valid)}")
    parts = key.split(".")
    obj: Any = cfg
    for p in parts[:-1]:
        obj = getattr(obj, p)
    ftype = {f.name: f.type for f in fields(obj)}[parts[-1]]
    value = parse_text(text, resolve_type(type(obj), parts[-1], ftype), key)
    return set_path(cfg, parts, value)


def validate(cfg: Config) -> None:
    t = cfg.train
    choices = {
        "train.method": (t.method, ("flowgmm", "flowgmm_cons", "supervised")),
        "train.loss_form": (t.loss_form, ("nll", "ce")),
        "train.lr_schedule": (t.lr_schedule, ("cosine", "constant")),
        "model.class_weights": (cfg.model.class_weights, ("uniform", "counts")),
        "ingest.labeled_mode": (cfg.ingest.labeled_mode, ("replicate", "split")),
        "train.compile": (t.compile, ("none", "couplings", "full")),
        "train.placement_strategy": (t.placement_strategy, ("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD")),
    }
    for key, (value, allowed) in choices.items():
        if value not in allowed:
            raise ConfigError(f"{key}={value!r} is not one of {allowed}")
    positive = {
        "train.lr": t.lr,
        "train.steps": t.steps,
        "train.eval_every": t.eval_every,
        "train.log_every": t.log_every,
        "model.variance": cfg.model.variance,
        "model.means_scale": cfg.model.means_scale,
        "ingest.labeled_batch": cfg.ingest.labeled_batch,
        "ingest.unlabeled_batch": cfg.ingest.unlabeled_batch,
        "train.checkpoint_every": t.checkpoint_every,
    }
    for key, value in positive.items():
        if not value > 0:
            raise ConfigError(f"{key}={value!r} must be > 0")
    if t.num_workers < 0:
        raise ConfigError(f"train.num_workers={t.num_workers!r} must be >= 0 (0: train in the driver process)")
    if t.consistency_weight < 0:
        raise ConfigError(f"train.consistency_weight={t.consistency_weight!r} must be >= 0")
    if t.use_gpu and not (0 < t.gpus_per_worker <= 1 or float(t.gpus_per_worker).is_integer()):
        raise ConfigError(f"train.gpus_per_worker={t.gpus_per_worker!r} must be a fraction in (0, 1] or a whole number")


def experiment_name(cfg: Config) -> str:
    return cfg.experiment or f"flowgmm-{cfg.data.source}"


def config_from_args(args: argparse.Namespace) -> Config:
    """The configuration of a command line with the options of ``pipeline.core.cli.add_config_options``."""
    overrides = list(args.overrides) + ([f"data.data_dir={args.data_dir}"] if args.data_dir else [])
    return resolve(args.config, smoke=args.smoke, overrides=overrides)
