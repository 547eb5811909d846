"""Rematerialisation that happens in the backward pass, for a whole block and for a few
cheap layers.

One rule (:mod:`galr_jax.kernels.remat`, by the kernel choice) serves a whole block
(:func:`apply_rematerialised`: ``runtime.remat``, and GALR's attention under
``runtime.recompute_attention``) and a few cheap layers whose kept intermediates cost
more memory than recomputing them costs time (:func:`apply_recomputed`).
"""

from __future__ import annotations

from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from galr_jax.kernels import pick
from galr_jax.kernels.remat import RECOMPUTE_IN_BACKWARD
from galr_jax.models.dropout import DROPOUT


def apply_rematerialised(block: nn.Module, x: jnp.ndarray, train: bool,
                         dropout_key: Optional[jax.Array],
                         mask: Optional[jnp.ndarray] = None) -> jnp.ndarray:
    """``block(x, train, mask)`` whose backward pass recomputes the block's forward.

    Args:
      block: a child module of the caller (unbound, as created in ``nn.compact``);
        called as ``block(x, train, mask)``. Its ``kernels`` attribute picks how the
        recomputation is scheduled.
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

    recompute = pick(RECOMPUTE_IN_BACKWARD, block.kernels)
    return recompute(pure, x, block.variables["params"], dropout_key, mask)


def apply_recomputed(x: jnp.ndarray, *modules: nn.Module,
                     last_input: Optional[jnp.ndarray] = None) -> jnp.ndarray:
    """Applies ``modules`` in turn to ``x``; the backward pass recomputes their
    intermediates from ``x`` instead of keeping them.

    Args:
      x: the first module's input.
      modules: parameter-only child modules of the caller (unbound, as created in
        ``nn.compact``), each called as ``module(x)``; their parameters keep their names.
        The first one's ``kernels`` attribute picks how the recomputation is scheduled.
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

    recompute = pick(RECOMPUTE_IN_BACKWARD, modules[0].kernels)
    return recompute(pure, x, extra, *(module.variables["params"] for module in modules))
