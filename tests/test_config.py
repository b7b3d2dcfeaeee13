"""Config files: the built-in ones load; mistakes are named, never silently defaulted."""

from __future__ import annotations

import pytest

from gourmetgram.config import load_config, override
from gourmetgram.errors import ConfigError


@pytest.mark.parametrize("name", ["demo", "food11"])
def test_builtin_configs_load(name):
    cfg = load_config(name)
    assert cfg.model.image_size in (64, 224)
    assert cfg.train.epochs > 0


def test_unknown_key_is_named(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  epochz: 3\n")
    with pytest.raises(ConfigError, match=r"train: unknown key\(s\) \['epochz'\]"):
        load_config(path)


def test_wrong_type_is_named(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  batch_size: lots\n")
    with pytest.raises(ConfigError, match="train.batch_size must be int"):
        load_config(path)


def test_out_of_range(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("evaluation:\n  min_overall_accuracy: 85\n")
    with pytest.raises(ConfigError, match=r"min_overall_accuracy must be in \[0, 1\]"):
        load_config(path)


def test_missing_config_lists_builtins():
    with pytest.raises(ConfigError, match="built-in configs: .*demo"):
        load_config("nope")


def test_invalid_yaml(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(path)


def test_override_checks_values():
    cfg = override(load_config("demo"), "train", epochs=0)
    assert cfg.train.epochs == 0
    with pytest.raises(ConfigError, match="train.epochs must be >= 0"):
        override(cfg, "train", epochs=-1)
