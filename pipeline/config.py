"""Typed experiment configuration: the code here is the source of truth; YAML files and ``key=value`` overrides
only change fields of it.

    >>> cfg = resolve("moons", smoke=True, overrides=["train.lr=3e-3", "train.epochs=2"])
    >>> cfg.train.lr, cfg.data.source
    (0.003, 'moons')

Shipped experiments: ``digits`` (the embedded default), ``moons``, ``mnist`` (1k labels, the paper's setting),
``fashion_mnist`` and ``breast_cancer`` (tabular). ``--smoke`` shrinks any of them to seconds on a laptop.
"""
from __future__ import annotations

import os
import types
import typing
from dataclasses import asdict, dataclass, field, fields, is_dataclass, replace
from pathlib import Path
from typing import Any

import yaml

from pipeline.ingest import IngestSpec
from pipeline.prepare import DataSpec


@dataclass
class ModelConfig:
    """The flow and the latent mixture. Which flow is built follows the data (images or vectors)."""

    # image flow (multiscale RealNVP, the paper's sizes)
    num_scales: int = 2
    mid_channels: int = 64
    num_blocks: int = 8
    # vector flow (RealNVP with MLP couplings)
    num_couplings: int = 6
    hidden: int = 128
    depth: int = 2
    # latent Gaussian mixture
    means_scale: float = 1.0          # each mean coordinate ~ N(0, r^2); antipodal pair for two classes
    variance: float = 1.0             # component variance used in training
    per_class_variance: bool = False
    learn_means: bool = False
    learn_variance: bool = False
    learn_weights: bool = False
    class_weights: str = "uniform"    # "uniform" | "counts" (from the labeled class counts)


@dataclass
class TrainConfig:
    """The optimisation recipe and the Ray Train scaling."""

    method: str = "flowgmm"           # "flowgmm" | "flowgmm_cons" | "supervised" (the flow on labels only)
    loss_form: str = "nll"            # "nll" (generative, all data) | "ce" (label-weighted cross-entropy, images)
    label_weight: float = 1.0
    unlabeled_weight: float = 1.0
    consistency_weight: float = 1.0   # used when method == "flowgmm_cons"
    consistency_ramp_steps: int = 500
    epochs: int = 10
    lr: float = 1e-3
    weight_decay: float = 0.0
    lr_schedule: str = "cosine"       # "cosine" | "constant"
    warmup_steps: int = 50
    grad_clip: float = 100.0
    bf16: bool = False                # autocast to bfloat16; log-dets and the prior stay float32
    compile: str = "none"             # torch.compile unit: "none" | "couplings" | "full" (see pipeline/fastpath.py)
    channels_last: bool = False       # images: channels-last memory format in the coupling nets
    seed: int = 0
    num_workers: int = 2
    use_gpu: bool = False
    gpus_per_worker: float = 1.0      # with use_gpu; a fraction (e.g. 0.25) lets sweep trials share one GPU
    cpus_per_worker: float = 0.5      # on a 2-core machine leave a CPU for Ray Data reads
    placement_strategy: str = "PACK"  # Train workers' placement group: PACK | SPREAD | STRICT_PACK | STRICT_SPREAD
    checkpoint_every: int = 1         # epochs
    max_failures: int = 1
    log_every: int = 50               # steps between progress lines
    inject_failure_at_step: int = -1  # testing fault tolerance: rank 1 kills itself once at this global step


@dataclass
class EvalConfig:
    baselines: bool = True            # supervised-only flow and a logistic regression on the same labels
    ood_percentile: float = 1.0       # log p(x) threshold: this percentile of validation log p(x)
    ece_bins: int = 15
    sample_temperature: float = 0.25
    figures: bool = True
    batch_size: int = 512


