"""Seconds per training gradient of galr_1.5m (dropout on) at the code in ``PYTHONPATH``.

Usage (compare two commits in one run, interleaved, on the same machine):
  git worktree add /tmp/base <commit>
  for r in 1 2; do
    (cd /tmp/base && PYTHONPATH=/tmp/base python /path/to/benchmarks/dropout_keys.py 5 base)
    PYTHONPATH=. python benchmarks/dropout_keys.py 5 new
  done

Times ``jax.value_and_grad`` of :func:`galr_jax.training.step.batch_loss` on a fixed
batch of 4 x 2 s after a compiling call, run from the repository root (it reads
``configs/galr_1.5m.yaml``).
"""

import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from galr_jax.config import load_config
from galr_jax.models import build_model
from galr_jax.training.step import batch_loss

BATCH, SAMPLES = 4, 16000


def main(steps: int, label: str) -> None:
    model = build_model(load_config("configs/galr_1.5m.yaml"))
    rng = np.random.default_rng(0)
    batch = {"mixture": jnp.asarray(rng.standard_normal((BATCH, SAMPLES)), jnp.float32),
             "sources": jnp.asarray(rng.standard_normal((BATCH, 2, SAMPLES)), jnp.float32)}
    params = model.init(jax.random.PRNGKey(0), batch["mixture"][:1, :800])["params"]
    gradient = jax.jit(jax.value_and_grad(lambda p, k: batch_loss(model, p, batch, k)))
    jax.block_until_ready(gradient(params, jax.random.PRNGKey(0)))
    times = []
    for step in range(steps):
        start = time.perf_counter()
        jax.block_until_ready(gradient(params, jax.random.PRNGKey(step)))
        times.append(time.perf_counter() - start)
    print(f"{label}: median {np.median(times):.2f} s, min {min(times):.2f} s per gradient")


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2])
