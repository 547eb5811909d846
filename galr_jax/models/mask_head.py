"""Mask estimation head shared by GALR and DPRNN (spec sec. 1, step 6)."""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from galr_jax.models.dense import Dense
from galr_jax.models.segmentation import overlap_add

_PRELU_INIT = 0.25  # torch.nn.PReLU's default slope

MASK_NONLINEARITIES = {"relu": nn.relu, "sigmoid": nn.sigmoid}


class MaskHead(nn.Module):
    """PReLU -> 1x1 conv D->C*D -> overlap-add per source -> gated tanh*sigmoid -> 1x1 conv D->N -> mask.

    Attributes:
      num_sources: C.
      num_filters: N, the encoder's filter count (masks multiply encoder frames).
      nonlinearity: ``relu`` or ``sigmoid``.
      kernels: ``reference``, ``tuned`` or ``auto`` (:mod:`galr_jax.kernels`).

    Shape:
      ``[batch, segments, K, D]`` -> ``[batch, C, frames, N]`` for ``frames`` given.
    """

    num_sources: int
    num_filters: int
    nonlinearity: str = "relu"
    dtype: Any = jnp.float32
    kernels: str = "auto"

    @nn.compact
    def __call__(self, x: jnp.ndarray, num_frames: int) -> jnp.ndarray:
        batch, segments, length, features = x.shape
        x = nn.PReLU(negative_slope_init=_PRELU_INIT, name="prelu")(x)
        dense = functools.partial(Dense, dtype=self.dtype, kernels=self.kernels)
        x = dense(self.num_sources * features, name="to_sources")(x)
        # Channel index is source * D + feature, as in the reference's 1x1 conv.
        x = x.reshape(batch, segments, length, self.num_sources, features)
        x = jnp.moveaxis(x, 3, 1).reshape(batch * self.num_sources, segments, length, features)
        frames = overlap_add(x, num_frames)  # [batch * C, frames, D]
        gated = (jnp.tanh(dense(features, name="gate_tanh")(frames))
                 * nn.sigmoid(dense(features, name="gate_sigmoid")(frames)))
        masks = dense(self.num_filters, use_bias=False, name="to_filters")(gated)
        masks = MASK_NONLINEARITIES[self.nonlinearity](masks)
        return masks.reshape(batch, self.num_sources, num_frames, self.num_filters)
