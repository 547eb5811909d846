"""Tests of the torch <-> Flax weight converter (galr_jax/interop/convert.py)."""

import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from galr_jax.config import config_from_dict, load_config
from galr_jax.interop.convert import (ConversionError, expected_flax_shapes, expected_torch_shapes,
                                      flax_to_torch, torch_to_flax)
from galr_jax.interop.torch_reference import build_torch_model
from galr_jax.models import build_model

# XLA and torch's intra-op pool would otherwise compete for the two CI cores.
torch.set_num_threads(1)

CONFIGS = pathlib.Path(__file__).resolve().parents[1] / "configs"
SMALL_GALR = {"separator": "galr", "window": 16, "num_filters": 16, "features": 16,
              "hidden": 8, "segment_length": 20, "low_dim": 4, "num_blocks": 2,
              "num_heads": 4}
SMALL_DPRNN = {"separator": "dprnn", "window": 16, "num_filters": 16, "features": 8,
               "hidden": 8, "segment_length": 20, "num_blocks": 2, "norm_eps": 1e-8}
SMALL = {"galr": SMALL_GALR, "galr_full_length": {**SMALL_GALR, "low_dim": None},
         "dprnn": SMALL_DPRNN}


def model_config(name):
    return config_from_dict({"model": SMALL[name]}).model


def random_state_dict(config, seed=0):
    """A state_dict with every entry random (non-zero bias_hh included)."""
    torch.manual_seed(seed)
    state = build_torch_model(config).state_dict()
    return {k: torch.randn_like(v) for k, v in state.items()}


def assert_trees_equal(a, b):
    leaves_a, tree_a = jax.tree_util.tree_flatten(a)
    leaves_b, tree_b = jax.tree_util.tree_flatten(b)
    assert tree_a == tree_b
    for x, y in zip(leaves_a, leaves_b):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.mark.parametrize("name", list(SMALL))
def test_torch_flax_torch_is_exact_when_bias_hh_is_zero(name):
    config = model_config(name)
    state = random_state_dict(config)
    for key in [k for k in state if ".bias_hh_" in k]:
        state[key] = torch.zeros_like(state[key])
    back = flax_to_torch(torch_to_flax(state, config), config)
    assert list(back) == list(expected_torch_shapes(config))  # state_dict order
    for key, value in state.items():
        assert back[key].dtype == torch.float32
        assert torch.equal(back[key], value), key


@pytest.mark.parametrize("name", list(SMALL))
def test_general_state_dict_round_trips_to_the_same_function(name):
    config = model_config(name)
    state = random_state_dict(config)
    variables = torch_to_flax(state, config)
    back = flax_to_torch(variables, config)
    assert_trees_equal(torch_to_flax(back, config), variables)  # exact
    for key in [k for k in back if ".bias_hh_" in k]:
        assert not back[key].any(), f"{key}: the merged bias belongs in bias_ih"
        merged = state[key] + state[key.replace("bias_hh", "bias_ih")]
        torch.testing.assert_close(back[key.replace("bias_hh", "bias_ih")], merged,
                                   rtol=0, atol=0)

    original, converted = build_torch_model(config).eval(), build_torch_model(config).eval()
    original.load_state_dict(state)
    converted.load_state_dict(back)  # strict: every key present, none extra
    mixture = torch.randn(2, 700)
    with torch.no_grad():
        torch.testing.assert_close(converted(mixture), original(mixture), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["galr", "dprnn"])
def test_flax_torch_flax_is_exact_and_shapes_fit_the_flax_model(name):
    config = model_config(name)
    shapes = jax.eval_shape(build_model(config).init, jax.random.PRNGKey(0), jnp.zeros((1, 400)))
    rng = np.random.default_rng(0)
    variables = jax.tree.map(lambda s: jnp.asarray(rng.standard_normal(s.shape), s.dtype), shapes)
    converted = torch_to_flax(flax_to_torch(variables, config), config)
    assert_trees_equal(converted, jax.tree.map(np.asarray, variables))
    for path, leaf in jax.tree_util.tree_leaves_with_path(converted):
        assert isinstance(leaf, np.ndarray) and leaf.dtype == np.float32, path
    flat_shapes = {jax.tree_util.keystr(p): leaf.shape
                   for p, leaf in jax.tree_util.tree_leaves_with_path(converted["params"])}
    assert sorted(flat_shapes.values()) == sorted(expected_flax_shapes(config).values())


