"""Evaluation of a trained FlowGMM on the prepared splits: test metrics before and after variance-scaling
calibration (chosen on the labeled validation split by ``flowgmm.calibration.choose_variance_scale``), bits/dim,
out-of-domain detection, the classical anchors on the same split, and the pictures.

Runs wherever it is called: the pipeline calls it inside a Ray task (on a GPU when training used GPUs).

    result = evaluate_model("/path/to/best/checkpoint", prepared, cfg)
    result.metrics["test_accuracy"], result.metrics["test_ece_calibrated"]
    result.calibration_note     # how the served scale was chosen, e.g. "cross-fit, 5 folds: kept x1 (...); n=10"
    result.params               # the anchors' chosen settings, e.g. {"baseline_label_spreading_kernel": "rbf", ...}
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from flowgmm import calibration, ood
from flowgmm import metrics as M
from flowgmm.model import FlowGMM
from flowgmm.spec import levels_of
from flowgmm.spec import load as load_model
from pipeline.config import Config
from pipeline.data.manifest import Prepared
from pipeline.data.shards import load_split, load_unlabeled_labels
from pipeline.results import figures
from pipeline.results.anchors import classical_baselines, flow_view
from pipeline.train.validate import bits_per_dim, encode


@dataclass
class EvalResult:
    metrics: dict[str, float]
    calibration_table: list[dict[str, Any]]
    ood_table: list[dict[str, Any]]
    variance_scale: float
    ood_threshold: float
    figures: dict[str, bytes] = field(default_factory=dict)  # artifact path -> PNG bytes
    boundary_distances: np.ndarray | None = None  # unlabeled points' latent distances to the decision boundary
    calibration_note: str = ""  # how variance_scale was chosen (flowgmm.calibration.Calibration.note)
    params: dict[str, Any] = field(default_factory=dict)  # settings, not measurements: the anchors' chosen ones
    ood_score: str = ""  # the served out-of-domain score (flowgmm.ood), thresholded at ood_threshold


def classification_metrics(probs: np.ndarray, y: np.ndarray, n_bins: int) -> dict[str, float]:
    return {
        "accuracy": M.accuracy(probs, y),
        "nll": M.nll(probs, y),
        "ece": M.ece(probs, y, n_bins=n_bins),
        "brier": M.brier(probs, y),
    }


@torch.no_grad()
def posterior(model: FlowGMM, z: torch.Tensor, scale: float) -> np.ndarray:
    model.set_variance_scale(scale)
    try:
        return model.mixture.posterior(z, calibrated=True).numpy()
    finally:
        model.set_variance_scale(1.0)


def evaluate_model(
    model_dir: str,
    prepared: Prepared,
    cfg: Config,
    *,
    device: str = "cpu",
    figures_on: bool | None = None,
    background_dir: str | None = None,
    anchors: bool = True,
) -> EvalResult:
    """Test metrics before and after calibration, bits/dim, OOD detection, the classical anchors (when
    ``eval.baselines`` and ``anchors``: a job computes them beside its model instead, ``pipeline.results.baselines``)
    and the pictures. ``background_dir``: a background model (``eval.ood_background``), which adds the
    likelihood-ratio score."""
    ev = _Evaluation(model_dir, prepared, cfg, torch.device(device))
    if background_dir is not None:
        ev.background, _ = load_model(background_dir, map_location="cpu")
        ev.background.eval()
    ev.calibrate()
    ev.out_of_domain()
    ev.boundary()
    if ev.image:
        ev.sample_share()
    params: dict[str, Any] = {}
    if cfg.eval.baselines and anchors:  # the classical anchors on the same split
        metrics, params = classical_baselines(prepared, cfg.eval.anchor_unlabeled)
        ev.out.update(metrics)
    figs = ev.figures() if (cfg.eval.figures if figures_on is None else figures_on) else {}
    return EvalResult(
        ev.out, ev.table, ev.ood_rows, ev.scale, ev.threshold, figs, ev.distances, ev.note, params, ev.served
    )


class _Evaluation:
    """One evaluation: the model, the encoded validation and test splits, and what has been measured so far."""

    def __init__(self, model_dir: str, prepared: Prepared, cfg: Config, device: torch.device):
        self.prepared, self.cfg, self.device = prepared, cfg, device
        self.model, spec = load_model(model_dir, map_location=device)
        self.model.to(device).eval()
        self.kind = spec["kind"]
        self.image = self.kind == "image"
        self.levels = levels_of(spec)
        self.dim = int(np.prod(spec["shape"]))
        self.x: dict[str, np.ndarray] = {}  # the raw rows of the validation and test splits
        self.enc = {}
        for split in ("val", "test"):
            self.x[split], y = load_split(prepared, split)
            self.enc[split] = self.encode(self.x[split], y)
        self.served = ood.served(cfg.eval.ood_score, self.kind)
        self.out: dict[str, float] = {}
        self.table: list[dict[str, Any]] = []
        self.ood_rows: list[dict[str, Any]] = []
        self.ood_scores: dict[str, dict[str, np.ndarray]] = {}  # score -> OOD set -> its rows' scores
        self.test_scores: dict[str, np.ndarray] = {}  # score -> the test split's
        self.background: FlowGMM | None = None  # eval.ood_background's model: adds the score ood.RATIO

    def encode(self, x: np.ndarray, y: np.ndarray):
        self.model.to(self.device)
        e = encode(self.model, x, y, levels=self.levels, device=self.device, batch_size=self.cfg.eval.batch_size)
        self.model.cpu()
        return e

    def calibrate(self) -> None:
        """One variance scale chosen on the labeled validation split (regularised: a prior on log s, kept only if
        it beats s = 1 on held-out folds), the flow frozen; metrics before and after."""
        enc, out, bins = self.enc, self.out, self.cfg.eval.ece_bins
        chosen = calibration.choose_variance_scale(self.model.mixture, enc["val"].z, torch.as_tensor(enc["val"].y))
        self.scale, self.note = chosen.scale, chosen.note
        for split in ("val", "test"):
            name = "final_val" if split == "val" else split  # per-epoch "val_*" metrics are logged in training
            for label, s in (("uncalibrated", 1.0), ("calibrated", self.scale)):
                m = classification_metrics(posterior(self.model, enc[split].z, s), enc[split].y, bins)
                how = chosen.note if label == "calibrated" else "none"
                row = {"split": split, "model": label, "variance_scale": s, **m}
                self.table.append({**row, "variance_scale_fitted": chosen.fitted, "calibration": how})
                suffix = "" if label == "uncalibrated" else "_calibrated"
                out.update({f"{name}_{k}{suffix}": v for k, v in m.items()})
            out[f"{name}_bpd"] = bits_per_dim(enc[split].log_px, self.dim, self.levels)
        out.update(variance_scale=self.scale, variance_scale_fitted=chosen.fitted)
        n_test = len(enc["test"].y)  # the sizes behind the numbers, and a 95% interval on test accuracy
        out.update(test_rows=float(n_test), val_rows=float(len(enc["val"].y)))
        out["labeled_rows"] = float(self.prepared.manifest["counts"]["labeled"])
        low, high = M.wilson_interval(int(round(out["test_accuracy"] * n_test)), n_test)
        out.update(test_accuracy_ci_low=low, test_accuracy_ci_high=high)

    def out_of_domain(self) -> None:
        """The served flag: the served score below its ``eval.ood_fpr`` quantile on validation. Then every score of
        ``flowgmm.ood`` against each OOD set (the data set's own, and for tables and other vectors the test rows
        shifted by ``ood.shifted_rows``); in-domain = the test split."""
        out, served = self.out, self.served
        val = self.scores(self.x["val"], self.enc["val"], (served,))[served]
        self.threshold = float(np.quantile(val, self.cfg.eval.ood_fpr))
        self.test_scores = self.scores(self.x["test"], self.enc["test"])
        out["ood_threshold"] = self.threshold
        out["test_ood_flag_rate"] = float((self.test_scores[served] < self.threshold).mean())
        x_test = self.x["test"]
        sets = {name: load_split(self.prepared, f"ood/{name}")[0] for name in self.prepared.manifest.get("ood") or {}}
        if not self.image and self.prepared.feature_mean is not None and len(x_test) > 1:
            sets.update(ood.shifted_rows(x_test, self.prepared.feature_mean))
        for name, x in sets.items():
            e = self.encode(x, np.full(len(x), -1))
            scores = self.scores(x, e)
            for score, s_out in scores.items():
                r = M.ood_report(self.test_scores[score], s_out)
                self.ood_rows.append({"ood_set": name, "score": score, **r})
                out.update({f"ood_{name}_{score}_{k}": v for k, v in r.items()})
                self.ood_scores.setdefault(score, {})[name] = s_out
            out[f"ood_{name}_flag_rate"] = float((scores[served] < self.threshold).mean())
            out[f"ood_{name}_bpd"] = bits_per_dim(e.log_px, self.dim, self.levels)

    def scores(self, x: np.ndarray, e, names: tuple[str, ...] | None = None) -> dict[str, np.ndarray]:
        """OOD scores of rows ``x`` (encoded as ``e``), higher = more in-domain: ``names``, else every score the
        model has (``flowgmm.ood``)."""
        names = names or (*ood.available(self.kind), *((ood.RATIO,) if self.background is not None else ()))
        probs = posterior(self.model, e.z, self.scale) if "max_prob" in names else None
        background = None
        if ood.RATIO in names:
            bg = self.background.to(self.device)
            background = encode(bg, x, np.full(len(x), -1), levels=self.levels, device=self.device).log_px
            bg.cpu()
        return ood.scores(names, self.model.mixture, e.z, e.log_px, probs, x, self.levels, background)

    def boundary(self, rows: int = 5000) -> None:
        """Latent distances of (at most ``rows``) unlabeled points to the decision boundary: the low-density
        separation that semi-supervised training should widen (compare the labels-only flow's)."""
        x, _ = load_split(self.prepared, "unlabeled")
        if not len(x):
            self.distances = None
            return
        pick = np.random.default_rng(0).choice(len(x), size=min(rows, len(x)), replace=False)
        z = self.encode(x[np.sort(pick)], np.full(len(pick), -1)).z
        self.distances = self.model.mixture.boundary_distance(z).numpy()
        self.out["unlabeled_boundary_distance_median"] = float(np.median(self.distances))

    def sample_share(self, per_class: int = 100) -> None:
        """Do class-conditional samples at ``eval.sample_temperature`` look like their class? A logistic regression
        fit on every training row with a known label (labeled, validation and the unlabeled rows' withheld labels),
        on the flow's view of the pixels, labels the samples; the share labeled as the class they were drawn from."""
        t = self.cfg.eval.sample_temperature
        judge = sample_judge(self.prepared)
        gen = torch.Generator().manual_seed(0)
        k = self.model.mixture.num_classes
        drawn = torch.arange(k).repeat_interleave(per_class)
        samples = self.model.sample(len(drawn), y=drawn, temperature=t, generator=gen)
        pred = judge.predict(samples.flatten(1).clamp(0, 1).numpy())
        self.out["sample_class_share"] = float((pred == drawn.numpy()).mean())
        self.out["sample_judge_test_accuracy"] = float(
            (judge.predict(flow_view(self.prepared, load_split(self.prepared, "test")[0])) == self.enc["test"].y).mean()
        )

    def figures(self) -> dict[str, bytes]:
        test, bins, names, model = self.enc["test"], self.cfg.eval.ece_bins, self.prepared.class_names, self.model
        p_before, p_after = posterior(model, test.z, 1.0), posterior(model, test.z, self.scale)
        figs = {
            "plots/reliability.png": figures.reliability(
                M.reliability_bins(p_before, test.y, n_bins=bins), M.reliability_bins(p_after, test.y, n_bins=bins)
            ),
            "plots/confusion_matrix.png": figures.confusion(p_after.argmax(1), test.y, names),
        }
        for score, by_set in self.ood_scores.items():  # one picture per score
            threshold = self.threshold if score == self.served else None
            figs[f"plots/ood_{score}_hist.png"] = figures.ood_histogram(
                self.test_scores[score], by_set, threshold, figures.OOD_AXES[score].format(dim=self.dim)
            )
        if self.image:
            t = self.cfg.eval.sample_temperature
            figs["plots/class_means.png"] = figures.class_means(model, names)
            figs[f"plots/samples_t{t:g}.png"] = figures.class_samples(model, names, t)
            figs["plots/interpolations.png"] = figures.interpolations(model, test.z, test.y, names)
        elif self.dim == 2:
            figs["plots/data_and_latent.png"] = figures.two_d(model, *load_split(self.prepared, "test"))
        if self.distances is not None:
            figs["plots/boundary_distance_hist.png"] = figures.boundary_distances({"FlowGMM": self.distances})
        return figs


JUDGE_FILE = "sample_judge-v1.npz"  # beside the prepared shards: the judge depends on nothing else


@dataclass
class LinearJudge:
    """A fitted logistic regression's decision rule (its coefficients), which is all that labelling samples needs."""

    coef: np.ndarray  # [K, D], or [1, D] for two classes
    intercept: np.ndarray
    classes: np.ndarray

    def predict(self, x: np.ndarray) -> np.ndarray:
        scores = np.asarray(x, np.float64) @ self.coef.T + self.intercept
        pick = (scores[:, 0] > 0).astype(int) if self.coef.shape[0] == 1 else scores.argmax(1)
        return self.classes[pick]


def sample_judge(prepared: Prepared) -> LinearJudge:
    """The samples' judge: a logistic regression on every training row with a known label (labeled, validation and
    the unlabeled rows' withheld labels), on the flow's view of the pixels. It depends on the prepared data only, so
    it is fitted once per data set and kept beside its shards (on MNIST the fit is ~17 s of a ~26 s evaluation);
    where that directory is read-only it is fitted every time."""
    path = prepared.root / JUDGE_FILE
    try:
        with np.load(path) as f:
            return LinearJudge(f["coef"], f["intercept"], f["classes"])
    except (OSError, KeyError, ValueError):
        pass
    from sklearn.linear_model import LogisticRegression  # here, not above: importing it costs a kept judge ~0.6 s
    from threadpoolctl import threadpool_limits

    xs, ys = zip(*(load_split(prepared, s) for s in ("labeled", "val", "unlabeled")))
    y = np.concatenate([*ys[:2], load_unlabeled_labels(prepared)])
    x = flow_view(prepared, np.concatenate(xs))
    with threadpool_limits(limits=1):  # faster than two threads on MNIST on 2 cores (17 vs 22 s); leaves a core free
        fit = LogisticRegression(max_iter=1000).fit(x[y >= 0], y[y >= 0])
    judge = LinearJudge(fit.coef_, fit.intercept_, fit.classes_)
    try:
        import io

        from pipeline.core.atomic import atomic_write_bytes

        buf = io.BytesIO()
        np.savez(buf, coef=judge.coef, intercept=judge.intercept, classes=judge.classes)
        atomic_write_bytes(path, buf.getvalue())
    except OSError:
        pass
    return judge


def evaluate_accuracy_only(model_dir: str, prepared: Prepared, cfg: Config, device: str = "cpu") -> EvalResult:
    """For baselines (the labels-only flow): test metrics, calibrated on validation like the main model, and the
    unlabeled points' distances to its decision boundary. No OOD sets, samples, anchors or pictures: the main
    model's evaluation has them, and the anchors do not depend on the model."""
    ev = _Evaluation(model_dir, prepared, cfg, torch.device(device))
    ev.calibrate()
    ev.boundary()
    keep = (
        "test_accuracy",
        "test_nll",
        "test_ece",
        "test_accuracy_calibrated",
        "test_nll_calibrated",
        "test_ece_calibrated",
        "test_bpd",
        "unlabeled_boundary_distance_median",
        "variance_scale",
        "variance_scale_fitted",
    )
    metrics = {k: ev.out[k] for k in keep if k in ev.out}
    return EvalResult(metrics, ev.table, [], ev.scale, float("nan"), {}, ev.distances, ev.note, {}, ev.served)


def heldout_class_ood(model_dir: str, held: Prepared, cfg: Config, x_out: np.ndarray, device: str = "cpu"):
    """OOD rows of a model trained without one class (``pipeline.data.derive.without_class``): every score, the
    in-domain rows being the held-out data's test split, the out-of-domain rows ``x_out`` (the class's test rows),
    calibrated on its own validation split as a served model is. The rows (one per score), and each score's values
    on the in-domain and the out-of-domain rows."""
    ev = _Evaluation(model_dir, held, cfg, torch.device(device))
    ev.calibrate()
    test = ev.scores(ev.x["test"], ev.enc["test"])
    out = ev.scores(x_out, ev.encode(x_out, np.full(len(x_out), -1)))
    rows = [{"score": name, **M.ood_report(test[name], out[name])} for name in test]
    return rows, test, out


@torch.no_grad()
def predict_classes(model_dir: str, x: np.ndarray, batch_size: int = 512, device: str = "cpu") -> np.ndarray:
    """The model's predicted class of each row (argmax of the posterior)."""
    model, spec = load_model(model_dir, map_location=device)
    model.eval()
    dev = torch.device(device)
    e = encode(model, x, np.full(len(x), -1), levels=levels_of(spec), device=dev, batch_size=batch_size)
    return model.mixture.posterior(e.z).argmax(1).numpy()


def evaluate_checkpoint(
    checkpoint, prepared: Prepared, cfg: Config, accuracy_only: bool = False, background=None, anchors: bool = True
):
    """Fetch a Ray Train checkpoint, wherever it is stored, and evaluate it (run it through
    :func:`evaluation_task` to place it on a GPU when training used GPUs); ``background``: the checkpoint of the
    ``eval.ood_background`` model."""
    device = "cuda" if cfg.train.use_gpu else "cpu"
    with checkpoint.as_directory() as d:
        if accuracy_only:
            return evaluate_accuracy_only(d, prepared, cfg, device=device)
        if background is None:
            return evaluate_model(d, prepared, cfg, device=device, anchors=anchors)
        with background.as_directory() as b:
            return evaluate_model(d, prepared, cfg, device=device, background_dir=b, anchors=anchors)


def run_where_trained(cfg: Config, fn, *args, **kw):
    """``fn(*args, **kw)`` where the model trained: in this process after training in it (``train.num_workers =
    0``), else as a Ray task on the workers' resources (:func:`evaluation_task`)."""
    if cfg.train.num_workers == 0:
        return fn(*args, **kw)
    import ray

    return ray.get(evaluation_task(cfg, fn).remote(*args, **kw))


def evaluate_where_trained(checkpoint, prepared: Prepared, cfg: Config, accuracy_only: bool = False, **kw):
    """:func:`evaluate_checkpoint` where the model trained (:func:`run_where_trained`)."""
    return run_where_trained(cfg, evaluate_checkpoint, checkpoint, prepared, cfg, accuracy_only, **kw)


def on_checkpoint(fn, checkpoint, cfg: Config, *args):
    """``fn(directory, *args, device=...)`` on a fetched Ray Train checkpoint (for :func:`evaluation_task`)."""
    with checkpoint.as_directory() as d:
        return fn(d, *args, device="cuda" if cfg.train.use_gpu else "cpu")


def evaluation_task(cfg: Config, fn=evaluate_checkpoint):
    """``fn`` (default :func:`evaluate_checkpoint`) as a Ray task with the resources of the training workers (a GPU
    share when they had one), scheduled outside any placement group (a sweep trial's group holds no CPU)."""
    import ray

    t = cfg.train
    gpus = float(t.gpus_per_worker) if t.use_gpu else 0.0
    return ray.remote(
        num_cpus=min(1.0, t.cpus_per_worker * max(1, t.num_workers)), num_gpus=gpus, scheduling_strategy="DEFAULT"
    )(fn)
