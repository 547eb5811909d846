"""``galr-separate --stream``: separate a file or standard input as a live stream.

Usage::

    galr-separate --stream --workdir runs/demo_causal meeting.wav --out separated/
    arecord -q -t raw -f S16_LE -r 8000 -c 1 | \\
        galr-separate --stream --workdir runs/demo_causal - --out separated/

The input is read in blocks of ``--block-ms`` and pushed through a
:class:`galr_jax.inference.streaming.StreamingSeparator`; each source's samples are
appended to ``OUT/<stem>_s<c>.wav`` (32-bit float) as soon as they are final. ``-``
reads standard input as raw signed 16-bit little-endian mono PCM at the model's rate
(what ``arecord -t raw -f S16_LE`` or ``sox ... -t raw -e signed -b 16`` write), since a
WAV header cannot be parsed from a pipe. At the end it reports the algorithmic latency,
the compute time per segment step and the real-time factor (compute / audio duration) on
the CPU threads the process may use; restrict them to one core with ``taskset -c 0``.
"""

from __future__ import annotations

import os
import sys
import time

import numpy as np
import soundfile as sf

from galr_jax.inference.audio_io import open_input
from galr_jax.inference.streaming import DEFAULT_MAX_SECONDS, StreamingSeparator
from galr_jax.training.checkpoints import CheckpointError, parse_which

STDIN = "-"
_PCM16_SCALE = 32768.0
_PCM16_BYTES = 2
_PERCENTILE = 95


def _blocks(path: str, block: int, sample_rate: int):
    """Mono float32 blocks of about ``block`` samples at ``sample_rate``."""
    if path == STDIN:
        while True:
            data = sys.stdin.buffer.read(block * _PCM16_BYTES)
            if not data:
                return
            usable = len(data) - len(data) % _PCM16_BYTES
            yield np.frombuffer(data[:usable], "<i2").astype(np.float32) / _PCM16_SCALE
        return
    # Files go through the same reader as galr-separate: mono, resampled with soxr to the
    # model's rate, NaN/Inf samples reported.
    yield from open_input(path, sample_rate, block).blocks


def _max_seconds(path: str) -> float:
    if path == STDIN:
        return DEFAULT_MAX_SECONDS
    return max(sf.info(path).duration, DEFAULT_MAX_SECONDS)


def stream_files(args, output_paths) -> int:
    """Streams each input of ``args`` (parsed by :mod:`galr_jax.inference.cli`); exit status."""
    if args.exported or args.pcm16:
        print("error: --stream runs a causal model (--workdir or --model) and writes float WAV "
              "(--pcm16 scales by the whole signal's peak)", file=sys.stderr)
        return 2
    failures = 0
    os.makedirs(args.out, exist_ok=True)
    for path in args.inputs:
        try:
            options = dict(compute_dtype=args.compute_dtype, max_seconds=_max_seconds(path))
            separator = (StreamingSeparator.from_pretrained(args.model, **options) if args.model
                         else StreamingSeparator.from_checkpoint(
                             args.workdir, parse_which(args.which), **options))
            stem_path = "stdin.raw" if path == STDIN else path
            destinations = output_paths(stem_path, args.out, separator.num_sources)
            existing = [d for d in destinations if os.path.exists(d)]
            if existing and not args.force:
                raise ValueError(f"{existing[0]} exists (--force replaces it)")
            _stream_one(separator, path, destinations, args)
        # ValueError covers AudioError (a bad or unreadable input file).
        except (CheckpointError, ValueError, OSError, sf.LibsndfileError) as e:
            print(f"FAILED {path}: {e}", file=sys.stderr)
            failures += 1
    return 1 if failures else 0


def _stream_one(separator: StreamingSeparator, path: str, destinations, args) -> None:
    rate = separator.sample_rate
    compile_seconds = separator.warm_up()
    block = max(1, round(args.block_ms * rate / 1000))
    writers = [sf.SoundFile(d, "w", rate, 1, "FLOAT") for d in destinations]
    received = 0
    start = time.perf_counter()
    try:
        for samples in _blocks(path, block, rate):
            received += samples.shape[0]
            _write(writers, separator.push(samples))
        step_seconds = list(separator.step_seconds)
        _write(writers, separator.flush())
    finally:
        for writer in writers:
            writer.close()
    wall = time.perf_counter() - start
    audio = received / rate
    compute = float(np.sum(step_seconds)) if step_seconds else 0.0
    threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    step_ms = (f"{1e3 * np.mean(step_seconds):.2f} ms mean, "
               f"{1e3 * np.percentile(step_seconds, _PERCENTILE):.2f} ms p{_PERCENTILE}"
               if step_seconds else "no full segment")
    print(f"{path}: {audio:.2f} s streamed -> {', '.join(destinations)}\n"
          f"  algorithmic latency {1e3 * separator.latency_seconds:.1f} ms "
          f"({separator.latency_samples} samples); segment step every "
          f"{1e3 * separator.hop_samples / rate:.1f} ms: {step_ms}\n"
          f"  real-time factor {compute / max(audio, 1e-9):.3f} (segment steps), "
          f"{wall / max(audio, 1e-9):.3f} (wall, reading and writing included) on "
          f"{threads} CPU thread(s); compilation {compile_seconds:.1f} s, before the stream",
          file=sys.stderr)


def _write(writers, separated: np.ndarray) -> None:
    for writer, source in zip(writers, separated):
        writer.write(source)
