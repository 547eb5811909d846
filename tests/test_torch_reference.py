"""Tests of the PyTorch reference model (galr_jax/interop/torch_reference.py) against the spec."""

import math
import pathlib

import pytest
import torch
from torch.nn import functional as F

from galr_jax.config import ModelConfig, config_from_dict, load_config
from galr_jax.interop.torch_reference import (DPRNNBlock, GloballyAttentive, MaskHead,
                                              RecurrentPath, build_torch_model, count_parameters,
                                              hop_padding, overlap_add, pad_for_windows,
                                              parameter_breakdown, segment,
                                              sinusoidal_positional_encoding)

CONFIGS = pathlib.Path(__file__).resolve().parents[1] / "configs"

# Small models that keep every test fast on two CPU cores. One segment of the GALR
# config spans K/2 * L/2 = 80 samples of hop, 160 samples in all.
SMALL_GALR = {"separator": "galr", "window": 16, "num_filters": 16, "features": 16,
              "hidden": 8, "segment_length": 20, "low_dim": 4, "num_blocks": 2,
              "num_heads": 4, "attention_dropout": 0.1}
SMALL_DPRNN = {"separator": "dprnn", "window": 16, "num_filters": 16, "features": 8,
               "hidden": 8, "segment_length": 20, "num_blocks": 2, "norm_eps": 1e-8}
SAMPLES_BELOW_ONE_SEGMENT = 100


def small_model_config(base: dict, **changes) -> ModelConfig:
    return config_from_dict({"model": {**base, **changes}}).model


def small_models():
    return {
        "galr": small_model_config(SMALL_GALR),
        "galr_full_length": small_model_config(SMALL_GALR, low_dim=None),
        "galr_author_residual_sigmoid": small_model_config(
            SMALL_GALR, attention_residual=False, mask_nonlinearity="sigmoid"),
        "dprnn": small_model_config(SMALL_DPRNN),
    }


@pytest.mark.parametrize("name, expected", [
    ("galr_1.5m.yaml", 1_461_145),
    ("galr_2.3m.yaml", 2_328_601),
    ("dprnn.yaml", 2_609_857),
])
def test_parameter_counts_match_spec(name, expected):
    model = build_torch_model(load_config(CONFIGS / name))
    assert count_parameters(model) == expected
    breakdown = parameter_breakdown(model)
    assert sum(breakdown.values()) == expected
    top = ["encoder", "bottleneck", "blocks", "mask_head", "decoder"]
    if name.startswith("dprnn"):
        top.insert(1, "input_norm")
    assert list(breakdown) == top


def test_state_dict_names_are_the_converter_names():
    galr = build_torch_model(small_model_config(SMALL_GALR)).state_dict()
    assert galr["encoder.conv.weight"].shape == (16, 1, 16)
    assert galr["bottleneck.weight"].shape == (16, 16, 1)
    assert "bottleneck.bias" not in galr and "input_norm.weight" not in galr
    local = "blocks.1.locally_recurrent."
    assert galr[local + "h0"].shape == galr[local + "c0"].shape == (8,)
    assert galr[local + "lstm.weight_ih_l0_reverse"].shape == (32, 16)
    assert galr[local + "proj.weight"].shape == (16, 16)
    assert galr[local + "norm.weight"].shape == (16,)
    attentive = "blocks.1.globally_attentive."
    assert galr[attentive + "to_low_dim.weight"].shape == (4, 20)
    assert galr[attentive + "from_low_dim.weight"].shape == (20, 4)
    assert galr[attentive + "attention.in_proj_weight"].shape == (48, 16)
    for name in ("norm_in", "norm_out", "norm", "attention.out_proj"):
        assert attentive + name + ".bias" in galr
    assert galr["mask_head.prelu.weight"].shape == (1,)
    assert galr["mask_head.to_sources.weight"].shape == (32, 16, 1)
    for name in ("gate_tanh", "gate_sigmoid"):
        assert galr[f"mask_head.{name}.weight"].shape == (16, 16, 1)
    assert galr["mask_head.to_filters.weight"].shape == (16, 16, 1)
    assert "mask_head.to_filters.bias" not in galr
    assert galr["decoder.conv.weight"].shape == (16, 1, 16)

    full_length = build_torch_model(small_model_config(SMALL_GALR, low_dim=None)).state_dict()
    assert not any("low_dim" in key for key in full_length)

    dprnn = build_torch_model(small_model_config(SMALL_DPRNN)).state_dict()
    assert dprnn["input_norm.weight"].shape == (16,)
    assert dprnn["bottleneck.bias"].shape == (8,)
    for path in ("intra", "inter"):
        assert dprnn[f"blocks.0.{path}.lstm.weight_hh_l0"].shape == (32, 8)
        assert dprnn[f"blocks.0.{path}.proj.weight"].shape == (8, 16)
        assert dprnn[f"blocks.0.{path}.norm.bias"].shape == (8,)
    assert not any(key.endswith(("h0", "c0")) for key in dprnn)


