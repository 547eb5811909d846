"""Dropout masks from a counter-based hash of the key, not a stream of threefry bits.

Both kernel choices draw their masks here, so they drop the same elements and train
alike; the hash is a dozen integer operations per element on any backend.

Drawing a dropout mask with ``jax.random.bernoulli`` runs threefry-2x32 (20 rounds) for
every element. GALR drops out its attention weights, ``[B*Q, heads, S, S]`` per block:
6.9 million elements per block for batch 4 x 4 s, and on CPU threefry alone took 37 ms
of each block's 76 ms training forward (docs/benchmarks.md, "Optimisation log"). Here one
threefry call turns the key into two 32-bit seeds, and each element's bit comes from
its flat index through two rounds of an integer mixing function (the ``lowbias32``
finaliser: xor-shifts and odd multiplies, each a bijection on 32 bits) keyed by the
seeds: a dozen vectorised integer operations per element, 1.7 ms for the same mask.

The masks are deterministic functions of (key, shape), so recomputing a forward pass
with the same key (``galr_jax.models.remat``) reproduces them. The training step gives
every example a key of its own, folded from the step's key and the example's global
index (``galr_jax.training.step``), so the update is the same on any number of devices.
``tests/test_dropout.py`` checks the keep rate, independence between keys and between
neighbouring elements, and the scaling.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

# lowbias32 (C. Wellons' integer hash search): avalanche close to that of a random permutation.
_MIX_SHIFTS = (16, 15, 16)
_MIX_MULTIPLIERS = (0x7FEB352D, 0x846CA68B)
_MAX_ELEMENTS = 2 ** 32  # the flat index is a uint32


def _mix(x: jnp.ndarray) -> jnp.ndarray:
    """A bijection of uint32 whose output bits each depend on every input bit."""
    x = x ^ (x >> _MIX_SHIFTS[0])
    x = x * jnp.uint32(_MIX_MULTIPLIERS[0])
    x = x ^ (x >> _MIX_SHIFTS[1])
    x = x * jnp.uint32(_MIX_MULTIPLIERS[1])
    return x ^ (x >> _MIX_SHIFTS[2])


def keep_mask(key: jax.Array, shape: tuple[int, ...], keep_prob: float) -> jnp.ndarray:
    """Boolean mask of ``shape``, each element True with probability ``keep_prob``.

    An element's bit depends on the key and its flat index.

    Args:
      key: a PRNG key (raw ``uint32[2]`` or typed); the same key and shape give the same mask.
      shape: the mask's shape, at most 2**32 elements.
      keep_prob: in (0, 1].

    Returns:
      ``bool[shape]``.
    """
    size = int(np.prod(shape, dtype=np.int64))
    if size > _MAX_ELEMENTS:
        raise ValueError(f"keep_mask: {size} elements in {shape}; the counter holds at most "
                         f"2**32 (draw per example)")
    if not 0.0 < keep_prob <= 1.0:
        raise ValueError(f"keep_mask: keep_prob must be in (0, 1], got {keep_prob}")
    seeds = jax.random.bits(key, (2,), jnp.uint32)
    index = lax.iota(jnp.uint32, size)
    bits = _mix(_mix(index ^ _mix(seeds[0])) + seeds[1])
    threshold = min(int(round(keep_prob * _MAX_ELEMENTS)), _MAX_ELEMENTS - 1)
    return (bits < jnp.uint32(threshold)).reshape(shape)


def dropout(x: jnp.ndarray, key: jax.Array, rate: float) -> jnp.ndarray:
    """Inverted dropout: zero each element with probability ``rate``, scale the rest up.

    Shape:
      any -> same (one independent draw per element).
    """
    if rate == 0.0:
        return x
    keep_prob = 1.0 - rate
    return apply_keep_mask(x, keep_mask(key, x.shape, keep_prob), keep_prob)


def apply_keep_mask(x: jnp.ndarray, keep: jnp.ndarray, keep_prob: float) -> jnp.ndarray:
    """Inverted dropout with a given mask: ``x / keep_prob`` where ``keep``, else 0."""
    return jnp.where(keep, x / jnp.asarray(keep_prob, x.dtype), jnp.zeros((), x.dtype))
