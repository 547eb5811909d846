"""Builds the real-voice pool: clean utterances of real and synthetic speakers for training
with dynamic mixing, and fixed mixtures of held-out REAL speakers for validation and test.

    python -m galr_jax.data.pool --out /tmp/realpool [--seed 0] [--num-valid 200]
        [--num-test 300] [--seconds 4] [--system-root /]

Sources (Debian packages of recorded speech, and the eSpeak NG wheel; see
/work/shared/DATA-SOURCES.md): the Asterisk prompts (7 speakers; the Spanish core set
is the English speaker again and is merged into her), klettres-data (a native
speaker per language: letters and syllables), ktuberling-data (a speaker per
language: single words), kajongg (8 speakers by folder), codec2-examples (talkers
by file name), festvox-ru (one man), pocketsphinx-testdata (the LibriVox reader),
and the 24 synthetic eSpeak NG voices. The builder reports which it found and which
are missing (with the apt-get line that installs them; ``scripts/setup.sh`` runs it).

Speakers and splits (``speakers.json`` / ``speakers.csv``: source, language,
estimated F0 and sex, seconds of speech, split):

* ``tt`` holds out whole real speakers only: all of codec2-examples and kajongg, and
  the klettres/ktuberling languages in :data:`TEST_LANGUAGES`;
* ``cv`` holds out other real speakers: the languages in :data:`VALID_LANGUAGES` and
  the pocketsphinx reader;
* ``tr`` gets everything else (Asterisk, festvox-ru, the other languages, eSpeak).

A language is held out of klettres and ktuberling together, since one volunteer may
have recorded both. Every clip is resampled with soxr, trimmed of leading and
trailing silence and levelled (:func:`galr_jax.data.voices.trim_and_level`); short
clips are joined into ``--seconds`` utterances with pauses of 0.15-0.6 s, without
repeating a clip inside an utterance (a speaker with less speech than that gets
trailing silence).

Layout (wsj0-mix, so ``data.dynamic_mixing`` reads it as it is): ``tr/{mix,s1,s2}``
pairs every clean training utterance with one of another speaker (each utterance is a
source exactly once, so dynamic mixing draws speakers in proportion to their
utterance counts, which :func:`utterance_count` balances); ``cv`` and ``tt`` hold
fixed two-speaker mixtures of their own speakers. Files are 16-bit PCM with each
mixture exactly the sum of its sources. Deterministic in the seed; never commit the
output.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import glob
import json
import math
import os
import shutil
import sys
import time
import zlib
from typing import Callable, Optional, Sequence

import numpy as np
import soundfile as sf
import soxr
import tqdm

from galr_jax.data import voices
from galr_jax.data.audio import write_audio
from galr_jax.data.datasets import AUDIO_SUFFIX, MIXTURE_DIR, source_dir

SPLITS = ("tr", "cv", "tt")
SAMPLE_RATE = 8000
DEFAULT_SECONDS = 4.0
DEFAULT_MIXTURES = (200, 300)  # cv, tt
PAUSE_SECONDS = (0.15, 0.6)  # between joined clips: a breath between words or phrases
LEAD_SECONDS = (0.0, 0.3)  # silence before the first clip of an utterance
# Utterances per speaker: each second of speech is used about REUSE times (in different
# joins), clamped so that a speaker with 100 minutes (festvox-ru) does not outweigh one
# with a minute (a ktuberling language) by more than UTTERANCES[1] / UTTERANCES[0].
REUSE = 2.0
UTTERANCES = (12, 150)
ESPEAK_SENTENCES = 75  # about 3.5 s each: enough for UTTERANCES[1] joins of 4 s
RELATIVE_LEVEL_DB = 5.0  # cv/tt: largest level difference between the two sources
PEAK_LIMIT = 0.9
MALE_F0_HZ = 160.0  # estimated median F0 below this: labelled male
F0_RANGE_HZ = (60.0, 400.0)
_VOICING_THRESHOLD = 0.6  # normalised autocorrelation peak of a voiced frame
_F0_FRAME_SECONDS = 0.04
_PCM_SCALE = 2 ** 15
_ASSIGN_STREAM, _JOIN_STREAM, _PAIR_STREAM, _MIX_STREAM = 0, 1, 2, 3
INFO_FILE = "info.json"
SPEAKERS_FILE = "speakers.json"
SPEAKERS_CSV = "speakers.csv"
POOL_DIR = "utterance_pool"

# Held out of klettres AND ktuberling (whichever of the two has the language).
TEST_LANGUAGES = ("de", "nl", "cs", "el", "sv")
VALID_LANGUAGES = ("da", "hu", "gl", "ro")
TEST_SOURCES = ("codec2", "kajongg")
VALID_SOURCES = ("pocketsphinx",)

# codec2-examples: one file per talker. Left out: coded versions (f2400, m2400),
# excerpts of kept files (hts1a, hts2a, ve9qrp_10s), concatenations (all, hts), and
# modem or tone test signals.
_CODEC2_TALKERS = {
    "big_dog": "wav/big_dog.wav", "cross": "wav/cross.wav", "david4": "wav/david4.wav",
    "forig": "wav/forig.wav", "morig": "wav/morig.wav", "mmt1": "wav/mmt1.wav",
    "hts1": "raw/hts1.raw", "hts2": "raw/hts2.raw", "kristoff": "raw/kristoff.raw",
    "g3plx": "raw/g3plx.raw", "ve9qrp": "wav/ve9qrp.wav", "vk5qi": "wav/vk5qi.wav",
    "vk2tpm": "wav/vk2tpm_004.wav", "speech16k": "raw/speech_orig_16k.wav",
}
_CODEC2_RAW_RATE = 8000
_AUDIO_SUFFIXES = (".wav", ".ogg", ".gsm", ".raw")


@dataclasses.dataclass(frozen=True)
class Source:
    """One package (or wheel) of speech."""

    name: str
    packages: tuple[str, ...]
    licence: str
    find: Callable[[str], list["PoolSpeaker"]]  # system root -> its speakers


@dataclasses.dataclass(frozen=True)
class PoolSpeaker:
    """A speaker as the package lays it out. ``sex`` is '' where the layout does not say."""

    name: str
    source: str
    language: str
    files: tuple[str, ...] = ()
    sex: str = ""
    licence: str = ""
    espeak: Optional[voices.Speaker] = None  # synthetic voices: synthesized, not read


def _under(root: str, path: str) -> str:
    return os.path.join(root, path.lstrip("/"))


def _audio_files(folder: str) -> list[str]:
    """Audio files under ``folder`` (recursively), one per real file (symlinks deduplicated)."""
    found, seen = [], set()
    for path in sorted(glob.glob(os.path.join(folder, "**", "*"), recursive=True)):
        if not path.lower().endswith(_AUDIO_SUFFIXES) or not os.path.isfile(path):
            continue
        real = os.path.realpath(path)
        if real not in seen:
            seen.add(real)
            found.append(path)
    return found


def _asterisk(root: str) -> list[PoolSpeaker]:
    base = _under(root, voices.ASTERISK_ROOT)
    speakers = []
    for s in voices.ASTERISK_SPEAKERS:
        files = voices._asterisk_files(os.path.join(base, s.location))
        if s.name == "asterisk_en_f_allison":  # the Spanish core set: the same woman
            files += voices._asterisk_files(os.path.join(base, "es_MX_f_Allison"))
        if files:
            speakers.append(PoolSpeaker(s.name, "asterisk", s.language, tuple(files), s.sex,
                                        s.licence))
    return speakers


def _per_language(root: str, base: str, source: str, licence: str) -> list[PoolSpeaker]:
    """One speaker per language folder; ``sr@latin`` and the like join ``sr``."""
    folder = _under(root, base)
    groups: dict[str, list[str]] = {}
    for entry in sorted(os.listdir(folder)) if os.path.isdir(folder) else []:
        if os.path.isdir(os.path.join(folder, entry)):
            groups.setdefault(entry.split("@")[0], []).extend(
                _audio_files(os.path.join(folder, entry)))
    return [PoolSpeaker(f"{source}_{lang.lower()}", source, lang, tuple(files), "", licence)
            for lang, files in groups.items() if files]


def _klettres(root: str) -> list[PoolSpeaker]:
    return _per_language(root, "/usr/share/klettres", "klettres", "GPL-2+")


def _ktuberling(root: str) -> list[PoolSpeaker]:
    return _per_language(root, "/usr/share/ktuberling/sounds", "ktuberling", "GPL-2+")


def _kajongg(root: str) -> list[PoolSpeaker]:
    """``voices/<voice>`` are English, ``voices/<lang>/<voice>`` that language."""
    base = _under(root, "/usr/share/kajongg/voices")
    speakers = []
    for folder in sorted(glob.glob(os.path.join(base, "*male*")) +
                         glob.glob(os.path.join(base, "*", "*male*"))):
        relative = os.path.relpath(folder, base).split(os.sep)
        language = relative[0] if len(relative) == 2 else "en"
        voice = relative[-1]
        files = _audio_files(folder) if os.path.isdir(folder) else []
        if files:
            speakers.append(PoolSpeaker(f"kajongg_{language}_{voice}", "kajongg", language,
                                        tuple(files), "f" if voice.startswith("female") else "m",
                                        "GPL-2+"))
    return speakers


def _codec2(root: str) -> list[PoolSpeaker]:
    base = _under(root, "/usr/share/codec2")
    return [PoolSpeaker(f"codec2_{talker}", "codec2", "en", (os.path.join(base, path),), "",
                        "LGPL-2.1")
            for talker, path in _CODEC2_TALKERS.items() if os.path.isfile(os.path.join(base, path))]


def _festvox(root: str) -> list[PoolSpeaker]:
    files = _audio_files(_under(root, "/usr/share/festival/voices/russian/msu_ru_nsh_clunits/wav"))
    return [PoolSpeaker("festvox_ru_m_nsh", "festvox", "ru", tuple(files), "m", "BSD-like")
            ] if files else []


def _pocketsphinx(root: str) -> list[PoolSpeaker]:
    files = _audio_files(_under(root, "/usr/share/pocketsphinx/test/data/librivox"))
    return [PoolSpeaker("pocketsphinx_librivox", "pocketsphinx", "en", tuple(files), "",
                        "public domain (LibriVox); BSD-2")] if files else []


def _espeak(root: str) -> list[PoolSpeaker]:
    try:
        voices.espeak_version()
    except (ImportError, OSError):
        return []
    return [PoolSpeaker(s.name, "espeak", s.language, (), s.sex, s.licence, s)
            for s in voices.ESPEAK_SPEAKERS]


SOURCES = (
    Source("asterisk", voices.ASTERISK_PACKAGES + ("asterisk-core-sounds-es-wav",),
           "CC-BY-SA-3.0 / CC-BY-3.0 / GPL-2 / BSD-style", _asterisk),
    Source("klettres", ("klettres-data",), "GPL-2+", _klettres),
    Source("ktuberling", ("ktuberling-data",), "GPL-2+", _ktuberling),
    Source("kajongg", ("kajongg",), "GPL-2+", _kajongg),
    Source("codec2", ("codec2-examples",), "LGPL-2.1", _codec2),
    Source("festvox", ("festvox-ru",), "BSD-like", _festvox),
    Source("pocketsphinx", ("pocketsphinx-testdata",), "BSD-2", _pocketsphinx),
    Source("espeak", ("espeakng-loader (pip)",), voices.ESPEAK_LICENCE, _espeak),
)
DEBIAN_PACKAGES = tuple(p for s in SOURCES for p in s.packages if "pip" not in p)


def find_speakers(root: str = "/") -> tuple[list[PoolSpeaker], dict[str, dict]]:
    """Every speaker of every source found under ``root``, and per source what was found."""
    speakers, report = [], {}
    for source in SOURCES:
        found = source.find(root)
        speakers += found
        report[source.name] = {"found": bool(found), "speakers": len(found),
                               "packages": list(source.packages), "licence": source.licence}
    return speakers, report


def split_of(speaker: PoolSpeaker) -> str:
    """The split a speaker belongs to: fixed by source and language, so a speaker never moves."""
    if speaker.source in TEST_SOURCES:
        return "tt"
    if speaker.source in VALID_SOURCES:
        return "cv"
    if speaker.source in ("klettres", "ktuberling"):
        language = speaker.language.split("_")[0].lower()
        if language in TEST_LANGUAGES:
            return "tt"
        if language in VALID_LANGUAGES:
            return "cv"
    return "tr"


def read_clip(path: str, sample_rate: int) -> np.ndarray:
    """A clip as float32 mono at ``sample_rate`` (soxr); ``.raw`` is 16-bit at 8 kHz
    (codec2) or 16 kHz (pocketsphinx), by package."""
    if path.lower().endswith(".raw"):
        rate = _CODEC2_RAW_RATE if "codec2" in path else 16000
        data, rate = sf.read(path, samplerate=rate, channels=1, format="RAW", subtype="PCM_16",
                             dtype="float32", always_2d=True)
    else:
        data, rate = sf.read(path, dtype="float32", always_2d=True)
    signal = data.mean(axis=1)
    if rate != sample_rate:
        signal = soxr.resample(signal, rate, sample_rate, quality="HQ")
    return np.ascontiguousarray(signal, dtype=np.float32)


def load_clips(speaker: PoolSpeaker, sample_rate: int, cache: Optional[str],
               espeak_sentences: int = 0) -> list[np.ndarray]:
    """Trimmed, levelled clips of a speaker (unreadable files are left out)."""
    if speaker.espeak is not None:
        return voices.synthesize_pool(speaker.espeak, espeak_sentences, sample_rate, cache)
    clips = []
    for path in speaker.files:
        try:
            signal = read_clip(path, sample_rate)
        except (sf.LibsndfileError, RuntimeError, ValueError):
            continue  # a damaged file is simply not used
        clip = voices.trim_and_level(signal, sample_rate)
        if clip is not None:
            clips.append(clip)
    return clips


def estimate_f0(clips: Sequence[np.ndarray], sample_rate: int) -> float:
    """Median F0 (Hz) of the voiced frames, by normalised autocorrelation; 0 if none."""
    frame = int(_F0_FRAME_SECONDS * sample_rate)
    lags = np.arange(int(sample_rate / F0_RANGE_HZ[1]), int(sample_rate / F0_RANGE_HZ[0]) + 1)
    f0 = []
    for clip in clips:
        count = len(clip) // frame
        if not count:
            continue
        frames = clip[:count * frame].reshape(count, frame).astype(np.float64)
        frames -= frames.mean(axis=1, keepdims=True)
        energy = (frames ** 2).sum(axis=1)
        loud = energy > 0.1 * energy.max()
        for x in frames[loud]:
            spectrum = np.fft.rfft(x, 2 * frame)
            ac = np.fft.irfft(np.abs(spectrum) ** 2)[:frame]
            ac = ac / max(ac[0], 1e-12)
            best = lags[np.argmax(ac[lags])]
            if ac[best] > _VOICING_THRESHOLD:
                f0.append(sample_rate / best)
    return float(np.median(f0)) if f0 else 0.0


def utterance_count(speech_seconds: float, seconds: float) -> int:
    return int(np.clip(math.ceil(REUSE * speech_seconds / seconds), *UTTERANCES))


def join_utterances(rng: np.random.Generator, clips: Sequence[np.ndarray], count: int,
                    length: int, sample_rate: int) -> list[np.ndarray]:
    """``count`` utterances of exactly ``length`` samples from the speaker's clips.

    Clips are taken in a shuffled order (a new shuffle when all were used), with a
    pause in between; no clip repeats within an utterance. A clip longer than the
    remaining room starts the utterance at a random point of it, so long recordings
    give different excerpts.
    """
    utterances, order = [], []
    for _ in range(count):
        out = np.zeros(length, np.float32)
        position = int(rng.uniform(*LEAD_SECONDS) * sample_rate)
        used: set[int] = set()
        while position < length and len(used) < len(clips):
            k = next((k for k in order if k not in used), None)
            if k is None:  # this pass is used up (here): a new shuffled pass
                order = list(rng.permutation(len(clips)))
                k = next(k for k in order if k not in used)
            order.remove(k)
            used.add(k)
            clip = clips[k]
            room = length - position
            if len(clip) > room and not used - {k}:  # a long first clip: a random excerpt
                start = int(rng.integers(0, len(clip) - room + 1))
                clip = clip[start:start + room]
            piece = clip[:room]
            out[position:position + len(piece)] = piece
            position += len(piece) + int(rng.uniform(*PAUSE_SECONDS) * sample_rate)
        utterances.append(out)
    return utterances


def _quantize(signal: np.ndarray) -> np.ndarray:
    return np.round(np.asarray(signal, np.float64) * _PCM_SCALE)


def _write_example(folder: str, ident: str, sources: np.ndarray, sample_rate: int) -> None:
    """Writes ``mix`` and ``s1..sC`` with the mixture exactly the sum of the 16-bit sources."""
    peak = max(np.abs(sources).max(), np.abs(sources.sum(axis=0)).max())
    if peak > PEAK_LIMIT:
        sources = sources * (PEAK_LIMIT / peak)
    quantized = _quantize(sources)
    signals = [quantized.sum(axis=0)] + list(quantized)
    for name, signal in zip([MIXTURE_DIR] + [source_dir(c) for c in range(len(sources))], signals):
        write_audio(os.path.join(folder, name, ident + AUDIO_SUFFIX),
                    (signal / _PCM_SCALE).astype(np.float32), sample_rate, subtype="PCM_16")


def pair_training(rng: np.random.Generator, owners: Sequence[str]) -> list[tuple[int, int]]:
    """Pairs utterance indices so that every pair has two different speakers (an odd one
    out is dropped); every utterance is in at most one pair."""
    order = list(rng.permutation(len(owners)))
    pairs, waiting = [], []
    for i in order:
        partner = next((w for w in waiting if owners[w] != owners[i]), None)
        if partner is None:
            waiting.append(i)
        else:
            waiting.remove(partner)
            pairs.append((partner, i))
    return pairs


@dataclasses.dataclass(frozen=True)
class PoolRequest:
    out: str
    seed: int = 0
    mixtures: tuple[int, int] = DEFAULT_MIXTURES  # cv, tt
    seconds: float = DEFAULT_SECONDS
    sample_rate: int = SAMPLE_RATE
    root: str = "/"
    max_utterances: int = UTTERANCES[1]  # per speaker (smaller for quick builds and tests)
    espeak_sentences: int = ESPEAK_SENTENCES  # per synthetic voice; 0 leaves eSpeak out


def _check_splits(counts: dict[str, int], missing: Sequence[str]) -> None:
    for split, count in counts.items():
        if count < 2:
            raise SystemExit(f"split {split}: {count} speakers found, need 2; sources "
                             f"missing: {', '.join(missing) or 'none'}")


def _warn(message: str) -> None:
    print(f"{'!' * 78}\n{message}\n{'!' * 78}", file=sys.stderr, flush=True)


def _write_json(path: str, content) -> None:
    with open(f"{path}.tmp", "w", encoding="utf-8") as f:
        json.dump(content, f, indent=2)
    os.replace(f"{path}.tmp", path)


def build(request: PoolRequest, overwrite: bool = False) -> dict:
    """Builds the pool; returns ``info.json``'s content.

    Raises:
      SystemExit: ``--out`` holds an earlier build and ``overwrite`` is False, or a split
        has fewer than two speakers (the sources found are listed).
    """
    started = time.monotonic()
    present = [p for p in [*SPLITS, INFO_FILE, SPEAKERS_FILE, SPEAKERS_CSV]
               if os.path.lexists(os.path.join(request.out, p))]
    if present and not overwrite:
        raise SystemExit(f"{request.out}: already holds {', '.join(present)}; pass --overwrite "
                         "to replace them (the synthetic utterance cache is kept)")
    for name in present:
        path = os.path.join(request.out, name)
        if os.path.isdir(path):
            shutil.rmtree(path)
        else:
            os.unlink(path)
    os.makedirs(request.out, exist_ok=True)

    speakers, report = find_speakers(request.root)
    if not request.espeak_sentences:
        speakers = [s for s in speakers if s.source != "espeak"]
        report["espeak"].update(found=True, speakers=0, note="not requested")
    missing = [name for name, r in report.items() if not r["found"]]
    for name, r in report.items():
        print(f"  {name:13s} {'found' if r['found'] else 'MISSING':8s} {r['speakers']:3d} "
              f"speakers  ({', '.join(r['packages'])})")
    if missing:
        packages = [p for name in missing for p in report[name]["packages"] if "pip" not in p]
        _warn(f"Sources missing: {', '.join(missing)}.\n"
              + (f"Install with: apt-get install --no-install-recommends {' '.join(packages)}"
                 if packages else "pip install espeakng-loader"))

    # Before any audio is read or synthesised: a split without two speakers stops the build.
    _check_splits({s: sum(split_of(p) == s for p in speakers) for s in SPLITS}, missing)

    length = int(round(request.seconds * request.sample_rate))
    cache = os.path.join(request.out, POOL_DIR, f"{request.sample_rate}hz")
    rows, pools = [], {}
    for speaker in tqdm.tqdm(speakers, desc="speakers", unit="spk"):
        clips = load_clips(speaker, request.sample_rate, cache, request.espeak_sentences)
        if not clips:
            print(f"  {speaker.name}: no usable speech, left out", file=sys.stderr)
            continue
        seconds = sum(len(c) for c in clips) / request.sample_rate
        f0 = estimate_f0(clips, request.sample_rate)
        count = min(utterance_count(seconds, request.seconds), request.max_utterances)
        rng = np.random.default_rng([request.seed, _JOIN_STREAM, _stable_hash(speaker.name)])
        pools[speaker.name] = join_utterances(rng, clips, count, length, request.sample_rate)
        sex = speaker.sex or ("m" if 0 < f0 < MALE_F0_HZ else "f" if f0 else "?")
        rows.append({"name": speaker.name, "source": speaker.source,
                     "language": speaker.language, "f0_hz": round(f0, 1), "sex": sex,
                     "sex_from": "layout" if speaker.sex else "estimated F0",
                     "seconds": round(seconds, 1), "clips": len(clips), "utterances": count,
                     "split": split_of(speaker), "real": speaker.espeak is None,
                     "licence": speaker.licence})

    by_split = {s: [r for r in rows if r["split"] == s] for s in SPLITS}
    _check_splits({s: len(m) for s, m in by_split.items()}, missing)

    # Training: every clean utterance once, paired with another speaker's.
    owners = [r["name"] for r in by_split["tr"] for _ in pools[r["name"]]]
    flat = [u for r in by_split["tr"] for u in pools[r["name"]]]
    pairs = pair_training(np.random.default_rng([request.seed, _PAIR_STREAM]), owners)
    _make_folders(request.out, "tr")
    for m, (a, b) in enumerate(tqdm.tqdm(pairs, desc="tr", unit="pair")):
        _write_example(os.path.join(request.out, "tr"), f"{m:05d}_{owners[a]}_{owners[b]}",
                       np.stack([flat[a], flat[b]]), request.sample_rate)

    for split_index, (split, count) in enumerate(zip(("cv", "tt"), request.mixtures), start=1):
        _make_folders(request.out, split)
        members = [r["name"] for r in by_split[split]]
        for m in tqdm.tqdm(range(count), desc=split, unit="mix"):
            rng = np.random.default_rng([request.seed, _MIX_STREAM, split_index, m])
            chosen = [members[i] for i in rng.choice(len(members), 2, replace=False)]
            sources = np.stack([pools[n][int(rng.integers(len(pools[n])))] for n in chosen])
            levels = rng.uniform(-RELATIVE_LEVEL_DB / 2, RELATIVE_LEVEL_DB / 2, 2)
            _write_example(os.path.join(request.out, split), f"{m:05d}_{chosen[0]}_{chosen[1]}",
                           sources * 10 ** (levels[:, None] / 20), request.sample_rate)

    _write_json(os.path.join(request.out, SPEAKERS_FILE), rows)
    with open(os.path.join(request.out, SPEAKERS_CSV), "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    info = {
        "request": {k: v for k, v in dataclasses.asdict(request).items() if k != "out"},
        "layout": "wsj0-mix: {tr,cv,tt}/{mix,s1,s2}/<id>.wav; tr = pairs of clean utterances "
                  "for data.dynamic_mixing",
        "sources": report,
        "missing": missing,
        "summary": summarize(rows),
        "mixtures": {"tr": len(pairs), "cv": request.mixtures[0], "tt": request.mixtures[1]},
        "build_seconds": round(time.monotonic() - started, 1),
        "note": "Generated audio: do not commit it.",
    }
    _write_json(os.path.join(request.out, INFO_FILE), info)
    return info


def summarize(rows: Sequence[dict]) -> dict:
    """Speakers and hours of speech per split and source, and the sexes per split."""
    out: dict = {}
    for row in rows:
        split = out.setdefault(row["split"], {"speakers": 0, "hours": 0.0, "sexes": {},
                                              "sources": {}})
        split["speakers"] += 1
        split["hours"] = round(split["hours"] + row["seconds"] / 3600, 3)
        split["sexes"][row["sex"]] = split["sexes"].get(row["sex"], 0) + 1
        source = split["sources"].setdefault(row["source"], {"speakers": 0, "hours": 0.0})
        source["speakers"] += 1
        source["hours"] = round(source["hours"] + row["seconds"] / 3600, 3)
    return out


def _make_folders(out: str, split: str) -> None:
    for name in [MIXTURE_DIR, source_dir(0), source_dir(1)]:
        os.makedirs(os.path.join(out, split, name), exist_ok=True)


def _stable_hash(text: str) -> int:
    return zlib.crc32(text.encode())


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(
        description="Build the real-voice pool (wsj0-mix layout; train with data.dynamic_mixing).")
    parser.add_argument("--out", required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num-valid", type=int, default=DEFAULT_MIXTURES[0])
    parser.add_argument("--num-test", type=int, default=DEFAULT_MIXTURES[1])
    parser.add_argument("--seconds", type=float, default=DEFAULT_SECONDS,
                        help="utterance and mixture length")
    parser.add_argument("--sample-rate", type=int, default=SAMPLE_RATE)
    parser.add_argument("--max-utterances", type=int, default=UTTERANCES[1],
                        help="per speaker (lower for a quick build)")
    parser.add_argument("--espeak-sentences", type=int, default=ESPEAK_SENTENCES,
                        help="sentences per synthetic voice; 0 leaves the eSpeak voices out")
    parser.add_argument("--system-root", default="/",
                        help="where the Debian packages' /usr/share lies (tests use a fake tree)")
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args(argv)
    if (min(args.num_valid, args.num_test, args.max_utterances) < 1 or args.seconds <= 0
            or args.espeak_sentences < 0):
        parser.error("counts must be >= 1, --seconds positive, --espeak-sentences >= 0")
    info = build(PoolRequest(args.out, args.seed, (args.num_valid, args.num_test), args.seconds,
                             args.sample_rate, args.system_root, args.max_utterances,
                             args.espeak_sentences),
                 overwrite=args.overwrite)
    for split in SPLITS:
        s = info["summary"][split]
        print(f"{split}: {s['speakers']} speakers, {s['hours']:.2f} h of speech, "
              f"{info['mixtures'][split]} mixtures; "
              + ", ".join(f"{k} {v['speakers']}" for k, v in s["sources"].items()))
    print(f"{args.out}: built in {info['build_seconds']} s; speakers in {SPEAKERS_CSV}")


if __name__ == "__main__":
    main()
