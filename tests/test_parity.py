"""Float32 parity of the Flax model with the PyTorch reference, module by module and end to end.

The torch model gets random weights (seeded), including everything a default init
leaves trivial: norm affines, attention biases, the PReLU slope; its LSTMs have
non-zero ``bias_hh`` and GALR's learned initial states are random. The Flax side runs
on ``torch_to_flax`` of the same state_dict, in eval mode (dropout off).
"""

import pathlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from galr_jax.config import RuntimeConfig, config_from_dict, load_config
from galr_jax.interop.convert import torch_to_flax
from galr_jax.interop.torch_reference import build_torch_model, pad_for_windows
from galr_jax.interop.torch_reference import overlap_add as torch_overlap_add
from galr_jax.interop.torch_reference import segment as torch_segment
from galr_jax.models import (BiLSTM, DPRNNBlock, Decoder, Encoder, GALRBlock, GlobalLayerNorm,
                             GloballyAttentive, LocallyRecurrent, MaskHead, build_model,
                             overlap_add, segment)
from galr_jax.models.segmentation import num_frames

# XLA and torch's intra-op pool would otherwise compete for the two CI cores.
torch.set_num_threads(1)

CONFIGS = pathlib.Path(__file__).resolve().parents[1] / "configs"
FORWARD_TOLERANCE = 1e-5  # max |flax - torch| relative to max |torch|
GRADIENT_TOLERANCE = 1e-4  # the same, per parameter tensor and for the input
BATCH = 2
# Parameters whose gradient is zero in exact arithmetic, so only rounding noise is left to
# compare: attention is invariant to a key bias (it shifts every score of a query by the
# same amount), and LayerNorm right after to_low_dim removes its bias (the same for all D
# features of a token). Both gradients must vanish relative to the largest gradient.
ZERO_GRADIENTS = ("attention']['key']['bias']", "to_low_dim']['bias']")

# Small models: one segment is K * L/2 = 160 samples, the segment hop 80, the frame hop 8.
SMALL_GALR = {"separator": "galr", "window": 16, "num_filters": 16, "features": 16,
              "hidden": 8, "segment_length": 20, "low_dim": 4, "num_blocks": 2,
              "num_heads": 4, "attention_dropout": 0.1}
SMALL_DPRNN = {"separator": "dprnn", "window": 16, "num_filters": 16, "features": 8,
               "hidden": 8, "segment_length": 20, "num_blocks": 2, "norm_eps": 1e-8}
MODELS = {
    "galr": SMALL_GALR,
    "galr_author_residual_sigmoid": {**SMALL_GALR, "attention_residual": False,
                                     "mask_nonlinearity": "sigmoid"},
    "galr_full_length": {**SMALL_GALR, "low_dim": None},
    "dprnn": SMALL_DPRNN,
}
GALR_MODELS = [name for name in MODELS if name.startswith("galr")]
# Shorter than one segment; a multiple of neither hop; a multiple of both.
LENGTHS = (100, 333, 800)


def model_config(name):
    return config_from_dict({"model": MODELS[name]}).model


def randomized_torch_model(config, seed=0):
    """The torch reference with every parameter, norms and biases included, random."""
    torch.manual_seed(seed)
    model = build_torch_model(config).eval()
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            leaf = name.rsplit(".", 1)[-1]
            if "norm" in name and leaf == "weight":
                parameter.copy_(1 + 0.3 * torch.randn_like(parameter))
            elif "bias" in leaf:  # norm and attention biases start at 0; LSTM biases too small
                parameter.add_(0.2 * torch.randn_like(parameter))
            elif "prelu" in name:
                parameter.uniform_(0.05, 0.5)
            elif leaf in ("h0", "c0"):
                parameter.copy_(torch.randn_like(parameter))
    return model


@pytest.fixture(scope="module", params=list(MODELS))
def pair(request):
    """(name, model config, torch model, Flax params) with the same random weights."""
    config = model_config(request.param)
    torch_model = randomized_torch_model(config)
    params = torch_to_flax(torch_model.state_dict(), config)["params"]
    return request.param, config, torch_model, params


def relative_error(actual, expected):
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    scale = np.max(np.abs(expected))
    return float(np.max(np.abs(actual - expected)) / scale) if scale > 0 else float(
        np.max(np.abs(actual)))


