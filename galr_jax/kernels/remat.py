"""Recomputing a function's intermediates in the backward pass instead of keeping them.

The reference is ``jax.checkpoint``. It only marks the forward for recomputation, and
XLA may schedule the recomputed forward as early as it likes: on CPU it runs it during
the forward pass, next to the original, so every block's residuals are live at once
and the peak does not fall (docs/benchmarks.md: the galr_1.5m train step at 4 s peaked at
3.75 GB plain and 3.76 GB under ``nn.remat``). The tuned version's backward rule
recomputes the forward from an input made to depend on the output's gradient: the
recomputation cannot start before that gradient exists, so one block's residuals are
live at a time (XLA still decides how much of their memory it reuses; docs/benchmarks.md
has the figures).
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp

from galr_jax.kernels.scheduling import tied_to


def reference_recompute_in_backward(fn: Callable[..., jnp.ndarray], x: jnp.ndarray, *params: Any
                                    ) -> jnp.ndarray:
    """``fn(x, *params)`` under ``jax.checkpoint``: only the arguments are kept for the
    backward pass, which recomputes the rest."""
    return jax.checkpoint(fn)(x, *params)


def recompute_in_backward(fn: Callable[..., jnp.ndarray], x: jnp.ndarray, *params: Any
                          ) -> jnp.ndarray:
    """``fn(x, *params)``, keeping only ``x`` and ``params`` for the backward pass.

    The backward pass reruns ``fn`` on ``x`` tied (:func:`tied_to`) to the output's
    gradient, so the recomputation cannot be scheduled before that gradient exists, nor
    merged with the forward pass's identical expressions.

    Args:
      fn: a pure function of arrays (and pytrees of arrays).
      x: its first argument, the one its intermediates are recomputed from.
      params: its other arguments (weights; integer arrays such as random keys get
        zero cotangents).

    Returns:
      ``fn(x, *params)``.
    """

    @jax.custom_vjp
    def call(x, params):
        return fn(x, *params)

    def forward(x, params):
        return fn(x, *params), (x, params)

    def backward(residuals, d_out):
        x, params = residuals
        # A data dependency, not an optimization barrier: XLA on CPU removes barriers
        # before it schedules. The tie costs one pass over x.
        _, vjp = jax.vjp(lambda x, params: fn(x, *params), tied_to(x, d_out), params)
        return vjp(d_out)

    call.defvjp(forward, backward)
    return call(x, params)


RECOMPUTE_IN_BACKWARD = {"reference": reference_recompute_in_backward,
                         "tuned": recompute_in_backward}