@dataclass
class Config:
    name: str = "digits"
    experiment: str = ""              # MLflow experiment; defaults to the data source
    data: DataSpec = field(default_factory=DataSpec)
    ingest: IngestSpec = field(default_factory=IngestSpec)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Config":
        return _build(cls, d, "")

    def flat(self) -> dict[str, Any]:
        """Dotted keys -> values, as logged to MLflow params."""
        out: dict[str, Any] = {}

        def walk(prefix: str, obj: Any) -> None:
            for f in fields(obj):
                v = getattr(obj, f.name)
                key = f"{prefix}{f.name}"
                if is_dataclass(v):
                    walk(key + ".", v)
                else:
                    out[key] = v

        walk("", self)
        return out


# --------------------------------------------------------------------------------------------------------------
# Shipped experiments
# --------------------------------------------------------------------------------------------------------------

def _digits() -> Config:
    # Sized for the embedded default: 2 CPU workers finish it in about 2-3 minutes with the baselines.
    return Config(
        name="digits",
        data=DataSpec(source="digits", n_labeled=100, n_val=200, seed=0, shard_rows=512),
        ingest=IngestSpec(labeled_batch=32, unlabeled_batch=32, translate=1),
        model=ModelConfig(num_scales=2, mid_channels=16, num_blocks=1, means_scale=1.0),
        train=TrainConfig(method="flowgmm", loss_form="ce", label_weight=64.0, epochs=12, lr=2e-3,
                          warmup_steps=20, consistency_ramp_steps=150, log_every=50),
        eval=EvalConfig(sample_temperature=0.25),
    )


def _moons() -> Config:
    return Config(
        name="moons",
        data=DataSpec(source="moons", n_labeled=10, n_val=50, n_points=1000, noise=0.05, seed=0, shard_rows=256),
        ingest=IngestSpec(labeled_batch=10, unlabeled_batch=64, noise_std=0.05),
        model=ModelConfig(num_couplings=6, hidden=64, depth=2, means_scale=2.0),
        train=TrainConfig(method="flowgmm", loss_form="nll", epochs=20, lr=3e-3, warmup_steps=20),
    )


def _mnist() -> Config:
    return Config(
        name="mnist",
        data=DataSpec(source="mnist", n_labeled=1000, n_val=1000, seed=0, shard_rows=4096,
                      ood=("fashion_mnist", "notmnist")),
        ingest=IngestSpec(labeled_batch=64, unlabeled_batch=192, translate=2),
        model=ModelConfig(num_scales=2, mid_channels=64, num_blocks=8, means_scale=1.0),
        train=TrainConfig(method="flowgmm_cons", loss_form="ce", label_weight=3.0, epochs=30, lr=1e-3,
                          warmup_steps=200, consistency_ramp_steps=2000, num_workers=1, use_gpu=True,
                          cpus_per_worker=4, bf16=True, log_every=100),
    )


def _fashion_mnist() -> Config:
    cfg = _mnist()
    cfg.name = "fashion_mnist"
    cfg.data = replace(cfg.data, source="fashion_mnist", ood=("mnist", "notmnist"))
    return cfg


def _breast_cancer() -> Config:
    return Config(
        name="breast_cancer",
        data=DataSpec(source="breast_cancer", n_labeled=20, n_val=60, seed=0, shard_rows=256),
        ingest=IngestSpec(labeled_batch=20, unlabeled_batch=64, noise_std=0.05),
        model=ModelConfig(num_couplings=6, hidden=128, depth=2, means_scale=1.5),
        train=TrainConfig(method="flowgmm", loss_form="nll", epochs=20, lr=1e-3, warmup_steps=20),
    )


EXPERIMENTS: dict[str, typing.Callable[[], Config]] = {
    "digits": _digits,
    "moons": _moons,
    "mnist": _mnist,
    "fashion_mnist": _fashion_mnist,
    "breast_cancer": _breast_cancer,
}


