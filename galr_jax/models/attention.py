"""Multi-head self-attention across segments, laid out for many tiny heads.

GALR attends over S segments (82 at 4 s) for B*Q sequences with heads of D/heads = 8
features. ``flax.linen.MultiHeadDotProductAttention`` projects to
``[batch..., length, heads, depth]`` and contracts with the heads between the sequence
and depth axes; here one product projects queries, keys and values together, straight
into ``[3, batch..., heads, length, depth]``, so the two attention products are plain
batched matrix products over (batch..., heads). On the galr_1.5m shapes at 4 s this
took the layer's forward from 24 to 15 ms on CPU (BENCHMARKS.md, "Optimisation log").
The attention's backward pass is written out (:func:`_attention`): with the gLN change of
the same round, the layer's training forward + backward at those shapes fell from about
119 to 91 ms (BENCHMARKS.md).

The parameters are Flax's, name for name and shape for shape (``query``, ``key``,
``value``: ``kernel [D, heads, depth]``, ``bias [heads, depth]``; ``out``:
``kernel [heads, depth, D]``, ``bias [D]``), initialised as Flax initialises them, so
checkpoints and the PyTorch conversion (:mod:`galr_jax.convert`) are unchanged.
"""

from __future__ import annotations

import functools
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from galr_jax.models.dense import add_bias
from galr_jax.models.dropout import DROPOUT, apply_keep_mask, keep_mask
from galr_jax.models.scheduling import tied_to

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


def dot_product_attention(query: jnp.ndarray, key: jnp.ndarray, value: jnp.ndarray,
                          dropout_rng: Optional[jax.Array] = None, dropout_rate: float = 0.0,
                          key_valid: Optional[jnp.ndarray] = None) -> jnp.ndarray:
    """Scaled dot-product attention, dropout on the weights (one draw per weight).

    Args:
      query, key, value: ``[batch..., length, depth]``.
      dropout_rng: key of the dropout on the attention weights; None: no dropout.
      dropout_rate: probability of dropping a weight.
      key_valid: bool, broadcastable to the weights ``[batch..., length, length]``: the
        keys a query may attend to (at least one per query); None: all.

    Returns:
      ``[batch..., length, depth]``. The weights are ``[batch..., length, length]``,
      softmax over the last axis.
    """
    keep_prob = 1.0
    keep = None
    if dropout_rng is not None and dropout_rate > 0.0:
        keep_prob = 1.0 - dropout_rate
        keep = keep_mask(dropout_rng, query.shape[:-1] + key.shape[-2:-1], keep_prob)
    return _attention(query, key, value, keep, key_valid, keep_prob)


def _attention_forward(query, key, value, keep, key_valid, keep_prob):
    scale = jnp.asarray(1.0 / np.sqrt(query.shape[-1]), query.dtype)
    logits = jnp.einsum("...qd,...kd->...qk", query * scale, key).astype(jnp.float32)
    if key_valid is not None:
        logits = jnp.where(key_valid, logits, -jnp.inf)  # weight exactly 0
    weights = jax.nn.softmax(logits)
    out = jnp.einsum("...qk,...kd->...qd", _dropped(weights, keep, keep_prob).astype(value.dtype),
                     value)
    return out, (query, key, value, keep, weights, out)


def _dropped(x, keep, keep_prob):
    return x if keep is None else apply_keep_mask(x, keep, keep_prob)


@functools.partial(jax.custom_vjp, nondiff_argnums=(5,))
def _attention(query, key, value, keep, key_valid, keep_prob):
    """Attention with the weights' dropout mask ``keep`` and the keys' mask ``key_valid``
    (bool, or None) given. A masked key's weights are zero, so the backward pass below
    needs no mask of its own.

    The backward pass is written out because automatic differentiation of the softmax
    makes several passes over the ``[..., length, length]`` weights (maximum,
    division, a row sum of the weights' gradient); here one elementwise pass and the
    four products remain: the softmax's row term sum_k W dW is dO . O per query.
    """
    return _attention_forward(query, key, value, keep, key_valid, keep_prob)[0]


