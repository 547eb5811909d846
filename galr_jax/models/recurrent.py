"""Bidirectional LSTM layer with torch's parameters; the recurrence is in
:mod:`galr_jax.kernels.lstm` (``reverse_time`` is importable from here as before)."""

from __future__ import annotations

from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from galr_jax.kernels import pick
from galr_jax.kernels.lstm import BILSTM, NUM_DIRECTIONS, NUM_GATES, reverse_time

__all__ = ["BiLSTM", "reverse_time", "symmetric_uniform"]


def symmetric_uniform(bound: float) -> nn.initializers.Initializer:
    """U(-bound, bound), PyTorch's default for LSTM and Linear weights."""

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


class BiLSTM(nn.Module):
    """One-layer bidirectional LSTM over axis 1 (:mod:`galr_jax.kernels.lstm`).

    Parameters (gate order i, f, g, o, as torch):
      ``kernel_ih [2, features, 4H]``, ``kernel_hh [2, H, 4H]``, ``bias [2, 4H]`` (torch's
      two biases summed); with ``learnable_initial_state`` also ``h0 [H]`` and ``c0 [H]``,
      shared by both directions and all sequences (GALR); otherwise zeros (DPRNN).

    Attributes:
      hidden: H, units per direction.
      learnable_initial_state: learn h0/c0 (GALR) or start from zeros (DPRNN).
      unroll: ``lax.scan`` unroll factor.
      dtype: compute dtype of the products; gates and the cell state stay float32.
      kernels: ``reference``, ``tuned`` or ``auto`` (:mod:`galr_jax.kernels`).
      time_major_output: return ``[steps, sequences, 2H]``, the layout the layer computes.
        A projection applied to that layout keeps, for its weight gradient, the buffer
        the LSTM's backward pass reads too; after a transpose it keeps a copy of its own
        (galr_1.5m at 4 s: 34 MB a layer in the train step).

    Shape:
      ``[sequences, steps, features]`` -> ``[sequences, steps, 2H]`` (forward first), or
      ``[steps, sequences, 2H]`` with ``time_major_output``; ``lengths``: int32
      ``[sequences]``, each sequence's real steps (the backward direction starts at its
      last one), or None: all steps are real.
    """

    hidden: int
    learnable_initial_state: bool = False
    unroll: int = 1
    dtype: Any = jnp.float32
    time_major_output: bool = False
    kernels: str = "auto"

    @nn.compact
    def __call__(self, x: jnp.ndarray, lengths: Optional[jnp.ndarray] = None) -> jnp.ndarray:
        hidden, gates = self.hidden, NUM_GATES * self.hidden
        # PyTorch's nn.LSTM default, which the published GALR/DPRNN results were trained with.
        init = symmetric_uniform(hidden ** -0.5)
        kernel_ih = self.param("kernel_ih", init, (NUM_DIRECTIONS, x.shape[-1], gates))
        kernel_hh = self.param("kernel_hh", init, (NUM_DIRECTIONS, hidden, gates))
        bias = self.param("bias", init, (NUM_DIRECTIONS, gates))
        batch = x.shape[0]
        shape = (NUM_DIRECTIONS, batch, hidden)
        if self.learnable_initial_state:
            h0 = self.param("h0", nn.initializers.uniform(1.0), (hidden,))
            c0 = self.param("c0", nn.initializers.uniform(1.0), (hidden,))
            h = jnp.broadcast_to(h0, shape).astype(jnp.float32)
            c = jnp.broadcast_to(c0, shape).astype(jnp.float32)
        else:
            # Zeros made like x: under shard_map they vary over the devices as x does, as
            # the scan's carry (which mixes in x) must; constant zeros would not.
            h = c = jnp.zeros_like(x, jnp.float32, shape=shape)

        out = pick(BILSTM, self.kernels)(x.astype(self.dtype), kernel_ih.astype(self.dtype),
                                          kernel_hh.astype(self.dtype),
                                          bias.astype(jnp.float32), h, c, lengths, self.unroll)
        return out if self.time_major_output else jnp.swapaxes(out, 0, 1)
