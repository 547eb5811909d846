"""Validation across 2 processes (jax.distributed, 2 CPU devices each) whose shares differ.

The validation split's utterances are dealt to the processes in turn, and their
lengths are chosen so that the two shares differ in count, in buckets and in the
order the buckets fill: the processes make different model calls. The design
(:mod:`galr_jax.training.validation`) is that those calls are each process's own
computations, and the only cross-process computation is one allgather of the same
shape everywhere. On the CPU a mismatch of cross-process computations would run
silently instead of hanging, so each worker records every device computation it
makes and the test checks the records.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from inference_helpers import speech_like, write_wav
from training_helpers import SAMPLE_RATE, environment

WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "validation_workers.py")
# Dealt in turn: process 0 gets 0.2, 0.3, 0.22, 0.7 s (buckets 0.25, 0.5, 0.25, 1.0:
# calls of 0.25, 0.5, 1.0 s), process 1 gets 0.9, 0.8, 0.45 s (calls of 1.0, 0.5 s).
SECONDS = [0.2, 0.9, 0.3, 0.8, 0.22, 0.45, 0.7]
DEVICES_PER_PROCESS = 2
TIMEOUT_S = 600


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _write_split(root: str) -> None:
    for i, seconds in enumerate(SECONDS):
        sources = speech_like(seconds, seed=i)
        for folder, signal in [("mix", sources.sum(axis=0)), ("s1", sources[0]),
                               ("s2", sources[1])]:
            os.makedirs(os.path.join(root, "cv", folder), exist_ok=True)
            write_wav(os.path.join(root, "cv", folder, f"cv_{i:03d}.wav"), signal)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("validation_multihost")
    data = str(root / "data")
    _write_split(data)
    cache = str(root / "jax-cache")
    address = f"127.0.0.1:{_free_port()}"
    processes = []
    for process_id in range(2):
        command = [sys.executable, WORKER, data, str(root / f"index{process_id}"),
                   str(root / f"process{process_id}.json"), "--coordinator-address", address,
                   "--num-processes", "2", "--process-id", str(process_id)]
        processes.append(subprocess.Popen(command, env=environment(DEVICES_PER_PROCESS, cache),
                                          text=True, stdout=subprocess.PIPE,
                                          stderr=subprocess.STDOUT))
    for process in processes:
        output, _ = process.communicate(timeout=TIMEOUT_S)
        assert process.returncode == 0, output[-3000:]
    single = subprocess.run([sys.executable, WORKER, data, str(root / "index_single"),
                             str(root / "single.json")],
                            env=environment(DEVICES_PER_PROCESS, cache), text=True,
                            capture_output=True, timeout=TIMEOUT_S)
    assert single.returncode == 0, single.stderr[-3000:]
    results = {}
    for name in ("process0", "process1", "single"):
        with open(root / f"{name}.json") as f:
            results[name] = json.load(f)
    return results


def _calls(result, name):
    return [call for call in result["calls"] if call["name"] == name]


def _model_input_shapes(result):
    """``(rows, padded samples)`` of every model call, in order (its mixture argument)."""
    shapes = []
    for call in _calls(result, "model"):
        # args: the variables' leaves, then the mixture and the lengths.
        mixture, lengths = call["args"][-2:]
        assert lengths[0] == mixture[0][:1] and lengths[1] == "int32", call
        shapes.append(tuple(mixture[0]))
    return shapes


def test_the_processes_score_different_shares_with_different_calls(runs):
    p0, p1 = runs["process0"], runs["process1"]
    assert p0["process_count"] == p1["process_count"] == 2
    assert p0["metrics"]["val_utterances"] == p1["metrics"]["val_utterances"] == len(SECONDS)
    rows = DEVICES_PER_PROCESS
    buckets = [int(s * SAMPLE_RATE) for s in (0.25, 0.5, 1.0)]
    # What the test is about: a global pmap over these would have been a mismatch.
    assert _model_input_shapes(p0) == [(rows, buckets[0]), (rows, buckets[1]), (rows, buckets[2])]
    assert _model_input_shapes(p1) == [(rows, buckets[2]), (rows, buckets[1])]


def test_every_model_and_score_call_runs_on_the_callers_devices_only(runs):
    for name in ("process0", "process1"):
        result = runs[name]
        own = result["local_devices"]
        assert len(own) == DEVICES_PER_PROCESS
        device_calls = _calls(result, "model") + _calls(result, "score")
        assert len(_calls(result, "score")) == len(_calls(result, "model")) > 0
        for call in device_calls:
            placed = [leaf[2] for leaf in call["args"] + call["results"] if leaf[2] is not None]
            assert placed, call["name"]  # at least the results live on devices
            for devices in placed:
                assert {d[0] for d in devices} <= set(own), (name, call["name"], devices)
                assert {d[1] for d in devices} == {result["process_index"]}, (name, devices)
        # The model's inputs and outputs span all of this process's devices.
        for call in _calls(result, "model"):
            assert {d[0] for d in call["results"][0][2]} == set(own)


def test_cross_process_computations_are_identical_on_both_processes(runs):
    gathers = [_calls(runs[name], "process_allgather") for name in ("process0", "process1")]
    assert len(gathers[0]) == 1
    assert gathers[0] == gathers[1]
    assert _calls(runs["single"], "process_allgather") == []  # one process: nothing to gather


def test_two_processes_report_the_single_process_result(runs):
    single = runs["single"]["metrics"]
    assert single["val_utterances"] == len(SECONDS)
    for name in ("process0", "process1"):
        metrics = runs[name]["metrics"]
        assert metrics["val_utterances"] == single["val_utterances"]
        assert metrics["val_skipped_files"] == single["val_skipped_files"] == 0
        for key in ("val_si_snri", "val_si_snr"):
            assert np.isfinite(metrics[key])
            # The allgather carries float32 sums (jax_enable_x64 is off).
            assert metrics[key] == pytest.approx(single[key], abs=1e-4), key
