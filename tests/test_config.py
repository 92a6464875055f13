"""The typed configuration: shipped experiments, YAML, typed key=value overrides, smoke, validation."""

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from pipeline.config import EXPERIMENTS, Config, ConfigError, dump_yaml, load_yaml, resolve
from pipeline.config.rules import FieldSpec, Known, Range, Text, leaf_fields, problem

REPO = Path(__file__).resolve().parent.parent
FIELDS = leaf_fields(Config)


@pytest.mark.parametrize("name", sorted(EXPERIMENTS))
def test_every_experiment_resolves_and_round_trips(name):
    user = {"table": ["data.path=my.csv"], "images": ["data.path=photos", "data.image_size=28,28"]}  # the user's data
    cfg = resolve(name, overrides=user.get(name, []))
    assert Config.from_dict(cfg.to_dict()) == cfg
    assert cfg.name == name


def test_overrides_are_typed_by_field():
    cfg = resolve(
        "moons",
        overrides=[
            "train.lr=3e-4",
            "train.steps=7",
            "train.bf16=true",
            "data.ood=mnist,notmnist",
            "data.n_unlabeled=none",
        ],
    )
    assert cfg.train.lr == pytest.approx(3e-4) and isinstance(cfg.train.lr, float)
    assert cfg.train.steps == 7 and isinstance(cfg.train.steps, int)
    assert cfg.train.bf16 is True
    assert cfg.data.ood == ("mnist", "notmnist")
    assert cfg.data.n_unlabeled is None


def test_unknown_key_lists_valid_keys():
    with pytest.raises(ConfigError) as e:
        resolve("digits", overrides=["train.learning_rate=1"])
    msg = str(e.value)
    assert "train.learning_rate" in msg and "train.lr" in msg and "\n" not in msg


@pytest.mark.parametrize(
    "item,fragment",
    [
        ("train.steps=many", "train.steps"),
        ("train.bf16=maybe", "train.bf16"),
        ("train.method=magic", "train.method"),
        ("train.lr=-1", "train.lr"),
        ("train.steps=2.9e0", "train.steps"),
        ("train.lr=nan", "train.lr"),
        ("data.source=notmnist", "data.source"),
        ("data.ood=mnist,nosuchset", "data.ood"),
        ("name=a/b", "name"),
        ("nokeyvalue", "key=value"),
    ],
)
def test_bad_values_are_rejected_with_the_key(item, fragment):
    with pytest.raises(ConfigError, match=fragment.replace(".", r"\.")):
        resolve("digits", overrides=[item])


def test_yaml_round_trip_and_base(tmp_path):
    cfg = resolve("digits", overrides=["train.lr=0.002"])
    p = tmp_path / "c.yaml"
    p.write_text(dump_yaml(cfg))
    assert load_yaml(p) == cfg
    q = tmp_path / "d.yaml"
    q.write_text("base: mnist\ntrain:\n  steps: 3\n")
    d = resolve(str(q))
    assert d.data.source == "mnist" and d.train.steps == 3 and d.data.n_labeled == 1000
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  epochz: 3\n")
    with pytest.raises(ConfigError, match="epochz"):
        resolve(str(bad))


def test_smoke_shrinks_but_keeps_the_experiment():
    full, small = resolve("mnist"), resolve("mnist", smoke=True)
    assert small.data.source == full.data.source == "mnist"
    assert small.train.steps <= 48 and small.data.n_unlabeled <= 1024 and not small.train.use_gpu
    assert small.model.mid_channels < full.model.mid_channels


def test_mnist_is_the_papers_setting():
    cfg = resolve("mnist")
    assert (cfg.data.n_labeled, cfg.data.n_val) == (1000, 1000)
    assert set(cfg.data.ood) == {"fashion_mnist", "notmnist"}
    assert (cfg.model.num_scales, cfg.model.mid_channels, cfg.model.num_blocks) == (2, 64, 8)


def test_flat_params_cover_every_field():
    flat = resolve("digits").flat()
    assert "train.lr" in flat and "model.means_scale" in flat and "data.n_labeled" in flat


def test_flat_keys_are_the_schemas_leaf_fields():
    assert [f.key for f in FIELDS] == list(Config().flat())


def test_every_field_declares_a_rule():
    """Adding a field without a rule fails here (and any resolve() fails with a TypeError naming the field)."""
    missing = [f.key for f in FIELDS if not f.has_rule]
    assert not missing, f"fields without a rule: {missing}"
    unranged = [f.key for f in FIELDS if f.base in (int, float) and not isinstance(f.rule, Range)]
    assert not unranged, f"numeric fields without a Range: {unranged}"

    @dataclass
    class Bare:
        n: int = 1
        ok: bool = True

    assert [f.has_rule for f in leaf_fields(Bare)] == [False, True]


def bad_value(f: FieldSpec) -> str | None:
    """A value that breaks the field's rule, as override text; None when the rule allows any text."""
    if f.choices:
        return "not_a_choice"
    if f.base is bool:
        return "maybe"
    if isinstance(f.rule, Known):
        return "no_such_source"
    if isinstance(f.rule, Text):
        return None if f.rule.pattern is None else "a b/c"
    r = f.rule
    bounds = [b for b in (r.ge, r.gt, r.le, r.lt) if b is not None]
    candidates = [x for b in bounds for x in (b - 1, b - 2, b, b + 1, b + 2, b - 0.5, b + 0.5)]
    found = [x for x in candidates if (f.base is float or float(x).is_integer()) and not r.allows(x)]
    assert found, f"{f.key}: no out-of-range value for {r}"
    return repr(int(found[0]) if f.base is int else float(found[0]))


