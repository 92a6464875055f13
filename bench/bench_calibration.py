"""Variance-scale calibration rules against held-out NLL: which rule never makes things worse (a plain script).

    # real models: any runs of the product in one home (each ~1 min on 2 cores), then the bench over all of them
    export FLOWGMM_HOME=/tmp/cal FLOWGMM_DATA=/work/shared/data
    .venv/bin/python pipeline/run.py --config breast_cancer; .venv/bin/python pipeline/run.py --config moons
    .venv/bin/python pipeline/run.py                       # digits, the default job
    .venv/bin/python pipeline/run.py --table wine.csv      # sklearn's wine (178 rows, 3 classes) with a label column
    .venv/bin/python bench/bench_calibration.py --home /tmp/cal [--draws 50]

Cases: every run in ``<home>/runs`` (its served model and its labels-only flow's best checkpoint), encoded on the
validation and test splits, pooled; and synthetic mixtures (``flowgmm.mixture.GaussianMixture``) whose latents are
drawn with a known variance scale (x1: already calibrated; x0.25: under-confident; x4, x456: over-confident, the
x456 like the CE-trained MNIST latent). Per case and validation size n, ``--draws`` times: n rows are the
validation set, every other pooled row (synthetic: 5,000 fresh rows) is held out; each rule picks a scale on the n
rows; we record held-out NLL and ECE at that scale minus at ``s = 1``. Prints Markdown tables (mean and 90th
percentile of the NLL change, mean ECE change, median chosen scale); figures in bench/results/bench_calibration.json.
The rule the product serves (``flowgmm.calibration.choose_variance_scale``) is the last column.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.cli import add_dry_run, exit_if_dry_run  # noqa: E402
from bench.record import write_result  # noqa: E402
from flowgmm import metrics as M  # noqa: E402
from flowgmm.calibration import choose_variance_scale, fit_variance_scale  # noqa: E402
from flowgmm.mixture import GaussianMixture  # noqa: E402


def _chosen(m, z, y, tau: float | None, tau_below: float | None, margin: float) -> float:
    return choose_variance_scale(m, z, y, prior_tau=tau, prior_tau_below=tau_below, margin=margin).scale


Rule = Callable[[GaussianMixture, torch.Tensor, torch.Tensor], float]
RULES: dict[str, Rule] = {
    "fit": lambda m, z, y: fit_variance_scale(m, z, y),
    "prior 2": lambda m, z, y: fit_variance_scale(m, z, y, prior_tau=2.0),
    "prior 2/0.5": lambda m, z, y: fit_variance_scale(m, z, y, prior_tau=2.0, prior_tau_below=0.5),
    "shrink n0=20": lambda m, z, y: fit_variance_scale(m, z, y) ** (len(y) / (len(y) + 20.0)),
    "cross-fit": lambda m, z, y: _chosen(m, z, y, None, None, 0.0),
    "prior 2 + cross-fit": lambda m, z, y: _chosen(m, z, y, 2.0, 2.0, 0.0),
    "prior 2 + cross-fit by 2": lambda m, z, y: _chosen(m, z, y, 2.0, 2.0, 2.0),
    "prior 2/0.5 + cross-fit": lambda m, z, y: _chosen(m, z, y, 2.0, 0.5, 0.0),
    "prior 2/0.5 + cross-fit by 2 (served)": lambda m, z, y: choose_variance_scale(m, z, y).scale,
}
SIZES = (5, 10, 20, 50, 200)
# synthetic cases: (name, classes, dim, means_scale, true variance scale)
SYNTHETIC = (
    ("mixture K=3 D=2 x1", 3, 2, 1.0, 1.0),
    ("mixture K=2 D=8 x0.25", 2, 8, 0.3, 0.25),
    ("mixture K=3 D=8 x4", 3, 8, 1.0, 4.0),
    ("mixture K=10 D=64 x456", 10, 64, 6.0, 456.0),
)


class Case:
    """A mixture and a pool of labeled latents; ``draw`` splits it into n validation rows and held-out rows."""

    def __init__(self, name: str, mixture: GaussianMixture, z: torch.Tensor, y: torch.Tensor, fresh=None):
        self.name, self.mixture, self.z, self.y, self.fresh = name, mixture, z, y, fresh

    def draw(self, n: int, rng: np.random.Generator):
        pick = rng.permutation(len(self.y))
        cal, rest = pick[:n], pick[n:]
        if self.fresh is not None:  # synthetic: a fixed held-out set drawn apart from the pool
            return self.z[cal], self.y[cal], *self.fresh
        return self.z[cal], self.y[cal], self.z[rest], self.y[rest]


def synthetic_cases(pool: int = 2000, held: int = 5000) -> list[Case]:
    out = []
    for name, k, d, r, s in SYNTHETIC:
        gmm = GaussianMixture(k, d, means_scale=r, seed=0)
        gen = torch.Generator().manual_seed(1)

        def latents(n: int, gmm=gmm, s=s, gen=gen):
            z, y = gmm.sample(n, generator=gen)
            return gmm.means[y] + (z - gmm.means[y]) * math.sqrt(s), y

        out.append(Case(name, gmm, *latents(pool), fresh=latents(held)))
    return out


def run_cases(home: Path) -> list[Case]:
    """Each run's served model and its labels-only flow, encoded on validation + test (the pool)."""
    from flowgmm.spec import levels_of
    from flowgmm.spec import load as load_model
    from pipeline.config import load_yaml
    from pipeline.data import prepare
    from pipeline.data.shards import load_split
    from pipeline.train.validate import encode

    cases = []
    for run in sorted(p.name for p in (home / "runs").iterdir() if (home / "models" / p.name).is_dir()):
        cfg = load_yaml(home / "runs" / run / "config.yaml")
        prepared = prepare(cfg.data, home)
        x, y = (np.concatenate(a) for a in zip(*(load_split(prepared, s) for s in ("val", "test"))))
        models = {run: home / "models" / run}
        ckpts = home / "ray_results" / f"{run}-labels-only" / "checkpoints.json"
        if ckpts.exists():
            models[f"{run} labels-only"] = max(json.loads(ckpts.read_text()), key=lambda c: c["score"])["path"]
        for name, path in models.items():
            model, spec = load_model(str(path))
            model.eval()
            with torch.no_grad():
                enc = encode(model, x, y, levels=levels_of(spec), device=torch.device("cpu"))
            cases.append(Case(name, model.mixture, enc.z, torch.as_tensor(y)))
    return cases


