"""Offline speech for the demo set: Asterisk telephone prompts and eSpeak NG voices.

* **Asterisk prompts** (Debian packages, real studio recordings, 8 kHz): seven
  speakers, read from ``/usr/share/asterisk/sounds/<voice>/``.
* **eSpeak NG** (the ``espeakng-loader`` wheel ships ``libespeak-ng.so`` and its
  data): formant synthesis driven through ctypes, 12 male and 12 female synthetic
  speakers that differ in voice variant, English accent, pitch and speaking rate.

Every utterance is trimmed of leading and trailing silence and brought to one
speech level, so that mixing gains alone set the ratio between speakers.
"""

from __future__ import annotations

import ctypes
import dataclasses
import json
import math
import os
import shutil
import tempfile
import zlib
from typing import Optional, Sequence

import numpy as np

from galr_jax.data.audio import AudioError, read_audio

ASTERISK_ROOT = "/usr/share/asterisk/sounds"
ASTERISK_RATE = 8000
ASTERISK_PACKAGES = (
    "asterisk-core-sounds-en-wav", "asterisk-core-sounds-fr-wav", "asterisk-core-sounds-it-wav",
    "asterisk-core-sounds-ru-wav", "asterisk-prompt-it-menardi-wav", "asterisk-prompt-es-co",
    "asterisk-prompt-fr-armelle")
_ASTERISK_SUFFIXES = (".wav", ".gsm")
# Folders and prompts that are not speech.
_ASTERISK_SKIP_DIRS = ("silence",)
_ASTERISK_SKIP_PREFIXES = ("beep", "silence", "tone")

SPEECH_LEVEL_DBFS = -26.0  # RMS of the active frames of every utterance
_FRAME_SECONDS = 0.01
_ACTIVITY_DB = 40.0  # frames this far below the loudest frame count as silence
_TRIM_MARGIN_SECONDS = 0.02
MIN_UTTERANCE_SECONDS = 0.25

SYNTHESIS_FORMAT = 1  # bump when synthetic utterances change, to invalidate caches
_ESPEAK_RETRIEVAL_SYNCHRONOUS = 2  # espeak_AUDIO_OUTPUT: synthesize into our callback
_ESPEAK_CHARS_UTF8 = 1
_ESPEAK_RATE, _ESPEAK_PITCH, _ESPEAK_RANGE = 1, 3, 4  # espeak_PARAMETER ids
_ESPEAK_PITCH_RANGE = 50  # intonation range (espeak's default)
_ESPEAK_NOISE_SEED = 1  # C rand() seed; eSpeak draws breath noise from it
_SENTENCE_WORDS = (5, 12)  # words per synthetic sentence, inclusive
_PROSODY_JITTER = 4  # +- pitch units per sentence, so repeats are not identical

# Synthetic speakers: voice variant, English accent, pitch (espeak units 0-99, base 50)
# and rate (words per minute). Pitches were chosen from measured F0: male 75-135 Hz,
# female 160-270 Hz.
_ACCENTS = ("en-us", "en", "en-gb-scotland", "en-029", "en-gb-x-rp", "en-gb-x-gbclan")
_MALE_VARIANTS = ("m1", "m2", "m3", "m4", "m5", "m6", "m7", "m8", "Andy", "david", "ian", "Storm")
# Variants with breath noise (f2, f3, f5, Alicia, ...) are left out: eSpeak NG's breath
# noise depends on uninitialised memory, so those voices are not reproducible.
_FEMALE_VARIANTS = ("f1", "f4", "Annie", "Andrea", "anika", "aunty", "belinda", "grandma", "linda",
                    "steph", "steph2", "steph3")
_PITCHES = (30, 62, 42, 70, 36, 54, 46, 66, 34, 58, 50, 40)
_RATES = (150, 170, 160, 185, 155, 175, 165, 190, 158, 180, 168, 162)

