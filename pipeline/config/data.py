"""The ``data`` and ``ingest`` sections of a configuration: :class:`DataSpec` (what data set to prepare) and
:class:`IngestSpec` (how training reads it). Each field's annotation carries its rule (``pipeline.config.rules``);
``pipeline.data`` takes these classes from here.

>>> DataSpec.paper("mnist").n_labeled, IngestSpec().unlabeled_batch
(1000, 32)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal

from pipeline.config.rules import Known, Range, Text

# default sizes for the paper's MNIST setting (1k labels, 1k validation)
PAPER_DEFAULTS = {"mnist": (1000, 1000), "fashion_mnist": (1000, 1000)}


@dataclass
class DataSpec:
    """The ``data`` section. ``n_labeled`` / ``n_val`` left unset (None) size the splits from the labels a source has:
    validation takes 20% of each class's labeled rows (at least 1), training every other labeled row; the shipped
    experiments set both. ``path``, ``test_path``, ``feature_columns``, ``label_column``, ``image_column`` and
    ``num_classes`` are read only by ``source = "table"``, ``path``, ``test_path``, ``unlabeled_dir``,
    ``image_size`` and ``image_mode`` by ``source = "images"`` (:func:`pipeline.config.rules.table_field_problem`)."""

    # moons|circles|eight_gaussians|pinwheel|digits|breast_cancer|wine|iris|mnist|fashion_mnist|cifar10|svhn|table|
    # images
    source: Annotated[str, Known("sources")] = "digits"
    # class-balanced labeled training rows (None: every labeled row not in validation)
    n_labeled: Annotated[int | None, Range(ge=1)] = None
    # labeled validation rows, calibration (None: 20% of each class's labeled rows, >= 1)
    n_val: Annotated[int | None, Range(ge=1)] = None
    n_unlabeled: Annotated[int | None, Range(ge=1)] = None  # cap on unlabeled rows (None = all the rest)
    n_test: Annotated[int | None, Range(ge=1)] = None  # cap on test rows (None = all)
    # size of generated 2-D sets (train pool); their test set uses another seed
    n_points: Annotated[int, Range(ge=1)] = 1000
    noise: Annotated[float, Range(ge=0)] = 0.05  # for the 2-D generators
    seed: Annotated[int, Range(ge=0, lt=2**32)] = 0
    shard_rows: Annotated[int, Range(ge=1)] = 2048  # rows per Parquet shard
    # test splits of other sources, e.g. ("fashion_mnist", "notmnist")
    ood: Annotated[tuple[str, ...], Known("ood_sources")] = ()
    data_dir: Annotated[str | None, Text()] = None  # falls back to $FLOWGMM_DATA
    path: Annotated[str | None, Text()] = None  # table source: Parquet or CSV file (train pool)
    test_path: Annotated[str | None, Text()] = None
    feature_columns: Annotated[tuple[str, ...], Text()] = ()  # table source; empty = all but label (and "id")
    label_column: Annotated[str, Text()] = "label"
    image_column: Annotated[str | None, Text()] = None
    num_classes: Annotated[int | None, Range(ge=2)] = None  # table source: if None inferred from labels
    # images source (--images DIR: one subfolder per class): the subfolder of unlabeled images
    unlabeled_dir: Annotated[str, Text()] = "unlabeled"
    # images source: the common size, (S,) square or (H, W); empty = the most common size of the folder's images
    image_size: Annotated[tuple[int, ...], Range(ge=1)] = ()
    image_mode: Literal["auto", "L", "RGB"] = "auto"  # images source: grey (L) or colour; auto = grey if all are

    @classmethod
    def paper(cls, source: str = "mnist", **kw) -> "DataSpec":
        """The paper's setting: MNIST/FashionMNIST with 1k labels and a 1k validation split."""
        n_lab, n_val = PAPER_DEFAULTS.get(source, (cls.n_labeled, cls.n_val))
        return cls(source=source, **{"n_labeled": n_lab, "n_val": n_val, **kw})


@dataclass
class IngestSpec:
    # rows per step per worker; None: sized from the data (pipeline/train/budget.py)
    labeled_batch: Annotated[int | None, Range(ge=1)] = None
    unlabeled_batch: Annotated[int | None, Range(ge=1)] = None
    two_views: bool = True
    augment: bool = True
    translate: Annotated[int, Range(ge=0)] = 2  # pixels (images)
    pad_mode: Literal["reflect", "zero"] = "reflect"  # "reflect" | "zero" (images)
    noise_std: Annotated[float, Range(ge=0)] = 0.05  # vectors, in standardized units (multiplied by feature_std)
    augment_labeled: bool = True  # also augment the labeled batch (one view)
    labeled_mode: Literal["replicate", "split"] = "replicate"  # or "split"
    prefetch_batches: Annotated[int, Range(ge=0)] = 2
    preserve_order: bool = True  # deterministic block order and split assignment (Ray Data)
    read_batch: Annotated[int, Range(ge=1)] = 1024  # rows per Ray Data batch pulled from the stream (re-batched)
    # rows reshuffled per epoch on each worker (Ray Data's local shuffle, seeded by seed/epoch/rank; 0 = off): a
    # materialized unlabeled set is the same blocks in the same order every epoch (the file shuffle acts on reads)
    shuffle_buffer: Annotated[int, Range(ge=0)] = 4096
    # one Ray worker process per Parquet read task: Ray reuses a worker's lease for the next task of the same kind,
    # so short reads pile onto one node despite Ray Data's SPREAD placement; with this they spread over the nodes
    # (sharing the read bandwidth of a cluster) at the cost of a worker start (~1 s) per read task
    spread_reads: bool = False
    # a worker's share of the unlabeled rows up to this size is pulled once onto the training device and batched by
    # index there (pipeline.data.stream); larger shares stream from Ray Data every epoch
    in_memory_bytes: Annotated[int, Range(ge=0)] = 2 * 1024**3
