"""The served FlowGMM: an MLflow pyfunc "model from code".

It takes raw inputs (images as uint8 pixels ``[N, C, H, W]``, or a table with the training feature columns),
applies the training preprocessing (pixels / 255 and a fixed dequantization u = 0.5), and returns, per row, the
predicted ``label``, the calibrated class probabilities ``prob_<class>``, ``log_px`` (log p(x) in the data space),
``ood_score`` and ``ood_score_name`` (the served out-of-domain score, ``flowgmm.ood``: higher = more in-domain),
``is_ood`` (that score below the threshold chosen on validation) and ``class`` (the predicted class's name). Inputs
go to the model's device (CPU or CUDA); results come back as NumPy on the CPU.

    model = mlflow.pyfunc.load_model("runs:/<run_id>/model")
    out = model.predict(images_uint8)          # pandas DataFrame

The weights are a state dict read with ``torch.load(weights_only=True)``; the architecture comes from a JSON
spec, so loading never unpickles arbitrary objects.
"""

from __future__ import annotations

from typing import Any

import mlflow
import numpy as np
import pandas as pd
from mlflow.pyfunc import PythonModel


def signature(spec: dict[str, Any]):
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema, TensorSpec

    names = spec.get("class_names") or [str(i) for i in range(spec["num_classes"])]
    outputs = Schema(
        [
            ColSpec("long", "label"),
            *[ColSpec("double", f"prob_{n}") for n in names],
            ColSpec("double", "log_px"),
            ColSpec("double", "ood_score"),
            ColSpec("string", "ood_score_name"),
            ColSpec("boolean", "is_ood"),
            ColSpec("string", "class"),
        ]
    )
    if spec["kind"] == "image":
        inputs = Schema([TensorSpec(np.dtype("uint8"), (-1, *spec["shape"]))])
    elif spec.get("encoding"):  # raw columns: numbers (gaps allowed where imputed) and text
        inputs = Schema(
            [
                ColSpec("double" if e["kind"] == "number" else "string", e["column"], required=False)
                for e in spec["encoding"]
            ]
        )
    else:
        inputs = Schema([ColSpec("double", c) for c in feature_names(spec)])
    return ModelSignature(inputs=inputs, outputs=outputs)


def input_example(spec: dict[str, Any], rows: Any = None) -> Any:
    """The logged model's input example in its raw input form: ``rows`` (e.g. the first validation row, as
    ``load_split`` returns it) as uint8 images or a table of the feature columns; without rows, a mid-grey image or
    the training features' mean row.

    >>> input_example({"kind": "vector", "shape": [2], "feature_columns": ["a", "b"]}, np.array([[1.5, -2.0]]))
         a    b
    0  1.5 -2.0
    """
    if spec["kind"] == "image":
        if rows is not None:
            return np.asarray(rows, dtype=np.uint8).reshape(-1, *spec["shape"])
        return np.full((1, *spec["shape"]), 128, dtype=np.uint8)
    cols = feature_names(spec)
    if rows is None:
        rows = np.asarray([spec.get("feature_mean") or [0.0] * len(cols)], dtype=np.float64)
    rows = np.asarray(rows, dtype=np.float64).reshape(-1, len(cols))
    if spec.get("encoding"):
        from pipeline.data.encoding import raw_rows

        return pd.DataFrame(raw_rows(rows, spec["encoding"]), columns=input_columns(spec))
    return pd.DataFrame(rows, columns=cols)


def feature_names(spec: dict[str, Any]) -> list[str]:
    """The flow's features (a table's encoded columns where it has an encoding)."""
    return list(spec.get("feature_columns") or [f"x{i}" for i in range(spec["shape"][0])])


def input_columns(spec: dict[str, Any]) -> list[str]:
    """The columns a table model reads from its input: the raw columns of its encoding, else its features."""
    if spec.get("encoding"):
        return [e["column"] for e in spec["encoding"]]
    return feature_names(spec)


