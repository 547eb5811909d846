"""Rematerialisation that happens in the backward pass, not beside the forward.

One rule (:func:`recompute_in_backward`) serves a whole block (:func:`apply_rematerialised`:
``runtime.remat``, and GALR's attention under ``runtime.recompute_attention``) and a few cheap
layers whose kept intermediates cost more memory than recomputing them costs time
(:func:`apply_recomputed`).

``nn.remat`` (``jax.checkpoint``) only marks the block's forward for recomputation;
XLA may schedule the recomputed forward as early as it likes. On CPU it runs it
during the forward pass, next to the original, so every block's residuals are live
at once and the peak does not fall (docs/benchmarks.md: the galr_1.5m train step at 4 s
peaked at 3.75 GB plain and 3.76 GB under ``nn.remat``). Here the block's backward rule recomputes the
forward from an input made to depend on the output's gradient: the recomputation
cannot start before that gradient exists, so one block's residuals are live at a
time (XLA still decides how much of their memory it reuses; docs/benchmarks.md has the
figures).
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from galr_jax.models.dropout import DROPOUT
from galr_jax.models.scheduling import tied_to


def apply_rematerialised(block: nn.Module, x: jnp.ndarray, train: bool,
                         dropout_key: Optional[jax.Array],
                         mask: Optional[jnp.ndarray] = None) -> jnp.ndarray:
    """``block(x, train, mask)`` whose backward pass recomputes the block's forward.

    Args:
      block: a child module of the caller (unbound, as created in ``nn.compact``);
        called as ``block(x, train, mask)``.
      x: the block's input, e.g. ``[batch, segments, K, D]``.
      train: static training flag, passed to the block.
      dropout_key: the block's ``dropout`` rng when it draws one (training with
        dropout), else None. The caller draws it: the same key then serves the
        forward pass and its recomputation. (Drawn inside a custom VJP, Flax's rng
        counters gave the forward rule other masks than the primal function when the
        two were traced separately, as under ``jax.grad(jax.jit(f))``.)
      mask: the block's validity mask of a padded batch (bool), or None.

    Returns:
      The block's output, same shape as ``x``.
    """
    if block.is_initializing():
        return block(x, train, mask)
    template = block.clone(parent=None)  # applied functionally: the backward has no scope

    def pure(x, variables, key, mask):
        rngs = {DROPOUT: key} if key is not None else {}
        return template.apply({"params": variables}, x, train, mask, rngs=rngs)

    return recompute_in_backward(pure, x, block.variables["params"], dropout_key, mask)


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


def apply_recomputed(x: jnp.ndarray, *modules: nn.Module,
                     last_input: Optional[jnp.ndarray] = None) -> jnp.ndarray:
    """Applies ``modules`` in turn to ``x``; the backward pass recomputes their
    intermediates from ``x`` (:func:`recompute_in_backward`) instead of keeping them.

    Args:
      x: the first module's input.
      modules: parameter-only child modules of the caller (unbound, as created in
        ``nn.compact``), each called as ``module(x)``; their parameters keep their names.
      last_input: if given, a second argument of the last module (a mask).

    Returns:
      The last module's output.
    """
    extra = () if last_input is None else (last_input,)
    if modules[0].is_initializing():
        for module in modules[:-1]:
            x = module(x)
        return modules[-1](x, *extra)
    templates = [module.clone(parent=None) for module in modules]

    def pure(x, extra, *params):
        for index, (template, variables) in enumerate(zip(templates, params)):
            last = index == len(templates) - 1
            x = template.apply({"params": variables}, x, *(extra if last else ()))
        return x

    return recompute_in_backward(pure, x, extra,
                                 *(module.variables["params"] for module in modules))
