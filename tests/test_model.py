"""Behaviour of the Flax model: shapes, jit caching, dropout, dtypes, remat, batch
independence, parameter counts and config errors."""

import functools
import pathlib
import re

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from galr_jax import ConfigError, build_model, load_config
from galr_jax.models import summary
from galr_jax.config import RuntimeConfig, config_from_dict
from galr_jax.kernels.dense import add_bias
from galr_jax.kernels.scheduling import scan_in_place, scan_into_own_buffers
from galr_jax.models import Dropout, GALRBlock, GlobalLayerNorm, GloballyAttentive, LayerNorm
from galr_jax.models.dense import Dense
from galr_jax.models.galr import SegmentLengthMap
from galr_jax.models.remat import apply_recomputed, apply_rematerialised
from galr_jax.models.summary import count_params

CONFIGS = pathlib.Path(__file__).resolve().parents[1] / "configs"
SMALL_GALR = {"separator": "galr", "window": 16, "num_filters": 16, "features": 16,
              "hidden": 8, "segment_length": 20, "low_dim": 4, "num_blocks": 2,
              "num_heads": 4, "attention_dropout": 0.1}
SMALL_DPRNN = {"separator": "dprnn", "window": 16, "num_filters": 16, "features": 8,
               "hidden": 8, "segment_length": 20, "num_blocks": 2, "norm_eps": 1e-8}
SMALL = {"galr": SMALL_GALR, "dprnn": SMALL_DPRNN}
LENGTHS = (1, 2, 7, 8, 9, 799, 800, 801, 1234, 8000)
RUN_LENGTHS = (1, 801)  # these also run for real; all are traced
BFLOAT16_TOLERANCE = 5e-2  # rms(bf16 - f32) / rms(f32); measured 1.3e-2 (GALR), 2.2e-2 (DPRNN)


def model_config(name, **changes):
    return config_from_dict({"model": {**SMALL[name], **changes}}).model


def random_mixture(batch, length, seed=0):
    return np.random.default_rng(seed).standard_normal((batch, length)).astype(np.float32)


# Compiling Flax's init costs more than a forward pass: do it once per model and share
# the compiled forward pass between tests.
@functools.lru_cache(maxsize=None)
def initialised(name):
    """(model, variables, jitted model.apply with a static ``train``) of a small model."""
    model = build_model(model_config(name))
    variables = jax.jit(model.init)(jax.random.PRNGKey(0), jnp.zeros((1, 400)))
    return model, variables, jax.jit(model.apply, static_argnames="train")


def relative_error(actual, expected):
    expected = np.asarray(expected)
    return float(np.max(np.abs(np.asarray(actual) - expected)) / np.max(np.abs(expected)))


@pytest.mark.parametrize("name", list(SMALL))
def test_output_length_equals_input_length(name):
    model, variables, separate = initialised(name)
    for length in LENGTHS:
        out = jax.eval_shape(model.apply, variables, jax.ShapeDtypeStruct((2, length), jnp.float32))
        assert out.shape == (2, 2, length), length
        assert out.dtype == jnp.float32
    for length in RUN_LENGTHS:
        out = separate(variables, random_mixture(2, length))
        assert out.shape == (2, 2, length)
        assert np.isfinite(np.asarray(out)).all()


def test_jit_compiles_once_per_input_shape():
    model, variables, _ = initialised("dprnn")
    traced_shapes = []

    @jax.jit
    def separate(variables, mixture):
        traced_shapes.append(mixture.shape)  # runs only while tracing
        return model.apply(variables, mixture)

    separate(variables, random_mixture(2, 500))
    separate(variables, random_mixture(2, 500, seed=1))
    assert traced_shapes == [(2, 500)] and separate._cache_size() == 1
    separate(variables, random_mixture(2, 501))
    separate(variables, random_mixture(2, 501, seed=1))
    assert traced_shapes == [(2, 500), (2, 501)] and separate._cache_size() == 2


