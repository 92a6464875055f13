"""Evaluation of a trained FlowGMM on the prepared splits: test metrics before and after variance-scaling
calibration (fit on the labeled validation split), bits/dim, out-of-domain detection, a logistic-regression
baseline on the same labeled rows, and the pictures.

Runs wherever it is called: the pipeline calls it inside a Ray task (on a GPU when training used GPUs).

    result = evaluate_model("/path/to/best/checkpoint", prepared, cfg)
    result.metrics["test_accuracy"], result.metrics["test_ece_calibrated"]
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from flowgmm import calibration, dequantize, metrics as M
from flowgmm.model import FlowGMM
from flowgmm.spec import load as load_model
from pipeline import figures
from pipeline.config import Config
from pipeline.prepare import Prepared, load_split


@dataclass
class EvalResult:
    metrics: dict[str, float]
    calibration_table: list[dict[str, Any]]
    ood_table: list[dict[str, Any]]
    variance_scale: float
    ood_threshold: float
    figures: dict[str, bytes] = field(default_factory=dict)   # artifact path -> PNG bytes


@dataclass
class Encoded:
    """A split pushed through the flow once: everything the metrics need."""

    z: torch.Tensor          # [N, D] float32
    log_px: torch.Tensor     # [N] log p(x) under the (uncalibrated) mixture, data space
    y: np.ndarray


@torch.no_grad()
def encode(model: FlowGMM, x: np.ndarray, y: np.ndarray, *, image: bool, device: torch.device,
           batch_size: int = 512) -> Encoded:
    zs, lps = [], []
    for i in range(0, len(x), batch_size):
        xb = torch.as_tensor(x[i:i + batch_size], device=device)
        xb = dequantize(xb.float() / 255.0, noise="mid") if image else xb.float()
        z, logdet = model(xb)
        z, logdet = z.float(), logdet.float()
        zs.append(z.cpu())
        lps.append((model.mixture.log_prob(z) + logdet).cpu())
    return Encoded(torch.cat(zs), torch.cat(lps), y)


def classification_metrics(probs: np.ndarray, y: np.ndarray, n_bins: int) -> dict[str, float]:
    return {"accuracy": M.accuracy(probs, y), "nll": M.nll(probs, y), "ece": M.ece(probs, y, n_bins=n_bins),
            "brier": M.brier(probs, y)}


def bits_per_dim(log_px: torch.Tensor, dim: int, image: bool) -> float:
    """Images: 8-bit discrete bits/dim (dequantized density minus D log 256). Vectors: continuous nats->bits."""
    nll = -log_px.double().mean().item()
    if image:
        nll += dim * math.log(256.0)
    return nll / (dim * math.log(2.0))


@torch.no_grad()
def posterior(model: FlowGMM, z: torch.Tensor, scale: float) -> np.ndarray:
    model.set_variance_scale(scale)
    try:
        return model.mixture.posterior(z, calibrated=True).numpy()
    finally:
        model.set_variance_scale(1.0)


def evaluate_model(model_dir: str, prepared: Prepared, cfg: Config, *, device: str = "cpu",
                   figures_on: bool | None = None) -> EvalResult:
    figures_on = cfg.eval.figures if figures_on is None else figures_on
    dev = torch.device(device)
    model, spec = load_model(model_dir, map_location=dev)
    model.to(dev).eval()
    image = spec["kind"] == "image"
    dim = int(np.prod(spec["shape"]))
    bins = cfg.eval.ece_bins
    enc = {s: encode(model, *load_split(prepared, s), image=image, device=dev, batch_size=cfg.eval.batch_size)
           for s in ("val", "test")}
    model.cpu()

    # calibration: one variance scale fit on the labeled validation split, the flow frozen
    scale = calibration.fit_variance_scale(model.mixture, enc["val"].z, torch.as_tensor(enc["val"].y))
    table = []
    out: dict[str, float] = {}
    for split in ("val", "test"):
        for label, s in (("uncalibrated", 1.0), ("calibrated", scale)):
            m = classification_metrics(posterior(model, enc[split].z, s), enc[split].y, bins)
            table.append({"split": split, "model": label, "variance_scale": s, **m})
            suffix = "" if label == "uncalibrated" else "_calibrated"
            name = "final_val" if split == "val" else split   # per-epoch "val_*" metrics are logged in training
            for k, v in m.items():
                out[f"{name}_{k}{suffix}"] = v
        out[f"{'final_val' if split == 'val' else split}_bpd"] = bits_per_dim(enc[split].log_px, dim, image)
    out["variance_scale"] = scale

    # out-of-domain: log p(x) and max p(y|x) (calibrated), in-domain = test split
    threshold = float(np.percentile(enc["val"].log_px.numpy(), cfg.eval.ood_percentile))
    out["ood_threshold"] = threshold
    out["test_ood_flag_rate"] = float((enc["test"].log_px.numpy() < threshold).mean())
    ood_rows, ood_scores = [], {}
    test_conf = posterior(model, enc["test"].z, scale).max(1)
    model.to(dev)
    for name in prepared.manifest.get("ood", {}) or {}:
        x_o, y_o = load_split(prepared, f"ood/{name}")
        e = encode(model, x_o, y_o, image=image, device=dev, batch_size=cfg.eval.batch_size)
        conf = posterior(model.cpu(), e.z, scale).max(1)
        model.to(dev)
        for score_name, s_in, s_out in (("log_px", enc["test"].log_px.numpy(), e.log_px.numpy()),
                                        ("max_prob", test_conf, conf)):
            r = M.ood_report(s_in, s_out)
            ood_rows.append({"ood_set": name, "score": score_name, **r})
            for k, v in r.items():
                out[f"ood_{name}_{score_name}_{k}"] = v
        out[f"ood_{name}_flag_rate"] = float((e.log_px.numpy() < threshold).mean())
        out[f"ood_{name}_bpd"] = bits_per_dim(e.log_px, dim, image)
        ood_scores[name] = e.log_px.numpy()
    model.cpu()

    # baseline: a plain classifier on the same labeled rows
    if cfg.eval.baselines:
        out["baseline_logreg_test_accuracy"] = logistic_regression_baseline(prepared, image)

    figs: dict[str, bytes] = {}
    if figures_on:
        p_before = posterior(model, enc["test"].z, 1.0)
        p_after = posterior(model, enc["test"].z, scale)
        figs["plots/reliability.png"] = figures.reliability(
            M.reliability_bins(p_before, enc["test"].y, n_bins=bins),
            M.reliability_bins(p_after, enc["test"].y, n_bins=bins))
        figs["plots/confusion_matrix.png"] = figures.confusion(p_after.argmax(1), enc["test"].y,
                                                             prepared.class_names)
        if ood_scores:
            figs["plots/ood_log_px_hist.png"] = figures.ood_histogram(enc["test"].log_px.numpy(), ood_scores,
                                                                      threshold, dim)
        if image:
            figs["plots/class_means.png"] = figures.class_means(model, prepared.class_names)
            figs["plots/samples_t{:g}.png".format(cfg.eval.sample_temperature)] = figures.class_samples(
                model, prepared.class_names, cfg.eval.sample_temperature)
        elif dim == 2:
            x_te, y_te = load_split(prepared, "test")
            figs["plots/data_and_latent.png"] = figures.two_d(model, x_te, y_te)
    return EvalResult(out, table, ood_rows, scale, threshold, figs)


def logistic_regression_baseline(prepared: Prepared, image: bool) -> float:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x_l, y_l = load_split(prepared, "labeled")
    x_t, y_t = load_split(prepared, "test")
    f = (lambda a: a.reshape(len(a), -1).astype(np.float32) / (255.0 if image else 1.0))
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, C=1.0))
    clf.fit(f(x_l), y_l)
    return float((clf.predict(f(x_t)) == y_t).mean())


def evaluate_accuracy_only(model_dir: str, prepared: Prepared, cfg: Config, device: str = "cpu") -> dict[str, float]:
    """For baselines (the supervised-only flow): test metrics, calibrated on validation like the main model."""
    r = evaluate_model(model_dir, prepared, cfg, device=device, figures_on=False)
    keep = ("test_accuracy", "test_nll", "test_ece", "test_accuracy_calibrated", "test_nll_calibrated",
            "test_ece_calibrated", "test_bpd")
    return {k: r.metrics[k] for k in keep}
