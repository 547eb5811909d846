"""Subprocess entry points of the training tests (each needs its own device count).

    python tests/training_workers.py parallel-step OUT.npz
        One gradient-descent train step per backend on a fixed global batch of 4, on
        however many CPU devices XLA_FLAGS gives; saves params and metrics.
    python tests/training_workers.py step-behaviour OUT.npz
        Adam steps on one device, with float32 and with bfloat16 compute: a batch with a
        NaN, then a finite one. Saves params and metrics after each.
    python tests/training_workers.py indivisible-batch
        Prints the error for a global batch of 6 on the current devices.
    python tests/training_workers.py learn NUM_STEPS OUT.npz
        Trains a tiny GALR with the real step (pmap on one device, Adam) on a fixed
        synthetic set for NUM_STEPS steps, twice from the same seed; saves the set's mean
        SI-SNRi before and after each run.
    python tests/training_workers.py multihost CONFIG WORKDIR OUT.npz [--coordinator-address ...]
        Runs train_and_evaluate (joining jax.distributed when flags are given) and
        saves this process's final params.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

GLOBAL_BATCH = 4
NUM_SAMPLES = 400


def _flat(tree) -> dict:
    import jax
    return {jax.tree_util.keystr(k): np.asarray(v)
            for k, v in jax.tree_util.tree_flatten_with_path(tree)[0]}


def parallel_step(out: str) -> None:
    import optax
    from galr_jax.config import config_from_dict
    from galr_jax.models import build_model
    from galr_jax.training import (create_train_state, make_data_parallel, make_learning_rate_fn,
                                   make_optimizer, train_step)
    from training_helpers import TINY_MODEL

    config = config_from_dict({"model": TINY_MODEL, "train": {"batch_size": GLOBAL_BATCH}})
    model = build_model(config)
    rng = np.random.default_rng(0)
    sources = rng.standard_normal((GLOBAL_BATCH, 2, NUM_SAMPLES)).astype(np.float32)
    batch = {"mixture": sources.sum(axis=1), "sources": sources}
    # Plain gradient descent: the update is -lr * gradient, so the params show any error
    # in the averaging. (Adam with clipping is invariant to a constant factor on the
    # gradient, so it could not reveal a double average.)
    optimizer = optax.identity()
    results = {}
    for backend in ("pmap", "shard_map"):
        step_fn = functools.partial(train_step, model=model, optimizer=optimizer,
                                    learning_rate_fn=make_learning_rate_fn(config.train, 1))
        parallel = make_data_parallel(backend, step_fn, GLOBAL_BATCH)
        state = parallel.put_state(create_train_state(model, optimizer, seed=0))
        state, metrics = parallel.step(state, parallel.put_batch(batch), 1.0)
        _record(results, backend, parallel.get_state(state), parallel.get_metrics(metrics))
    initial = create_train_state(model, optimizer, seed=0)
    _record(results, "initial", initial, {})
    np.savez(out, **results)


def _record(results: dict, prefix: str, state, metrics: dict) -> None:
    for key, value in _flat(state.params).items():
        results[f"{prefix}/params{key}"] = value
    for key, value in metrics.items():
        results[f"{prefix}/metrics/{key}"] = np.asarray(value)


def step_behaviour(out: str) -> None:
    from galr_jax.config import config_from_dict
    from galr_jax.models import build_model
    from galr_jax.training import (create_train_state, make_data_parallel, make_learning_rate_fn,
                                   make_optimizer, train_step)
    from training_helpers import TINY_MODEL

    rng = np.random.default_rng(0)
    sources = rng.standard_normal((GLOBAL_BATCH, 2, NUM_SAMPLES)).astype(np.float32)
    finite = {"mixture": sources.sum(axis=1), "sources": sources}
    poisoned = {k: v.copy() for k, v in finite.items()}
    poisoned["mixture"][1, 17] = np.nan
    results = {}
    for dtype in ("float32", "bfloat16"):
        config = config_from_dict({"model": TINY_MODEL, "runtime": {"compute_dtype": dtype},
                                   "train": {"batch_size": GLOBAL_BATCH}})
        model = build_model(config)
        optimizer = make_optimizer(config.train)
        step_fn = functools.partial(train_step, model=model, optimizer=optimizer,
                                    learning_rate_fn=make_learning_rate_fn(config.train, 1))
        parallel = make_data_parallel("pmap", step_fn, GLOBAL_BATCH)
        initial = create_train_state(model, optimizer, seed=0)
        _record(results, f"{dtype}/initial", initial, {})
        state = parallel.put_state(initial)
        # Both dtypes take the finite batch as step 1, so it draws the same dropout masks.
        for name, batch in [("nan", poisoned), ("finite", finite)]:
            state, metrics = parallel.step(state, parallel.put_batch(batch), 1.0)
            host = parallel.get_state(state)
            _record(results, f"{dtype}/{name}", host, parallel.get_metrics(metrics))
            results[f"{dtype}/{name}/step"] = np.asarray(host.step)
            results[f"{dtype}/{name}/adam_count"] = np.asarray(host.opt_state[1].count)
    np.savez(out, **results)


def indivisible_batch() -> None:
    from galr_jax.config import ConfigError
    from galr_jax.training import make_data_parallel
    try:
        make_data_parallel("pmap", lambda *a: a, 6)
    except ConfigError as e:
        print(f"ConfigError: {e}")


# The learning test's set: a few 0.5 s two-source mixtures, the whole set one batch.
LEARN_UTTERANCES = 4
LEARN_SECONDS = 0.5
LEARN_SEED = 0


def learning_set() -> dict:
    """Fixed mixtures of two synthetic harmonic sources (no files, same on every call)."""
    from training_helpers import SAMPLE_RATE, synthetic_source
    rng = np.random.default_rng(LEARN_SEED)
    num_samples = int(LEARN_SECONDS * SAMPLE_RATE)
    sources = np.stack([np.stack([synthetic_source(rng, num_samples) for _ in range(2)])
                        for _ in range(LEARN_UTTERANCES)])
    return {"mixture": sources.sum(axis=1), "sources": sources}


def learn(num_steps: int, out: str) -> None:
    import jax
    from galr_jax.config import config_from_dict
    from galr_jax.evaluation.metrics import si_snr_improvement
    from galr_jax.models import build_model
    from galr_jax.training import (create_train_state, make_data_parallel, make_learning_rate_fn,
                                   make_optimizer, train_step)
    from training_helpers import LEARNING_MODEL, LEARNING_RATE

    config = config_from_dict({"model": LEARNING_MODEL,
                               "train": {"batch_size": LEARN_UTTERANCES,
                                         "learning_rate": LEARNING_RATE}})
    model = build_model(config)
    optimizer = make_optimizer(config.train)
    step_fn = functools.partial(train_step, model=model, optimizer=optimizer,
                                learning_rate_fn=make_learning_rate_fn(config.train, 1))
    parallel = make_data_parallel(config.train.parallel, step_fn, LEARN_UTTERANCES)
    batch = learning_set()

    @jax.jit
    def mean_si_snri(params):
        estimates = model.apply({"params": params}, batch["mixture"])
        return si_snr_improvement(estimates, batch["sources"], batch["mixture"]).si_snri.mean()

    results = {}
    # Two runs from the same seed in one process: the figure the test thresholds must not
    # depend on anything but the seed (no state left over between runs).
    for run in range(2):
        initial = create_train_state(model, optimizer, seed=config.train.seed)
        state = parallel.put_state(initial)
        for _ in range(num_steps):
            state, metrics = parallel.step(state, parallel.put_batch(batch), 1.0)
        final = parallel.get_state(state)
        results[f"run{run}/initial_si_snri"] = np.asarray(mean_si_snri(initial.params))
        results[f"run{run}/final_si_snri"] = np.asarray(mean_si_snri(final.params))
        results[f"run{run}/final_loss"] = np.asarray(parallel.get_metrics(metrics)["loss"])
        results[f"run{run}/skipped_steps"] = np.asarray(final.skipped_steps)
    np.savez(out, **results)


def multihost(config_path: str, workdir: str, out: str, argv: list[str]) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--coordinator-address")
    parser.add_argument("--num-processes", type=int)
    parser.add_argument("--process-id", type=int)
    args = parser.parse_args(argv)
    from galr_jax.config import load_config
    from galr_jax.training import initialize_distributed, train_and_evaluate
    import jax
    initialize_distributed(args.coordinator_address, args.num_processes, args.process_id)
    result = train_and_evaluate(load_config(config_path), workdir)
    np.savez(out, process_count=jax.process_count(), device_count=jax.device_count(),
             step=result.step, **_flat(result.params))


if __name__ == "__main__":
    command = sys.argv[1]
    if command == "parallel-step":
        parallel_step(sys.argv[2])
    elif command == "step-behaviour":
        step_behaviour(sys.argv[2])
    elif command == "indivisible-batch":
        indivisible_batch()
    elif command == "learn":
        learn(int(sys.argv[2]), sys.argv[3])
    elif command == "multihost":
        multihost(sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5:])
    else:
        raise SystemExit(f"unknown command {command!r}")
