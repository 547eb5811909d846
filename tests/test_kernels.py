"""The two kernel choices (``runtime.kernels``): one parameter tree, the same outputs and
gradients, primitive by primitive and for the whole model, and ``auto``'s decision."""

from __future__ import annotations

import dataclasses
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from galr_jax import ConfigError
from galr_jax.config import config_from_dict, load_config
from galr_jax.kernels import resolve
from galr_jax.kernels.attention import SELF_ATTENTION
from galr_jax.kernels.dense import ADD_BIAS
from galr_jax.kernels.lstm import BILSTM
from galr_jax.kernels.norms import GLOBAL_LAYER_NORM, LAYER_NORM, MASKED_GLOBAL_LAYER_NORM
from galr_jax.kernels.remat import RECOMPUTE_IN_BACKWARD
from galr_jax.models import build_model
from galr_jax.training.checkpoints import restore_variables, save_variables
from inference_helpers import tiny_config

CONFIGS = pathlib.Path(__file__).resolve().parents[1] / "configs"
CHOICES = ("reference", "tuned")
# Float32 rounding: the two choices sum in different orders (fused products, matrix-vector
# reductions), so results agree to a few ulps of the largest value, not bit for bit.
TOLERANCE = 1e-5
# A gradient under this fraction of the largest one is zero in exact arithmetic (attention's
# key bias, a bias right before a LayerNorm): rounding noise, compared on the largest's scale.
ZERO_GRADIENT = 1e-3
# Padded rows: shorter than one segment, between hops, and the full length.
PADDED_LENGTHS = (100, 333, 800)
SEPARATORS = {"galr": {"attention_dropout": 0.1},
              "dprnn": {"separator": "dprnn", "norm_eps": 1e-8}}


def assert_close(actual, expected, what: str, scale=None):
    expected = np.asarray(expected, np.float64)
    scale = np.max(np.abs(expected)) if scale is None else scale
    assert scale > 0, what
    error = float(np.max(np.abs(np.asarray(actual, np.float64) - expected)) / scale)
    assert error <= TOLERANCE, f"{what}: reference and tuned differ by {error:.1e} of the scale"


def gradient_scale(gradient, largest: float) -> float:
    own = float(np.max(np.abs(gradient)))
    return own if own > ZERO_GRADIENT * largest else largest


def with_kernels(config, kernels: str):
    return dataclasses.replace(config, runtime=dataclasses.replace(config.runtime,
                                                                   kernels=kernels))


def random(seed: int, *shape, dtype=jnp.float32):
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), dtype)


# ---------------------------------------------------------------------------------------
# The choice.


def test_auto_is_tuned_on_cpu_and_is_decided_at_build_time():
    assert jax.default_backend() == "cpu"
    assert resolve("auto") == "tuned"
    assert resolve("reference") == "reference"
    assert build_model(tiny_config()).runtime.kernels == "tuned"
    assert build_model(tiny_config(runtime={"kernels": "reference"})).runtime.kernels == "reference"
    with pytest.raises(ValueError, match="'fast' is not one of reference, tuned, auto"):
        resolve("fast")


def test_an_unknown_choice_is_a_config_error():
    with pytest.raises(ConfigError, match="runtime.kernels: 'fused' is not one of reference, "
                                          "tuned, auto"):
        config_from_dict({"runtime": {"kernels": "fused"}})


@pytest.mark.parametrize("config", sorted(p.stem for p in CONFIGS.glob("*.yaml")))
def test_every_config_has_one_parameter_tree(config):
    trees = []
    for kernels in CHOICES:
        loaded = load_config(CONFIGS / f"{config}.yaml", [f"runtime.kernels={kernels}"])
        model = build_model(loaded)
        sample = jnp.zeros((1, 4 * loaded.model.window))
        shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), sample)
        trees.append(jax.tree_util.tree_map(lambda x: (x.shape, x.dtype), shapes))
    assert trees[0] == trees[1]


# ---------------------------------------------------------------------------------------
# Primitive by primitive: forward and VJP.


