"""Stage 3, results: evaluation and calibration of a trained model (``evaluate``), pictures (``figures``), MLflow
tracking (``tracking``), the served pyfunc model (``serving``), the model registry (``registry``), comparing runs
(``compare``) and batch scoring (``score``).

Imports ``pipeline.core``, ``pipeline.config``, ``pipeline.data`` and ``pipeline.train``; never Tune.
"""
