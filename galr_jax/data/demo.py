"""Builds a small speech-separation set in the wsj0-2mix layout from offline speech.

    python -m galr_jax.data.demo --out data/demo [--seed 0] [--num-train 2000 --num-valid 200
        --num-test 200 --sample-rate 8000 --num-speakers-per-mix 2 --seconds 4]

Speech comes from two offline pools (see :mod:`galr_jax.data.voices`): seven real
speakers of the Asterisk telephone prompts (Debian packages; installed here when
running as root with apt, unless ``--no-install``) and 24 synthetic eSpeak NG
voices. Without the Asterisk packages, or at a rate other than their 8 kHz, only
synthetic voices are used (upsampled telephone speech would leave the upper band
empty), and the builder says so.

Speakers are split disjointly between ``tr``, ``cv`` and ``tt`` (``speakers.json``
lists them), so the test figure is measured on unseen voices. Each source is a
speaker's utterances strung together with short pauses, cut to ``--seconds``;
sources get levels uniform in +-2.5 dB (so two speakers differ by at most 5 dB),
the mixture is their sum, and everything is scaled together when a peak would
exceed 0.9. Files are 16-bit PCM WAV, with the mixture exactly the sum of the
written sources. The result is deterministic in the seed; ``info.json`` (written
last) records the request, sources, licences and sizes. The synthesized utterances
are cached under ``OUT/utterance_pool`` so rebuilding is fast. Never commit the
generated audio.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import shutil
import subprocess
import sys
import time
from typing import Optional, Sequence

import numpy as np
import tqdm

from galr_jax.data import voices
from galr_jax.data.audio import write_audio
from galr_jax.data.datasets import AUDIO_SUFFIX, MIXTURE_DIR, source_dir

SPLITS = ("tr", "cv", "tt")
DEFAULT_COUNTS = (2000, 200, 200)
DEFAULT_SECONDS = 4.0
RELATIVE_LEVEL_DB = 5.0  # largest level difference between two sources of a mixture
PEAK_LIMIT = 0.9  # largest magnitude of any written sample
PAUSE_SECONDS = (0.05, 0.3)  # silence between the utterances of one source
HELD_OUT_FRACTION = 0.15  # of each (source, sex) group, for cv and again for tt
MIN_GROUP_TO_HOLD_OUT = 3  # smaller groups stay in training
POOL_SIZE_RANGE = (4, 100)  # synthetic sentences per voice (automatic size)
MEAN_SENTENCE_SECONDS = 3.0  # of a synthetic sentence, to size the pool
POOL_DIR = "utterance_pool"
INFO_FILE = "info.json"
SPEAKERS_FILE = "speakers.json"
_PCM_SCALE = 2 ** 15
_ASSIGN_STREAM = 0
_MIXTURE_STREAM = 1
_APT_TIMEOUT_S = 900


@dataclasses.dataclass(frozen=True)
class BuildRequest:
    """What to build; ``info.json`` keeps it so an identical rebuild is skipped."""

    out: str
    seed: int = 0
    counts: tuple[int, int, int] = DEFAULT_COUNTS  # tr, cv, tt
    sample_rate: int = voices.ASTERISK_RATE
    num_speakers_per_mix: int = 2
    seconds: float = DEFAULT_SECONDS
    voice_set: str = "all"  # all | synthetic (--voices)
    install: bool = True  # may apt-get install the Asterisk packages
    asterisk_root: str = voices.ASTERISK_ROOT
    pool_size: int = 0  # synthetic sentences per voice; 0 sizes it from the request

    def key(self) -> dict:
        """The fields that determine the audio (not where it goes or how it was obtained)."""
        return {"seed": self.seed, "counts": list(self.counts), "sample_rate": self.sample_rate,
                "num_speakers_per_mix": self.num_speakers_per_mix, "seconds": self.seconds,
                "voices": self.voice_set, "pool_size": self.resolved_pool_size(),
                "asterisk_root": self.asterisk_root}

    def resolved_pool_size(self) -> int:
        if self.pool_size:
            return self.pool_size
        speech = sum(self.counts) * self.num_speakers_per_mix * self.seconds
        per_voice = speech / MEAN_SENTENCE_SECONDS / len(voices.ESPEAK_SPEAKERS)
        return int(min(max(math.ceil(per_voice), POOL_SIZE_RANGE[0]), POOL_SIZE_RANGE[1]))


def _warn(message: str) -> None:
    line = "!" * 78
    print(f"{line}\n{message}\n{line}", file=sys.stderr, flush=True)


def _install_asterisk() -> Optional[str]:
    """Runs apt-get for the Asterisk packages; returns why it failed, or None."""
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    commands = [["apt-get", "update"],
                ["apt-get", "install", "-y", "--no-install-recommends", *voices.ASTERISK_PACKAGES]]
    for command in commands:
        print("running:", " ".join(command), flush=True)
        try:
            done = subprocess.run(command, env=env, capture_output=True, text=True,
                                  timeout=_APT_TIMEOUT_S)
        except (OSError, subprocess.TimeoutExpired) as e:
            return f"{command[0]} {command[1]} failed ({e})"
        if done.returncode:
            tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
            return f"{' '.join(command[:2])} exited {done.returncode}: {' | '.join(tail)}"
    return None


def asterisk_speakers(request: BuildRequest) -> tuple[list[voices.Speaker], str]:
    """The usable Asterisk voices (installing them if allowed), and a note on why not all."""
    if request.voice_set == "synthetic":
        return [], "not requested (--voices synthetic)"
    if request.sample_rate != voices.ASTERISK_RATE:
        return [], (f"recorded at {voices.ASTERISK_RATE} Hz; at {request.sample_rate} Hz only "
                    "synthetic voices are used")
    def installed():
        return [s for s in voices.ASTERISK_SPEAKERS
                if voices.asterisk_available(s, request.asterisk_root)]

    present = installed()
    if len(present) == len(voices.ASTERISK_SPEAKERS):
        return present, "all installed"
    can_install = (request.install and request.asterisk_root == voices.ASTERISK_ROOT
                   and hasattr(os, "geteuid") and os.geteuid() == 0 and shutil.which("apt-get"))
    if not can_install:
        reason = ("--no-install" if not request.install
                  else "--asterisk-root is not the Debian location"
                  if request.asterisk_root != voices.ASTERISK_ROOT else "not root or no apt-get")
        note = (f"{len(present)} of {len(voices.ASTERISK_SPEAKERS)} voices installed; cannot "
                f"install the rest ({reason}); install with: apt-get install "
                f"--no-install-recommends {' '.join(voices.ASTERISK_PACKAGES)}")
        return present, note
    failure = _install_asterisk()
    present = installed()
    if failure:
        return present, f"installation failed: {failure}"
    return present, "installed by this build"


def assign_splits(speakers: Sequence[voices.Speaker], seed: int,
                  per_mix: int) -> dict[str, list[voices.Speaker]]:
    """Disjoint speakers per split: from each (source, sex) group of 3 or more, 15% go
    to ``tt``, 15% to ``cv`` (at least one each), the rest to ``tr``.

    Raises:
      ValueError: a split ends up with fewer than ``per_mix`` speakers.
    """
    rng = np.random.default_rng([seed, _ASSIGN_STREAM])
    splits = {name: [] for name in SPLITS}
    groups: dict[tuple[str, str], list[voices.Speaker]] = {}
    for speaker in speakers:
        groups.setdefault((speaker.source, speaker.sex), []).append(speaker)
    for group in groups.values():
        order = [group[i] for i in rng.permutation(len(group))]
        held = (max(1, round(HELD_OUT_FRACTION * len(group)))
                if len(group) >= MIN_GROUP_TO_HOLD_OUT else 0)
        splits["tt"] += order[:held]
        splits["cv"] += order[held:2 * held]
        splits["tr"] += order[2 * held:]
    for name, members in splits.items():
        if len(members) < per_mix:
            raise ValueError(f"split {name} has {len(members)} speakers, fewer than "
                             f"--num-speakers-per-mix={per_mix}")
    return splits


def make_source(rng: np.random.Generator, pool: Sequence[np.ndarray], length: int,
                sample_rate: int) -> np.ndarray:
    """A speaker's utterances with short pauses between them, cut to ``length`` samples.

    The first utterance starts at a random point of its first half, so sources do
    not all begin at a speech onset.
    """
    first = pool[int(rng.integers(len(pool)))]
    pieces = [first[int(rng.integers(0, len(first) // 2 + 1)):]]
    total = len(pieces[0])
    while total < length:
        pause = np.zeros(int(rng.uniform(*PAUSE_SECONDS) * sample_rate), np.float32)
        utterance = pool[int(rng.integers(len(pool)))]
        pieces += [pause, utterance]
        total += len(pause) + len(utterance)
    return np.concatenate(pieces)[:length]


def make_mixture(rng: np.random.Generator, speakers: Sequence[voices.Speaker],
                 pools: dict[str, list[np.ndarray]], per_mix: int, length: int,
                 sample_rate: int) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Draws ``per_mix`` different speakers and mixes one source of each.

    Returns:
      ``(speaker names, mixture [T], sources [C, T])`` float32 on the 16-bit grid,
      with the mixture exactly the sum of the sources and every |sample| <= 0.9.
    """
    chosen = [speakers[i] for i in rng.choice(len(speakers), per_mix, replace=False)]
    sources = np.stack([make_source(rng, pools[s.name], length, sample_rate) for s in chosen])
    levels_db = rng.uniform(-RELATIVE_LEVEL_DB / 2, RELATIVE_LEVEL_DB / 2, per_mix)
    sources = sources.astype(np.float64) * 10 ** (levels_db[:, None] / 20)
    peak = max(np.abs(sources).max(), np.abs(sources.sum(axis=0)).max())
    if peak > PEAK_LIMIT:
        sources *= PEAK_LIMIT / peak
    # Quantize the sources first and sum integers, so the written files add up exactly.
    quantized = np.round(sources * _PCM_SCALE)
    mixture = quantized.sum(axis=0)
    return ([s.name for s in chosen], (mixture / _PCM_SCALE).astype(np.float32),
            (quantized / _PCM_SCALE).astype(np.float32))


