"""Saving and resuming a training run with the layout of :mod:`galr_jax.checkpoints`.

Each step folder holds ``params`` (``{'params': ...}``, what inference reads),
``train_state`` (optimizer state, step, RNG key data, skip counters, the plateau
schedule and the data position) and ``meta`` (JSON: step, full config, metrics).
Every item is written from host numpy copies, so saving and restoring work the
same for both parallel backends and on any number of hosts.

Failure handling:

* Orbax writes a step into a temporary folder and renames it when complete, so a
  kill during an (async) save leaves the earlier steps intact and the partial one
  invisible.
* On resume the newest step that restores completely is used. Newer steps that fail
  to restore (truncated or half-deleted by hand) are moved, with a warning, into
  ``WORKDIR/checkpoints_unreadable/`` (kept for inspection) so that later saves of
  those step numbers do not collide with them; nothing else is touched.
* A save that fails (disk full, read-only) raises :class:`CheckpointError` naming
  the step and the folder; completed earlier steps are not affected. The command
  lines keep Orbax's own reports of it to one line each
  (:func:`galr_jax.cli_logging.configure_logging`); importing this module changes no
  logging.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import time
from typing import Any, Mapping, NamedTuple, Optional

import jax
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

from galr_jax import checkpoints
from galr_jax.checkpoints import META, PARAMS, TRAIN_STATE, CheckpointError
from galr_jax.config import Config, ConfigError, config_from_dict, config_to_dict
from galr_jax.training.optim import PlateauSchedule
from galr_jax.training.state import TrainState

UNREADABLE_SUBDIR = "checkpoints_unreadable"
# The best checkpoint (by validation SI-SNRi) is kept besides the newest ones.
KEEP_BEST = 1

log = logging.getLogger(__name__)


class Restored(NamedTuple):
    """A resumed run: host state, plateau schedule, data position and the step's metrics."""

    state: TrainState
    schedule: PlateauSchedule
    data_position: dict[str, int]
    metrics: dict[str, float]


def _host(tree: Any) -> Any:
    return jax.tree.map(np.asarray, tree)


def _numpy_target(abstract: Any) -> Any:
    """Restore target of numpy arrays (read in full on every process)."""
    return jax.tree.map(lambda x: np.zeros(x.shape, x.dtype), abstract)


def _train_state_item(state: TrainState, schedule: PlateauSchedule,
                      data_position: Mapping[str, int]) -> dict[str, Any]:
    return {
        "opt_state": _host(state.opt_state),
        "step": np.asarray(state.step, np.int32),
        "rng": np.asarray(state.rng),
        "skipped_steps": np.asarray(state.skipped_steps, np.int32),
        "consecutive_skips": np.asarray(state.consecutive_skips, np.int32),
        "schedule": {k: np.asarray(v, np.float64) for k, v in schedule.state_dict().items()},
        "data_position": {k: np.asarray(v, np.int64) for k, v in data_position.items()},
    }


def _model_difference(saved: Mapping[str, Any], given: Mapping[str, Any]) -> Optional[str]:
    for key in sorted(set(saved) | set(given)):
        if saved.get(key) != given.get(key):
            return f"model.{key} is {saved.get(key)!r} in the checkpoint, {given.get(key)!r} now"
    return None


def check_model_config(saved: Mapping[str, Any], config: Config, where: str) -> None:
    """Raises ConfigError if a saved config's model section differs from ``config``'s."""
    saved_model = config_to_dict(config_from_dict(saved))["model"]
    difference = _model_difference(saved_model, config_to_dict(config)["model"])
    if difference:
        raise ConfigError(
            f"{where}: this run was started with another model ({difference}); resume it with "
            "the same model settings or use a new --workdir")