@pytest.mark.parametrize("name", list(small_models()))
def test_output_is_batch_by_sources_by_time_for_any_length(name):
    torch.manual_seed(0)
    model = build_torch_model(small_models()[name]).eval()
    with torch.no_grad():
        for num_samples in (1, 7, SAMPLES_BELOW_ONE_SEGMENT, 1234, 8000):
            out = model(torch.randn(2, num_samples))
            assert out.shape == (2, 2, num_samples)
            assert out.dtype == torch.float32
            assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", ["galr", "dprnn"])
def test_examples_of_a_batch_do_not_interact(name):
    torch.manual_seed(0)
    model = build_torch_model(small_models()[name]).eval()
    mixture = torch.randn(3, 700)
    with torch.no_grad():
        together = model(mixture)
        alone = model(mixture[1:2])
    torch.testing.assert_close(together[1:2], alone, rtol=1e-5, atol=1e-6)


def test_eval_is_deterministic_and_train_applies_dropout():
    torch.manual_seed(0)
    model = build_torch_model(small_model_config(SMALL_GALR, attention_dropout=0.5))
    mixture = torch.randn(2, 900)
    with torch.no_grad():
        model.eval()
        torch.testing.assert_close(model(mixture), model(mixture), rtol=0, atol=0)
        model.train()
        assert not torch.allclose(model(mixture), model(mixture))


@pytest.mark.parametrize("num_frames", [1, 2, 9, 10, 11, 49, 50, 51, 100])
@pytest.mark.parametrize("segment_length", [2, 4, 10, 20])
def test_overlap_add_of_segments_is_twice_the_frames(num_frames, segment_length):
    frames = torch.randn(2, num_frames, 3)
    segments = segment(frames, segment_length)
    assert segments.shape[0] == 2 and segments.shape[2:] == (segment_length, 3)
    torch.testing.assert_close(overlap_add(segments, num_frames), 2 * frames, rtol=0, atol=0)
    # Segment s starts K/2 * s padded frames in, after K/2 frames of left padding.
    half = segment_length // 2
    index = torch.arange(1, num_frames + 1, dtype=torch.float32)[None, :, None]
    starts = segment(index, segment_length)[0, :, 0, 0]
    expected = torch.arange(segments.shape[1]) * half - half + 1
    is_real = (expected >= 1) & (expected <= num_frames)
    torch.testing.assert_close(starts, torch.where(is_real, expected, 0).float())


