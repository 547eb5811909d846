"""Dropout as a Flax module; its masks come from :mod:`galr_jax.kernels.dropout`."""

from __future__ import annotations

from typing import Optional

import flax.linen as nn
import jax.numpy as jnp

from galr_jax.kernels.dropout import dropout

DROPOUT = "dropout"  # the rng collection dropout draws its keys from


class Dropout(nn.Module):
    """``flax.linen.Dropout`` on :func:`galr_jax.kernels.dropout.keep_mask`: one independent
    draw per element.

    Attributes:
      rate: probability of zeroing an element.
      deterministic: if True, the identity (evaluation).

    Shape:
      any -> same.
    """

    rate: float
    deterministic: Optional[bool] = None

    @nn.compact
    def __call__(self, x: jnp.ndarray, deterministic: Optional[bool] = None) -> jnp.ndarray:
        deterministic = nn.merge_param("deterministic", self.deterministic, deterministic)
        if deterministic or self.rate == 0.0:
            return x
        return dropout(x, self.make_rng(DROPOUT), self.rate)
