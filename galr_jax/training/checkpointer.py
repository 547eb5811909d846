"""Saving and resuming a training run with the layout of :mod:`galr_jax.training.checkpoints`.

Each step folder holds ``params`` (``{'params': ...}``, what inference reads),
``train_state`` (optimizer state, step, RNG key data, skip counters, the plateau
schedule and the data position), ``meta`` (JSON: step, full config, metrics) and, from
training, ``data_iterator``: grain's iterator state, one JSON file per process
(``grain.checkpoint.CheckpointSave``), which resumption puts back into the iterator.
Every item is written from host numpy copies, so saving and restoring work the
same for both parallel backends and on any number of hosts.

Failure handling:

* Orbax writes a step into a temporary folder and renames it when complete (on
  ``gs://`` it writes ``commit_success.txt`` last instead), so a kill during an
  (async) save leaves the earlier steps intact and the partial one unfinalized.
* On resume the newest finalized step is restored. Unfinalized steps, the only ones
  Orbax itself marks incomplete, are skipped with a warning and left in place (Orbax
  replaces such a folder when it saves that step again).
* A finalized step that fails to restore (an I/O or network error, out of memory,
  damaged files) stops the run with :class:`CheckpointError` naming the step folder
  and the error. Nothing is moved or deleted and no older step is used instead: the
  fault may be transient, and an older step would silently discard training.
* A save that fails (disk full, read-only) raises :class:`CheckpointError` naming
  the step and the folder; completed earlier steps are not affected. The command
  lines keep Orbax's own reports of it to one line each
  (:func:`galr_jax.cli_logging.configure_logging`); importing this module changes no
  logging.
"""

from __future__ import annotations

import logging
import math
from typing import Any, Mapping, NamedTuple, Optional

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp

from galr_jax.config import (Config, ConfigError, config_from_saved, config_to_dict,
                             saved_config_dict)
from galr_jax.training import checkpoints
from galr_jax.training.checkpoints import DATA_ITERATOR, META, PARAMS, TRAIN_STATE, CheckpointError
from galr_jax.training.optim import PlateauSchedule
from galr_jax.training.state import TrainState

# The best checkpoint (by validation SI-SNRi) is kept besides the newest ones.
KEEP_BEST = 1

log = logging.getLogger(__name__)