def load_pools(speakers: Sequence[voices.Speaker], request: BuildRequest) -> dict[str, list]:
    """Utterances per speaker: all Asterisk prompts, and the cached synthetic sentences."""
    cache = os.path.join(request.out, POOL_DIR, f"{request.sample_rate}hz")
    pools = {}
    for speaker in tqdm.tqdm(speakers, desc="voices", unit="voice"):
        if speaker.source == "asterisk":
            pools[speaker.name] = voices.load_asterisk_pool(speaker, request.asterisk_root)
        else:
            pools[speaker.name] = voices.synthesize_pool(
                speaker, request.resolved_pool_size(), request.sample_rate, cache)
        if not pools[speaker.name]:
            raise RuntimeError(f"voice {speaker.name}: no usable utterances")
    return pools


def _existing_build(request: BuildRequest) -> Optional[dict]:
    try:
        with open(os.path.join(request.out, INFO_FILE), encoding="utf-8") as f:
            info = json.load(f)
    except (OSError, ValueError):
        return None
    return info if info.get("request") == request.key() else None


def _clear_outputs(out: str, overwrite: bool) -> None:
    present = [p for p in [*SPLITS, INFO_FILE, SPEAKERS_FILE]
               if os.path.lexists(os.path.join(out, p))]
    if present and not overwrite:
        raise SystemExit(f"{out}: already holds {', '.join(present)} from another build; "
                         "pass --overwrite to replace them (the utterance pool is kept)")
    for name in present:
        path = os.path.join(out, name)
        shutil.rmtree(path) if os.path.isdir(path) and not os.path.islink(path) else os.unlink(path)