def smoke(cfg: Config) -> Config:
    """Shrink an experiment to seconds on 2 CPU cores: same code path, fewer rows, epochs and channels."""
    d, t, m = cfg.data, cfg.train, cfg.model
    data = replace(d, n_unlabeled=min(d.n_unlabeled or 10**9, 1024), n_test=min(d.n_test or 10**9, 500),
                   n_val=min(d.n_val, 200), n_labeled=min(d.n_labeled, 100))
    model = replace(m, mid_channels=min(m.mid_channels, 16), num_blocks=min(m.num_blocks, 1),
                    hidden=min(m.hidden, 64))
    train = replace(t, epochs=min(t.epochs, 3), num_workers=min(t.num_workers, 2), use_gpu=False,
                    cpus_per_worker=0.5, bf16=False, compile="none", channels_last=False, warmup_steps=min(t.warmup_steps, 5),
                    consistency_ramp_steps=min(t.consistency_ramp_steps, 20), log_every=min(t.log_every, 10))
    ingest = replace(cfg.ingest, labeled_batch=min(cfg.ingest.labeled_batch, 32),
                     unlabeled_batch=min(cfg.ingest.unlabeled_batch, 64))
    return replace(cfg, data=data, model=model, train=train, ingest=ingest,
                   eval=replace(cfg.eval, batch_size=min(cfg.eval.batch_size, 256)))


# --------------------------------------------------------------------------------------------------------------
# Resolution: experiment name or YAML file -> overrides -> smoke
# --------------------------------------------------------------------------------------------------------------

class ConfigError(ValueError):
    """A configuration that cannot be used; the message names the key and the value."""


def resolve(name_or_path: str | None = None, *, smoke: bool = False, overrides: typing.Sequence[str] = ()) -> Config:
    name_or_path = name_or_path or "digits"
    if name_or_path in EXPERIMENTS:
        cfg = EXPERIMENTS[name_or_path]()
    elif os.path.exists(name_or_path):
        cfg = load_yaml(name_or_path)
    else:
        raise ConfigError(f"unknown config {name_or_path!r}: not a file and not one of {sorted(EXPERIMENTS)}")
    for item in overrides:
        cfg = apply_override(cfg, item)
    if smoke:
        cfg = globals()["smoke"](cfg)
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
    merged = _merge(asdict(cfg), raw, str(path), "")
    return _build(Config, merged, f"{path}: ")


def dump_yaml(cfg: Config) -> str:
    return yaml.safe_dump(_plain(cfg.to_dict()), sort_keys=False)


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
    value = _parse(text, _resolve_type(type(obj), parts[-1], ftype), key)
    return _set(cfg, parts, value)


def validate(cfg: Config) -> None:
    t = cfg.train
    choices = {"train.method": (t.method, ("flowgmm", "flowgmm_cons", "supervised")),
               "train.loss_form": (t.loss_form, ("nll", "ce")),
               "train.lr_schedule": (t.lr_schedule, ("cosine", "constant")),
               "model.class_weights": (cfg.model.class_weights, ("uniform", "counts")),
               "ingest.labeled_mode": (cfg.ingest.labeled_mode, ("replicate", "split")),
               "train.compile": (t.compile, ("none", "couplings", "full")),
               "train.placement_strategy": (t.placement_strategy, ("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"))}
    for key, (value, allowed) in choices.items():
        if value not in allowed:
            raise ConfigError(f"{key}={value!r} is not one of {allowed}")
    positive = {"train.lr": t.lr, "train.epochs": t.epochs, "train.num_workers": t.num_workers,
                "model.variance": cfg.model.variance, "model.means_scale": cfg.model.means_scale,
                "ingest.labeled_batch": cfg.ingest.labeled_batch, "ingest.unlabeled_batch": cfg.ingest.unlabeled_batch,
                "train.checkpoint_every": t.checkpoint_every}
    for key, value in positive.items():
        if not value > 0:
            raise ConfigError(f"{key}={value!r} must be > 0")
    if t.consistency_weight < 0:
        raise ConfigError(f"train.consistency_weight={t.consistency_weight!r} must be >= 0")
    if t.use_gpu and not (0 < t.gpus_per_worker <= 1 or float(t.gpus_per_worker).is_integer()):
        raise ConfigError(f"train.gpus_per_worker={t.gpus_per_worker!r} must be a fraction in (0, 1] or a whole number")


