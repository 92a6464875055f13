"""Data sets bundled with scikit-learn: ``digits`` (8x8 images), ``breast_cancer``, ``wine``, ``iris``; the test split
is a stratified 20% hold-out with a fixed seed."""

from __future__ import annotations

import numpy as np

from pipeline.core.errors import DataError
from pipeline.data.sources.common import HOLDOUT_FRACTION, HOLDOUT_SEED, RawSource, stratified_holdout


def load_sklearn(name: str) -> RawSource:
    import sklearn
    from sklearn import datasets as skd

    where = f"<sklearn {sklearn.__version__} load_{name}>"
    if name == "digits":
        b = skd.load_digits()
        # 0..16 -> 0..255 so that images are uint8 [1, 8, 8] like every other image source
        x = np.clip(np.round(b.images * (255.0 / 16.0)), 0, 255).astype(np.uint8)[:, None]
        kind, shape, names, fnames = "image", (1, 8, 8), [str(i) for i in range(10)], None
    elif name in ("breast_cancer", "wine", "iris"):
        b = getattr(skd, f"load_{name}")()
        x = b.data.astype(np.float32)
        kind, shape = "vector", (x.shape[1],)
        names, fnames = [str(t) for t in b.target_names], [str(f) for f in b.feature_names]
    else:  # pragma: no cover
        raise DataError(f"unknown scikit-learn source '{name}'")
    y = b.target.astype(np.int64)
    pool, test = stratified_holdout(y, HOLDOUT_FRACTION, HOLDOUT_SEED)
    return RawSource(
        name,
        kind,
        shape,
        len(names),
        names,
        x[pool],
        y[pool],
        x[test],
        y[test],
        where,
        where,
        feature_names=fnames,
        extra={"pool_index": "holdout", "holdout_seed": HOLDOUT_SEED},
        levels=17 if name == "digits" else None,  # digits: 17 grey levels (0..16), stored on the uint8 scale
    )
