"""Serve a registered FlowGMM online with Ray Serve (``pipeline.results.serve_app``; ``--help`` for the options):
JSON rows in; per row the label, calibrated probabilities, log p(x), the OOD flag and the model version.

    python pipeline/serve.py --model models:/flowgmm-digits@champion       # http://127.0.0.1:8000/, Ctrl-C stops
"""

import os
import sys

if not __package__:  # `python pipeline/serve.py`: import the project from this checkout (repository root first)
    sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

from pipeline.core.stack import require_stack  # noqa: E402

require_stack()  # one line, not a traceback, from a Python without the stack (outside .venv)

from pipeline.results.serve_app import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
