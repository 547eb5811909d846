"""The causal GALR and its streaming separator: a stream in chunks of any size equals the
offline causal model on the whole signal, compiles its step once, keeps a constant state
with an attention window, and no output depends on input later than the stated latency."""

import functools
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from galr_jax import ConfigError
from galr_jax.config import config_from_dict
from galr_jax.inference.streaming import StreamingSeparator
from galr_jax.models import GloballyAttentive, build_model
from galr_jax.models.causal_step import StreamGeometry

# A tiny causal GALR: hop = K L / 4 = 80 samples (10 ms), latency (K + 1) L/2 - 1 = 167.
TINY = {"separator": "galr", "window": 16, "num_filters": 16, "features": 16, "hidden": 8,
        "segment_length": 20, "low_dim": 4, "num_blocks": 2, "num_heads": 4,
        "attention_dropout": 0.1, "causal": True}
WINDOWS = (0, 3)  # all past segments; the current one and the two before it
TOLERANCE = 1e-5  # float32, relative to the output's peak
SIGNAL_LENGTH = 2345  # 29.3 hops: the last segment is partial


def model_config(**changes):
    return config_from_dict({"model": {**TINY, **changes}}).model


@functools.lru_cache(maxsize=None)
def shared_variables():
    """One initialisation for every variant: causal or not, with any window, the
    parameters are the same (checked below)."""
    model = build_model(model_config())
    return jax.jit(model.init)(jax.random.PRNGKey(0), jnp.zeros((1, 400)))


@functools.lru_cache(maxsize=None)
def initialised(window, causal=True):
    """(config, variables, jitted offline apply) of the tiny model with ``window``."""
    config = model_config(attention_window=window, causal=causal)
    return config, shared_variables(), jax.jit(build_model(config).apply)


def signal(length=SIGNAL_LENGTH, seed=0):
    return np.random.default_rng(seed).standard_normal(length).astype(np.float32)


def chunk_sizes(total, seed):
    """Random chunk sizes: single samples, odd sizes, and several segments at once."""
    rng = np.random.default_rng(seed)
    sizes = []
    while sum(sizes) < total:
        sizes.append(int(rng.choice([1, 1, 3, 7, 79, 81, 333, 500])))
    return sizes


def stream(separator, samples, sizes):
    outputs, start = [], 0
    for size in sizes:
        outputs.append(separator.push(samples[start:start + size]))
        start += size
    outputs.append(separator.flush())
    return np.concatenate(outputs, axis=1)


def assert_close(actual, expected):
    assert actual.shape == expected.shape
    error = np.max(np.abs(actual - expected)) / np.max(np.abs(expected))
    assert error < TOLERANCE, error


@pytest.mark.parametrize("window", WINDOWS)
def test_a_stream_in_random_chunks_equals_the_offline_causal_model(window):
    config, variables, apply = initialised(window)
    separator = StreamingSeparator(config, variables, max_seconds=1.0)
    # 37 samples: less than one hop; with one window only (each length compiles the model).
    for seed, length in enumerate((SIGNAL_LENGTH, 37)[:2 if window else 1]):
        samples = signal(length, seed)
        offline = np.asarray(apply(variables, samples[None]))[0]
        assert_close(stream(separator, samples, chunk_sizes(length, seed)), offline)
    # Both streams, their flushes included, ran one compiled step.
    assert separator.compilations == 1


def test_each_chunk_returns_exactly_the_samples_final_so_far():
    config, variables, apply = initialised(3)
    separator = StreamingSeparator(config, variables)
    geometry = StreamGeometry.of(config)
    samples = signal()
    offline = np.asarray(apply(variables, samples[None]))[0]
    pushed = returned = 0
    for size in (1, 166, 0, 500, 80, 1):
        out = separator.push(samples[pushed:pushed + size])
        pushed += size
        np.testing.assert_allclose(out, offline[:, returned:returned + out.shape[1]],
                                   atol=TOLERANCE * np.max(np.abs(offline)))
        returned += out.shape[1]
        # Every sample whose last needed input has arrived, and no other.
        steps = pushed // geometry.hop
        assert returned == max(steps * geometry.hop - geometry.lead, 0)
        assert pushed - returned <= geometry.latency


