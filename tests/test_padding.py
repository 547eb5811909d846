"""Batches with padding (spec): every row of a padded batch is what the model computes on
that row alone at its own length, whatever the padding holds and however long it is.

Runs the real model (GALR and DPRNN, random and briefly trained weights, with and without
rematerialisation), forward and backward. The PyTorch parity of the same rule is in
``tests/test_parity.py``.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from galr_jax.evaluation import metrics
from galr_jax.training import losses
from galr_jax.config import config_from_dict
from galr_jax.models import build_model

# One segment is K * L/2 = 80 samples, the segment hop 40: lengths below one segment,
# between hops and past several segments.
SMALL = {"window": 16, "num_filters": 16, "features": 16, "hidden": 8, "segment_length": 10,
         "num_blocks": 2}
MODELS = {
    "galr": {**SMALL, "separator": "galr", "low_dim": 4, "num_heads": 2},
    "galr_full_length": {**SMALL, "separator": "galr", "low_dim": None, "num_heads": 2},
    "dprnn": {**SMALL, "separator": "dprnn", "norm_eps": 1e-8},
}
LENGTHS = (5, 77, 161, 333)
BUCKETS = (333, 640, 1000)  # the longest row exactly, then ever more padding
SCORE_TOLERANCE_DB = 0.01  # the bound on a score's change with the bucket
RELATIVE_TOLERANCE = 1e-5  # float32 rounding of sums taken in another order


def _config(name, **runtime):
    return config_from_dict({"model": MODELS[name], "runtime": runtime})


def _variables(model, seed=0):
    """Random weights with every bias and norm affine far from its initial value, so a
    bias that leaks into the padding shows."""
    variables = model.init(jax.random.PRNGKey(seed), jnp.zeros((1, 400)))
    leaves, tree = jax.tree.flatten(variables)
    keys = jax.random.split(jax.random.PRNGKey(seed + 1), len(leaves))
    return jax.tree.unflatten(tree, [x + 0.3 * jax.random.normal(k, x.shape)
                                     for x, k in zip(leaves, keys)])


def _signals(seed=0):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(n).astype(np.float32) for n in LENGTHS]


def _padded(signals, total, fill):
    """Rows padded to ``total`` with ``fill`` (zeros, or noise the lengths must hide)."""
    batch = np.zeros((len(signals), total), np.float32)
    rng = np.random.default_rng(1)
    for row, signal in enumerate(signals):
        batch[row, :len(signal)] = signal
        if fill == "noise":
            batch[row, len(signal):] = rng.standard_normal(total - len(signal))
    return batch, np.array([len(s) for s in signals], np.int32)


@functools.lru_cache(maxsize=None)
def _apply(name, remat=False):
    model = build_model(_config(name, remat=remat))
    return model, jax.jit(lambda v, x, n: model.apply(v, x, lengths=n))


def _alone(name, variables, signals):
    model, _ = _apply(name)
    run = jax.jit(model.apply)
    return [np.asarray(run(variables, s[None]))[0] for s in signals]


def _assert_rows_equal(padded_out, alone, lengths):
    for row, (expected, length) in enumerate(zip(alone, lengths)):
        got = padded_out[row, :, :length]
        scale = np.max(np.abs(expected))
        assert np.max(np.abs(got - expected)) <= RELATIVE_TOLERANCE * scale, (
            f"row {row} (length {length}) differs from its exact-length run")
        assert not np.any(padded_out[row, :, length:]), f"row {row}: output past its length"


@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("fill", ["zeros", "noise"])
def test_every_bucket_gives_each_row_its_exact_length_output(name, fill):
    model, apply = _apply(name)
    variables = _variables(model)
    signals = _signals()
    alone = _alone(name, variables, signals)
    for total in BUCKETS:
        batch, lengths = _padded(signals, total, fill)
        _assert_rows_equal(np.asarray(apply(variables, batch, lengths)), alone, lengths)


@pytest.mark.parametrize("name", ["galr", "dprnn"])
def test_without_lengths_the_padding_changes_the_output(name):
    """The check above can fail: the same rows without lengths see the padding."""
    model, _ = _apply(name)
    variables = _variables(model)
    signals = _signals()
    alone = _alone(name, variables, signals)
    batch, _ = _padded(signals, BUCKETS[-1], "zeros")
    out = np.asarray(jax.jit(model.apply)(variables, batch))
    worst = max(np.max(np.abs(out[row, :, :len(s)] - a)) / np.max(np.abs(a))
                for row, (s, a) in enumerate(zip(signals, alone)))
    assert worst > 100 * RELATIVE_TOLERANCE


@pytest.mark.parametrize("name", ["galr", "dprnn"])
def test_full_lengths_equal_no_lengths(name):
    model, apply = _apply(name)
    variables = _variables(model)
    batch, _ = _padded(_signals(), BUCKETS[1], "noise")
    full = np.full((batch.shape[0],), batch.shape[1], np.int32)
    np.testing.assert_allclose(np.asarray(apply(variables, batch, full)),
                               np.asarray(jax.jit(model.apply)(variables, batch)),
                               rtol=0, atol=RELATIVE_TOLERANCE * 10)


@pytest.mark.parametrize("name,remat", [("galr", False), ("galr", True), ("dprnn", False)])
def test_gradient_of_a_padded_batch_is_the_sum_over_its_rows(name, remat):
    """The masked gLN's and the within-length reversal's backward passes, under training
    (remat included): d/dparams of a padded batch's loss = the sum of each row's."""
    model, _ = _apply(name, remat)
    variables = _variables(model)
    signals = _signals()
    weights = [np.random.default_rng(7 + i).standard_normal((2, len(s))).astype(np.float32)
               for i, s in enumerate(signals)]
    batch, lengths = _padded(signals, BUCKETS[1], "noise")
    padded_weights = np.zeros((len(signals), 2, BUCKETS[1]), np.float32)
    for row, w in enumerate(weights):
        padded_weights[row, :, :w.shape[1]] = w

    def padded_loss(v):
        return jnp.sum(model.apply(v, batch, lengths=lengths) * padded_weights)

    def row_loss(v, signal, w):
        return jnp.sum(model.apply(v, signal[None])[0] * w)

    got = jax.jit(jax.grad(padded_loss))(variables)
    expected = jax.tree.map(jnp.zeros_like, variables)
    for signal, w in zip(signals, weights):
        expected = jax.tree.map(jnp.add, expected, jax.grad(row_loss)(variables, signal, w))
    # Relative to the largest gradient: some (the attention's key bias) are zero in exact
    # arithmetic, so only rounding noise is left to compare there.
    largest = max(float(jnp.max(jnp.abs(e))) for e in jax.tree.leaves(expected))
    for (path, g), e in zip(jax.tree_util.tree_leaves_with_path(got), jax.tree.leaves(expected)):
        scale = max(float(jnp.max(jnp.abs(e))), 1e-2 * largest)
        assert float(jnp.max(jnp.abs(g - e))) <= 1e-4 * scale, jax.tree_util.keystr(path)


def _task(signals):
    """Two-source mixtures: each signal plus a tone over the same samples, zero-padded
    to the longest (``mixture [B, T]``, ``sources [B, 2, T]``, ``lengths [B]``)."""
    speech, lengths = _padded(signals, max(LENGTHS), "zeros")
    t = np.arange(speech.shape[1]) / 8000.0
    valid = np.arange(speech.shape[1]) < lengths[:, None]
    tone = (0.5 * np.sin(2 * np.pi * 440 * t) * valid).astype(np.float32)
    sources = np.stack([speech, tone], axis=1)
    return sources.sum(axis=1), sources, lengths


def _briefly_trained(name, mixture, sources, lengths, steps=30):
    """Weights after a few Adam steps on the task itself: a model that has begun to
    separate, whose scores move with every change of its inputs."""
    model, _ = _apply(name)
    variables = model.init(jax.random.PRNGKey(3), jnp.zeros((1, 400)))
    optimizer = optax.adam(3e-3)
    state = optimizer.init(variables)

    def loss(v):
        estimates = model.apply(v, mixture, lengths=lengths)
        return jnp.mean(losses.pit_neg_si_snr(estimates, sources, lengths)[0])

    @jax.jit
    def step(v, state):
        value, grads = jax.value_and_grad(loss)(v)
        updates, state = optimizer.update(grads, state)
        return optax.apply_updates(v, updates), state, value

    values = []
    for _ in range(steps):
        variables, state, value = step(variables, state)
        values.append(float(value))
    assert values[-1] < values[0], f"the briefly trained model did not learn: {values}"
    return variables


@pytest.mark.parametrize("name", ["galr", "dprnn"])
@pytest.mark.parametrize("weights", ["random", "trained"])
def test_si_snri_of_each_utterance_is_the_same_in_every_bucket(name, weights):
    model, apply = _apply(name)
    mixture, sources, lengths = _task(_signals(seed=2))
    variables = (_variables(model) if weights == "random"
                 else _briefly_trained(name, mixture, sources, lengths))
    scores = []
    for total in BUCKETS:
        padded = np.zeros((len(lengths), total), np.float32)
        padded[:, :mixture.shape[1]] = mixture
        estimates = np.asarray(apply(variables, padded, lengths))
        # Each utterance scored on its own samples only, as evaluation scores it.
        scores.append([float(metrics.si_snr_improvement(
            estimates[row:row + 1, :, :n], sources[row:row + 1, :, :n],
            mixture[row:row + 1, :n]).si_snri[0]) for row, n in enumerate(lengths)])
    scores = np.asarray(scores)  # [bucket, utterance]
    assert np.all(np.isfinite(scores))
    assert np.max(np.abs(scores - scores[0])) <= SCORE_TOLERANCE_DB, scores
