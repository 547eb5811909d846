"""Steps per second of the real training step (``galr_jax.training``) on one fixed batch.

Usage:
  XLA_FLAGS=--xla_force_host_platform_device_count=2 \\
  python benchmarks/train_rate.py [--config configs/demo.yaml] [--steps 40] [--set KEY=VALUE ...]

Builds the step exactly as ``train.py`` does (model, optimizer, schedule, pmap or
shard_map over every device), takes one batch from the training loader, and times
``--steps`` steps after a compiling one; the loader, logging and validation are left
out, so this is the ceiling that ``train.py``'s logged steps/s approaches.
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from galr_jax.training.host_memory import keep_freed_memory  # noqa: E402

keep_freed_memory()  # as train.py does, before XLA allocates

import jax  # noqa: E402

from galr_jax.config import add_override_argument, load_config  # noqa: E402
from galr_jax.data import make_train_loader, open_split  # noqa: E402
from galr_jax.training import create_train_state  # noqa: E402
from galr_jax.training.loop import build_train_step  # noqa: E402


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default=str(REPO / "configs" / "demo.yaml"))
    parser.add_argument("--steps", type=int, default=40)
    add_override_argument(parser, dest="set")
    args = parser.parse_args(argv)
    config = load_config(args.config, args.set)
    t = config.train
    with tempfile.TemporaryDirectory() as cache:
        dataset = open_split(config.data, config.data.train_split, config.model.num_sources, cache)
        with make_train_loader(config, dataset) as loader:
            batch = loader.batch_at(0)
    model, optimizer, parallel = build_train_step(config, loader.steps_per_epoch)
    state = parallel.put_state(create_train_state(model, optimizer, t.seed))
    state, metrics = parallel.step(state, parallel.put_batch(batch), 1.0)  # compiles
    parallel.get_metrics(metrics)
    start = time.perf_counter()
    for _ in range(args.steps):
        state, metrics = parallel.step(state, parallel.put_batch(batch), 1.0)
        parallel.get_metrics(metrics)
    rate = args.steps / (time.perf_counter() - start)
    print(f"{args.config} ({' '.join(args.set)}): {rate:.2f} steps/s, global batch "
          f"{t.batch_size} on {jax.device_count()} {jax.default_backend()} devices")


if __name__ == "__main__":
    main()
