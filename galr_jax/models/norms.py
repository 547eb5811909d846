"""Global layer normalisation (gLN) of Conv-TasNet / DPRNN / GALR."""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp


class GlobalLayerNorm(nn.Module):
    """Normalises each example over all its non-batch axes, with a per-feature affine.

    Equivalent to torch ``GroupNorm(1, features)``: biased variance, ``eps`` inside the
    square root. Statistics are computed in float32 whatever the input dtype, because
    a bf16 mean over tens of thousands of elements loses the variance.

    Attributes:
      epsilon: added to the variance (1e-5 for GALR, 1e-8 for asteroid's DPRNN).

    Shape:
      ``[batch, ..., features]`` -> same shape and dtype.
    """

    epsilon: float

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        features = x.shape[-1]
        scale = self.param("scale", nn.initializers.ones, (features,))
        bias = self.param("bias", nn.initializers.zeros, (features,))
        x32 = x.astype(jnp.float32)
        axes = tuple(range(1, x.ndim))
        mean = jnp.mean(x32, axis=axes, keepdims=True)
        centred = x32 - mean
        var = jnp.mean(jnp.square(centred), axis=axes, keepdims=True)
        y = centred * jnp.reciprocal(jnp.sqrt(var + self.epsilon)) * scale + bias
        return y.astype(x.dtype)
