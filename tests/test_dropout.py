"""The counter-based dropout mask: keep rate, independence, determinism, scaling, and
the attention functions that use it."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from galr_jax.models.dropout import Dropout, dropout, keep_mask
from galr_jax.models.galr import dot_product_attention, heads_as_batch_attention

SHAPE = (64, 4, 41, 41)  # attention-weight shaped: [batch * Q, heads, S, S]
SIZE = int(np.prod(SHAPE))


def binomial_sigmas(observed, expected, count):
    return abs(observed - expected) / np.sqrt(expected * (1 - expected) / count)


@pytest.mark.parametrize("keep_prob", [0.1, 0.5, 0.9])
def test_keep_rate_matches_the_probability(keep_prob):
    mask = np.asarray(keep_mask(jax.random.PRNGKey(0), SHAPE, keep_prob))
    assert mask.dtype == bool and mask.shape == SHAPE
    assert binomial_sigmas(mask.mean(), keep_prob, SIZE) < 5
    # No slice of the tensor is favoured: the rate holds along each axis too.
    per_head = mask.mean(axis=(0, 2, 3))
    assert np.all([binomial_sigmas(r, keep_prob, SIZE // SHAPE[1]) < 5 for r in per_head])


def test_same_key_same_mask_other_key_independent_mask():
    keep_prob = 0.9
    a = np.asarray(keep_mask(jax.random.PRNGKey(1), SHAPE, keep_prob))
    np.testing.assert_array_equal(np.asarray(keep_mask(jax.random.PRNGKey(1), SHAPE, keep_prob)), a)
    # A typed key with the same data is the same key.
    np.testing.assert_array_equal(np.asarray(keep_mask(jax.random.key(1), SHAPE, keep_prob)), a)
    for other in (jax.random.PRNGKey(2), jax.random.fold_in(jax.random.PRNGKey(1), 1)):
        b = np.asarray(keep_mask(other, SHAPE, keep_prob))
        # Independent masks agree where both keep or both drop: p^2 + (1 - p)^2.
        expected = keep_prob ** 2 + (1 - keep_prob) ** 2
        assert binomial_sigmas((a == b).mean(), expected, SIZE) < 5


def test_neighbouring_elements_are_uncorrelated():
    bits = np.asarray(keep_mask(jax.random.PRNGKey(3), SHAPE, 0.5), np.float64).reshape(-1)
    for lag in (1, 2, SHAPE[-1], SHAPE[-1] * SHAPE[-2]):
        corr = np.corrcoef(bits[:-lag], bits[lag:])[0, 1]
        assert abs(corr) < 5 / np.sqrt(SIZE), (lag, corr)


def test_keep_mask_rejects_bad_arguments():
    with pytest.raises(ValueError, match="keep_prob"):
        keep_mask(jax.random.PRNGKey(0), (4,), 0.0)
    with pytest.raises(ValueError, match="2\\*\\*32"):
        keep_mask(jax.random.PRNGKey(0), (2 ** 20, 2 ** 13), 0.5)


def test_dropout_zeroes_and_rescales():
    x = jnp.full((1000, 100), 3.0)
    y = np.asarray(dropout(x, jax.random.PRNGKey(4), 0.2))
    assert set(np.unique(y)) == {0.0, np.float32(3.0 / 0.8)}
    assert abs(y.mean() - 3.0) < 0.05  # inverted dropout keeps the expectation
    assert dropout(x, jax.random.PRNGKey(4), 0.0) is x


def test_dropout_module_is_deterministic_in_evaluation_and_needs_an_rng_in_training():
    x = jnp.ones((8, 16))
    module = Dropout(0.5)
    np.testing.assert_array_equal(module.apply({}, x, deterministic=True), x)
    key = jax.random.PRNGKey(5)
    trained = module.apply({}, x, deterministic=False, rngs={"dropout": key})
    np.testing.assert_array_equal(
        module.apply({}, x, deterministic=False, rngs={"dropout": key}), trained)
    assert set(np.unique(np.asarray(trained))) == {0.0, 2.0}
    other = module.apply({}, x, deterministic=False, rngs={"dropout": jax.random.PRNGKey(6)})
    assert (np.asarray(other) != np.asarray(trained)).mean() > 0.3
    with pytest.raises(Exception, match="dropout"):
        module.apply({}, x, deterministic=False)


def test_dropout_under_vmap_gives_each_row_its_own_mask():
    keys = jax.vmap(jax.random.fold_in, in_axes=(None, 0))(jax.random.PRNGKey(6), jnp.arange(2))
    rows = jax.vmap(lambda k: dropout(jnp.ones((50, 50)), k, 0.5))(keys)
    np.testing.assert_array_equal(rows[1], dropout(jnp.ones((50, 50)), keys[1], 0.5))
    assert (np.asarray(rows[0]) != np.asarray(rows[1])).mean() > 0.3


def test_attention_without_dropout_equals_flax():
    q, k, v = (jnp.asarray(np.random.default_rng(i).standard_normal((3, 2, 7, 4, 8)), jnp.float32)
               for i in range(3))
    expected = nn.dot_product_attention(q, k, v)
    np.testing.assert_allclose(dot_product_attention(q, k, v, deterministic=True), expected,
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(heads_as_batch_attention(q, k, v, deterministic=True), expected,
                               rtol=1e-5, atol=1e-6)


def test_both_attention_layouts_draw_the_same_dropout_mask():
    q, k, v = (jnp.asarray(np.random.default_rng(i).standard_normal((3, 7, 4, 8)), jnp.float32)
               for i in range(3))
    kwargs = dict(dropout_rng=jax.random.PRNGKey(7), dropout_rate=0.5, deterministic=False)
    dropped = dot_product_attention(q, k, v, **kwargs)
    np.testing.assert_allclose(heads_as_batch_attention(q, k, v, **kwargs), dropped,
                               rtol=1e-5, atol=1e-6)
    undropped = dot_product_attention(q, k, v, deterministic=True)
    assert float(jnp.max(jnp.abs(dropped - undropped))) > 1e-2
