"""What data set to prepare: :class:`DataSpec`, the ``data`` section of an experiment's configuration."""

from __future__ import annotations

from dataclasses import dataclass

# default sizes for the paper's MNIST setting (1k labels, 1k validation)
PAPER_DEFAULTS = {"mnist": (1000, 1000), "fashion_mnist": (1000, 1000)}


@dataclass
class DataSpec:
    # moons|circles|eight_gaussians|pinwheel|digits|breast_cancer|wine|iris|mnist|fashion_mnist|cifar10|svhn|table
    source: str = "digits"
    n_labeled: int = 100  # class-balanced labeled training rows
    n_val: int = 100  # labeled validation rows (calibration, model selection)
    n_unlabeled: int | None = None  # cap on unlabeled rows (None = all the rest)
    n_test: int | None = None  # cap on test rows (None = all)
    n_points: int = 1000  # size of generated 2-D sets (train pool); their test set uses another seed
    noise: float = 0.05  # for the 2-D generators
    seed: int = 0
    shard_rows: int = 2048  # rows per Parquet shard
    ood: tuple[str, ...] = ()  # test splits of other sources, e.g. ("fashion_mnist", "notmnist")
    data_dir: str | None = None  # falls back to $FLOWGMM_DATA
    path: str | None = None  # table source: Parquet or CSV file (train pool)
    test_path: str | None = None
    feature_columns: tuple[str, ...] = ()  # table source; empty = all but label (and "id")
    label_column: str = "label"
    image_column: str | None = None
    num_classes: int | None = None  # table source: if None inferred from labels

    @classmethod
    def paper(cls, source: str = "mnist", **kw) -> "DataSpec":
        """The paper's setting: MNIST/FashionMNIST with 1k labels and a 1k validation split."""
        n_lab, n_val = PAPER_DEFAULTS.get(source, (cls.n_labeled, cls.n_val))
        return cls(source=source, **{"n_labeled": n_lab, "n_val": n_val, **kw})
