"""The GALR block: locally recurrent inside segments, globally attentive across them."""

from __future__ import annotations

from typing import Any, Optional

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from galr_jax.kernels import pick
from galr_jax.kernels.dense import ADD_BIAS
from galr_jax.models.attention import MultiHeadSelfAttention
from galr_jax.models.causal import PairMaskedAttention, causal_attention_mask
from galr_jax.models.dense import Dense
from galr_jax.models.dropout import DROPOUT, Dropout
from galr_jax.models.norms import GlobalLayerNorm, LayerNorm
from galr_jax.models.recurrent import BiLSTM
from galr_jax.models.remat import apply_recomputed, apply_rematerialised

_POSITION_BASE = 10000.0  # the standard Transformer positional-encoding base


def sinusoidal_positions(num_positions, features: int, first: int = 0):
    """Standard positional encoding: feature 2i = sin(s / base^(2i/D)), 2i+1 = cos(same).

    Args:
      num_positions: how many segments, s = first .. first + num_positions - 1.
      features: D.
      first: the first segment's index (a stream's segment, :mod:`galr_jax.models.causal_step`).

    Returns:
      ``[num_positions, features]`` float32: computed in float64 at trace time when the
      segment count is a number; in float32 on the device when it is symbolic (a model
      exported for any length, :mod:`galr_jax.inference.exported`).
    """
    if not isinstance(num_positions, int):
        positions = jnp.arange(num_positions, dtype=jnp.float32)[:, None]
        rates = jnp.asarray(_POSITION_BASE ** (-np.arange(0, features, 2) / features), jnp.float32)
        angles = positions * rates
        return jnp.stack([jnp.sin(angles), jnp.cos(angles)], axis=-1).reshape(-1, features)
    positions = np.arange(first, first + num_positions, dtype=np.float64)[:, None]
    rates = _POSITION_BASE ** (-np.arange(0, features, 2, dtype=np.float64) / features)
    table = np.zeros((num_positions, features), dtype=np.float64)
    table[:, 0::2] = np.sin(positions * rates)
    table[:, 1::2] = np.cos(positions * rates)
    return table.astype(np.float32)


class LocallyRecurrent(nn.Module):
    """Intra-segment BiLSTM -> Linear 2H->D -> gLN -> residual.

    Also DPRNN's intra-segment path (zero initial state). Run on the segment axis
    swapped with the segment-length axis it is DPRNN's inter-segment path.

    Attributes:
      hidden: H.
      learnable_initial_state: GALR learns h0/c0; DPRNN starts from zeros.
      norm_eps: gLN epsilon.
      kernels: ``reference``, ``tuned`` or ``auto`` (:mod:`galr_jax.kernels`), here and
        in every module below.
      causal: normalise each frame over its features (LayerNorm) instead of the gLN,
        whose statistics span future segments (docs/streaming.md); same parameters.

    Shape:
      ``[batch, segments, K, D]`` -> same; the recurrence runs along axis 2.
      ``valid``: bool, broadcastable to ``[batch, segments, K]``: the positions of a
      padded batch that the example has at its own length (None: all). They bound the
      gLN's statistics, and where they vary along axis 2, each sequence's real steps.
    """

    hidden: int
    norm_eps: float
    learnable_initial_state: bool = True
    unroll: int = 1
    dtype: Any = jnp.float32
    kernels: str = "auto"
    causal: bool = False

    @nn.compact
    def __call__(self, x: jnp.ndarray, valid: Optional[jnp.ndarray] = None) -> jnp.ndarray:
        batch, segments, length, features = x.shape
        sequences = x.reshape(batch * segments, length, features)
        lengths = None
        if valid is not None and valid.shape[2] > 1:
            lengths = jnp.sum(jnp.broadcast_to(valid, x.shape[:3]), axis=2, dtype=jnp.int32)
            lengths = lengths.reshape(batch * segments)
        y = BiLSTM(self.hidden, self.learnable_initial_state, self.unroll, self.dtype,
                   time_major_output=True, kernels=self.kernels, name="lstm")(sequences, lengths)
        # Projected time-major, then transposed: D features to move instead of 2H.
        y = jnp.swapaxes(Dense(features, dtype=self.dtype, kernels=self.kernels, name="proj")(y),
                         0, 1)
        y = y.reshape(x.shape)
        if self.causal:
            return x + LayerNorm(self.norm_eps, kernels=self.kernels, name="norm")(y)
        return x + GlobalLayerNorm(self.norm_eps, self.kernels, name="norm")(y, valid)


