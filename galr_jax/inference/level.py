"""Separated sources at the mixture's level.

The model is trained with a scale-invariant loss (SI-SNR), so its outputs have an
arbitrary level: a mixture peaking at 0.5 could come out as sources peaking at 5.
:func:`rescale_to_mixture` gives each source the gain that makes the sum of the
sources best match the mixture (least squares), which is the mixture-consistency
rule restricted to gains: each output is only scaled, so every scale-invariant
figure (SI-SNR, SI-SNRi) stays exactly what it was.
"""

from __future__ import annotations

import numpy as np

# Gram matrices whose smallest eigenvalue is below this fraction of the largest are
# treated as singular (e.g. two identical outputs); one common gain is used instead.
_CONDITION_FLOOR = 1e-6


def rescale_to_mixture(estimates: np.ndarray, mixture: np.ndarray) -> np.ndarray:
    """Scales each estimate so that their sum best matches the mixture (least squares).

    Solves ``min_g || mixture - sum_c g_c * estimates[c] ||^2``. Where that has no
    sensible answer (singular, or a gain that is not positive, which would flip a
    source), one common gain for all sources is used; a silent mixture or silent
    estimates are returned unchanged.

    Args:
      estimates: ``[C, T]`` separated sources.
      mixture: ``[T]`` the signal they were separated from.

    Returns:
      ``[C, T]`` float32, each row a positive multiple of the input row.
    """
    estimates = np.asarray(estimates)
    x = np.asarray(mixture, np.float64)
    s = estimates.astype(np.float64)
    if s.ndim != 2 or x.shape != s.shape[1:]:
        raise ValueError(f"expected estimates [C, T] and mixture [T], got {s.shape} and {x.shape}")
    gram = s @ s.T
    target = s @ x
    eigenvalues = np.linalg.eigvalsh(gram)
    if eigenvalues[-1] > 0 and eigenvalues[0] > _CONDITION_FLOOR * eigenvalues[-1]:
        gains = np.linalg.solve(gram, target)
        if np.all(gains > 0):
            return (s * gains[:, None]).astype(np.float32)
    total = s.sum(axis=0)
    energy = float(total @ total)
    gain = float(total @ x) / energy if energy > 0 else 0.0
    if gain <= 0:
        return estimates.astype(np.float32)
    return (s * gain).astype(np.float32)
