"""Benchmarks (``python bench/<name>.py``; figures in ``bench/RESULTS.md``) and ``bench.harness``, the code that
benchmarks and tests run inside Ray workers. Not part of the product: nothing in ``flowgmm``, ``pipeline`` or
``tune`` imports it."""
