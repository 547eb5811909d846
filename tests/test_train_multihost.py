"""Multi-host: 2 processes x 2 CPU devices (jax.distributed) train like 1 process x 4 devices."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from training_helpers import environment, write_config, write_corpus

WORKERS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "training_workers.py")
NUM_STEPS = 2
LEARNING_RATE = 1e-3
# Parameters whose exact gradient is zero: the attention key bias (softmax ignores a
# per-query constant) and the bias of the K->Q map (a LayerNorm over features
# follows it). Their gradients are rounding noise that depends on the order of the
# cross-device sums, and Adam scales any nonzero noise up to a full step of size lr.
ZERO_GRADIENT_PARAMS = ("['attention']['key']['bias']", "['to_low_dim']['bias']")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("multihost")
    data = write_corpus(str(root / "data"))
    config = write_config(str(root / "config.yaml"), data, num_steps=NUM_STEPS,
                          learning_rate=LEARNING_RATE, tensorboard=False)
    cache = str(root / "jax-cache")
    address = f"127.0.0.1:{_free_port()}"
    processes = []
    for process_id in range(2):
        command = [sys.executable, WORKERS, "multihost", config, str(root / "multi"),
                   str(root / f"process{process_id}.npz"), "--coordinator-address", address,
                   "--num-processes", "2", "--process-id", str(process_id)]
        processes.append(subprocess.Popen(command, env=environment(2, cache), text=True,
                                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT))
    for process in processes:
        output, _ = process.communicate(timeout=600)
        assert process.returncode == 0, output[-3000:]
    single = subprocess.run([sys.executable, WORKERS, "multihost", config, str(root / "single"),
                             str(root / "single.npz")], env=environment(4, cache), text=True,
                            capture_output=True, timeout=600)
    assert single.returncode == 0, single.stderr[-3000:]
    results = {name: dict(np.load(root / f"{name}.npz"))
               for name in ("process0", "process1", "single")}
    results["root"] = root
    return results


def _params(result):
    return {k: v for k, v in result.items() if k.startswith("[")}


def test_two_processes_see_four_devices(runs):
    for name in ("process0", "process1"):
        assert int(runs[name]["process_count"]) == 2
        assert int(runs[name]["device_count"]) == 4
        assert int(runs[name]["step"]) == NUM_STEPS


def test_processes_end_with_identical_params(runs):
    a, b = _params(runs["process0"]), _params(runs["process1"])
    assert a.keys() == b.keys() and a
    for key in a:
        assert np.array_equal(a[key], b[key]), key


def test_multi_host_params_equal_the_single_process_run(runs):
    multi, single = _params(runs["process0"]), _params(runs["single"])
    assert multi.keys() == single.keys()
    exempt = [k for k in multi if k.endswith(ZERO_GRADIENT_PARAMS)]
    assert len(exempt) == 2, exempt
    for key in multi:
        difference = float(np.max(np.abs(multi[key] - single[key])))
        bound = 2 * LEARNING_RATE * NUM_STEPS if key in exempt else 1e-6
        assert difference <= bound, (key, difference)


def test_losses_and_validation_match_the_single_process_run(runs):
    def records(name):
        with open(runs["root"] / name / "metrics.jsonl") as f:
            return [json.loads(line) for line in f]

    multi, single = records("multi"), records("single")
    assert [r["step"] for r in multi] == [r["step"] for r in single] == list(range(1, NUM_STEPS + 1))
    for m, s in zip(multi, single):
        for key in ("loss", "grad_norm"):
            assert m[key] == pytest.approx(s[key], rel=1e-5), (key, m, s)
    assert multi[-1]["val_utterances"] == single[-1]["val_utterances"] == 2
    assert multi[-1]["val_si_snri"] == pytest.approx(single[-1]["val_si_snri"], abs=1e-3)
