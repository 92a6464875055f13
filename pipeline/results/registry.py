"""The MLflow Model Registry side of a run: every finished run's model is registered under its data set's name
(``pipeline.config.parse.data_set_name``), and the ``champion`` alias moves to it only when the current champion
was trained on the same data (the same content hash and split: data seed, label counts) and the new model is better
on validation. A model trained on other data never takes the alias from a champion of another split: validation
scores on different splits do not compare.

    reg = register_model(uri, run_id, model_uri, "flowgmm-digits", metrics, data={"data_hash": ..., "data_split": ...})
    reg.uri, reg.promoted, reg.reason        # 'models:/flowgmm-digits/3', False, "validation score ... <= ..."
    mlflow.pyfunc.load_model("models:/flowgmm-digits@champion")

The registered version carries what the served model needs as tags too (the calibration's variance scale, the
OOD threshold on log p(x)), beside the spec inside the model itself, and the data it was trained on.
"""

from __future__ import annotations

import contextlib
import io
import math
from dataclasses import dataclass
from typing import Any

from mlflow import MlflowClient

from flowgmm.metrics import selection_score

ALIAS = "champion"
DATA_TAGS = ("data_hash", "data_split")  # what makes two versions' validation scores comparable


@dataclass(frozen=True)
class Registration:
    """A registered version and whether (and why) it holds ``@champion``."""

    name: str
    version: str
    promoted: bool
    reason: str

    @property
    def uri(self) -> str:
        """The version's URI, exactly as the registry resolves it: ``models:/<name>/<version>``."""
        return f"models:/{self.name}/{self.version}"


def validation_score(metrics: dict[str, float]) -> float:
    """Higher is better: validation accuracy, ties broken by calibrated validation NLL (the selection rule used
    for checkpoints during training, applied to the final, calibrated model)."""
    acc = metrics.get("final_val_accuracy_calibrated", metrics.get("final_val_accuracy"))
    nll = metrics.get("final_val_nll_calibrated", metrics.get("final_val_nll", 0.0))
    if acc is None or not math.isfinite(acc):
        return -math.inf
    return selection_score(acc, nll)


def register_model(
    tracking_uri: str,
    run_id: str,
    model_uri: str,
    name: str,
    metrics: dict[str, float],
    *,
    data: dict[str, str] | None = None,
    tags: dict[str, str] | None = None,
    description: str = "",
    version_description: str = "",
    alias: str = ALIAS,
) -> Registration:
    """Register ``model_uri`` as a new version of ``name`` (tagged with ``data``: :data:`DATA_TAGS`, and ``tags``:
    the served settings, e.g. ``{"ood_score": "log_px"}``); move ``alias``
    to it when :func:`champion_decision` says so. ``description`` becomes the registered model's when it has none;
    ``version_description`` is the new version's."""
    import mlflow

    mlflow.set_tracking_uri(tracking_uri)
    client = MlflowClient(tracking_uri=tracking_uri)
    score = validation_score(metrics)
    with contextlib.redirect_stderr(io.StringIO()):  # its "Successfully registered ..." lines; errors still raise
        mv = mlflow.register_model(model_uri, name, tags={"run_id": run_id})
    tags: dict[str, Any] = {
        "val_score": score,
        "variance_scale": metrics.get("variance_scale"),
        "ood_threshold": metrics.get("ood_threshold"),
        "test_accuracy": metrics.get("test_accuracy_calibrated"),
        **(tags or {}),
        **(data or {}),
    }
    current = current_champion(client, name, alias)
    promoted, reason = champion_decision(current, score, data or {})
    tags["champion_decision"] = reason
    for k, v in tags.items():
        if v is not None:
            client.set_model_version_tag(name, mv.version, k, str(v))
    if version_description:
        client.update_model_version(name, mv.version, description=version_description)
    if promoted:
        client.set_registered_model_alias(name, alias, mv.version)
    if description and not client.get_registered_model(name).description:
        client.update_registered_model(name, description=description)
    return Registration(name, str(mv.version), promoted, reason)


def register(
    tracking_uri: str, run_id: str, model_uri: str, name: str, metrics: dict[str, float], alias: str = ALIAS
) -> tuple[str, bool]:
    """:func:`register_model` without data tags: (version, promoted)."""
    r = register_model(tracking_uri, run_id, model_uri, name, metrics, alias=alias)
    return r.version, r.promoted


def champion_decision(current, score: float, data: dict[str, str]) -> tuple[bool, str]:
    """Whether a new version with validation ``score`` on ``data`` takes ``@champion`` from ``current`` (a model
    version, or None), and why. Versions on different data never compete; a champion that records no data (an
    older version) is compared on score."""
    if current is None:
        return True, "no champion yet"
    theirs = {k: current.tags.get(k) for k in DATA_TAGS if current.tags.get(k)}
    differ = [k for k in DATA_TAGS if k in theirs and data.get(k) and theirs[k] != data[k]]
    if differ:
        what = ", ".join(f"{k} {theirs[k]} vs {data[k]}" for k in differ)
        return False, f"champion v{current.version} was trained on other data ({what})"
    best = float(current.tags.get("val_score", "-inf"))
    if score > best:
        return True, f"validation score {score:.4f} > champion v{current.version}'s {best:.4f}"
    return False, f"validation score {score:.4f} <= champion v{current.version}'s {best:.4f}"


def current_champion(client: MlflowClient, name: str, alias: str = ALIAS):
    try:
        return client.get_model_version_by_alias(name, alias)
    except Exception:  # noqa: BLE001  (no alias yet)
        return None
