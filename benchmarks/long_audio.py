"""Long-audio separation benchmark: peak memory and real-time factor of the chunked path.

    JAX_PLATFORMS=cpu python benchmarks/long_audio.py --config configs/galr_1.5m.yaml --seconds 3600

Writes a synthetic recording of ``--seconds`` (8 kHz 16-bit WAV, generated block by
block) and separates it file to file with :class:`galr_jax.inference.Separator`, as
``galr-separate`` does. Weights are freshly initialised unless ``--workdir`` is given
(the speed does not depend on them). The first, short run compiles the model and is
timed apart; the reported real-time factor is the long run's wall time over the audio
duration. Peak memory is the process's peak resident set (VmHWM), which includes
JAX, XLA and the compiler; ``rss_growth_mb`` is how much it rose during the long run.
Prints one JSON line (also written to ``--json``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time

import jax
import numpy as np
import soundfile

from galr_jax.config import COMPUTE_DTYPE_NAMES, load_config
from galr_jax.inference import Separator
from galr_jax.models import build_model

BLOCK_SECONDS = 10  # generation block of the synthetic input
TONE_HZ = (140.0, 220.0)  # two voiced "speakers" with a slow pitch wobble


def _peak_rss_mb() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM")) / 1024


def write_recording(path: str, seconds: int, sample_rate: int, seed: int = 0) -> None:
    """Two amplitude-modulated harmonic sources plus a little noise, written block by block."""
    rng = np.random.default_rng(seed)
    block = BLOCK_SECONDS * sample_rate
    with soundfile.SoundFile(path, "w", sample_rate, 1, "PCM_16") as f:
        for start in range(0, seconds * sample_rate, block):
            t = (start + np.arange(min(block, seconds * sample_rate - start))) / sample_rate
            mixture = 0.01 * rng.standard_normal(t.size)
            for k, pitch in enumerate(TONE_HZ):
                phase = 2 * np.pi * pitch * (t + 0.05 * np.sin(2 * np.pi * 0.3 * (k + 1) * t))
                envelope = np.clip(np.sin(2 * np.pi * (2.0 + k) * t), 0, None)
                mixture += 0.2 * envelope * sum(np.sin(h * phase) / h for h in range(1, 4))
            f.write(mixture.astype(np.float32))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True, help="model config (ignored with --workdir)")
    parser.add_argument("--workdir", help="use trained weights from this workdir/checkpoint")
    parser.add_argument("--seconds", type=int, default=3600, help="length of the recording")
    parser.add_argument("--chunk-seconds", type=float, default=None)
    parser.add_argument("--overlap-seconds", type=float, default=None)
    parser.add_argument("--batch-size", type=int, default=None, help="chunks per forward pass")
    parser.add_argument("--compute-dtype", choices=COMPUTE_DTYPE_NAMES, default=None,
                        help="runtime.compute_dtype for the separation (default: the config's)")
    parser.add_argument("--json", help="also write the result here")
    args = parser.parse_args()
    options = dict(chunk_seconds=args.chunk_seconds, overlap_seconds=args.overlap_seconds,
                   batch_size=args.batch_size, compute_dtype=args.compute_dtype)
    if args.workdir:
        separator = Separator.from_checkpoint(args.workdir, **options)
    else:
        config = load_config(args.config)
        variables = build_model(config).init(jax.random.PRNGKey(0),
                                             np.zeros((1, config.model.window * 4), np.float32))
        separator = Separator(config, variables, **options)
    rate = separator.sample_rate
    with tempfile.TemporaryDirectory() as folder:
        warm, long = os.path.join(folder, "warm.wav"), os.path.join(folder, "long.wav")
        warm_seconds = int(np.ceil(separator.batch_size * separator.chunk_samples / rate)) + 1
        write_recording(warm, warm_seconds, rate)
        write_recording(long, args.seconds, rate, seed=1)
        outputs = [os.path.join(folder, f"out_s{c + 1}.wav") for c in range(separator.num_sources)]
        start = time.perf_counter()
        separator.separate_to_files(warm, outputs, overwrite=True)
        compile_seconds = time.perf_counter() - start
        rss_before = _peak_rss_mb()
        start = time.perf_counter()
        separator.separate_to_files(long, outputs, overwrite=True)
        wall = time.perf_counter() - start
    result = {
        "config": os.path.basename(args.config) if not args.workdir else args.workdir,
        "audio_seconds": args.seconds, "wall_seconds": round(wall, 2),
        "real_time_factor": round(wall / args.seconds, 4),
        "peak_rss_mb": round(_peak_rss_mb(), 1),
        "rss_growth_mb": round(_peak_rss_mb() - rss_before, 1),
        "first_run_seconds_with_compile": round(compile_seconds, 2),
        "chunk_seconds": separator.chunk_samples / rate,
        "overlap_seconds": separator.overlap_samples / rate,
        "batch_size": separator.batch_size,
        "compute_dtype": separator.config.runtime.compute_dtype,
        "devices": [str(d) for d in jax.local_devices()], "cpu_count": os.cpu_count(),
        "python": platform.python_version(), "jax": jax.__version__,
    }
    line = json.dumps(result)
    print(line)
    if args.json:
        with open(args.json, "w") as f:
            f.write(line + "\n")


if __name__ == "__main__":
    sys.exit(main())