_WORDS = tuple("""
a about after again air all along also always an and animal another answer any are around
as ask at away back be because been before began begin being below between big black blue
boat body book both boy bring brown build but by call came can car care carry change city
close cold come could country cut day deep did different do does dog door down draw during
each early earth eat end enough even every eye face fall family far farm fast father feel
few field find fire first fish five follow food foot for form found four friend from full
game garden gave get girl give go good got great green ground group grow had half hand hard
has have he head hear heard help her here high hill him his hold home horse hot house how
idea if important in into is it just keep kind king know land large last late learn leave
left let letter life light like line list little live long look made make man many map mark
may me mean men might mile mind more morning most mother mountain move much music must my
name near need never new next night no north not now number of off often old on once one
only open or other our out over own page paper part people picture place plant play point
press put question quick quickly rain ran read real red remember rest right river road rock
room round run said same saw say school sea second see seem sentence set seven she ship short
should show side simple since sing sit six sleep small snow so some something song soon sound
south stand star start state stay still stone stop story street strong study such summer sun
sure table take talk teacher tell ten than that the their them then there these they thing
think this those though three through time to today together told too took top toward town
tree true try turn two under until up us use very voice walk want warm was watch water way we
weather week well went were west what when where which while white who why wind window winter
with without woman word work world would write year yellow yes you young
""".split())


@dataclasses.dataclass(frozen=True)
class Speaker:
    """One voice of the pool.

    Attributes:
      name: unique, file-name safe.
      source: ``'asterisk'`` or ``'espeak'``.
      sex: ``'f'`` or ``'m'``.
      language: language or accent code.
      licence: licence of the recordings (synthetic speech: the synthesizer's).
      location: the Asterisk folder, or the eSpeak voice name (``accent+variant``).
      pitch, rate: eSpeak settings (0 for recordings).
    """

    name: str
    source: str
    sex: str
    language: str
    licence: str
    location: str
    pitch: int = 0
    rate: int = 0


ASTERISK_SPEAKERS = (
    Speaker("asterisk_en_f_allison", "asterisk", "f", "en-US", "CC-BY-SA-3.0",
            "en_US_f_Allison"),
    Speaker("asterisk_fr_f_june", "asterisk", "f", "fr-CA", "CC-BY-SA-3.0", "fr_CA_f_June"),
    Speaker("asterisk_it_m_carlo", "asterisk", "m", "it-IT", "CC-BY-SA-3.0", "it_IT_m_Carlo"),
    Speaker("asterisk_ru_f_ivrvoice", "asterisk", "f", "ru-RU", "CC-BY-3.0",
            "ru_RU_f_IvrvoiceRU"),
    Speaker("asterisk_it_f_menardi", "asterisk", "f", "it-IT", "CC-BY-SA-3.0",
            "it_IT_f_Menardi"),
    Speaker("asterisk_es_f_co", "asterisk", "f", "es-CO", "GPL-2", "es"),
    Speaker("asterisk_fr_f_armelle", "asterisk", "f", "fr-FR", "BSD-style", "fr"),
)
ESPEAK_LICENCE = "GPL-3.0-or-later (eSpeak NG); synthetic output"


def _synthetic_speakers() -> tuple[Speaker, ...]:
    speakers = []
    for sex, variants in (("m", _MALE_VARIANTS), ("f", _FEMALE_VARIANTS)):
        for k, variant in enumerate(variants):
            accent = _ACCENTS[k % len(_ACCENTS)]
            speakers.append(Speaker(
                f"espeak_{sex}{k + 1:02d}_{accent}_{variant.lower()}", "espeak", sex, accent,
                ESPEAK_LICENCE, f"{accent}+{variant}", _PITCHES[k], _RATES[k]))
    return tuple(speakers)


ESPEAK_SPEAKERS = _synthetic_speakers()


def asterisk_available(speaker: Speaker, root: str = ASTERISK_ROOT) -> bool:
    """Whether the speaker's prompt folder exists and holds audio."""
    return bool(_asterisk_files(os.path.join(root, speaker.location)))


def _asterisk_files(folder: str) -> list[str]:
    found = []
    for parent, dirs, files in os.walk(folder):  # does not follow symlinked folders
        dirs[:] = sorted(d for d in dirs if d not in _ASTERISK_SKIP_DIRS)
        for name in sorted(files):
            if (name.lower().endswith(_ASTERISK_SUFFIXES)
                    and not name.lower().startswith(_ASTERISK_SKIP_PREFIXES)):
                found.append(os.path.join(parent, name))
    return found


