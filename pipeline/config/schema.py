"""The configuration schema: one dataclass per section (data, ingest, model, train, eval). The code is the source of
truth; YAML files and ``key=value`` overrides only change fields of it."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, is_dataclass
from typing import Annotated, Any, Literal

from pipeline.config.data import DataSpec, IngestSpec
from pipeline.config.fields import build
from pipeline.config.rules import NAME, Range, Text


@dataclass
class ModelConfig:
    """The flow and the latent mixture. Vectors get the vector flow; images the multiscale image flow (``flow =
    "image"``) or the vector flow over their flattened pixels after the logit (``flow = "vector"``)."""

    # images: "image" (multiscale RealNVP) | "vector" (MLP couplings on the flat pixels)
    flow: Literal["image", "vector"] = "image"
    # image flow (multiscale RealNVP, the paper's sizes)
    num_scales: Annotated[int, Range(ge=1)] = 2
    mid_channels: Annotated[int, Range(ge=1)] = 64
    num_blocks: Annotated[int, Range(ge=1)] = 8
    # in the image flow's ResNets: "batch" (paper) | "act" (ActNorm, no batch statistics) | "none"
    norm: Literal["batch", "act", "none"] = "batch"
    # vector flow (RealNVP with MLP couplings; also flow = "vector" on images)
    # None: sized from the data (pipeline/train/budget.py)
    num_couplings: Annotated[int | None, Range(ge=1)] = None
    hidden: Annotated[int | None, Range(ge=1)] = None
    depth: Annotated[int, Range(ge=1)] = 2
    # "affine" (RealNVP) | "spline" (rational-quadratic splines, Durkan et al. 2019; flowgmm/splines.py)
    coupling: Literal["affine", "spline"] = "affine"
    bins: Annotated[int, Range(ge=2)] = 8  # spline couplings: bins on [-tail_bound, tail_bound]
    tail_bound: Annotated[float, Range(gt=0)] = 4.0  # spline couplings: the identity outside (standardized units)
    # a mixing layer before every pair of couplings: "none" | "permute" | "lu" (learned); None: the coupling's own
    # default (affine: none, spline: lu; flowgmm/flows.py)
    mixing: Literal["none", "permute", "lu"] | None = None
    # latent Gaussian mixture
    means_scale: Annotated[float, Range(gt=0)] = 1.0  # each mean coordinate ~ N(0, r^2); antipodal pair for two classes
    variance: Annotated[float, Range(gt=0)] = 1.0  # component variance used in training
    per_class_variance: bool = False
    learn_means: bool = False
    learn_variance: bool = False
    learn_weights: bool = False
    class_weights: Literal["uniform", "counts"] = "uniform"  # "uniform" | "counts" (from the labeled class counts)


@dataclass
class TrainConfig:
    """The optimisation recipe, its length in optimizer steps, the fast path and the Ray Train scaling."""

    # "flowgmm" | "flowgmm_cons" | "labels_only" (the same flow on the labeled rows only; pipeline/config/methods.py)
    method: Literal["flowgmm", "flowgmm_cons", "labels_only"] = "flowgmm"
    # "nll" (generative, all data) | "ce" (label-weighted cross-entropy, images)
    loss_form: Literal["nll", "ce"] = "nll"
    label_weight: Annotated[float, Range(ge=0)] = 1.0
    unlabeled_weight: Annotated[float, Range(ge=0)] = 1.0
    consistency_weight: Annotated[float, Range(ge=0)] = 1.0  # used when method == "flowgmm_cons"
    # The budget and schedule below: None (the default) sizes the field from the data (pipeline/train/budget.py),
    # once the data is prepared; a value is used as given.
    consistency_ramp_steps: Annotated[int | None, Range(ge=0)] = None  # linear ramp of the weight from the start
    # no consistency term before this step (early pseudo-labels are mostly wrong)
    consistency_start_step: Annotated[int | None, Range(ge=0)] = None
    consistency_rows: Literal["all", "unlabeled"] = "all"  # "all" (the paper: labeled and unlabeled rows) | "unlabeled"
    # rows whose second-view posterior max is below this get no target
    consistency_threshold: Annotated[float, Range(ge=0, lt=1)] = 0.0
    # optimizer steps at most (an epoch is one pass over a worker's unlabeled rows)
    steps: Annotated[int | None, Range(ge=1)] = None
    # stop once the smoothed validation score has not improved for this many evaluation points (0: never)
    patience: Annotated[int | None, Range(ge=0)] = None
    min_steps: Annotated[int | None, Range(ge=0)] = None  # never stop on validation before this step
    # the weight on the past in the smoothed validation score the stop reads (0: each evaluation's own score)
    stop_smoothing: Annotated[float, Range(ge=0, lt=1)] = 0.5
    # steps between validation + report (+ checkpoint); the last step always
    eval_every: Annotated[int | None, Range(ge=1)] = None
    checkpoint_every: Annotated[int, Range(ge=1)] = 1  # evaluation points between checkpoints; the last one always
    log_every: Annotated[int | None, Range(ge=1)] = None  # steps between progress lines
    lr: Annotated[float, Range(gt=0)] = 1e-3
    weight_decay: Annotated[float, Range(ge=0)] = 0.0
    lr_schedule: Literal["cosine", "constant"] = "cosine"  # "cosine" | "constant"
    warmup_steps: Annotated[int | None, Range(ge=0)] = None
    grad_clip: Annotated[float, Range(gt=0, off=0)] = 100.0
    # > 0: rows per step per worker (labeled + unlabeled, same mix); lr, warm-up, ramp scaled
    batch_rows: Annotated[int, Range(ge=2, off=0)] = 0
    bf16: bool = False  # autocast to bfloat16; log-dets and the prior stay float32
    # torch.compile of the whole model: "none" | "full" (see pipeline/train/fastpath.py)
    compile: Literal["none", "full"] = "none"
    # torch.compile backend ("eager" / "aot_eager": cheap CPU checks)
    compile_backend: Annotated[str, Text(pattern=NAME)] = "inductor"
    channels_last: bool = False  # images: channels-last memory format in the coupling nets
    seed: Annotated[int, Range(ge=0, lt=2**32)] = 0
    # 0: train in the driver process (Ray Train local mode, no worker group to start)
    num_workers: Annotated[int, Range(ge=0)] = 0
    use_gpu: bool = False
    # with use_gpu; a fraction (e.g. 0.25) lets sweep trials share one GPU
    gpus_per_worker: Annotated[float, Range(gt=0)] = 1.0
    # on a 2-core machine leave a CPU for Ray Data reads; in the driver: its threads
    cpus_per_worker: Annotated[float, Range(gt=0)] = 0.5
    # Train workers' placement group: PACK | SPREAD | STRICT_PACK | STRICT_SPREAD
    placement_strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = "PACK"
    max_failures: Annotated[int, Range(ge=0, off=-1, means="no limit")] = 1
    # testing fault tolerance: rank 1 kills itself once at this global step
    inject_failure_at_step: Annotated[int, Range(ge=0, off=-1)] = -1


@dataclass
class EvalConfig:
    baselines: bool = True  # labels-only flow, logistic regression, kNN and label spreading on the same split
    # label spreading: at most this many unlabeled rows (a seeded subsample)
    anchor_unlabeled: Annotated[int, Range(ge=1)] = 20000
    # the labels-only flow of a recipe that trains a fixed length (train.patience = 0) stops on validation: evaluated
    # twice as often as the main model, stopped after this many evaluation points without a better score, its best
    # score's checkpoint evaluated (pipeline.results.baselines.labels_only_config); 0: the recipe's length and pick
    labels_only_patience: Annotated[int, Range(ge=0)] = 2
    # the served out-of-domain score (flowgmm.ood): auto = the measured default of the data kind (flowgmm.ood.DEFAULT);
    # complexity needs images
    ood_score: Literal["auto", "log_px", "latent", "complexity", "max_prob"] = "auto"
    # is_ood: the served score below this quantile of the validation rows' (their false-positive rate)
    ood_fpr: Annotated[float, Range(gt=0, lt=1)] = 0.01
    # a second model on every class but one (class train.seed mod K, at least 3 classes), the same recipe: that
    # class's test rows scored as out of domain by every score (doubles the training time; off by default)
    ood_heldout: bool = False
    # a background model of the same recipe on training rows with a share ood_background_rate of their cells
    # randomised; adds the likelihood-ratio score llr = log p(x) - log p_background(x) to the evaluation (not served)
    ood_background: bool = False
    ood_background_rate: Annotated[float, Range(gt=0, lt=1)] = 0.2
    ece_bins: Annotated[int, Range(ge=1)] = 15
    sample_temperature: Annotated[float, Range(gt=0)] = 0.25
    figures: bool = True
    batch_size: Annotated[int, Range(ge=1)] = 512
    # the checkpoint evaluated, served and registered: the last step's (the recipe's length is chosen on validation)
    # or the one with the best validation score (on a small validation split, a noisy pick biased to early steps)
    checkpoint: Literal["last", "best"] = "last"


@dataclass
class Config:
    name: Annotated[str, Text(pattern=NAME)] = "digits"
    experiment: Annotated[str, Text()] = ""  # MLflow experiment; defaults to the data source
    data: DataSpec = field(default_factory=DataSpec)
    ingest: IngestSpec = field(default_factory=IngestSpec)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Config":
        return build(cls, d, "")

    def flat(self) -> dict[str, Any]:
        """Dotted keys -> values, as logged to MLflow params."""
        out: dict[str, Any] = {}

        def walk(prefix: str, obj: Any) -> None:
            for f in fields(obj):
                v = getattr(obj, f.name)
                key = f"{prefix}{f.name}"
                if is_dataclass(v):
                    walk(key + ".", v)
                else:
                    out[key] = v

        walk("", self)
        return out
