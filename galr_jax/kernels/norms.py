"""Layer normalisations, global (gLN, over each example) and per token (LayerNorm).

Each is here twice with the same arithmetic: a reference written as its definition and
differentiated by JAX, and a tuned version with a hand-written backward whose
statistics are matrix-vector products: XLA on CPU rewrites plain reductions into trees
of windowed reductions, which ran at a few GB/s (see ``_example_means``). Statistics are
float32 in both, whatever the input dtype: a bf16 mean over tens of thousands of
elements loses the variance.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from galr_jax.kernels.dense import sum_over_other_axes
from galr_jax.kernels.scheduling import tied_to


def _affine(x32, mean, variance, scale, bias, epsilon, dtype):
    return ((x32 - mean) * jax.lax.rsqrt(variance + epsilon) * scale + bias).astype(dtype)


def reference_global_layer_norm(x: jnp.ndarray, scale: jnp.ndarray, bias: jnp.ndarray,
                                epsilon: float) -> jnp.ndarray:
    """gLN of ``x`` ``[batch, ..., features]``: mean and biased variance over all of an
    example's elements, in float32, returned in ``x``'s dtype."""
    x32 = x.astype(jnp.float32)
    axes = tuple(range(1, x.ndim))
    mean = jnp.mean(x32, axis=axes, keepdims=True)
    variance = jnp.mean(jnp.square(x32 - mean), axis=axes, keepdims=True)
    return _affine(x32, mean, variance, scale, bias, epsilon, x.dtype)


def reference_masked_global_layer_norm(x: jnp.ndarray, valid: jnp.ndarray, scale: jnp.ndarray,
                                       bias: jnp.ndarray, epsilon: float) -> jnp.ndarray:
    """gLN of ``x`` ``[batch, ..., features]`` with statistics over the positions where
    ``valid`` (bool, broadcastable to ``x.shape[:-1]``) holds; every position is
    normalised with them."""
    x32 = x.astype(jnp.float32)
    axes = tuple(range(1, x.ndim))
    weights = jnp.broadcast_to(valid, x.shape[:-1])[..., None].astype(jnp.float32)
    count = jnp.sum(weights, axis=axes, keepdims=True) * x.shape[-1]
    mean = jnp.sum(x32 * weights, axis=axes, keepdims=True) / count
    variance = jnp.sum(jnp.square(x32 - mean) * weights, axis=axes, keepdims=True) / count
    return _affine(x32, mean, variance, scale, bias, epsilon, x.dtype)


def reference_layer_norm(x: jnp.ndarray, scale: jnp.ndarray, bias: jnp.ndarray,
                         epsilon: float) -> jnp.ndarray:
    """LayerNorm of each token of ``x`` ``[..., features]`` over its features, in float32,
    returned in ``x``'s dtype."""
    x32 = x.astype(jnp.float32)
    mean = jnp.mean(x32, axis=-1, keepdims=True)
    variance = jnp.mean(jnp.square(x32 - mean), axis=-1, keepdims=True)
    return _affine(x32, mean, variance, scale, bias, epsilon, x.dtype)


# ---------------------------------------------------------------------------------------
# Tuned for XLA:CPU.


def _example_means(x: jnp.ndarray) -> jnp.ndarray:
    """``[batch, ..., features]`` -> ``[batch, 1, ..., 1]``: each example's mean.

    Summed in two levels of matrix-vector products: over the features, then over the
    rest. XLA on CPU rewrites one reduction over hundreds of thousands of elements
    into a tree of windowed reductions, which ran at about 3 GB/s: two of them per gLN
    took 7 ms of the globally attentive layer's 25 ms forward at galr_1.5m's 4 s
    shapes. The products stream the data at memory speed; summing in two levels keeps
    float32 rounding at the level of a pairwise sum.
    """
    rows = x.reshape(x.shape[0], -1, x.shape[-1])
    inner = rows @ jnp.ones((x.shape[-1],), x.dtype)  # [batch, rows]
    total = inner @ jnp.ones((inner.shape[1],), x.dtype)  # [batch]
    return (total / (rows.shape[1] * rows.shape[2])).reshape((-1,) + (1,) * (x.ndim - 1))


def _masked_example_means(valid: jnp.ndarray, x: jnp.ndarray, everywhere: bool = False
                          ) -> jnp.ndarray:
    """``[batch, ..., features]`` -> ``[batch, 1, ..., 1]``: each example's mean over the
    positions where ``valid`` (bool, broadcastable to ``x.shape[:-1]``) holds; with
    ``everywhere``, the sum over all positions divided by that same count.

    The padded-batch statistics of the spec's "Batches with padding": segments (or frames)
    that exist only because a shorter example was padded are left out. Every position is
    normalised with them, so in the backward pass each one's gradient enters the
    statistics' terms (``everywhere``). Summed in the same two levels of products as
    :func:`_example_means`.
    """
    inner = x @ jnp.ones((x.shape[-1],), x.dtype)  # [batch, ...]
    weights = jnp.broadcast_to(valid, inner.shape).astype(x.dtype)
    rows = (inner if everywhere else inner * weights).reshape(x.shape[0], -1)
    count = weights.reshape(x.shape[0], -1) @ jnp.ones((rows.shape[1],), x.dtype)
    total = rows @ jnp.ones((rows.shape[1],), x.dtype)
    return (total / (count * x.shape[-1])).reshape((-1,) + (1,) * (x.ndim - 1))


