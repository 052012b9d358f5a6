"""Configs: strict validation with key paths and allowed values; every shipped YAML validates."""

from __future__ import annotations

from pathlib import Path

import pytest

from medtune.config import load_config
from medtune.data.build import DataConfig
from medtune.errors import ConfigError
from medtune.evaluate.run import EvalConfig
from medtune.model_info import ModelInfoConfig
from medtune.study.run import StudyRunConfig
from medtune.train.config import TrainConfig

REPO = Path(__file__).resolve().parents[1]

CONFIG_DIRS = {"data": DataConfig, "model": ModelInfoConfig, "train": TrainConfig, "eval": EvalConfig,
               "study": StudyRunConfig, "demo.yaml": StudyRunConfig}
"""configs/<dir>/*.yaml (or a top-level configs/<file>) -> the model that validates it. A YAML outside
these fails the test below."""


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "c.yaml"
    p.write_text(text)
    return p


def test_unknown_key_names_path_and_allowed_keys(tmp_path):
    p = write(tmp_path, "train:\n  - adapter: pubmedqa\n    path: x.json\n    splitt: test\n")
    with pytest.raises(ConfigError) as err:
        load_config(DataConfig, p)
    msg = str(err.value)
    assert "train.0.splitt: unknown key" in msg
    assert "allowed keys:" in msg and "split" in msg and str(p) in msg


def test_bad_literal_lists_allowed_values(tmp_path):
    p = write(tmp_path, "mix_strategy: shuffle\n")
    with pytest.raises(ConfigError) as err:
        load_config(DataConfig, p)
    assert "mix_strategy" in str(err.value)
    assert "'fixed_share', 'temperature' or 'concat'" in str(err.value)


def test_bad_number_and_unknown_adapter(tmp_path):
    p = write(tmp_path, "general_share: 1.5\ntrain:\n  - adapter: pubmedqaa\n    path: x\n")
    with pytest.raises(ConfigError) as err:
        load_config(DataConfig, p)
    msg = str(err.value)
    assert "general_share: Input should be less than or equal to 1" in msg
    assert "pubmedqaa" in msg and "medmcqa" in msg  # lists the valid adapters


def test_yaml_syntax_error_names_line(tmp_path):
    p = write(tmp_path, "seed: 1\ntrain: [\n  oops: }\n")
    with pytest.raises(ConfigError, match=r"c\.yaml, line 3"):
        load_config(DataConfig, p)


def test_overrides_are_validated_too(tmp_path):
    p = write(tmp_path, "seed: 1\n")
    assert load_config(DataConfig, p, {"block_size": 64}).block_size == 64
    with pytest.raises(ConfigError, match="block_size"):
        load_config(DataConfig, p, {"block_size": "big"})


def test_nested_unknown_key_in_model_section(tmp_path):
    p = write(tmp_path, "model:\n  spec: smollm2-135m\n  trust_remote: true\n")
    with pytest.raises(ConfigError, match=r"model\.trust_remote: unknown key \(allowed keys: spec, trust_remote_code, allow_pickle, allow_other_base, dtype, attn_implementation\)"):
        load_config(ModelInfoConfig, p)


def test_demo_data_config_validates():
    from medtune.demo import demo_data_dir

    cfg = load_config(DataConfig, demo_data_dir() / "demo-data.yaml")
    assert cfg.general_share == 0.2 and cfg.drop_leaked


def test_every_shipped_config_validates():
    files = sorted((REPO / "configs").rglob("*.yaml"))
    assert files, "configs/ ships YAML files"
    for f in files:
        kind = f.relative_to(REPO / "configs").parts[0]
        if kind == "accelerate":  # accelerate's own launch configs, checked by accelerate's loader
            from accelerate.commands.config.config_args import load_config_from_file

            assert load_config_from_file(str(f)).num_processes >= 1
            continue
        assert kind in CONFIG_DIRS, f"{f}: no config model for configs/{kind}/ (add it to CONFIG_DIRS)"
        load_config(CONFIG_DIRS[kind], f)