def trim_and_level(signal: np.ndarray, sample_rate: int) -> Optional[np.ndarray]:
    """Cuts leading/trailing silence and scales the speech to :data:`SPEECH_LEVEL_DBFS`.

    Args:
      signal: ``[time]`` float32.
      sample_rate: Hz.

    Returns:
      ``[time']`` float32 with peak at most 1, or None when under
      :data:`MIN_UTTERANCE_SECONDS` of speech remains.
    """
    frame = max(1, int(sample_rate * _FRAME_SECONDS))
    count = len(signal) // frame
    if count == 0:
        return None
    energy = np.mean(signal[:count * frame].reshape(count, frame).astype(np.float64) ** 2, axis=1)
    loudest = energy.max()
    if loudest <= 0:
        return None
    active = np.flatnonzero(energy > loudest * 10 ** (-_ACTIVITY_DB / 10))
    margin = int(sample_rate * _TRIM_MARGIN_SECONDS)
    start = max(0, active[0] * frame - margin)
    stop = min(len(signal), (active[-1] + 1) * frame + margin)
    if stop - start < MIN_UTTERANCE_SECONDS * sample_rate:
        return None
    level = math.sqrt(float(energy[active].mean()))
    gain = 10 ** (SPEECH_LEVEL_DBFS / 20) / level
    out = signal[start:stop].astype(np.float64) * gain
    peak = np.abs(out).max()
    if peak > 1.0:
        out /= peak
    return out.astype(np.float32)


def load_asterisk_pool(speaker: Speaker, root: str = ASTERISK_ROOT) -> list[np.ndarray]:
    """All prompts of one Asterisk voice at 8 kHz, trimmed and levelled.

    Unreadable prompts are left out.
    """
    pool = []
    for path in _asterisk_files(os.path.join(root, speaker.location)):
        try:
            signal = read_audio(path, ASTERISK_RATE)
        except AudioError:
            continue  # a damaged prompt is simply not used
        utterance = trim_and_level(signal, ASTERISK_RATE)
        if utterance is not None:
            pool.append(utterance)
    return pool


def _espeak_loader():
    import espeakng_loader  # an optional dependency: only the demo builder needs it

    return espeakng_loader


def espeak_version() -> str:
    """Version of the eSpeak NG library in the ``espeakng-loader`` wheel."""
    lib = ctypes.CDLL(_espeak_loader().get_library_path())
    lib.espeak_Info.restype = ctypes.c_char_p
    return lib.espeak_Info(None).decode()


class EspeakSynthesizer:
    """A fresh instance of libespeak-ng, driven through ctypes.

    eSpeak NG keeps synthesis state in C statics that its API cannot reset (the
    pitch-flutter phase, the gain control, the noise generator), so a sentence
    comes out slightly differently depending on what was spoken before. Each
    instance therefore loads its own copy of the library (a fresh set of statics)
    and reseeds the C random generator; a fixed sequence of calls on a new instance
    always gives the same samples. Not thread-safe: one instance per thread.
    """

    _CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int,
                                 ctypes.c_void_p)

    def __init__(self):
        loader = _espeak_loader()
        with tempfile.TemporaryDirectory() as folder:
            # The dynamic loader shares one instance per file; a copy gets its own statics.
            copy = os.path.join(folder, os.path.basename(loader.get_library_path()))
            shutil.copyfile(loader.get_library_path(), copy)
            self._lib = ctypes.CDLL(copy)
        ctypes.CDLL(None).srand(_ESPEAK_NOISE_SEED)
        self._lib.espeak_Initialize.restype = ctypes.c_int
        self.sample_rate = self._lib.espeak_Initialize(
            _ESPEAK_RETRIEVAL_SYNCHRONOUS, 0, loader.get_data_path().encode(), 0)
        if self.sample_rate <= 0:
            raise RuntimeError(f"espeak_Initialize failed ({self.sample_rate})")
        self._chunks: list[np.ndarray] = []
        self._callback = self._CALLBACK(self._collect)  # kept alive: C holds the pointer
        self._lib.espeak_SetSynthCallback(self._callback)

    def _collect(self, samples, count, events) -> int:
        if count > 0 and samples:
            self._chunks.append(np.ctypeslib.as_array(samples, shape=(count,)).copy())
        return 0  # 0: keep synthesizing

    def synthesize(self, voice: str, text: str, *, pitch: int, rate: int) -> np.ndarray:
        """Speaks ``text``: ``[time]`` float32 at :attr:`sample_rate`.

        Raises:
          RuntimeError: unknown voice or a synthesis failure.
        """
        self._chunks = []
        if self._lib.espeak_SetVoiceByName(voice.encode()) != 0:
            raise RuntimeError(f"eSpeak NG has no voice {voice!r}")
        for parameter, value in ((_ESPEAK_PITCH, pitch), (_ESPEAK_RATE, rate),
                                 (_ESPEAK_RANGE, _ESPEAK_PITCH_RANGE)):
            self._lib.espeak_SetParameter(parameter, value, 0)
        data = text.encode()
        status = self._lib.espeak_Synth(data, len(data) + 1, 0, 0, 0, _ESPEAK_CHARS_UTF8,
                                        None, None)
        self._lib.espeak_Synchronize()
        if status != 0 or not self._chunks:
            raise RuntimeError(f"eSpeak NG failed on voice {voice!r} (status {status})")
        return np.concatenate(self._chunks).astype(np.float32) / np.float32(2 ** 15)

    def close(self) -> None:
        """Frees the voice data (the small library copy stays mapped)."""
        self._lib.espeak_Terminate()


