"""Separation quality of whole utterances: SI-SNR(i), BSS-eval SDR(i), optional PESQ/STOI.

SI-SNR and its improvement are batched JAX (padding excluded through ``lengths``),
so validation inside training and ``eval.py`` run the same jitted code.

SDR is BSS-eval's source-to-distortion ratio (Vincent et al., 2006) as the
WSJ0-2mix literature reports it through ``mir_eval.separation.bss_eval_sources``:
the estimate is projected onto the span of the reference delayed by 0..511 samples
(a 512-tap time-invariant distortion filter, one filter for the whole utterance as in
BSS-eval v4), and SDR = 10 log10(|projection|^2 / |estimate - projection|^2). We
compute it with our own numpy/scipy code rather than a library:

* ``mir_eval`` also projects onto *all* references (a ``C*512`` square system per
  estimate) and searches permutations by SIR, neither of which SDR needs; it was
  about 8x slower than this module here (4 s, C=2), rejects silent references with
  an error, and its ``bss_eval_sources`` is deprecated. The tests use it as the
  second computation we agree with (to 1e-6 dB).
* ``fast-bss-eval`` (numpy backend) gives the same numbers at about the same speed,
  but its ``sdr`` always chooses its own permutation (by SDR) and its last release
  dates from 2022; what it would replace is about forty lines on top of scipy,
  which JAX already depends on.

Our SDR pairs estimate c with reference c after the permutation chosen by SI-SNR, so
every column of a record describes the same pairing; a silent reference gives a
finite value (projection zero); and one small symmetric positive-definite Toeplitz
system per source is shared by the estimate and the mixture baseline.

PESQ (``pesq``) and STOI (``pystoi``) are reported only when those packages are
importable; they are never required.
"""

from __future__ import annotations

import importlib.util
from typing import Dict, NamedTuple, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np
import scipy.fft
import scipy.linalg
import scipy.signal

from galr_jax.training import losses

# BSS-eval's distortion filter length (taps); the value mir_eval and the WSJ0-2mix
# literature use.
SDR_FILTER_LENGTH = 512
# Same role as losses.SI_SNR_EPS: finite SDR for silent references or estimates.
SDR_EPS = 1e-8
# Ridge added to the Toeplitz diagonal, relative to the reference energy: keeps the
# Cholesky solve defined for band-limited references (a pure tone spans only two
# delay dimensions) while moving the SDR of real speech by far less than 1e-3 dB.
SDR_DIAGONAL_LOADING = 1e-10
# PESQ is defined at these rates only: narrow band at 8 kHz, wide band at 16 kHz.
PESQ_MODES = {8000: "nb", 16000: "wb"}


class SiSnrScores(NamedTuple):
    """Per-utterance SI-SNR results of a batch.

    Attributes:
      si_snr: ``[B]`` SI-SNR in dB of the best-permuted estimates, mean over sources.
      si_snri: ``[B]`` improvement over the mixture, mean over sources.
      permutation: ``[B, C]``; ``permutation[b, j]`` is the estimate that matches
        reference j (see ``losses.pit_loss``).
    """

    si_snr: jax.Array
    si_snri: jax.Array
    permutation: jax.Array


def si_snr_improvement(estimates: jax.Array, references: jax.Array, mixture: jax.Array,
                       lengths: Optional[jax.Array] = None) -> SiSnrScores:
    """SI-SNR and SI-SNR improvement with the best (PIT) permutation; jit-friendly.

    Args:
      estimates: ``[B, C, T]`` separated signals.
      references: ``[B, C, T]`` true sources.
      mixture: ``[B, T]`` the input of the separation.
      lengths: optional ``[B]`` valid samples per utterance; padding is ignored.

    Returns:
      ``SiSnrScores`` with ``[B]`` arrays and a ``[B, C]`` permutation.
    """
    neg_si_snr, permutation = losses.pit_neg_si_snr(estimates, references, lengths)
    baseline = losses.si_snr(mixture[:, None, :], references, lengths)  # [B, C]
    si_snr = -neg_si_snr
    return SiSnrScores(si_snr, si_snr - jnp.mean(baseline, axis=-1), permutation)


def _correlation(first: np.ndarray, second: np.ndarray, num_lags: int, fft_size: int) -> np.ndarray:
    """``out[..., m] = sum_n first[..., n] * second[..., n + m]`` for m in [0, num_lags)."""
    spectrum = np.conj(scipy.fft.rfft(first, fft_size)) * scipy.fft.rfft(second, fft_size)
    return scipy.fft.irfft(spectrum, fft_size)[..., :num_lags]


