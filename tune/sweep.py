"""Hyperparameter sweeps of FlowGMM / FlowGMM-cons with Ray Tune over the pipeline's own Ray Train loop
(``tune.driver``; ``--help`` for the options).

    python tune/sweep.py --config moons --smoke --num-samples 8
    ray job submit --working-dir . -- python tune/sweep.py --config digits
"""

import os
import sys

if not __package__:  # `python tune/sweep.py`: import the project from this checkout (repository root first)
    sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

from pipeline.core.stack import require_stack  # noqa: E402

require_stack()  # one line, not a traceback, from a Python without the stack (outside .venv)

from tune.driver import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