def test_the_state_stays_constant_over_a_long_stream_with_an_attention_window():
    config, variables, _ = initialised(3)
    separator = StreamingSeparator(config, variables)
    sizes = set()
    chunk = signal(4000)  # 50 hops
    for _ in range(6):  # 300 segments, a hundred times the window
        separator.push(chunk)
        sizes.add(separator.state_bytes)
        assert separator._pending.shape[0] < separator.hop_samples
    assert len(sizes) == 1
    # Keys and values of W - 1 = 2 past segments per block, whatever the stream's length.
    assert separator._state["keys"][0].shape[-2] == 2
    assert separator.compilations == 1


def test_a_stream_longer_than_max_seconds_of_an_unbounded_window_is_refused():
    config, variables, _ = initialised(0)
    separator = StreamingSeparator(config, variables, max_seconds=0.1)
    with pytest.raises(ValueError, match="longer than max_seconds"):
        separator.push(signal(8000))


def test_no_output_depends_on_input_later_than_the_latency():
    config, variables, apply = initialised(0)
    geometry = StreamGeometry.of(config)
    samples = signal()
    # Changed from the last sample of a hop on: the output sample that waits longest for
    # it is the first one of an earlier hop, exactly `latency` samples before it.
    changed_from = 20 * geometry.hop - 1
    changed = samples.copy()
    changed[changed_from:] = signal(SIGNAL_LENGTH - changed_from, seed=7)
    before = np.asarray(apply(variables, samples[None]))[0]
    after = np.asarray(apply(variables, changed[None]))[0]
    differs = np.flatnonzero(np.any(before != after, axis=0))
    assert differs[0] == changed_from - geometry.latency
    assert geometry.latency == (TINY["segment_length"] + 1) * TINY["window"] // 2 - 1


def test_a_non_causal_model_depends_on_the_future():
    """The counterpart of the causality test: the test can fail."""
    _, variables, apply = initialised(0, causal=False)
    samples = signal()
    changed = samples.copy()
    changed[-100:] = 0.0
    before, after = (np.asarray(apply(variables, s[None]))[0] for s in (samples, changed))
    assert np.any(before[:, :100] != after[:, :100])


def test_causal_and_non_causal_models_share_one_parameter_tree():
    causal = shared_variables()
    non_causal = jax.eval_shape(build_model(model_config(causal=False)).init,
                                jax.random.PRNGKey(0), jnp.zeros((1, 400)))
    shapes = lambda v: jax.tree_util.tree_map(jnp.shape, v)  # noqa: E731
    assert shapes(causal) == shapes(non_causal)


def test_a_padded_batch_of_the_causal_model_gives_each_row_its_own_output():
    config, variables, apply = initialised(3)
    lengths = np.array([SIGNAL_LENGTH, 900])
    batch = np.zeros((2, SIGNAL_LENGTH), np.float32)
    for row, length in enumerate(lengths):
        batch[row, :length] = signal(length, seed=row)
    padded = np.asarray(apply(variables, batch, lengths=lengths))
    for row, length in enumerate(lengths):
        alone = np.asarray(apply(variables, batch[row:row + 1, :length]))[0]
        assert_close(padded[row, :, :length], alone)
        assert not np.any(padded[row, :, length:])


