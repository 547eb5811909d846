"""Steering where XLA places computations and buffers, where its own choices cost memory:
data dependencies (:func:`tied_to`), and loops that fill buffers of their own or reuse
their inputs' buffers."""

from __future__ import annotations

import jax
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


def scan_into_own_buffers(step, init, xs, anchor, reverse=False, unroll=1):
    """``lax.scan(step, init, xs)`` whose stacked per-step outputs fill buffers of their own.

    ``lax.scan`` starts every stacked output as one zero broadcast. XLA merges those of
    equal shape across the whole program and copies them out at its start, so each
    loop's output buffers are allocated (and written twice) long before the loop runs:
    in a train step every block's backward-loop buffers were live from the forward pass
    on (galr_1.5m at 4 s: 806 of the step's 3,233 MB). Here each output buffer is tied
    (:func:`tied_to`) to its own element of ``anchor``, an array the loop needs anyway,
    so it is written once, right before its loop, and not shared. Every element is
    overwritten by the loop, so the tie's value never shows.

    Args:
      step: ``(carry, x_t) -> (carry, outputs)``, outputs a tuple of arrays.
      init: the initial carry.
      xs: per-step inputs, stacked on axis 0.
      anchor: an array with at least as many elements as ``step`` has outputs.
      reverse, unroll: as ``lax.scan``.

    Returns:
      ``(final carry, stacked outputs)``, as ``lax.scan``.
    """
    length = jax.tree_util.tree_leaves(xs)[0].shape[0]
    first_x = jax.tree_util.tree_map(lambda x: x[0], xs)
    output_shapes = jax.eval_shape(lambda c, x: step(c, x)[1], init, first_x)
    buffers = tuple(tied_to(jnp.zeros((length, *out.shape), out.dtype), anchor, k)
                    for k, out in enumerate(output_shapes))
    return scan_in_place(lambda carry, x_t, _: step(carry, x_t), init, xs, buffers,
                         reverse=reverse, unroll=unroll)


def scan_in_place(step, init, xs, buffers, reverse=False, unroll=1):
    """A scan whose step reads its slice of each buffer and overwrites it with its outputs.

    Where a loop consumes a stacked array step by step and produces one of the same shape
    (a backward pass turning saved gates into gate gradients), the output can reuse the
    input's memory: XLA updates a while loop's buffers in place when nothing else reads
    them afterwards, so no second buffer is allocated or filled.

    Args:
      step: ``(carry, x_t, slices) -> (carry, outputs)``; ``slices`` and ``outputs`` are
        tuples with one ``[...]`` array per buffer, ``outputs`` of the slices' shapes.
      init: the initial carry.
      xs: per-step inputs, stacked on axis 0.
      buffers: tuple of arrays stacked on axis 0, as long as ``xs``.
      reverse, unroll: as ``lax.scan``.

    Returns:
      ``(final carry, buffers)``, each buffer's slice ``t`` replaced by step ``t``'s output.
    """
    length = buffers[0].shape[0]

    def body(state, indexed_x):
        carry, buffers = state
        index, x_t = indexed_x
        slices = tuple(jax.lax.dynamic_index_in_dim(b, index, 0, keepdims=False)
                       for b in buffers)
        carry, outputs = step(carry, x_t, slices)
        buffers = tuple(jax.lax.dynamic_update_index_in_dim(b, o, index, 0)
                        for b, o in zip(buffers, outputs))
        return (carry, buffers), None

    (carry, buffers), _ = jax.lax.scan(body, (init, tuple(buffers)), (jnp.arange(length), xs),
                                       reverse=reverse, unroll=unroll)
    return carry, buffers
