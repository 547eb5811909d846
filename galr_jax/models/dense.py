"""The Dense layer (``flax.linen.Dense``'s parameters), its bias added by the chosen kernel."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from galr_jax.kernels import pick
from galr_jax.kernels.dense import ADD_BIAS


class Dense(nn.Module):
    """``x @ kernel + bias``, as ``flax.linen.Dense``.

    Same parameters (``kernel [in, features]`` LeCun normal, ``bias [features]`` zeros),
    initialised to the same values, so checkpoints and the PyTorch conversion carry over.

    Attributes:
      features: output features.
      use_bias: add a bias.
      dtype: compute dtype of the product (parameters stay float32).
      kernels: ``reference``, ``tuned`` or ``auto`` (:mod:`galr_jax.kernels`).

    Shape:
      ``[..., in]`` -> ``[..., features]``.
    """

    features: int
    use_bias: bool = True
    dtype: Any = jnp.float32
    kernels: str = "auto"

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        kernel = self.param("kernel", nn.initializers.lecun_normal(),
                            (x.shape[-1], self.features))
        y = jnp.dot(x.astype(self.dtype), kernel.astype(self.dtype))
        if not self.use_bias:
            return y
        bias = self.param("bias", nn.initializers.zeros, (self.features,))
        return pick(ADD_BIAS, self.kernels)(y, bias, (-1,))
