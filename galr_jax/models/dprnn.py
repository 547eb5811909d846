"""The DPRNN block (baseline): intra- and inter-segment BiLSTMs (asteroid's definition)."""

from __future__ import annotations

from typing import Any, Union

import flax.linen as nn
import jax
import jax.numpy as jnp

from galr_jax.models.galr import LocallyRecurrent


class DPRNNBlock(nn.Module):
    """Intra-segment BiLSTM path, then the same along the segment axis; zero initial states.

    Shape:
      ``[batch, segments, K, D]`` -> same.
    """

    hidden: int
    norm_eps: float
    unroll: int = 1
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool = False,
                 first_row: Union[int, jax.Array] = 0) -> jnp.ndarray:
        del train, first_row  # DPRNN has no dropout
        x = LocallyRecurrent(self.hidden, self.norm_eps, False, self.unroll, self.dtype,
                             name="intra")(x)
        across = jnp.swapaxes(x, 1, 2)  # [batch, K, segments, D]: recur along segments
        across = LocallyRecurrent(self.hidden, self.norm_eps, False, self.unroll, self.dtype,
                                  name="inter")(across)
        return jnp.swapaxes(across, 1, 2)
