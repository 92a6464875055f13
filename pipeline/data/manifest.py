"""A prepared data set on disk: its ``manifest.json`` (splits, counts, shapes, classes, shard checksums, the inputs'
fingerprint) and :class:`Prepared`, the handle every later stage receives.

    prepared = Prepared.open("<home>/data/digits-1a2b3c4d5e6f")
    prepared.kind, prepared.shape, prepared.counts["labeled"]
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.config.data import DataSpec
from pipeline.core.errors import DataError
from pipeline.data import sources as S

FORMAT_VERSION = 2  # 2: "levels" (images)


@dataclass
class Prepared:
    root: Path
    manifest: dict = field(default_factory=dict)

    def __post_init__(self):
        self.root = Path(self.root)
        if not self.manifest:
            self.manifest = read_manifest(self.root)

    @classmethod
    def open(cls, root: str | os.PathLike) -> "Prepared":
        return cls(Path(root), read_manifest(Path(root)))

    def split_dir(self, split: str) -> Path:
        if split not in self.manifest["counts"]:
            raise DataError(
                f"{self.root / 'manifest.json'}: no split '{split}' (have {', '.join(self.manifest['counts'])})"
            )
        return self.root / split

    @property
    def splits(self) -> list[str]:
        return list(self.manifest["counts"])

    @property
    def ood_names(self) -> list[str]:
        return [s.split("/", 1)[1] for s in self.manifest["counts"] if s.startswith("ood/")]

    @property
    def kind(self) -> str:
        return self.manifest["kind"]

    @property
    def levels(self) -> int | None:
        """Images: the grey levels of the data (dequantization and bits/dim use them); vectors: None."""
        return self.manifest.get("levels") if self.kind == "image" else None

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.manifest["shape"])

    @property
    def dim(self) -> int:
        return int(np.prod(self.shape))

    @property
    def num_classes(self) -> int:
        return int(self.manifest["num_classes"])

    @property
    def class_names(self) -> list[str]:
        return list(self.manifest["class_names"])

    @property
    def counts(self) -> dict[str, int]:
        return dict(self.manifest["counts"])

    @property
    def feature_mean(self) -> np.ndarray | None:
        m = self.manifest.get("feature_mean")
        return None if m is None else np.asarray(m, np.float32)

    @property
    def feature_std(self) -> np.ndarray | None:
        s = self.manifest.get("feature_std")
        return None if s is None else np.asarray(s, np.float32)

    def verify(self) -> None:
        """Check every shard against the manifest checksums (DataError naming the first bad file)."""
        bad = verify_shards(self.root, self.manifest)
        if bad:
            raise DataError(bad)


def read_manifest(root: Path) -> dict:
    p = Path(root) / "manifest.json"
    try:
        return json.loads(p.read_text())
    except FileNotFoundError:
        raise DataError(f"{p}: no manifest (not a prepared data set)") from None
    except (OSError, json.JSONDecodeError) as e:
        raise DataError(f"{p}: unreadable manifest ({e})") from None


def verify_shards(root: Path, manifest: dict) -> str | None:
    for split, shards in manifest.get("shards", {}).items():
        for sh in shards:
            f = root / sh["file"]
            if not f.is_file():
                return f"{f}: missing shard of split '{split}'"
            if f.stat().st_size != sh["bytes"] or S.file_sha256(f) != sh["sha256"]:
                return f"{f}: shard of split '{split}' is corrupt or truncated (checksum mismatch)"
    for name, meta in manifest.get("extra_files", {}).items():
        f = root / name
        if not f.is_file() or S.file_sha256(f) != meta["sha256"]:
            return f"{f}: corrupt or missing (checksum mismatch)"
    return None


def spec_key(spec: DataSpec) -> dict:
    """The identity of a prepared data set: every field that changes the output, normalized."""
    d = dataclasses.asdict(spec)
    d.pop("data_dir")  # where the files live does not matter; their content is fingerprinted separately
    d["ood"] = list(spec.ood)
    d["feature_columns"] = list(spec.feature_columns)
    d["image_size"] = list(spec.image_size)  # as JSON reads it back: a reused data set's key must compare equal
    for k in ("path", "test_path"):
        if d[k] and "://" not in d[k]:
            d[k] = str(Path(d[k]).expanduser().resolve())
    if spec.source not in S.GENERATED:
        d.pop("n_points"), d.pop("noise")
    if spec.source not in ("table", "images"):
        for k in ("path", "test_path"):
            d.pop(k)
    if spec.source != "table":
        for k in ("feature_columns", "label_column", "image_column", "num_classes"):
            d.pop(k)
    if spec.source != "images":
        for k in ("unlabeled_dir", "image_size", "image_mode"):
            d.pop(k)
    d["format_version"] = FORMAT_VERSION
    return d


def dataset_name(spec: DataSpec) -> str:
    h = hashlib.sha256(json.dumps(spec_key(spec), sort_keys=True).encode()).hexdigest()[:12]
    stem = spec.source if spec.source not in ("table", "images") else f"{spec.source}-{Path(spec.path or 'x').stem}"
    stem = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in stem)
    return f"{stem}-{h}"


def fingerprint(spec: DataSpec) -> dict[str, Any]:
    files = list(S.input_files(spec))
    for name in spec.ood:
        files += S.input_files(spec, source=name, test_only=True)
    out: dict[str, Any] = {str(f): {"bytes": f.stat().st_size, "sha256": S.file_sha256(f)} for f in files}
    if spec.source == "images":
        from pipeline.data.sources.folder import folder_fingerprint

        out.update(folder_fingerprint(spec))
    if spec.source in S.SKLEARN or any(o in S.SKLEARN + S.GENERATED for o in spec.ood) or spec.source in S.GENERATED:
        from importlib.metadata import version  # not `import sklearn`: ~0.5 s a job for its version string

        out["sklearn"] = version("scikit-learn")
    return out
