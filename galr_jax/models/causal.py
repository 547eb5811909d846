"""Pieces of the causal GALR (``model.causal``): which segments attend to which.

A causal GALR block sees, for segment s, only segments s' <= s (optionally only the last
``attention_window`` of them); everything else in the block is already local to a
segment or a frame once gLN is replaced by a per-frame LayerNorm (docs/streaming.md).
"""

from __future__ import annotations

from typing import Any, Optional

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from galr_jax.models.attention import MultiHeadSelfAttention


def causal_attention_mask(num_segments, window: int):
    """Which segments each segment may attend to.

    Args:
      num_segments: S, a number (or a symbolic dimension of an exported model).
      window: W > 0: the current segment and the W-1 before it; 0: all past segments.

    Returns:
      bool ``[S (query), S (key)]``: key s' is visible to query s iff
      ``s' <= s`` and (``window == 0`` or ``s - s' < window``).
    """
    xp = np if isinstance(num_segments, int) else jnp
    query = xp.arange(num_segments)[:, None]
    key = xp.arange(num_segments)[None, :]
    visible = key <= query
    if window:
        visible = visible & (query - key < window)
    return visible


class PairMaskedAttention(nn.Module):
    """:class:`MultiHeadSelfAttention` called as ``(x, train, mask)`` with a per-query mask.

    The recomputation wrappers (:func:`galr_jax.models.remat.apply_rematerialised`) call a
    module as ``(x, train, mask)``; this routes their mask to the attention's weight mask
    rather than its per-key ``key_valid``. Its parameters live in its own scope, exactly
    where a :class:`MultiHeadSelfAttention` of the same name keeps them.

    Shape:
      ``[batch..., S, D]`` -> same; ``mask``: bool, broadcastable to
      ``[batch..., heads, S, S]``.
    """

    num_heads: int
    dropout: float = 0.0
    dtype: Any = jnp.float32
    kernels: str = "auto"

    def setup(self):
        self.attention = MultiHeadSelfAttention(self.num_heads, self.dropout, self.dtype,
                                                self.kernels)
        nn.share_scope(self, self.attention)

    def __call__(self, x: jnp.ndarray, train: bool = False,
                 mask: Optional[jnp.ndarray] = None) -> jnp.ndarray:
        return self.attention(x, train, None, mask)
