"""Orbax checkpoints: layout, the manager used by training, and model-weight restore.

What every reader of a checkpoint needs (inference, evaluation, conversion, release);
saving and resuming a whole training run on top of it is
:mod:`galr_jax.training.checkpointer`.

A run's checkpoints live in ``WORKDIR/checkpoints/<step>/`` with three items:

* ``params``      -- the Flax variables ``{'params': ...}`` (StandardSave); all that
                     inference needs;
* ``train_state`` -- everything else training resumes from (optimizer state, RNG,
                     schedule and data position); absent in exported weights;
* ``meta``        -- JSON: the full config, the step and the metrics at that step.

Orbax writes each step into a temporary directory and renames it when complete (on
object stores such as ``gs://``, where nothing is renamed, it writes
``commit_success.txt`` last), so a crash mid-save leaves an unfinalized step that
Orbax does not list and the previous steps intact. Only such unfinalized steps are
passed over. A finalized step that cannot be read (an I/O error, out of memory,
damaged files) is an error naming the step folder: falling back to an older step
would silently lose training, and the fault may be transient.

Paths are :mod:`etils.epath` paths, as in Orbax, so a ``gs://`` workdir works wherever
the installed file-system support does (``gcsfs`` or TensorFlow for ``gs://``).
"""

from __future__ import annotations

import os
from typing import Any, Mapping, Optional, Union

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp
from etils import epath

from galr_jax.config import Config, config_from_saved, config_to_dict, saved_config_dict
from galr_jax.models import build_model

PARAMS, TRAIN_STATE, META = "params", "train_state", "meta"
DATA_ITERATOR = "data_iterator"  # grain's iterator state, saved by training only
CHECKPOINT_SUBDIR = "checkpoints"
BEST_METRIC = "val_si_snri"

PathLike = Union[str, os.PathLike]


class CheckpointError(RuntimeError):
    """No usable checkpoint at a path; the message names the path and the reason."""


def is_remote(path: PathLike) -> bool:
    """Whether ``path`` is a URL (``gs://...``) rather than a local path."""
    return "://" in os.fspath(path)


def as_path(path: PathLike) -> epath.Path:
    """An :class:`epath.Path`; local paths made absolute, URLs (``gs://...``) kept as given."""
    return epath.Path(path if is_remote(path) else os.path.abspath(path))


def checkpoint_directory(path: PathLike) -> epath.Path:
    """The directory holding step folders: ``path/checkpoints`` for a workdir, else ``path``."""
    path = as_path(path)
    candidate = path / CHECKPOINT_SUBDIR
    return candidate if candidate.is_dir() else path


def unreadable_step_error(directory: PathLike, step: int, error: BaseException) -> CheckpointError:
    """The error for a finalized step that failed to restore; every file stays in place."""
    return CheckpointError(
        f"{epath.Path(directory) / str(step)}: reading this checkpoint failed "
        f"({type(error).__name__}: {error}). Nothing was moved or deleted. If the cause was "
        "transient (an I/O or network error, out of memory), run again; if the step's files "
        "are damaged, move that step folder out of the directory to resume from the one before")


def make_manager(directory: PathLike, keep_last: int = 3, keep_best: int = 1,
                 async_save: bool = True, read_only: bool = False) -> ocp.CheckpointManager:
    """A CheckpointManager that keeps the newest ``keep_last`` steps and the ``keep_best`` best.

    "Best" is the highest ``val_si_snri`` among steps saved with metrics.
    """
    policy = ocp.checkpoint_managers.AnyPreservationPolicy([
        ocp.checkpoint_managers.LatestN(n=keep_last),
        ocp.checkpoint_managers.BestN(get_metric_fn=lambda m: m[BEST_METRIC], reverse=False,
                                      n=keep_best, keep_checkpoints_without_metrics=False),
    ])
    options = ocp.CheckpointManagerOptions(
        preservation_policy=policy, enable_async_checkpointing=async_save, read_only=read_only,
        create=not read_only, best_fn=lambda m: m[BEST_METRIC], best_mode="max")
    return ocp.CheckpointManager(as_path(directory), options=options,
                                 item_names=(PARAMS, TRAIN_STATE, META, DATA_ITERATOR))


def abstract_variables(config: Config) -> Any:
    """Shapes and dtypes of the model's variables, for restoring with a target."""
    model = build_model(config)
    sample = jnp.zeros((1, config.model.window * 4), jnp.float32)
    return jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), sample))


