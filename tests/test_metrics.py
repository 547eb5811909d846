"""SI-SNRi, BSS-eval SDR(i) against independent computations, optional PESQ/STOI."""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.signal

from galr_jax.evaluation import metrics


def brute_force_sdr(estimate, reference, filter_length):
    """SDR via an explicit matrix of delayed references and least squares (float64)."""
    num_samples = reference.shape[0]
    delayed = np.zeros((num_samples + filter_length - 1, filter_length))
    for delay in range(filter_length):
        delayed[delay:delay + num_samples, delay] = reference
    padded = np.concatenate([estimate, np.zeros(filter_length - 1)])
    coefficients = np.linalg.lstsq(delayed, padded, rcond=None)[0]
    projection = delayed @ coefficients
    return 10 * np.log10(np.sum(projection**2) / np.sum((padded - projection)**2))


def speech_like(rng, num_sources, num_samples):
    """Coloured noise with a slow envelope: band-limited like speech, not white."""
    noise = rng.standard_normal((num_sources, num_samples))
    coloured = scipy.signal.lfilter([1.0], [1.0, -0.9], noise, axis=-1)
    envelope = 0.5 + np.abs(np.sin(np.linspace(0, 7, num_samples)))
    return coloured * envelope


def test_si_snr_improvement_oracle_and_mixture():
    rng = np.random.default_rng(0)
    references = jnp.asarray(speech_like(rng, 2, 800).reshape(1, 2, 800), jnp.float32)
    references = jnp.concatenate([references, references[:, ::-1]], axis=0)  # [2, 2, 800]
    mixture = jnp.sum(references, axis=1)
    lengths = jnp.array([800, 500])
    score = jax.jit(metrics.si_snr_improvement)
    swapped = score(references[:, ::-1], references, mixture, lengths)
    assert bool(jnp.all(swapped.si_snr > 60.0))
    assert bool(jnp.all(swapped.si_snri > 50.0))
    np.testing.assert_array_equal(swapped.permutation, [[1, 0], [1, 0]])
    repeated = score(jnp.stack([mixture, mixture], axis=1), references, mixture, lengths)
    np.testing.assert_allclose(repeated.si_snri, 0.0, atol=1e-4)
    assert bool(jnp.all(jnp.abs(repeated.si_snr) < 20.0))


def test_sdr_matches_brute_force_least_squares():
    rng = np.random.default_rng(1)
    references = speech_like(rng, 2, 700)
    estimates = (references + 0.3 * references[::-1]
                 + 0.2 * rng.standard_normal(references.shape))
    for filter_length in (32, metrics.SDR_FILTER_LENGTH):
        values = metrics.sdr(estimates, references, filter_length)
        expected = [brute_force_sdr(e, r, filter_length) for e, r in zip(estimates, references)]
        np.testing.assert_allclose(values, expected, atol=1e-4)


def test_sdr_matches_mir_eval():
    mir_eval = pytest.importorskip("mir_eval")
    rng = np.random.default_rng(2)
    references = speech_like(rng, 2, 4000)
    estimates = references + 0.5 * references[::-1] + 0.1 * rng.standard_normal(references.shape)
    with warnings.catch_warnings():  # bss_eval_sources is deprecated since mir_eval 0.8
        warnings.simplefilter("ignore", FutureWarning)
        expected = mir_eval.separation.bss_eval_sources(
            references, estimates, compute_permutation=False)[0]
    np.testing.assert_allclose(metrics.sdr(estimates, references), expected, atol=1e-4)


def test_sdr_allows_short_filters_only():
    rng = np.random.default_rng(3)
    reference = speech_like(rng, 1, 3000)[0]
    short_filter = np.array([0.5, -0.2, 0.1, 0.05])
    # A silent end keeps the whole filter response inside the signal.
    reference[-len(short_filter):] = 0.0
    filtered = scipy.signal.lfilter(short_filter, [1.0], reference)
    # Within the 512-tap filter: no distortion beyond float rounding.
    assert metrics.sdr(filtered[None], reference[None])[0] > 80.0
    # Delayed past the filter length the estimate is mostly distortion.
    delayed = np.concatenate([np.zeros(700), reference[:-700]])
    assert metrics.sdr(delayed[None], reference[None])[0] < 5.0


def test_sdr_of_silent_reference_and_pure_tone_is_finite():
    t = np.arange(2000)
    tone = np.sin(2 * np.pi * 0.01 * t)  # spans only two delay dimensions
    values = metrics.sdr(np.stack([np.ones(2000), 0.5 * np.roll(tone, 3)]),
                         np.stack([np.zeros(2000), tone]))
    assert np.all(np.isfinite(values))
    assert values[0] < -100.0  # nothing of a silent reference is in the estimate
    assert values[1] > 40.0  # a delayed tone is a filtered tone


def test_sdr_improvement_subtracts_the_mixture_score():
    rng = np.random.default_rng(4)
    references = speech_like(rng, 2, 1500)
    mixture = references.sum(0)
    estimates = references + 0.1 * rng.standard_normal(references.shape)
    sdr, sdri = metrics.sdr_improvement(estimates, references, mixture, 64)
    baseline = metrics.sdr(np.stack([mixture, mixture]), references, 64)
    np.testing.assert_allclose(sdr, metrics.sdr(estimates, references, 64), atol=1e-9)
    np.testing.assert_allclose(sdri, sdr - baseline, atol=1e-9)
    assert np.all(sdri > 10.0)
    with pytest.raises(ValueError, match="mixture shape"):
        metrics.sdr_improvement(estimates, references, mixture[:-1])


def test_sdr_shape_errors():
    with pytest.raises(ValueError, match=r"\[C, T\]"):
        metrics.sdr(np.zeros((2, 10)), np.zeros((3, 10)))
    with pytest.raises(ValueError, match="empty"):
        metrics.sdr(np.zeros((2, 0)), np.zeros((2, 0)))


def test_perceptual_metrics_only_when_importable():
    rng = np.random.default_rng(5)
    references = speech_like(rng, 2, 16000) * 0.1
    estimates = references + 0.01 * rng.standard_normal(references.shape)
    scores = metrics.perceptual_metrics(estimates, references, 8000)
    assert set(scores) == set(metrics.available_perceptual_metrics())
    if "stoi" in scores:
        assert 0.5 < scores["stoi"] <= 1.0
    if "pesq" in scores:
        assert 1.0 <= scores["pesq"] <= 4.6
    # PESQ is undefined at 11.025 kHz and is left out there.
    assert "pesq" not in metrics.perceptual_metrics(estimates, references, 11025)