def sentence(speaker: Speaker, index: int) -> tuple[str, int]:
    """Text and pitch of sentence ``index`` of a synthetic speaker.

    Depends only on the speaker's name and the index, so a cached pool can be
    extended without changing the utterances it already holds.
    """
    rng = np.random.default_rng([zlib.crc32(speaker.name.encode()), index])
    words = rng.choice(_WORDS, int(rng.integers(_SENTENCE_WORDS[0], _SENTENCE_WORDS[1] + 1)))
    pitch = speaker.pitch + int(rng.integers(-_PROSODY_JITTER, _PROSODY_JITTER + 1))
    return " ".join(words), pitch


def _resample(signal: np.ndarray, source_rate: int, target_rate: int) -> np.ndarray:
    from scipy.signal import resample_poly  # scipy comes with jax

    divisor = math.gcd(source_rate, target_rate)
    return resample_poly(signal, target_rate // divisor, source_rate // divisor).astype(np.float32)


def synthesize_pool(speaker: Speaker, count: int, sample_rate: int,
                    cache_dir: Optional[str] = None) -> list[np.ndarray]:
    """``count`` trimmed, levelled sentences of a synthetic speaker at ``sample_rate``.

    With ``cache_dir`` the pool is kept in ``<cache_dir>/<name>.npz`` (16-bit) and
    only missing sentences are synthesized on the next call.
    """
    meta = {"format": SYNTHESIS_FORMAT, "espeak": espeak_version(), "sample_rate": sample_rate,
            "speaker": dataclasses.asdict(speaker)}
    path = os.path.join(cache_dir, f"{speaker.name}.npz") if cache_dir else None
    pool = _read_pool_cache(path, meta) if path else []
    if len(pool) >= count:
        return pool[:count]
    # Always from sentence 0 on a fresh synthesizer: sentence k then depends on the
    # speaker and k alone, and a cached prefix equals a fresh one.
    synth = EspeakSynthesizer()
    pool = []
    for index in range(count):
        text, pitch = sentence(speaker, index)
        signal = synth.synthesize(speaker.location, text, pitch=pitch, rate=speaker.rate)
        signal = _resample(signal, synth.sample_rate, sample_rate)
        utterance = trim_and_level(signal, sample_rate)
        # A sentence of 5+ words always exceeds the minimum; keep the index aligned anyway.
        # Rounded to the 16-bit grid of the cache, so fresh and cached pools are identical.
        pool.append(_to_int16(utterance if utterance is not None else signal) / np.float32(2 ** 15))
    synth.close()
    if path:
        _write_pool_cache(path, meta, pool)
    return pool


def _to_int16(signal: np.ndarray) -> np.ndarray:
    return np.clip(np.round(signal * 2 ** 15), -2 ** 15, 2 ** 15 - 1).astype(np.int16)


def _read_pool_cache(path: str, meta: dict) -> list[np.ndarray]:
    try:
        with np.load(path) as content:
            if json.loads(str(content["meta"])) != meta:
                return []
            audio, offsets = content["audio"], content["offsets"]
    except (OSError, KeyError, ValueError):
        return []
    return [audio[a:b].astype(np.float32) / np.float32(2 ** 15)
            for a, b in zip(offsets[:-1], offsets[1:])]


def _write_pool_cache(path: str, meta: dict, pool: Sequence[np.ndarray]) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    offsets = np.cumsum([0] + [len(u) for u in pool])
    audio = _to_int16(np.concatenate(pool))
    tmp = f"{path}.tmp.npz"
    np.savez(tmp, audio=audio, offsets=offsets, meta=json.dumps(meta, sort_keys=True))
    os.replace(tmp, path)
