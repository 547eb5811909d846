"""The GALR block: locally recurrent inside segments, globally attentive across them."""

from __future__ import annotations

import functools
from typing import Any, Optional, Union

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from galr_jax.models.dropout import Dropout, dropout
from galr_jax.models.norms import GlobalLayerNorm
from galr_jax.models.recurrent import BiLSTM

_POSITION_BASE = 10000.0  # the standard Transformer positional-encoding base


def sinusoidal_positions(num_positions: int, features: int) -> np.ndarray:
    """Standard positional encoding: feature 2i = sin(s / base^(2i/D)), 2i+1 = cos(same).

    Returns:
      ``[num_positions, features]`` float32 (computed at trace time: shapes are static).
    """
    positions = np.arange(num_positions, dtype=np.float64)[:, None]
    rates = _POSITION_BASE ** (-np.arange(0, features, 2, dtype=np.float64) / features)
    table = np.zeros((num_positions, features), dtype=np.float64)
    table[:, 0::2] = np.sin(positions * rates)
    table[:, 1::2] = np.cos(positions * rates)
    return table.astype(np.float32)


def dot_product_attention(query: jnp.ndarray, key: jnp.ndarray, value: jnp.ndarray,
                          dropout_rng: Optional[jax.Array] = None, dropout_rate: float = 0.0,
                          deterministic: bool = False, dtype: Any = None,
                          precision: Any = None, rows: int = 1,
                          first_row: Union[int, jax.Array] = 0) -> jnp.ndarray:
    """Scaled dot-product attention with an independent dropout draw per weight.

    ``flax.linen.dot_product_attention`` without masks, its dropout drawn by
    :func:`galr_jax.models.dropout.dropout` (a counter-based hash: threefry's bits were
    half of the attention layer's training forward on CPU). Every sequence and head gets
    its own mask, as in torch's ``MultiheadAttention``. ``rows`` examples lie along the
    leading batch axis, the first with global index ``first_row`` (see
    :func:`galr_jax.models.dropout.keep_mask`).

    Shape:
      query, key, value ``[batch..., length, heads, depth]`` -> same as query; the
      attention weights are ``[batch..., heads, length, length]``.
    """
    weights = nn.dot_product_attention_weights(query, key, deterministic=True, dtype=dtype,
                                               precision=precision)
    if not deterministic and dropout_rate > 0.0:
        weights = dropout(weights, dropout_rng, dropout_rate, rows=rows, first_row=first_row)
    return jnp.einsum("...hqk,...khd->...qhd", weights, value, precision=precision)


def heads_as_batch_attention(query: jnp.ndarray, key: jnp.ndarray, value: jnp.ndarray,
                             dropout_rng: Optional[jax.Array] = None, dropout_rate: float = 0.0,
                             deterministic: bool = False, dtype: Any = None,
                             precision: Any = None, rows: int = 1,
                             first_row: Union[int, jax.Array] = 0) -> jnp.ndarray:
    """:func:`dot_product_attention` with the heads folded into the batch.

    Same arguments, result and dropout mask: the attention weights are
    ``[batch * heads, 1, q, k]`` instead of ``[batch..., heads, q, k]``, the same
    elements in the same order, so the mask (a function of the flat index) is the
    same. Flax's einsums keep the heads between the sequence and depth axes, which XLA
    on CPU runs as thousands of tiny strided products; with the heads folded into the
    batch the two products are plain batched matrix products, about 2x faster.

    Shape:
      query, key, value ``[batch..., length, heads, depth]`` -> same as query.
    """
    *batch, length, heads, depth = query.shape

    def fold(x):  # [batch..., length, heads, depth] -> [batch * heads, length, 1, depth]
        return jnp.moveaxis(x, -2, -3).reshape(-1, x.shape[-3], 1, depth)

    out = dot_product_attention(
        fold(query), fold(key), fold(value), dropout_rng=dropout_rng, dropout_rate=dropout_rate,
        deterministic=deterministic, dtype=dtype, precision=precision, rows=rows,
        first_row=first_row)
    return jnp.moveaxis(out.reshape(*batch, heads, length, depth), -3, -2)


class LocallyRecurrent(nn.Module):
    """Intra-segment BiLSTM -> Linear 2H->D -> gLN -> residual.

    Also DPRNN's intra-segment path (zero initial state). Run on the segment axis
    swapped with the segment-length axis it is DPRNN's inter-segment path.

    Attributes:
      hidden: H.
      learnable_initial_state: GALR learns h0/c0; DPRNN starts from zeros.
      norm_eps: gLN epsilon.

    Shape:
      ``[batch, segments, K, D]`` -> same; the recurrence runs along axis 2.
    """

    hidden: int
    norm_eps: float
    learnable_initial_state: bool = True
    unroll: int = 1
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        batch, segments, length, features = x.shape
        sequences = x.reshape(batch * segments, length, features)
        y = BiLSTM(self.hidden, self.learnable_initial_state, self.unroll, self.dtype,
                   name="lstm")(sequences)
        y = nn.Dense(features, dtype=self.dtype, name="proj")(y)
        y = GlobalLayerNorm(self.norm_eps, name="norm")(y.reshape(x.shape))
        return x + y


