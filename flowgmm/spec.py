"""Build a FlowGMM from a JSON-able spec, and save/load it as spec + state dict (no pickled objects).

A spec names the data kind and shape and the architecture; the weights travel as a plain state dict, loaded
with ``torch.load(weights_only=True)``. This is how checkpoints, evaluation and the served model rebuild a model.

    >>> spec = {"kind": "vector", "shape": [2], "num_classes": 2, "model": {"num_couplings": 2, "hidden": 8}}
    >>> model = build_model(spec)
    >>> model.predict_proba(torch.zeros(3, 2)).shape
    torch.Size([3, 2])
    >>> spline = dict(spec, model={"num_couplings": 2, "hidden": 8, "coupling": "spline", "bins": 6, "tail_bound": 3.0})
    >>> [type(layer).__name__ for layer in build_model(spline).flow.layers]
    ['LULinear', 'RQSplineCoupling', 'RQSplineCoupling']
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from flowgmm.flows import image_flow, image_vector_flow, vector_flow
from flowgmm.model import FlowGMM

IMAGE_KEYS = ("num_scales", "mid_channels", "num_blocks", "norm")
VECTOR_KEYS = ("num_couplings", "hidden", "depth", "coupling", "bins", "tail_bound", "mixing")
MIXTURE_KEYS = ("means_scale", "variance", "per_class_variance", "learn_means", "learn_variance", "learn_weights")


def build_model(spec: dict[str, Any]) -> FlowGMM:
    """``spec``: kind ("image" | "vector"), shape, num_classes, model (architecture and mixture settings; for images
    ``model.flow`` "image" builds the multiscale image flow, "vector" the MLP flow over the flattened pixels),
    optional levels (images: grey levels), feature_mean/feature_std (vectors), class_counts (for class weights
    "counts") and seed. Vector flows (``kind`` "vector", or images with ``model.flow`` "vector") read
    :data:`VECTOR_KEYS` from ``model``: ``coupling`` ("affine", the default for specs written before the key, or
    "spline"), ``bins`` and ``tail_bound`` (spline couplings), ``mixing`` ("none", "permute" or "lu"; absent or null:
    the coupling's default, ``flowgmm.flows.DEFAULT_MIXING``)."""
    m = dict(spec.get("model", {}))
    shape = list(spec["shape"])
    if spec["kind"] == "image":
        c, h, w = shape
        if h != w:
            raise ValueError(f"image_flow needs square images, got shape {shape}")
        if m.get("flow", "image") == "vector":
            flow = image_vector_flow(channels=c, size=h, **{k: m[k] for k in VECTOR_KEYS if k in m})
        else:
            flow = image_flow(channels=c, size=h, **{k: m[k] for k in IMAGE_KEYS if k in m})
        dim = c * h * w
    elif spec["kind"] == "vector":
        (dim,) = shape
        standardize = None
        if spec.get("feature_mean") is not None:
            standardize = (
                torch.as_tensor(spec["feature_mean"], dtype=torch.float32),
                torch.as_tensor(spec["feature_std"], dtype=torch.float32),
            )
        flow = vector_flow(dim, standardize=standardize, **{k: m[k] for k in VECTOR_KEYS if k in m})
    else:
        raise ValueError(f"unknown data kind {spec['kind']!r}")
    counts = spec.get("class_counts") if m.get("class_weights", "uniform") == "counts" else None
    model = FlowGMM(
        flow,
        num_classes=int(spec["num_classes"]),
        dim=dim,
        class_counts=counts,
        seed=int(spec.get("seed", 0)),
        **{k: m[k] for k in MIXTURE_KEYS if k in m},
    )
    return model


def levels_of(spec: dict[str, Any]) -> int | None:
    """The grey levels an image model dequantizes at (256 for specs written before sources declared them); None for
    vectors (no dequantization).

    >>> levels_of({"kind": "image", "levels": 17}), levels_of({"kind": "image"}), levels_of({"kind": "vector"})
    (17, 256, None)
    """
    return int(spec.get("levels", 256)) if spec["kind"] == "image" else None


def save(model: FlowGMM, spec: dict[str, Any], directory: str | os.PathLike) -> None:
    """Write ``spec.json`` and ``weights.pt`` (a state dict) into ``directory``. Writing a model that others may
    be reading: write into a new directory and rename it into place (``pipeline.core.atomic.atomic_dir``)."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    (d / "spec.json").write_text(json.dumps(spec, indent=2, sort_keys=True))
    torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, d / "weights.pt")


def load(directory: str | os.PathLike, map_location: str | torch.device = "cpu") -> tuple[FlowGMM, dict[str, Any]]:
    d = Path(directory)
    spec = json.loads((d / "spec.json").read_text())
    model = build_model(spec)
    model.load_state_dict(torch.load(d / "weights.pt", map_location=map_location, weights_only=True))
    model.eval()
    return model, spec