def _contract_queries(weights: jnp.ndarray, x: jnp.ndarray) -> jnp.ndarray:
    """``sum_q weights[..., q, k] x[..., q, d]`` -> ``[..., k, d]``.

    Computed as ``[..., d, k]`` and transposed behind a barrier: XLA would otherwise
    fold the transpose into the product, and on CPU the folded form, many small
    products with a transposed left operand, took twice as long at GALR's shapes
    (13.4 against 6.4 ms for ``[4, 32, 8, 82, 82]`` weights).
    """
    transposed = jnp.einsum("...qd,...qk->...dk", x, weights)
    return jnp.swapaxes(jax.lax.optimization_barrier(transposed), -1, -2)


def _attention_backward(keep_prob, residuals, d_out):
    query, key, value, keep, weights, out = residuals
    scale = 1.0 / np.sqrt(query.shape[-1])
    dropped = weights
    if keep is not None:
        # Untied, XLA reuses the forward's identical expression and keeps every block's
        # [..., length, length] dropped weights live from the forward pass on.
        dropped = _dropped(tied_to(weights, d_out), keep, keep_prob)
    d_value = _contract_queries(dropped.astype(value.dtype), d_out)
    d_dropped = jnp.einsum("...qd,...kd->...qk", d_out, value,
                           preferred_element_type=jnp.float32)
    row = jnp.sum(d_out.astype(jnp.float32) * out.astype(jnp.float32), axis=-1, keepdims=True)
    d_logits = (weights * (_dropped(d_dropped, keep, keep_prob) - row)).astype(query.dtype)
    d_query = jnp.einsum("...qk,...kd->...qd", d_logits, key) * jnp.asarray(scale, query.dtype)
    d_key = _contract_queries(d_logits, query) * jnp.asarray(scale, key.dtype)
    return d_query, d_key, d_value, None, None


_attention.defvjp(_attention_forward, _attention_backward)


class MultiHeadSelfAttention(nn.Module):
    """Multi-head self-attention along axis -2, with Flax's parameters.

    Attributes:
      num_heads: heads (divide the feature count D).
      dropout: on the attention weights (one draw per weight, sequence and head, as
        torch's ``MultiheadAttention``).
      dtype: compute dtype; the softmax runs in float32.

    Shape:
      ``[batch..., length, D]`` -> same. ``key_valid``: bool ``[batch..., length]`` (or broadcastable), the positions that
      may be attended to; None: all. ``mask``: bool, broadcastable to the weights
      ``[batch..., heads, length, length]``, the keys each query may attend to (e.g.
      causal); combined with ``key_valid``; None: all.
    """

    num_heads: int
    dropout: float = 0.0
    dtype: Any = jnp.float32

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
        out_kernel, out_bias = _Projection((*heads_shape, features), (features,), 2,
                                           name="out")()
        kernel = jnp.stack([k for k, _ in projections], axis=1).astype(self.dtype)  # [D, 3, H, d]
        bias = jnp.stack([b for _, b in projections]).astype(self.dtype)  # [3, H, d]
        x = x.astype(self.dtype)
        # [batch..., length, D] -> [3, batch..., heads, length, depth] in one product.
        qkv = jnp.einsum("...ld,dthe->t...hle", x, kernel)
        qkv = add_bias(qkv, bias, (0, -3, -1))
        key = self.make_rng(DROPOUT) if train and self.dropout > 0.0 else None
        if key_valid is not None:
            key_valid = key_valid[..., None, None, :]
            mask = key_valid if mask is None else jnp.logical_and(key_valid, mask)
        attended = dot_product_attention(*qkv, dropout_rng=key, dropout_rate=self.dropout,
                                         key_valid=mask)
        out = jnp.einsum("...hle,hed->...ld", attended, out_kernel.astype(self.dtype))
        return add_bias(out, out_bias, (-1,))