def assert_parity(actual, expected, tolerance=FORWARD_TOLERANCE, what="output"):
    error = relative_error(actual, expected)
    assert error <= tolerance, f"{what}: max |flax - torch| is {error:.2e} of the output scale"


def run_flax(module, params, *inputs, **static):
    """Applies a Flax module (jitted; ``static`` are Python-valued call arguments)."""
    apply = jax.jit(lambda p, *xs: module.apply({"params": p}, *xs, **static))
    return np.asarray(apply(params, *(jnp.asarray(x) for x in inputs)))


def run_torch(fn, *inputs):
    with torch.no_grad():
        return fn(*(torch.from_numpy(np.array(x)) for x in inputs)).numpy()  # writable copies


def random_array(*shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def num_segments(frames, segment_length):
    return segment(jnp.zeros((1, frames, 1)), segment_length).shape[1]


def galr_block(config):
    return GALRBlock(hidden=config.hidden, num_heads=config.num_heads, low_dim=config.low_dim,
                     dropout=config.attention_dropout,
                     attention_residual=config.attention_residual, norm_eps=config.norm_eps)


# ---------------------------------------------------------------------------------------
# Module by module.


@pytest.mark.parametrize("length", (1,) + LENGTHS)
def test_encoder_and_decoder(length):
    config = model_config("galr")
    torch_model = randomized_torch_model(config)
    params = torch_to_flax(torch_model.state_dict(), config)["params"]
    window = config.window
    mixture = random_array(BATCH, length)
    encoded = run_flax(Encoder(config.num_filters, window), params["encoder"], mixture)
    expected = run_torch(lambda x: torch_model.encoder(pad_for_windows(x, window, dim=1)), mixture)
    assert_parity(encoded, expected.transpose(0, 2, 1), what="encoder")

    frames = num_frames(length, window)
    masked = np.abs(random_array(BATCH, config.num_sources, frames, config.num_filters))
    decoded = run_flax(Decoder(window), params["decoder"], masked, length=length)

    def torch_decoder(x):
        flat = x.permute(0, 1, 3, 2).reshape(-1, config.num_filters, frames)
        waveform = torch_model.decoder(flat)[:, window // 2:window // 2 + length]
        return waveform.reshape(BATCH, config.num_sources, length)

    assert_parity(decoded, run_torch(torch_decoder, masked), what="decoder")


def test_input_norm_and_bottleneck(pair):
    _, config, torch_model, params = pair
    frames = np.abs(random_array(BATCH, 37, config.num_filters))
    x = frames
    if config.separator == "dprnn":
        x = run_flax(GlobalLayerNorm(config.norm_eps), params["input_norm"], frames)
        expected = run_torch(lambda f: torch_model.input_norm(f.transpose(1, 2)), frames)
        assert_parity(x, expected.transpose(0, 2, 1), what="input_norm")
    bottleneck = nn.Dense(config.features, use_bias=config.separator == "dprnn")
    expected = run_torch(lambda f: torch_model.bottleneck(f.transpose(1, 2)), x)
    assert_parity(run_flax(bottleneck, params["bottleneck"], x), expected.transpose(0, 2, 1),
                  what="bottleneck")


@pytest.mark.parametrize("segment_length", [4, 20])
@pytest.mark.parametrize("frames", [1, 9, 10, 11, 37, 40])
def test_segmentation_and_overlap_add(frames, segment_length):
    x = random_array(BATCH, frames, 3)
    segments = np.asarray(segment(jnp.asarray(x), segment_length))
    expected = run_torch(lambda t: torch_segment(t, segment_length), x)
    np.testing.assert_array_equal(segments, expected)
    merged = np.asarray(overlap_add(jnp.asarray(segments), frames))
    expected = run_torch(lambda t: torch_overlap_add(t, frames), segments)
    np.testing.assert_array_equal(merged, expected)


@pytest.mark.parametrize("steps", [1, 20])
def test_bilstm(pair, steps):
    name, config, torch_model, params = pair
    path = "locally_recurrent" if name.startswith("galr") else "intra"
    reference = getattr(torch_model.blocks[0], path)
    x = random_array(5, steps, config.features)
    learnable = reference.h0 is not None
    lstm = BiLSTM(hidden=config.hidden, learnable_initial_state=learnable)

    def torch_lstm(t):
        if not learnable:
            return reference.lstm(t)[0]
        shape = (2, t.shape[0], config.hidden)
        state = (reference.h0.expand(shape).contiguous(), reference.c0.expand(shape).contiguous())
        return reference.lstm(t, state)[0]

    batch_major = run_flax(lstm, params["blocks_0"][path]["lstm"], x)
    assert_parity(batch_major, run_torch(torch_lstm, x), what="BiLSTM")
    # The layout LocallyRecurrent asks for: the same values, steps first.
    time_major = BiLSTM(hidden=config.hidden, learnable_initial_state=learnable,
                        time_major_output=True)
    np.testing.assert_array_equal(run_flax(time_major, params["blocks_0"][path]["lstm"], x),
                                  np.swapaxes(batch_major, 0, 1))


@pytest.mark.parametrize("segments", [1, 6])
def test_recurrent_paths(pair, segments):
    name, config, torch_model, params = pair
    x = random_array(BATCH, segments, config.segment_length, config.features)
    paths = ["locally_recurrent"] if name.startswith("galr") else ["intra", "inter"]
    for path in paths:
        module = LocallyRecurrent(hidden=config.hidden, norm_eps=config.norm_eps,
                                  learnable_initial_state=name.startswith("galr"))
        expected = run_torch(getattr(torch_model.blocks[1], path), x)
        assert_parity(run_flax(module, params["blocks_1"][path], x), expected, what=path)


@pytest.mark.parametrize("segments", [1, 6])
@pytest.mark.parametrize("pair", GALR_MODELS, indirect=True)
def test_globally_attentive(pair, segments):
    _, config, torch_model, params = pair
    module = GloballyAttentive(num_heads=config.num_heads, low_dim=config.low_dim,
                               dropout=config.attention_dropout,
                               attention_residual=config.attention_residual,
                               norm_eps=config.norm_eps)
    x = random_array(BATCH, segments, config.segment_length, config.features)
    expected = run_torch(torch_model.blocks[1].globally_attentive, x)
    assert_parity(run_flax(module, params["blocks_1"]["globally_attentive"], x, train=False),
                  expected, what="globally attentive")


def test_block(pair):
    name, config, torch_model, params = pair
    if name.startswith("galr"):
        module = galr_block(config)
    else:
        module = DPRNNBlock(hidden=config.hidden, norm_eps=config.norm_eps)
    x = random_array(BATCH, 7, config.segment_length, config.features)
    assert_parity(run_flax(module, params["blocks_0"], x, train=False),
                  run_torch(torch_model.blocks[0], x), what="block")


@pytest.mark.parametrize("frames", [5, 41])
def test_mask_head(pair, frames):
    _, config, torch_model, params = pair
    head = MaskHead(config.num_sources, config.num_filters, config.mask_nonlinearity)
    x = random_array(BATCH, num_segments(frames, config.segment_length), config.segment_length,
                     config.features)
    masks = run_flax(head, params["mask_head"], x, num_frames=frames)
    expected = run_torch(lambda t: torch_model.mask_head(t, frames), x)
    assert_parity(masks, expected.transpose(0, 1, 3, 2), what="mask head")


# ---------------------------------------------------------------------------------------
# End to end: outputs and gradients.


@pytest.mark.parametrize("length", LENGTHS)
def test_end_to_end(pair, length):
    _, config, torch_model, params = pair
    mixture = random_array(BATCH, length, seed=length)
    separated = run_flax(build_model(config), params, mixture)
    assert separated.shape == (BATCH, config.num_sources, length)
    assert_parity(separated, run_torch(torch_model, mixture), what="separated")


# A padded batch: rows shorter than one segment, between hops, and at the full length;
# the padding holds noise, which the lengths must make invisible.
PADDED_LENGTHS = (100, 333, 800)


def padded_batch(seed=3):
    mixture = random_array(len(PADDED_LENGTHS), max(PADDED_LENGTHS), seed=seed)
    return mixture, np.asarray(PADDED_LENGTHS, np.int32)


def test_end_to_end_padded_batch(pair):
    """Each row of a padded batch equals the reference's exact-length run of that row."""
    check_padded_batch(pair, "tuned")


# The reference kernels (runtime.kernels): one GALR and one DPRNN, forward and gradients.
@pytest.mark.parametrize("pair", ["galr", "dprnn"], indirect=True)
def test_end_to_end_padded_batch_with_reference_kernels(pair):
    check_padded_batch(pair, "reference")


def check_padded_batch(pair, kernels):
    _, config, torch_model, params = pair
    mixture, lengths = padded_batch()
    model = build_model(config, RuntimeConfig(kernels=kernels))
    apply = jax.jit(lambda p, x, n: model.apply({"params": p}, x, lengths=n))
    separated = np.asarray(apply(params, mixture, lengths))
    with torch.no_grad():
        expected = torch_model(torch.from_numpy(mixture), torch.from_numpy(lengths)).numpy()
    for row, length in enumerate(lengths):
        assert_parity(separated[row, :, :length], expected[row, :, :length],
                      what=f"separated row {row} (length {length})")
        assert not np.any(separated[row, :, length:]), "output past the valid length"


def torch_gradients(torch_model, mixture, weights, lengths=None):
    """Gradients of sum(output * weights) w.r.t. the input and the state_dict entries."""
    torch_model.zero_grad()
    x = torch.from_numpy(mixture).requires_grad_()
    lengths = None if lengths is None else torch.from_numpy(lengths)
    (torch_model(x, lengths) * torch.from_numpy(weights)).sum().backward()
    return x.grad.numpy(), {k: p.grad for k, p in torch_model.named_parameters()}


@pytest.mark.parametrize("padded", [False, True], ids=["exact", "padded"])
def test_gradients(pair, padded):
    check_gradients(pair, padded, "tuned")


@pytest.mark.parametrize("pair", ["galr", "dprnn"], indirect=True)
def test_gradients_with_reference_kernels(pair):
    check_gradients(pair, True, "reference")


def check_gradients(pair, padded, kernels):
    _, config, torch_model, params = pair
    length = LENGTHS[1]
    mixture = random_array(BATCH, length, seed=1)
    lengths = None
    if padded:
        mixture, lengths = padded_batch(seed=1)
    weights = random_array(*mixture.shape[:1], config.num_sources, mixture.shape[1], seed=2)
    input_grad, grads = torch_gradients(torch_model, mixture, weights, lengths)

    # Flax's LSTM bias is b_ih + b_hh, so its gradient is the gradient of either one.
    for key in [k for k in grads if ".bias_hh_" in k]:
        torch.testing.assert_close(grads[key], grads[key.replace("bias_hh", "bias_ih")],
                                   rtol=1e-6, atol=0)
        grads[key] = torch.zeros_like(grads[key])
    expected = torch_to_flax(grads, config)["params"]

    model = build_model(config, RuntimeConfig(kernels=kernels))

    def loss(p, x):
        return jnp.sum(model.apply({"params": p}, x, lengths=lengths) * weights)

    flax_params_grad, flax_input_grad = jax.jit(jax.grad(loss, argnums=(0, 1)))(params, mixture)
    assert_parity(flax_input_grad, input_grad, GRADIENT_TOLERANCE, what="d loss / d mixture")
    flat_expected = dict(jax.tree_util.tree_leaves_with_path(expected))
    flat_actual = jax.tree_util.tree_leaves_with_path(flax_params_grad)
    assert len(flat_actual) == len(flat_expected)
    largest = max(np.max(np.abs(g)) for g in flat_expected.values())
    for path, actual in flat_actual:
        what = f"d loss / d {jax.tree_util.keystr(path)}"
        if what.endswith(ZERO_GRADIENTS):
            for grad in (actual, flat_expected[path]):
                assert np.max(np.abs(grad)) <= GRADIENT_TOLERANCE * largest, what
        else:
            assert_parity(actual, flat_expected[path], GRADIENT_TOLERANCE, what=what)


def test_paper_size_galr_end_to_end_on_one_second():
    config = load_config(CONFIGS / "galr_1.5m.yaml").model
    torch_model = randomized_torch_model(config)
    variables = torch_to_flax(torch_model.state_dict(), config)
    mixture = random_array(1, config.sample_rate)
    separated = np.asarray(jax.jit(build_model(config).apply)(variables, mixture))
    assert_parity(separated, run_torch(torch_model, mixture), what="galr_1.5m separated")