def assert_same_forward_and_vjp(implementations, args, differentiable, what):
    """Both implementations' outputs, and their VJPs for one random cotangent, w.r.t. the
    arguments at the indices ``differentiable``."""
    results = {}
    for kernels in CHOICES:
        fn = implementations[kernels]

        def partial(*diff, fn=fn):
            full = list(args)
            for index, value in zip(differentiable, diff):
                full[index] = value
            return fn(*full)

        out, vjp = jax.vjp(jax.jit(partial), *(args[i] for i in differentiable))
        cotangent = random(99, *out.shape, dtype=out.dtype)
        results[kernels] = (out, vjp(cotangent))
    (ref_out, ref_grads), (tuned_out, tuned_grads) = results["reference"], results["tuned"]
    assert_close(tuned_out, ref_out, f"{what} output")
    largest = max(float(np.max(np.abs(g))) for g in jax.tree.leaves(ref_grads))
    for index, ref, tuned in zip(differentiable, ref_grads, tuned_grads):
        for ref_leaf, tuned_leaf in zip(jax.tree.leaves(ref), jax.tree.leaves(tuned),
                                        strict=True):
            assert_close(tuned_leaf, ref_leaf, f"{what} d/d argument {index}",
                         gradient_scale(ref_leaf, largest))


@pytest.mark.parametrize("padded", [False, True], ids=["exact", "lengths"])
def test_bilstm(padded):
    sequences, steps, features, hidden = 5, 7, 6, 4
    gates = 4 * hidden
    lengths = jnp.asarray([7, 1, 4, 7, 3], jnp.int32) if padded else None
    args = [random(0, sequences, steps, features), 0.5 * random(1, 2, features, gates),
            0.5 * random(2, 2, hidden, gates), random(3, 2, gates), random(4, 2, sequences, hidden),
            random(5, 2, sequences, hidden), lengths, 1]
    assert_same_forward_and_vjp(BILSTM, args, (0, 1, 2, 3, 4, 5), "BiLSTM")


def test_norms():
    x, scale, bias = random(0, 3, 5, 4, 6), 1 + random(1, 6), random(2, 6)
    valid = jnp.arange(5)[None, :, None] < jnp.asarray([5, 2, 1])[:, None, None]
    assert_same_forward_and_vjp(GLOBAL_LAYER_NORM, [x, scale, bias, 1e-5], (0, 1, 2), "gLN")
    assert_same_forward_and_vjp(MASKED_GLOBAL_LAYER_NORM, [x, valid, scale, bias, 1e-8],
                                (0, 2, 3), "masked gLN")
    assert_same_forward_and_vjp(LAYER_NORM, [x, scale, bias, 1e-5], (0, 1, 2), "LayerNorm")


def test_add_bias():
    assert_same_forward_and_vjp(ADD_BIAS, [random(0, 2, 3, 4, 5), random(1, 3, 5), (1, -1)],
                                (0, 1), "add_bias")


@pytest.mark.parametrize("dropout", [0.0, 0.3])
def test_self_attention(dropout):
    heads, depth, features, length = 2, 4, 8, 6
    projections = [(random(i, features, heads, depth), random(10 + i, heads, depth))
                   for i in range(3)]
    out_projection = (random(20, heads, depth, features), random(21, features))
    key_valid = (jnp.arange(length) < jnp.asarray([6, 2, 4])[:, None])[:, None, :]
    causal = jnp.tril(jnp.ones((length, length), bool))
    dropout_key = jax.random.PRNGKey(7) if dropout else None
    # A per-key (padding) mask, and the same combined with a causal one.
    for mask, what in ((key_valid[..., None, None, :], "padding"),
                       (key_valid[..., None, None, :] & causal, "padding and causal")):
        args = [random(30, 3, 5, length, features), projections, out_projection, dropout_key,
                dropout, mask, jnp.float32]
        assert_same_forward_and_vjp(SELF_ATTENTION, args, (0, 1, 2),
                                    f"attention (dropout {dropout}, {what})")


def test_recompute_in_backward():
    def fn(x, w):
        return jnp.tanh(x @ w) @ w.T

    assert_same_forward_and_vjp(
        {k: lambda x, w, r=RECOMPUTE_IN_BACKWARD[k]: r(fn, x, w) for k in CHOICES},
        [random(0, 4, 3), random(1, 3, 5)], (0, 1), "recompute_in_backward")


# ---------------------------------------------------------------------------------------
# The whole model.


def padded_batch():
    mixture = random(3, len(PADDED_LENGTHS), max(PADDED_LENGTHS))
    return mixture, jnp.asarray(PADDED_LENGTHS, jnp.int32)


