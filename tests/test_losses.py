"""Negative SI-SNR and permutation invariant training against a brute-force numpy version."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from galr_jax.training import losses


def numpy_si_snr(estimate, reference, eps=losses.SI_SNR_EPS):
    """Textbook SI-SNR of two 1-D signals in float64."""
    estimate = estimate - estimate.mean()
    reference = reference - reference.mean()
    target = np.dot(estimate, reference) / (np.dot(reference, reference) + eps) * reference
    noise = estimate - target
    return 10 * np.log10((np.sum(target**2) + eps) / (np.sum(noise**2) + eps))


def numpy_pit(estimates, references, lengths):
    """Loops over examples and all permutations; returns (loss [B], permutation [B, C])."""
    batch, num_sources, _ = estimates.shape
    losses_out, perms_out = [], []
    for b in range(batch):
        n = lengths[b]
        best = None
        for perm in itertools.permutations(range(num_sources)):
            loss = -np.mean([numpy_si_snr(estimates[b, perm[j], :n], references[b, j, :n])
                             for j in range(num_sources)])
            if best is None or loss < best[0]:
                best = (loss, perm)
        losses_out.append(best[0])
        perms_out.append(best[1])
    return np.array(losses_out), np.array(perms_out)


def random_batch(rng, batch, num_sources, num_samples, with_lengths):
    references = rng.standard_normal((batch, num_sources, num_samples)) + 0.3
    estimates = references[:, ::-1] + 0.8 * rng.standard_normal(references.shape)
    if with_lengths:
        lengths = rng.integers(num_samples // 3, num_samples + 1, size=batch)
        lengths[0] = num_samples
        # Garbage in the padding must not matter.
        beyond = np.arange(num_samples) >= lengths[:, None, None]
        estimates = np.where(beyond, 5.0, estimates)
        references = np.where(beyond, -3.0, references)
    else:
        lengths = np.full(batch, num_samples)
    return estimates, references, lengths


@pytest.mark.parametrize("num_sources", [2, 3])
@pytest.mark.parametrize("with_lengths", [False, True])
def test_pit_matches_brute_force(num_sources, with_lengths):
    rng = np.random.default_rng(num_sources + 10 * with_lengths)
    estimates, references, lengths = random_batch(rng, 5, num_sources, 400, with_lengths)
    expected_loss, expected_perm = numpy_pit(estimates, references, lengths)
    loss, perm = jax.jit(losses.pit_neg_si_snr)(
        jnp.asarray(estimates, jnp.float32), jnp.asarray(references, jnp.float32),
        jnp.asarray(lengths) if with_lengths else None)
    np.testing.assert_allclose(loss, expected_loss, atol=1e-3)
    np.testing.assert_array_equal(perm, expected_perm)


@pytest.mark.parametrize("with_lengths", [False, True])
def test_pairwise_matches_brute_force(with_lengths):
    rng = np.random.default_rng(3)
    estimates, references, lengths = random_batch(rng, 2, 3, 300, with_lengths)
    pairwise = jax.jit(losses.pairwise_neg_si_snr)(
        jnp.asarray(estimates, jnp.float32), jnp.asarray(references, jnp.float32),
        jnp.asarray(lengths) if with_lengths else None)
    assert pairwise.shape == (2, 3, 3)
    for b, i, j in itertools.product(range(2), range(3), range(3)):
        n = lengths[b]
        expected = -numpy_si_snr(estimates[b, i, :n], references[b, j, :n])
        assert abs(float(pairwise[b, i, j]) - expected) < 1e-3, (b, i, j)


@pytest.mark.parametrize("true_perm", list(itertools.permutations(range(3))))
def test_permutation_reorders_estimates_to_references(true_perm):
    rng = np.random.default_rng(0)
    references = rng.standard_normal((1, 3, 256)).astype(np.float32)
    # Estimate i is a noisy copy of reference true_perm[i].
    estimates = references[:, list(true_perm)] + 0.05 * rng.standard_normal((1, 3, 256))
    _, perm = jax.jit(losses.pit_neg_si_snr)(jnp.asarray(estimates, jnp.float32),
                                             jnp.asarray(references))
    np.testing.assert_array_equal(perm[0], np.argsort(true_perm))
    reordered = jax.jit(losses.apply_permutation)(jnp.asarray(estimates), perm)
    np.testing.assert_allclose(reordered, estimates[:, np.argsort(true_perm)])
    assert float(jnp.max(jnp.abs(reordered - references))) < 0.5


def test_closed_form_values():
    si_snr = jax.jit(losses.si_snr)
    reference = jnp.array([1.0, -1.0, 1.0, -1.0])
    orthogonal = jnp.array([1.0, 1.0, -1.0, -1.0])  # zero-mean, orthogonal, same energy
    assert abs(float(si_snr(reference + orthogonal, reference))) < 1e-5
    # A perfect estimate (any scale, any offset) reaches the eps-limited ceiling
    # 10 log10(|target|^2 / eps).
    ceiling = 10 * np.log10(36.0 / losses.SI_SNR_EPS)
    assert float(si_snr(-3.0 * reference + 7.0, reference)) == pytest.approx(ceiling, abs=0.01)


def test_padding_is_ignored():
    rng = np.random.default_rng(1)
    estimate = rng.standard_normal(300) + 2.0
    reference = rng.standard_normal(300) - 1.0 + 0.5 * estimate
    si_snr = jax.jit(losses.si_snr)
    unpadded = si_snr(jnp.asarray(estimate), jnp.asarray(reference))
    padded = si_snr(jnp.pad(jnp.asarray(estimate), (0, 212)),
                           jnp.pad(jnp.asarray(reference), (0, 212)), jnp.array(300))
    assert abs(float(padded) - float(unpadded)) < 1e-4
    assert abs(float(unpadded) - numpy_si_snr(estimate, reference)) < 1e-3


def test_silent_references_and_zero_estimates_give_finite_values_and_gradients():
    rng = np.random.default_rng(2)
    estimates = jnp.asarray(rng.standard_normal((3, 2, 200)), jnp.float32)
    estimates = estimates.at[1].set(0.0)  # all-zero estimates
    references = jnp.asarray(rng.standard_normal((3, 2, 200)), jnp.float32)
    references = references.at[0, 1].set(0.0).at[2].set(0.0)  # silent references
    lengths = jnp.array([200, 150, 0])  # including a zero-length (batch padding) row

    def total(est, length_arg):
        return jnp.sum(losses.pit_neg_si_snr(est, references, length_arg)[0])

    for length_arg in (None, lengths):
        value, gradient = jax.jit(jax.value_and_grad(total))(estimates, length_arg)
        assert np.isfinite(float(value))
        assert bool(jnp.all(jnp.isfinite(gradient)))
    # A zero estimate of a silent reference scores 0 dB, not NaN.
    assert float(jax.jit(losses.si_snr)(jnp.zeros(16), jnp.zeros(16))) == 0.0


def test_permutations_enumerates_all():
    perms = losses.permutations(3)
    assert perms.shape == (6, 3)
    assert len({tuple(p) for p in perms}) == 6
    with pytest.raises(ValueError, match="positive"):
        losses.permutations(0)


def test_shape_errors():
    with pytest.raises(ValueError, match=r"\[B, C, T\]"):
        losses.pairwise_neg_si_snr(jnp.zeros((2, 2, 8)), jnp.zeros((2, 3, 8)))
    with pytest.raises(ValueError, match=r"\[B, C, C\]"):
        losses.pit_loss(jnp.zeros((2, 2, 3)))
