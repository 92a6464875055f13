"""Score new data in batch with a registered FlowGMM: label, class name, calibrated probabilities, log p(x), OOD flag
(``pipeline.results.score``; ``--help`` for the options). Input and output are paths or URIs (``s3://``...); the
output is a directory of Parquet (or CSV) files written by Ray Data, never collected on the driver.

    python pipeline/score.py --model models:/flowgmm-digits@champion --input new.parquet --output scored.parquet
"""

import os
import sys

if not __package__:  # `python pipeline/score.py`: import the project from this checkout (repository root first)
    sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

from pipeline.core.stack import require_stack  # noqa: E402

require_stack()  # one line, not a traceback, from a Python without the stack (outside .venv)

from pipeline.results.score import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
