"""What data set to prepare: :class:`DataSpec`, the ``data`` section of an experiment's configuration."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated

if TYPE_CHECKING:  # the fields' rules, read by pipeline.config.rules (which resolves these names itself)
    from pipeline.config.rules import Known, Range, Text

# default sizes for the paper's MNIST setting (1k labels, 1k validation)
PAPER_DEFAULTS = {"mnist": (1000, 1000), "fashion_mnist": (1000, 1000)}


@dataclass
class DataSpec:
    """The ``data`` section. ``n_labeled`` / ``n_val`` left unset (None) size the splits from the labels a source has:
    validation takes 20% of each class's labeled rows (at least 1), training every other labeled row; the shipped
    experiments set both. ``path``, ``test_path``, ``feature_columns``, ``label_column``, ``image_column`` and
    ``num_classes`` are read only by ``source = "table"`` (:func:`table_field_problem`)."""

    # moons|circles|eight_gaussians|pinwheel|digits|breast_cancer|wine|iris|mnist|fashion_mnist|cifar10|svhn|table
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
