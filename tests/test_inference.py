"""Chunked long-audio separation, the Separator API and its file handling."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings

import jax
import numpy as np
import pytest
import soundfile

from galr_jax.data.audio import AudioError
from galr_jax.inference import (OverlapAddStitcher, SeparationError, Separator, align_sources,
                                chunk_starts, crossfade, iter_chunks)
from galr_jax.inference.audio_io import PCM16_PEAK_DBFS, resampled_length
from galr_jax.models import build_model
from inference_helpers import (REPO, SAMPLE_RATE, environment, init_variables, make_checkpoint,
                               si_snr_db, speech_like, tiny_config, write_wav)


@pytest.fixture(scope="module")
def config():
    return tiny_config()


@pytest.fixture(scope="module")
def variables(config):
    return init_variables(config)


@pytest.fixture(scope="module")
def separator(config, variables):
    return Separator(config, variables)


# --- chunk geometry and stitching (numpy only) ---------------------------------------


@pytest.mark.parametrize("length", [1, 37, 100, 101, 163, 164, 1000, 1037])
@pytest.mark.parametrize("block", [1, 29, 100, 5000])
def test_iter_chunks_cuts_the_planned_chunks_from_any_blocks(length, block):
    chunk, overlap = 100, 25
    signal = np.random.default_rng(length).standard_normal(length).astype(np.float32)
    blocks = (signal[i:i + block] for i in range(0, length, block))
    chunks = list(iter_chunks(blocks, chunk, overlap))
    starts = chunk_starts(length, chunk, overlap)
    assert [start for start, _ in chunks] == starts
    for start, samples in chunks:
        np.testing.assert_array_equal(samples, signal[start:start + chunk])
    assert starts[0] == 0 and starts[-1] + min(chunk, length) == length  # all covered
    assert all(0 < b - a <= chunk - overlap for a, b in zip(starts, starts[1:]))
    assert all(len(samples) == min(chunk, length) for _, samples in chunks)


def test_crossfade_weights_sum_to_one():
    for length in (1, 2, 7, 800):
        fade = crossfade(length)
        np.testing.assert_allclose(fade + fade[::-1], 1.0, atol=1e-6)
        assert np.all((fade > 0) & (fade < 1)) and np.all(np.diff(fade) >= 0)


def test_align_sources_finds_the_swap_and_keeps_order_on_silence():
    sources = speech_like(0.2)
    assert list(align_sources(sources, sources[::-1] * 3.0)) == [1, 0]
    assert list(align_sources(sources, sources)) == [0, 1]
    assert list(align_sources(np.zeros_like(sources), sources)) == [0, 1]


@pytest.mark.parametrize("length", [4000, 4001, 9999, 24000])
def test_stitching_undoes_per_chunk_speaker_swaps(length):
    """Chunks cut from known sources, each in a random speaker order, stitch back exactly."""
    sources = speech_like(length / SAMPLE_RATE, seed=length)
    rng = np.random.default_rng(0)
    stitcher = OverlapAddStitcher(2)
    parts, swaps = [], 0
    for start, _ in iter_chunks([sources[0]], 1600, 400):
        estimates = sources[:, start:start + 1600]
        if start and rng.random() < 0.5:
            estimates, swaps = estimates[::-1], swaps + 1
        parts.append(stitcher.add(start, estimates))
    parts.append(stitcher.finish())
    np.testing.assert_allclose(np.concatenate(parts, axis=1), sources, atol=1e-6)
    assert swaps or length <= 1600


# --- the Separator with a real (tiny, untrained) model -------------------------------


def test_chunked_output_matches_unchunked(config, variables, separator):
    """A 6 s mixture in 2 s chunks (0.5 s overlap) against one pass over the whole file.

    Reported SI-SNR between the two (untrained tiny model, which depends strongly on
    its context through gLN and attention): about 6 and 9 dB per source; a trained
    model is far less context-dependent (see the README's table).
    """
    mixture = speech_like(6.0).sum(axis=0)
    chunked = separator.separate(mixture)
    whole = np.asarray(build_model(config).apply(variables, mixture[None]))[0]
    assert chunked.shape == whole.shape == (2, mixture.shape[0])
    matched = [si_snr_db(chunked[c], whole[c]) for c in range(2)]
    swapped = [si_snr_db(chunked[c], whole[1 - c]) for c in range(2)]
    print(f"SI-SNR chunked vs unchunked: {matched[0]:.1f} / {matched[1]:.1f} dB "
          f"(swapped: {swapped[0]:.1f} / {swapped[1]:.1f} dB)")
    assert min(matched) > 4.0
    assert min(matched) > max(swapped) + 10.0  # speaker order kept across all chunks
    assert separator.compiled_shapes == {(separator.batch_size, separator.chunk_samples)}


def _local_variables(variables, seed: int = 0):
    """The tiny model's weights with its separator cut off from the masks.

    The mask head's first projection gets a zero kernel and a random bias, so every
    source's mask is one fixed vector per frame (different per source) whatever the
    input, and the model is encoder -> fixed masks -> decoder: its output at a sample
    depends only on the encoder window around it. Chunked separation of such a model
    must reproduce one whole-signal pass, so any error is the stitching's.
    """
    params = jax.tree.map(np.asarray, variables["params"])
    projection = params["mask_head"]["to_sources"]
    projection["kernel"] = np.zeros_like(projection["kernel"])
    projection["bias"] = np.random.default_rng(seed).standard_normal(
        projection["bias"].shape).astype(np.float32)
    return {"params": params}


# Largest |chunked - whole| allowed, relative to the mixture's peak. Measured: 4.5e-7
# (float32 rounding). Stitching bugs, measured: every chunk after the first placed one
# sample late 0.38; no cross-fade (each chunk overwrites the overlap) 0.066, since the
# chunk's first encoder frame lacks its left neighbour. (Speaker matching cannot be
# exercised here, the local model never reorders its sources; the stitcher test
# above swaps them.)
CHUNKED_TOLERANCE = 1e-5


def test_chunked_separation_of_a_local_model_equals_one_whole_pass(config, variables):
    """Several chunks, the last moved left to end at the signal's end (a longer overlap),
    against one pass over the whole signal. The length is a multiple of the encoder hop,
    as are the chunk hop and the last start, so the chunks' encoder frames lie on the
    whole pass's grid: the learned filterbank is not shift-invariant off that grid."""
    local = _local_variables(variables)
    separator = Separator(config, local)
    hop = config.model.window // 2
    mixture = speech_like(6.0).sum(axis=0)
    starts = chunk_starts(mixture.shape[0], separator.chunk_samples, separator.overlap_samples)
    assert len(starts) >= 4 and all(start % hop == 0 for start in starts)
    assert starts[-1] - starts[-2] < separator.chunk_samples - separator.overlap_samples
    chunked = separator.separate(mixture)
    whole = np.asarray(build_model(config).apply(local, mixture[None]))[0]
    assert chunked.shape == whole.shape == (2, mixture.shape[0])
    # The sources differ, so a wrong reordering by the stitcher would show as well.
    between_sources = si_snr_db(whole[0], whole[1])
    error = np.max(np.abs(chunked - whole)) / np.max(np.abs(mixture))
    print(f"max |chunked - whole| / peak: {error:.2e}; source 0 vs 1: {between_sources:.1f} dB")
    assert between_sources < 0
    assert error < CHUNKED_TOLERANCE


def test_bfloat16_compute_is_an_option_close_to_float32(config, variables, separator):
    """``compute_dtype='bfloat16'``: same weights, products in bf16, outputs near float32's."""
    mixture = speech_like(3.0, seed=3).sum(axis=0)
    fast = Separator(config, variables, compute_dtype="bfloat16")
    assert fast.config.runtime.compute_dtype == "bfloat16"
    assert config.runtime.compute_dtype == "float32"  # the caller's config is left alone
    reference, approximate = separator.separate(mixture), fast.separate(mixture)
    assert approximate.dtype == np.float32 and approximate.shape == reference.shape
    agreement = [si_snr_db(approximate[c], reference[c]) for c in range(2)]
    print(f"SI-SNR bf16 vs float32: {agreement[0]:.1f} / {agreement[1]:.1f} dB")
    assert min(agreement) > 20.0
    assert not np.array_equal(approximate, reference)  # the option did change the compute
    with pytest.raises(ValueError, match="runtime.compute_dtype.*float16"):
        Separator(config, variables, compute_dtype="float16")


def test_short_signals_compile_a_bounded_set_of_shapes(config, separator):
    for seconds in (0.01, 0.3, 0.5, 0.7, 1.3, 1.9, 2.0):
        length = int(seconds * SAMPLE_RATE)
        output = separator.separate(speech_like(seconds, seed=length).sum(axis=0))
        assert output.shape == (2, length) and np.isfinite(output).all()
    short_shapes = {s for s in separator.compiled_shapes if s[0] == 1}
    assert {s[1] for s in short_shapes} <= {4000, 8000, 16000}  # buckets 0.5/1/2 s


def test_bad_arrays_are_refused(separator):
    with pytest.raises(SeparationError, match="shorter than one encoder window"):
        separator.separate(np.zeros(15, np.float32))
    with pytest.raises(SeparationError, match="mono"):
        separator.separate(np.zeros((2, 8000), np.float32))
    bad = np.zeros(8000, np.float32)
    bad[10] = np.nan
    with pytest.raises(SeparationError, match="NaN/Inf"):
        separator.separate(bad)


def test_files_are_downmixed_and_resampled_with_warnings(tmp_path, separator):
    stereo = speech_like(1.5, sample_rate=16000).T  # [T, 2] at 16 kHz
    path = write_wav(str(tmp_path / "stereo 16k ü.wav"), stereo, 16000, "PCM_24")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        output = separator.separate(path)
    messages = " | ".join(str(w.message) for w in caught)
    assert "averaging 2 channels" in messages and "resampling 16000 Hz to 8000 Hz" in messages
    assert output.shape == (2, resampled_length(stereo.shape[0], 16000, SAMPLE_RATE))


def test_file_errors_name_the_file(tmp_path, separator):
    nan = np.full(4000, 0.1, np.float32)
    nan[1234] = np.nan
    cases = {
        "nan.wav": (lambda p: write_wav(p, nan), "NaN/Inf sample at index 1234"),
        "empty.wav": (lambda p: open(p, "wb").close(), "empty file"),
        "text.wav": (lambda p: open(p, "w").write("not audio"), "not a readable audio file"),
        "one.wav": (lambda p: write_wav(p, np.ones(1, np.float32)), "shorter than one encoder"),
    }
    for name, (make, problem) in cases.items():
        path = str(tmp_path / name)
        make(path)
        with pytest.raises((AudioError, SeparationError), match=problem) as error:
            separator.separate(path)
        assert path in str(error.value)


def test_separate_to_files_pcm16_is_peak_normalised_and_never_overwrites(tmp_path, separator):
    loud = 40.0 * speech_like(5.0).sum(axis=0)  # far above full scale
    path = write_wav(str(tmp_path / "loud.wav"), loud)
    floats = [str(tmp_path / f"f{c}.wav") for c in (1, 2)]
    pcm = [str(tmp_path / f"p{c}.wav") for c in (1, 2)]
    result = separator.separate_to_files(path, floats)
    in_memory = separator.separate(path)
    for c, name in enumerate(floats):
        data, rate = soundfile.read(name, dtype="float32")
        assert rate == SAMPLE_RATE and soundfile.info(name).subtype == "FLOAT"
        np.testing.assert_allclose(data, in_memory[c], atol=1e-6)
    assert result["gain"] == 1.0 and result["peak"] > 1.0  # float keeps values above 1
    result = separator.separate_to_files(path, pcm, output_format="pcm16")
    peaks = [np.abs(soundfile.read(name, dtype="float32")[0]).max() for name in pcm]
    assert all(soundfile.info(name).subtype == "PCM_16" for name in pcm)
    assert max(peaks) == pytest.approx(10 ** (PCM16_PEAK_DBFS / 20), abs=1 / 32768)
    np.testing.assert_allclose(soundfile.read(pcm[0], dtype="float32")[0],
                               in_memory[0] * result["gain"], atol=1 / 32768)
    before = [os.stat(name).st_mtime_ns for name in floats]
    with pytest.raises(AudioError, match="already exists"):
        separator.separate_to_files(path, floats)
    assert [os.stat(name).st_mtime_ns for name in floats] == before
    assert sorted(os.listdir(tmp_path)) == ["f1.wav", "f2.wav", "loud.wav", "p1.wav", "p2.wav"]
    separator.separate_to_files(path, floats, overwrite=True)


def test_from_checkpoint_restores_weights_and_config(tmp_path, config):
    make_checkpoint(str(tmp_path / "ckpt"), config, seed=3, step=7)
    restored = Separator.from_checkpoint(str(tmp_path / "ckpt"))
    fresh = Separator(config, init_variables(config, seed=3))
    mixture = speech_like(3.0).sum(axis=0)
    assert restored.meta["step"] == 7 and restored.config == config
    np.testing.assert_allclose(restored.separate(mixture), fresh.separate(mixture), atol=1e-6)


_MEMORY_PROBE = r"""
import json, os, sys, tracemalloc
import numpy as np, soundfile
sys.path.insert(0, os.path.join(sys.argv[1], "tests"))
from inference_helpers import init_variables, tiny_config
from galr_jax.inference import Separator

def peak_rss_mb():
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith("VmHWM")) / 1024

folder, rng = sys.argv[2], np.random.default_rng(0)
def noise_file(name, seconds):  # written in blocks: the test never holds the signal
    path = os.path.join(folder, name)
    with soundfile.SoundFile(path, "w", 8000, 1, "PCM_16") as f:
        for _ in range(seconds // 10):
            f.write(0.1 * rng.standard_normal(80000).astype(np.float32))
    return path

config = tiny_config(eval={"chunk_seconds": 8.0, "chunk_overlap_seconds": 1.0,
                           "chunk_batch_size": 4})
separator = Separator(config, init_variables(config))
outputs = [os.path.join(folder, f"out{c}.wav") for c in (1, 2)]
warm = noise_file("warm.wav", 30)
for _ in range(2):  # compile and let the allocators settle
    separator.separate_to_files(warm, outputs, overwrite=True)
long = noise_file("long.wav", 600)
rss_before = peak_rss_mb()
tracemalloc.start()
result = separator.separate_to_files(long, outputs, overwrite=True)
traced_peak = tracemalloc.get_traced_memory()[1] / 2**20
print(json.dumps({"seconds": result["seconds"], "traced_peak_mb": traced_peak,
                  "rss_growth_mb": peak_rss_mb() - rss_before,
                  "frames": soundfile.info(outputs[0]).frames}))
"""

# A 10-minute input must not need memory in proportion to its length. Holding it whole
# would take 19 MB (input) + 38 MB (two float32 outputs) = 57 MB; streaming needs a few
# chunks. Python/numpy allocations (tracemalloc) are exact; the peak RSS bound leaves
# room for the XLA runtime's own allocator noise.
TRACED_PEAK_BOUND_MB = 16
RSS_GROWTH_BOUND_MB = 48


def test_ten_minutes_stream_in_bounded_memory(tmp_path):
    probe = subprocess.run([sys.executable, "-c", _MEMORY_PROBE, REPO, str(tmp_path)],
                           capture_output=True, text=True, timeout=300,
                           env=dict(environment(), MALLOC_ARENA_MAX="2"))
    assert probe.returncode == 0, probe.stderr[-3000:]
    report = json.loads(probe.stdout.strip().splitlines()[-1])
    print(f"10-minute input: traced peak {report['traced_peak_mb']:.1f} MB, "
          f"peak RSS growth {report['rss_growth_mb']:.1f} MB")
    assert report["seconds"] == 600 and report["frames"] == 600 * SAMPLE_RATE
    assert report["traced_peak_mb"] < TRACED_PEAK_BOUND_MB
    assert report["rss_growth_mb"] < RSS_GROWTH_BOUND_MB
