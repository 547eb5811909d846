"""Per-example augmentation for dynamic mixing: a few real voices made into many.

Each clean source of a dynamically mixed example can be

* **speed-perturbed**: resampled (soxr) by a factor uniform in ``[1 - s, 1 + s]``;
  pitch and formants move together, so it sounds like another speaker. The loader
  reads ``factor`` times the crop, so the result still fills the crop.
* **band-limited**: Butterworth high-pass (50-400 Hz) and low-pass (45-98% of Nyquist)
  of random order, as different microphones and telephone chains colour speech.
* **reverberated**: all sources of an example share one simulated shoebox room
  (pyroomacoustics image-source method), each at its own position; the reverberant
  source is the target and keeps its dry RMS.

and the whole example gets one random gain, so the model sees many input levels.

Everything is drawn from the generator the loader passes in (derived from the
per-example seed), so a batch stays a pure function of the step. The rooms form a
bank computed once from ``seed`` (an image-source room costs 0.01-0.5 s, too much
per example on a 2-core machine); an example picks one at random.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Optional

import numpy as np
import soxr
from scipy import signal as sps

HIGHPASS_HZ = (50.0, 400.0)
LOWPASS_NYQUIST = (0.45, 0.98)  # low-pass cutoff as a fraction of Nyquist
FILTER_ORDERS = (2, 6)  # Butterworth order, inclusive
RT60_SECONDS = (0.15, 0.6)
ROOM_METRES = ((3.0, 10.0), (3.0, 8.0), (2.4, 3.5))  # length, width, height ranges
MAX_IMAGE_ORDER = 30  # caps the image-source cost; beyond it the tail is already 40+ dB down
WALL_MARGIN_METRES = 0.5  # sources and microphone keep this far from the walls
_ROOM_STREAM = 7


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
    """What to apply; zeros disable. Mirrors the ``data.augment_*`` config fields."""

    speed: float = 0.0  # speed factor uniform in [1 - speed, 1 + speed]
    gain_db: float = 0.0  # whole-example gain uniform in [-gain_db, gain_db] dB
    band_prob: float = 0.0  # probability that a source is band-limited
    reverb_prob: float = 0.0  # probability that an example is reverberated
    rooms: int = 64  # rooms in the bank

    @property
    def enabled(self) -> bool:
        return bool(self.speed or self.gain_db or self.band_prob or self.reverb_prob)

    def check(self) -> None:
        if not 0 <= self.speed < 1:
            raise ValueError(f"data.augment_speed: must be in [0, 1), got {self.speed}")
        if self.gain_db < 0:
            raise ValueError(f"data.augment_gain_db: must be 0 or more, got {self.gain_db}")
        for name, p in (("augment_band_prob", self.band_prob),
                        ("augment_reverb_prob", self.reverb_prob)):
            if not 0 <= p <= 1:
                raise ValueError(f"data.{name}: must be a probability in [0, 1], got {p}")
        if self.reverb_prob and self.rooms < 1:
            raise ValueError(f"data.augment_rooms: must be >= 1 with reverb, got {self.rooms}")


def speed_factor(rng: np.random.Generator, max_deviation: float) -> float:
    return float(rng.uniform(1 - max_deviation, 1 + max_deviation)) if max_deviation else 1.0


def change_speed(signal: np.ndarray, factor: float, sample_rate: int) -> np.ndarray:
    """Plays ``signal`` ``factor`` times faster: ``len / factor`` samples (soxr)."""
    if factor == 1.0:
        return signal
    return soxr.resample(signal, sample_rate * factor, sample_rate, quality="HQ").astype(np.float32)


def band_limit(rng: np.random.Generator, signal: np.ndarray, sample_rate: int) -> np.ndarray:
    """A random high-pass and low-pass (Butterworth, zero-phase not needed: causal like a
    real channel)."""
    order = int(rng.integers(FILTER_ORDERS[0], FILTER_ORDERS[1] + 1))
    low = float(rng.uniform(*HIGHPASS_HZ))
    high = float(rng.uniform(*LOWPASS_NYQUIST)) * sample_rate / 2
    sos = sps.butter(order, [low, high], btype="bandpass", fs=sample_rate, output="sos")
    return sps.sosfilt(sos, signal).astype(np.float32)


def random_gain(rng: np.random.Generator, max_db: float) -> float:
    return float(10 ** (rng.uniform(-max_db, max_db) / 20)) if max_db else 1.0


def make_room(rng: np.random.Generator, num_sources: int, sample_rate: int) -> list[np.ndarray]:
    """Impulse responses from ``num_sources`` random positions to one microphone of a
    random shoebox room with a random RT60."""
    import pyroomacoustics as pra  # only reverberation needs it

    dims = np.array([rng.uniform(*r) for r in ROOM_METRES])
    rt60 = float(rng.uniform(*RT60_SECONDS))
    absorption, order = pra.inverse_sabine(rt60, dims)
    room = pra.ShoeBox(dims, fs=sample_rate, materials=pra.Material(absorption),
                       max_order=min(order, MAX_IMAGE_ORDER))
    for _ in range(num_sources):
        room.add_source(rng.uniform(WALL_MARGIN_METRES, dims - WALL_MARGIN_METRES))
    room.add_microphone(rng.uniform(WALL_MARGIN_METRES, dims - WALL_MARGIN_METRES))
    room.compute_rir()
    return [np.asarray(room.rir[0][k], np.float32) for k in range(num_sources)]


def reverberate(signal: np.ndarray, rir: np.ndarray) -> np.ndarray:
    """``signal`` through ``rir``, cut to its length, at the dry signal's RMS."""
    wet = sps.fftconvolve(signal, rir)[:len(signal)]
    dry_rms, wet_rms = np.sqrt(np.mean(signal ** 2)), np.sqrt(np.mean(wet ** 2))
    if wet_rms > 0:
        wet *= dry_rms / wet_rms
    return wet.astype(np.float32)