def _token_means(x: jnp.ndarray) -> jnp.ndarray:
    """``[..., features]`` -> ``[..., 1]``: each token's mean over its features, as a
    matrix-vector product (the reduction XLA would rewrite, see ``_example_means``)."""
    return (x @ jnp.ones((x.shape[-1],), x.dtype) / x.shape[-1])[..., None]


def _normalise_forward(means, x, scale, bias, epsilon):
    """``(x - mean) / sqrt(var + eps) * scale + bias`` in float32, the mean and the biased
    variance taken by ``means`` (per example or per token).

    The backward pass gets the input and the statistics, not the normalised values, and
    recomputes those inside its own elementwise passes. Given the normalised values, XLA
    fused that recomputation into the backward's passes anyway and kept both the input
    and the normalised values from the forward pass on (galr_1.5m at 4 s: 8 MB more per
    gLN in the train step).
    """
    x32 = x.astype(jnp.float32)
    mean = means(x32)
    centred = x32 - mean
    inverse_std = jax.lax.rsqrt(means(centred * centred) + epsilon)
    y = centred * inverse_std * scale + bias
    return y.astype(x.dtype), (x, mean, inverse_std, scale)


def _normalise_backward(means, residuals, dy, weight=None):
    """With n = (x - mean) r and y = n s + b:
    dx = r (dn - w (mean(dn) + n mean(dn n))), where dn = dy s, the means are ``means``
    and w (``weight``, default 1) marks the positions the statistics were taken over.
    """
    x, mean, inverse_std, scale = residuals
    # Tied to dy: untied, XLA merges this with the forward's identical expression.
    normalised = (tied_to(x, dy).astype(jnp.float32) - mean) * inverse_std
    dy32 = dy.astype(jnp.float32)
    d_scale = sum_over_other_axes(dy32 * normalised, (-1,))
    d_bias = sum_over_other_axes(dy32, (-1,))
    d_normalised = dy32 * scale
    statistics = means(d_normalised) + normalised * means(d_normalised * normalised)
    if weight is not None:
        statistics = statistics * weight
    dx = inverse_std * (d_normalised - statistics)
    return dx.astype(dy.dtype), d_scale, d_bias


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def global_layer_norm(x: jnp.ndarray, scale: jnp.ndarray, bias: jnp.ndarray,
                      epsilon: float) -> jnp.ndarray:
    """:func:`reference_global_layer_norm`, its means as products, its backward written out."""
    return _normalise_forward(_example_means, x, scale, bias, epsilon)[0]


global_layer_norm.defvjp(functools.partial(_normalise_forward, _example_means),
                         lambda epsilon, residuals, dy: _normalise_backward(
                             _example_means, residuals, dy))


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def masked_global_layer_norm(x: jnp.ndarray, valid: jnp.ndarray, scale: jnp.ndarray,
                             bias: jnp.ndarray, epsilon: float) -> jnp.ndarray:
    """:func:`reference_masked_global_layer_norm`, its means as products, its backward
    written out."""
    return _normalise_forward(functools.partial(_masked_example_means, valid), x, scale, bias,
                              epsilon)[0]


def _masked_forward(x, valid, scale, bias, epsilon):
    y, residuals = _normalise_forward(functools.partial(_masked_example_means, valid), x, scale,
                                      bias, epsilon)
    return y, (residuals, valid)


def _masked_backward(epsilon, residuals, dy):
    residuals, valid = residuals
    # Positions outside ``valid`` do not enter the statistics: their gradient is only the
    # direct term r * dn, so the mean terms are weighted by ``valid``. Those terms sum over
    # every position, all normalised with the statistics.
    weight = valid[..., None].astype(jnp.float32)
    means = functools.partial(_masked_example_means, valid, everywhere=True)
    dx, d_scale, d_bias = _normalise_backward(means, residuals, dy, weight)
    return dx, None, d_scale, d_bias


masked_global_layer_norm.defvjp(_masked_forward, _masked_backward)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def layer_norm(x: jnp.ndarray, scale: jnp.ndarray, bias: jnp.ndarray,
               epsilon: float) -> jnp.ndarray:
    """:func:`reference_layer_norm`, its means as products, its backward written out."""
    return _normalise_forward(_token_means, x, scale, bias, epsilon)[0]


layer_norm.defvjp(functools.partial(_normalise_forward, _token_means),
                  lambda epsilon, residuals, dy: _normalise_backward(_token_means, residuals, dy))


GLOBAL_LAYER_NORM = {"reference": reference_global_layer_norm, "tuned": global_layer_norm}
MASKED_GLOBAL_LAYER_NORM = {"reference": reference_masked_global_layer_norm,
                            "tuned": masked_global_layer_norm}
LAYER_NORM = {"reference": reference_layer_norm, "tuned": layer_norm}
