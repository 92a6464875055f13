"""Derived data sets for the out-of-domain models: one class held out (rows dropped, labels renumbered, the unlabeled
rows the caller marks left out, reused while the source is unchanged) and perturbed training rows (a share of cells
randomised within the data's own values, the test split untouched)."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.config import resolve
from pipeline.data import load_split, load_unlabeled_labels, prepare
from pipeline.data.derive import perturbed, without_class


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    return prepare(resolve("digits", smoke=True).data, tmp_path_factory.mktemp("derive") / "home")


def test_holding_out_a_class_drops_its_rows_and_renumbers_the_others(digits):
    k = 3
    known = load_unlabeled_labels(digits)
    keep = known != k
    keep[:5] = False  # rows the caller marks (e.g. predicted as class k) are left out whatever their label
    held = without_class(digits, k, keep)
    assert held.num_classes == digits.num_classes - 1
    assert held.class_names == [n for i, n in enumerate(digits.class_names) if i != k]
    assert held.root.parent == digits.root.parent and held.manifest["ood"] == {}
    held.verify()
    for split in ("labeled", "val", "test"):
        x0, y0, ids0 = load_split(digits, split, with_ids=True)
        x1, y1, ids1 = load_split(held, split, with_ids=True)
        assert (y0 == k).any() and set(ids1) == set(ids0[y0 != k])
        old = dict(zip(ids0, y0))
        assert all(y == old[i] - (old[i] > k) for i, y in zip(ids1, y1))  # classes above k move down by one
        np.testing.assert_array_equal(x1, x0[y0 != k])
        assert held.counts[split] == int((y0 != k).sum())
    x_u, y_u = load_split(held, "unlabeled")
    assert len(x_u) == int(keep.sum()) and (y_u == -1).all()  # labels never reach the unlabeled split
    assert (load_unlabeled_labels(held) != -1).all() and set(load_unlabeled_labels(held)) <= set(range(9))
    files = {sh["file"]: (held.root / sh["file"]).stat().st_mtime_ns for sh in held.manifest["shards"]["labeled"]}
    again = without_class(digits, k, keep)  # the same derivation: reused, nothing rewritten
    assert again.manifest == held.manifest
    assert all((held.root / f).stat().st_mtime_ns == t for f, t in files.items())
    other = without_class(digits, k, known != k)  # another mask: built afresh
    assert (
        other.counts["unlabeled"]
        == int((known != k).sum())
        == held.counts["unlabeled"] + 5 - int((known[:5] == k).sum())
    )


def test_a_bad_class_or_mask_is_a_value_error(digits):
    n = digits.counts["unlabeled"]
    with pytest.raises(ValueError, match="class 10 is not one of the 10 classes"):
        without_class(digits, 10, np.ones(n, bool))
    with pytest.raises(ValueError, match=f"unlabeled_keep has 3 rows, the unlabeled split {n}"):
        without_class(digits, 0, np.ones(3, bool))
    with pytest.raises(ValueError, match="rate 1.5"):
        perturbed(digits, 1.5, 0)


def test_perturbed_images_randomise_a_share_of_pixels_on_the_data_grey_levels(digits):
    bg = perturbed(digits, 0.2, seed=0)
    levels = digits.levels
    grid = set(np.rint(np.arange(levels) * 255.0 / (levels - 1)).astype(np.uint8).tolist())
    for split in ("labeled", "unlabeled", "val"):
        x0, y0 = load_split(digits, split)
        x1, y1 = load_split(bg, split)
        np.testing.assert_array_equal(y0, y1)
        changed = (x0 != x1).mean()
        # a replaced cell keeps its value with probability 1/levels
        assert abs(changed - 0.2 * (1 - 1 / levels)) < 0.03, (split, changed)
        assert set(np.unique(x1).tolist()) <= grid
    np.testing.assert_array_equal(load_split(bg, "test")[0], load_split(digits, "test")[0])
    assert bg.num_classes == digits.num_classes


def test_perturbed_table_rows_take_their_cells_from_the_same_column(tmp_path):
    cfg = resolve("moons", smoke=True)
    moons = prepare(cfg.data, tmp_path / "home")
    bg = perturbed(moons, 0.3, seed=1)
    x0, _ = load_split(moons, "unlabeled")
    x1, _ = load_split(bg, "unlabeled")
    changed = (x0 != x1).mean()
    assert 0.25 < changed < 0.31, changed  # a cell can draw its own row's value
    for j in range(x0.shape[1]):
        assert set(x1[:, j].tolist()) <= set(x0[:, j].tolist())