def _sdr_of_projection(reference: np.ndarray, signals: np.ndarray, filter_length: int,
                       eps: float) -> np.ndarray:
    """SDR of each row of ``signals`` [K, T] against one ``reference`` [T], in dB, ``[K]``."""
    num_samples = reference.shape[-1]
    fft_size = scipy.fft.next_fast_len(num_samples + filter_length - 1, real=True)
    autocorrelation = _correlation(reference, reference, filter_length, fft_size)
    padded = np.pad(signals, ((0, 0), (0, filter_length - 1)))
    if autocorrelation[0] <= 0.0:  # silent reference: nothing to project onto
        projection = np.zeros_like(padded)
    else:
        gram = scipy.linalg.toeplitz(autocorrelation)
        gram[np.diag_indices(filter_length)] += SDR_DIAGONAL_LOADING * autocorrelation[0]
        # Inner products of each signal with the reference delayed by m samples.
        cross = _correlation(reference, signals, filter_length, fft_size)  # [K, taps]
        filters = scipy.linalg.solve(gram, cross.T, assume_a="pos").T  # [K, taps]
        projection = scipy.signal.fftconvolve(filters, reference[None, :], axes=-1)
    distortion = padded - projection
    ratio = (np.sum(projection**2, -1) + eps) / (np.sum(distortion**2, -1) + eps)
    return 10.0 * np.log10(ratio)


def _check_paired(estimates: np.ndarray, references: np.ndarray) -> None:
    if estimates.ndim != 2 or estimates.shape != references.shape:
        raise ValueError(
            f"expected estimates and references of equal shape [C, T], got "
            f"{estimates.shape} and {references.shape}")
    if estimates.shape[-1] == 0:
        raise ValueError("SDR of an empty signal is undefined (length 0)")


def sdr(estimates: np.ndarray, references: np.ndarray,
        filter_length: int = SDR_FILTER_LENGTH, eps: float = SDR_EPS) -> np.ndarray:
    """BSS-eval SDR of estimate c against reference c (no permutation search).

    Args:
      estimates: ``[C, T]`` already in reference order (valid samples only).
      references: ``[C, T]``.
      filter_length: taps of the allowed distortion filter.
      eps: added to both energies; see ``SDR_EPS``.

    Returns:
      ``[C]`` SDR in dB, float64.
    """
    estimates = np.asarray(estimates, np.float64)
    references = np.asarray(references, np.float64)
    _check_paired(estimates, references)
    return np.array([
        _sdr_of_projection(ref, est[None], filter_length, eps)[0]
        for est, ref in zip(estimates, references)])


def sdr_improvement(estimates: np.ndarray, references: np.ndarray, mixture: np.ndarray,
                    filter_length: int = SDR_FILTER_LENGTH,
                    eps: float = SDR_EPS) -> Tuple[np.ndarray, np.ndarray]:
    """BSS-eval SDR of paired estimates and its improvement over the mixture.

    Args:
      estimates: ``[C, T]`` already in reference order (valid samples only).
      references: ``[C, T]``.
      mixture: ``[T]``.
      filter_length: taps of the allowed distortion filter.
      eps: see ``SDR_EPS``.

    Returns:
      sdr: ``[C]`` SDR in dB of each estimate.
      sdri: ``[C]`` ``sdr`` minus the SDR of the mixture against the same reference.
    """
    estimates = np.asarray(estimates, np.float64)
    references = np.asarray(references, np.float64)
    mixture = np.asarray(mixture, np.float64)
    _check_paired(estimates, references)
    if mixture.shape != references.shape[-1:]:
        raise ValueError(
            f"mixture shape {mixture.shape} does not match [T]={references.shape[-1:]}")
    values = np.array([
        _sdr_of_projection(ref, np.stack([est, mixture]), filter_length, eps)
        for est, ref in zip(estimates, references)])  # [C, 2]
    return values[:, 0], values[:, 0] - values[:, 1]


def available_perceptual_metrics() -> Tuple[str, ...]:
    """Names of the optional metrics whose packages are importable: ``pesq``, ``stoi``."""
    names = []
    if importlib.util.find_spec("pesq") is not None:
        names.append("pesq")
    if importlib.util.find_spec("pystoi") is not None:
        names.append("stoi")
    return tuple(names)


def perceptual_metrics(estimates: np.ndarray, references: np.ndarray,
                       sample_rate: int) -> Dict[str, float]:
    """Mean PESQ and STOI over sources, for those whose packages are importable.

    PESQ is skipped at rates other than 8/16 kHz; a source on which PESQ fails (for
    instance, no speech detected) counts as NaN.

    Args:
      estimates: ``[C, T]`` in reference order (valid samples only).
      references: ``[C, T]``.
      sample_rate: Hz.

    Returns:
      ``{"pesq": ..., "stoi": ...}`` restricted to the available metrics.
    """
    estimates = np.asarray(estimates, np.float64)
    references = np.asarray(references, np.float64)
    _check_paired(estimates, references)
    available = available_perceptual_metrics()
    scores: Dict[str, float] = {}
    if "pesq" in available and sample_rate in PESQ_MODES:
        import pesq  # optional dependency

        values = []
        for est, ref in zip(estimates, references):
            try:
                values.append(pesq.pesq(sample_rate, ref, est, PESQ_MODES[sample_rate]))
            except pesq.PesqError:
                values.append(np.nan)
        scores["pesq"] = float(np.mean(values))
    if "stoi" in available:
        import pystoi  # optional dependency

        scores["stoi"] = float(np.mean([
            pystoi.stoi(ref, est, sample_rate) for est, ref in zip(estimates, references)]))
    return scores