def test_dropout_needs_train_and_an_explicit_rng():
    _, variables, apply = initialised("galr")
    mixture = random_mixture(2, 801)
    evaluated = apply(variables, mixture)
    key_a, key_b = jax.random.PRNGKey(1), jax.random.PRNGKey(2)
    np.testing.assert_array_equal(apply(variables, mixture, rngs={"dropout": key_a}), evaluated)
    with pytest.raises(flax.errors.InvalidRngError, match="dropout"):
        apply(variables, mixture, train=True)
    trained_a = apply(variables, mixture, train=True, rngs={"dropout": key_a})
    np.testing.assert_array_equal(apply(variables, mixture, train=True, rngs={"dropout": key_a}),
                                  trained_a)
    trained_b = apply(variables, mixture, train=True, rngs={"dropout": key_b})
    assert relative_error(trained_b, trained_a) > 1e-3
    assert relative_error(trained_a, evaluated) > 1e-3


def test_dprnn_has_no_dropout():
    _, variables, apply = initialised("dprnn")
    mixture = random_mixture(2, 801)
    np.testing.assert_array_equal(apply(variables, mixture, train=True), apply(variables, mixture))


def test_attention_dropout_masks_differ_between_sequences():
    config = model_config("galr")
    module = GloballyAttentive(num_heads=config.num_heads, low_dim=config.low_dim, dropout=0.5,
                               attention_residual=True, norm_eps=config.norm_eps)
    one = np.random.default_rng(0).standard_normal((1, 5, config.segment_length, config.features))
    twins = jnp.asarray(np.concatenate([one, one]), jnp.float32)
    variables = jax.jit(module.init)(jax.random.PRNGKey(0), twins)

    def only_attention_weights_dropout(next_fun, args, kwargs, context):
        if isinstance(context.module, Dropout):  # the dropout on the attention output
            return args[0]
        return next_fun(*args, **kwargs)

    @jax.jit
    def train(variables, x, key):
        with nn.intercept_methods(only_attention_weights_dropout):
            return module.apply(variables, x, train=True, rngs={"dropout": key})

    out = train(variables, twins, jax.random.PRNGKey(3))
    assert relative_error(out[1], out[0]) > 1e-3  # one mask shared over the batch would tie them


@pytest.mark.parametrize("name", list(SMALL))
def test_bfloat16_compute_runs_close_to_float32(name):
    model, variables, separate = initialised(name)
    low = build_model(model.config, RuntimeConfig(compute_dtype="bfloat16"))
    mixture = random_mixture(2, 801)
    reference = np.asarray(separate(variables, mixture))
    separated = jax.jit(low.apply)(variables, mixture)
    assert separated.dtype == jnp.float32
    assert np.isfinite(np.asarray(separated)).all()
    error = np.sqrt(np.mean((np.asarray(separated) - reference) ** 2) / np.mean(reference ** 2))
    assert 0 < error <= BFLOAT16_TOLERANCE, f"{name}: bf16 relative rms error {error:.3g}"


def test_remat_gives_the_same_outputs_and_gradients():
    # One block is enough (remat wraps every block alike); its weights are a subtree of the
    # two-block model's, which saves compiling another init.
    _, two_blocks, _ = initialised("galr")
    variables = {"params": {k: v for k, v in two_blocks["params"].items() if k != "blocks_1"}}
    model = build_model(model_config("galr", num_blocks=1))
    remat = build_model(model.config, RuntimeConfig(remat=True))
    mixture = random_mixture(2, 500)
    weights = np.random.default_rng(1).standard_normal((2, 2, 500)).astype(np.float32)
    assert (jax.tree.structure(jax.eval_shape(remat.init, jax.random.PRNGKey(0), mixture))
            == jax.tree.structure(variables))

    def value_and_grad(m):
        def loss(v):
            return jnp.sum(m.apply(v, mixture) * weights)
        return jax.jit(jax.value_and_grad(loss))(variables)

    loss_plain, grads_plain = value_and_grad(model)
    loss_remat, grads_remat = value_and_grad(remat)
    np.testing.assert_allclose(loss_remat, loss_plain, rtol=1e-5)  # fusions differ: rounding
    # Absolute slack relative to the largest gradient: some gradients are zero in exact
    # arithmetic (see ZERO_GRADIENTS in test_parity.py) and hold only rounding noise.
    largest = max(np.max(np.abs(g)) for g in jax.tree.leaves(grads_plain))
    for plain, rematerialised in zip(jax.tree.leaves(grads_plain), jax.tree.leaves(grads_remat)):
        np.testing.assert_allclose(rematerialised, plain, rtol=1e-4, atol=1e-5 * largest)


