"""Multi-head self-attention: ``jax.nn.dot_product_attention`` (reference), or a layout and
backward pass tuned for GALR's many tiny heads on XLA:CPU.

Both functions take the same parameters (Flax's ``MultiHeadDotProductAttention``
layout: ``query``, ``key``, ``value`` kernels ``[D, heads, depth]`` and biases
``[heads, depth]``; ``out`` kernel ``[heads, depth, D]`` and bias ``[D]``), and draw
the same dropout masks (:mod:`galr_jax.kernels.dropout`) on the attention weights.

The tuned version: GALR attends over S segments (82 at 4 s) for B*Q sequences with
heads of D/heads = 8 features. Flax projects to ``[batch..., length, heads, depth]``
and contracts with the heads between the sequence and depth axes; here one product
projects queries, keys and values together, straight into
``[3, batch..., heads, length, depth]``, so the two attention products are plain batched
matrix products over (batch..., heads). On the galr_1.5m shapes at 4 s this took the
layer's forward from 24 to 15 ms on CPU (docs/benchmarks.md, "Optimisation log"). Its
backward pass is written out (:func:`_attention`): with the gLN change of the same
round, the layer's training forward + backward at those shapes fell from about 119 to
91 ms (docs/benchmarks.md).
"""

from __future__ import annotations

import functools
import operator
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from galr_jax.kernels.dense import add_bias
from galr_jax.kernels.dropout import apply_keep_mask, keep_mask
from galr_jax.kernels.scheduling import tied_to

Projection = tuple[jnp.ndarray, jnp.ndarray]  # (kernel, bias)


def reference_dot_product_attention(query: jnp.ndarray, key: jnp.ndarray, value: jnp.ndarray,
                                    dropout_rng: Optional[jax.Array] = None,
                                    dropout_rate: float = 0.0,
                                    mask: Optional[jnp.ndarray] = None) -> jnp.ndarray:
    """Scaled dot-product attention in Flax's layout, dropout on the weights.

    Without dropout it is ``jax.nn.dot_product_attention`` (its default implementation;
    docs/kernels.md on cuDNN's); with dropout, which that function lacks, the same
    arithmetic written out, differentiated by JAX.

    Args:
      query, key, value: ``[batch..., length, heads, depth]``.
      dropout_rng: key of the dropout on the attention weights; None: no dropout.
      dropout_rate: probability of dropping a weight.
      mask: bool, broadcastable to the weights ``[batch..., heads, length, length]``: the
        keys each query may attend to (at least one per query); None: all.

    Returns:
      ``[batch..., length, heads, depth]``; the weights ``[batch..., heads, length,
      length]`` (the dropout mask's shape) are a softmax over the last axis.
    """
    batch_shape, length = query.shape[:-3], key.shape[-3]
    if mask is not None:
        mask = jnp.asarray(mask)
        mask = mask.reshape((1,) * max(0, len(batch_shape) + 3 - mask.ndim) + mask.shape)
        # Only the batch axes are broadcast: a per-key mask stays [rows, 1, 1, length].
        mask = jnp.broadcast_to(mask, (*batch_shape, *mask.shape[-3:-1], length))
    if dropout_rng is None or dropout_rate == 0.0:
        rows = functools.reduce(operator.mul, batch_shape, 1)  # symbolic dims multiply too

        def flat(x):
            return x.reshape(rows, *x.shape[-3:])

        out = jax.nn.dot_product_attention(
            flat(query), flat(key), flat(value),
            mask=None if mask is None else mask.reshape(rows, *mask.shape[-3:]))
        return out.reshape(*batch_shape, *out.shape[1:])
    scale = 1.0 / np.sqrt(query.shape[-1])
    logits = jnp.einsum("...qhd,...khd->...hqk", query, key,
                        preferred_element_type=jnp.float32) * scale
    if mask is not None:
        logits = jnp.where(mask, logits, -jnp.inf)
    weights = jax.nn.softmax(logits)
    keep_prob = 1.0 - dropout_rate
    weights = apply_keep_mask(weights, keep_mask(dropout_rng, weights.shape, keep_prob),
                              keep_prob)
    return jnp.einsum("...hqk,...khd->...qhd", weights.astype(value.dtype), value)


def reference_self_attention(x: jnp.ndarray, projections: Sequence[Projection],
                             out_projection: Projection, dropout_rng: Optional[jax.Array],
                             dropout_rate: float, mask: Optional[jnp.ndarray],
                             dtype) -> jnp.ndarray:
    """Multi-head self-attention along axis -2, as ``flax.linen.MultiHeadDotProductAttention``.

    Args:
      x: ``[batch..., length, D]``.
      projections: (kernel ``[D, heads, depth]``, bias ``[heads, depth]``) of the
        queries, keys and values.
      out_projection: (kernel ``[heads, depth, D]``, bias ``[D]``).
      dropout_rng, dropout_rate: the attention weights' dropout (None: none).
      mask: bool, broadcastable to the weights ``[batch..., heads, length, length]``: the
        keys each query may attend to; None: all.
      dtype: compute dtype; the softmax runs in float32.

    Returns:
      ``[batch..., length, D]`` in ``dtype``.
    """
    x = x.astype(dtype)
    query, key, value = (jnp.einsum("...ld,dhe->...lhe", x, kernel.astype(dtype))
                         + bias.astype(dtype) for kernel, bias in projections)
    attended = reference_dot_product_attention(query, key, value, dropout_rng, dropout_rate,
                                               mask)
    out_kernel, out_bias = out_projection
    return (jnp.einsum("...lhe,hed->...ld", attended, out_kernel.astype(dtype))
            + out_bias.astype(dtype))


# ---------------------------------------------------------------------------------------
# Tuned for XLA:CPU.


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


def tuned_self_attention(x: jnp.ndarray, projections: Sequence[Projection],
                         out_projection: Projection, dropout_rng: Optional[jax.Array],
                         dropout_rate: float, mask: Optional[jnp.ndarray],
                         dtype) -> jnp.ndarray:
    """:func:`reference_self_attention` with the three projections in one product into
    ``[3, batch..., heads, length, depth]`` and the attention of :func:`dot_product_attention`.
    """
    kernel = jnp.stack([k for k, _ in projections], axis=1).astype(dtype)  # [D, 3, H, d]
    bias = jnp.stack([b for _, b in projections]).astype(dtype)  # [3, H, d]
    # [batch..., length, D] -> [3, batch..., heads, length, depth] in one product.
    qkv = jnp.einsum("...ld,dthe->t...hle", x.astype(dtype), kernel)
    qkv = add_bias(qkv, bias, (0, -3, -1))
    attended = dot_product_attention(*qkv, dropout_rng=dropout_rng, dropout_rate=dropout_rate,
                                     key_valid=mask)
    out_kernel, out_bias = out_projection
    out = jnp.einsum("...hle,hed->...ld", attended, out_kernel.astype(dtype))
    return add_bias(out, out_bias, (-1,))


SELF_ATTENTION = {"reference": reference_self_attention, "tuned": tuned_self_attention}
