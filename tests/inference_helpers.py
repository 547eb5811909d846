"""Shared pieces of the inference, separation, evaluation and interop tests.

A tiny GALR (compiles in about a second on one CPU core), weights-only checkpoints of
a freshly initialised model written with ``save_variables``, synthetic speech-like
signals, and a runner for the command-line tools in a subprocess.
"""

from __future__ import annotations

import subprocess
import sys
from typing import Sequence

import numpy as np
import soundfile

from subprocess_env import REPO, cpu_environment

SAMPLE_RATE = 8000
TINY_MODEL = {
    "separator": "galr", "window": 16, "num_filters": 16, "features": 16, "hidden": 16,
    "segment_length": 20, "low_dim": 8, "num_blocks": 1, "num_heads": 2,
    "attention_dropout": 0.0,
}
# Short chunks and buckets keep every compiled shape small.
TINY_EVAL = {"batch_size": 2, "bucket_seconds": [0.5, 1.0, 2.0], "chunk_seconds": 2.0,
             "chunk_overlap_seconds": 0.5, "chunk_batch_size": 2}


def tiny_config(**sections: dict):
    """The tiny model's Config; ``sections`` update fields, e.g. ``eval={"batch_size": 4}``."""
    from galr_jax.config import config_from_dict

    tree = {"model": dict(TINY_MODEL), "eval": dict(TINY_EVAL),
            "data": {"num_workers": 1, "prefetch": 2}}
    for name, fields in sections.items():
        tree.setdefault(name, {}).update(fields)
    return config_from_dict(tree)


def init_variables(config, seed: int = 0):
    import jax
    import jax.numpy as jnp

    from galr_jax.models import build_model

    sample = jnp.zeros((1, 4 * config.model.window))
    return build_model(config).init(jax.random.PRNGKey(seed), sample)


def make_checkpoint(directory: str, config=None, seed: int = 0, step: int = 0) -> str:
    """Saves a freshly initialised model as a weights-only checkpoint; returns ``directory``."""
    from galr_jax.training.checkpoints import save_variables

    config = config or tiny_config()
    save_variables(directory, init_variables(config, seed), config, step=step)
    return directory


def speech_like(seconds: float, seed: int = 0, sample_rate: int = SAMPLE_RATE,
                num_sources: int = 2) -> np.ndarray:
    """``[C, T]`` float32 voiced sources: harmonics with a moving pitch and a syllable envelope."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    sources = []
    for _ in range(num_sources):
        pitch = rng.uniform(100, 300) * (1 + 0.15 * np.sin(2 * np.pi * rng.uniform(0.2, 1) * t))
        phase = 2 * np.pi * np.cumsum(pitch) / sample_rate
        envelope = np.clip(np.sin(2 * np.pi * rng.uniform(2, 5) * t + rng.uniform(0, 6)), 0, None)
        sources.append(0.2 * envelope * sum(np.sin(k * phase) / k for k in range(1, 5)))
    return np.stack(sources).astype(np.float32)


def write_wav(path: str, samples: np.ndarray, sample_rate: int = SAMPLE_RATE,
              subtype: str = "FLOAT") -> str:
    """Writes ``[T]`` or ``[T, channels]`` samples; returns the path."""
    soundfile.write(path, samples, sample_rate, subtype=subtype)
    return path


def si_snr_db(estimate: np.ndarray, reference: np.ndarray) -> float:
    """Zero-mean SI-SNR of one signal against another, in dB (float64, numpy)."""
    estimate = np.asarray(estimate, np.float64) - np.mean(estimate)
    reference = np.asarray(reference, np.float64) - np.mean(reference)
    target = (estimate @ reference) / (reference @ reference) * reference
    return float(10 * np.log10((target @ target) / ((estimate - target) @ (estimate - target))))


def environment(num_devices: int = 1) -> dict:
    """Environment of a CLI subprocess (:func:`cpu_environment`)."""
    return cpu_environment(num_devices)


def run_cli(command: Sequence[str], num_devices: int = 1,
            timeout: float = 240) -> subprocess.CompletedProcess:
    """Runs ``python COMMAND...`` from the repository root; output captured as text."""
    return subprocess.run([sys.executable, *command], capture_output=True, text=True,
                          env=environment(num_devices), cwd=REPO, timeout=timeout)
