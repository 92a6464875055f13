"""Density of the vector flow on tables: affine (RealNVP) vs rational-quadratic spline couplings (a plain script).

    .venv/bin/python bench/bench_vector_flow.py                   # affine vs spline, every table, 3 seeds (1 thread)
    .venv/bin/python bench/bench_vector_flow.py --tables breast_cancer,wine,clusters24 \
        --flows spline/none,spline/permute,affine/lu --name vector_flow_mixing       # the mixing layers' ablation
    .venv/bin/python bench/bench_vector_flow.py --tables wine --seeds 1 --steps-scale 0.2    # seconds

Each fit is ``flowgmm.vector_flow`` as the product builds it (``standardize`` from the training rows, alternating
half masks, ``num_couplings``/``hidden``/``depth`` as the breast_cancer recipe: 6/128/2; ``--flows`` names the
couplings and, after a slash, the layer before every pair of couplings if not the product's default: ``none``,
``permute`` (fixed) or ``lu`` (learned ``P L U x + b``, the spline default)) with a standard normal base,
trained by maximum likelihood with Adam (lr 1e-3, batch 256 or the whole training split if smaller) for a fixed
number of steps per table; every ``eval_every`` steps the validation NLL is computed and the test NLL at the best
validation step is reported (early stopping; small tables overfit within a few hundred steps). Rows are split
60/20/20 (train/val/test) per seed; the seed also sets the initialisation. NLL is in nats per row in the raw data
space (the standardization's log-det included). ``CPU ms/step`` is the median CPU time of one training step
(forward, backward, Adam; ``time.thread_time`` with one torch thread, so other processes on shared cores do not
inflate it); ``beyond B`` is the share of standardized test values outside the spline's tail bound (they pass
through the spline's identity tails).

Tables: scikit-learn's breast_cancer (569 x 30) and wine (178 x 13); ``clusters24``, make_classification with 20,000
rows, 24 features (16 informative, 8 noise), 2 classes x 2 clusters; ``moons``, make_moons with 4,000 rows, noise 0.1.
Writes ``bench/results/NAME.json`` (``--name``, default ``vector_flow``) and prints the Markdown block through
``bench/record.py`` (``FLOWGMM_BENCH_RESULTS=/tmp/x`` for a check that is no result).
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
if not __package__:  # `python bench/bench_vector_flow.py`: import the project from this checkout
    sys.path[0] = str(ROOT)

from bench.cli import add_dry_run, exit_if_dry_run  # noqa: E402
from bench.record import write_result  # noqa: E402
from flowgmm import vector_flow  # noqa: E402
from flowgmm.bijections import Sequential  # noqa: E402
from flowgmm.flows import COUPLINGS, DEFAULT_MIXING, MIXINGS  # noqa: E402

LOG_2PI = math.log(2 * math.pi)


def _breast_cancer(seed: int) -> np.ndarray:
    from sklearn.datasets import load_breast_cancer

    return load_breast_cancer().data


def _wine(seed: int) -> np.ndarray:
    from sklearn.datasets import load_wine

    return load_wine().data


def _clusters24(seed: int) -> np.ndarray:
    from sklearn.datasets import make_classification

    x, _ = make_classification(
        n_samples=20_000,
        n_features=24,
        n_informative=16,
        n_redundant=0,
        n_repeated=0,
        n_classes=2,
        n_clusters_per_class=2,
        random_state=seed,
    )
    return x


def _moons(seed: int) -> np.ndarray:
    from sklearn.datasets import make_moons

    return make_moons(n_samples=4_000, noise=0.1, random_state=seed)[0]


@dataclass(frozen=True)
class Table:
    load: Callable[[int], np.ndarray]
    steps: int
    eval_every: int


TABLES: dict[str, Table] = {
    "breast_cancer": Table(_breast_cancer, steps=500, eval_every=10),
    "wine": Table(_wine, steps=400, eval_every=10),
    "clusters24": Table(_clusters24, steps=2000, eval_every=100),
    "moons": Table(_moons, steps=2000, eval_every=100),
}


@dataclass
class Fit:
    table: str
    flow: str
    seed: int
    test_nll: float
    best_val_nll: float
    best_step: int
    cpu_seconds_per_step: float
    beyond_bound: float
    parameters: int


def _split(x: np.ndarray, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    order = np.random.default_rng(seed).permutation(len(x))
    n_train, n_val = int(0.6 * len(x)), int(0.2 * len(x))
    parts = np.split(x[order].astype(np.float32), [n_train, n_train + n_val])
    return tuple(torch.from_numpy(p) for p in parts)  # type: ignore[return-value]


def _nll(flow: Sequential, x: torch.Tensor) -> torch.Tensor:
    """Per-row negative log-likelihood under a standard normal base (nats)."""
    z, logdet = flow(x)
    return 0.5 * (z.square().sum(1) + z.shape[1] * LOG_2PI) - logdet


def _variant(flow: str) -> tuple[str, str | None]:
    """``"spline"`` -> ("spline", None: the product's default mixing); ``"affine/lu"`` -> ("affine", "lu")."""
    coupling, _, mixing = flow.partition("/")
    return coupling, mixing or None


def _fit(name: str, flow_name: str, seed: int, args: argparse.Namespace) -> Fit:
    table = TABLES[name]
    coupling, mixing = _variant(flow_name)
    train, val, test = _split(table.load(seed), seed)
    mean, std = train.mean(0), train.std(0).clamp_min(1e-6)
    torch.manual_seed(seed)
    flow = vector_flow(
        train.shape[1], args.num_couplings, args.hidden, args.depth, standardize=(mean, std),
        coupling=coupling, bins=args.bins, tail_bound=args.tail_bound, mixing=mixing,
    )  # fmt: skip
    opt = torch.optim.Adam(flow.parameters(), lr=args.lr)
    gen = torch.Generator().manual_seed(seed)
    batch = min(args.batch, len(train))
    steps = max(1, int(table.steps * args.steps_scale))
    best = (math.inf, math.inf, 0)  # (val, test, step)
    times = []
    for step in range(1, steps + 1):
        rows = torch.randint(len(train), (batch,), generator=gen)
        start = time.thread_time()  # CPU time of this thread (torch runs on it with 1 thread): robust to busy cores
        loss = _nll(flow, train[rows]).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        times.append(time.thread_time() - start)
        if not math.isfinite(loss.item()):
            raise FloatingPointError(f"{name} {flow_name} seed {seed}: non-finite loss at step {step}")
        if step % table.eval_every == 0 or step == steps:
            with torch.no_grad():
                v = _nll(flow, val).mean().item()
                if v < best[0]:
                    best = (v, _nll(flow, test).mean().item(), step)
    beyond = ((test - mean) / std).abs() > args.tail_bound
    return Fit(
        name,
        flow_name,
        seed,
        test_nll=best[1],
        best_val_nll=best[0],
        best_step=best[2],
        cpu_seconds_per_step=statistics.median(times),
        beyond_bound=beyond.float().mean().item(),
        parameters=sum(p.numel() for p in flow.parameters()),
    )


def _summary(fits: list[Fit], tables: list[str], flows: list[str]) -> list[dict[str, object]]:
    rows = []
    for name in tables:
        for flow in flows:
            group = [f for f in fits if f.table == name and f.flow == flow]
            nll = [f.test_nll for f in group]
            rows.append(
                {
                    "table": name,
                    "flow": flow,
                    "test_nll_mean": statistics.fmean(nll),
                    "test_nll_std": statistics.stdev(nll) if len(nll) > 1 else 0.0,
                    "best_step_median": statistics.median(f.best_step for f in group),
                    "cpu_seconds_per_step": statistics.median(f.cpu_seconds_per_step for f in group),
                    "beyond_bound": statistics.fmean(f.beyond_bound for f in group),
                    "parameters": group[0].parameters,
                }
            )
    return rows


def _markdown(rows: list[dict[str, object]], seeds: int) -> str:
    lines = [
        f"| table | flow | test NLL (nats/row, mean ± sd, {seeds} seeds) | best step | CPU ms/step | beyond B "
        "| params |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['table']} | {r['flow']} | {r['test_nll_mean']:.3f} ± {r['test_nll_std']:.3f} | "
            f"{r['best_step_median']:.0f} | {1000 * float(r['cpu_seconds_per_step']):.1f} | "
            f"{100 * float(r['beyond_bound']):.2f}% | {r['parameters']:,} |"
        )
    return "\n".join(lines)


def _parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tables", default=",".join(TABLES), help=f"comma-separated, from {', '.join(TABLES)}")
    parser.add_argument(
        "--flows",
        default="affine,spline",
        help=f"comma-separated couplings {COUPLINGS}, each optionally with /MIXING, one of {MIXINGS} (default: the "
        f"product's, {DEFAULT_MIXING})",
    )
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--steps-scale", type=float, default=1.0, help="multiply every table's step count")
    parser.add_argument("--num-couplings", type=int, default=6)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--depth", type=int, default=2)
    parser.add_argument("--bins", type=int, default=8)
    parser.add_argument("--tail-bound", type=float, default=4.0)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--name", default="vector_flow", help="the result's name: bench/results/NAME.json")
    add_dry_run(parser)
    args = parser.parse_args()
    unknown = [t for t in args.tables.split(",") if t not in TABLES]
    if unknown:
        parser.error(f"--tables: unknown table {unknown[0]!r}; choose from {', '.join(TABLES)}")
    for flow in args.flows.split(","):
        coupling, mixing = _variant(flow)
        if coupling not in COUPLINGS or mixing not in (None, *MIXINGS):
            parser.error(
                f"--flows: unknown flow {flow!r}; a coupling from {COUPLINGS}, optionally /{'|'.join(MIXINGS)}"
            )
    if args.seeds < 1:
        parser.error(f"--seeds: {args.seeds} must be at least 1")
    exit_if_dry_run(args)
    return args


def main() -> None:
    args = _parse()
    torch.set_num_threads(args.threads)
    tables, flows = args.tables.split(","), args.flows.split(",")
    fits = []
    for name in tables:
        for seed in range(args.seeds):
            for flow in flows:
                fit = _fit(name, flow, seed, args)
                fits.append(fit)
                print(
                    f"{name:14s} {flow:17s} seed {seed}: test NLL {fit.test_nll:8.3f} (best val step "
                    f"{fit.best_step}), {1000 * fit.cpu_seconds_per_step:.1f} CPU ms/step",
                    flush=True,
                )
    rows = _summary(fits, tables, flows)
    print()
    figures = {"settings": vars(args), "summary": rows, "fits": [asdict(f) for f in fits]}
    write_result(args.name, figures, _markdown(rows, args.seeds))


if __name__ == "__main__":
    main()
