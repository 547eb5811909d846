"""Examples/s of the training loader alone (the grain pipeline), 0, 1 and 2 worker processes.

Usage:
  python benchmarks/loader.py --data data/realpool [--workers 0 1 2] [--batches 30]
                              [--warmup 2] [--threads 0] [--prefetch 1] [--json FILE]
  python benchmarks/loader.py --step-gflop [--config galr_1.5m]

The recipe is configs/pretrained/galr_voices_8k.yaml (8 kHz, dynamic mixing, speed,
gain, band-limiting and reverberation) with 4 s crops instead of 2 s. For each worker
count it starts a fresh iterator, takes ``--warmup`` batches (worker start-up; the room
bank is computed once, before the first count, and timed on its own), then times
``--batches`` more: examples/s = batches x batch size / seconds. ``--threads`` is
``data.num_workers``, the threads decoding the rows of one batch in each process; the
default 0 makes each process one decoding thread, so the figure per worker is what one
CPU core gives. Nothing is written into the data folder (the length index is cached in
a temporary folder).

``--step-gflop`` instead prints the train step's GFLOP per example (forward, PIT loss and
backward of ``--config`` on one 4 s example; 2 x multiply-accumulates of every matrix
product and convolution, scan bodies times their trip count: benchmarks/opcount.py), the
figure docs/benchmarks.md turns into the examples/s an accelerator would consume.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from galr_jax.config import add_override_argument, load_config  # noqa: E402
from galr_jax.data import make_train_loader, open_split  # noqa: E402

RECIPE = REPO / "configs" / "pretrained" / "galr_voices_8k.yaml"
CROP_SECONDS = 4.0


def step_gflop(name: str) -> float:
    """Matrix-product GFLOP of one train step (forward, loss, backward) on one example."""
    import jax
    import jax.numpy as jnp

    sys.path.insert(0, str(REPO / "benchmarks"))
    import opcount
    from galr_jax.training import losses
    from galr_jax.models import build_model

    config = load_config(str(REPO / "configs" / f"{name}.yaml"))
    m = config.model
    samples = int(CROP_SECONDS * m.sample_rate)
    mixture = jnp.zeros((1, samples), jnp.float32)
    sources = jnp.zeros((1, m.num_sources, samples), jnp.float32)
    model = build_model(config)
    key = jax.random.PRNGKey(0)
    params = jax.eval_shape(lambda: model.init(key, mixture))["params"]

    def loss(params, mixture, sources, key):
        estimates = model.apply({"params": params}, mixture, train=True, rngs={"dropout": key})
        return jnp.mean(losses.pit_neg_si_snr(estimates, sources)[0])

    return opcount.matmul_flops(jax.value_and_grad(loss), params, mixture, sources, key) / 1e9


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", help="a built pool or demo data folder")
    parser.add_argument("--step-gflop", action="store_true",
                        help="print the train step's GFLOP per 4 s example and stop")
    parser.add_argument("--config", default="galr_1.5m", help="model for --step-gflop")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--batches", type=int, default=30, help="timed batches per count")
    parser.add_argument("--warmup", type=int, default=2, help="untimed batches per count")
    parser.add_argument("--threads", type=int, default=0, help="data.num_workers")
    parser.add_argument("--prefetch", type=int, default=1,
                        help="data.prefetch: batches buffered per process; small, so that "
                             "batches made during the warm-up do not count as timed ones")
    parser.add_argument("--json", help="also write the figures here")
    add_override_argument(parser, dest="set")
    args = parser.parse_args(argv)
    if args.step_gflop:
        print(f"{args.config}: train step {step_gflop(args.config):.2f} GFLOP (matrix products) "
              f"per {CROP_SECONDS:g} s example")
        return
    if not args.data:
        parser.error("--data is required (a built pool or demo data folder)")

    results = {"recipe": str(RECIPE.relative_to(REPO)), "crop_seconds": CROP_SECONDS,
               "data": args.data, "overrides": args.set, "threads": args.threads, "prefetch": args.prefetch, "cpus": os.cpu_count(),
               "load_average_before": os.getloadavg()[0], "workers": {}}
    config = load_config(str(RECIPE), [f"data.root={args.data}",
                                       f"data.crop_seconds={CROP_SECONDS}",
                                       f"data.num_workers={args.threads}",
                                       f"data.prefetch={args.prefetch}", *args.set])
    with tempfile.TemporaryDirectory() as cache:
        dataset = open_split(config.data, config.data.train_split, config.model.num_sources, cache)
        loader = make_train_loader(config, dataset)
        augmenter = getattr(loader.example, "augmenter", None)
        start = time.perf_counter()
        if augmenter is not None and augmenter.config.reverb_prob:
            augmenter.rooms()  # once; worker processes receive it
        results["room_bank_seconds"] = time.perf_counter() - start
        for count in args.workers:
            loader.workers = count  # data.workers
            with loader.iterate(0) as batches:
                start = time.perf_counter()
                for _ in range(args.warmup):
                    next(batches)
                warm = time.perf_counter()
                for _ in range(args.batches):
                    next(batches)
                seconds = time.perf_counter() - warm
            examples = args.batches * loader.local_batch_size
            results["workers"][count] = {
                "startup_and_warmup_seconds": warm - start, "timed_seconds": seconds,
                "examples": examples, "examples_per_second": examples / seconds}
            print(f"workers={count}: {examples / seconds:6.2f} examples/s "
                  f"({examples} examples of {CROP_SECONDS:g} s in {seconds:.1f} s; start-up "
                  f"and {args.warmup} warm-up batches {warm - start:.1f} s)", flush=True)
        loader.close()
    results["load_average_after"] = os.getloadavg()[0]
    print(f"room bank: {results['room_bank_seconds']:.1f} s; load average "
          f"{results['load_average_before']:.1f} -> {results['load_average_after']:.1f} "
          f"on {results['cpus']} CPUs")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
