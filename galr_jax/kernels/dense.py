"""Adding a bias: plainly (reference), or with a float32 gradient summed axis by axis (tuned).

In bfloat16 compute the bias gradient is a sum of bf16 activations' gradients over
every token. XLA on CPU upcasts such a sum to float32 and rewrites it into a tree of
windowed reductions, which ran at a few GB/s: 36 of them took about 200 ms of the
bf16 galr_1.5m train step at 4 s (docs/benchmarks.md). The tuned :func:`add_bias` upcasts
the gradient once and sums it one axis at a time (:func:`sum_over_other_axes`, which
the tuned norms' affine gradients use too).
"""

from __future__ import annotations

import functools
from typing import Sequence

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


def reference_add_bias(y: jnp.ndarray, bias: jnp.ndarray, axes: tuple[int, ...]) -> jnp.ndarray:
    """``y + bias``, the bias spanning ``y``'s ``axes`` (in order) and broadcast over the rest.

    Args:
      y: any shape, any float dtype (the result keeps it).
      bias: shape ``[y.shape[a] for a in axes]``.
      axes: ascending axes of ``y``, negative allowed.
    """
    shape = [1] * y.ndim
    for axis, size in zip(_normalised(axes, y.ndim), bias.shape):
        shape[axis] = size
    return y + bias.reshape(shape).astype(y.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def add_bias(y: jnp.ndarray, bias: jnp.ndarray, axes: tuple[int, ...]) -> jnp.ndarray:
    """:func:`reference_add_bias` whose bias gradient is summed in float32 axis by axis."""
    return reference_add_bias(y, bias, axes)


def _add_bias_forward(y, bias, axes):
    return reference_add_bias(y, bias, axes), bias  # the bias only for its dtype


def _add_bias_backward(axes, bias, dy):
    return dy, sum_over_other_axes(dy.astype(jnp.float32), axes).astype(bias.dtype)


add_bias.defvjp(_add_bias_forward, _add_bias_backward)

ADD_BIAS = {"reference": reference_add_bias, "tuned": add_bias}