class SegmentLengthMap(nn.Module):
    """Linear map along the segment-length axis (K -> Q or Q -> K), shared over B, S, D.

    Shape:
      ``[batch, segments, length_in, D]`` -> ``[batch, segments, length_out, D]``.
    """

    length_out: int
    dtype: Any = jnp.float32
    kernels: str = "auto"

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        kernel = self.param("kernel", nn.initializers.lecun_normal(), (x.shape[2], self.length_out))
        bias = self.param("bias", nn.initializers.zeros, (self.length_out,))
        y = jnp.einsum("bskd,kq->bsqd", x.astype(self.dtype), kernel.astype(self.dtype))
        return pick(ADD_BIAS, self.kernels)(y, bias, (2,))


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
      recompute_attention: recompute the multi-head attention in the backward pass rather
        than keep its intermediates (off where the whole block is recomputed anyway).
      kernels: ``reference``, ``tuned`` or ``auto`` (:mod:`galr_jax.kernels`).
      causal: each segment attends to itself and earlier segments only, and the gLN is
        a per-frame LayerNorm (docs/streaming.md); same parameters.
      attention_window: causal: segments attended, the current one included; 0: all.

    Shape:
      ``[batch, segments, K, D]`` -> same. ``segment_valid``:
      bool ``[batch, segments]``, the segments an example has at its own length in a
      padded batch; the others are left out of the attention keys and the gLN
      statistics (None: all segments are real). A causal block needs no such mask: real
      segments never attend to the later, padded ones.
    """

    num_heads: int
    low_dim: Optional[int]
    dropout: float
    attention_residual: bool
    norm_eps: float
    dtype: Any = jnp.float32
    recompute_attention: bool = True
    kernels: str = "auto"
    causal: bool = False
    attention_window: int = 0

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool = False,
                 segment_valid: Optional[jnp.ndarray] = None) -> jnp.ndarray:
        batch, segments, length, features = x.shape
        key_valid = norm_valid = None
        if self.causal:
            # [query, key], broadcast over [batch, Q, heads]: the attention's weight mask.
            key_valid = causal_attention_mask(segments, self.attention_window)
        elif segment_valid is not None:
            key_valid = segment_valid[:, None, :]  # tokens are [batch, Q, segments]
            norm_valid = segment_valid[:, :, None]  # y is [batch, segments, Q or K]
        y = x
        if self.low_dim is not None:
            y = SegmentLengthMap(self.low_dim, self.dtype, self.kernels, name="to_low_dim")(y)
        tokens = jnp.swapaxes(y, 1, 2)  # [batch, Q, segments, D]: attend along segments
        tokens = LayerNorm(self.norm_eps, self.dtype, self.kernels, name="norm_in")(tokens)
        tokens = tokens + sinusoidal_positions(segments, features).astype(tokens.dtype)
        attention = (PairMaskedAttention if self.causal else MultiHeadSelfAttention)(
            self.num_heads, self.dropout, self.dtype, self.kernels, name="attention")
        if self.recompute_attention:
            # Recomputed in the backward pass from the tokens, which the attention's input
            # projection keeps anyway: kept, its queries, keys, values, [.., S, S] weights
            # and output would be live for every block at the train step's peak (about
            # 41 MB a block for galr_1.5m at 4 s), for one more attention forward a block.
            key = self.make_rng(DROPOUT) if train and self.dropout > 0.0 else None
            attended = apply_rematerialised(attention, tokens, train, key, key_valid)
        else:
            attended = attention(tokens, train, key_valid)
        residual = tokens if self.attention_residual else attended
        dropped = Dropout(self.dropout, deterministic=not train)(attended)
        tokens = LayerNorm(self.norm_eps, self.dtype, self.kernels,
                           name="norm_out")(residual + dropped)
        y = jnp.swapaxes(tokens, 1, 2)  # [batch, segments, Q, D]
        norm = (LayerNorm(self.norm_eps, kernels=self.kernels, name="norm") if self.causal
                else GlobalLayerNorm(self.norm_eps, self.kernels, name="norm"))
        if self.low_dim is None:
            return x + (norm(y) if self.causal else norm(y, norm_valid))
        # The gLN would keep its [batch, segments, K, D] input for the backward pass, every
        # block's at once at the train step's peak (8.4 MB a block for galr_1.5m at 4 s);
        # recomputed from the Q-long y, which the Q->K map's gradient keeps anyway, it
        # costs one small product and the gLN's forward.
        return x + apply_recomputed(y, SegmentLengthMap(length, self.dtype, self.kernels,
                                                     name="from_low_dim"),
                                    norm, last_input=norm_valid)


class GALRBlock(nn.Module):
    """One GALR block: :class:`LocallyRecurrent` then :class:`GloballyAttentive`.

    Shape:
      ``[batch, segments, K, D]`` -> same; ``segment_valid`` as in
      :class:`GloballyAttentive`.
    """

    hidden: int
    num_heads: int
    low_dim: Optional[int]
    dropout: float
    attention_residual: bool
    norm_eps: float
    unroll: int = 1
    dtype: Any = jnp.float32
    recompute_attention: bool = True
    kernels: str = "auto"
    causal: bool = False
    attention_window: int = 0

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool = False,
                 segment_valid: Optional[jnp.ndarray] = None) -> jnp.ndarray:
        valid = None if segment_valid is None else segment_valid[:, :, None]
        x = LocallyRecurrent(self.hidden, self.norm_eps, True, self.unroll, self.dtype,
                             self.kernels, self.causal, name="locally_recurrent")(x, valid)
        return GloballyAttentive(self.num_heads, self.low_dim, self.dropout,
                                 self.attention_residual, self.norm_eps, self.dtype,
                                 self.recompute_attention, self.kernels, self.causal,
                                 self.attention_window,
                                 name="globally_attentive")(x, train, segment_valid)