@pytest.mark.parametrize("f", FIELDS, ids=[f.key for f in FIELDS])
def test_every_field_rejects_a_value_outside_its_rule(f):
    text = bad_value(f)
    if text is None:
        assert isinstance(f.rule, Text) and f.base in (str, tuple)  # free text (paths, column names)
        return
    with pytest.raises(ConfigError) as e:
        resolve("digits", overrides=[f"{f.key}={text}"])
    msg = str(e.value)
    assert msg.startswith(f"{f.key}=") and "must be" in msg and "\n" not in msg, msg


def test_rule_messages_say_what_is_allowed():
    spec = {f.key: f for f in FIELDS}
    assert problem(spec["eval.ood_fpr"], 1.5) == "must be a number in (0, 1)"
    assert problem(spec["train.consistency_threshold"], 1.0) == "must be a number in [0, 1)"
    assert problem(spec["train.log_every"], 0) == "must be an integer >= 1 (or None)"
    assert problem(spec["train.batch_rows"], 1) == "must be an integer >= 2, or 0 (off)"
    assert problem(spec["train.batch_rows"], 0) is None and problem(spec["train.grad_clip"], 0.0) is None
    assert problem(spec["train.steps"], True) == "must be an integer"
    assert problem(spec["data.n_unlabeled"], None) is None and problem(spec["train.lr"], None) is not None
    assert problem(spec["model.norm"], "layer") == "must be one of batch, act, none"


def test_whole_numbers_only_for_integers():
    assert resolve("digits", overrides=["train.steps=2e3"]).train.steps == 2000
    for text in ("2.9e0", "2.5", "inf"):
        with pytest.raises(ConfigError, match=r"train\.steps="):
            resolve("digits", overrides=[f"train.steps={text}"])


@pytest.mark.parametrize(
    "yaml_text,fragment",
    [
        ("train:\n  steps: 2.9\n", "train.steps=2.9: must be a whole number"),
        ("train:\n  steps: true\n", "train.steps=True: must be an integer"),
        ("train:\n  lr: null\n", "train.lr=None: must be a number"),
        ("train:\n  log_every: 0\n", "train.log_every=0: must be an integer >= 1"),
        ("eval:\n  ood_fpr: 1.5\n", "eval.ood_fpr=1.5"),
        ("model: 3\n", "model must be a mapping"),
    ],
)
def test_yaml_values_are_checked_with_the_file_and_key(tmp_path, yaml_text, fragment):
    p = tmp_path / "c.yaml"
    p.write_text(yaml_text)
    with pytest.raises(ConfigError) as e:
        resolve(str(p), smoke=True)
    assert str(e.value).startswith(f"{p}: ") and fragment in str(e.value) and "\n" not in str(e.value)


def test_yaml_whole_float_is_an_integer(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("train:\n  steps: 2000.0\n")
    cfg = resolve(str(p))
    assert cfg.train.steps == 2000 and isinstance(cfg.train.steps, int)


@pytest.mark.parametrize(
    "overrides,fragment",
    [
        (["train.method=flowgmm_cons", "ingest.two_views=false"], "needs ingest.two_views=true"),
        (["train.steps=200", "train.consistency_start_step=200"], "must be < train.steps=200"),
        (["train.steps=200", "train.inject_failure_at_step=500", "train.num_workers=2"], "must be < train.steps=200"),
        (["train.use_gpu=true", "train.gpus_per_worker=1.5"], "train.gpus_per_worker=1.5"),
        (["ingest.labeled_mode=split", "train.num_workers=2", "data.n_labeled=40"], "too few to split"),
        (["data.n_unlabeled=40", "train.num_workers=2"], "fewer than ingest.unlabeled_batch=32 x 2 workers"),
        (["data.source=table"], "data.source='table' needs data.path"),
        (["data.label_column=y", "data.num_classes=3"], "data.num_classes=3 is only for data.source='table'"),
    ],
)
def test_rules_between_fields(overrides, fragment):
    with pytest.raises(ConfigError, match=fragment.replace(".", r"\.").replace("(", r"\(")):
        resolve("digits", overrides=overrides)


def test_generated_pool_must_leave_unlabeled_rows():
    with pytest.raises(ConfigError, match=r"data\.n_points=100 leaves 40 unlabeled rows"):
        resolve("moons", overrides=["data.n_points=100"])
    assert resolve("moons", overrides=["data.n_points=200"]).data.n_points == 200


def test_batch_rows_scaling_is_validated_after_scaling():
    cfg = resolve("mnist", overrides=["train.batch_rows=2048"])
    assert cfg.ingest.labeled_batch + cfg.ingest.unlabeled_batch == 2048


def test_run_exits_2_with_one_line_before_ray_or_data(tmp_path):
    """The entry script: one line on stderr naming the key, exit status 2, nothing started or written."""
    home, ray_tmp = tmp_path / "home", tmp_path / "ray"
    env = {**os.environ, "FLOWGMM_HOME": str(home), "RAY_TMPDIR": str(ray_tmp), "RAY_AUTH_MODE": "disabled"}
    env.pop("RAY_ADDRESS", None)
    r = subprocess.run(
        [sys.executable, "pipeline/run.py", "train.log_every=0"],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=300,
    )
    assert r.returncode == 2, r.stderr
    assert r.stderr.splitlines() == ["error: train.log_every=0: must be an integer >= 1 (or None)"]
    assert not ray_tmp.exists()  # Ray never started (its session directory would be here)
    written = sorted(p.name for p in home.rglob("*")) if home.exists() else []
    assert written == [], written  # no data prepared, no MLflow store, no run record
