"""Negative SI-SNR with utterance-level permutation invariant training (spec sec. 5).

Everything here is pure JAX with static shapes, so it runs under ``jax.jit``,
``pmap`` and ``grad``. Zero padding at the end of an utterance is excluded through
``lengths``: the mean removal and every energy use the valid samples only, so a
padded and an unpadded copy of the same utterance give the same value.

The permutation search enumerates all C! assignments once, in Python, and gathers
their costs from the ``[B, C, C]`` pairwise matrix; the array shapes therefore do not
depend on the data.

References:
  Le Roux et al., "SDR - half-baked or well done?", ICASSP 2019 (SI-SDR / SI-SNR).
  Kolbaek et al., "Multitalker speech separation with utterance-level permutation
  invariant training", IEEE/ACM TASLP 2017.
"""

from __future__ import annotations

import itertools
from typing import Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np

# Added to the reference energy in the projection and to both energies of the ratio.
# A silent reference (or an all-zero estimate) would otherwise give 0/0: a NaN value
# and NaN gradients that poison a whole training step. 1e-8 is far below the energy of
# any real utterance (one second of -60 dBFS audio at 8 kHz has energy 8e-3), so it
# does not move real scores, and it caps a perfect estimate at about +100 dB.
SI_SNR_EPS = 1e-8


def length_mask(lengths: jax.Array, num_samples: int) -> jax.Array:
    """Boolean mask of the valid samples.

    Args:
      lengths: integer array of any shape ``[...]``, valid samples per signal.
      num_samples: padded length T.

    Returns:
      ``[..., T]`` bool, True where the sample index is below the length.
    """
    return jnp.arange(num_samples) < jnp.asarray(lengths)[..., None]


def _expand_lengths(lengths: jax.Array, ndim: int) -> jax.Array:
    """Appends singleton axes so lengths of shape ``[B]`` broadcast over ``[B, C, ...]``."""
    lengths = jnp.asarray(lengths)
    extra = ndim - 1 - lengths.ndim
    if extra < 0:
        raise ValueError(
            f"lengths has {lengths.ndim} axes but the signals have only {ndim - 1} leading axes")
    return jnp.reshape(lengths, lengths.shape + (1,) * extra)


def si_snr(estimate: jax.Array, reference: jax.Array, lengths: Optional[jax.Array] = None,
           eps: float = SI_SNR_EPS) -> jax.Array:
    """Scale-invariant signal-to-noise ratio in dB, over the last axis.

    Both signals are made zero-mean over their valid samples; the estimate is split
    into its projection on the reference (target) and the rest (noise), and the
    result is ``10 log10((|target|^2 + eps) / (|noise|^2 + eps))``.

    Args:
      estimate: ``[..., T]`` estimated signals.
      reference: ``[..., T]`` reference signals (broadcastable against ``estimate``).
      lengths: optional integer array whose shape is a prefix of the broadcast
        leading axes (``[B]`` for ``[B, C, T]``); samples at or past the length are
        ignored. None: all T samples are valid.
      eps: see ``SI_SNR_EPS``; keeps silent references and all-zero estimates finite,
        values and gradients alike.

    Returns:
      ``[...]`` SI-SNR in dB (the broadcast leading shape).
    """
    estimate, reference = jnp.broadcast_arrays(estimate, reference)
    num_samples = estimate.shape[-1]
    if lengths is None:
        mask = jnp.ones(estimate.shape, dtype=estimate.dtype)
        count = jnp.asarray(num_samples, dtype=estimate.dtype)
    else:
        lengths = _expand_lengths(lengths, estimate.ndim)
        mask = length_mask(lengths, num_samples).astype(estimate.dtype)
        # A zero-length row (batch padding) would divide by zero in the mean.
        count = jnp.maximum(lengths, 1).astype(estimate.dtype)[..., None]
    estimate = (estimate - jnp.sum(estimate * mask, -1, keepdims=True) / count) * mask
    reference = (reference - jnp.sum(reference * mask, -1, keepdims=True) / count) * mask
    scale = (jnp.sum(estimate * reference, -1, keepdims=True)
             / (jnp.sum(reference * reference, -1, keepdims=True) + eps))
    target = scale * reference
    noise = estimate - target
    ratio = (jnp.sum(target * target, -1) + eps) / (jnp.sum(noise * noise, -1) + eps)
    return 10.0 * jnp.log10(ratio)


