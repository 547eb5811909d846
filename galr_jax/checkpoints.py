"""Orbax checkpoints: layout, the manager used by training, and model-weight restore.

A run's checkpoints live in ``WORKDIR/checkpoints/<step>/`` with three items:

* ``params``      -- the Flax variables ``{'params': ...}`` (StandardSave); all that
                     inference needs;
* ``train_state`` -- everything else training resumes from (optimizer state, RNG,
                     schedule and data position); absent in exported weights;
* ``meta``        -- JSON: the full config, the step and the metrics at that step.

Orbax writes each step into a temporary directory and renames it when complete, so
a crash mid-save leaves the previous steps intact. :func:`restore_variables` falls back
to the previous complete step (with a warning) if the newest one cannot be read.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Mapping, Optional, Union

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp

from galr_jax.config import Config, config_from_dict, config_to_dict
from galr_jax.models import build_model

PARAMS, TRAIN_STATE, META = "params", "train_state", "meta"
CHECKPOINT_SUBDIR = "checkpoints"
BEST_METRIC = "val_si_snri"

log = logging.getLogger(__name__)


class CheckpointError(RuntimeError):
    """No usable checkpoint at a path; the message names the path and the reason."""


def checkpoint_directory(path: Union[str, os.PathLike]) -> str:
    """The directory holding step folders: ``path/checkpoints`` for a workdir, else ``path``."""
    path = os.path.abspath(os.fspath(path))
    candidate = os.path.join(path, CHECKPOINT_SUBDIR)
    return candidate if os.path.isdir(candidate) else path


def make_manager(directory: Union[str, os.PathLike], keep_last: int = 3, keep_best: int = 1,
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
    return ocp.CheckpointManager(os.path.abspath(os.fspath(directory)), options=options,
                                 item_names=(PARAMS, TRAIN_STATE, META))


def abstract_variables(config: Config) -> Any:
    """Shapes and dtypes of the model's variables, for restoring with a target."""
    model = build_model(config)
    sample = jnp.zeros((1, config.model.window * 4), jnp.float32)
    return jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), sample))


def save_variables(directory: Union[str, os.PathLike], variables: Any, config: Config,
                   step: int = 0, metrics: Optional[Mapping[str, float]] = None) -> str:
    """Writes model weights alone (no optimizer state) as a checkpoint that eval/separate read.

    Refuses to overwrite an existing step. Returns the step's path.
    """
    manager = make_manager(directory, async_save=False)
    try:
        if step in manager.all_steps():
            raise CheckpointError(f"{manager.directory}: step {step} exists; not overwriting it")
        meta = {"step": int(step), "config": config_to_dict(config),
                "metrics": dict(metrics or {})}
        manager.save(step, args=ocp.args.Composite(**{
            PARAMS: ocp.args.StandardSave(variables),
            META: ocp.args.JsonSave(meta),
        }), metrics=dict(metrics) if metrics else None)
        manager.wait_until_finished()
    finally:
        manager.close()
    return os.path.join(os.fspath(manager.directory), str(step))


def read_meta(path: Union[str, os.PathLike], step: int) -> dict:
    """The JSON ``meta`` item of one step."""
    manager = make_manager(checkpoint_directory(path), read_only=True)
    try:
        return manager.restore(step, args=ocp.args.Composite(**{META: ocp.args.JsonRestore()}))[META]
    finally:
        manager.close()


def _candidate_steps(manager: ocp.CheckpointManager, which: Union[str, int]) -> list[int]:
    steps = sorted(manager.all_steps(), reverse=True)
    if isinstance(which, int):
        if which not in steps:
            raise CheckpointError(
                f"{manager.directory}: no checkpoint at step {which} (have {sorted(steps)})")
        return [which]
    if which == "latest":
        return steps
    if which == "best":
        best = manager.best_step()
        return ([best] if best is not None else []) + [s for s in steps if s != best]
    raise CheckpointError(f"which={which!r}: expected 'best', 'latest' or a step number")


def restore_variables(path: Union[str, os.PathLike], config: Optional[Config] = None,
                      which: Union[str, int] = "best") -> tuple[Any, dict]:
    """Restores model variables from a workdir or a checkpoint directory.

    Args:
      path: a training workdir (``path/checkpoints`` is used) or a checkpoint directory.
      config: the config the weights must fit; by default the one saved with them.
      which: ``"best"`` (highest validation SI-SNRi, else the newest), ``"latest"``,
        or a step number. For best/latest an unreadable newest step falls back to the
        previous one with a warning.

    Returns:
      ``(variables, meta)``; meta has ``step``, ``config`` (a :class:`Config`) and ``metrics``.
    """
    directory = checkpoint_directory(path)
    if not os.path.isdir(directory):
        raise CheckpointError(f"{directory}: no such checkpoint directory")
    manager = make_manager(directory, read_only=True)
    try:
        steps = _candidate_steps(manager, which)
        if not steps:
            raise CheckpointError(f"{directory}: contains no complete checkpoint")
        errors = []
        for step in steps:
            try:
                meta = manager.restore(step, args=ocp.args.Composite(**{META: ocp.args.JsonRestore()}))[META]
                saved_config = config_from_dict(meta["config"])
                target_config = config or saved_config
                if config is not None and config.model != saved_config.model:
                    raise CheckpointError(
                        f"{directory}/{step}: saved model config differs from the given one: "
                        + _first_difference(config_to_dict(saved_config)["model"],
                                            config_to_dict(config)["model"]))
                target = abstract_variables(target_config)
                restored = manager.restore(step, args=ocp.args.Composite(**{
                    PARAMS: ocp.args.StandardRestore(target)}))[PARAMS]
                if errors:
                    log.warning("restored step %d after failing on newer steps: %s", step, errors)
                meta = dict(meta, config=saved_config)
                return restored, meta
            except CheckpointError:
                raise
            except Exception as e:  # a truncated or half-deleted step: try the previous one
                errors.append(f"step {step}: {type(e).__name__}: {e}")
                if isinstance(which, int):
                    break
        raise CheckpointError(f"{directory}: no readable checkpoint ({'; '.join(errors)})")
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
