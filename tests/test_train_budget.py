"""The training budget sized from the data (pipeline/train/budget.py): what a configuration leaves unset is filled
from the row counts, what it sets is kept, small validation splits never stop early, the rule's examples hold."""

from __future__ import annotations

import doctest
from types import SimpleNamespace

import pytest

from pipeline.config import resolve
from pipeline.train import budget
from pipeline.train.budget import budget_for, size_to_data, sized_fields


def _prepared(unlabeled: int, labeled: int, val: int, dim: int = 8, classes: int = 3):
    counts = {"unlabeled": unlabeled, "labeled": labeled, "val": val, "test": 100}
    return SimpleNamespace(counts=counts, dim=dim, num_classes=classes)


def test_docstring_examples():
    assert doctest.testmod(budget).failed == 0


def test_the_table_recipe_is_sized_and_a_set_field_is_kept():
    cfg = resolve("table", overrides=["data.path=/d/my.csv", "train.steps=3000"])
    unset = sized_fields(cfg)
    assert "train.steps" not in unset and {"train.patience", "ingest.unlabeled_batch", "model.hidden"} <= set(unset)
    sized = size_to_data(cfg, _prepared(unlabeled=30_000, labeled=400, val=100, dim=24))
    assert sized.train.steps == 3000  # the user's value
    assert sized_fields(sized) == [] and sized.train.patience == 5 and sized.train.min_steps == int(0.3 * 3000)
    assert sized.ingest.unlabeled_batch == 256 and sized.model.hidden == 192
    assert size_to_data(sized, _prepared(10, 10, 10)) == sized  # idempotent: nothing left to size


def test_shipped_experiments_keep_their_measured_values():
    cfg = resolve("digits")
    assert sized_fields(cfg) == []
    assert size_to_data(cfg, _prepared(1000, 100, 200)) == cfg


@pytest.mark.parametrize("val,patience", [(8, 0), (49, 0), (50, 5), (400, 5)])
def test_few_validation_rows_never_stop_early(val, patience):
    assert budget_for(unlabeled=5000, labeled=100, dim=8, classes=3, val=val)["train"]["patience"] == patience


def test_more_rows_train_longer_with_larger_batches_within_bounds():
    sizes = [200, 2_000, 30_000, 300_000, 3_000_000]
    b = [budget_for(unlabeled=n, labeled=500, dim=16, classes=4, val=100) for n in sizes]
    steps = [x["train"]["steps"] for x in b]
    batches = [x["ingest"]["unlabeled_batch"] for x in b]
    assert steps == sorted(steps) and 1000 <= steps[0] and steps[-1] <= 12_000
    assert batches == sorted(batches) and batches[0] == 64 and batches[-1] == 512
    for x in b:
        t = x["train"]
        assert 0 < t["min_steps"] < t["steps"] and t["consistency_start_step"] < t["steps"]
        assert t["steps"] // t["eval_every"] >= 10  # enough evaluation points to see a plateau
