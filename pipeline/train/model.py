"""The model spec of a run: everything ``flowgmm.spec.build_model`` needs to rebuild the FlowGMM (data kind and
shape, classes, architecture and mixture settings, the vector flow's fixed standardization), as plain JSON."""

from __future__ import annotations

from typing import Any

from pipeline.config import Config
from pipeline.data.manifest import Prepared
from pipeline.train.budget import size_to_data


def model_spec(cfg: Config, prepared: Prepared) -> dict[str, Any]:
    cfg = size_to_data(cfg, prepared)  # the flow's width when the configuration leaves it to the data
    man = prepared.manifest
    spec: dict[str, Any] = {
        "kind": prepared.kind,
        "shape": list(prepared.shape),
        "num_classes": prepared.num_classes,
        "class_names": list(prepared.class_names),
        "model": vars(cfg.model).copy(),
        "seed": cfg.train.seed,
    }
    if prepared.kind == "image":
        spec["levels"] = int(prepared.levels or 256)
    if prepared.kind == "vector":
        spec["feature_mean"], spec["feature_std"] = man["feature_mean"], man["feature_std"]
        if man.get("feature_names"):
            spec["feature_columns"] = list(man["feature_names"])
        if man.get("encoding"):  # scoring, the pyfunc model and the server encode raw rows the same way
            spec["encoding"] = man["encoding"]
    if man.get("source") == "table":  # scoring keeps the input's ground truth beside the prediction
        spec["label_column"] = man.get("spec", {}).get("label_column", "label")
    counts = man.get("class_counts", {}).get("labeled")
    if counts is not None:
        spec["class_counts"] = list(counts)
    return spec