class SegmentLengthMap(nn.Module):
    """Linear map along the segment-length axis (K -> Q or Q -> K), shared over B, S, D.

    Shape:
      ``[batch, segments, length_in, D]`` -> ``[batch, segments, length_out, D]``.
    """

    length_out: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        kernel = self.param("kernel", nn.initializers.lecun_normal(), (x.shape[2], self.length_out))
        bias = self.param("bias", nn.initializers.zeros, (self.length_out,))
        y = jnp.einsum("bskd,kq->bsqd", x.astype(self.dtype), kernel.astype(self.dtype))
        return y + bias[None, None, :, None].astype(y.dtype)


class GloballyAttentive(nn.Module):
    """Multi-head self-attention across segments on a low-dimensional segment representation.

    Steps (spec sec. 2): K->Q map; tokens = sequence over segments, one per (batch, q);
    LayerNorm; + sinusoidal position of the segment; multi-head self-attention;
    post-norm ``LayerNorm(r + Dropout(y))``; Q->K map; gLN; residual.

    Attributes:
      num_heads: attention heads (divide D).
      low_dim: Q, or None to attend on all K positions of a segment.
      dropout: on the attention weights and on the attention output.
      attention_residual: r = attention input (standard) if True, r = y (author's code) if False.
      norm_eps: epsilon of the LayerNorms and the gLN.

    Shape:
      ``[batch, segments, K, D]`` -> same.
    """

    num_heads: int
    low_dim: Optional[int]
    dropout: float
    attention_residual: bool
    norm_eps: float
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool = False,
                 first_row: Union[int, jax.Array] = 0) -> jnp.ndarray:
        batch, segments, length, features = x.shape
        y = x
        if self.low_dim is not None:
            y = SegmentLengthMap(self.low_dim, self.dtype, name="to_low_dim")(y)
        tokens = jnp.swapaxes(y, 1, 2)  # [batch, Q, segments, D]: attend along segments
        tokens = nn.LayerNorm(epsilon=self.norm_eps, use_fast_variance=False, dtype=self.dtype,
                              name="norm_in")(tokens)
        tokens = tokens + sinusoidal_positions(segments, features).astype(tokens.dtype)
        # Measured on CPU (BENCHMARKS.md): folding the heads into the batch speeds up
        # the forward pass, but Flax's own layout gives the faster backward pass.
        attention_fn = functools.partial(
            dot_product_attention if train else heads_as_batch_attention, rows=batch,
            first_row=first_row)
        attended = nn.MultiHeadDotProductAttention(
            num_heads=self.num_heads, dtype=self.dtype, dropout_rate=self.dropout,
            deterministic=not train, attention_fn=attention_fn, name="attention")(tokens, tokens)
        residual = tokens if self.attention_residual else attended
        dropped = Dropout(self.dropout, deterministic=not train)(attended, first_row=first_row)
        tokens = nn.LayerNorm(epsilon=self.norm_eps, use_fast_variance=False, dtype=self.dtype,
                              name="norm_out")(residual + dropped)
        y = jnp.swapaxes(tokens, 1, 2)  # [batch, segments, Q, D]
        if self.low_dim is not None:
            y = SegmentLengthMap(length, self.dtype, name="from_low_dim")(y)
        return x + GlobalLayerNorm(self.norm_eps, name="norm")(y)


class GALRBlock(nn.Module):
    """One GALR block: :class:`LocallyRecurrent` then :class:`GloballyAttentive`.

    Shape:
      ``[batch, segments, K, D]`` -> same.
    """

    hidden: int
    num_heads: int
    low_dim: Optional[int]
    dropout: float
    attention_residual: bool
    norm_eps: float
    unroll: int = 1
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool = False,
                 first_row: Union[int, jax.Array] = 0) -> jnp.ndarray:
        x = LocallyRecurrent(self.hidden, self.norm_eps, True, self.unroll, self.dtype,
                             name="locally_recurrent")(x)
        return GloballyAttentive(self.num_heads, self.low_dim, self.dropout,
                                 self.attention_residual, self.norm_eps, self.dtype,
                                 name="globally_attentive")(x, train, first_row)
