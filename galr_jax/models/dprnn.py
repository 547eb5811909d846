"""The DPRNN block (baseline): intra- and inter-segment BiLSTMs (asteroid's definition)."""

from __future__ import annotations

from typing import Any, Optional

import flax.linen as nn
import jax.numpy as jnp

from galr_jax.models.galr import LocallyRecurrent


class DPRNNBlock(nn.Module):
    """Intra-segment BiLSTM path, then the same along the segment axis; zero initial states.

    Shape:
      ``[batch, segments, K, D]`` -> same. ``segment_valid``: bool ``[batch, segments]``,
      the segments an example has at its own length in a padded batch; the inter-segment
      BiLSTM runs over those alone in both directions and the gLNs take their statistics
      over them (None: all segments are real).
    """

    hidden: int
    norm_eps: float
    unroll: int = 1
    dtype: Any = jnp.float32
    kernels: str = "auto"

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool = False,
                 segment_valid: Optional[jnp.ndarray] = None) -> jnp.ndarray:
        del train  # DPRNN has no dropout
        valid = None if segment_valid is None else segment_valid[:, :, None]
        x = LocallyRecurrent(self.hidden, self.norm_eps, False, self.unroll, self.dtype,
                             self.kernels, name="intra")(x, valid)
        across = jnp.swapaxes(x, 1, 2)  # [batch, K, segments, D]: recur along segments
        valid = None if segment_valid is None else segment_valid[:, None, :]
        across = LocallyRecurrent(self.hidden, self.norm_eps, False, self.unroll, self.dtype,
                                  self.kernels, name="inter")(across, valid)
        return jnp.swapaxes(across, 1, 2)
