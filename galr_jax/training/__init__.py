"""Training: optimizer and schedules, the per-device step, its pmap and shard_map
compilation, checkpoints, logs, preemption and the loop ``train_and_evaluate``."""

from galr_jax.training.checkpointer import Restored, TrainCheckpointer
from galr_jax.training.distributed import initialize_distributed
from galr_jax.training.loop import TrainingDiverged, TrainResult, train_and_evaluate
from galr_jax.training.optim import PlateauSchedule, make_learning_rate_fn, make_optimizer
from galr_jax.training.parallel import (DataParallel, PmapParallel, ShardMapParallel,
                                        check_batch_size, make_data_parallel)
from galr_jax.training.state import TrainState, abstract_train_state, create_train_state
from galr_jax.training.step import DATA_AXIS, batch_loss, train_step

__all__ = [
    "DATA_AXIS", "DataParallel", "PlateauSchedule", "PmapParallel", "Restored",
    "ShardMapParallel", "TrainCheckpointer", "TrainResult", "TrainState", "TrainingDiverged",
    "abstract_train_state", "batch_loss", "check_batch_size", "create_train_state",
    "initialize_distributed", "make_data_parallel", "make_learning_rate_fn", "make_optimizer",
    "train_and_evaluate", "train_step",
]