def features_of(frame: pd.DataFrame, spec: dict[str, Any], where: str = "input") -> np.ndarray:
    """A table model's float32 features from a frame of its input columns (encoded where the model has an
    encoding); ValueError naming missing columns."""
    cols = input_columns(spec)
    missing = [c for c in cols if c not in frame.columns]
    if missing:
        raise ValueError(f"input is missing feature columns {missing}")
    if spec.get("encoding"):
        from pipeline.data.encoding import transform

        return transform({c: frame[c].to_numpy(object) for c in cols}, spec["encoding"], where)
    return frame[cols].to_numpy(np.float32, copy=True)  # writable: torch.as_tensor warns on a read-only view


class FlowGMMModel(PythonModel):
    def load_context(self, context) -> None:

        from flowgmm.spec import load

        self.model, self.spec = load(context.artifacts["model_dir"])
        self.model.set_variance_scale(float(self.spec.get("variance_scale", 1.0)))
        self.threshold = float(self.spec.get("ood_threshold", -np.inf))
        self.names = self.spec.get("class_names") or [str(i) for i in range(self.spec["num_classes"])]


def _predict(self, context, model_input, params=None):  # noqa: ANN001 (no hints on purpose: see below)
    return predict_frame(self.model, self.spec, self.names, self.threshold, model_input)


# Set after the class body: MLflow wraps a `predict` defined in the body (PythonModel.__init_subclass__) to warn, on
# every run, that it has no type hints for its data validation; our input is checked by predict_frame instead.
FlowGMMModel.predict = _predict


def predict_frame(
    model, spec: dict[str, Any], names: list[str], threshold: float, model_input: Any, batch_size: int = 1024
) -> pd.DataFrame:
    import torch

    from flowgmm import dequantize, ood
    from flowgmm.spec import levels_of

    if isinstance(model_input, pd.DataFrame):
        x = features_of(model_input, spec)
    elif isinstance(model_input, dict):
        x = np.asarray(next(iter(model_input.values())))
    else:
        x = np.asarray(model_input)
    x = x.reshape(len(x), *spec["shape"])
    device = next(model.parameters()).device
    labels, probs, logps, served = [], [], [], []
    levels = levels_of(spec)
    name = spec.get("ood_score", "log_px")  # models saved before the served score was a choice: log p(x)
    with torch.no_grad():
        for i in range(0, len(x), batch_size):
            xb = torch.as_tensor(x[i : i + batch_size]).to(device)
            xb = dequantize(xb.float() / 255.0, noise="mid", levels=levels) if levels else xb.float()
            z, logdet = model(xb)
            z, logdet = z.float(), logdet.float()
            p = model.mixture.posterior(z, calibrated=True)
            lp = model.mixture.log_prob(z, calibrated=False) + logdet
            probs.append(p.cpu().numpy())
            labels.append(p.argmax(1).cpu().numpy())
            logps.append(lp.cpu().numpy())
            xs = x[i : i + batch_size]
            served.append(ood.scores((name,), model.mixture, z, lp, probs[-1], xs, levels)[name])
    p = np.concatenate(probs) if probs else np.zeros((0, len(names)))
    logp = np.concatenate(logps) if logps else np.zeros(0)
    out = {"label": np.concatenate(labels).astype(np.int64) if labels else np.zeros(0, np.int64)}
    out.update({f"prob_{n}": p[:, k].astype(np.float64) for k, n in enumerate(names)})
    out["log_px"] = logp.astype(np.float64)
    out["ood_score"] = np.concatenate(served).astype(np.float64) if served else np.zeros(0)
    out["ood_score_name"] = np.full(len(logp), name, dtype=object)
    out["is_ood"] = out["ood_score"] < threshold
    out["class"] = np.asarray(names, dtype=object)[out["label"]]
    return pd.DataFrame(out)


mlflow.models.set_model(FlowGMMModel())
