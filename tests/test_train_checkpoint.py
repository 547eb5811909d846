"""Training checkpoints with real Orbax: round trip, real read faults, unfinalized steps,
runtime settings and saved configs of other versions."""

from __future__ import annotations

import json
import logging
import os
import shutil

import jax
import numpy as np
import pytest

from galr_jax.config import (SCHEMA_VERSION, ConfigError, RuntimeConfig, config_from_dict,
                             config_to_dict)
from galr_jax.models import build_model
from galr_jax.training import (PlateauSchedule, TrainCheckpointer, abstract_train_state,
                               make_optimizer)
from galr_jax.training.checkpoints import CheckpointError, restore_variables
from galr_jax.training.workdir import prepare_workdir
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


def _largest_data_file(step_dir, item):
    """The file holding most of an item's array bytes (OCDBT's merged data)."""
    return max((step_dir / item / "d").iterdir(), key=lambda p: p.stat().st_size)


def _replace_by_directory(path):
    """A real read fault: ``open`` or TensorStore's read of ``path`` fails with EISDIR."""
    path.unlink()
    path.mkdir()


def _tree_snapshot(root):
    """Every file and folder under ``root`` with its bytes, to prove nothing was touched."""
    snapshot = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs:
            snapshot[os.path.relpath(os.path.join(folder, name), root)] = "dir"
        for name in files:
            with open(os.path.join(folder, name), "rb") as f:
                snapshot[os.path.relpath(os.path.join(folder, name), root)] = f.read()
    return snapshot


@pytest.mark.parametrize("damage, cause", [
    ("meta-read-error", "IsADirectoryError"),  # the OS refuses the read of the meta file
    ("data-read-error", "NOT_FOUND"),  # TensorStore cannot read the array data file
    ("truncate", "OUT_OF_RANGE"),  # a finalized step with half of its bytes
    ("delete-item", "params"),  # an item removed by hand
])
def test_unreadable_finalized_step_stops_with_a_clear_error_and_touches_nothing(
        tmp_path, damage, cause):
    """A finalized step that cannot be read is never skipped, moved or deleted: the
    fault may be transient, and falling back to an older step would discard training."""
    config = _config()
    _save_steps(tmp_path, config, [2, 4])
    newest = tmp_path / "checkpoints" / "4"
    if damage == "meta-read-error":
        _replace_by_directory(newest / "meta" / "metadata")
    elif damage == "data-read-error":
        _replace_by_directory(_largest_data_file(newest, "params"))
    elif damage == "truncate":
        _truncate_item(newest / "params", "d")  # the array bytes, not the metadata
    else:
        shutil.rmtree(newest / "params")
    before = _tree_snapshot(tmp_path)
    checkpointer = TrainCheckpointer(str(tmp_path), config, _abstract(config))
    with pytest.raises(CheckpointError) as error:
        checkpointer.restore_latest()
    checkpointer.close()
    message = str(error.value)
    assert message.startswith(f"{newest}: reading this checkpoint failed"), message
    assert cause in message and "Nothing was moved or deleted" in message, message
    assert _tree_snapshot(tmp_path) == before
    # Inference's restore obeys the same rule.
    with pytest.raises(CheckpointError, match=f"^{newest}: reading this checkpoint failed"):
        restore_variables(tmp_path, which="latest")
    assert _tree_snapshot(tmp_path) == before


def test_a_step_orbax_never_finalized_is_skipped_and_left_in_place(tmp_path, caplog):
    """A save cut short by a kill leaves ``<step>.orbax-checkpoint-tmp``, which Orbax
    marks incomplete: resume uses the step before it, and saving that step again works."""
    config = _config()
    _save_steps(tmp_path, config, [2, 4])
    folder = tmp_path / "checkpoints"
    # What a kill during the write of step 6 leaves: a temporary folder, half written.
    partial = folder / "6.orbax-checkpoint-tmp"
    shutil.copytree(folder / "4", partial)
    (partial / "commit_success.txt").unlink()
    _truncate_item(partial, "params")
    before = _tree_snapshot(tmp_path)
    checkpointer = TrainCheckpointer(str(tmp_path), config, _abstract(config))
    with caplog.at_level(logging.WARNING):
        restored = checkpointer.restore_latest()
    _assert_trees_equal(restored.state, _state(config, 4, seed=4))
    assert "6.orbax-checkpoint-tmp, which Orbax never finalized" in caplog.text
    assert "resuming from step 4" in caplog.text
    assert _tree_snapshot(tmp_path) == before
    checkpointer.save(_state(config, 6, seed=60), PlateauSchedule(), _position(6))
    checkpointer.close()
    again = TrainCheckpointer(str(tmp_path), config, _abstract(config))
    _assert_trees_equal(again.restore_latest().state, _state(config, 6, seed=60))
    again.close()


