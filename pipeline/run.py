"""flowgmm-ray's main job: prepare the data, train FlowGMM (or FlowGMM-cons) data-parallel with Ray Train,
evaluate and calibrate, and record everything in MLflow (``pipeline.job``; ``--help`` for the options).

    python pipeline/run.py                                  # embedded default: digits, local Ray, local MLflow
    ray job submit --working-dir . -- python pipeline/run.py --config mnist
"""

import os
import sys

if not __package__:  # `python pipeline/run.py`: import the project from this checkout (repository root first)
    sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

from pipeline.core.stack import require_stack  # noqa: E402

require_stack()  # one line, not a traceback, from a Python without the stack (outside .venv)

from pipeline.job import cli  # noqa: E402

if __name__ == "__main__":
    cli()  # main(), then Ray shut down, the streams flushed and the interpreter's teardown skipped
