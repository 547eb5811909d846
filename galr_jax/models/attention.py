"""Multi-head self-attention with Flax's parameters; the arithmetic is in
:mod:`galr_jax.kernels.attention` (a reference on ``jax.nn.dot_product_attention`` and a
CPU-tuned version).

The parameters are Flax's, name for name and shape for shape (``query``, ``key``,
``value``: ``kernel [D, heads, depth]``, ``bias [heads, depth]``; ``out``:
``kernel [heads, depth, D]``, ``bias [D]``), initialised as Flax initialises them, so
checkpoints and the PyTorch conversion (:mod:`galr_jax.interop.convert`) are unchanged.
"""

from __future__ import annotations

from typing import Any, Optional

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from galr_jax.kernels import pick
from galr_jax.kernels.attention import SELF_ATTENTION
from galr_jax.models.dropout import DROPOUT

_PROJECTIONS = ("query", "key", "value")


def _flat_lecun_normal(fan_in_axes: int) -> nn.initializers.Initializer:
    """LeCun normal computed on the kernel flattened to ``[fan_in, fan_out]``, as
    ``flax.linen.DenseGeneral`` initialises its multi-axis kernels."""
    base = nn.initializers.lecun_normal()

    def init(key, shape, dtype=jnp.float32):
        flat = (int(np.prod(shape[:fan_in_axes])), int(np.prod(shape[fan_in_axes:])))
        return jnp.reshape(base(key, flat, dtype), shape)

    return init


class _Projection(nn.Module):
    """Holds one projection's ``kernel`` and ``bias`` (the products are done by the caller)."""

    kernel_shape: tuple[int, ...]
    bias_shape: tuple[int, ...]
    fan_in_axes: int

    @nn.compact
    def __call__(self) -> tuple[jnp.ndarray, jnp.ndarray]:
        kernel = self.param("kernel", _flat_lecun_normal(self.fan_in_axes), self.kernel_shape)
        bias = self.param("bias", nn.initializers.zeros, self.bias_shape)
        return kernel, bias


class MultiHeadSelfAttention(nn.Module):
    """Multi-head self-attention along axis -2, with Flax's parameters.

    Attributes:
      num_heads: heads (divide the feature count D).
      dropout: on the attention weights (one draw per weight, sequence and head, as
        torch's ``MultiheadAttention``).
      dtype: compute dtype; the softmax runs in float32.
      kernels: ``reference``, ``tuned`` or ``auto`` (:mod:`galr_jax.kernels`).

    Shape:
      ``[batch..., length, D]`` -> same. ``key_valid``: bool ``[batch..., length]`` (or
      broadcastable), the positions that may be attended to; None: all. ``mask``: bool,
      broadcastable to the weights ``[batch..., heads, length, length]``, the keys each
      query may attend to (e.g. causal); combined with ``key_valid``; None: all.
    """

    num_heads: int
    dropout: float = 0.0
    dtype: Any = jnp.float32
    kernels: str = "auto"

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool = False,
                 key_valid: Optional[jnp.ndarray] = None,
                 mask: Optional[jnp.ndarray] = None) -> jnp.ndarray:
        features = x.shape[-1]
        if features % self.num_heads:
            raise ValueError(f"MultiHeadSelfAttention: {features} features do not split into "
                             f"{self.num_heads} heads")
        depth = features // self.num_heads
        heads_shape = (self.num_heads, depth)
        projections = [_Projection((features, *heads_shape), heads_shape, 1, name=name)()
                       for name in _PROJECTIONS]
        out_projection = _Projection((*heads_shape, features), (features,), 2, name="out")()
        key = self.make_rng(DROPOUT) if train and self.dropout > 0.0 else None
        if key_valid is not None:
            key_valid = key_valid[..., None, None, :]
            mask = key_valid if mask is None else jnp.logical_and(key_valid, mask)
        return pick(SELF_ATTENTION, self.kernels)(x, projections, out_projection, key,
                                                  self.dropout, mask, self.dtype)
