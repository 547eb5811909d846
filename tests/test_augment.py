"""Augmentation of dynamically mixed examples: each transform is deterministic per seed
and changes the signal as stated; the loader stays a pure function of the step."""

import numpy as np
import pytest

from galr_jax.config import ConfigError, config_from_dict
from galr_jax.data import augment
from galr_jax.data.augment import AugmentConfig, Augmenter

RATE = 8000


def _noise(seed=0, seconds=1.0):
    return np.random.default_rng(seed).normal(0, 0.1, int(seconds * RATE)).astype(np.float32)


def _band_power(signal, low, high):
    spectrum = np.abs(np.fft.rfft(signal)) ** 2
    freqs = np.fft.rfftfreq(len(signal), 1 / RATE)
    return spectrum[(freqs >= low) & (freqs < high)].sum()


def test_speed_changes_length_by_the_factor_and_is_seeded():
    signal = _noise()
    for factor in (0.9, 1.1):
        out = augment.change_speed(signal, factor, RATE)
        assert abs(len(out) - len(signal) / factor) <= 1
    a = [augment.speed_factor(np.random.default_rng(3), 0.1) for _ in range(2)]
    assert a[0] == a[1] and 0.9 <= a[0] <= 1.1
    assert augment.speed_factor(np.random.default_rng(4), 0.1) != a[0]
    # Faster playback moves a tone up by the factor.
    tone = np.sin(2 * np.pi * 500 * np.arange(RATE) / RATE).astype(np.float32)
    fast = augment.change_speed(tone, 1.2, RATE)
    peak = np.fft.rfftfreq(len(fast), 1 / RATE)[np.argmax(np.abs(np.fft.rfft(fast)))]
    assert abs(peak - 600) < 5


def test_gain_lies_in_range():
    gains = [augment.random_gain(np.random.default_rng(s), 6.0) for s in range(200)]
    assert 10 ** (-6 / 20) <= min(gains) < 0.6 and 1.7 < max(gains) <= 10 ** (6 / 20)
    assert augment.random_gain(np.random.default_rng(0), 0.0) == 1.0


def test_band_limit_removes_the_edges_of_the_band():
    signal = _noise(seconds=2.0)
    out = augment.band_limit(np.random.default_rng(0), signal, RATE)
    again = augment.band_limit(np.random.default_rng(0), signal, RATE)
    np.testing.assert_array_equal(out, again)
    # Below the lowest high-pass cutoff's neighbourhood and at the top of the band.
    assert _band_power(out, 0, 30) < 0.1 * _band_power(signal, 0, 30)
    assert _band_power(out, 3950, 4000) < 0.1 * _band_power(signal, 3950, 4000)
    assert _band_power(out, 1000, 1500) > 0.5 * _band_power(signal, 1000, 1500)


def test_reverb_adds_a_tail_at_the_dry_level_and_rooms_are_seeded():
    first = Augmenter(AugmentConfig(reverb_prob=1.0, rooms=2), sample_rate=RATE,
                      num_sources=2, seed=0)
    second = Augmenter(AugmentConfig(reverb_prob=1.0, rooms=2), sample_rate=RATE,
                       num_sources=2, seed=0)
    for a, b in zip(first.rooms(), second.rooms()):
        for x, y in zip(a, b):
            np.testing.assert_array_equal(x, y)
    burst = np.zeros(RATE, np.float32)
    burst[:800] = _noise(seconds=0.1)
    wet = augment.reverberate(burst, first.rooms()[0][0])
    assert len(wet) == len(burst)
    assert np.sqrt(np.mean(wet ** 2)) == pytest.approx(np.sqrt(np.mean(burst ** 2)), rel=1e-4)
    tail = slice(1600, 2400)  # 0.1 s after the burst ended
    assert np.sum(burst[tail] ** 2) == 0 and np.sum(wet[tail] ** 2) > 1e-4 * np.sum(wet ** 2)


def test_apply_is_deterministic_per_generator():
    augmenter = Augmenter(AugmentConfig(speed=0.1, gain_db=6, band_prob=0.5, reverb_prob=0.5,
                                        rooms=2), sample_rate=RATE, num_sources=2, seed=0)
    crops = [_noise(1), _noise(2)]
    runs = []
    for _ in range(2):
        rng = np.random.default_rng(11)
        factors = augmenter.speed_factors(rng)
        runs.append(augmenter.apply(rng, crops, factors))
    (a, gain_a), (b, gain_b) = runs
    assert gain_a == gain_b
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a[0][:len(crops[0]) - 1000], crops[0][:len(crops[0]) - 1000])


def test_config_checks_the_augmentation_fields():
    with pytest.raises(ConfigError, match="data.augment_speed"):
        config_from_dict({"data": {"augment_speed": 1.5}})
    with pytest.raises(ConfigError, match="data.augment_reverb_prob"):
        config_from_dict({"data": {"augment_reverb_prob": 2}})
    assert not augment.augment_config(config_from_dict({}).data).enabled
