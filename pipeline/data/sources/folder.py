"""A user's image folder (``--images DIR``, ``data.source=images``): torchvision's ImageFolder layout, one subfolder per
class whose name is the class, unlabeled images in ``DIR/unlabeled/`` (``data.unlabeled_dir``), and an optional test
folder of the same layout (``data.test_path``; else a per-class hold-out, as for tables). Local paths or any URI
pyarrow opens (``s3://``, ``gs://``, ...).

Listing and every layout check run first, in the driver (one line naming the folder, before any decoding). Then Ray
Data reads and decodes the images in parallel (tasks over blocks of paths, each opening its files through the
folder's file system): a first pass reads the headers (size and mode), a second decodes every image to the chosen
size (``data.image_size``, default the most common) and channels (``data.image_mode``, default grey when every image
is grey). Files whose extension Pillow does not read are ignored and counted (the console says so); an image
Pillow cannot decode is one line naming the file.

    raw = load_folder(spec)         # a RawSource: uint8 [N, C, H, W], labels -1 for the unlabeled images
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
from typing import Any

import numpy as np

from pipeline.core.errors import DataError, data_error
from pipeline.core.location import Location, locate
from pipeline.data.sources.common import HOLDOUT_FRACTION, HOLDOUT_SEED, RawSource, stratified_holdout

GREY_MODES = ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F")
PATHS_PER_TASK = 512  # images per Ray Data block of the decode passes


def image_extensions() -> set[str]:
    """The file extensions Pillow reads (lower case, with the dot)."""
    from PIL import Image

    Image.init()
    return {ext.lower() for ext, fmt in Image.registered_extensions().items() if fmt in Image.OPEN}


@dataclasses.dataclass
class Listing:
    """The images of one folder: labeled ``(path, class name)``, unlabeled paths, what was ignored."""

    loc: Location
    labeled: list[tuple[str, str]]
    unlabeled: list[str]
    ignored: list[str]

    def class_names(self) -> list[str]:
        return sorted({c for _, c in self.labeled})


def list_folder(uri: str, unlabeled_dir: str | None, what: str) -> Listing:
    """Every file under ``uri``: images in class subfolders (and ``unlabeled_dir``), the rest ignored; DataError on a
    missing folder, no class folders, or a class folder without images."""
    import pyarrow.fs as pafs

    loc = locate(uri)
    try:
        info = loc.fs.get_file_info(loc.path)
        if info.type == pafs.FileType.NotFound:
            raise DataError(f"{uri}: {what} folder does not exist")
        if info.type != pafs.FileType.Directory:
            raise DataError(f"{uri}: {what} is a file, not a folder of class subfolders")
        infos = loc.fs.get_file_info(pafs.FileSelector(loc.path, recursive=True))
    except OSError as e:
        raise DataError(f"{uri}: cannot list the {what} folder ({e})") from None
    exts = image_extensions()
    labeled: list[tuple[str, str]] = []
    unlabeled: list[str] = []
    ignored: list[str] = []
    folders: dict[str, int] = {}
    for i in sorted((i for i in infos), key=lambda i: i.path):
        rel = i.path[len(loc.path) :].strip("/").split("/")
        if i.type == pafs.FileType.Directory:
            if len(rel) == 1 and rel[0] != unlabeled_dir and not rel[0].startswith("."):
                folders.setdefault(rel[0], 0)
            continue
        is_image = not any(p.startswith(".") for p in rel) and "." + rel[-1].rsplit(".", 1)[-1].lower() in exts
        if len(rel) == 1 or not is_image:
            ignored.append("/".join(rel))
        elif rel[0] == unlabeled_dir:
            unlabeled.append(i.path)
        else:
            labeled.append((i.path, rel[0]))
            folders[rel[0]] = folders.get(rel[0], 0) + 1
    if not folders:
        layout = f"e.g. {uri}/cat/1.png, {uri}/dog/2.png" + (
            f", unlabeled in {uri}/{unlabeled_dir}/" if unlabeled_dir else ""
        )
        raise DataError(f"{uri}: no class folders in the {what} folder (one subfolder per class: {layout})")
    empty = [c for c, n in folders.items() if n == 0]
    if empty:
        others = sum(1 for f in ignored if f.startswith(empty[0] + "/"))
        why = f" ({others} files that are not images)" if others else ""
        raise DataError(f"{uri}/{empty[0]}: class folder has no images{why}")
    return Listing(loc, labeled, unlabeled, ignored)


# ------------------------------------------------------------------------------------------ decoding (Ray Data)
def _headers(batch: dict[str, np.ndarray], fs: Any) -> dict[str, np.ndarray]:
    from PIL import Image

    sizes, modes = [], []
    for p in batch["item"]:
        try:
            with fs.open_input_file(p) as f, Image.open(f) as im:
                sizes.append(f"{im.size[1]}x{im.size[0]}")
                modes.append(im.mode)
        except Exception as e:  # noqa: BLE001  one line naming the file, whatever Pillow raised
            raise DataError(f"{p}: not an image Pillow can read ({' '.join(str(e).split())[:120]})") from None
    return {"path": np.asarray(batch["item"]), "size": np.asarray(sizes), "mode": np.asarray(modes)}


def _decode(batch: dict[str, np.ndarray], fs: Any, shape: tuple[int, int, int]) -> dict[str, np.ndarray]:
    from pipeline.data.images import ImageError, decode_image

    out = []
    for p in batch["item"]:
        try:
            with fs.open_input_file(p) as f:
                out.append(decode_image(f.read(), shape))
        except ImageError as e:
            raise DataError(f"{p}: truncated or unreadable image: {e}") from None
    return {"path": np.asarray(batch["item"]), "x": np.stack(out).reshape(len(out), -1)}


def _ray_map(paths: list[str], fn, fn_args: tuple) -> dict[str, np.ndarray]:
    """``fn`` over ``paths`` in Ray Data tasks (blocks of PATHS_PER_TASK paths); the rows by path, input order."""
    import ray

    from pipeline.core.raycluster import connect

    connect()
    ray.data.DataContext.get_current().enable_progress_bars = False
    blocks = max(1, -(-len(paths) // PATHS_PER_TASK))
    ds = ray.data.from_items(list(paths), override_num_blocks=blocks)
    ds = ds.map_batches(fn, batch_size=None, batch_format="numpy", fn_args=fn_args)
    got: dict[str, list] = collections.defaultdict(list)
    try:
        for b in ds.iter_batches(batch_format="numpy", batch_size=4096):
            for k, v in b.items():
                got[k].append(v)
    except Exception as e:  # noqa: BLE001  a task's DataError arrives wrapped by Ray
        err = data_error(e)
        raise (err or DataError(f"reading the images failed ({type(e).__name__})")) from None
    cols = {k: np.concatenate(v) for k, v in got.items()}
    order = np.argsort(np.argsort(np.asarray(paths)))  # rows back in the order of ``paths``
    by_path = np.argsort(cols["path"])
    return {k: v[by_path][order] for k, v in cols.items()}


@dataclasses.dataclass
class Chosen:
    shape: tuple[int, int, int]
    summary: str


def choose_shape(heads: dict[str, np.ndarray], image_size: tuple[int, ...], image_mode: str) -> Chosen:
    """The common shape ``(C, H, W)``: ``image_size`` (``(S,)`` square or ``(H, W)``) else the most common size;
    ``image_mode`` (``L``/``RGB``) else grey when every image is grey."""
    counts = collections.Counter(heads["size"].tolist())
    if image_size:
        h, w = (image_size[0], image_size[0]) if len(image_size) == 1 else (image_size[0], image_size[1])
        how = "data.image_size"
    else:
        h, w = (int(v) for v in counts.most_common(1)[0][0].split("x"))
        how = "the most common size"
    grey = all(m in GREY_MODES for m in heads["mode"].tolist())
    mode = ("L" if grey else "RGB") if image_mode == "auto" else image_mode
    other = len(heads["size"]) - counts.get(f"{h}x{w}", 0)
    text = f"{h}x{w} {'grey' if mode == 'L' else 'colour'} ({how}"
    text += f"; {other} of {len(heads['size'])} images resized)" if other else ")"
    return Chosen((1 if mode == "L" else 3, h, w), text)


def load_folder(spec) -> RawSource:
    """The folder ``spec.path`` (and test folder ``spec.test_path``) as a RawSource."""
    if not spec.path:
        raise DataError("source 'images' needs a folder: set data.path (or --images DIR)")
    train = list_folder(spec.path, spec.unlabeled_dir, "images")
    names = train.class_names()
    test = None
    if spec.test_path:
        test = list_folder(spec.test_path, None, "test")
        extra = sorted(set(test.class_names()) - set(names))
        if extra:
            raise DataError(
                f"{spec.test_path}/{extra[0]}: class '{extra[0]}' of the test folder has no folder in {spec.path} "
                f"(classes: {', '.join(names)})"
            )
    paths = [p for p, _ in train.labeled] + train.unlabeled + ([p for p, _ in test.labeled] if test else [])
    heads = _ray_map(paths, _headers, (train.loc.fs,))
    chosen = choose_shape(heads, tuple(spec.image_size), spec.image_mode)
    x = _ray_map(paths, _decode, (train.loc.fs, chosen.shape))["x"].reshape(len(paths), *chosen.shape)
    index = {c: k for k, c in enumerate(names)}
    n_lab, n_unl = len(train.labeled), len(train.unlabeled)
    y = np.array([index[c] for _, c in train.labeled] + [-1] * n_unl, dtype=np.int64)
    x_train = x[: n_lab + n_unl]
    if test is not None:
        x_test, y_test = x[n_lab + n_unl :], np.array([index[c] for _, c in test.labeled], dtype=np.int64)
    else:
        pool, held = stratified_holdout(y, HOLDOUT_FRACTION, HOLDOUT_SEED)
        x_train, y, x_test, y_test = x_train[pool], y[pool], x_train[held], y[held]
    ignored = train.ignored + (test.ignored if test else [])
    summary = f"{len(paths)} images, {chosen.summary}"
    if ignored:
        summary += f"; ignored {len(ignored)} files that are not images in class folders ({', '.join(ignored[:3])}"
        summary += ", ...)" if len(ignored) > 3 else ")"
    return RawSource(
        "images",
        "image",
        chosen.shape,
        len(names),
        names,
        x_train,
        y,
        x_test,
        y_test,
        spec.path,
        spec.test_path or spec.path,
        extra={"image_summary": summary, "ignored_files": len(ignored)},
    )


def folder_fingerprint(spec) -> dict[str, Any]:
    """The folders' identity without reading every image: a digest of each file's path, size and modification time
    (any pyarrow file system)."""
    import pyarrow.fs as pafs

    out = {}
    for uri in (spec.path, spec.test_path):
        if not uri:
            continue
        loc = locate(uri)
        try:
            infos = loc.fs.get_file_info(pafs.FileSelector(loc.path, recursive=True))
        except (OSError, FileNotFoundError):
            raise DataError(f"{uri}: folder does not exist") from None
        h = hashlib.sha256()
        files = 0
        for i in sorted(infos, key=lambda i: i.path):
            if i.type == pafs.FileType.File:
                files += 1
                h.update(f"{i.path}\0{i.size}\0{i.mtime_ns}\n".encode())
        out[uri] = {"files": files, "sha256": h.hexdigest()}
    return out
