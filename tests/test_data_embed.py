"""Embeddings of an image folder as a table (``python -m pipeline.data.embed``): a torchvision backbone's penultimate
layer per image (random weights here: no download), the class folder as ``label``, and a table ``--table`` takes."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import own_lines
from test_data_folder import CLASSES, _folder

from pipeline.data.embed import main


def test_a_folder_becomes_a_table_of_features_that_trains(ray_local, tmp_path, capsys):
    import torch
    import torchvision

    from pipeline.config.data import DataSpec
    from pipeline.data import load_split, prepare

    root = _folder(tmp_path / "shapes", per_class=6, unlabeled=12)
    torch.manual_seed(0)
    weights = tmp_path / "r18.pt"
    torch.save(torchvision.models.resnet18().state_dict(), weights)  # a state dict as a user would pass one
    out = tmp_path / "emb.parquet"
    args = ["--images", str(root), "--out", str(out), "--image-size", "32", "--batch-size", "8"]
    assert main([*args, "--weights", str(weights)]) == 0
    assert "embedded 30 images with resnet18" in capsys.readouterr().out
    t = pq.read_table(out).to_pandas()
    assert len(t) == 30 and list(t.columns[:3]) == ["id", "path", "label"] and t.shape[1] == 3 + 512
    labeled = t[t["label"].notna()]
    assert sorted(set(labeled["label"])) == list(CLASSES) and t["label"].isna().sum() == 12
    assert all(p.split("/")[-2] == lab for p, lab in zip(labeled["path"], labeled["label"]))
    assert np.isfinite(t.filter(regex=r"^e\d+$").to_numpy()).all() and t["e0"].std() > 0
    prepared = prepare(DataSpec(source="table", path=str(out), seed=0), tmp_path / "home")  # what --table reads
    assert prepared.manifest["feature_names"][:2] == ["e0", "e1"] and prepared.dim == 512
    assert len(load_split(prepared, "unlabeled")[0]) == 12


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--backbone", "resnet99"], "--backbone resnet99: not a torchvision classification model"),
        (["--weights", "missing.pt"], "--weights missing.pt: not a state dict of resnet18"),
        (["--out", "emb.txt"], "emb.txt: the table must end in .parquet or .csv"),
    ],
)
def test_bad_arguments_are_one_line(tmp_path, capsys, monkeypatch, extra, message):
    monkeypatch.chdir(tmp_path)
    root = _folder(tmp_path / "shapes", per_class=2, unlabeled=0)
    args = ["--images", str(root), "--out", "emb.parquet", "--weights", "none", *extra]
    assert main(args) == 2
    err = own_lines(capsys.readouterr().err)
    assert len(err) == 1 and err[0].startswith(f"error: {message}"), err
    assert not (tmp_path / "emb.parquet").exists()
