"""Resolution: an experiment name or YAML file, then ``--smoke``, then ``key=value`` overrides; then validation of
every field against its declared rule and the rules between fields (``pipeline.config.rules``)."""

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
from pipeline.config.rules import CROSS_RULES, leaf_fields, problem
from pipeline.config.scaling import apply_batch_rows
from pipeline.config.schema import Config


def resolve(name_or_path: str | None = None, *, smoke: bool = False, overrides: typing.Sequence[str] = ()) -> Config:
    name_or_path = name_or_path or "digits"
    if name_or_path in EXPERIMENTS:
        cfg = EXPERIMENTS[name_or_path]()
    elif os.path.exists(name_or_path):
        cfg = load_yaml(name_or_path)
        try:  # a YAML file's values, before anything computes with them (smoke, batch scaling)
            check_fields(cfg)
        except ConfigError as e:
            raise ConfigError(f"{name_or_path}: {e}") from None
    else:
        raise ConfigError(f"unknown config {name_or_path!r}: not a file and not one of {sorted(EXPERIMENTS)}")
    if smoke:  # shrink first: explicit overrides win over the smoke settings
        cfg = shrink(cfg)
    for item in overrides:
        cfg = apply_override(cfg, item)
    validate(cfg)
    cfg = apply_batch_rows(cfg)
    validate(cfg)  # the scaled batch sizes too
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
    """Every field against the rule its annotation declares (type, range, choices), then the rules between fields
    (``pipeline.config.rules.CROSS_RULES``); the first problem is a one-line :class:`ConfigError`."""
    check_fields(cfg)
    for rule in CROSS_RULES:
        if (text := rule(cfg)) is not None:
            raise ConfigError(text)


def check_fields(cfg: Config) -> None:
    """Each field on its own: ``key=value: must be <what is allowed>``. A field without a rule is a bug of the
    schema (TypeError), caught by ``tests/test_config.py``."""
    flat = cfg.flat()
    for spec in leaf_fields(Config):
        if not spec.has_rule:
            raise TypeError(f"{spec.key}: the schema declares no rule for this field (see pipeline/config/rules.py)")
        value = flat[spec.key]
        if (text := problem(spec, value)) is not None:
            raise ConfigError(f"{spec.key}={_shown(value)}: {text}")


def _shown(value: Any) -> str:
    return ",".join(map(str, value)) if isinstance(value, tuple) else repr(value)


def experiment_name(cfg: Config, data_hash: str | None = None) -> str:
    """The MLflow experiment of a run: ``cfg.experiment`` when set, else the data set's own name
    (:func:`data_set_name`, also the name its models are registered under).

    >>> experiment_name(resolve("moons"))
    'flowgmm-moons'
    >>> experiment_name(resolve("table", overrides=["data.path=/d/wine.csv"]), "3f9a2c1b")
    'flowgmm-table-wine-3f9a2c1b'
    """
    return cfg.experiment or data_set_name(cfg, data_hash)


def data_set_name(cfg: Config, data_hash: str | None = None) -> str:
    """``flowgmm-<source>`` for a shipped source; a user's table ``flowgmm-table-<file stem>-<data_hash>`` (an image
    folder ``flowgmm-images-<folder name>-<data_hash>``), where
    ``data_hash`` is the short content hash of the prepared data's input files
    (``pipeline.results.tracking.data_hash``): two tables, or two versions of one file, never share an experiment
    or a registered model."""
    if cfg.data.source not in ("table", "images") or not cfg.data.path:
        return f"flowgmm-{cfg.data.source}"
    stem = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in Path(cfg.data.path.rstrip("/")).stem)
    return f"flowgmm-{cfg.data.source}-{stem}" + (f"-{data_hash}" if data_hash else "")


def config_from_args(args: argparse.Namespace) -> Config:
    """The configuration of a command line with the options of ``pipeline.core.cli.add_config_options``."""
    overrides = list(args.overrides) + ([f"data.data_dir={args.data_dir}"] if args.data_dir else [])
    return resolve(args.config, smoke=args.smoke, overrides=overrides)
