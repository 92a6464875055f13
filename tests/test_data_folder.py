"""A user's image folder (``--images DIR``): class subfolders and ``unlabeled/`` decoded with Ray Data into the same
prepared shards as every source, sizes made uniform and the channels chosen from the images; every bad input one
line naming the file or folder, exit 2, nothing written."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import own_lines

from pipeline.config.data import DataSpec
from pipeline.core.errors import DataError
from pipeline.data import load_split, prepare

CLASSES = ("circle", "cross", "square")


def _img(k: int, rng: np.random.Generator, size: int = 8, colour: bool = False) -> np.ndarray:
    x = (rng.random((size, size)) * 60).astype(np.uint8)
    c = size // 2
    if k == 0:
        x[c - 2 : c + 2, c - 2 : c + 2] = 250
    elif k == 1:
        x[c, :] = x[:, c] = 250
    else:
        x[1, :] = x[-2, :] = x[:, 1] = x[:, -2] = 250
    return np.stack([x, x // 2, 255 - x], -1) if colour else x


def _folder(root: Path, *, per_class: int = 6, unlabeled: int = 30, big: int = 5, colour: bool = False) -> Path:
    from PIL import Image

    rng = np.random.default_rng(0)
    for k, name in enumerate(CLASSES):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(_img(k, rng, colour=colour)).save(root / name / f"{i}.png")
    if unlabeled:
        (root / "unlabeled").mkdir()
    for i in range(unlabeled):
        size = 10 if i < big else 8
        Image.fromarray(_img(i % 3, rng, size, colour)).save(
            root / "unlabeled" / f"u{i}.jpg" if i % 2 else root / "unlabeled" / f"u{i}.png"
        )
    (root / "circle" / "notes.txt").write_text("not an image")
    return root


def _spec(path: Path, **kw) -> DataSpec:
    return DataSpec(source="images", path=str(path), seed=0, shard_rows=16, **kw)


def test_a_folder_becomes_prepared_shards(ray_local, tmp_path):
    root = _folder(tmp_path / "shapes")
    prepared = prepare(_spec(root), tmp_path / "home")
    m = prepared.manifest
    assert prepared.kind == "image" and prepared.shape == (1, 8, 8) and prepared.class_names == list(CLASSES)
    assert m["counts"]["unlabeled"] == 30 and sum(m["counts"][s] for s in ("labeled", "val", "test")) == 18
    assert "8x8 grey (the most common size; 5 of 48 images resized)" in m["image_summary"]
    assert "ignored 1 files that are not images in class folders (circle/notes.txt)" in m["image_summary"]
    from PIL import Image

    x_lab, y_lab = load_split(prepared, "labeled")
    x_val, y_val = load_split(prepared, "val")
    x_test, y_test = load_split(prepared, "test")
    pool = np.concatenate([x_lab, x_val, x_test])
    first = np.asarray(Image.open(root / "cross" / "0.png"))
    assert any((p[0] == first).all() for p in pool)  # the pixels as Pillow decodes them
    ys = np.concatenate([y_lab, y_val, y_test])
    assert np.bincount(ys, minlength=3).tolist() == [6, 6, 6]
    again = prepare(_spec(root), tmp_path / "home")  # unchanged folder: reused
    assert again.root == prepared.root and again.manifest["created"] == m["created"]


def test_colour_size_and_mode_choices(ray_local, tmp_path):
    root = _folder(tmp_path / "colour", colour=True)
    test = _folder(tmp_path / "colour-test", unlabeled=0, per_class=2, colour=True)
    prepared = prepare(_spec(root, test_path=str(test)), tmp_path / "home")
    assert prepared.shape == (3, 8, 8) and prepared.counts["test"] == 6
    grey = prepare(_spec(root, image_mode="L", image_size=(4, 6)), tmp_path / "home")
    assert (
        grey.shape == (1, 4, 6)
        and "4x6 grey (data.image_size; 48 of 48 images resized)" in grey.manifest["image_summary"]
    )


@pytest.mark.parametrize("case", ["truncated", "not_an_image", "empty_class", "no_classes", "unknown_test_class"])
def test_bad_folders_are_one_line_naming_the_file_or_folder(ray_local, tmp_path, case):
    root = _folder(tmp_path / "shapes")
    spec = _spec(root)
    if case == "truncated":
        f = root / "cross" / "2.png"
        f.write_bytes(f.read_bytes()[:60])
        want = f"{f}: "
    elif case == "not_an_image":
        f = root / "unlabeled" / "u4.png"
        f.write_text("hello")
        want = f"{f}: not an image Pillow can read"
    elif case == "empty_class":
        (root / "empty").mkdir()
        want = f"{root}/empty: class folder has no images"
    elif case == "no_classes":
        spec = _spec(root / "unlabeled")
        want = f"{root / 'unlabeled'}: no class folders in the images folder"
    else:
        test = _folder(tmp_path / "test", unlabeled=0, per_class=2)
        (test / "circle").rename(test / "triangle")
        spec = _spec(root, test_path=str(test))
        want = f"{test}/triangle: class 'triangle' of the test folder has no folder in {root}"
    with pytest.raises(DataError) as e:
        prepare(spec, tmp_path / "home")
    assert str(e.value).startswith(want) and "\n" not in str(e.value), str(e.value)
    assert not [p for p in (tmp_path / "home" / "data").iterdir() if p.is_dir()]  # nothing half-written


@pytest.mark.slow
def test_the_job_on_a_folder_and_its_bad_input(ray_local, tmp_path, capsys):
    from pipeline.job import main

    root = _folder(tmp_path / "shapes", per_class=10, unlabeled=80)
    home = tmp_path / "home"
    assert main(["--images", str(root), "--home", str(home), "--run-name", "f", "train.steps=40"]) == 0
    out = capsys.readouterr().out
    assert "[flowgmm] images: 110 images, 8x8 grey" in out and "results on the test split" in out
    # scoring a folder: one row per image, its path and class folder beside the prediction, in path order
    import pandas as pd

    from pipeline.results.score import main as score_main

    args = ["--model", str(home / "models" / "f"), "--input", str(root), "--home", str(home)]
    assert score_main([*args, "--output", str(tmp_path / "s.parquet")]) == 0
    scored = pd.read_parquet(tmp_path / "s.parquet")
    files = sorted(str(p) for p in root.rglob("*") if p.suffix in (".png", ".jpg"))
    assert scored["path"].tolist() == files
    folders = [Path(f).parent.name for f in files]
    assert scored["input_label"].fillna("-").tolist() == ["-" if d == "unlabeled" else d for d in folders]
    assert set(scored["class"]) <= set(CLASSES) and scored["ood_score_name"].iloc[0] == "complexity"
    one = ["--model", str(home / "models" / "f"), "--input", files[0], "--home", str(home)]
    assert score_main([*one, "--output", str(tmp_path / "one.parquet")]) == 0  # one image file
    assert pd.read_parquet(tmp_path / "one.parquet")["path"].tolist() == [files[0]]
    bad = root / "cross" / "3.png"
    bad.write_bytes(bad.read_bytes()[:50])
    capsys.readouterr()
    assert score_main([*args, "--output", str(tmp_path / "s2.parquet")]) == 2
    err = own_lines(capsys.readouterr().err)
    assert len(err) == 1 and err[0].startswith(f"error: {bad}: truncated or unreadable image"), err
    bad.unlink()
    (root / "empty").mkdir()
    assert main(["--images", str(root), "--home", str(tmp_path / "h2"), "train.steps=40"]) == 2
    err = own_lines(capsys.readouterr().err)
    assert err == [f"error: {root}/empty: class folder has no images"]
    assert not (tmp_path / "h2" / "mlflow.db").exists()
