"""Subprocess entry point of the multi-host validation test.

    python tests/validation_workers.py DATA_ROOT INDEX_DIR OUT.json \
        [--coordinator-address HOST:PORT --num-processes N --process-id I]

Joins ``jax.distributed`` when the flags are given, scores freshly initialised tiny
weights on ``DATA_ROOT/cv`` with :class:`galr_jax.training.validation.Validator`, and
writes the metrics plus every device computation the validation made, in order: the
model calls, the score calls and the cross-process allgathers, each with the shapes
of its arguments and results and the devices (id, process) they live on. The
recorders wrap the real compiled functions and change nothing they compute.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

SEED = 0
# Three buckets; the corpus of the test puts utterances in each of them.
BUCKET_SECONDS = [0.25, 0.5, 1.0]
EVAL_BATCH = 2


def _describe(value) -> list:
    """``[shape, dtype, devices]`` of every array leaf; devices ``[[id, process], ...]``
    for device arrays, ``None`` for host arrays."""
    import jax
    import numpy as np

    described = []
    for leaf in jax.tree_util.tree_leaves(value):
        devices = None
        if isinstance(leaf, jax.Array):
            devices = sorted([d.id, d.process_index] for d in leaf.sharding.device_set)
        array = np.asarray(leaf) if devices is None else leaf
        described.append([list(array.shape), str(array.dtype), devices])
    return described


def _recording(function, name: str, calls: list):
    @functools.wraps(function)
    def record(*args, **kwargs):
        result = function(*args, **kwargs)
        calls.append({"name": name, "args": _describe(args), "options": sorted(kwargs),
                      "results": _describe(result)})
        return result
    return record


def _install_recorders(calls: list) -> None:
    """Wraps the compiled functions validation calls so each call is logged in order."""
    from jax.experimental import multihost_utils

    from galr_jax.evaluation import scoring
    from galr_jax.inference import apply

    original_init = apply.BatchedApply.__init__

    def init(self, *args, **kwargs):
        original_init(self, *args, **kwargs)
        self._apply = _recording(self._apply, "model", calls)

    apply.BatchedApply.__init__ = init
    scoring._score_batch = _recording(scoring._score_batch, "score", calls)
    multihost_utils.process_allgather = _recording(multihost_utils.process_allgather,
                                                   "process_allgather", calls)


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("data_root")
    parser.add_argument("index_dir")
    parser.add_argument("out")
    parser.add_argument("--coordinator-address")
    parser.add_argument("--num-processes", type=int)
    parser.add_argument("--process-id", type=int)
    args = parser.parse_args(argv)

    from galr_jax.training import initialize_distributed
    initialize_distributed(args.coordinator_address, args.num_processes, args.process_id)

    import jax
    import jax.numpy as jnp

    from galr_jax.config import config_from_dict
    from galr_jax.data import open_split
    from galr_jax.models import build_model
    from galr_jax.training.validation import Validator
    from training_helpers import TINY_MODEL

    config = config_from_dict({
        "model": dict(TINY_MODEL),
        "data": {"root": args.data_root, "valid_split": "cv", "num_workers": 1, "prefetch": 2},
        "train": {"max_valid_utterances": 0},
        "eval": {"batch_size": EVAL_BATCH, "bucket_seconds": BUCKET_SECONDS},
    })
    model = build_model(config)
    # Initialised before the recorders: only validation's computations are logged.
    params = model.init(jax.random.PRNGKey(SEED), jnp.zeros((1, 4 * config.model.window)))["params"]
    dataset = open_split(config.data, "cv", config.model.num_sources, cache_dir=args.index_dir)
    calls: list = []
    _install_recorders(calls)
    metrics = Validator(config, dataset, model).run(params)
    with open(args.out, "w") as f:
        json.dump({"process_index": jax.process_index(), "process_count": jax.process_count(),
                   "local_devices": sorted(d.id for d in jax.local_devices()),
                   "metrics": metrics, "calls": calls}, f)


if __name__ == "__main__":
    main(sys.argv[1:])