class Augmenter:
    """Applies an :class:`AugmentConfig` to the sources of dynamically mixed examples."""

    def __init__(self, config: AugmentConfig, *, sample_rate: int, num_sources: int, seed: int):
        config.check()
        self.config = config
        self.sample_rate = sample_rate
        self.num_sources = num_sources
        self.seed = seed
        self._rooms: Optional[list[list[np.ndarray]]] = None

    def rooms(self) -> list[list[np.ndarray]]:
        """The room bank, computed on first use (the same for every run with this seed)."""
        if self._rooms is None:
            rng = np.random.default_rng([self.seed, _ROOM_STREAM])
            self._rooms = [make_room(rng, self.num_sources, self.sample_rate)
                           for _ in range(self.config.rooms)]
        return self._rooms

    def speed_factors(self, rng: np.random.Generator) -> list[float]:
        return [speed_factor(rng, self.config.speed) for _ in range(self.num_sources)]

    def frames_to_read(self, crop_samples: int, factor: float) -> int:
        """Samples to read so that ``factor`` times faster playback fills the crop."""
        return int(math.ceil(crop_samples * factor))

    def apply(self, rng: np.random.Generator, crops: list[np.ndarray],
              factors: list[float]) -> tuple[list[np.ndarray], float]:
        """Speed, band-limiting and reverberation per source; returns the sources and the
        whole-example gain (the caller applies it after its mixing gains)."""
        out = []
        for crop, factor in zip(crops, factors):
            source = change_speed(crop, factor, self.sample_rate)
            if self.config.band_prob and rng.random() < self.config.band_prob:
                source = band_limit(rng, source, self.sample_rate)
            out.append(source)
        if self.config.reverb_prob and rng.random() < self.config.reverb_prob:
            room = self.rooms()[int(rng.integers(self.config.rooms))]
            out = [reverberate(s, rir) for s, rir in zip(out, room)]
        return out, random_gain(rng, self.config.gain_db)


def augment_config(data_config) -> AugmentConfig:
    """The :class:`AugmentConfig` of a :class:`galr_jax.config.DataConfig`."""
    return AugmentConfig(speed=data_config.augment_speed, gain_db=data_config.augment_gain_db,
                         band_prob=data_config.augment_band_prob,
                         reverb_prob=data_config.augment_reverb_prob,
                         rooms=data_config.augment_rooms)
