"""Embeddings of an image folder as a table: a torchvision classification backbone's penultimate layer over every
image, one row per image with the ``label`` column (the class folder; empty for ``unlabeled/``) that ``--table``
trains on. For photos a flow on raw pixels is the wrong tool; FlowGMM on pretrained features is how a practitioner
uses it (the paper's text results ran the flow on BERT embeddings).

    python -m pipeline.data.embed --images photos/ --backbone resnet18 --out photos.parquet
    python pipeline/run.py --table photos.parquet                       # train on the embeddings
    python -m pipeline.data.embed --images photos-test/ --out photos-test.parquet   # its test folder, the same way

Images are decoded as RGB, resized to ``--image-size`` (224) and normalised with ImageNet's mean and std; Ray Data
runs the backbone in an actor pool (``--actors``, ``--cpus-per-actor``, ``--gpus-per-actor``: on a GPU when one is
given). ``--weights``: ``default`` (torchvision's pretrained weights, from its cache, ``$TORCH_HOME``; downloaded once
where the machine has a network), ``none`` (random initialisation: for tests), or a state-dict file. The table holds
``id`` (the row), ``path``, ``label`` and the features ``e0..e{D-1}``; ``id`` and ``path`` are not features.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.core.errors import DataError

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # ImageNet's, as torchvision's weights expect


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m pipeline.data.embed", description=__doc__.split("\n\n")[0])
    p.add_argument("--images", required=True, help="an image folder (class subfolders, unlabeled/): path or URI")
    p.add_argument("--out", required=True, type=Path, help="the table to write (.parquet or .csv)")
    p.add_argument("--backbone", default="resnet18", help="a torchvision classification model name")
    p.add_argument("--weights", default="default", help="default (torchvision's pretrained), none, or a .pt file")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--unlabeled-dir", default="unlabeled")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--actors", type=int, default=1)
    p.add_argument("--cpus-per-actor", type=float, default=1.0)
    p.add_argument("--gpus-per-actor", type=float, default=0.0)
    p.add_argument("--address", default=None, help="a Ray cluster (default: RAY_ADDRESS, else a local Ray)")
    return p.parse_args(argv)


def backbone(name: str, weights: str):
    """The model without its last linear layer (its output: the penultimate features), in eval mode; DataError
    (one line) for an unknown name or weights that cannot be had."""
    import torch
    import torchvision

    if name not in torchvision.models.list_models(module=torchvision.models):
        known = ", ".join(m for m in torchvision.models.list_models(module=torchvision.models) if "resnet" in m)
        raise DataError(f"--backbone {name}: not a torchvision classification model (e.g. {known}, vit_b_16)")
    if weights == "default":
        try:
            model = torchvision.models.get_model(name, weights="DEFAULT")
        except Exception as e:  # noqa: BLE001  no cache and no network, or a broken download
            raise DataError(
                f"--weights default: {name}'s pretrained weights are not in torchvision's cache ({torch.hub.get_dir()})"
                f" and could not be downloaded ({type(e).__name__}); pass --weights FILE or --weights none"
            ) from None
    else:
        model = torchvision.models.get_model(name, weights=None)
        if weights != "none":
            try:
                model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
            except (OSError, RuntimeError, ValueError) as e:
                raise DataError(f"--weights {weights}: not a state dict of {name} ({str(e).splitlines()[0]})") from None
    last = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    if not last:
        raise DataError(f"--backbone {name}: has no final linear layer to remove")
    parent, _, attr = last[-1].rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, attr, torch.nn.Identity())
    return model.eval()


class Embedder:
    """One actor: the backbone (on the actor's GPU when it has one), images in, features out."""

    def __init__(self, name: str, weights: str, size: int, fs: Any) -> None:
        import torch

        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.model = backbone(name, weights).to(self.device)
        self.size, self.fs = size, fs
        self.mean = torch.tensor(MEAN).view(1, 3, 1, 1)
        self.std = torch.tensor(STD).view(1, 3, 1, 1)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        from pipeline.data.images import ImageError, decode_image

        xs = []
        for p in batch["path"]:
            try:
                with self.fs.open_input_file(p) as f:
                    xs.append(decode_image(f.read(), (3, self.size, self.size)))
            except (ImageError, OSError) as e:
                raise DataError(f"{p}: truncated or unreadable image: {e}") from None
        x = (torch.as_tensor(np.stack(xs)).float() / 255.0 - self.mean) / self.std
        with torch.no_grad():
            e = self.model(x.to(self.device)).float().cpu().numpy()
        return {"order": batch["order"], "path": batch["path"], "e": e.reshape(len(e), -1)}


def embed(args: argparse.Namespace) -> dict[str, float]:
    import ray

    from pipeline.core.atomic import atomic_file
    from pipeline.core.raycluster import connect, quiet
    from pipeline.data.sources.folder import list_folder

    if args.out.suffix not in (".parquet", ".csv"):
        raise DataError(f"{args.out}: the table must end in .parquet or .csv")
    listing = list_folder(args.images, args.unlabeled_dir, "images")
    paths = [p for p, _ in listing.labeled] + listing.unlabeled
    labels = [c for _, c in listing.labeled] + [None] * len(listing.unlabeled)
    backbone(args.backbone, args.weights)  # unknown model, missing weights: one line before Ray
    quiet()
    connect(args.address)
    ray.data.DataContext.get_current().enable_progress_bars = False
    t0 = time.time()
    items = [{"order": i, "path": p} for i, p in enumerate(paths)]
    ds = ray.data.from_items(items, override_num_blocks=max(1, min(64, len(paths) // args.batch_size))).map_batches(
        Embedder,
        fn_constructor_args=(args.backbone, args.weights, args.image_size, listing.loc.fs),
        batch_size=args.batch_size,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=args.actors),
        num_cpus=args.cpus_per_actor,
        num_gpus=args.gpus_per_actor or None,
    )
    feats = np.zeros((len(paths), 0), np.float32)
    try:
        for b in ds.iter_batches(batch_format="numpy", batch_size=4096):
            if feats.shape[1] == 0:
                feats = np.zeros((len(paths), b["e"].shape[1]), np.float32)
            feats[b["order"]] = b["e"]
    except Exception as e:  # noqa: BLE001  a task's DataError arrives wrapped by Ray
        from pipeline.core.errors import data_error

        raise (data_error(e) or DataError(f"embedding failed ({type(e).__name__})")) from None
    seconds = time.time() - t0
    write_table(args.out, paths, labels, feats, atomic_file)
    return {"images": float(len(paths)), "seconds": seconds, "images_per_s": len(paths) / max(seconds, 1e-9)}


def write_table(out: Path, paths: list[str], labels: list[str | None], feats: np.ndarray, atomic_file) -> None:
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    cols = {"id": pa.array(np.arange(len(paths), dtype=np.int64)), "path": pa.array(paths, pa.string())}
    cols["label"] = pa.array(labels, pa.string())
    cols.update({f"e{j}": pa.array(feats[:, j]) for j in range(feats.shape[1])})
    table = pa.table(cols)
    with atomic_file(out) as tmp:
        if out.suffix == ".csv":
            pacsv.write_csv(table, tmp)
        else:
            pq.write_table(table, tmp)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        stats = embed(args)
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(
        f"[flowgmm] embedded {stats['images']:.0f} images with {args.backbone} in {stats['seconds']:.1f} s "
        f"({stats['images_per_s']:.1f} images/s) -> {args.out}",
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