def test_remat_backward_recomputes_the_forward_pass_dropout_masks():
    # With dropout on, the recomputed forward must draw the forward's masks, or the
    # gradient belongs to another function. The same block applied directly with the
    # same key is the reference.
    block = GALRBlock(8, 4, 4, 0.5, True, 1e-5, name="block")

    class Rematerialised(nn.Module):
        @nn.compact
        def __call__(self, x, key):
            return apply_rematerialised(GALRBlock(8, 4, 4, 0.5, True, 1e-5, name="block"),
                                        x, True, key)

    x = jnp.asarray(np.random.default_rng(0).standard_normal((2, 5, 10, 16)), jnp.float32)
    key = jax.random.PRNGKey(3)
    variables = Rematerialised().init(jax.random.PRNGKey(0), x, None)
    weights = jnp.asarray(np.random.default_rng(1).standard_normal(x.shape), jnp.float32)

    def remat_loss(v, x):
        return jnp.sum(Rematerialised().apply(v, x, key) * weights)

    def direct_loss(v, x):
        return jnp.sum(block.apply({"params": v["params"]["block"]}, x, True,
                                   rngs={"dropout": key}) * weights)

    remat_value, remat_grads = jax.jit(jax.value_and_grad(remat_loss, argnums=(0, 1)))(
        variables, x)
    direct_value, (direct_params, direct_x) = jax.jit(
        jax.value_and_grad(direct_loss, argnums=(0, 1)))(variables, x)
    np.testing.assert_allclose(remat_value, direct_value, rtol=1e-5)
    # Dropout is really on: another key gives another loss.
    other_key = block.apply({"params": variables["params"]["block"]}, x, True,
                            rngs={"dropout": jax.random.PRNGKey(4)})
    assert float(jnp.sum(other_key * weights)) != pytest.approx(float(direct_value), rel=1e-3)
    direct_grads = jax.tree.leaves((direct_params, direct_x))
    # Slack relative to the largest gradient: some are zero in exact arithmetic.
    largest = max(np.max(np.abs(g)) for g in direct_grads)
    for remat, direct in zip(jax.tree.leaves(remat_grads), direct_grads):
        np.testing.assert_allclose(remat, direct, rtol=1e-4, atol=1e-5 * largest)


def _training_program(config, runtime: RuntimeConfig = RuntimeConfig()) -> str:
    """The traced (not compiled) train-mode forward pass of a model, as text."""
    model = build_model(config, runtime)
    mixture = jnp.zeros((2, 800))
    variables = jax.eval_shape(model.init, jax.random.PRNGKey(0), mixture)
    return str(jax.make_jaxpr(lambda v, x: model.apply(
        v, x, train=True, rngs={"dropout": jax.random.PRNGKey(1)}))(variables, mixture))


@pytest.mark.parametrize("name", list(SMALL))
def test_memory_settings_reach_the_model(name):
    # What the settings save is XLA's to decide (benchmarks/backward_memory.py measures
    # it); here: each setting changes the traced program, and only where it applies.
    config = model_config(name)
    default = _training_program(config)
    attention_kept = _training_program(config, RuntimeConfig(recompute_attention=False))
    assert (attention_kept != default) == (name == "galr")
    # Under remat GALR's attention is not recomputed a second time, so an ignored remat
    # would give the attention-kept program.
    remat = _training_program(config, RuntimeConfig(remat=True))
    assert remat != default and remat != attention_kept


