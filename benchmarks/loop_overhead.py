"""Steps/s of the training loop's step pattern: per-step metric fetch vs. the busy loop.

Usage:
  XLA_FLAGS=--xla_force_host_platform_device_count=2 JAX_PLATFORMS=cpu \\
  python benchmarks/loop_overhead.py --set data.root=DATA [--steps 25] [--rounds 3]

Both patterns run in this one process, on the same compiled step, the real training
loader (decoding threads, dynamic mixing) and the config's data (default: the demo
recipe, configs/demo.yaml), in interleaved blocks A B A B ... so a machine shared with
other work slows both alike:

* ``per-step`` (A), the loop up to 2dfaccd: the loader's numpy batch goes to the step
  as it is (pmap transfers it inside the call) and the step's metrics are fetched
  with ``.item()`` right after it, so the host waits for every step, and the device
  idles while the host fetches the next batch and dispatches.
* ``busy`` (B), :func:`galr_jax.training.train_and_evaluate` now: batches placed on the
  devices one step ahead (``TrainLoader.iterate(put=...)``, in grain's prefetch
  thread), metrics held on the devices
  (:class:`PendingMetrics`: the host waits only for the step *before* the one it just
  queued) and fetched every ``train.log_every`` steps.

A third pattern, ``step-only`` (C), runs the step alone on one batch placed in
advance, as benchmarks/train_rate.py does: the device's own time per step.

Per block it reports steps/s (all of the block's steps finished) and the *host time*
per step: in A, taking the batch, reshaping it and the call (the device idles for all
of it, since the previous step was waited for); in B, taking the batch and starting
its transfer (which overlaps the running step; the call itself is not counted, because
on XLA:CPU with several devices it waits inside for the previous step, see
docs/benchmarks.md). The host overhead per step of A and B is their time per step minus
C's. Logging, validation and checkpoints are left out (both loops do the same there).
"""

from __future__ import annotations

import argparse
import json
import pathlib
import statistics
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from galr_jax.config import add_override_argument, load_config  # noqa: E402
from galr_jax.data import make_train_loader, open_split  # noqa: E402
from galr_jax.training import create_train_state  # noqa: E402
from galr_jax.training.host_memory import keep_freed_memory_on_cpu  # noqa: E402
from galr_jax.training.loop import build_train_step  # noqa: E402
from galr_jax.training.parallel import PendingMetrics, PmapParallel  # noqa: E402

WARMUP_STEPS = 3  # after the compiling step: first calls still allocate and fault pages in


def _per_step_put(parallel, batch):
    """``put_batch`` as of 2dfaccd: pmap got host arrays, shard_map global arrays."""
    if isinstance(parallel, PmapParallel):
        return {k: np.asarray(v).reshape((jax.local_device_count(), parallel.per_device_batch)
                                         + v.shape[1:]) for k, v in batch.items()}
    return parallel.put_batch(batch)


def run_per_step(parallel, state, host_batches, steps, log_every):
    del log_every  # the per-step pattern fetches every step
    host = []
    start = time.perf_counter()
    for _ in range(steps):
        begin = time.perf_counter()
        batch = _per_step_put(parallel, next(host_batches))
        state, metrics = parallel.step(state, batch, 1.0)
        host.append(time.perf_counter() - begin)
        parallel.get_metrics(metrics)
    return state, time.perf_counter() - start, host


def run_busy(parallel, state, batches, steps, log_every):
    """``batches`` are already being placed on the devices ahead (see :func:`_iterate`)."""
    pending = PendingMetrics(parallel)
    host = []
    start = time.perf_counter()
    for step in range(1, steps + 1):
        begin = time.perf_counter()
        batch = next(batches)
        host.append(time.perf_counter() - begin)
        state, metrics = parallel.step(state, batch, 1.0)
        pending.add(metrics)
        if step % log_every == 0 or step == steps:
            pending.fetch()
    return state, time.perf_counter() - start, host