def save_variables(directory: PathLike, variables: Any, config: Config,
                   step: int = 0, metrics: Optional[Mapping[str, float]] = None) -> str:
    """Writes model weights alone (no optimizer state) as a checkpoint that eval/separate read.

    Refuses to overwrite an existing step. Returns the step's path.
    """
    manager = make_manager(directory, async_save=False)
    try:
        if step in manager.all_steps():
            raise CheckpointError(f"{manager.directory}: step {step} exists; not overwriting it")
        meta = {"step": int(step), "config": saved_config_dict(config),
                "metrics": dict(metrics or {})}
        manager.save(step, args=ocp.args.Composite(**{
            PARAMS: ocp.args.StandardSave(variables),
            META: ocp.args.JsonSave(meta),
        }), metrics=dict(metrics) if metrics else None)
        manager.wait_until_finished()
    finally:
        manager.close()
    return os.fspath(epath.Path(manager.directory) / str(step))


def read_meta(path: PathLike, step: int) -> dict:
    """The JSON ``meta`` item of one step."""
    manager = make_manager(checkpoint_directory(path), read_only=True)
    try:
        return manager.restore(step, args=ocp.args.Composite(**{META: ocp.args.JsonRestore()}))[META]
    finally:
        manager.close()


def _chosen_step(manager: ocp.CheckpointManager, which: Union[str, int]) -> int:
    steps = manager.all_steps()
    if isinstance(which, int):
        if which not in steps:
            raise CheckpointError(
                f"{manager.directory}: no checkpoint at step {which} (have {sorted(steps)})")
        return which
    if which not in ("best", "latest"):
        raise CheckpointError(f"which={which!r}: expected 'best', 'latest' or a step number")
    if not steps:
        raise CheckpointError(f"{manager.directory}: contains no complete checkpoint")
    best = manager.best_step() if which == "best" else None
    return best if best is not None else max(steps)


def restore_variables(path: PathLike, config: Optional[Config] = None,
                      which: Union[str, int] = "best") -> tuple[Any, dict]:
    """Restores model variables from a workdir or a checkpoint directory.

    Args:
      path: a training workdir (``path/checkpoints`` is used) or a checkpoint directory.
      config: the config the weights must fit; by default the one saved with them.
      which: ``"best"`` (highest validation SI-SNRi, else the newest), ``"latest"``,
        or a step number. Only finalized steps count (see the module docstring).

    Returns:
      ``(variables, meta)``; meta has ``step``, ``config`` (a :class:`Config`) and ``metrics``.

    Raises:
      CheckpointError: no finalized step, or the chosen one cannot be read (the message
        names the step folder and the underlying error; no file is moved or deleted).
      ConfigError: the saved config has an unknown architecture key, or differs from
        ``config`` in the architecture.
    """
    directory = checkpoint_directory(path)
    if not directory.is_dir():
        raise CheckpointError(f"{directory}: no such checkpoint directory")
    manager = make_manager(directory, read_only=True)
    try:
        step = _chosen_step(manager, which)
        try:
            meta = manager.restore(step, args=ocp.args.Composite(**{META: ocp.args.JsonRestore()}))[META]
        except Exception as e:
            raise unreadable_step_error(directory, step, e) from e
        saved_config = config_from_saved(meta["config"], f"{directory / str(step)} (meta)")
        if config is not None and config.model != saved_config.model:
            raise CheckpointError(
                f"{directory / str(step)}: saved model config differs from the given one: "
                + _first_difference(config_to_dict(saved_config)["model"],
                                    config_to_dict(config)["model"]))
        target = abstract_variables(config or saved_config)
        try:
            restored = manager.restore(step, args=ocp.args.Composite(**{
                PARAMS: ocp.args.StandardRestore(target)}))[PARAMS]
        except Exception as e:
            raise unreadable_step_error(directory, step, e) from e
        return restored, dict(meta, config=saved_config)
    finally:
        manager.close()


def _first_difference(saved: Mapping[str, Any], given: Mapping[str, Any]) -> str:
    for key in saved:
        if saved[key] != given.get(key):
            return f"model.{key} is {saved[key]!r} in the checkpoint, {given.get(key)!r} given"
    return "unknown difference"


def parse_which(text: str) -> Union[str, int]:
    """A command-line checkpoint choice: ``'best'``, ``'latest'`` or a step number."""
    return int(text) if text.isdigit() else text
