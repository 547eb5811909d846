"""The config schema: architecture apart from runtime settings, renamed fields, saved
configs of other versions (lenient) against user-written ones (strict)."""

from __future__ import annotations

import logging

import pytest
import yaml

from galr_jax.config import (RENAMED_FIELDS, SCHEMA_VERSION, ConfigError, RuntimeConfig,
                             config_from_dict, config_from_saved, config_to_dict, load_config,
                             save_config)

MOVED = {"compute_dtype": "bfloat16", "lstm_unroll": 3, "remat": True,
         "recompute_attention": False}


def test_runtime_settings_are_not_part_of_the_architecture():
    config = config_from_dict({"runtime": MOVED})
    assert config.runtime == RuntimeConfig(**MOVED)
    assert not set(MOVED) & set(config_to_dict(config)["model"])


def test_old_spellings_in_a_file_and_in_overrides_map_to_runtime_with_a_warning(
        tmp_path, caplog):
    path = tmp_path / "old.yaml"
    path.write_text(yaml.safe_dump({"model": {"features": 32, "compute_dtype": "bfloat16",
                                              "lstm_unroll": 3}}))
    with caplog.at_level(logging.WARNING):
        config = load_config(path, ["model.remat=true", "model.recompute_attention=false"])
    assert config.runtime == RuntimeConfig(**MOVED)
    assert config.model.features == 32
    for old in ("compute_dtype", "lstm_unroll", "remat", "recompute_attention"):
        assert f"model.{old} is deprecated; it is read as runtime.{old}" in caplog.text
    assert f"{path}: model.compute_dtype is deprecated" in caplog.text


def test_an_old_spelled_override_beats_the_files_new_spelling(tmp_path):
    path = tmp_path / "new.yaml"
    path.write_text(yaml.safe_dump({"runtime": {"remat": False}}))
    assert load_config(path, ["model.remat=true"]).runtime.remat is True


def test_both_spellings_with_different_values_in_one_file_are_an_error():
    with pytest.raises(ConfigError, match="model.remat=True and runtime.remat=False"):
        config_from_dict({"model": {"remat": True}, "runtime": {"remat": False}})


@pytest.mark.parametrize("override, key", [
    ("runtime.remat=maybe", "runtime.remat"),
    ("runtime.remmat=true", "runtime.remmat"),
    ("runtime.compute_dtype=float16", "runtime.compute_dtype"),
    ("runtime.lstm_unroll=0", "runtime.lstm_unroll"),
    ("train.bogus=1", "train.bogus"),
])
def test_user_overrides_stay_strict(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        config_from_dict({}, [override])


def test_saved_config_carries_the_schema_version_and_reads_back(tmp_path):
    config = config_from_dict({"runtime": MOVED, "train": {"num_steps": 7}})
    path = tmp_path / "config.yaml"
    save_config(config, path)
    saved = yaml.safe_load(path.read_text())
    assert saved["schema_version"] == SCHEMA_VERSION
    assert config_from_saved(saved, str(path)) == config
    assert load_config(path) == config  # a saved config is also a valid user config


def test_a_version_1_saved_config_reads_with_runtime_fields_moved(caplog):
    old = config_to_dict(config_from_dict({}))
    old["model"].update(MOVED)
    del old["runtime"]
    with caplog.at_level(logging.WARNING):
        config = config_from_saved(old, "run/config.yaml")
    assert config.runtime == RuntimeConfig(**MOVED)
    assert "run/config.yaml: model.remat is deprecated" in caplog.text
    assert set(RENAMED_FIELDS) >= {f"model.{k}" for k in MOVED}


def test_saved_config_drops_unknown_non_architecture_keys_naming_each(caplog):
    tree = config_to_dict(config_from_dict({}))
    tree["runtime"]["fused_attention"] = "pallas"
    tree["train"]["gradient_accumulation"] = 4
    tree["eval"]["old_option"] = True
    tree["logging"] = {"wandb": True}
    del tree["train"]["seed"]  # a field this version has and the writer did not
    with caplog.at_level(logging.WARNING):
        config = config_from_saved(tree, "ckpt/5 (meta)")
    assert config == config_from_dict({})
    for key in ("runtime.fused_attention", "train.gradient_accumulation", "eval.old_option"):
        assert f"ckpt/5 (meta): dropped unknown key {key}" in caplog.text
    assert "dropped unknown section 'logging'" in caplog.text


def test_saved_config_with_an_unknown_architecture_key_is_an_error_naming_it():
    tree = config_to_dict(config_from_dict({}))
    tree["model"]["rotary_positions"] = True
    with pytest.raises(ConfigError, match=r"^run/config.yaml: unknown architecture key "
                                          r"model\.rotary_positions"):
        config_from_saved(tree, "run/config.yaml")
