"""Data parallelism: 4 CPU devices give the update of 1 device, for pmap and shard_map."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from training_helpers import environment

WORKERS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "training_workers.py")
TOLERANCE = 1e-5


def _run_worker(args, num_devices, tmp_path):
    result = subprocess.run([sys.executable, WORKERS, *args], capture_output=True, text=True,
                            env=environment(num_devices, str(tmp_path / "jax-cache")), timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


@pytest.fixture(scope="module")
def steps(tmp_path_factory):
    """One step on 1 and on 4 devices, for each backend and optimizer."""
    tmp_path = tmp_path_factory.mktemp("parallel")
    out = {}
    for num_devices in (1, 4):
        path = tmp_path / f"devices{num_devices}.npz"
        _run_worker(["parallel-step", str(path)], num_devices, tmp_path)
        out[num_devices] = dict(np.load(path))
    return out


def _params(results, prefix):
    return {k[len(prefix):]: v for k, v in results.items() if k.startswith(prefix)}


@pytest.mark.parametrize("backend", ["pmap", "shard_map"])
def test_four_devices_equal_one_device(steps, backend):
    """Same global batch, same update: the gradient is averaged exactly once."""
    one = _params(steps[1], f"{backend}/params")
    four = _params(steps[4], f"{backend}/params")
    initial = _params(steps[1], "initial/params")
    assert one.keys() == four.keys() == initial.keys() and one
    worst = max(float(np.max(np.abs(one[k] - four[k]))) for k in one)
    assert worst < TOLERANCE, f"{backend}: params differ by {worst}"
    # The update is large enough that averaging twice (or summing) would be caught:
    # a factor of 4 on this change is far beyond the tolerance.
    moved = max(float(np.max(np.abs(one[k] - initial[k]))) for k in one)
    assert moved > 100 * TOLERANCE
    # The gradient norm sums the squares of every parameter's gradient in float32, each
    # gradient summed over the examples in another order on 4 devices (measured: 2.2e-5
    # relative); averaging twice would change it by a factor of 4.
    for name, tolerance in (("loss", TOLERANCE), ("grad_norm", 10 * TOLERANCE)):
        a, b = (float(steps[n][f"{backend}/metrics/{name}"]) for n in (1, 4))
        assert abs(a - b) <= tolerance * max(1.0, abs(a)), (name, a, b)


def test_backends_agree(steps):
    for num_devices in (1, 4):
        pmap = _params(steps[num_devices], "pmap/params")
        shard_map = _params(steps[num_devices], "shard_map/params")
        assert max(float(np.max(np.abs(pmap[k] - shard_map[k]))) for k in pmap) < TOLERANCE


def test_indivisible_global_batch_is_a_clear_error(tmp_path):
    result = _run_worker(["indivisible-batch"], 4, tmp_path)
    assert ("ConfigError: train.batch_size: the global batch of 6 does not split evenly over "
            "4 devices") in result.stdout