def _assert_same_arrays(got, expected):
    """Same tree structure, and leaves equal in dtype, shape and every value."""
    assert jax.tree.structure(got) == jax.tree.structure(expected)
    for g, e in zip(jax.tree.leaves(got), jax.tree.leaves(expected)):
        assert g.dtype == e.dtype and g.shape == e.shape
        np.testing.assert_array_equal(np.asarray(g, np.float32), np.asarray(e, np.float32))


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("unroll", [1, 3])
def test_scan_into_own_buffers_matches_lax_scan(reverse, unroll):
    def step(carry, x_t):
        a, b = x_t
        carry = jnp.tanh(carry + a) * b[:, :1]
        return carry, (carry, a * 2.0, b.astype(jnp.bfloat16))

    xs = (jax.random.normal(jax.random.PRNGKey(5), (7, 3, 4)),
          jax.random.normal(jax.random.PRNGKey(6), (7, 3, 2)))
    init = jnp.ones((3, 4))
    anchor = jnp.full((8,), jnp.nan)  # the tie's value never reaches the outputs
    expected = jax.lax.scan(step, init, xs, reverse=reverse, unroll=unroll)
    got = jax.jit(lambda init, xs, anchor: scan_into_own_buffers(
        step, init, xs, anchor, reverse=reverse, unroll=unroll))(init, xs, anchor)
    _assert_same_arrays(got, expected)


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("unroll", [1, 3])
def test_scan_in_place_matches_lax_scan(reverse, unroll):
    def step(carry, x_t, slices):
        gates, cells = slices
        carry = jnp.tanh(carry + x_t) * gates[:, :1]
        return carry, (gates * carry[:, :1], (cells + carry[:, :2]).astype(cells.dtype))

    xs = jax.random.normal(jax.random.PRNGKey(5), (7, 3, 4))
    buffers = (jax.random.normal(jax.random.PRNGKey(6), (7, 3, 8)),
               jax.random.normal(jax.random.PRNGKey(7), (7, 3, 2)).astype(jnp.bfloat16))
    init = jnp.ones((3, 4))
    expected = jax.lax.scan(lambda c, per_step: step(c, per_step[0], per_step[1:]), init,
                            (xs, *buffers), reverse=reverse, unroll=unroll)
    got = jax.jit(lambda init, xs, buffers: scan_in_place(
        step, init, xs, buffers, reverse=reverse, unroll=unroll))(init, xs, buffers)
    _assert_same_arrays(got, expected)


class _StackedGloballyAttentive(nn.Module):
    layers: int
    recompute_attention: bool
    dropout: float = 0.0

    @nn.compact
    def __call__(self, x):
        for layer in range(self.layers):
            x = GloballyAttentive(4, 8, self.dropout, True, 1e-5,
                                  recompute_attention=self.recompute_attention,
                                  name=f"attend_{layer}")(x, train=True)
        return x


def _value_and_grads(module, variables, x, weights, **apply_kwargs):
    def loss(v, x):
        return jnp.sum(module.apply(v, x, **apply_kwargs) * weights)
    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))(variables, x)


def test_recomputed_attention_gives_the_same_values_and_gradients():
    x = jax.random.normal(jax.random.PRNGKey(3), (2, 9, 20, 16))
    weights = jax.random.normal(jax.random.PRNGKey(4), x.shape)
    kept, recomputed = (_StackedGloballyAttentive(2, flag) for flag in (False, True))
    variables = kept.init(jax.random.PRNGKey(0), x)
    assert (jax.tree.structure(jax.eval_shape(recomputed.init, jax.random.PRNGKey(0), x))
            == jax.tree.structure(variables))
    (value, grads), (expected_value, expected_grads) = (
        _value_and_grads(m, variables, x, weights) for m in (recomputed, kept))
    np.testing.assert_allclose(value, expected_value, rtol=1e-6)
    largest = max(np.max(np.abs(g)) for g in jax.tree.leaves(expected_grads))
    for got, expected in zip(jax.tree.leaves(grads), jax.tree.leaves(expected_grads)):
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6 * largest)


