"""Time the two-moons learning recipe of tests/test_flowgmm_learning.py (a plain script, not a test).

    .venv/bin/python bench/bench_moons.py [--seeds 3] [--threads 1]

Prints, per seed, the seconds and test accuracy of FlowGMM (10 labels + 1000 unlabeled points) and of the same
flow trained on the 10 labels alone, plus the 1-NN agreement of FlowGMM's class-conditional samples; then the table
of bench/RESULTS.md (figures in ``bench/results/bench_moons.json``).
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.cli import add_dry_run, exit_if_dry_run  # noqa: E402
from bench.record import write_result  # noqa: E402


def _load_recipe():
    path = ROOT / "tests" / "test_flowgmm_learning.py"
    spec = importlib.util.spec_from_file_location("flowgmm_moons_recipe", path)
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    sys.modules[spec.name] = module  # dataclasses need the module registered
    spec.loader.exec_module(module)
    return module


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    add_dry_run(parser)
    return parser


def one_seed(recipe, seed: int) -> dict[str, float]:
    """FlowGMM and the labels-only twin on one seed: accuracies, seconds, the samples' 1-NN agreement."""
    start = time.perf_counter()
    result = recipe.train_moons(seed, semi_supervised=True)
    t_semi = time.perf_counter() - start
    start = time.perf_counter()
    baseline = recipe.train_moons(seed, semi_supervised=False)
    t_base = time.perf_counter() - start
    row = {"seed": seed, "flowgmm": result.accuracy, "labels_only": baseline.accuracy}
    row.update(agreement=recipe.sample_agreement(result, seed=seed), flowgmm_s=t_semi, labels_only_s=t_base)
    print(
        f"seed {seed}: FlowGMM acc {row['flowgmm']:.3f} ({t_semi:.1f} s)  labels-only acc {row['labels_only']:.3f} "
        f"({t_base:.1f} s)  sample 1-NN agreement {row['agreement']:.3f}",
        flush=True,
    )
    return row


def main(argv: list[str] | None = None) -> list[dict[str, float]]:
    args = build_parser().parse_args(argv)
    exit_if_dry_run(args)
    import torch

    torch.set_num_threads(args.threads)
    recipe = _load_recipe()
    rows = [one_seed(recipe, seed) for seed in range(args.seeds)]
    lines = [
        f"| seed | FlowGMM | same flow, 10 labels only | 1-NN agreement of class-conditional samples | seconds "
        f"({args.threads} thread(s)) |",
        "|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['seed']} | {r['flowgmm']:.3f} | {r['labels_only']:.3f} | {r['agreement']:.3f} | "
        f"{r['flowgmm_s']:.1f} + {r['labels_only_s']:.1f} |"
        for r in rows
    ]
    lines.append(
        f"| median | {statistics.median(r['flowgmm'] for r in rows):.3f} | "
        f"{statistics.median(r['labels_only'] for r in rows):.3f} | "
        f"{statistics.median(r['agreement'] for r in rows):.3f} | |"
    )
    write_result("bench_moons", {"threads": args.threads, "seeds": rows}, "\n".join(lines))
    return rows


if __name__ == "__main__":
    main()