def test_changed_runtime_settings_restore_the_same_state(tmp_path, caplog):
    """Runtime settings are not the architecture: a run saved with the defaults resumes
    under remat, another unroll and bf16, also when they are spelled the old way."""
    config = _config()
    _save_steps(tmp_path, config, [2, 4])
    changed = config_from_dict(config_to_dict(config), [
        "runtime.remat=true", "runtime.lstm_unroll=2", "model.compute_dtype=bfloat16"])
    assert changed.runtime == RuntimeConfig(compute_dtype="bfloat16", lstm_unroll=2, remat=True)
    assert changed.model == config.model
    checkpointer = TrainCheckpointer(str(tmp_path), changed, _abstract(changed))
    restored = checkpointer.restore_latest()
    checkpointer.close()
    assert int(restored.state.step) == 4
    _assert_trees_equal(restored.state, _state(config, 4, seed=4))
    with caplog.at_level(logging.WARNING):
        prepare_workdir(str(tmp_path), config)
        assert prepare_workdir(str(tmp_path), changed) is True
    assert "runtime.remat: False -> True" in caplog.text


def test_a_saved_config_with_unknown_runtime_and_train_keys_restores_with_warnings(
        tmp_path, caplog):
    """A checkpoint written by a version with fields this one does not know (or no
    longer has) restores; each dropped key is named."""
    config = _config()
    _save_steps(tmp_path, config, [2])
    meta_file = tmp_path / "checkpoints" / "2" / "meta" / "metadata"
    meta = json.loads(meta_file.read_text())
    assert meta["config"]["schema_version"] == SCHEMA_VERSION
    meta["config"]["runtime"]["fused_attention"] = "pallas"
    meta["config"]["train"]["gradient_accumulation"] = 4
    meta_file.write_text(json.dumps(meta))
    checkpointer = TrainCheckpointer(str(tmp_path), config, _abstract(config))
    with caplog.at_level(logging.WARNING):
        restored = checkpointer.restore_latest()
        variables, saved = restore_variables(tmp_path, which="latest")
    checkpointer.close()
    assert int(restored.state.step) == 2 and saved["config"] == config
    _assert_trees_equal(variables["params"], restored.state.params)
    assert "dropped unknown key runtime.fused_attention" in caplog.text
    assert "dropped unknown key train.gradient_accumulation" in caplog.text


def test_a_saved_config_with_an_unknown_model_key_is_an_error_naming_it(tmp_path):
    config = _config()
    _save_steps(tmp_path, config, [2])
    meta_file = tmp_path / "checkpoints" / "2" / "meta" / "metadata"
    meta = json.loads(meta_file.read_text())
    meta["config"]["model"]["rotary_positions"] = True
    meta_file.write_text(json.dumps(meta))
    checkpointer = TrainCheckpointer(str(tmp_path), config, _abstract(config))
    with pytest.raises(ConfigError, match=r"checkpoints/2.*unknown architecture key "
                                          r"model\.rotary_positions"):
        checkpointer.restore_latest()
    checkpointer.close()
    with pytest.raises(ConfigError, match=r"model\.rotary_positions"):
        restore_variables(tmp_path, which="latest")


def test_resuming_with_another_model_is_a_clear_error(tmp_path):
    _save_steps(tmp_path, _config(), [2])
    other = _config(features=32, num_filters=32)
    checkpointer = TrainCheckpointer(str(tmp_path), other, _abstract(other))
    with pytest.raises(ConfigError, match=r"model.features is 16 in the checkpoint, 32 now"):
        checkpointer.restore_latest()
    checkpointer.close()