class TrainCheckpointer:
    """The checkpoint manager of one training run; call every method on every process.

    Args:
      workdir: the run's folder; steps go to ``workdir/checkpoints``.
      config: the run config (saved in each step's meta; its model must match on resume).
      abstract_state: shapes and dtypes of :class:`TrainState` (``abstract_train_state``).
    """

    def __init__(self, workdir: str, config: Config, abstract_state: TrainState):
        self.workdir = os.path.abspath(workdir)
        self.directory = os.path.join(self.workdir, checkpoints.CHECKPOINT_SUBDIR)
        self.config = config
        self._abstract = abstract_state
        self._manager = self._open_manager()

    def _open_manager(self) -> ocp.CheckpointManager:
        t = self.config.train
        return checkpoints.make_manager(self.directory, keep_last=t.keep_checkpoints,
                                        keep_best=KEEP_BEST, async_save=t.async_checkpoints)

    def steps(self) -> list[int]:
        """Complete steps on disk, oldest first."""
        return sorted(self._manager.all_steps())

    def _restore_step(self, step: int) -> Restored:
        meta = self._manager.restore(step, args=ocp.args.Composite(**{META: ocp.args.JsonRestore()}))[META]
        check_model_config(meta["config"], self.config, f"{self.directory}/{step}")
        schedule_target = {k: np.zeros((), np.float64) for k in PlateauSchedule().state_dict()}
        target = {
            "opt_state": _numpy_target(self._abstract.opt_state),
            "step": np.zeros((), np.int32),
            "rng": _numpy_target(self._abstract.rng),
            "skipped_steps": np.zeros((), np.int32),
            "consecutive_skips": np.zeros((), np.int32),
            "schedule": schedule_target,
            "data_position": {k: np.zeros((), np.int64)
                              for k in ("epoch", "step_in_epoch", "steps_per_epoch")},
        }
        items = self._manager.restore(step, args=ocp.args.Composite(**{
            PARAMS: ocp.args.StandardRestore({"params": _numpy_target(self._abstract.params)}),
            TRAIN_STATE: ocp.args.StandardRestore(target),
        }))
        train_state = items[TRAIN_STATE]
        if int(train_state["step"]) != step:
            raise CheckpointError(f"{self.directory}/{step}: holds step {int(train_state['step'])}")
        state = TrainState(step=train_state["step"], params=items[PARAMS]["params"],
                           opt_state=train_state["opt_state"], rng=train_state["rng"],
                           skipped_steps=train_state["skipped_steps"],
                           consecutive_skips=train_state["consecutive_skips"])
        schedule = PlateauSchedule.from_state_dict(
            {k: v.item() for k, v in train_state["schedule"].items()})
        position = {k: int(v) for k, v in train_state["data_position"].items()}
        return Restored(state, schedule, position, dict(meta.get("metrics") or {}))

    def restore_latest(self) -> Optional[Restored]:
        """The newest step that restores completely, or None for a fresh run.

        Steps newer than it that fail to restore are moved aside with a warning.

        Raises:
          ConfigError: the checkpoint was written for another model config.
          CheckpointError: steps exist but none of them can be restored.
        """
        failures = []
        for step in reversed(self.steps()):
            try:
                restored = self._restore_step(step)
            except (ConfigError, CheckpointError):
                raise
            except Exception as e:  # truncated, half-deleted or foreign files
                failures.append((step, f"{type(e).__name__}: {e}"))
                continue
            self._set_aside([s for s, _ in failures])
            for bad, reason in failures:
                log.warning("checkpoint step %d in %s is unreadable (%s); resuming from step %d",
                            bad, self.directory, reason, step)
            return restored
        if failures:
            raise CheckpointError(
                f"{self.directory}: no checkpoint can be restored ("
                + "; ".join(f"step {s}: {r}" for s, r in failures)
                + "); move the folder away to start afresh")
        return None

    def _set_aside(self, steps: list[int]) -> None:
        """Moves unreadable step folders to ``checkpoints_unreadable/`` (primary process)."""
        if not steps:
            return
        if jax.process_index() == 0:
            aside = os.path.join(self.workdir, UNREADABLE_SUBDIR)
            os.makedirs(aside, exist_ok=True)
            for step in steps:
                target = os.path.join(aside, f"{step}-{time.strftime('%Y%m%d-%H%M%S')}")
                shutil.move(os.path.join(self.directory, str(step)), target)
                log.warning("moved unreadable checkpoint step %d to %s", step, target)
        if jax.process_count() > 1:
            multihost_utils.sync_global_devices("galr_jax checkpoint set aside")
        # The manager caches the step list; reopen it to forget the moved steps.
        self._manager.close()
        self._manager = self._open_manager()

    def save(self, state: TrainState, schedule: PlateauSchedule, data_position: Mapping[str, int],
             metrics: Optional[Mapping[str, float]] = None) -> None:
        """Starts saving ``state`` (host arrays) at its step; asynchronous if configured.

        Args:
          state: one replica of the train state as host arrays.
          schedule: the plateau schedule to resume with.
          data_position: ``epoch``, ``step_in_epoch`` and ``steps_per_epoch``.
          metrics: validation metrics of this step (``val_si_snri`` ranks the best).

        Raises:
          CheckpointError: the save (or a previous asynchronous one) failed.
        """
        step = int(state.step)
        if step in self._manager.all_steps():
            return
        finite = {k: float(v) for k, v in (metrics or {}).items() if math.isfinite(float(v))}
        meta = {"step": step, "config": config_to_dict(self.config), "metrics": finite}
        ranked = finite if checkpoints.BEST_METRIC in finite else None
        try:
            self._manager.save(step, args=ocp.args.Composite(**{
                PARAMS: ocp.args.StandardSave({"params": _host(state.params)}),
                TRAIN_STATE: ocp.args.StandardSave(_train_state_item(state, schedule, data_position)),
                META: ocp.args.JsonSave(meta),
            }), metrics=ranked, force=True)
        except Exception as e:
            raise self._save_error(step, e) from e

    def wait(self) -> None:
        """Blocks until pending asynchronous saves are on disk; raises their errors."""
        try:
            self._manager.wait_until_finished()
        except Exception as e:
            raise self._save_error(None, e) from e

    def _save_error(self, step: Optional[int], error: Exception) -> CheckpointError:
        # Asynchronous saves report their failure at the next save or wait, so the
        # step being saved then is not necessarily the one that failed.
        when = f" (noticed while saving step {step})" if step is not None else ""
        try:
            done = self.steps()
        except Exception:  # the folder itself may be gone
            done = []
        kept = (f"the last complete checkpoint is step {done[-1]}" if done
                else "no complete checkpoint exists")
        return CheckpointError(f"{self.directory}: writing a checkpoint failed{when}: "
                               f"{type(error).__name__}: {error}; {kept}")

    def close(self) -> None:
        """Waits for pending saves and releases the manager."""
        try:
            self.wait()
        finally:
            self._manager.close()
