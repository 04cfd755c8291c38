"""The typed config: defaults, deltas, extends, overrides, and one-line errors naming file and key."""

from pathlib import Path

import pytest
import yaml

from hmsa import config

ROOT = Path(__file__).resolve().parents[1]


def test_defaults_are_the_paper_values() -> None:
    cfg = config.load()
    assert cfg.autolabel.threshold == 0.9  # section 4, not the authors' code's 0.5
    assert cfg.train.momentum == 0.9 and cfg.train.weight_decay == 5e-4
    assert cfg.train.aux_weight == 0.4


def test_yaml_delta_extends_and_overrides(tmp_path: Path) -> None:
    (tmp_path / "base.yaml").write_text("train: {iterations: 7, lr: 0.5}\n")
    (tmp_path / "exp.yaml").write_text("extends: base.yaml\ntrain: {lr: 1}\ndata: {crop: [8, 16]}\n")
    cfg = config.load(tmp_path / "exp.yaml", ["train.batch_size=3", "model.attention=false", "train.method=single"])
    assert cfg.train.iterations == 7
    assert cfg.train.lr == 1.0 and isinstance(cfg.train.lr, float)
    assert cfg.data.crop == [8, 16]
    assert cfg.train.batch_size == 3 and cfg.model.attention is False


def test_unknown_key_names_file_and_key(tmp_path: Path) -> None:
    f = tmp_path / "bad.yaml"
    f.write_text("train: {lrr: 0.1}\n")
    with pytest.raises(config.ConfigError, match=r"bad\.yaml: unknown key 'train\.lrr'"):
        config.load(f)


def test_wrong_type_names_file_and_key(tmp_path: Path) -> None:
    f = tmp_path / "bad.yaml"
    f.write_text("train: {iterations: many}\n")
    with pytest.raises(config.ConfigError, match=r"bad\.yaml: 'train\.iterations': expected int"):
        config.load(f)


def test_bad_override_and_choice() -> None:
    with pytest.raises(config.ConfigError, match="train.method"):
        config.load(None, ["train.method=bogus"])
    with pytest.raises(config.ConfigError, match="autolabel.threshold"):
        config.load(None, ["autolabel.threshold=1.5"])
    with pytest.raises(config.ConfigError, match="expected key.sub=value"):
        config.load(None, ["train.iterations"])


def test_dump_roundtrip(tmp_path: Path) -> None:
    cfg = config.load(None, ["seed=5", "eval.scales=[0.25, 1.0]"])
    config.dump(cfg, tmp_path / "c.yaml")
    again = config.load(tmp_path / "c.yaml")
    assert again == cfg
    assert config.config_hash(again) == config.config_hash(cfg)


@pytest.mark.parametrize("path", sorted((ROOT / "configs" / "experiments").rglob("*.yaml")), ids=lambda p: p.name)
def test_shipped_experiment_configs_load(path: Path) -> None:
    config.load(path)


def test_missing_file_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(config.ConfigError) as err:
        config.load(tmp_path / "nope.yaml")
    assert "nope.yaml" in str(err.value) and "\n" not in str(err.value)


def test_yaml_top_level_must_be_mapping(tmp_path: Path) -> None:
    f = tmp_path / "list.yaml"
    f.write_text(yaml.safe_dump([1, 2]))
    with pytest.raises(config.ConfigError, match="mapping"):
        config.load(f)


def test_attention_method_needs_attention_head() -> None:
    with pytest.raises(config.ConfigError, match="model.attention"):
        config.load(None, ["model.attention=false", "train.method=hierarchical"])
