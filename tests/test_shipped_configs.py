"""The configs shipped in the package: loadable by name and by path, and all in the wheel."""

import configparser
import glob
import os

import pytest

from galr_jax.config import (SHIPPED_CONFIGS, config_to_dict, load_config, resolve_config,
                             shipped_config_names)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The names the issue and the README promise; more may be added.
PROMISED = ("demo", "galr_1.5m", "galr_2.3m", "galr_w2", "dprnn", "dprnn_w2",
            "pretrained/galr_voices_8k")


def test_every_promised_name_loads_the_same_config_as_its_repository_path():
    assert set(PROMISED) <= set(shipped_config_names())
    for name in PROMISED:
        by_path = load_config(os.path.join(REPO, "configs", f"{name}.yaml"))
        assert config_to_dict(load_config(name)) == config_to_dict(by_path), name
        assert config_to_dict(load_config(f"{name}.yaml")) == config_to_dict(by_path), name


def test_repository_configs_folder_is_the_shipped_one():
    # configs/ is a link, so the paths in the README and scripts and the names read one file.
    assert os.path.samefile(os.path.join(REPO, "configs"), os.fspath(SHIPPED_CONFIGS))


def test_a_file_in_the_working_folder_wins_over_a_shipped_name(tmp_path, monkeypatch):
    (tmp_path / "demo").write_text("model:\n  features: 24\n")
    monkeypatch.chdir(tmp_path)
    assert load_config("demo").model.features == 24
    assert load_config("demo", ["model.features=40"]).model.features == 40


def test_an_unknown_name_lists_the_shipped_ones(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError) as error:
        resolve_config("galr_15m")
    message = str(error.value)
    assert message.startswith("galr_15m: config file not found")
    for name in PROMISED:
        assert name in message


def test_setup_cfg_package_data_covers_every_shipped_config():
    """A config in a new subfolder would be missing from the wheel without a new glob."""
    setup = configparser.ConfigParser()
    setup.read(os.path.join(REPO, "setup.cfg"))
    package = os.path.join(REPO, "galr_jax")
    patterns = setup["options.package_data"]["galr_jax"].split()
    packaged = {os.path.relpath(path, package)
                for pattern in patterns for path in glob.glob(os.path.join(package, pattern))}
    shipped = {os.path.join("configs", f"{name}.yaml") for name in shipped_config_names()}
    assert shipped == packaged