def test_lower_precision_weights_are_converted_to_float32():
    config = model_config("galr")
    state = {k: v.to(torch.bfloat16) for k, v in random_state_dict(config).items()}
    variables = torch_to_flax(state, config)
    assert {leaf.dtype for leaf in jax.tree.leaves(variables)} == {np.dtype(np.float32)}
    np.testing.assert_array_equal(variables["params"]["encoder"]["kernel"],
                                  state["encoder.conv.weight"].float()[:, 0].T.numpy())


def test_missing_key_is_named():
    config = model_config("galr")
    state = random_state_dict(config)
    del state["blocks.1.locally_recurrent.h0"]
    with pytest.raises(ConversionError, match=r"missing key 'blocks\.1\.locally_recurrent\.h0'"):
        torch_to_flax(state, config)


def test_extra_key_is_named():
    config = model_config("galr")
    state = random_state_dict(config)
    state["blocks.0.globally_attentive.gate.weight"] = torch.zeros(3)
    with pytest.raises(ConversionError,
                       match=r"unexpected key 'blocks\.0\.globally_attentive\.gate\.weight'"):
        torch_to_flax(state, config)


def test_wrong_shape_is_named_with_both_shapes():
    config = model_config("dprnn")
    state = random_state_dict(config)
    state["blocks.1.inter.lstm.weight_hh_l0"] = torch.zeros(32, 9)
    with pytest.raises(ConversionError, match=r"'blocks\.1\.inter\.lstm\.weight_hh_l0' has shape "
                                              r"\(32, 9\), expected \(32, 8\)"):
        torch_to_flax(state, config)


def test_state_dict_of_another_config_is_rejected_before_converting():
    large = build_torch_model(load_config(CONFIGS / "galr_2.3m.yaml")).state_dict()
    small_config = load_config(CONFIGS / "galr_1.5m.yaml")
    with pytest.raises(ConversionError, match=r"'encoder\.conv\.weight' has shape \(128, 1, 16\), "
                                              r"expected \(64, 1, 16\)"):
        torch_to_flax(large, small_config)
    galr = random_state_dict(model_config("galr"))
    with pytest.raises(ConversionError, match=r"missing key 'input_norm\.weight'"):
        torch_to_flax(galr, model_config("dprnn"))
    with pytest.raises(ConversionError, match=r"missing key '.*to_low_dim\.weight'"):
        torch_to_flax(random_state_dict(model_config("galr_full_length")), model_config("galr"))


def test_flax_side_errors_name_the_parameter_path():
    config = model_config("galr")
    params = torch_to_flax(random_state_dict(config), config)["params"]
    with pytest.raises(ConversionError, match="no 'params' collection"):
        flax_to_torch(params, config)

    missing = jax.tree.map(lambda x: x, params)
    del missing["blocks_1"]["globally_attentive"]["attention"]["out"]["bias"]
    path = "params/blocks_1/globally_attentive/attention/out/bias"
    with pytest.raises(ConversionError, match=f"missing key '{path}'"):
        flax_to_torch({"params": missing}, config)

    extra = {**params, "extra": {"kernel": np.zeros(2, np.float32)}}
    with pytest.raises(ConversionError, match=r"unexpected key 'params/extra/kernel'"):
        flax_to_torch({"params": extra}, config)

    wrong = jax.tree.map(lambda x: x, params)
    wrong["blocks_0"]["locally_recurrent"]["lstm"]["bias"] = np.zeros((2, 31), np.float32)
    with pytest.raises(ConversionError, match=r"'params/blocks_0/locally_recurrent/lstm/bias' has "
                                              r"shape \(2, 31\), expected \(2, 32\)"):
        flax_to_torch({"params": wrong}, config)


def test_non_float_weights_are_rejected():
    config = model_config("galr")
    state = random_state_dict(config)
    state["decoder.conv.weight"] = torch.zeros(16, 1, 16, dtype=torch.int32)
    with pytest.raises(ConversionError, match=r"decoder\.conv\.weight: expected floating-point"):
        torch_to_flax(state, config)
