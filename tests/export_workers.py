"""Subprocess worker of ``test_export.py``: lowers the inference function and the
``shard_map`` train step for CPU, CUDA and TPU on a mesh of virtual CPU devices.

Usage: ``python tests/export_workers.py CONFIG SECONDS [OVERRIDE ...]``; prints one
JSON line ``{"results": {name: {"seconds": s, "bytes": n} or {"error": text}}}``.
It runs in its own process because the device count (``XLA_FLAGS``) is fixed when
JAX starts.
"""

from __future__ import annotations

import functools
import json
import sys
import time
import traceback

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from galr_jax.config import load_config
from galr_jax.inference.apply import BatchedApply
from galr_jax.models import build_model
from galr_jax.training.optim import make_learning_rate_fn, make_optimizer
from galr_jax.training.parallel import ShardMapParallel
from galr_jax.training.state import abstract_train_state
from galr_jax.training.step import DATA_AXIS, train_step

PLATFORMS = ("cpu", "cuda", "tpu")
# Any positive epoch length: it only enters the learning-rate schedule's arithmetic.
_STEPS_PER_EPOCH = 100


def _spec(x, sharding) -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct(np.shape(x), x.dtype, sharding=sharding)


def _lower(fn, *args) -> dict:
    """Exports ``fn`` for every platform; the time and StableHLO size, or where it failed."""
    start = time.perf_counter()
    try:
        exported = jax.export.export(fn, platforms=PLATFORMS)(*args)
    except Exception as e:  # the report is the finding: every failure, with its origin
        return {"error": f"{type(e).__name__}: {e}\n{''.join(traceback.format_exc(limit=-12))}"}
    return {"seconds": round(time.perf_counter() - start, 2),
            "bytes": len(exported.mlir_module_serialized)}


def main(config_path: str, seconds: float, overrides: list[str]) -> dict:
    num_devices = jax.device_count()
    config = load_config(config_path, [*overrides, "train.parallel=shard_map",
                                       f"train.batch_size={num_devices}"])
    samples = int(seconds * config.model.sample_rate)
    model = build_model(config)
    optimizer = make_optimizer(config.train)
    state = abstract_train_state(model, optimizer)  # shapes only: nothing is compiled
    results = {}

    # Inference: the program Separator and evaluation run, one row per device.
    zeros = jax.tree.map(lambda x: np.zeros(x.shape, x.dtype), {"params": state.params})
    apply = BatchedApply(config, zeros, model=model)
    rows = apply._batch_sharding  # the placement BatchedApply compiles for
    variables = jax.tree.map(lambda x: _spec(x, apply._replicated), {"params": state.params})
    results["inference"] = _lower(
        apply._apply, variables,
        jax.ShapeDtypeStruct((num_devices, samples), jnp.float32, sharding=rows),
        jax.ShapeDtypeStruct((num_devices,), jnp.int32, sharding=rows))

    # The train step exactly as train.py compiles it for train.parallel=shard_map.
    step_fn = functools.partial(
        train_step, model=model, optimizer=optimizer,
        learning_rate_fn=make_learning_rate_fn(config.train, _STEPS_PER_EPOCH))
    parallel = ShardMapParallel(step_fn, config.train.batch_size)
    replicated = NamedSharding(parallel.mesh, PartitionSpec())
    batch_rows = NamedSharding(parallel.mesh, PartitionSpec(DATA_AXIS))
    batch = config.train.batch_size
    sources = config.model.num_sources
    results["train_step"] = _lower(
        parallel._compiled,
        jax.tree.map(lambda x: _spec(x, replicated), state),
        {"mixture": jax.ShapeDtypeStruct((batch, samples), jnp.float32, sharding=batch_rows),
         "sources": jax.ShapeDtypeStruct((batch, sources, samples), jnp.float32,
                                         sharding=batch_rows),
         "lengths": jax.ShapeDtypeStruct((batch,), jnp.int32, sharding=batch_rows)},
        jax.ShapeDtypeStruct((), jnp.float32, sharding=replicated))
    return {"devices": num_devices, "results": results}


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1], float(sys.argv[2]), sys.argv[3:])))