def test_recomputed_attention_backward_uses_the_forward_dropout_masks():
    # The gradient must belong to the function the forward pass computed: along a random
    # direction it matches that function's central difference. Recomputed with other
    # masks, it would match another function's.
    x = jax.random.normal(jax.random.PRNGKey(3), (2, 9, 20, 16))
    weights = jax.random.normal(jax.random.PRNGKey(4), x.shape)
    direction = jax.random.normal(jax.random.PRNGKey(5), x.shape)
    model = _StackedGloballyAttentive(2, True, dropout=0.5)
    variables = model.init(jax.random.PRNGKey(0), x)

    def loss(x, key):
        return float(jnp.sum(model.apply(variables, x, rngs={"dropout": key}) * weights))

    key = jax.random.PRNGKey(1)
    _, (_, grad_x) = _value_and_grads(model, variables, x, weights, rngs={"dropout": key})
    step = 1e-2
    difference = (loss(x + step * direction, key) - loss(x - step * direction, key)) / (2 * step)
    derivative = float(jnp.sum(grad_x * direction))
    assert derivative == pytest.approx(difference, rel=1e-2), (derivative, difference)
    assert loss(x, jax.random.PRNGKey(2)) != pytest.approx(loss(x, key), rel=1e-3)  # dropout on


class _ExpandAndNormalise(nn.Module):
    recompute: bool

    @nn.compact
    def __call__(self, x):
        modules = (SegmentLengthMap(20, name="expand"), GlobalLayerNorm(1e-5, name="norm"))
        if self.recompute:
            return apply_recomputed(x, *modules)
        for module in modules:
            x = module(x)
        return x


def test_apply_recomputed_matches_applying_the_modules():
    x = jax.random.normal(jax.random.PRNGKey(3), (2, 9, 4, 16))
    weights = jax.random.normal(jax.random.PRNGKey(4), (2, 9, 20, 16))
    direct, recomputed = _ExpandAndNormalise(False), _ExpandAndNormalise(True)
    variables = jax.tree.map(lambda v: v + jax.random.uniform(jax.random.PRNGKey(5), v.shape),
                             direct.init(jax.random.PRNGKey(0), x))
    assert (jax.tree.structure(jax.eval_shape(recomputed.init, jax.random.PRNGKey(0), x))
            == jax.tree.structure(variables))
    (value, grads), (expected_value, expected_grads) = (
        _value_and_grads(m, variables, x, weights) for m in (recomputed, direct))
    np.testing.assert_allclose(value, expected_value, rtol=1e-6)
    for got, expected in zip(jax.tree.leaves(grads), jax.tree.leaves(expected_grads)):
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", list(SMALL))
def test_examples_of_a_batch_do_not_interact(name):
    _, variables, separate = initialised(name)
    mixture = random_mixture(3, 801)
    changed = mixture.copy()
    changed[0] = 10 * random_mixture(1, 801, seed=5)[0]
    changed[2] = 0
    together, after_change = separate(variables, mixture), separate(variables, changed)
    np.testing.assert_allclose(after_change[1], together[1], rtol=1e-5, atol=1e-6)
    assert relative_error(after_change[0], together[0]) > 1e-2


