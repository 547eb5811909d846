"""Bias addition with a float32 bias gradient, and the Dense layer built on it.

In bfloat16 compute the bias gradient is a sum of bf16 activations' gradients over
every token. XLA on CPU upcasts such a sum to float32 and rewrites it into a tree of
windowed reductions, which ran at a few GB/s: 36 of them took about 200 ms of the
bf16 galr_1.5m train step at 4 s (docs/benchmarks.md). Here the gradient is upcast once and
summed one axis at a time (:func:`sum_over_other_axes`, which the norms' affine
gradients use too).
"""

from __future__ import annotations

import functools
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp


def sum_over_other_axes(x: jnp.ndarray, axes: Sequence[int]) -> jnp.ndarray:
    """Sums ``x`` over every axis not in ``axes`` (negative allowed), one axis at a time
    from the last: short sums, which XLA leaves alone, with pairwise-like rounding.

    Returns:
      ``[x.shape[a] for a in sorted axes]``.
    """
    kept = _normalised(axes, x.ndim)
    for axis in range(x.ndim - 1, -1, -1):
        if axis not in kept:
            x = jnp.sum(x, axis=axis)
    return x


def _normalised(axes: Sequence[int], ndim: int) -> tuple[int, ...]:
    return tuple(axis % ndim for axis in axes)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def add_bias(y: jnp.ndarray, bias: jnp.ndarray, axes: tuple[int, ...]) -> jnp.ndarray:
    """``y + bias``, the bias spanning ``y``'s ``axes`` (in order) and broadcast over the rest.

    Args:
      y: any shape, any float dtype (the result keeps it).
      bias: shape ``[y.shape[a] for a in axes]``.
      axes: ascending axes of ``y``, negative allowed.
    """
    return _add_bias_forward(y, bias, axes)[0]


def _add_bias_forward(y, bias, axes):
    axes = _normalised(axes, y.ndim)
    shape = [1] * y.ndim
    for axis, size in zip(axes, bias.shape):
        shape[axis] = size
    return y + bias.reshape(shape).astype(y.dtype), bias  # the bias only for its dtype


def _add_bias_backward(axes, bias, dy):
    return dy, sum_over_other_axes(dy.astype(jnp.float32), axes).astype(bias.dtype)


add_bias.defvjp(_add_bias_forward, _add_bias_backward)


class Dense(nn.Module):
    """``flax.linen.Dense`` with the bias added by :func:`add_bias`.

    Same parameters (``kernel [in, features]`` LeCun normal, ``bias [features]`` zeros),
    initialised to the same values, so checkpoints and the PyTorch conversion carry over.

    Attributes:
      features: output features.
      use_bias: add a bias.
      dtype: compute dtype of the product (parameters stay float32).

    Shape:
      ``[..., in]`` -> ``[..., features]``.
    """

    features: int
    use_bias: bool = True
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        kernel = self.param("kernel", nn.initializers.lecun_normal(),
                            (x.shape[-1], self.features))
        y = jnp.dot(x.astype(self.dtype), kernel.astype(self.dtype))
        if not self.use_bias:
            return y
        bias = self.param("bias", nn.initializers.zeros, (self.features,))
        return add_bias(y, bias, (-1,))
