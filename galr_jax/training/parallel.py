"""Compiling the per-device step over all devices of all hosts, and moving data there.

Two backends run the same :func:`galr_jax.training.step.train_step`:

* ``pmap``: ``jax.pmap`` over every device; each process feeds its local devices
  arrays with a leading local-device axis.
* ``shard_map``: ``jax.jit`` of ``jax.shard_map`` on a one-axis ``Mesh`` of every
  device; the batch is one global array sharded over ``data``, assembled from each
  process's rows, and the state is replicated.

In both, the global batch of ``train.batch_size`` rows is split evenly over the
devices; process ``p`` supplies the rows of its own devices, which are contiguous in
``jax.devices()`` order (rows ``p * B / P`` to ``(p + 1) * B / P``).

Keeping the devices busy: :meth:`DataParallel.put_batch` starts the transfer of a
batch in the layout the compiled step takes, so the loop can place batch ``N + 1``
while step ``N`` runs (:meth:`galr_jax.data.TrainLoader.iterate` with ``put``), and
:class:`PendingMetrics` holds the steps' metrics on the devices until the loop needs
them, fetching many steps in one transfer.
"""

from __future__ import annotations

import abc
from typing import Any, Mapping, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from galr_jax.config import ConfigError
from galr_jax.training.step import DATA_AXIS, StepFn
from galr_jax.training.state import TrainState

HostBatch = Mapping[str, np.ndarray]


def check_batch_size(global_batch_size: int, num_devices: int) -> int:
    """Rows per device; a clear error if the global batch does not split evenly."""
    if global_batch_size % num_devices:
        raise ConfigError(
            f"train.batch_size: the global batch of {global_batch_size} does not split evenly "
            f"over {num_devices} devices; use a multiple of {num_devices}")
    return global_batch_size // num_devices


def _process_rows(global_batch_size: int) -> slice:
    """This process's rows of the global batch; checks that its devices are contiguous."""
    devices = jax.devices()
    per_device = check_batch_size(global_batch_size, len(devices))
    positions = [i for i, d in enumerate(devices) if d.process_index == jax.process_index()]
    if positions != list(range(positions[0], positions[0] + len(positions))):
        raise RuntimeError(
            f"process {jax.process_index()} owns devices at positions {positions} of "
            "jax.devices(); data-parallel training needs each process's devices contiguous")
    return slice(positions[0] * per_device, (positions[-1] + 1) * per_device)


def _first_replica(x: jax.Array) -> np.ndarray:
    """Host copy of one replica of a replicated array (works on every host)."""
    return np.asarray(x.addressable_shards[0].data)


class DataParallel(abc.ABC):
    """A compiled data-parallel step and the placement of its inputs and outputs."""

    def __init__(self, step_fn: StepFn, global_batch_size: int):
        self.global_batch_size = global_batch_size
        self.num_devices = jax.device_count()
        self.per_device_batch = check_batch_size(global_batch_size, self.num_devices)
        self.process_rows = _process_rows(global_batch_size)
        self._step_fn = step_fn

    @property
    def process_batch_size(self) -> int:
        """Rows of the global batch this process loads."""
        return self.process_rows.stop - self.process_rows.start

    def _check_batch(self, batch: HostBatch) -> None:
        for name, value in batch.items():
            if value.shape[0] != self.process_batch_size:
                raise ValueError(
                    f"batch[{name!r}] has {value.shape[0]} rows; this process must supply "
                    f"{self.process_batch_size} (global batch {self.global_batch_size} over "
                    f"{jax.process_count()} processes)")

    @abc.abstractmethod
    def put_state(self, state: TrainState) -> TrainState:
        """Replicates a host state (one copy) onto the devices."""

    @abc.abstractmethod
    def put_batch(self, batch: HostBatch) -> Any:
        """Starts placing this process's rows of a batch on its devices, in the layout
        :meth:`step` takes (the transfer runs while the host goes on)."""

    @abc.abstractmethod
    def step(self, state: TrainState, batch: Any, lr_scale: float) -> tuple[TrainState, Any]:
        """Runs one step; donates ``state``. Returns the new state and device metrics."""

    def get_state(self, state: TrainState) -> TrainState:
        """One replica of the device state as host numpy arrays."""
        return jax.tree.map(_first_replica, state)

    def get_metrics(self, metrics: Any) -> dict[str, float]:
        """Device metrics of :meth:`step` as Python numbers (waits for that step)."""
        return self.fetch_metrics([metrics])[0]

    def fetch_metrics(self, steps: Sequence[Any]) -> list[dict[str, float]]:
        """The device metrics of several steps as Python numbers, in one transfer."""
        # One replica of each (replicated) scalar: on several hosts the whole array is
        # not addressable, and one copy is all the host needs.
        replicas = [{k: v.addressable_shards[0].data for k, v in metrics.items()}
                    for metrics in steps]
        return [{k: np.asarray(v).reshape(-1)[0].item() for k, v in metrics.items()}
                for metrics in jax.device_get(replicas)]