@pytest.mark.parametrize("name, torch_total", [
    ("galr_1.5m.yaml", 1_461_145),
    ("galr_2.3m.yaml", 2_328_601),
    ("dprnn.yaml", 2_609_857),
])
def test_parameter_counts_match_the_spec(name, torch_total):
    flax_total, torch_convention, rows = count_params(load_config(CONFIGS / name))
    assert torch_convention == torch_total
    lstms = 6 * (2 if name.startswith("dprnn") else 1)
    assert flax_total == torch_total - lstms * 2 * 4 * 128  # one [2, 4H] bias less per BiLSTM
    assert sum(r[1] for r in rows) == flax_total and sum(r[2] for r in rows) == torch_convention
    names = [r[0] for r in rows]
    assert names[0] == "encoder" and names[-2:] == ["mask_head", "decoder"]
    parts = ("intra", "inter") if name.startswith("dprnn") else ("locally_recurrent",
                                                                   "globally_attentive")
    assert [n for n in names if n.startswith("blocks_5/")] == [f"blocks_5/{p}" for p in parts]


def test_summary_cli_cross_checks_torch_and_prints_the_totals_last(capsys):
    config = str(CONFIGS / "galr_1.5m.yaml")
    assert summary.main(["--config", config, "--set", "model.num_filters=128",
                         "model.features=128", "--torch"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].split() == ["module", "params", "params_torch"]
    assert lines[-3:] == ["torch_reference_params 2328601",
                          "total_params_torch_convention 2328601", "total_params 2322457"]
    assert summary.main(["--config", config, "--set", "model.num_heads=7"]) == 2
    assert "model.num_heads" in capsys.readouterr().err


@pytest.mark.parametrize("overrides, key", [
    (["model.featurs=64"], "model.featurs"),
    (["model.hidden=big"], "model.hidden"),
    (["model.num_heads=5"], "model.num_heads"),
    (["model.segment_length=99"], "model.segment_length"),
    (["model.window=15"], "model.window"),
])
def test_config_errors_name_the_key(overrides, key):
    with pytest.raises(ConfigError, match=rf"galr_1\.5m\.yaml: {re.escape(key)}\b"):
        load_config(CONFIGS / "galr_1.5m.yaml", overrides)


def test_global_layer_norm_statistics_and_gradients_match_the_definition():
    """gLN's matrix-vector statistics and hand-written backward against the textbook form
    (mean and biased variance over all non-batch axes), differentiated by JAX."""
    rng = np.random.default_rng(0)
    x = jnp.asarray(3 * rng.standard_normal((3, 41, 50, 16)) + 1, jnp.float32)
    scale, bias, cotangent = (jnp.asarray(rng.standard_normal(shape), jnp.float32)
                              for shape in ((16,), (16,), x.shape))
    norm = GlobalLayerNorm(1e-5)

    def ours(x, scale, bias):
        return norm.apply({"params": {"scale": scale, "bias": bias}}, x)

    def textbook(x, scale, bias):
        axes = (1, 2, 3)
        centred = x - jnp.mean(x, axes, keepdims=True)
        variance = jnp.mean(centred ** 2, axes, keepdims=True)
        return centred / jnp.sqrt(variance + 1e-5) * scale + bias

    exact = np.asarray(x, np.float64)
    exact = exact - exact.mean((1, 2, 3), keepdims=True)
    exact = exact / np.sqrt((exact ** 2).mean((1, 2, 3), keepdims=True) + 1e-5)
    exact = exact * np.asarray(scale) + np.asarray(bias)
    assert np.abs(np.asarray(ours(x, scale, bias)) - exact).max() < 1e-5
    gradients = [jax.grad(lambda *a, f=f: jnp.sum(f(*a) * cotangent), argnums=(0, 1, 2))(
        x, scale, bias) for f in (ours, textbook)]
    for name, a, b in zip(("x", "scale", "bias"), *gradients):
        assert float(jnp.abs(a - b).max()) <= 1e-5 * float(jnp.abs(b).max()), name
    half = ours(x.astype(jnp.bfloat16), scale, bias)
    assert half.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(half, np.float32), exact, atol=0.05)


