"""Separated sources come out at the mixture's level, and scale-invariant figures do not move."""

import numpy as np

from inference_helpers import si_snr_db, speech_like, tiny_config, init_variables
from galr_jax.inference import Separator
from galr_jax.inference.level import rescale_to_mixture


def test_least_squares_gains_recover_the_mixture_scale():
    sources = speech_like(1.0, seed=1)
    mixture = sources.sum(axis=0)
    estimates = sources * np.array([[7.0], [0.2]], np.float32)
    np.testing.assert_allclose(rescale_to_mixture(estimates, mixture), sources, atol=1e-5)


def test_rescaling_leaves_si_snr_unchanged():
    rng = np.random.default_rng(0)
    sources = speech_like(1.0, seed=2)
    mixture = sources.sum(axis=0)
    estimates = (sources + 0.05 * rng.normal(size=sources.shape)) * np.array([[4.0], [9.0]])
    rescaled = rescale_to_mixture(estimates, mixture)
    assert not np.allclose(rescaled, estimates)
    for c in range(2):
        assert abs(si_snr_db(rescaled[c], sources[c]) - si_snr_db(estimates[c], sources[c])) < 1e-4


def test_degenerate_estimates_get_one_positive_gain():
    mixture = speech_like(0.5, seed=3).sum(axis=0)
    same = np.stack([mixture * 3, mixture * 3])  # singular: identical outputs
    out = rescale_to_mixture(same, mixture)
    np.testing.assert_allclose(out.sum(axis=0), mixture, atol=1e-5)
    silent = np.zeros((2, mixture.size), np.float32)
    np.testing.assert_array_equal(rescale_to_mixture(silent, mixture), silent)


def test_imperfect_estimates_sum_to_the_mixture_peak_within_1_db():
    """A normal input: estimates off in scale by 10x and with 20% cross-talk."""
    sources = speech_like(2.0, seed=4)
    mixture = sources.sum(axis=0)
    mixture *= 0.5 / np.abs(mixture).max()
    sources *= 0.5 / np.abs(sources.sum(axis=0)).max()
    leaked = np.stack([sources[0] + 0.2 * sources[1], sources[1] + 0.2 * sources[0]])
    outputs = rescale_to_mixture(leaked * np.array([[10.0], [3.0]]), mixture)
    ratio_db = 20 * np.log10(np.abs(outputs.sum(axis=0)).max() / np.abs(mixture).max())
    assert abs(ratio_db) < 1.0


def test_separator_output_is_the_least_squares_scale():
    """Separator applies the rescaling: its outputs satisfy the normal equations, i.e. the
    residual mixture - sum(outputs) is orthogonal to every output (a random model)."""
    config = tiny_config()
    separator = Separator(config, init_variables(config))
    mixture = speech_like(1.0, seed=5).sum(axis=0)
    outputs = separator.separate(mixture).astype(np.float64)
    residual = mixture - outputs.sum(axis=0)
    norm = np.linalg.norm(mixture)
    total = outputs.sum(axis=0)
    assert abs(residual @ total) < 1e-4 * norm * np.linalg.norm(total)
