"""Training checkpoints with real Orbax: round trip, fallback past damaged steps, errors."""

from __future__ import annotations

import logging
import os

import jax
import numpy as np
import pytest

from galr_jax.checkpoints import CheckpointError, restore_variables
from galr_jax.config import ConfigError, config_from_dict
from galr_jax.models import build_model
from galr_jax.training import PlateauSchedule, TrainCheckpointer, abstract_train_state, make_optimizer
from galr_jax.training.checkpointer import UNREADABLE_SUBDIR
from training_helpers import TINY_MODEL


def _config(**model):
    return config_from_dict({"model": dict(TINY_MODEL, **model),
                             "train": {"keep_checkpoints": 2, "async_checkpoints": True}})


def _abstract(config):
    return abstract_train_state(build_model(config), make_optimizer(config.train))


def _state(config, step, seed=0):
    """A host train state with random contents (no compile needed)."""
    rng = np.random.default_rng(seed)
    abstract = _abstract(config)
    state = jax.tree.map(lambda x: rng.standard_normal(x.shape).astype(x.dtype)
                         if np.issubdtype(x.dtype, np.floating)
                         else rng.integers(0, 1000, x.shape).astype(x.dtype), abstract)
    return state.replace(step=np.asarray(step, np.int32), skipped_steps=np.asarray(3, np.int32),
                         consecutive_skips=np.asarray(1, np.int32))


def _position(step):
    return {"epoch": step // 5, "step_in_epoch": step % 5, "steps_per_epoch": 5}


def _save_steps(workdir, config, steps, metrics=None):
    checkpointer = TrainCheckpointer(str(workdir), config, _abstract(config))
    schedule = PlateauSchedule(scale=0.5, best=3.25, since_best=1, since_reduction=0)
    for step in steps:
        checkpointer.save(_state(config, step, seed=step), schedule, _position(step),
                          (metrics or {}).get(step))
    checkpointer.close()


def _assert_trees_equal(a, b):
    leaves_a, leaves_b = jax.tree.leaves(a), jax.tree.leaves(b)
    assert len(leaves_a) == len(leaves_b)
    for x, y in zip(leaves_a, leaves_b):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_round_trip_restores_every_part_of_the_state(tmp_path):
    config = _config()
    _save_steps(tmp_path, config, [2, 4], metrics={4: {"val_si_snri": 1.5}})
    checkpointer = TrainCheckpointer(str(tmp_path), config, _abstract(config))
    restored = checkpointer.restore_latest()
    checkpointer.close()
    _assert_trees_equal(restored.state, _state(config, 4, seed=4))
    assert restored.schedule == PlateauSchedule(scale=0.5, best=3.25, since_best=1, since_reduction=0)
    assert restored.data_position == _position(4)
    assert restored.metrics == {"val_si_snri": 1.5}
    # The params item is what inference reads.
    variables, meta = restore_variables(tmp_path, config, which="latest")
    _assert_trees_equal(variables["params"], restored.state.params)
    assert meta["step"] == 4


def test_fresh_workdir_restores_nothing(tmp_path):
    config = _config()
    checkpointer = TrainCheckpointer(str(tmp_path), config, _abstract(config))
    assert checkpointer.restore_latest() is None
    checkpointer.close()


def test_keeps_the_newest_and_the_best(tmp_path):
    config = _config()
    _save_steps(tmp_path, config, [2, 4, 6, 8], metrics={2: {"val_si_snri": 9.0},
                                                         4: {"val_si_snri": 1.0}})
    assert sorted(int(d) for d in os.listdir(tmp_path / "checkpoints") if d.isdigit()) == [2, 6, 8]


def _truncate_item(step_dir, item):
    for folder, _, files in os.walk(step_dir / item):
        for name in files:
            path = os.path.join(folder, name)
            with open(path, "r+b") as f:
                f.truncate(os.path.getsize(path) // 2)


@pytest.mark.parametrize("damage", ["truncate", "delete-item"])
def test_damaged_newest_step_falls_back_with_a_warning(tmp_path, caplog, damage):
    config = _config()
    _save_steps(tmp_path, config, [2, 4])
    newest = tmp_path / "checkpoints" / "4"
    if damage == "truncate":
        _truncate_item(newest, "train_state")
    else:
        import shutil
        shutil.rmtree(newest / "params")
    checkpointer = TrainCheckpointer(str(tmp_path), config, _abstract(config))
    with caplog.at_level(logging.WARNING):
        restored = checkpointer.restore_latest()
    assert int(restored.state.step) == 2
    _assert_trees_equal(restored.state, _state(config, 2, seed=2))
    assert "step 4" in caplog.text and "unreadable" in caplog.text
    # The damaged step is kept aside, and step 4 can be saved again.
    assert len(os.listdir(tmp_path / UNREADABLE_SUBDIR)) == 1
    assert checkpointer.steps() == [2]
    checkpointer.save(_state(config, 4, seed=40), PlateauSchedule(), _position(4))
    checkpointer.close()
    again = TrainCheckpointer(str(tmp_path), config, _abstract(config))
    _assert_trees_equal(again.restore_latest().state, _state(config, 4, seed=40))
    again.close()


def test_no_readable_step_is_a_clear_error(tmp_path):
    config = _config()
    _save_steps(tmp_path, config, [2])
    _truncate_item(tmp_path / "checkpoints" / "2", "params")
    checkpointer = TrainCheckpointer(str(tmp_path), config, _abstract(config))
    with pytest.raises(CheckpointError, match="no checkpoint can be restored"):
        checkpointer.restore_latest()
    checkpointer.close()
    assert (tmp_path / "checkpoints" / "2").exists()  # nothing was moved or deleted


def test_resuming_with_another_model_is_a_clear_error(tmp_path):
    _save_steps(tmp_path, _config(), [2])
    other = _config(features=32, num_filters=32)
    checkpointer = TrainCheckpointer(str(tmp_path), other, _abstract(other))
    with pytest.raises(ConfigError, match=r"model.features is 16 in the checkpoint, 32 now"):
        checkpointer.restore_latest()
    checkpointer.close()