def pairwise_neg_si_snr(estimates: jax.Array, references: jax.Array,
                        lengths: Optional[jax.Array] = None,
                        eps: float = SI_SNR_EPS) -> jax.Array:
    """Negative SI-SNR of every (estimate, reference) pair.

    Args:
      estimates: ``[B, C, T]``.
      references: ``[B, C, T]``.
      lengths: optional ``[B]`` valid samples per utterance.
      eps: see ``si_snr``.

    Returns:
      ``[B, C, C]``; entry ``[b, i, j]`` is ``-si_snr(estimates[b, i], references[b, j])``.
    """
    if estimates.ndim != 3 or estimates.shape != references.shape:
        raise ValueError(
            f"expected estimates and references of equal shape [B, C, T], got "
            f"{estimates.shape} and {references.shape}")
    return -si_snr(estimates[:, :, None, :], references[:, None, :, :], lengths, eps)


def permutations(num_sources: int) -> np.ndarray:
    """All C! permutations of ``range(C)`` in lexicographic order, ``[C!, C]`` int32."""
    if num_sources < 1:
        raise ValueError(f"num_sources must be positive, got {num_sources}")
    return np.array(list(itertools.permutations(range(num_sources))), dtype=np.int32)


def pit_loss(pairwise: jax.Array) -> Tuple[jax.Array, jax.Array]:
    """Utterance-level PIT: the assignment with the lowest mean pairwise loss.

    Args:
      pairwise: ``[B, C, C]`` loss of estimate i against reference j at ``[b, i, j]``.

    Returns:
      loss: ``[B]`` mean over sources of the pairwise loss under the best assignment.
      best_permutation: ``[B, C]`` int32; ``best_permutation[b, j]`` is the estimate
        assigned to reference j, so ``apply_permutation(estimates, best_permutation)``
        lines the estimates up with the references.
    """
    if pairwise.ndim != 3 or pairwise.shape[1] != pairwise.shape[2]:
        raise ValueError(f"expected a pairwise matrix [B, C, C], got shape {pairwise.shape}")
    perms = permutations(pairwise.shape[1])  # [P, C], static
    references = np.arange(pairwise.shape[1])
    costs = jnp.mean(pairwise[:, perms, references], axis=-1)  # [B, P]
    best = jnp.argmin(costs, axis=-1)  # [B]
    loss = jnp.take_along_axis(costs, best[:, None], axis=-1)[:, 0]
    return loss, jnp.asarray(perms)[best]


def apply_permutation(sources: jax.Array, permutation: jax.Array) -> jax.Array:
    """Reorders sources: output ``[b, j]`` is ``sources[b, permutation[b, j]]``.

    Args:
      sources: ``[B, C, ...]``.
      permutation: ``[B, C]`` integer, as returned by ``pit_loss``.

    Returns:
      ``[B, C, ...]``.
    """
    index = jnp.reshape(permutation, permutation.shape + (1,) * (sources.ndim - 2))
    return jnp.take_along_axis(sources, index, axis=1)


def pit_neg_si_snr(estimates: jax.Array, references: jax.Array,
                   lengths: Optional[jax.Array] = None,
                   eps: float = SI_SNR_EPS) -> Tuple[jax.Array, jax.Array]:
    """Permutation invariant negative SI-SNR, the training loss.

    Args:
      estimates: ``[B, C, T]`` separated signals.
      references: ``[B, C, T]`` true sources.
      lengths: optional ``[B]`` valid samples per utterance (padding ignored).
      eps: see ``si_snr``.

    Returns:
      loss: ``[B]`` negative SI-SNR in dB, averaged over sources, best assignment.
      best_permutation: ``[B, C]``, see ``pit_loss``.
    """
    return pit_loss(pairwise_neg_si_snr(estimates, references, lengths, eps))