@pytest.mark.parametrize("num_samples", [1, 7, 8, 9, 16, 17, 100, 1234])
@pytest.mark.parametrize("window", [2, 16])
def test_every_real_sample_lies_in_exactly_two_frames(num_samples, window):
    assert hop_padding(num_samples, window) == (
        window - (window // 2 + num_samples % window) % window)
    real = pad_for_windows(torch.ones(1, num_samples), window, dim=1)
    assert real.shape[1] % (window // 2) == 0
    coverage = torch.zeros_like(real)
    for start in range(0, real.shape[1] - window + 1, window // 2):
        coverage[:, start:start + window] += 1
    assert (coverage[real > 0] == 2).all()
    left_pad = window // 2
    assert (real[:, left_pad:left_pad + num_samples] == 1).all()


def test_positional_encoding_is_the_standard_sinusoid():
    features = 16
    encoding = sinusoidal_positional_encoding(7, features)
    assert encoding.shape == (7, features)
    for s in (0, 3, 6):
        for i in (0, 2, 7):
            angle = s / 10000 ** (2 * i / features)
            assert encoding[s, 2 * i].item() == pytest.approx(math.sin(angle), abs=1e-7)
            assert encoding[s, 2 * i + 1].item() == pytest.approx(math.cos(angle), abs=1e-7)


def naive_global_layer_norm(x, norm):
    """gLN over (S, K, D) per example of a channels-last [B, S, K, D] tensor."""
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    var = ((x - mean) ** 2).mean(dim=(1, 2, 3), keepdim=True)
    return (x - mean) / torch.sqrt(var + norm.eps) * norm.weight + norm.bias


def naive_globally_attentive(x, module, num_heads):
    """The spec's sec. 2 steps 1-8 written with einsums, independent of the module's reshapes."""
    _, segments, _, features = x.shape
    if module.to_low_dim is None:
        low = x
    else:
        low = torch.einsum("bskd,qk->bsqd", x, module.to_low_dim.weight)
        low = low + module.to_low_dim.bias[:, None]
    tokens = F.layer_norm(low, (features,), module.norm_in.weight, module.norm_in.bias,
                          module.norm_in.eps)
    tokens = tokens + sinusoidal_positional_encoding(segments, features)[:, None]
    attention = module.attention
    head = features // num_heads
    q, k, v = (torch.einsum("bsqd,ed->bsqe", tokens, w) + b for w, b in zip(
        attention.in_proj_weight.chunk(3), attention.in_proj_bias.chunk(3)))
    q, k, v = (t.reshape(*t.shape[:3], num_heads, head) for t in (q, k, v))
    weights = torch.softmax(torch.einsum("bsqhe,btqhe->bqhst", q, k) / math.sqrt(head), dim=-1)
    mixed = torch.einsum("bqhst,btqhe->bsqhe", weights, v).reshape(tokens.shape)
    attended = mixed @ attention.out_proj.weight.T + attention.out_proj.bias
    residual = tokens if module.attention_residual else attended
    y = F.layer_norm(residual + attended, (features,), module.norm_out.weight,
                     module.norm_out.bias, module.norm_out.eps)
    if module.from_low_dim is not None:
        y = torch.einsum("bsqd,kq->bskd", y, module.from_low_dim.weight)
        y = y + module.from_low_dim.bias[:, None]
    return x + naive_global_layer_norm(y, module.norm)


@pytest.mark.parametrize("low_dim", [4, None])
@pytest.mark.parametrize("attention_residual", [True, False])
def test_globally_attentive_matches_naive_einsum_version(low_dim, attention_residual):
    torch.manual_seed(0)
    config = small_model_config(SMALL_GALR, low_dim=low_dim, attention_residual=attention_residual)
    module = GloballyAttentive(config).eval()
    with torch.no_grad():
        for parameter in module.parameters():  # make the affine norms non-trivial
            parameter.add_(0.1 * torch.randn_like(parameter))
        x = torch.randn(2, 5, config.segment_length, config.features)
        torch.testing.assert_close(module(x), naive_globally_attentive(x, module, config.num_heads),
                                   rtol=1e-4, atol=1e-5)


def test_recurrent_paths_run_each_sequence_from_the_right_state():
    torch.manual_seed(0)
    features, hidden, segments, length = 6, 5, 4, 7
    local = RecurrentPath(features, hidden, 1e-5, learnable_initial_state=True)
    dprnn = DPRNNBlock(small_model_config(SMALL_DPRNN, features=features, hidden=hidden))
    x = torch.randn(2, segments, length, features)
    with torch.no_grad():
        state = tuple(p.expand(2, 1, hidden) for p in (local.h0, local.c0))
        y = torch.stack([torch.stack([local.lstm(x[b, s][None], state)[0][0]
                                      for s in range(segments)]) for b in range(2)])
        expected = x + naive_global_layer_norm(local.proj(y), local.norm)
        torch.testing.assert_close(local(x), expected, rtol=1e-5, atol=1e-5)

        intra = dprnn.intra(x)
        inter = dprnn.inter
        y = torch.stack([torch.stack([inter.lstm(intra[b, :, k][None])[0][0]
                                      for k in range(length)], dim=1) for b in range(2)])
        expected = intra + naive_global_layer_norm(inter.proj(y), inter.norm)
        torch.testing.assert_close(dprnn(x), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("nonlinearity", ["relu", "sigmoid"])
def test_mask_head_channel_layout_is_source_major(nonlinearity):
    torch.manual_seed(0)
    config = small_model_config(SMALL_GALR, mask_nonlinearity=nonlinearity)
    head = MaskHead(config)
    features = config.features
    with torch.no_grad():
        # Silence source 1: channels features..2*features-1 of to_sources.
        head.to_sources.weight[features:] = 0
        head.to_sources.bias[features:] = 0
        masks = head(torch.randn(2, 6, config.segment_length, features), num_frames=50)
    assert masks.shape == (2, 2, config.num_filters, 50)
    assert (masks >= 0).all()
    if nonlinearity == "sigmoid":
        assert (masks <= 1).all()
    # A silenced source gives the same mask in every frame; a live one does not.
    torch.testing.assert_close(masks[:, 1], masks[:, 1, :, :1].expand_as(masks[:, 1]))
    assert masks[:, 0].std(dim=-1).mean() > 1e-3


@pytest.mark.parametrize("name", ["galr", "dprnn"])
def test_gradients_reach_every_parameter(name):
    torch.manual_seed(0)
    model = build_torch_model(small_models()[name]).train()
    out = model(torch.randn(2, 600))
    (out * torch.randn_like(out)).sum().backward()
    for key, parameter in model.named_parameters():
        assert parameter.grad is not None, key
        assert torch.isfinite(parameter.grad).all(), key
        assert parameter.grad.abs().sum() > 0, key


def test_build_accepts_full_config_or_model_section_only():
    config = config_from_dict({"model": SMALL_GALR})
    assert count_parameters(build_torch_model(config)) == count_parameters(
        build_torch_model(config.model))
    with pytest.raises(TypeError, match="Config or ModelConfig"):
        build_torch_model({"model": SMALL_GALR})
    with pytest.raises(ValueError, match=r"\[batch, time\]"):
        build_torch_model(config)(torch.zeros(100))
