"""Write an image folder as a user brings one (torchvision's ImageFolder layout) from MNIST or FashionMNIST: a few
labeled PNGs per class in one subfolder per class, many unlabeled in ``unlabeled/`` (a share of them at another
size), and a separate test folder of the same layout.

    python bench/image_folder.py --out /tmp/digits-folder                     # issue 25's folder: 7,300 PNGs
    python bench/image_folder.py --out /tmp/f --per-class 5 --unlabeled 200 --test 100 --source fashion_mnist

The default is the folder of the README's "Your own images": 28x28 grey, 10 classes, 30 labeled per class, 6,000
unlabeled of which a tenth are 32x32 (upscaled), and ``<out>-test/`` with 1,000 labeled images. Rows are drawn
with ``--seed`` from the source's training split (labeled and unlabeled) and test split (the test folder).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.cli import add_dry_run, exit_if_dry_run  # noqa: E402


def write_folder(
    out: Path,
    *,
    source: str = "mnist",
    per_class: int = 30,
    unlabeled: int = 6000,
    test: int = 1000,
    other_size_share: float = 0.1,
    seed: int = 0,
    data_dir: str | None = None,
) -> tuple[Path, Path | None]:
    """The folder ``out`` (class subfolders + ``unlabeled/``) and ``<out>-test`` (None when ``test`` is 0)."""
    from PIL import Image

    from pipeline.data.sources import load_idx, resolve_data_dir

    raw = load_idx(source, resolve_data_dir(data_dir, source), test_only=False)
    rng = np.random.default_rng(seed)
    names = [n.replace("/", "-") for n in raw.class_names]
    order = rng.permutation(len(raw.y_train))
    labeled = np.concatenate([order[raw.y_train[order] == k][:per_class] for k in range(raw.num_classes)])
    rest = np.setdiff1d(order, labeled, assume_unique=True)
    pool = rng.permutation(rest)[:unlabeled]
    bigger = set(pool[: int(round(other_size_share * len(pool)))].tolist())

    def save(x: np.ndarray, path: Path, grow: bool = False) -> None:
        im = Image.fromarray(x.reshape(x.shape[-2:]))
        (im.resize((32, 32), Image.Resampling.BILINEAR) if grow else im).save(path)

    for k in range(raw.num_classes):
        (out / names[k]).mkdir(parents=True, exist_ok=True)
    for i in labeled:
        save(raw.x_train[i], out / names[raw.y_train[i]] / f"{i:05d}.png")
    (out / "unlabeled").mkdir(parents=True, exist_ok=True)
    for i in pool:
        save(raw.x_train[i], out / "unlabeled" / f"{i:05d}.png", grow=i in bigger)
    if not test:
        return out, None
    test_dir = out.with_name(out.name + "-test")
    picks = rng.permutation(len(raw.y_test))[:test]
    for k in range(raw.num_classes):
        (test_dir / names[k]).mkdir(parents=True, exist_ok=True)
    for i in picks:
        save(raw.x_test[i], test_dir / names[raw.y_test[i]] / f"{i:05d}.png")
    return out, test_dir


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True, help="the folder to write (and <out>-test)")
    p.add_argument("--source", default="mnist", choices=["mnist", "fashion_mnist"])
    p.add_argument("--per-class", type=int, default=30)
    p.add_argument("--unlabeled", type=int, default=6000)
    p.add_argument("--test", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    add_dry_run(p)
    a = p.parse_args(argv)
    exit_if_dry_run(a)
    out, test_dir = write_folder(
        a.out, source=a.source, per_class=a.per_class, unlabeled=a.unlabeled, test=a.test, seed=a.seed
    )
    print(f"wrote {out}" + (f" and {test_dir}" if test_dir else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
