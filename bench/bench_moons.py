"""Time the two-moons learning recipe of tests/test_flowgmm_learning.py (a plain script, not a test).

    .venv/bin/python bench/bench_moons.py [--seeds 3] [--threads 1]

Prints, per seed, the seconds and test accuracy of FlowGMM (10 labels + 1000 unlabeled points) and of the same
flow trained on the 10 labels alone, plus the 1-NN agreement of FlowGMM's class-conditional samples.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _load_recipe():
    path = ROOT / "tests" / "test_flowgmm_learning.py"
    spec = importlib.util.spec_from_file_location("flowgmm_moons_recipe", path)
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    sys.modules[spec.name] = module  # dataclasses need the module registered
    spec.loader.exec_module(module)
    return module


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    recipe = _load_recipe()
    semi_acc, base_acc, total = [], [], 0.0
    for seed in range(args.seeds):
        start = time.perf_counter()
        result = recipe.train_moons(seed, semi_supervised=True)
        t_semi = time.perf_counter() - start
        start = time.perf_counter()
        baseline = recipe.train_moons(seed, semi_supervised=False)
        t_base = time.perf_counter() - start
        agreement = recipe.sample_agreement(result, seed=seed)
        total += t_semi + t_base
        semi_acc.append(result.accuracy)
        base_acc.append(baseline.accuracy)
        print(
            f"seed {seed}: FlowGMM acc {result.accuracy:.3f} ({t_semi:.1f} s)  "
            f"labels-only acc {baseline.accuracy:.3f} ({t_base:.1f} s)  sample 1-NN agreement {agreement:.3f}",
            flush=True,
        )
    print(
        f"median accuracy: FlowGMM {statistics.median(semi_acc):.3f}, labels-only {statistics.median(base_acc):.3f}; "
        f"total training {total:.1f} s ({args.threads} thread(s))"
    )


if __name__ == "__main__":
    main()
