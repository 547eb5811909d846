"""Layer normalisations: global (gLN, Conv-TasNet / DPRNN / GALR) and per token (LayerNorm).

The arithmetic is in :mod:`galr_jax.kernels.norms` (a reference and a CPU-tuned
version); ``global_layer_norm``, ``masked_global_layer_norm`` and ``layer_norm`` are
the tuned functions, importable from here as before.
"""

from __future__ import annotations

from typing import Any, Optional

import flax.linen as nn
import jax.numpy as jnp

from galr_jax.kernels import pick
from galr_jax.kernels.norms import (GLOBAL_LAYER_NORM, LAYER_NORM, MASKED_GLOBAL_LAYER_NORM,
                                    global_layer_norm, layer_norm, masked_global_layer_norm)

__all__ = ["GlobalLayerNorm", "LayerNorm", "global_layer_norm", "layer_norm",
           "masked_global_layer_norm"]


class LayerNorm(nn.Module):
    """Normalises each token over its features, with a per-feature affine.

    Equivalent to torch ``nn.LayerNorm(features, eps)`` and to Flax's ``nn.LayerNorm``
    with ``use_fast_variance=False`` (same parameters, ``scale`` and ``bias``), with
    statistics in float32 whatever the input dtype.

    Attributes:
      epsilon: added to the variance.
      dtype: output dtype (None: the input's).
      kernels: ``reference``, ``tuned`` or ``auto`` (:mod:`galr_jax.kernels`).

    Shape:
      ``[..., features]`` -> same shape.
    """

    epsilon: float
    dtype: Any = None
    kernels: str = "auto"

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        features = x.shape[-1]
        scale = self.param("scale", nn.initializers.ones, (features,))
        bias = self.param("bias", nn.initializers.zeros, (features,))
        y = pick(LAYER_NORM, self.kernels)(x, scale, bias, self.epsilon)
        return y if self.dtype is None else y.astype(self.dtype)


class GlobalLayerNorm(nn.Module):
    """Normalises each example over all its non-batch axes, with a per-feature affine.

    Equivalent to torch ``GroupNorm(1, features)``: biased variance, ``eps`` inside the
    square root. Statistics are computed in float32 whatever the input dtype, because
    a bf16 mean over tens of thousands of elements loses the variance.

    With ``valid`` the statistics span only the positions it marks: the segments or
    frames of a padded batch that the example has at its own length (spec, "Batches with
    padding").

    Attributes:
      epsilon: added to the variance (1e-5 for GALR, 1e-8 for asteroid's DPRNN).
      kernels: ``reference``, ``tuned`` or ``auto`` (:mod:`galr_jax.kernels`).

    Shape:
      ``[batch, ..., features]`` -> same shape and dtype; ``valid``: bool, broadcastable
      to ``[batch, ...]`` (the input's shape without the features).
    """

    epsilon: float
    kernels: str = "auto"

    @nn.compact
    def __call__(self, x: jnp.ndarray, valid: Optional[jnp.ndarray] = None) -> jnp.ndarray:
        features = x.shape[-1]
        scale = self.param("scale", nn.initializers.ones, (features,))
        bias = self.param("bias", nn.initializers.zeros, (features,))
        if valid is None:
            return pick(GLOBAL_LAYER_NORM, self.kernels)(x, scale, bias, self.epsilon)
        return pick(MASKED_GLOBAL_LAYER_NORM, self.kernels)(x, valid, scale, bias, self.epsilon)
