"""Generated 2-D sets (seeded): ``moons``, ``circles``, ``eight_gaussians``, ``pinwheel``. Their test split is drawn
from an independent stream (seed + ``TEST_SEED_OFFSET``)."""

from __future__ import annotations

import math

import numpy as np

from pipeline.core.errors import DataError
from pipeline.data.sources.common import RawSource

TEST_SEED_OFFSET = 1_000_003


def _gen_2d(name: str, n: int, noise: float, seed: int) -> tuple[np.ndarray, np.ndarray, int]:
    rng = np.random.default_rng(seed)
    if name == "moons":
        from sklearn.datasets import make_moons

        x, y = make_moons(n_samples=n, noise=noise, random_state=int(rng.integers(2**31)))
        k = 2
    elif name == "circles":
        from sklearn.datasets import make_circles

        x, y = make_circles(n_samples=n, noise=noise, factor=0.5, random_state=int(rng.integers(2**31)))
        k = 2
    elif name == "eight_gaussians":
        k = 8
        y = rng.integers(0, k, n)
        ang = 2 * np.pi * y / k
        centers = 2.0 * np.stack([np.cos(ang), np.sin(ang)], 1)
        x = centers + rng.normal(size=(n, 2)) * (2.0 * noise)
    elif name == "pinwheel":
        # Johnson et al. (2016) pinwheel, as in the FlowGMM synthetic figures: 5 arms.
        k, radial_std, rate = 5, 0.3, 0.25
        y = np.repeat(np.arange(k), int(math.ceil(n / k)))[:n]
        rng.shuffle(y)
        feats = rng.normal(size=(n, 2)) * np.array([radial_std, noise])
        feats[:, 0] += 1.0
        ang = 2 * np.pi * y / k + rate * np.exp(feats[:, 0])
        rot = np.stack([np.cos(ang), -np.sin(ang), np.sin(ang), np.cos(ang)], 1).reshape(-1, 2, 2)
        x = 2.0 * np.einsum("ti,tij->tj", feats, rot)
    else:  # pragma: no cover
        raise DataError(f"unknown generated source '{name}'")
    return x.astype(np.float32), np.asarray(y, np.int64), k


def load_generated(name: str, n_points: int, n_test: int | None, noise: float, seed: int) -> RawSource:
    if n_points <= 0:
        raise DataError(f"<generated {name}>: n_points={n_points} must be positive")
    x, y, k = _gen_2d(name, n_points, noise, seed)
    xt, yt, _ = _gen_2d(name, n_test or n_points, noise, seed + TEST_SEED_OFFSET)
    where = f"<generated {name}>"
    return RawSource(
        name,
        "vector",
        (2,),
        k,
        [str(i) for i in range(k)],
        x,
        y,
        xt,
        yt,
        where,
        where,
        feature_names=["x0", "x1"],
        extra={"noise": noise, "n_points": n_points},
    )
