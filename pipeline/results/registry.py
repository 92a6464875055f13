"""The MLflow Model Registry side of a run: every finished run's model is registered under the experiment's model
name, and the ``champion`` alias moves to it only when it is better on validation than the current champion.

    version, promoted = register(handle, model_uri, "flowgmm-digits", metrics)
    mlflow.pyfunc.load_model("models:/flowgmm-digits@champion")

The registered version carries what the served model needs as tags too (the calibration's variance scale, the
OOD threshold on log p(x)), beside the spec inside the model itself.
"""

from __future__ import annotations

import contextlib
import io
import math
from typing import Any

from mlflow import MlflowClient

from flowgmm.metrics import selection_score

ALIAS = "champion"


def validation_score(metrics: dict[str, float]) -> float:
    """Higher is better: validation accuracy, ties broken by calibrated validation NLL (the selection rule used
    for checkpoints during training, applied to the final, calibrated model)."""
    acc = metrics.get("final_val_accuracy_calibrated", metrics.get("final_val_accuracy"))
    nll = metrics.get("final_val_nll_calibrated", metrics.get("final_val_nll", 0.0))
    if acc is None or not math.isfinite(acc):
        return -math.inf
    return selection_score(acc, nll)


def register(
    tracking_uri: str, run_id: str, model_uri: str, name: str, metrics: dict[str, float], alias: str = ALIAS
) -> tuple[str, bool]:
    """Register ``model_uri`` as a new version of ``name``; move ``alias`` to it if its validation score beats the
    current holder's (or nobody holds it). Returns (version, promoted)."""
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
    }
    for k, v in tags.items():
        if v is not None:
            client.set_model_version_tag(name, mv.version, k, str(v))
    current = current_champion(client, name, alias)
    promoted = current is None or score > float(current.tags.get("val_score", "-inf"))
    if promoted:
        client.set_registered_model_alias(name, alias, mv.version)
    return str(mv.version), promoted


def current_champion(client: MlflowClient, name: str, alias: str = ALIAS):
    try:
        return client.get_model_version_by_alias(name, alias)
    except Exception:  # noqa: BLE001  (no alias yet)
        return None
