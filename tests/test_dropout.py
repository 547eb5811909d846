"""The counter-based dropout mask (keep rate, independence, determinism, scaling) and the
self-attention that uses it (Flax's parameters and output, per-example masks)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from galr_jax.kernels.attention import dot_product_attention
from galr_jax.kernels.dropout import dropout, keep_mask
from galr_jax.models.attention import MultiHeadSelfAttention
from galr_jax.models.dropout import Dropout

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


def test_self_attention_has_flax_parameters_initialisation_and_output():
    x = jnp.asarray(np.random.default_rng(0).standard_normal((3, 2, 7, 16)), jnp.float32)
    ours = MultiHeadSelfAttention(num_heads=4)
    flax_mha = nn.MultiHeadDotProductAttention(num_heads=4, deterministic=True)
    variables = ours.init(jax.random.PRNGKey(0), x)
    flax_variables = flax_mha.init(jax.random.PRNGKey(0), x, x)
    assert jax.tree.structure(variables) == jax.tree.structure(flax_variables)
    for a, b in zip(jax.tree.leaves(variables), jax.tree.leaves(flax_variables)):
        np.testing.assert_array_equal(a, b)  # same names, shapes and initial values
    # Non-zero biases, so that a misplaced bias would show.
    variables = jax.tree.map(
        lambda v: v + 0.1 * jnp.asarray(np.random.default_rng(1).standard_normal(v.shape)),
        variables)
    np.testing.assert_allclose(ours.apply(variables, x), flax_mha.apply(variables, x, x),
                               rtol=1e-5, atol=1e-6)


def test_self_attention_dropout_draws_from_the_key():
    x = jnp.asarray(np.random.default_rng(0).standard_normal((2, 3, 9, 16)), jnp.float32)
    module = MultiHeadSelfAttention(num_heads=4, dropout=0.5)
    variables = module.init(jax.random.PRNGKey(0), x)
    evaluated = module.apply(variables, x)
    np.testing.assert_array_equal(module.apply(variables, x, train=False,
                                               rngs={"dropout": jax.random.PRNGKey(1)}), evaluated)
    rngs = {"dropout": jax.random.PRNGKey(1)}
    trained = module.apply(variables, x, train=True, rngs=rngs)
    assert float(jnp.max(jnp.abs(trained - evaluated))) > 1e-2
    np.testing.assert_array_equal(module.apply(variables, x, train=True, rngs=rngs), trained)
    other = module.apply(variables, x, train=True, rngs={"dropout": jax.random.PRNGKey(2)})
    assert float(jnp.max(jnp.abs(other - trained))) > 1e-2


def test_attention_weights_dropout_scales_the_kept_weights():
    q, k = (jnp.asarray(np.random.default_rng(i).standard_normal((5, 7, 8)), jnp.float32)
            for i in range(2))
    identity = jnp.broadcast_to(jnp.eye(7), (5, 7, 7))
    undropped = dot_product_attention(q, k, identity)
    dropped = dot_product_attention(q, k, identity, dropout_rng=jax.random.PRNGKey(2), dropout_rate=0.5)
    # With V = I the output is the weight matrix itself: kept weights doubled, the rest 0.
    kept = np.asarray(dropped) != 0
    assert 0.3 < kept.mean() < 0.7
    np.testing.assert_allclose(np.asarray(dropped)[kept], 2 * np.asarray(undropped)[kept],
                               rtol=1e-5)


def _plain_attention(q, k, v, rng, rate, key_valid=None):
    """Attention differentiated by JAX, for the hand-written backward to match."""
    logits = jnp.einsum("...qd,...kd->...qk", q / np.sqrt(q.shape[-1]), k)
    if key_valid is not None:
        logits = jnp.where(key_valid, logits, -1e30)
    weights = jax.nn.softmax(logits)
    if rate:
        weights = dropout(weights, rng, rate)
    return jnp.einsum("...qk,...kd->...qd", weights, v)


@pytest.mark.parametrize("masked", [False, True], ids=["all_keys", "masked_keys"])
@pytest.mark.parametrize("rate", [0.0, 0.3])
def test_attention_backward_matches_automatic_differentiation(rate, masked):
    q, k, v, cotangent = (jnp.asarray(np.random.default_rng(i).standard_normal((4, 3, 2, 11, 8)),
                                      jnp.float32) for i in range(4))
    rng = jax.random.PRNGKey(9) if rate else None
    # Keys past each example's valid count, as a padded batch masks them.
    key_valid = (jnp.arange(11) < jnp.array([11, 7, 3, 1])[:, None])[:, None, None, None, :] \
        if masked else None

    def loss(attention):
        return lambda q, k, v: jnp.sum(attention(q, k, v, rng, rate, key_valid=key_valid)
                                       * cotangent)

    np.testing.assert_allclose(dot_product_attention(q, k, v, rng, rate, key_valid=key_valid),
                               _plain_attention(q, k, v, rng, rate, key_valid),
                               rtol=1e-6, atol=1e-6)
    ours = jax.grad(loss(dot_product_attention), argnums=(0, 1, 2))(q, k, v)
    plain = jax.grad(loss(_plain_attention), argnums=(0, 1, 2))(q, k, v)
    for name, a, b in zip("qkv", ours, plain):
        scale = float(jnp.abs(b).max())
        assert float(jnp.abs(a - b).max()) <= 1e-5 * scale, name