def experiment_name(cfg: Config) -> str:
    return cfg.experiment or f"flowgmm-{cfg.data.source}"


# --------------------------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------------------------

def _resolve_type(cls: type, name: str, ftype: Any) -> Any:
    hints = typing.get_type_hints(cls)
    return hints.get(name, ftype)


def _parse(text: str, tp: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if text.lower() in ("none", "null", "") and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _parse(text, inner[0], key)
    if origin is tuple:
        items = [s for s in text.split(",") if s.strip()] if text.strip() not in ("", "()") else []
        return tuple(_parse(s.strip(), args[0] if args else str, key) for s in items)
    try:
        if tp is bool:
            low = text.lower()
            if low in ("true", "1", "yes", "on"):
                return True
            if low in ("false", "0", "no", "off"):
                return False
            raise ValueError(text)
        if tp is int:
            return int(float(text)) if "e" in text.lower() else int(text)
        if tp is float:
            return float(text)
        if tp is str:
            return text
    except ValueError:
        raise ConfigError(f"{key}={text!r} is not a valid {getattr(tp, '__name__', tp)}") from None
    return yaml.safe_load(text)


def _set(obj: Any, parts: list[str], value: Any) -> Any:
    if len(parts) == 1:
        return replace(obj, **{parts[0]: value})
    return replace(obj, **{parts[0]: _set(getattr(obj, parts[0]), parts[1:], value)})


def _merge(base: dict, new: dict, path: str, prefix: str) -> dict:
    out = dict(base)
    for k, v in new.items():
        key = f"{prefix}{k}"
        if k not in base:
            valid = ", ".join(sorted(base))
            raise ConfigError(f"{path}: unknown key {key!r}; valid keys here: {valid}")
        if isinstance(base[k], dict):
            if not isinstance(v, dict):
                raise ConfigError(f"{path}: {key} must be a mapping")
            out[k] = _merge(base[k], v, path, key + ".")
        else:
            out[k] = v
    return out


def _build(cls: type, d: dict, where: str) -> Any:
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for f in fields(cls):
        if f.name not in d:
            continue
        v, tp = d[f.name], hints[f.name]
        if is_dataclass(tp):
            kwargs[f.name] = _build(tp, v, where)
        else:
            kwargs[f.name] = _coerce(v, tp, f"{where}{cls.__name__}.{f.name}")
    unknown = set(d) - {f.name for f in fields(cls)}
    if unknown:
        raise ConfigError(f"{where}unknown keys {sorted(unknown)} in {cls.__name__}")
    return cls(**kwargs)


def _coerce(v: Any, tp: Any, key: str) -> Any:
    if v is None:
        return None
    origin = typing.get_origin(tp)
    if origin is tuple or (origin in (typing.Union, types.UnionType) and any(typing.get_origin(a) is tuple
                                                                          for a in typing.get_args(tp))):
        return tuple(v) if isinstance(v, (list, tuple)) else _parse(str(v), tp, key)
    if isinstance(v, str) and tp is not str:
        return _parse(v, tp, key)
    if tp is float and isinstance(v, int) and not isinstance(v, bool):
        return float(v)
    base = [a for a in typing.get_args(tp) if a is not type(None)] if origin else [tp]
    if base and isinstance(base[0], type) and not isinstance(v, base[0]):
        if base[0] is float and isinstance(v, int):
            return float(v)
        raise ConfigError(f"{key}={v!r} is not a valid {base[0].__name__}")
    return v


def _plain(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj


__all__ = ["Config", "ModelConfig", "TrainConfig", "EvalConfig", "EXPERIMENTS", "resolve", "load_yaml", "dump_yaml",
           "apply_override", "ConfigError", "experiment_name", "smoke"]
