"""The model's forward pass as a jitted function of mixture batches, over all local devices."""

from __future__ import annotations

from typing import Any, Optional, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from galr_jax.config import Config
from galr_jax.models import build_model

_BATCH_AXIS = "batch"


class BatchedApply:
    """``mixture [B, T], lengths [B] -> estimates [B, C, T]`` with the batch split over devices.

    The variables are placed once, replicated on every device (:meth:`set_variables`
    replaces them without recompiling); each call shards the batch rows over the
    devices (B must be a multiple of :attr:`num_devices`). The devices are this
    process's own, so in a multi-process run every call is a computation of this
    process alone. jit compiles once per distinct input shape; :attr:`shapes` lists
    the shapes seen so callers can check that they stay within a bounded set.

    Args:
      config: the run config (its ``model`` section builds the network).
      variables: Flax variables ``{'params': ...}`` matching the config.
      devices: devices to use; default all local devices.
      model: the network; default ``build_model(config)``.
    """

    def __init__(self, config: Config, variables: Any, devices: Optional[Sequence[Any]] = None,
                 model: Optional[Any] = None):
        self.devices = list(devices) if devices is not None else jax.local_devices()
        mesh = Mesh(np.array(self.devices), (_BATCH_AXIS,))
        self._batch_sharding = NamedSharding(mesh, PartitionSpec(_BATCH_AXIS))
        self._replicated = NamedSharding(mesh, PartitionSpec())
        model = build_model(config) if model is None else model
        self.set_variables(variables)
        # Variables are an argument, not a closure constant: XLA would otherwise embed
        # every weight into the compiled program.
        self._apply = jax.jit(lambda v, x, n: model.apply(v, x, lengths=n),
                              in_shardings=(self._replicated, self._batch_sharding,
                                            self._batch_sharding),
                              out_shardings=self._batch_sharding)
        self.shapes: set[tuple[int, int]] = set()

    def set_variables(self, variables: Any) -> None:
        """Replaces the weights (same structure and shapes); compiled programs are kept."""
        self._variables = jax.device_put(variables, self._replicated)

    @property
    def num_devices(self) -> int:
        return len(self.devices)

    def __call__(self, mixture: np.ndarray, lengths: Optional[np.ndarray] = None) -> np.ndarray:
        """Separates a batch.

        Args:
          mixture: ``[B, T]`` float32, ``B`` a multiple of :attr:`num_devices`.
          lengths: ``[B]`` valid samples per row (zero padding after them is left out
            of the model's computation); default every row full length.

        Returns:
          ``[B, C, T]`` float32 numpy array.
        """
        mixture = np.asarray(mixture, np.float32)
        if mixture.ndim != 2 or mixture.shape[0] % self.num_devices:
            raise ValueError(f"mixture must be [B, T] with B a multiple of {self.num_devices} "
                             f"devices, got shape {mixture.shape}")
        if lengths is None:
            lengths = np.full(mixture.shape[:1], mixture.shape[1], np.int32)
        lengths = np.asarray(lengths, np.int32)
        if lengths.shape != mixture.shape[:1]:
            raise ValueError(f"lengths must be [B={mixture.shape[0]}], got shape {lengths.shape}")
        self.shapes.add(mixture.shape)
        estimates = self._apply(self._variables, jax.device_put(mixture, self._batch_sharding),
                                jax.device_put(lengths, self._batch_sharding))
        return np.asarray(jax.device_get(estimates))
