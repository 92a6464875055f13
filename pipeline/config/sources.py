"""The data source names a configuration may give (``data.source``, ``data.ood``), defined once: ``pipeline.data``
loads them, ``pipeline.config.rules`` checks them.

>>> "moons" in GENERATED and "table" in ALL_SOURCES and "notmnist" in TEST_ONLY
True
"""

from __future__ import annotations

GENERATED = ("moons", "circles", "eight_gaussians", "pinwheel")  # seeded 2-D sets (pipeline.data.sources.generated)
SKLEARN = ("digits", "breast_cancer", "wine", "iris")  # bundled with scikit-learn (pipeline.data.sources.bundled)
IDX_SOURCES = ("mnist", "fashion_mnist", "notmnist")  # IDX .gz files in a data directory (sources.idx)
TEST_ONLY = ("notmnist",)  # a test split only (out-of-domain detection)
FILE_SOURCES = IDX_SOURCES + ("cifar10", "svhn")  # read from a data directory
# "table": a user's Parquet or CSV file; "images": a user's image folder (one subfolder per class)
ALL_SOURCES = GENERATED + SKLEARN + FILE_SOURCES + ("table", "images")
