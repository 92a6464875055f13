"""What data set to prepare: :class:`DataSpec`, the ``data`` section of an experiment's configuration."""

from __future__ import annotations

from dataclasses import dataclass

# default sizes for the paper's MNIST setting (1k labels, 1k validation)
PAPER_DEFAULTS = {"mnist": (1000, 1000), "fashion_mnist": (1000, 1000)}


@dataclass
class DataSpec:
    """The ``data`` section. ``n_labeled`` / ``n_val`` left unset (None) size the splits from the labels a source has:
    validation takes 20% of each class's labeled rows (at least 1), training every other labeled row; the shipped
    experiments set both. ``path``, ``test_path``, ``feature_columns``, ``label_column``, ``image_column`` and
    ``num_classes`` are read only by ``source = "table"`` (:func:`table_field_problem`)."""

    # moons|circles|eight_gaussians|pinwheel|digits|breast_cancer|wine|iris|mnist|fashion_mnist|cifar10|svhn|table
    source: str = "digits"
    n_labeled: int | None = None  # class-balanced labeled training rows (None: every labeled row not in validation)
    n_val: int | None = None  # labeled validation rows, calibration (None: 20% of each class's labeled rows, >= 1)
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


TABLE_ONLY = ("path", "test_path", "image_column", "feature_columns", "num_classes")


def table_field_problem(spec: DataSpec) -> str | None:
    """The rule between the table source's fields, as a one-line problem (None when fine): ``source = "table"`` needs
    ``data.path``; the table-only fields are rejected on other sources.

    >>> table_field_problem(DataSpec(source="digits", path="my.csv"))
    "data.path='my.csv' is only for data.source='table' (source is 'digits')"
    """
    if spec.source == "table":
        return None if spec.path else "data.source='table' needs data.path (a Parquet or CSV file), e.g. --table my.csv"
    for key in TABLE_ONLY:
        value = getattr(spec, key)
        if value not in (None, (), ""):
            return f"data.{key}={value!r} is only for data.source='table' (source is {spec.source!r})"
    return None


def check_table_fields(spec: DataSpec) -> None:
    """:func:`table_field_problem` as a ConfigError, for callers that check before any work."""
    from pipeline.config.fields import ConfigError  # lazily: pipeline.config imports this module

    if (problem := table_field_problem(spec)) is not None:
        raise ConfigError(problem)
