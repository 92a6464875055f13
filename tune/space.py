"""What a sweep searches and how: the search space over FlowGMM's knobs, the sweep settings, and the mapping from
one sampled point to a full pipeline ``Config``.

Sampled parameters (flat names, as Tune and the searcher see them):

    lr                   learning rate, log-uniform                       -> train.lr
    consistency_weight   categorical, 0 included                          -> train.method = "flowgmm" when 0,
                                                                             else "flowgmm_cons" with
                                                                             train.consistency_weight = value
    means_scale          scale r of the class means, log-uniform          -> model.means_scale
    variance             component variance used in training, log-uniform -> model.variance
    learn_variance       whether the variances are learned                -> model.learn_variance

Ranges default to a band around the base configuration's own values, so that the base configuration (the
"default" point, evaluated first) lies inside the space.

Ray-free except for ``param_space`` (which builds ``ray.tune`` domains); importing this module is cheap.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

from pipeline.config import Config, ConfigError, validate

PARAMS = ("lr", "consistency_weight", "means_scale", "variance", "learn_variance")
METRICS = {"val_accuracy": "max", "val_nll": "min", "score": "max"}  # reported by rank 0 at every evaluation
SEARCHERS = ("optuna", "random")


@dataclass
class SearchSpace:
    """Bounds of the search. ``None`` ranges are derived from the base configuration (see ``for_config``)."""

    lr: tuple[float, float] | None = None  # log-uniform
    consistency_weights: tuple[float, ...] = (0.0, 0.3, 1.0, 3.0)
    means_scale: tuple[float, float] | None = None  # log-uniform
    variance: tuple[float, float] | None = None  # log-uniform
    learn_variance: tuple[bool, ...] = (False, True)

    def for_config(self, cfg: Config) -> "SearchSpace":
        """Fill unset ranges around the base values: lr x/÷10, means scale x/÷2, variance x0.25..x2."""
        lr, r, v = cfg.train.lr, cfg.model.means_scale, cfg.model.variance
        return replace(
            self,
            lr=self.lr or (lr / 10, lr * 10),
            means_scale=self.means_scale or (r / 2, r * 2),
            variance=self.variance or (v / 4, v * 2),
        )

    def covering(self, points: list[dict[str, Any]]) -> "SearchSpace":
        """The space widened so that every point to evaluate lies inside it (a searcher models a point it was
        told to evaluate with the same distributions it samples from)."""
        out = self
        for p in points:
            out = replace(
                out,
                lr=_widen(out.lr, p["lr"]),
                means_scale=_widen(out.means_scale, p["means_scale"]),
                variance=_widen(out.variance, p["variance"]),
                consistency_weights=_add(out.consistency_weights, float(p["consistency_weight"])),
                learn_variance=_add(out.learn_variance, bool(p["learn_variance"])),
            )
        return out

    def check(self) -> None:
        for name in ("lr", "means_scale", "variance"):
            lo_hi = getattr(self, name)
            if lo_hi is None or len(lo_hi) != 2 or not 0 < lo_hi[0] < lo_hi[1]:
                raise ConfigError(f"search range {name}={lo_hi!r} must be two numbers 0 < low < high")
        if not self.consistency_weights or min(self.consistency_weights) < 0:
            raise ConfigError(f"consistency weights {self.consistency_weights!r} must be >= 0 (0 = plain FlowGMM)")
        if not self.learn_variance:
            raise ConfigError("learn_variance choices are empty")

    def to_dict(self) -> dict[str, Any]:
        return {
            "lr": list(self.lr or ()),
            "consistency_weights": list(self.consistency_weights),
            "means_scale": list(self.means_scale or ()),
            "variance": list(self.variance or ()),
            "learn_variance": list(self.learn_variance),
        }


@dataclass
class SweepSettings:
    """How the sweep runs (CLI flags of ``tune/sweep.py``)."""

    num_samples: int = 8  # trials in total, the points to evaluate included
    max_concurrent: int = 1  # trials at once (each trial already uses all Train workers it asks for)
    metric: str = "val_accuracy"  # what ASHA and the searcher optimise: val_accuracy | val_nll | score
    grace_period: int = 0  # training steps before ASHA may stop a trial (0: the first evaluation, train.eval_every)
    reduction_factor: float = 2.0  # ASHA keeps the top 1/reduction_factor at each rung
    search: str = "optuna"  # "optuna" (TPE, seeded) | "random" (Tune's BasicVariantGenerator, seeded)
    seed: int = 0
    include_default: bool = True  # evaluate the base configuration first (the "default" trial)
    points: list[dict[str, Any]] = field(default_factory=list)  # more points to evaluate first (partial ok)
    space: SearchSpace = field(default_factory=SearchSpace)

    @property
    def mode(self) -> str:
        return METRICS[self.metric]

    def check(self) -> None:
        if self.metric not in METRICS:
            raise ConfigError(f"--metric {self.metric!r} is not one of {sorted(METRICS)}")
        if self.search not in SEARCHERS:
            raise ConfigError(f"--search {self.search!r} is not one of {SEARCHERS}")
        if self.num_samples < 1 or self.max_concurrent < 1:
            raise ConfigError("--num-samples and --max-concurrent must be >= 1")
        if self.grace_period < 0:
            raise ConfigError(f"--grace-period {self.grace_period} must be >= 0 (steps; 0 = train.eval_every)")
        if not self.reduction_factor > 1:
            raise ConfigError(f"--reduction-factor {self.reduction_factor} must be > 1")

    def flat(self) -> dict[str, Any]:
        out = {
            f"sweep.{k}": getattr(self, k)
            for k in (
                "num_samples",
                "max_concurrent",
                "metric",
                "grace_period",
                "reduction_factor",
                "search",
                "seed",
                "include_default",
            )
        }
        out["sweep.mode"] = self.mode
        out.update({f"sweep.space.{k}": v for k, v in self.space.to_dict().items()})
        out["sweep.points"] = self.points
        return out


# ------------------------------------------------------------------------------------------------------------
def default_point(cfg: Config) -> dict[str, Any]:
    """The base configuration as a point of the space."""
    t, m = cfg.train, cfg.model
    return {
        "lr": float(t.lr),
        "consistency_weight": float(t.consistency_weight) if t.method == "flowgmm_cons" else 0.0,
        "means_scale": float(m.means_scale),
        "variance": float(m.variance),
        "learn_variance": bool(m.learn_variance),
    }


def parse_point(text: str, base: dict[str, Any]) -> dict[str, Any]:
    """``"lr=1.0,consistency_weight=0"`` -> a full point: the given keys over ``base``."""
    point = dict(base)
    for item in filter(None, (s.strip() for s in text.split(","))):
        if "=" not in item:
            raise ConfigError(f"--point item {item!r} is not key=value")
        k, v = (s.strip() for s in item.split("=", 1))
        if k not in PARAMS:
            raise ConfigError(f"--point key {k!r} is not one of {PARAMS}")
        if k == "learn_variance":
            low = v.lower()
            if low not in ("true", "false", "1", "0", "yes", "no"):
                raise ConfigError(f"--point learn_variance={v!r} is not a boolean")
            point[k] = low in ("true", "1", "yes")
        else:
            try:
                point[k] = float(v)
            except ValueError:
                raise ConfigError(f"--point {k}={v!r} is not a number") from None
    return point


def trial_config(base: Config, params: dict[str, Any]) -> Config:
    """The full configuration of one trial: the base configuration with the sampled parameters applied."""
    missing = [k for k in PARAMS if k not in params]
    if missing:
        raise ConfigError(f"trial parameters lack {missing}")
    w = float(params["consistency_weight"])
    train = replace(
        base.train,
        lr=float(params["lr"]),
        method="flowgmm_cons" if w > 0 else "flowgmm",
        consistency_weight=w if w > 0 else base.train.consistency_weight,
    )
    model = replace(
        base.model,
        means_scale=float(params["means_scale"]),
        variance=float(params["variance"]),
        learn_variance=bool(params["learn_variance"]),
    )
    cfg = replace(base, train=train, model=model)
    validate(cfg)
    return cfg


def param_space(space: SearchSpace) -> dict[str, Any]:
    """Tune search-space domains (the searcher converts them to its own distributions)."""
    from ray import tune

    space.check()
    return {
        "lr": tune.loguniform(*space.lr),
        "consistency_weight": tune.choice(sorted(set(float(w) for w in space.consistency_weights))),
        "means_scale": tune.loguniform(*space.means_scale),
        "variance": tune.loguniform(*space.variance),
        "learn_variance": tune.choice(sorted(set(bool(b) for b in space.learn_variance))),
    }


def same_point(a: dict[str, Any], b: dict[str, Any]) -> bool:
    for k in PARAMS:
        x, y = a.get(k), b.get(k)
        if isinstance(x, bool) or isinstance(y, bool):
            if bool(x) != bool(y):
                return False
        elif x is None or y is None or not math.isclose(float(x), float(y), rel_tol=1e-9, abs_tol=1e-12):
            return False
    return True


def _widen(lo_hi: tuple[float, float] | None, v: float) -> tuple[float, float] | None:
    if lo_hi is None:
        return None
    return (min(lo_hi[0], float(v)), max(lo_hi[1], float(v)))


def _add(choices: tuple, v: Any) -> tuple:
    return choices if v in choices else tuple(choices) + (v,)
