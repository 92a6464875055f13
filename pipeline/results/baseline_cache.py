"""The baselines, reused: the labels-only flow's figures depend only on the prepared data, the recipe, the seed and
the code that trains and evaluates it, and the classical anchors' on the data and their settings, so a rerun of the
same split and recipe takes them from a cache in the home instead of fitting them again
(``<home>/cache/labels_only/<key>.json``, written atomically; the anchors ride in the same entry).

    key = cache_key(cfg, manifest)            # data split + content hash + recipe + training and anchors code digest
    hit = load(home, key)                     # None, or {"metrics", "distances", "run_name", "run_id"[, "anchors"]}
    store(home, key, metrics, distances, run_name, run_id, anchors={"metrics": ..., "params": ...})
"""

from __future__ import annotations

import functools
import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.core.atomic import atomic_write_text

# what the baseline's figures depend on beyond the data and the configuration
CODE = (
    "flowgmm",
    "pipeline/train",
    "pipeline/data",
    "pipeline/results/evaluate.py",
    "pipeline/results/baselines.py",
    "pipeline/results/anchors.py",
    "pipeline/config",
)
IGNORED = ("name", "experiment")  # configuration fields that change no figure of the baseline
IGNORED_EVAL = ("ood_score", "ood_fpr", "ood_heldout", "ood_background", "ood_background_rate", "figures")


@functools.lru_cache(maxsize=1)
def code_digest() -> str:
    """sha256 of the Python sources that train and evaluate a model (a change to any invalidates the cache)."""
    root = Path(__file__).resolve().parents[2]
    h = hashlib.sha256()
    for part in CODE:
        p = root / part
        for f in sorted(p.rglob("*.py")) if p.is_dir() else [p]:
            h.update(f.relative_to(root).as_posix().encode() + b"\0" + f.read_bytes())
    return h.hexdigest()[:16]


def cache_key(cfg_dict: dict[str, Any], manifest: dict[str, Any], data_hash: str) -> str:
    """The baseline's identity: the configuration it trains with (``cfg_dict``: ``Config.to_dict()``, less the
    fields no figure depends on), the prepared split (its name and content hash) and :func:`code_digest`."""
    cfg = {k: v for k, v in cfg_dict.items() if k not in IGNORED}
    cfg["eval"] = {k: v for k, v in cfg.get("eval", {}).items() if k not in IGNORED_EVAL}
    ident = {"config": cfg, "split": manifest.get("name"), "data": data_hash, "code": code_digest()}
    return hashlib.sha256(json.dumps(ident, sort_keys=True, default=str).encode()).hexdigest()[:24]


def _path(home: Path, key: str) -> Path:
    return Path(home) / "cache" / "labels_only" / f"{key}.json"


def load(home: Path, key: str) -> dict[str, Any] | None:
    """The cached baseline, or None (absent or unreadable: it is trained again)."""
    try:
        doc = json.loads(_path(home, key).read_text())
        doc["distances"] = None if doc.get("distances") is None else np.asarray(doc["distances"], np.float64)
        return doc if isinstance(doc.get("metrics"), dict) else None
    except (OSError, ValueError, TypeError):
        return None


def store(
    home: Path,
    key: str,
    metrics: dict[str, float],
    distances: np.ndarray | None,
    run_name: str,
    run_id: str,
    anchors: dict[str, Any] | None = None,
) -> None:
    """``anchors``: the classical anchors' ``{"metrics", "params"}`` on the same split, when fitted."""
    doc: dict[str, Any] = {
        "metrics": {k: float(v) for k, v in metrics.items()},
        "distances": None if distances is None else np.asarray(distances, np.float64).round(6).tolist(),
        "run_name": run_name,
        "run_id": run_id,
    }
    if anchors is not None:
        doc["anchors"] = {"metrics": {k: float(v) for k, v in anchors["metrics"].items()}, "params": anchors["params"]}
    atomic_write_text(_path(home, key), json.dumps(doc, default=str))