def test_layer_norm_matches_flax_layer_norm_values_and_gradients():
    """The token LayerNorm (product statistics, hand-written backward) against Flax's
    ``nn.LayerNorm(use_fast_variance=False)``: same parameters, same values, same
    gradients; bf16 input gives bf16 output close to the float32 result."""
    rng = np.random.default_rng(1)
    x = jnp.asarray(3 * rng.standard_normal((3, 7, 41, 16)) + 1, jnp.float32)
    cotangent = jnp.asarray(rng.standard_normal(x.shape), jnp.float32)
    ours, flax_norm = LayerNorm(1e-5), nn.LayerNorm(epsilon=1e-5, use_fast_variance=False)
    variables = flax_norm.init(jax.random.PRNGKey(0), x)
    assert (jax.tree.map(jnp.shape, ours.init(jax.random.PRNGKey(0), x))
            == jax.tree.map(jnp.shape, variables))
    variables = jax.tree.map(
        lambda p: p + jnp.asarray(rng.standard_normal(p.shape), jnp.float32), variables)
    np.testing.assert_allclose(ours.apply(variables, x), flax_norm.apply(variables, x),
                               atol=2e-6)
    gradients = [jax.grad(lambda v, x, m=m: jnp.sum(m.apply(v, x) * cotangent),
                          argnums=(0, 1))(variables, x) for m in (ours, flax_norm)]
    for a, b in zip(*(jax.tree.leaves(g) for g in gradients)):
        assert float(jnp.abs(a - b).max()) <= 1e-5 * float(jnp.abs(b).max())
    half = LayerNorm(1e-5, jnp.bfloat16).apply(variables, x)
    assert half.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(half, np.float32), flax_norm.apply(variables, x),
                               atol=0.05)


def test_dense_is_flax_dense_with_a_float32_bias_gradient():
    """``Dense`` initialises and computes as ``flax.linen.Dense``; ``add_bias``'s gradient
    (summed in float32 over the axes the bias does not span) matches autodiff of the
    broadcast sum, for a bias on the last axis and one spanning several axes."""
    rng = np.random.default_rng(2)
    x = jnp.asarray(rng.standard_normal((5, 13, 24)), jnp.float32)
    ours, flax_dense = Dense(7), nn.Dense(7)
    variables = ours.init(jax.random.PRNGKey(3), x)
    reference = flax_dense.init(jax.random.PRNGKey(3), x)
    for a, b in zip(jax.tree.leaves(variables), jax.tree.leaves(reference)):
        np.testing.assert_array_equal(a, b)
    variables = jax.tree.map(
        lambda p: p + jnp.asarray(rng.standard_normal(p.shape), jnp.float32), variables)
    np.testing.assert_allclose(ours.apply(variables, x), flax_dense.apply(variables, x),
                               rtol=1e-6, atol=1e-6)
    assert Dense(7, dtype=jnp.bfloat16).apply(variables, x).dtype == jnp.bfloat16

    y = jnp.asarray(rng.standard_normal((3, 4, 6, 5, 2)), jnp.float32)
    bias = jnp.asarray(rng.standard_normal((3, 5, 2)), jnp.float32)
    cotangent = jnp.asarray(rng.standard_normal(y.shape), jnp.float32)
    grads = [jax.grad(lambda y, b, f=f: jnp.sum(f(y, b) * cotangent), argnums=(0, 1))(y, bias)
             for f in (lambda y, b: add_bias(y, b, (0, -2, -1)),
                       lambda y, b: y + b[:, None, None])]
    for a, b in zip(*grads):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)
    half = add_bias(y.astype(jnp.bfloat16), bias, (0, 3, 4))
    assert half.dtype == jnp.bfloat16
    d_bias = jax.grad(lambda b: jnp.sum(add_bias(y.astype(jnp.bfloat16), b, (0, 3, 4))))(bias)
    assert d_bias.dtype == jnp.float32
    np.testing.assert_array_equal(d_bias, np.full(bias.shape, 4 * 6))
