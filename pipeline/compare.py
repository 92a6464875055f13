"""Compare the SSL runs of an MLflow experiment, or train a recipe over seeds first
(``pipeline.study``; ``--help`` for the options).

    python pipeline/compare.py --experiment flowgmm-digits
"""

import os
import sys

if not __package__:  # `python pipeline/compare.py`: import the project from this checkout (repository root first)
    sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

from pipeline.core.stack import require_stack  # noqa: E402

require_stack()  # one line, not a traceback, from a Python without the stack (outside .venv)

from pipeline.study import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