def test_the_recomputed_causal_attention_gives_the_same_output_and_gradient():
    """The recomputation wrapper routes the causal mask to the attention's weights."""
    x = jnp.asarray(np.random.default_rng(0).standard_normal((1, 12, 20, 16)), jnp.float32)
    results = []
    for recompute in (False, True):
        layer = GloballyAttentive(4, 4, 0.0, True, 1e-5, recompute_attention=recompute,
                                  causal=True, attention_window=3)
        variables = layer.init(jax.random.PRNGKey(0), x)
        results.append(jax.jit(jax.value_and_grad(
            lambda v, x: jnp.sum(jnp.sin(layer.apply(v, x))), argnums=(0, 1)))(variables, x))
    for a, b in zip(*(jax.tree_util.tree_leaves(r) for r in results)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    # Segment 0 attends to itself alone: later segments leave it unchanged.
    layer = GloballyAttentive(4, 4, 0.0, True, 1e-5, causal=True)
    variables = layer.init(jax.random.PRNGKey(0), x)
    np.testing.assert_allclose(layer.apply(variables, x)[:, :1],
                               layer.apply(variables, x[:, :1]), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("changes, message", [
    ({"separator": "dprnn", "low_dim": None, "norm_eps": 1e-8}, "model.causal"),
    ({"causal": False, "attention_window": 4}, "model.attention_window"),
    ({"attention_window": -1}, "model.attention_window"),
])
def test_config_errors_name_the_field(changes, message):
    with pytest.raises(ConfigError, match=message):
        model_config(**changes)


def test_the_streaming_separator_refuses_a_non_causal_model():
    config = model_config(causal=False)
    with pytest.raises(ValueError, match="causal"):
        StreamingSeparator(config, {"params": {}})


@pytest.fixture(scope="module")
def causal_checkpoint(tmp_path_factory):
    from inference_helpers import make_checkpoint, tiny_config

    config = tiny_config(model={"causal": True, "attention_window": 4})
    return config, make_checkpoint(str(tmp_path_factory.mktemp("stream") / "ckpt"), config)


def _offline(config, directory, samples):
    from galr_jax.training.checkpoints import restore_variables

    variables, _ = restore_variables(directory)
    return np.asarray(jax.jit(build_model(config).apply)(variables, samples[None]))[0]


def test_the_stream_cli_writes_the_offline_outputs_and_reports_latency_and_rtf(
        causal_checkpoint, tmp_path, capsys):
    import soundfile

    from galr_jax.inference import cli as separate

    config, directory = causal_checkpoint
    samples = 0.3 * signal(3001)
    soundfile.write(tmp_path / "mix.wav", samples, config.model.sample_rate, subtype="FLOAT")
    out = tmp_path / "out"
    argv = ["--stream", "--workdir", directory, str(tmp_path / "mix.wav"), "--out", str(out),
            "--block-ms", "7"]
    assert separate.main(argv) == 0
    report = capsys.readouterr().err
    assert "algorithmic latency 20.9 ms (167 samples)" in report  # (20 + 1) * 8 - 1
    assert "real-time factor" in report
    offline = _offline(config, directory, samples)
    for c in range(config.model.num_sources):
        written, rate = soundfile.read(out / f"mix_s{c + 1}.wav", dtype="float32")
        assert rate == config.model.sample_rate
        assert_close(written, offline[c])
    assert separate.main(argv) == 1  # outputs exist and no --force


def test_the_stream_cli_reads_raw_pcm16_from_standard_input(causal_checkpoint, tmp_path):
    import soundfile
    from inference_helpers import environment
    from subprocess_env import REPO

    config, directory = causal_checkpoint
    pcm = np.round(0.3 * signal(1500) * 32767).astype("<i2")
    done = subprocess.run(
        [sys.executable, "-m", "galr_jax.inference.cli", "--stream", "--workdir", directory, "-",
         "--out", str(tmp_path)], input=pcm.tobytes(), capture_output=True,
        env=environment(), cwd=REPO, timeout=240)
    assert done.returncode == 0, done.stderr.decode()
    offline = _offline(config, directory, pcm.astype(np.float32) / 32768)
    written, _ = soundfile.read(tmp_path / "stdin_s1.wav", dtype="float32")
    assert_close(written, offline[0])
