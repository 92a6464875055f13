"""Stage 1, data: sources -> class-balanced splits -> Parquet shards + manifest -> Ray Data ingest.

- ``sources/``: one module per family of data sets (generated 2-D, scikit-learn, IDX, CIFAR/SVHN, user tables).
- ``splits``: labeled / validation / unlabeled selection.
- ``shards``: the Parquet schema, writing and reading a split. ``manifest``: :class:`Prepared`, the handle.
- ``prepare``: ``prepare(spec, home)``, idempotent and atomic. ``ingest``: Ray Datasets for training;
  ``stream``: the per-worker batch stream (rows on the device, or streamed); ``augment``: batch augmentation.

What to prepare and how training reads it are configuration: :class:`pipeline.config.DataSpec`,
:class:`pipeline.config.IngestSpec`. Imports only ``pipeline.core`` and ``pipeline.config`` (never training, results
or Tune).
"""

import sys

from pipeline.core.stack import require_stack

if sys.argv[:1] == ["-m"]:  # `python -m pipeline.data`: this package imports torch before __main__ runs
    require_stack()

from pipeline.data.ingest import Step, build_datasets, data_config, steps_per_epoch  # noqa: E402
from pipeline.data.manifest import Prepared  # noqa: E402
from pipeline.data.prepare import prepare  # noqa: E402
from pipeline.data.shards import load_split, load_unlabeled_labels  # noqa: E402
from pipeline.data.stream import SSLStream  # noqa: E402

__all__ = [
    "Prepared",
    "prepare",
    "load_split",
    "load_unlabeled_labels",
    "SSLStream",
    "Step",
    "build_datasets",
    "data_config",
    "steps_per_epoch",
]
