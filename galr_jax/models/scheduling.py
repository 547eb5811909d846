"""Data dependencies that steer XLA's scheduling where its own choices cost memory."""

from __future__ import annotations

import jax.numpy as jnp


def tied_to(x: jnp.ndarray, anchor: jnp.ndarray, index: int = 0) -> jnp.ndarray:
    """``x + 0 * anchor.flat[index]``: the value of ``x``, computable only once ``anchor`` is.

    XLA schedules an expression as early as its operands allow and merges identical
    expressions, so a backward pass's recomputation of forward values can run (and its
    result stay live) from the forward pass on. Tied to a value of the backward pass,
    it cannot, and it is no longer identical to the forward's expression. Zero times a
    float is not simplified away (it could be NaN), so the tie costs one scalar add in
    whatever pass writes ``x``; a non-finite ``anchor.flat[index]`` makes ``x`` NaN.

    Args:
      x: any array.
      anchor: the array to wait for, with more than ``index`` elements.
      index: which element of ``anchor`` to tie to (distinct indices keep ties distinct).

    Returns:
      ``x``'s value, shape and dtype.
    """
    element = anchor.reshape(-1)[index].astype(x.dtype)
    return x + jnp.zeros((), x.dtype) * element
