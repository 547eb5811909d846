"""Training batches: crops, padding, dynamic mixing, exact resumption, multi-host slices."""

import os
import threading

import numpy as np
import pytest
import soundfile as sf

from galr_jax.config import config_from_dict
from galr_jax.data.audio import AudioError
from galr_jax.data.datasets import DatasetError, open_wsj0_mix
from galr_jax.data.loader import TrainLoader, UtteranceReader, make_train_loader

RATE = 8000
C = 2
SCALE = 2.0 ** -20  # ramp step; keeps every sample exact in float32
CROP = 300


def _ramp_code(utterance, source):
    return utterance * C + source + 1


def make_ramp_tree(root, lengths, nan_utterance=None):
    """Source c of utterance u is (t + 1) * k * 2**-20 with k = u*C + c + 1 (float WAV, exact).

    From any crop one recovers k (the slope) and the crop start (the intercept).
    """
    for u, length in enumerate(lengths):
        t = np.arange(1, length + 1, dtype=np.float64)
        sources = np.stack([t * _ramp_code(u, c) * SCALE for c in range(C)]).astype(np.float32)
        if u == nan_utterance:
            sources[1, length // 2] = np.nan
        for folder, signal in zip(["mix", "s1", "s2"], [sources.sum(axis=0), *sources]):
            os.makedirs(root / "tr" / folder, exist_ok=True)
            sf.write(root / "tr" / folder / f"u{u:02d}.wav", signal, RATE, subtype="FLOAT")
    return open_wsj0_mix(root, "tr", sample_rate=RATE)


def decode_ramp(signal):
    """(k, start) of a ramp crop; asserts it is one contiguous crop."""
    k = int(round((signal[1] - signal[0]) / SCALE))
    start = int(round(signal[0] / SCALE / k)) - 1
    expected = (np.arange(start + 1, start + 1 + len(signal)) * k * SCALE).astype(np.float32)
    np.testing.assert_array_equal(signal, expected)
    return k, start


def _loader(dataset, **kwargs):
    options = dict(batch_size=4, crop_samples=CROP, seed=3, num_workers=0)
    options.update(kwargs)
    return TrainLoader(dataset, **options)


def _batches(loader, start, count):
    with loader.iterate(start, count) as it:
        return list(it)


@pytest.fixture(scope="module")
def ramps(tmp_path_factory):
    lengths = [400, 500, 350, 600, 450, 700, 380, 420]
    return make_ramp_tree(tmp_path_factory.mktemp("ramps"), lengths)


def test_batches_are_aligned_random_crops(ramps):
    loader = _loader(ramps)
    assert loader.steps_per_epoch == 2 and loader.local_batch_size == 4
    seen = []
    for step in range(loader.steps_per_epoch):
        batch = loader.batch_at(step)
        assert batch["mixture"].shape == (4, CROP) and batch["sources"].shape == (4, C, CROP)
        assert batch["mixture"].dtype == batch["sources"].dtype == np.float32
        for mixture, sources in zip(batch["mixture"], batch["sources"]):
            (k0, start0), (k1, start1) = decode_ramp(sources[0]), decode_ramp(sources[1])
            utterance = (k0 - 1) // C
            assert start0 == start1 and k1 == k0 + 1  # both sources of one utterance, same window
            assert 0 <= start0 <= ramps.lengths[utterance] - CROP
            np.testing.assert_allclose(mixture, sources.sum(axis=0), rtol=1e-6)
            seen.append(utterance)
    assert sorted(seen) == list(range(8))  # one epoch visits every utterance once


def test_crops_vary_with_the_seed_and_epochs_reshuffle(ramps):
    def utterances(loader, step):
        return [(decode_ramp(s[0])[0] - 1) // C for s in loader.batch_at(step)["sources"]]

    a, b = _loader(ramps, seed=3), _loader(ramps, seed=4)
    np.testing.assert_array_equal(a.batch_at(1)["mixture"],
                                  _loader(ramps, seed=3).batch_at(1)["mixture"])
    assert not np.array_equal(a.batch_at(0)["mixture"], b.batch_at(0)["mixture"])
    epoch0 = utterances(a, 0) + utterances(a, 1)
    epoch1 = utterances(a, 2) + utterances(a, 3)
    assert sorted(epoch1) == list(range(8)) and epoch0 != epoch1


@pytest.mark.parametrize("dynamic_mixing", [False, True])
def test_resumed_run_sees_the_same_batches(ramps, dynamic_mixing):
    full = _batches(_loader(ramps, dynamic_mixing=dynamic_mixing, num_workers=2), 0, 7)
    resumed_loader = _loader(ramps, dynamic_mixing=dynamic_mixing, num_workers=3, prefetch=2)
    resumed = _batches(resumed_loader, 3, 4)
    for expected, got in zip(full[3:], resumed):  # crosses the epoch boundary at step 4
        np.testing.assert_array_equal(expected["mixture"], got["mixture"])
        np.testing.assert_array_equal(expected["sources"], got["sources"])


@pytest.mark.parametrize("dynamic_mixing", [False, True])
@pytest.mark.parametrize("process_count", [2, 4])
def test_process_slices_concatenate_to_the_global_batch(ramps, dynamic_mixing, process_count):
    whole = _loader(ramps, dynamic_mixing=dynamic_mixing)
    parts = [_loader(ramps, dynamic_mixing=dynamic_mixing, process_index=p,
                     process_count=process_count) for p in range(process_count)]
    for step in (0, 3):
        expected = whole.batch_at(step)
        pieces = [p.batch_at(step) for p in parts]
        assert pieces[0]["mixture"].shape[0] == 4 // process_count
        for key in ("mixture", "sources"):
            np.testing.assert_array_equal(np.concatenate([p[key] for p in pieces]), expected[key])


def test_short_utterances_are_padded_or_dropped(tmp_path):
    dataset = make_ramp_tree(tmp_path, [400, 120, 500, 90, 310])
    padded = _loader(dataset, batch_size=1)
    assert padded.num_short == 2 and padded.num_usable == 5 and padded.steps_per_epoch == 5
    short_seen = 0
    for step in range(5):
        sources = padded.batch_at(step)["sources"][0]
        k, start = decode_ramp(sources[0][:2])
        length = dataset.lengths[(k - 1) // C]
        if length < CROP:
            short_seen += 1
            assert start == 0
            decode_ramp(sources[0][:length])
            assert not sources[:, length:].any()  # zeros after the utterance
    assert short_seen == 2
    dropped = _loader(dataset, batch_size=1, short_utterances="drop")
    assert dropped.num_short == 2 and dropped.num_usable == 3 and dropped.steps_per_epoch == 3
    assert "2 shorter than the crop (drop)" in dropped.summary()


def test_dynamic_mixing_remixes_sources_of_different_utterances(tmp_path):
    # Constant sources whose values are distinct powers of two: a gain of at most
    # +-2.5 dB (factor 0.75..1.33) cannot turn one into another.
    root = tmp_path
    for u in range(5):
        for folder, value in [("s1", 2.0 ** (2 * u - 12)), ("s2", 2.0 ** (2 * u - 11))]:
            os.makedirs(root / "tr" / folder, exist_ok=True)
            sf.write(root / "tr" / folder / f"u{u}.wav", np.full(400, value, np.float32), RATE,
                     subtype="FLOAT")
        os.makedirs(root / "tr" / "mix", exist_ok=True)
        sf.write(root / "tr" / "mix" / f"u{u}.wav", np.zeros(400, np.float32), RATE,
                 subtype="FLOAT")
    dataset = open_wsj0_mix(root, "tr")
    loader = _loader(dataset, dynamic_mixing=True, dynamic_mixing_gain_db=2.5, batch_size=5)
    limit = 10 ** (2.5 / 20)
    pairs = set()
    for step in range(4):
        batch = loader.batch_at(step)
        for mixture, sources in zip(batch["mixture"], batch["sources"]):
            np.testing.assert_allclose(mixture, sources.sum(axis=0), rtol=1e-6)
            assert mixture.any()  # not the stored (silent) mixture
            codes = [int(round(np.log2(s[0]))) + 12 for s in sources]
            gains = [s[0] / 2.0 ** (code - 12) for s, code in zip(sources, codes)]
            assert all(1 / limit <= g <= limit for g in gains)
            assert codes[0] // 2 != codes[1] // 2  # different utterances
            pairs.add(tuple(codes))
    assert len(pairs) > 5  # new combinations, not the stored pairs


def test_threads_match_synchronous_decoding_and_shut_down(ramps):
    synchronous = _batches(_loader(ramps, num_workers=0), 0, 5)
    loader = _loader(ramps, num_workers=3, prefetch=2)
    with loader:
        iterator = loader.iterate(0)  # endless
        threaded = [next(iterator) for _ in range(5)]
        assert any(t.name.startswith("galr-data") for t in threading.enumerate())
    assert not any(t.name.startswith("galr-data") for t in threading.enumerate())
    for a, b in zip(synchronous, threaded):
        np.testing.assert_array_equal(a["sources"], b["sources"])


def test_worker_error_reaches_the_consumer(tmp_path):
    dataset = make_ramp_tree(tmp_path, [400] * 4, nan_utterance=2)
    loader = _loader(dataset, bad_files="error", num_workers=2, batch_size=2)
    with pytest.raises(AudioError, match=r"/u02\.wav: contains 1 NaN/Inf"):
        for _ in loader.iterate(0, 4):
            pass
    assert not any(t.name.startswith("galr-data") for t in threading.enumerate())


@pytest.mark.parametrize("dynamic_mixing", [False, True])
def test_bad_file_at_load_time_is_replaced_deterministically(tmp_path, dynamic_mixing):
    dataset = make_ramp_tree(tmp_path, [400] * 4, nan_utterance=2)
    options = dict(batch_size=2, dynamic_mixing=dynamic_mixing)
    threaded = _loader(dataset, num_workers=2, **options)
    batches = _batches(threaded, 0, 4)
    synchronous = [_loader(dataset, **options).batch_at(step) for step in range(4)]
    for a, b in zip(batches, synchronous):
        np.testing.assert_array_equal(a["sources"], b["sources"])
        assert np.isfinite(a["sources"]).all()
    assert threaded.load_problems and all(p.endswith("u02.wav") for p, _ in threaded.load_problems)
    if not dynamic_mixing:
        used = {(decode_ramp(s[0])[0] - 1) // C for b in batches for s in b["sources"]}
        assert 2 not in used


def test_epoch_length_override_wraps_over_the_data(ramps):
    loader = _loader(ramps, steps_per_epoch=5)  # 20 examples from 8 utterances
    assert loader.steps_per_epoch == 5
    batches = [loader.batch_at(step) for step in range(5)]
    assert all(np.isfinite(b["mixture"]).all() for b in batches)


def test_invalid_setups(ramps):
    with pytest.raises(ValueError, match="split evenly over 3 processes"):
        _loader(ramps, process_count=3)
    with pytest.raises(DatasetError, match="fewer than one batch of 16"):
        _loader(ramps, batch_size=16)
    with pytest.raises(DatasetError, match="0 usable utterances"):
        _loader(ramps, crop_samples=10_000, short_utterances="drop")


def test_make_train_loader_reads_the_config(ramps):
    config = config_from_dict({"data": {"crop_seconds": 0.025, "num_workers": 0},
                               "train": {"batch_size": 2, "seed": 5}})
    loader = make_train_loader(config, ramps, process_index=1, process_count=2)
    assert loader.crop_samples == 200 and loader.steps_per_epoch == 4
    assert loader.batch_at(0)["sources"].shape == (1, C, 200)


def test_utterance_reader_in_order_sharded_and_skipping(tmp_path):
    dataset = make_ramp_tree(tmp_path, [400, 500, 350, 600, 450], nan_utterance=3)
    with UtteranceReader(dataset, num_workers=2, prefetch=2) as reader:
        read = list(reader)
    assert [u.index for u in read] == [0, 1, 2, 4]
    assert [u.id for u in read] == ["u00", "u01", "u02", "u04"]
    assert read[1].mixture.shape == (500,) and read[1].sources.shape == (C, 500)
    assert len(reader.problems) == 1 and "NaN" in reader.problems[0][1]
    shards = [[u.index for u in UtteranceReader(dataset, process_index=p, process_count=2)]
              for p in range(2)]
    assert shards == [[0, 2, 4], [1]]
    assert [u.index for u in UtteranceReader(dataset, limit=2, num_workers=0)] == [0, 1]
    with pytest.raises(AudioError, match="NaN"):
        list(UtteranceReader(dataset, bad_files="error"))