class PmapParallel(DataParallel):
    """``jax.pmap`` over all devices; arrays carry a leading local-device axis."""

    def __init__(self, step_fn: StepFn, global_batch_size: int):
        super().__init__(step_fn, global_batch_size)
        self._num_local = jax.local_device_count()
        self._compiled = jax.pmap(step_fn, axis_name=DATA_AXIS, in_axes=(0, 0, None),
                                  donate_argnums=(0,))
        self._place = jax.pmap(lambda x: x, axis_name=DATA_AXIS)
        # The layout pmap gives its mapped inputs: the leading axis over this process's
        # devices, in jax.local_devices() order. A batch placed so is taken as it is.
        self._local_rows = NamedSharding(Mesh(np.array(jax.local_devices()), (DATA_AXIS,)),
                                         PartitionSpec(DATA_AXIS))

    def put_state(self, state: TrainState) -> TrainState:
        stacked = jax.tree.map(lambda x: np.stack([np.asarray(x)] * self._num_local), state)
        return self._place(stacked)

    def put_batch(self, batch: HostBatch) -> Any:
        self._check_batch(batch)
        return jax.device_put(
            {k: np.asarray(v).reshape((self._num_local, self.per_device_batch) + v.shape[1:])
             for k, v in batch.items()},
            self._local_rows)

    def step(self, state, batch, lr_scale):
        return self._compiled(state, batch, np.float32(lr_scale))

    def get_state(self, state: TrainState) -> TrainState:
        # A pmap output's shard keeps the device axis (length 1); drop it.
        return jax.tree.map(lambda x: _first_replica(x)[0], state)


class ShardMapParallel(DataParallel):
    """``jax.jit`` of ``jax.shard_map`` on a one-axis mesh of all devices."""

    def __init__(self, step_fn: StepFn, global_batch_size: int):
        super().__init__(step_fn, global_batch_size)
        self.mesh = Mesh(np.array(jax.devices()), (DATA_AXIS,))
        self._replicated = NamedSharding(self.mesh, PartitionSpec())
        self._rows = NamedSharding(self.mesh, PartitionSpec(DATA_AXIS))
        mapped = jax.shard_map(step_fn, mesh=self.mesh,
                               in_specs=(PartitionSpec(), PartitionSpec(DATA_AXIS), PartitionSpec()),
                               out_specs=PartitionSpec())
        self._compiled = jax.jit(mapped, donate_argnums=(0,))
        self._lr_scale: tuple[float, jax.Array] | None = None  # the last one placed

    def put_state(self, state: TrainState) -> TrainState:
        return jax.tree.map(
            lambda x: jax.make_array_from_process_local_data(self._replicated, np.asarray(x)),
            state)

    def put_batch(self, batch: HostBatch) -> Any:
        self._check_batch(batch)
        return {k: jax.make_array_from_process_local_data(
                    self._rows, np.asarray(v), (self.global_batch_size,) + v.shape[1:])
                for k, v in batch.items()}

    def step(self, state, batch, lr_scale):
        # The plateau scale changes only at validations: place it on the devices then,
        # not at every step.
        if self._lr_scale is None or self._lr_scale[0] != lr_scale:
            self._lr_scale = (lr_scale, jax.make_array_from_process_local_data(
                self._replicated, np.float32(lr_scale)))
        return self._compiled(state, batch, self._lr_scale[1])


class PendingMetrics:
    """The device metrics of the steps run since the last :meth:`fetch`.

    Holding them on the devices lets the host queue the next step without waiting for
    the current one. :meth:`add` still bounds how far the host runs ahead: it waits for
    the step before the one just added, so at most ``STEPS_IN_FLIGHT`` steps (their
    batches and buffers) are queued on the devices, while the device always has the
    next step waiting when one ends.
    """

    STEPS_IN_FLIGHT = 2

    def __init__(self, parallel: DataParallel):
        self._parallel = parallel
        self._steps: list[Any] = []

    def __len__(self) -> int:
        return len(self._steps)

    def add(self, metrics: Any) -> None:
        """Holds the metrics of the step just dispatched."""
        self._steps.append(metrics)
        if len(self._steps) >= self.STEPS_IN_FLIGHT:
            jax.block_until_ready(self._steps[-self.STEPS_IN_FLIGHT])

    def fetch(self) -> list[dict[str, float]]:
        """The held steps' metrics as Python numbers, oldest first, in one transfer;
        empties the buffer."""
        steps, self._steps = self._steps, []
        return self._parallel.fetch_metrics(steps) if steps else []


BACKENDS = {"pmap": PmapParallel, "shard_map": ShardMapParallel}


def make_data_parallel(backend: str, step_fn: StepFn, global_batch_size: int) -> DataParallel:
    """The data-parallel runner named by ``train.parallel``.

    Args:
      backend: ``"pmap"`` or ``"shard_map"``.
      step_fn: a per-device step ``(state, batch, lr_scale) -> (state, metrics)`` with
        its static arguments bound (``functools.partial(train_step, model=...)``).
      global_batch_size: rows per step over all devices and hosts.
    """
    if backend not in BACKENDS:
        raise ConfigError(f"train.parallel: {backend!r} is not one of {', '.join(BACKENDS)}")
    return BACKENDS[backend](step_fn, global_batch_size)