class Restored(NamedTuple):
    """A resumed run: host state, plateau schedule, data position and the step's metrics;
    ``data_iterator_restored`` says whether grain's iterator state was put back."""

    state: TrainState
    schedule: PlateauSchedule
    data_position: dict[str, int]
    metrics: dict[str, float]
    data_iterator_restored: bool = False


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
    """Raises ConfigError if a saved config's architecture differs from ``config``'s.

    Only the ``model`` section is compared: runtime, data, train and eval settings may
    change between runs of one workdir. ``saved`` is parsed leniently
    (:func:`~galr_jax.config.config_from_saved`), so a saved config of an older version
    is still compared.
    """
    saved_model = config_to_dict(config_from_saved(saved, where))["model"]
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
        ``workdir`` may be any :mod:`etils.epath` location (``gs://...``).
      abstract_state: shapes and dtypes of :class:`TrainState` (``abstract_train_state``).
    """

    def __init__(self, workdir: checkpoints.PathLike, config: Config, abstract_state: TrainState):
        self.workdir = checkpoints.as_path(workdir)
        self.directory = self.workdir / checkpoints.CHECKPOINT_SUBDIR
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

    def _restore_data_iterator(self, step: int, iterator: grain.DatasetIterator) -> bool:
        """Puts grain's saved state of ``step`` back into ``iterator``; False if the step has
        none (saved before the grain pipeline), which the caller positions by the step."""
        if not (self.directory / str(step) / DATA_ITERATOR).exists():
            return False
        self._manager.restore(step, args=ocp.args.Composite(**{
            DATA_ITERATOR: grain.checkpoint.CheckpointRestore(iterator)}))
        return True

    def _restore_step(self, step: int,
                      data_iterator: Optional[grain.DatasetIterator] = None) -> Restored:
        meta = self._manager.restore(step, args=ocp.args.Composite(**{META: ocp.args.JsonRestore()}))[META]
        check_model_config(meta["config"], self.config, f"{self.directory / str(step)}")
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
            raise CheckpointError(f"{self.directory / str(step)}: holds step {int(train_state['step'])}")
        state = TrainState(step=train_state["step"], params=items[PARAMS]["params"],
                           opt_state=train_state["opt_state"], rng=train_state["rng"],
                           skipped_steps=train_state["skipped_steps"],
                           consecutive_skips=train_state["consecutive_skips"])
        schedule = PlateauSchedule.from_state_dict(
            {k: v.item() for k, v in train_state["schedule"].items()})
        position = {k: int(v) for k, v in train_state["data_position"].items()}
        iterator_restored = (data_iterator is not None
                             and self._restore_data_iterator(step, data_iterator))
        return Restored(state, schedule, position, dict(meta.get("metrics") or {}),
                        iterator_restored)

    def restore_latest(self, data_iterator: Optional[grain.DatasetIterator] = None
                       ) -> Optional[Restored]:
        """The newest finalized step, or None for a fresh run.

        Args:
          data_iterator: the training input's grain iterator; the step's saved iterator
            state is put back into it (see :attr:`Restored.data_iterator_restored`).

        Raises:
          ConfigError: the checkpoint was written for another architecture.
          CheckpointError: the newest finalized step cannot be read; the message names
            its folder and the underlying error, and every file is left where it is.
        """
        steps = self.steps()
        self._report_unfinalized(steps[-1] if steps else None)
        if not steps:
            return None
        step = steps[-1]
        try:
            return self._restore_step(step, data_iterator)
        except (ConfigError, CheckpointError):
            raise
        except Exception as e:  # noqa: BLE001 -- every failure is reported, none is guessed at
            raise checkpoints.unreadable_step_error(self.directory, step, e) from e

    def _report_unfinalized(self, resume_step: Optional[int]) -> None:
        """Warns about step folders Orbax never finalized (saves cut short by a kill)."""
        names = sorted(ocp.step.tmp_checkpoints(self.directory))
        if names:
            start = (f"resuming from step {resume_step}" if resume_step is not None
                     else "no finalized step, starting afresh")
            log.warning("%s: skipping %s, which Orbax never finalized (a save cut short); %s",
                        self.directory, ", ".join(names), start)

    def save(self, state: TrainState, schedule: PlateauSchedule, data_position: Mapping[str, int],
             metrics: Optional[Mapping[str, float]] = None,
             data_iterator: Optional[grain.DatasetIterator] = None) -> None:
        """Starts saving ``state`` (host arrays) at its step; asynchronous if configured.

        Args:
          state: one replica of the train state as host arrays.
          schedule: the plateau schedule to resume with.
          data_position: ``epoch``, ``step_in_epoch`` and ``steps_per_epoch``.
          metrics: validation metrics of this step (``val_si_snri`` ranks the best).
          data_iterator: the training input's grain iterator, positioned after this
            step's batch; its state is read now (before this returns), even when the
            rest of the save is asynchronous.

        Raises:
          CheckpointError: the save (or a previous asynchronous one) failed.
        """
        step = int(state.step)
        if step in self._manager.all_steps():
            return
        finite = {k: float(v) for k, v in (metrics or {}).items() if math.isfinite(float(v))}
        meta = {"step": step, "config": saved_config_dict(self.config), "metrics": finite}
        ranked = finite if checkpoints.BEST_METRIC in finite else None
        items = {
            PARAMS: ocp.args.StandardSave({"params": _host(state.params)}),
            TRAIN_STATE: ocp.args.StandardSave(_train_state_item(state, schedule, data_position)),
            META: ocp.args.JsonSave(meta),
        }
        if data_iterator is not None:
            items[DATA_ITERATOR] = grain.checkpoint.CheckpointSave(data_iterator)
        try:
            self._manager.save(step, args=ocp.args.Composite(**items), metrics=ranked, force=True)
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
