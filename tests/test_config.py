"""The typed configuration: shipped experiments, YAML, typed key=value overrides, smoke, validation."""

import pytest

from pipeline.config import EXPERIMENTS, Config, ConfigError, dump_yaml, load_yaml, resolve


@pytest.mark.parametrize("name", sorted(EXPERIMENTS))
def test_every_experiment_resolves_and_round_trips(name):
    cfg = resolve(name)
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