def _write_json(path: str, content: dict) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(content, f, indent=2)
    os.replace(tmp, path)


def _folder_bytes(folder: str) -> int:
    return sum(os.path.getsize(os.path.join(parent, name))
               for parent, _, files in os.walk(folder) for name in files)


def build(request: BuildRequest, overwrite: bool = False) -> dict:
    """Builds the set (or finds it already built); returns the content of ``info.json``."""
    existing = _existing_build(request)
    if existing is not None:
        print(f"{request.out}: already built with these settings ({INFO_FILE}); nothing to do")
        return existing
    started = time.monotonic()
    os.makedirs(request.out, exist_ok=True)
    _clear_outputs(request.out, overwrite)

    recorded, asterisk_note = asterisk_speakers(request)
    print(f"Asterisk voices: {len(recorded)} of {len(voices.ASTERISK_SPEAKERS)} ({asterisk_note})")
    if request.voice_set == "all" and not recorded:
        _warn(f"Asterisk prompts unavailable: {asterisk_note}.\nBuilding from SYNTHETIC eSpeak "
              "NG voices only: the set is easier and less realistic than one with real speech.")
    speakers = recorded + list(voices.ESPEAK_SPEAKERS)
    splits = assign_splits(speakers, request.seed, request.num_speakers_per_mix)
    pools = load_pools(speakers, request)

    length = int(round(request.seconds * request.sample_rate))
    for split_index, (split, count) in enumerate(zip(SPLITS, request.counts)):
        folders = [MIXTURE_DIR] + [source_dir(c) for c in range(request.num_speakers_per_mix)]
        for folder in folders:
            os.makedirs(os.path.join(request.out, split, folder), exist_ok=True)
        for m in tqdm.tqdm(range(count), desc=split, unit="mix"):
            rng = np.random.default_rng([request.seed, _MIXTURE_STREAM, split_index, m])
            names, mixture, sources = make_mixture(rng, splits[split], pools,
                                                   request.num_speakers_per_mix, length,
                                                   request.sample_rate)
            ident = f"{m:05d}_{'_'.join(names)}{AUDIO_SUFFIX}"
            for folder, signal in zip(folders, [mixture, *sources]):
                write_audio(os.path.join(request.out, split, folder, ident), signal,
                            request.sample_rate, subtype="PCM_16")

    _write_json(os.path.join(request.out, SPEAKERS_FILE),
                {split: [dataclasses.asdict(s) for s in members]
                 for split, members in splits.items()})
    info = {
        "request": request.key(),
        "layout": f"wsj0-mix: {{tr,cv,tt}}/{{mix,s1..s{request.num_speakers_per_mix}}}/<id>.wav",
        "format": "WAV, 16-bit PCM, mono; mixture = sum of sources exactly",
        "mixtures": dict(zip(SPLITS, request.counts)),
        "relative_level_db": RELATIVE_LEVEL_DB,
        "peak_limit": PEAK_LIMIT,
        "speakers_per_split": {split: len(members) for split, members in splits.items()},
        "sources": {
            "asterisk": {"used": bool(recorded), "voices": len(recorded), "note": asterisk_note,
                         "packages": list(voices.ASTERISK_PACKAGES)},
            "espeak": {"used": True, "voices": len(voices.ESPEAK_SPEAKERS),
                       "version": voices.espeak_version(),
                       "sentences_per_voice": request.resolved_pool_size()},
        },
        "licences": {s.name: s.licence for s in speakers},
        "bytes_on_disk": {split: _folder_bytes(os.path.join(request.out, split))
                          for split in SPLITS},
        "build_seconds": round(time.monotonic() - started, 1),
        "note": "Generated audio: do not commit it.",
    }
    _write_json(os.path.join(request.out, INFO_FILE), info)
    return info


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(
        description="Build the offline demo speech-separation set (wsj0-2mix layout).")
    parser.add_argument("--out", required=True, help="output folder, e.g. data/demo")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num-train", type=int, default=DEFAULT_COUNTS[0])
    parser.add_argument("--num-valid", type=int, default=DEFAULT_COUNTS[1])
    parser.add_argument("--num-test", type=int, default=DEFAULT_COUNTS[2])
    parser.add_argument("--sample-rate", type=int, default=voices.ASTERISK_RATE)
    parser.add_argument("--num-speakers-per-mix", type=int, choices=(2, 3), default=2)
    parser.add_argument("--seconds", type=float, default=DEFAULT_SECONDS, help="mixture length")
    parser.add_argument("--voices", choices=("all", "synthetic"), default="all",
                        help="all: Asterisk recordings where available plus eSpeak NG voices")
    parser.add_argument("--no-install", action="store_true",
                        help="never apt-get install the Asterisk packages")
    parser.add_argument("--asterisk-root", default=voices.ASTERISK_ROOT,
                        help="folder holding the Asterisk voice folders")
    parser.add_argument("--pool-size", type=int, default=0,
                        help="synthetic sentences per voice (0: sized from the request)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an earlier build in --out")
    args = parser.parse_args(argv)
    counts = (args.num_train, args.num_valid, args.num_test)
    if min(counts) < 1 or args.seconds <= 0 or args.sample_rate <= 0 or args.pool_size < 0:
        parser.error("counts must be >= 1; --seconds, --sample-rate positive; --pool-size >= 0")
    request = BuildRequest(out=args.out, seed=args.seed, counts=counts,
                           sample_rate=args.sample_rate,
                           num_speakers_per_mix=args.num_speakers_per_mix, seconds=args.seconds,
                           voice_set=args.voices, install=not args.no_install,
                           asterisk_root=args.asterisk_root, pool_size=args.pool_size)
    info = build(request, overwrite=args.overwrite)
    total = sum(info["bytes_on_disk"].values())
    print(f"{args.out}: {info['mixtures']} mixtures, {total / 2 ** 20:.0f} MiB, "
          f"built in {info['build_seconds']} s; speakers in {SPEAKERS_FILE}")


if __name__ == "__main__":
    main()
