"""Bidirectional LSTM with both directions fused into one scan."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

_NUM_GATES = 4  # input, forget, cell candidate, output: torch's order
_NUM_DIRECTIONS = 2


def symmetric_uniform(bound: float) -> nn.initializers.Initializer:
    """U(-bound, bound), PyTorch's default for LSTM and Linear weights."""

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


class BiLSTM(nn.Module):
    """One-layer bidirectional LSTM over axis 1 with fused directions.

    The forward and the backward direction run in the same ``lax.scan``: each step is
    one batched matrix product over a stacked ``[2, hidden, 4*hidden]`` recurrent
    kernel instead of two sequential scans, and the input projection of every step
    and both directions is one large product done before the scan.

    Parameters (gate order i, f, g, o, as torch):
      ``kernel_ih [2, features, 4H]``, ``kernel_hh [2, H, 4H]``, ``bias [2, 4H]`` (torch's
      two biases summed); with ``learnable_initial_state`` also ``h0 [H]`` and ``c0 [H]``,
      shared by both directions and all sequences (GALR); otherwise zeros (DPRNN).

    Attributes:
      hidden: H, units per direction.
      learnable_initial_state: learn h0/c0 (GALR) or start from zeros (DPRNN).
      unroll: ``lax.scan`` unroll factor.
      dtype: compute dtype of the products; the cell state stays float32.

    Shape:
      ``[sequences, steps, features]`` -> ``[sequences, steps, 2H]`` (forward first).
    """

    hidden: int
    learnable_initial_state: bool = False
    unroll: int = 1
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        hidden, gates = self.hidden, _NUM_GATES * self.hidden
        # PyTorch's nn.LSTM default, which the published GALR/DPRNN results were trained with.
        init = symmetric_uniform(hidden ** -0.5)
        kernel_ih = self.param("kernel_ih", init, (_NUM_DIRECTIONS, x.shape[-1], gates))
        kernel_hh = self.param("kernel_hh", init, (_NUM_DIRECTIONS, hidden, gates))
        bias = self.param("bias", init, (_NUM_DIRECTIONS, gates))
        batch = x.shape[0]
        if self.learnable_initial_state:
            h0 = self.param("h0", nn.initializers.uniform(1.0), (hidden,))
            c0 = self.param("c0", nn.initializers.uniform(1.0), (hidden,))
        else:
            h0 = c0 = jnp.zeros((hidden,), jnp.float32)
        h = jnp.broadcast_to(h0, (_NUM_DIRECTIONS, batch, hidden)).astype(jnp.float32)
        c = jnp.broadcast_to(c0, (_NUM_DIRECTIONS, batch, hidden)).astype(jnp.float32)

        time_major = jnp.swapaxes(x, 0, 1).astype(self.dtype)  # [steps, batch, features]
        both = jnp.stack([time_major, time_major[::-1]], axis=1)  # backward reads time reversed
        input_gates = jnp.einsum("tdnf,dfg->tdng", both, kernel_ih.astype(self.dtype))
        input_gates = input_gates.astype(jnp.float32) + bias[None, :, None, :]
        recurrent = kernel_hh.astype(self.dtype)

        def step(carry, gates_t):
            h, c = carry
            z = gates_t + jnp.einsum("dnh,dhg->dng", h.astype(self.dtype), recurrent,
                                     preferred_element_type=jnp.float32)
            i, f, g, o = jnp.split(z, _NUM_GATES, axis=-1)
            c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
            h = jax.nn.sigmoid(o) * jnp.tanh(c)
            return (h, c), h

        _, outputs = jax.lax.scan(step, (h, c), input_gates, unroll=self.unroll)
        out = jnp.concatenate([outputs[:, 0], outputs[::-1, 1]], axis=-1)  # [steps, batch, 2H]
        return jnp.swapaxes(out, 0, 1).astype(self.dtype)