def run_step_only(parallel, state, host_batches, steps, log_every):
    del log_every
    batch = parallel.put_batch(next(host_batches))
    jax.block_until_ready(batch)
    start = time.perf_counter()
    for _ in range(steps):
        state, metrics = parallel.step(state, batch, 1.0)
    jax.block_until_ready(metrics)
    return state, time.perf_counter() - start, [0.0]


PATTERNS = {"per-step": run_per_step, "busy": run_busy, "step-only": run_step_only}


def _iterate(loader, parallel, name, position, steps):
    return loader.iterate(position, steps, put=parallel.put_batch if name == "busy" else None)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default=str(REPO / "configs" / "demo.yaml"))
    parser.add_argument("--steps", type=int, default=25, help="steps per block")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of A, B, C blocks")
    parser.add_argument("--json", help="also write the figures here")
    add_override_argument(parser, dest="set")
    args = parser.parse_args(argv)
    allocator = "kept" if keep_freed_memory_on_cpu() else "system"  # as train.py
    config = load_config(args.config, args.set)
    t = config.train
    cache = tempfile.mkdtemp(prefix="galr-loop-bench-")
    dataset = open_split(config.data, config.data.train_split, config.model.num_sources, cache)
    loader = make_train_loader(config, dataset)
    model, optimizer, parallel = build_train_step(config, loader.steps_per_epoch)
    state = parallel.put_state(create_train_state(model, optimizer, t.seed))
    blocks = {name: [] for name in PATTERNS}
    position = 0
    with loader:
        # Compile, and warm up both patterns' paths.
        with loader.iterate(position, 1) as host_batches:
            state, metrics = parallel.step(state, parallel.put_batch(next(host_batches)), 1.0)
            parallel.get_metrics(metrics)
        position += 1
        for name, run in PATTERNS.items():
            with _iterate(loader, parallel, name, position, WARMUP_STEPS) as host_batches:
                state, _, _ = run(parallel, state, host_batches, WARMUP_STEPS, t.log_every)
            position += WARMUP_STEPS
        for round_ in range(args.rounds):
            for name, run in PATTERNS.items():
                with _iterate(loader, parallel, name, position, args.steps) as host_batches:
                    state, seconds, host = run(parallel, state, host_batches, args.steps,
                                               t.log_every)
                position += args.steps
                blocks[name].append({"steps_per_second": args.steps / seconds,
                                     "host_ms_median": 1e3 * statistics.median(host),
                                     "host_ms_mean": 1e3 * statistics.fmean(host)})
                print(f"round {round_} {name:9s} {args.steps / seconds:6.3f} steps/s  host "
                      f"{1e3 * statistics.median(host):6.2f} ms/step (median)", flush=True)
    def median(name, key):
        return statistics.median(block[key] for block in blocks[name])

    device_s = 1 / median("step-only", "steps_per_second")
    summary = {
        "config": args.config, "overrides": args.set, "steps_per_block": args.steps,
        "log_every": t.log_every, "devices": f"{jax.device_count()} {jax.default_backend()}",
        "parallel": t.parallel, "allocator": allocator, "blocks": blocks,
        "busy_over_per_step": [b["steps_per_second"] / a["steps_per_second"]
                               for a, b in zip(blocks["per-step"], blocks["busy"])],
        "median_steps_per_second": {n: median(n, "steps_per_second") for n in PATTERNS},
        "median_host_ms": {n: median(n, "host_ms_median") for n in ("per-step", "busy")},
        "overhead_ms_per_step": {n: 1e3 * (1 / median(n, "steps_per_second") - device_s)
                                 for n in ("per-step", "busy")},
    }
    print(json.dumps({k: summary[k] for k in ("busy_over_per_step", "median_steps_per_second",
                                              "median_host_ms", "overhead_ms_per_step")},
                     indent=1))
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(summary, indent=1) + "\n")


if __name__ == "__main__":
    main()
