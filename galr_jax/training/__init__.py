"""Training: optimizer and schedules, the per-device step, its pmap and shard_map
compilation, checkpoints, logs, preemption and the loop ``train_and_evaluate``.

``checkpoints``: the on-disk layout of a run's checkpoints and model-weight restore
(what inference, evaluation and conversion read). ``checkpointer``: the training-time
manager on top of it (saving and resuming the whole train state and data position).
``losses``: negative SI-SNR with PIT. ``host_memory``: the allocator settings of
training on the CPU. ``cli``: ``galr-train``.

The names below are imported on first use (:mod:`galr_jax._lazy`), so importing
``galr_jax.training.cli`` or ``galr_jax.training.checkpoints`` does not import the loop.
"""

from galr_jax import _lazy

_EXPORTS = {
    "Restored": "galr_jax.training.checkpointer",
    "TrainCheckpointer": "galr_jax.training.checkpointer",
    "initialize_distributed": "galr_jax.training.distributed",
    "TrainResult": "galr_jax.training.loop",
    "TrainingDiverged": "galr_jax.training.loop",
    "train_and_evaluate": "galr_jax.training.loop",
    "PlateauSchedule": "galr_jax.training.optim",
    "make_learning_rate_fn": "galr_jax.training.optim",
    "make_optimizer": "galr_jax.training.optim",
    "DataParallel": "galr_jax.training.parallel",
    "PmapParallel": "galr_jax.training.parallel",
    "ShardMapParallel": "galr_jax.training.parallel",
    "check_batch_size": "galr_jax.training.parallel",
    "make_data_parallel": "galr_jax.training.parallel",
    "TrainState": "galr_jax.training.state",
    "abstract_train_state": "galr_jax.training.state",
    "create_train_state": "galr_jax.training.state",
    "DATA_AXIS": "galr_jax.training.step",
    "batch_loss": "galr_jax.training.step",
    "train_step": "galr_jax.training.step",
}

__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = _lazy.exports(__name__, _EXPORTS)
