"""``train_and_evaluate(config, workdir)``: the whole training story, top to bottom.

Sections: run folder -> input pipeline -> model, optimizer and parallel step ->
resume or start -> loop (step, skip accounting, logs, validation, checkpoints,
preemption) -> final save.

Exactness of a resumed run: the batch of step ``s`` is a pure function of
``(seed, s)`` (:class:`galr_jax.data.TrainLoader`, a grain pipeline whose iterator
state is saved in each checkpoint and put back on resume), dropout keys are folded from
the step, and the checkpoint holds every other piece of state (parameters, optimizer
state, skip counters, plateau schedule). A run restarted from the checkpoint of step
``s`` therefore computes exactly what the uninterrupted run computed after ``s``.

Keeping the devices busy: the host never waits for the step it has just dispatched.
Each batch is placed on the devices one step ahead (in grain's prefetch thread, so the
iterator's state is that of the batch the loop last took), and the steps' metrics stay on the
devices until a *sync point*: a ``train.log_every`` step, a validation or checkpoint
step, a preemption, or the last step. There the metrics of every step since the last
sync point come back in one transfer and the host makes its per-step decisions for
each of them, in order: the skip messages, the log window, and the
``train.max_consecutive_skips`` stop. The non-finite skip itself happens inside the
step, so a step after a non-finite one never uses its update. The stop is reported at
the step that reached the limit, as before; the device may have run up to
``log_every - 1`` steps past it by then, whose results are thrown away (nothing after
that step is logged or saved, since every save is a sync point).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from typing import Any, Optional

import grain
import jax

from galr_jax.config import Config
from galr_jax.data import make_train_loader, open_split
from galr_jax.models import build_model
from galr_jax.training.checkpointer import TrainCheckpointer
from galr_jax.training.checkpoints import CheckpointError, as_path, is_remote
from galr_jax.training.logs import MetricLogger, Progress, WindowAverage
from galr_jax.training.optim import PlateauSchedule, make_learning_rate_fn, make_optimizer
from galr_jax.training.parallel import PendingMetrics, check_batch_size, make_data_parallel
from galr_jax.training.preemption import PreemptionWatcher
from galr_jax.training.state import abstract_train_state, create_train_state
from galr_jax.training.step import train_step
from galr_jax.training.validation import Validator
from galr_jax.training.workdir import prepare_workdir

INDEX_SUBDIR = "index"  # cached length index of the splits

log = logging.getLogger(__name__)


class TrainingDiverged(RuntimeError):
    """Too many consecutive non-finite steps; the message names the last good checkpoint."""


@dataclasses.dataclass
class TrainResult:
    """How a call of :func:`train_and_evaluate` ended.

    Attributes:
      step: the last step trained (and saved).
      status: ``completed``, ``preempted`` (SIGTERM; resumable) or ``early_stopped``.
      validation: metrics of the last validation of this call (empty if none ran).
      params: this process's copy of the final parameters (host arrays).
    """

    step: int
    status: str
    validation: dict[str, float]
    params: Any


def _data_position(step: int, steps_per_epoch: int) -> dict[str, int]:
    epoch, in_epoch = divmod(step, steps_per_epoch)
    return {"epoch": epoch, "step_in_epoch": in_epoch, "steps_per_epoch": steps_per_epoch}


def _divergence_message(step: int, metrics: dict[str, float], limit: int,
                        checkpointer: TrainCheckpointer) -> str:
    done = checkpointer.steps()
    kept = (f"step {done[-1]} in {checkpointer.directory}" if done
            else "none (no checkpoint was saved)")
    return (f"step {step}: {metrics['consecutive_skips']} consecutive steps had a non-finite loss "
            f"or gradient (train.max_consecutive_skips={limit}); stopping. The last good "
            f"checkpoint is {kept}; lower train.learning_rate or check the data")


def build_train_step(config: Config, steps_per_epoch: int):
    """The model, the optimizer and the data-parallel train step of ``config``, as
    training runs them (``train.parallel`` over every device); benchmarks time this.

    Returns:
      ``(model, optimizer, parallel)``; ``parallel.step(state, batch, lr_scale)``.
    """
    t = config.train
    model = build_model(config)
    optimizer = make_optimizer(t)
    step_fn = functools.partial(
        train_step, model=model, optimizer=optimizer,
        learning_rate_fn=make_learning_rate_fn(t, steps_per_epoch))
    return model, optimizer, make_data_parallel(t.parallel, step_fn, t.batch_size)


def train_and_evaluate(config: Config, workdir: str) -> TrainResult:
    """Trains (or resumes) the run in ``workdir``; every process of a job calls it.

    Raises:
      ConfigError: the batch does not split over the devices, or the workdir holds a
        run of another model.
      WorkdirError / CheckpointError: the run folder or a checkpoint cannot be written.
      TrainingDiverged: ``train.max_consecutive_skips`` non-finite steps in a row.
    """
    t = config.train
    workdir = as_path(workdir)  # local and absolute, or a cloud URL kept as given
    primary = jax.process_index() == 0
    check_batch_size(t.batch_size, jax.device_count())

    # ---- Run folder --------------------------------------------------------------
    prepare_workdir(workdir, config)

    # ---- Input pipeline ------------------------------------------------------------
    # The length index stats every audio file, which are local (a bucket is mounted,
    # see galr_jax.data.datasets); its cache stays local too: none for a cloud workdir.
    cache_dir = None if is_remote(workdir) else str(workdir / INDEX_SUBDIR)
    num_sources = config.model.num_sources
    train_set = open_split(config.data, config.data.train_split, num_sources, cache_dir)
    valid_set = open_split(config.data, config.data.valid_split, num_sources, cache_dir)
    for dataset in (train_set, valid_set):
        for path, problem in dataset.problems:
            log.warning("skipped %s: %s", path, problem)
    loader = make_train_loader(config, train_set,
                               shard=grain.sharding.ShardByJaxProcess(drop_remainder=True))
    log.info("%s", loader.summary())

    # ---- Model, optimizer and the parallel step -------------------------------------
    model, optimizer, parallel = build_train_step(config, loader.steps_per_epoch)
    validator = Validator(config, valid_set, model)
    eval_every = t.eval_every or loader.steps_per_epoch

    # ---- Resume or start -------------------------------------------------------------
    checkpointer = TrainCheckpointer(workdir, config, abstract_train_state(model, optimizer))
    # Created (nothing decoded yet) before the restore, which puts its state back.
    batches = loader.iterate(0, t.num_steps, put=parallel.put_batch)
    try:
        restored = checkpointer.restore_latest(data_iterator=batches.grain_iterator)
    except BaseException:
        batches.close()
        checkpointer.close()
        raise
    if restored is not None:
        host_state, schedule = restored.state, restored.schedule
        if restored.data_position["steps_per_epoch"] != loader.steps_per_epoch:
            log.warning("the epoch length changed (%d -> %d steps): the data order differs from "
                        "the interrupted run", restored.data_position["steps_per_epoch"],
                        loader.steps_per_epoch)
        log.info("resuming %s from step %d", workdir, int(host_state.step))
    else:
        host_state, schedule = create_train_state(model, optimizer, t.seed), PlateauSchedule()
    start = int(host_state.step)
    if restored is None or not restored.data_iterator_restored:
        batches.move_to(start)
    elif batches.position() != start:
        batches.close()
        checkpointer.close()
        raise CheckpointError(f"{checkpointer.directory / str(start)}: the saved data iterator "
                              f"is at step {batches.position()}, the train state at step {start}")
    state = parallel.put_state(host_state)
    del host_state

    def save(metrics: Optional[dict[str, float]] = None) -> None:
        host = parallel.get_state(state)
        checkpointer.save(host, schedule, _data_position(int(host.step), loader.steps_per_epoch),
                          metrics, data_iterator=batches.grain_iterator)

    # ---- Loop --------------------------------------------------------------------------
    logger = MetricLogger(workdir, start, enabled=primary, tensorboard=t.tensorboard)
    progress = Progress(start, t.num_steps, enabled=primary)
    window = WindowAverage()
    pending = PendingMetrics(parallel)
    status, validation, step = "completed", {}, start
    try:
        with PreemptionWatcher() as preemption, loader, batches:
            for step in range(start + 1, t.num_steps + 1):
                state, device_metrics = parallel.step(state, next(batches), schedule.scale)
                pending.add(device_metrics)
                progress.update()
                log_due = step % t.log_every == 0
                validate = step % eval_every == 0 or step == t.num_steps
                checkpoint_due = step % t.checkpoint_every == 0
                preempted = preemption.should_stop(step)
                if not (log_due or validate or checkpoint_due or preempted):
                    continue

                # ---- Sync point: the per-step decisions of the steps since the last one.
                first = step - len(pending) + 1
                for at, metrics in enumerate(pending.fetch(), first):
                    window.add({k: metrics[k] for k in ("loss", "grad_norm", "learning_rate")})
                    if metrics["skipped"]:
                        progress.write(f"step {at}: non-finite loss or gradient, update skipped "
                                       f"({metrics['consecutive_skips']} in a row, "
                                       f"{metrics['skipped_steps']} in total)")
                    if metrics["consecutive_skips"] >= t.max_consecutive_skips:
                        logger.write(at, {"loss": None, **window.summary(),
                                          "skipped_steps": metrics["skipped_steps"],
                                          "skipped_files": len(loader.load_problems)})
                        checkpointer.wait()
                        raise TrainingDiverged(_divergence_message(
                            at, metrics, t.max_consecutive_skips, checkpointer))
                progress.show_loss(metrics["loss"])

                if log_due or validate:
                    record = {"loss": None, **window.summary(),
                              "skipped_steps": metrics["skipped_steps"],
                              "skipped_files": len(loader.load_problems)}
                    if validate:
                        validation = validator.run(parallel.get_state(state).params)
                        schedule.update(t, validation["val_si_snri"])
                        record.update(validation, lr_scale=schedule.scale)
                        progress.write(f"step {step}: val_si_snri {validation['val_si_snri']:.2f} dB")
                    logger.write(step, record)
                    window.reset()  # after validation, so steps_per_second is training only
                early_stop = validate and schedule.should_stop(t)
                if validate or checkpoint_due or early_stop or preempted:
                    save(validation if validate else None)
                if preempted or early_stop:
                    status = "preempted" if preempted else "early_stopped"
                    log.warning("%s at step %d; checkpoint saved in %s", status, step,
                                checkpointer.directory)
                    break
        if start >= t.num_steps:
            log.info("%s already reached train.num_steps=%d", workdir, t.num_steps)
        params = parallel.get_state(state).params
    finally:
        progress.close()
        logger.close()
        checkpointer.close()
    return TrainResult(step=step, status=status, validation=validation, params=params)
