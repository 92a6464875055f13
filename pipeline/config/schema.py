"""The configuration schema: one dataclass per section (data, ingest, model, train, eval). The code is the source of
truth; YAML files and ``key=value`` overrides only change fields of it."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, is_dataclass
from typing import Any

from pipeline.config.fields import build
from pipeline.data.ingest import IngestSpec
from pipeline.data.spec import DataSpec


@dataclass
class ModelConfig:
    """The flow and the latent mixture. Vectors get the vector flow; images the multiscale image flow (``flow =
    "image"``) or the vector flow over their flattened pixels after the logit (``flow = "vector"``)."""

    flow: str = "image"  # images: "image" (multiscale RealNVP) | "vector" (MLP couplings on the flat pixels)
    # image flow (multiscale RealNVP, the paper's sizes)
    num_scales: int = 2
    mid_channels: int = 64
    num_blocks: int = 8
    norm: str = "batch"  # in the image flow's ResNets: "batch" (paper) | "act" (ActNorm, no batch statistics) | "none"
    # vector flow (RealNVP with MLP couplings; also flow = "vector" on images)
    num_couplings: int = 6
    hidden: int = 128
    depth: int = 2
    # latent Gaussian mixture
    means_scale: float = 1.0  # each mean coordinate ~ N(0, r^2); antipodal pair for two classes
    variance: float = 1.0  # component variance used in training
    per_class_variance: bool = False
    learn_means: bool = False
    learn_variance: bool = False
    learn_weights: bool = False
    class_weights: str = "uniform"  # "uniform" | "counts" (from the labeled class counts)


@dataclass
class TrainConfig:
    """The optimisation recipe, its length in optimizer steps, the fast path and the Ray Train scaling."""

    method: str = "flowgmm"  # "flowgmm" | "flowgmm_cons" | "supervised" (the flow on labels only)
    loss_form: str = "nll"  # "nll" (generative, all data) | "ce" (label-weighted cross-entropy, images)
    label_weight: float = 1.0
    unlabeled_weight: float = 1.0
    consistency_weight: float = 1.0  # used when method == "flowgmm_cons"
    consistency_ramp_steps: int = 500  # linear ramp of the weight from consistency_start_step
    consistency_start_step: int = 0  # no consistency term before this step (early pseudo-labels are mostly wrong)
    consistency_rows: str = "all"  # "all" (the paper: labeled and unlabeled rows) | "unlabeled"
    consistency_threshold: float = 0.0  # rows whose second-view posterior max is below this get no target
    steps: int = 2000  # optimizer steps in all (an epoch is one pass over a worker's unlabeled rows)
    eval_every: int = 200  # steps between validation + report (+ checkpoint); the last step always
    checkpoint_every: int = 1  # evaluation points between checkpoints; the last one always
    log_every: int = 200  # steps between progress lines
    lr: float = 1e-3
    weight_decay: float = 0.0
    lr_schedule: str = "cosine"  # "cosine" | "constant"
    warmup_steps: int = 50
    grad_clip: float = 100.0
    batch_rows: int = 0  # > 0: rows per step per worker (labeled + unlabeled, same mix); lr, warm-up, ramp scaled
    bf16: bool = False  # autocast to bfloat16; log-dets and the prior stay float32
    compile: str = "none"  # torch.compile unit: "none" | "couplings" | "full" (see pipeline/train/fastpath.py)
    compile_backend: str = "inductor"  # torch.compile backend ("eager" / "aot_eager": cheap CPU checks)
    channels_last: bool = False  # images: channels-last memory format in the coupling nets
    seed: int = 0
    num_workers: int = 0  # 0: train in the driver process (Ray Train local mode, no worker group to start)
    use_gpu: bool = False
    gpus_per_worker: float = 1.0  # with use_gpu; a fraction (e.g. 0.25) lets sweep trials share one GPU
    cpus_per_worker: float = 0.5  # on a 2-core machine leave a CPU for Ray Data reads; in the driver: its threads
    placement_strategy: str = "PACK"  # Train workers' placement group: PACK | SPREAD | STRICT_PACK | STRICT_SPREAD
    max_failures: int = 1
    inject_failure_at_step: int = -1  # testing fault tolerance: rank 1 kills itself once at this global step


@dataclass
class EvalConfig:
    baselines: bool = True  # labels-only flow, logistic regression, kNN and label spreading on the same split
    anchor_unlabeled: int = 20000  # label spreading: at most this many unlabeled rows (a seeded subsample)
    ood_percentile: float = 1.0  # log p(x) threshold: this percentile of validation log p(x)
    ece_bins: int = 15
    sample_temperature: float = 0.25
    figures: bool = True
    batch_size: int = 512


@dataclass
class Config:
    name: str = "digits"
    experiment: str = ""  # MLflow experiment; defaults to the data source
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