@pytest.mark.parametrize("separator", sorted(SEPARATORS))
def test_model_outputs_and_gradients_agree(separator):
    """Training mode on a padded batch: GALR's dropout masks, its attention and gLN
    recomputed in the backward pass, and the lengths' masks all in play."""
    config = tiny_config(model=SEPARATORS[separator])
    mixture, lengths = padded_batch()
    weights = random(4, len(PADDED_LENGTHS), config.model.num_sources, mixture.shape[1])
    rngs = {"dropout": jax.random.PRNGKey(5)}
    # One parameter tree (the initialisers are the same; running both inits is slow).
    models = {kernels: build_model(with_kernels(config, kernels)) for kernels in CHOICES}
    trees = [jax.eval_shape(models[k].init, jax.random.PRNGKey(0), mixture[:1, :64])
             for k in CHOICES]
    assert trees[0] == trees[1]
    variables = models["tuned"].init(jax.random.PRNGKey(0), mixture[:1, :64])
    results = {}
    for kernels, model in models.items():

        def loss(params, x, model=model):
            out = model.apply({"params": params}, x, True, lengths=lengths, rngs=rngs)
            return jnp.sum(out * weights), out

        (_, out), grads = jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))(
            variables["params"], mixture)
        results[kernels] = out, grads

    (ref_out, ref_grads), (tuned_out, tuned_grads) = (results[k] for k in CHOICES)
    assert_close(tuned_out, ref_out, "output (padded batch, training)")
    for row, length in enumerate(PADDED_LENGTHS):
        assert not np.any(np.asarray(ref_out)[row, :, length:])
    assert_close(tuned_grads[1], ref_grads[1], "d loss / d mixture")
    largest = max(float(np.max(np.abs(g))) for g in jax.tree.leaves(ref_grads[0]))
    for (path, ref), tuned in zip(jax.tree_util.tree_leaves_with_path(ref_grads[0]),
                                  jax.tree.leaves(tuned_grads[0]), strict=True):
        assert_close(tuned, ref, f"d loss / d {jax.tree_util.keystr(path)}",
                     gradient_scale(ref, largest))


# Every shipped architecture at its real sizes, in evaluation mode on a short signal (long
# enough for several segments of the largest K) and with one block: the blocks repeat the
# same computation, and compiling the gradient, which dominates here, grows with each
# (all six of dprnn's took 4 min on a loaded 2-core machine).
EVERY_CONFIG_SECONDS = 0.4
EVERY_CONFIG_BLOCKS = 1


@pytest.mark.slow
@pytest.mark.parametrize("config_name", sorted(
    str(p.relative_to(CONFIGS).with_suffix("")) for p in CONFIGS.rglob("*.yaml")))
def test_every_config_gives_the_same_outputs_and_gradients(config_name):
    config = load_config(str(CONFIGS / f"{config_name}.yaml"),
                         [f"model.num_blocks={EVERY_CONFIG_BLOCKS}"])
    samples = int(EVERY_CONFIG_SECONDS * config.model.sample_rate)
    mixture = random(1, 1, samples)
    weights = random(2, 1, config.model.num_sources, samples)
    models = {kernels: build_model(with_kernels(config, kernels)) for kernels in CHOICES}
    variables = models["tuned"].init(jax.random.PRNGKey(0), mixture[:, :64])
    results = {}
    for kernels, model in models.items():

        def loss(params, model=model):
            out = model.apply({"params": params}, mixture)
            return jnp.sum(out * weights), out

        (_, out), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(variables["params"])
        results[kernels] = out, grads
    (ref_out, ref_grads), (tuned_out, tuned_grads) = (results[k] for k in CHOICES)
    assert_close(tuned_out, ref_out, f"{config_name}: output")
    largest = max(float(np.max(np.abs(g))) for g in jax.tree.leaves(ref_grads))
    for (path, ref), tuned in zip(jax.tree_util.tree_leaves_with_path(ref_grads),
                                  jax.tree.leaves(tuned_grads), strict=True):
        assert_close(tuned, ref, f"{config_name}: d loss / d {jax.tree_util.keystr(path)}",
                     gradient_scale(ref, largest))


def test_a_checkpoint_saved_under_one_choice_runs_under_the_other(tmp_path):
    """Inference, where GALR's reference attention is ``jax.nn.dot_product_attention``."""
    tuned = tiny_config(runtime={"kernels": "tuned"})
    model = build_model(tuned)
    mixture, lengths = padded_batch()
    variables = model.init(jax.random.PRNGKey(1), mixture[:1, :64])
    save_variables(str(tmp_path), variables, tuned)
    reference = with_kernels(tuned, "reference")
    restored, _ = restore_variables(str(tmp_path), reference)
    expected = jax.jit(model.apply)(variables, mixture, lengths=lengths)
    got = jax.jit(build_model(reference).apply)(restored, mixture, lengths=lengths)
    assert_close(got, expected, "restored under reference")