def held_out(case: Case, z: torch.Tensor, y: torch.Tensor, scale: float) -> tuple[float, float]:
    with torch.no_grad():
        logits = case.mixture.component_log_prob(z.double(), variance_scale=scale) + case.mixture.log_weights.double()
        probs = torch.softmax(logits, 1).numpy()
    return M.nll(probs, y), M.ece(probs, y)


def measure(case: Case, n: int, draws: int) -> dict:
    """Per rule: mean / p90 held-out NLL change, mean ECE change, median chosen scale, over ``draws`` draws."""
    rng = np.random.default_rng(0)
    d_nll: dict[str, list[float]] = {r: [] for r in RULES}
    d_ece: dict[str, list[float]] = {r: [] for r in RULES}
    scales: dict[str, list[float]] = {r: [] for r in RULES}
    base_nll = []
    for _ in range(draws):
        zc, yc, zh, yh = case.draw(n, rng)
        nll0, ece0 = held_out(case, zh, yh, 1.0)
        base_nll.append(nll0)
        for rule, fn in RULES.items():
            s = fn(case.mixture, zc, yc)
            nll, ece = held_out(case, zh, yh, s)
            d_nll[rule].append(nll - nll0)
            d_ece[rule].append(ece - ece0)
            scales[rule].append(s)
    return {
        "case": case.name,
        "n": n,
        "draws": draws,
        "uncalibrated_nll": float(np.mean(base_nll)),
        "rules": {
            r: {
                "nll_change_mean": float(np.mean(d_nll[r])),
                "nll_change_p90": float(np.percentile(d_nll[r], 90)),
                "ece_change_mean": float(np.mean(d_ece[r])),
                "scale_median": float(np.median(scales[r])),
            }
            for r in RULES
        },
    }


def markdown(rows: list[dict], key: str, title: str) -> str:
    head = f"| case | n | NLL at s=1 | {' | '.join(RULES)} |"
    lines = [f"**{title}**", "", head, "|" + "---|" * (3 + len(RULES))]
    for r in rows:
        cells = [
            (f"{r['rules'][rule][key]:.3g}" if key == "scale_median" else f"{r['rules'][rule][key]:+.3f}")
            for rule in RULES
        ]
        lines.append(f"| {r['case']} | {r['n']} | {r['uncalibrated_nll']:.3f} | {' | '.join(cells)} |")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", type=Path, default=None, help="a FLOWGMM_HOME holding runs of the product")
    parser.add_argument("--draws", type=int, default=50)
    add_dry_run(parser)
    return parser


TABLES = (
    ("nll_change_mean", "held-out NLL, calibrated minus uncalibrated (mean over draws; lower is better)"),
    ("nll_change_p90", "held-out NLL change, 90th percentile over draws"),
    ("ece_change_mean", "held-out ECE change (mean over draws)"),
    ("scale_median", "chosen variance scale (median over draws)"),
)


def main(argv: list[str] | None = None) -> list[dict]:
    args = build_parser().parse_args(argv)
    exit_if_dry_run(args)
    torch.set_num_threads(1)
    t0 = time.time()
    cases = (run_cases(args.home) if args.home else []) + synthetic_cases()
    rows = []
    for c in cases:
        for n in (n for n in SIZES if n <= len(c.y) // 2):
            rows.append(measure(c, n, args.draws))
            print(f"{c.name} n={n}: {time.time() - t0:.0f} s", file=sys.stderr, flush=True)
    text = "\n\n".join(markdown(rows, key, title) for key, title in TABLES)
    write_result("bench_calibration", {"draws": args.draws, "rows": rows, "seconds": time.time() - t0}, text)
    return rows


if __name__ == "__main__":
    main()
