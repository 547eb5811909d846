"""Mask estimation head shared by GALR and DPRNN (spec sec. 1, step 6)."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from galr_jax.models.dense import Dense
from galr_jax.models.segmentation import overlap_add

_PRELU_INIT = 0.25  # torch.nn.PReLU's default slope
_OVERLAP = 2  # segments covering each frame (half-overlapping segmentation)

MASK_NONLINEARITIES = {"relu": nn.relu, "sigmoid": nn.sigmoid}


class MaskHead(nn.Module):
    """PReLU -> 1x1 conv D->C*D -> overlap-add per source -> gated tanh*sigmoid -> 1x1 conv D->N -> mask.

    The spec's order, computed with the first conv after the overlap-add (the same
    function, see ``__call__``); parameters as the spec's order has them.

    Attributes:
      num_sources: C.
      num_filters: N, the encoder's filter count (masks multiply encoder frames).
      nonlinearity: ``relu`` or ``sigmoid``.

    Shape:
      ``[batch, segments, K, D]`` -> ``[batch, C, frames, N]`` for ``frames`` given.
    """

    num_sources: int
    num_filters: int
    nonlinearity: str = "relu"
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray, num_frames: int) -> jnp.ndarray:
        batch, features = x.shape[0], x.shape[-1]
        x = nn.PReLU(negative_slope_init=_PRELU_INIT, name="prelu")(x)
        # The 1x1 conv is linear and per position, so it commutes with the overlap-add,
        # where every frame is the sum of two segment positions (so twice the bias).
        # After it, the conv and its gradient run on half as many positions.
        frames = overlap_add(x, num_frames)  # [batch, frames, D]
        x = Dense(self.num_sources * features, bias_copies=_OVERLAP, dtype=self.dtype,
                  name="to_sources")(frames)
        # Channel index is source * D + feature, as in the reference's 1x1 conv.
        x = x.reshape(batch, num_frames, self.num_sources, features)
        frames = jnp.moveaxis(x, 2, 1).reshape(batch * self.num_sources, num_frames, features)
        gated = (jnp.tanh(Dense(features, dtype=self.dtype, name="gate_tanh")(frames))
                 * nn.sigmoid(Dense(features, dtype=self.dtype, name="gate_sigmoid")(frames)))
        masks = Dense(self.num_filters, use_bias=False, dtype=self.dtype, name="to_filters")(gated)
        masks = MASK_NONLINEARITIES[self.nonlinearity](masks)
        return masks.reshape(batch, self.num_sources, num_frames, self.num_filters)
