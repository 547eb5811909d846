"""Shared pieces of the training tests: a tiny corpus, a tiny config, running train.py.

The corpus is synthetic (harmonic tones with a random pitch contour per source), so
it builds in milliseconds and the model can learn it within a few dozen steps.
Training runs go through the real ``train.py`` in a subprocess with a CPU device
count set by ``XLA_FLAGS``, sharing one JAX compilation cache per test session.
"""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Iterable, Optional, Sequence

import numpy as np
import soundfile
import yaml

from subprocess_env import REPO, cpu_environment

SAMPLE_RATE = 8000
# Small enough to compile in seconds on 2 cores, big enough to be a real GALR stack.
TINY_MODEL = {
    "separator": "galr", "window": 16, "num_filters": 16, "features": 16, "hidden": 8,
    "segment_length": 10, "low_dim": 4, "num_blocks": 1, "num_heads": 2,
    "attention_dropout": 0.1,
}
# The learning test's model: TINY_MODEL with wider LSTMs, dropout kept (its keys are
# part of what must be deterministic).
LEARNING_MODEL = dict(TINY_MODEL, hidden=16)
LEARNING_RATE = 1e-2
LEARNING_STEPS = 80


def synthetic_source(rng: np.random.Generator, num_samples: int) -> np.ndarray:
    """A harmonic tone with a wobbling pitch and a slow amplitude envelope, drawn from ``rng``."""
    t = np.arange(num_samples) / SAMPLE_RATE
    pitch = rng.uniform(100, 400) * (1 + 0.1 * np.sin(2 * np.pi * rng.uniform(0.5, 3) * t))
    phase = 2 * np.pi * np.cumsum(pitch) / SAMPLE_RATE
    wave = sum(np.sin(k * phase) / k for k in range(1, 4))
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * rng.uniform(1, 4) * t + rng.uniform(0, 6))
    return (0.2 * wave * envelope).astype(np.float32)


def write_corpus(root: str, counts: Optional[dict] = None, seconds: Sequence[float] = (0.4, 0.7),
                 seed: int = 0, num_sources: int = 2) -> str:
    """Writes ``root/{split}/{mix,s1,s2}/*.wav``; utterance lengths vary in ``seconds``."""
    counts = counts or {"tr": 12, "cv": 3}
    rng = np.random.default_rng(seed)
    for split, count in counts.items():
        for folder in ["mix"] + [f"s{c + 1}" for c in range(num_sources)]:
            os.makedirs(os.path.join(root, split, folder), exist_ok=True)
        for i in range(count):
            num_samples = int(rng.uniform(*seconds) * SAMPLE_RATE)
            sources = [synthetic_source(rng, num_samples) for _ in range(num_sources)]
            name = f"{split}_{i:03d}.wav"
            for c, source in enumerate(sources):
                soundfile.write(os.path.join(root, split, f"s{c + 1}", name), source, SAMPLE_RATE,
                                subtype="FLOAT")
            soundfile.write(os.path.join(root, split, "mix", name), np.sum(sources, axis=0),
                            SAMPLE_RATE, subtype="FLOAT")
    return root


def write_config(path: str, data_root: str, **train: object) -> str:
    """A tiny config (YAML at ``path``) training on ``data_root``; ``train`` overrides."""
    config = {
        "model": dict(TINY_MODEL),
        "data": {"root": data_root, "crop_seconds": 0.25, "num_workers": 1, "prefetch": 2},
        "train": {"batch_size": 4, "num_steps": 8, "log_every": 1, "eval_every": 1000,
                  "checkpoint_every": 2, "keep_checkpoints": 3, "max_valid_utterances": 2,
                  **train},
        "eval": {"batch_size": 2, "bucket_seconds": [1.0]},
    }
    with open(path, "w") as f:
        yaml.safe_dump(config, f)
    return path


# LLVM's optimisation of the CPU code is most of the compile time of a train step
# (about 15 s of 18 s for TINY_MODEL); the tests run a few steps, so they skip it.
FAST_COMPILE_FLAG = "--xla_backend_optimization_level=0"


def environment(num_devices: int = 1, cache_dir: Optional[str] = None) -> dict:
    """Environment of a training subprocess: :func:`cpu_environment` with fast compilation."""
    return cpu_environment(num_devices, FAST_COMPILE_FLAG, cache_dir)


def train_command(config: str, workdir: str, overrides: Iterable[str] = ()) -> list[str]:
    command = [sys.executable, os.path.join(REPO, "train.py"), "--config", config,
               "--workdir", workdir]
    for override in overrides:
        command += ["--set", override]
    return command


def run_train(config: str, workdir: str, overrides: Iterable[str] = (), num_devices: int = 1,
              cache_dir: Optional[str] = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """Runs train.py to its end; returns the completed process (stdout/stderr captured)."""
    return subprocess.run(train_command(config, workdir, overrides), capture_output=True, text=True,
                          env=environment(num_devices, cache_dir), timeout=timeout, cwd=REPO)


def final_params(workdir: str) -> tuple[int, dict]:
    """``(step, {path: array})`` of the params in the newest checkpoint of a run."""
    import jax
    from galr_jax.training.checkpoints import restore_variables
    variables, meta = restore_variables(workdir, which="latest")
    flat = jax.tree_util.tree_flatten_with_path(variables)[0]
    return meta["step"], {jax.tree_util.keystr(k): np.asarray(v) for k, v in flat}
