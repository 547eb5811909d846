"""Training survives kills, preemption, damaged checkpoints, full or read-only disks and NaN.

Cases 1-5 of the fault suite (issue 6), each on real ``train.py`` processes: real
SIGKILL/SIGTERM, real Orbax files (a damaged finalized step stops the run, untouched), a real file-size limit (EFBIG at save) and a real
read-only mount (in a user namespace). The uninterrupted reference run is shared.

More kill points: ``GALR_FAULT_SEEDS=0,1,2,3 pytest tests/test_train_faults.py``.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import soundfile

from training_helpers import (environment, final_params, train_command, write_config,
                              write_corpus)

NUM_STEPS = 10
CHECKPOINT_EVERY = 2
POLL_S = 0.002
RUN_TIMEOUT_S = 300
SEEDS = [int(s) for s in os.environ.get("GALR_FAULT_SEEDS", "0").split(",")]
# File-size limit that lets the logs and config through but not a checkpoint's
# parameter data (about 40 KB for the tiny model).
FILE_SIZE_LIMIT = 16 * 1024


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("faults")
    data = write_corpus(str(root / "data"))
    config = write_config(str(root / "config.yaml"), data, num_steps=NUM_STEPS,
                          checkpoint_every=CHECKPOINT_EVERY, tensorboard=False)
    return {"root": root, "data": data, "config": config, "cache": str(root / "jax-cache")}


def _start(setup, workdir, overrides=(), prefix=()):
    log = open(os.path.join(setup["root"], f"{os.path.basename(workdir)}-{time.time_ns()}.log"), "w")
    process = subprocess.Popen(list(prefix) + train_command(setup["config"], str(workdir), overrides),
                               stdout=log, stderr=subprocess.STDOUT, text=True,
                               env=environment(1, setup["cache"]))
    process.log_path = log.name
    return process


def _finish(process):
    process.wait(timeout=RUN_TIMEOUT_S)
    with open(process.log_path) as f:
        return process.returncode, f.read()


def _run(setup, workdir, overrides=(), **kwargs):
    return _finish(_start(setup, workdir, overrides, **kwargs))


def _started(process):
    """True once the run's progress bar is up (its metrics log is then trimmed to the
    resumed step, so older records no longer count)."""
    with open(process.log_path) as f:
        return "train:" in f.read()


def _logged_step(workdir):
    try:
        with open(os.path.join(workdir, "metrics.jsonl")) as f:
            steps = [json.loads(line)["step"] for line in f if line.endswith("\n")]
    except (FileNotFoundError, json.JSONDecodeError):
        return 0
    return max(steps, default=0)


def _save_in_flight(workdir, since):
    """True while a checkpoint is being written: a temporary step folder changed after
    ``since`` (leftovers of an earlier kill are older)."""
    folder = os.path.join(workdir, "checkpoints")
    try:
        names = [n for n in os.listdir(folder) if "orbax-checkpoint-tmp" in n]
        return any(os.stat(os.path.join(folder, n)).st_mtime > since for n in names)
    except FileNotFoundError:  # the folder, or a temporary one just renamed
        return False


def _wait_for(process, condition, what):
    while not condition():
        if process.poll() is not None:
            pytest.fail(f"train.py ended ({process.returncode}) before {what}:\n"
                        + open(process.log_path).read()[-3000:])
        time.sleep(POLL_S)


def _kill_when(process, condition, what, signum=signal.SIGKILL):
    _wait_for(process, condition, what)
    process.send_signal(signum)
    return _finish(process)


def _complete_steps(workdir):
    folder = os.path.join(workdir, "checkpoints")
    return sorted(int(name) for name in os.listdir(folder) if name.isdigit())


def _assert_params_equal(workdir, reference):
    step, params = final_params(str(workdir))
    ref_step, ref_params = reference
    assert step == ref_step == NUM_STEPS
    assert params.keys() == ref_params.keys()
    for key in params:
        assert np.array_equal(params[key], ref_params[key]), f"{key} differs from the reference"


@pytest.fixture(scope="module")
def reference(setup):
    workdir = setup["root"] / "reference"
    code, output = _run(setup, workdir)
    assert code == 0, output[-3000:]
    return final_params(str(workdir))


def _truncate_newest(workdir):
    newest = _complete_steps(workdir)[-1]
    for folder, _, files in os.walk(os.path.join(workdir, "checkpoints", str(newest), "params")):
        for name in files:
            path = os.path.join(folder, name)
            with open(path, "r+b") as f:
                f.truncate(os.path.getsize(path) // 2)
    return newest


def _unfinalized(workdir):
    """Step folders of saves cut short (Orbax's temporary names)."""
    return [n for n in os.listdir(os.path.join(workdir, "checkpoints")) if "orbax-checkpoint-tmp" in n]


def _tree_snapshot(root):
    """Every path under ``root`` with its bytes (logs excluded: a run appends to them)."""
    snapshot = {}
    for folder, _, files in os.walk(os.path.join(root, "checkpoints")):
        for name in files:
            with open(os.path.join(folder, name), "rb") as f:
                snapshot[os.path.relpath(os.path.join(folder, name), root)] = f.read()
    return snapshot


@pytest.mark.parametrize("seed", SEEDS)
def test_sigkill_at_random_points_resumes_bit_identically(setup, reference, seed, tmp_path):
    """Case 1 (and 3): kills at a random step, during an async save, at another random
    step; then the newest checkpoint is damaged by hand, which stops the next start with
    a clear error and no file touched; once the user moves that step away, the final
    params still equal the uninterrupted run's bit for bit, and the log has each step once."""
    rng = random.Random(seed)
    workdir = setup["root"] / f"sigkill-{seed}"

    def at_step(process, step):
        return lambda: _started(process) and _logged_step(workdir) >= step

    first = rng.randint(1, 4)
    process = _start(setup, workdir)
    code, _ = _kill_when(process, at_step(process, first), f"step {first}")
    assert code == -signal.SIGKILL

    since = time.time()
    code, _ = _kill_when(_start(setup, workdir), lambda: _save_in_flight(workdir, since),
                         "an asynchronous save started")
    assert code == -signal.SIGKILL

    third = rng.randint(6, NUM_STEPS - 1)
    cut_short = _unfinalized(workdir)
    process = _start(setup, workdir)
    code, output = _kill_when(process, at_step(process, third), f"step {third}")
    assert code == -signal.SIGKILL
    for name in cut_short:  # the save killed above, if it was still unfinalized
        assert f"skipping {name}, which Orbax never finalized" in output, output[-3000:]
    assert len(_complete_steps(workdir)) >= 2, _complete_steps(workdir)

    damaged = _truncate_newest(workdir)
    before = _tree_snapshot(workdir)
    code, output = _run(setup, workdir)
    assert code == 2, output[-3000:]
    step_dir = os.path.join(workdir, "checkpoints", str(damaged))
    assert f"{step_dir}: reading this checkpoint failed" in output, output[-3000:]
    assert _tree_snapshot(workdir) == before
    shutil.move(step_dir, tmp_path / str(damaged))  # what the message tells the user to do
    code, output = _run(setup, workdir)
    assert code == 0, output[-3000:]
    _assert_params_equal(workdir, reference)
    steps = [json.loads(line)["step"] for line in open(workdir / "metrics.jsonl")]
    assert steps == list(range(1, NUM_STEPS + 1)), steps


def test_sigterm_saves_exits_0_and_resumes(setup, reference):
    """Case 2: SIGTERM -> checkpoint at the current step, exit 0; a restart finishes the run."""
    workdir = setup["root"] / "sigterm"
    process = _start(setup, workdir)
    code, output = _kill_when(process, lambda: _logged_step(workdir) >= 3, "step 3",
                              signum=signal.SIGTERM)
    assert code == 0, output[-3000:]
    stopped = _logged_step(workdir)
    assert _complete_steps(workdir)[-1] == stopped < NUM_STEPS
    assert f"preempted at step {stopped}" in output
    code, output = _run(setup, workdir)
    assert code == 0, output[-3000:]
    assert f"resuming {workdir} from step {stopped}" in output
    _assert_params_equal(workdir, reference)


# Sets the limit, then becomes train.py (no fork of the multithreaded test process).
LIMIT_FILE_SIZE = [sys.executable, "-c",
                   "import os, resource, sys; "
                   f"resource.setrlimit(resource.RLIMIT_FSIZE, ({FILE_SIZE_LIMIT}, resource.RLIM_INFINITY)); "
                   "os.execv(sys.argv[1], sys.argv[1:])"]


def test_full_disk_at_save_is_a_clear_error_and_keeps_the_previous_checkpoint(setup):
    """Case 4: a save that cannot be written (EFBIG from a file-size limit) stops the run
    with a message naming the folder and the last complete step, which stays readable,
    and without tracebacks."""
    workdir = setup["root"] / "full-disk"
    code, output = _run(setup, workdir, ["train.num_steps=4"])
    assert code == 0, output[-3000:]
    # Output goes through a pipe: a log file would hit the size limit too. The run gets
    # its own copy of the compilation cache, whose new entries the limit truncates.
    cache = shutil.copytree(setup["cache"], setup["root"] / "full-disk-jax-cache")
    result = subprocess.run(LIMIT_FILE_SIZE + train_command(setup["config"], str(workdir)),
                            capture_output=True, text=True, env=environment(1, str(cache)),
                            timeout=RUN_TIMEOUT_S)
    assert result.returncode == 2, result.stderr[-3000:]
    message = [line for line in result.stderr.splitlines() if line.startswith("train.py: ")]
    assert message and "writing a checkpoint failed" in message[0], result.stderr[-3000:]
    assert "File too large" in message[0]
    assert message[0].endswith("the last complete checkpoint is step 4"), result.stderr[-6000:]
    # Orbax's save threads and TensorStore's late callbacks used to print dozens of
    # tracebacks of their internals before that line.
    assert "Traceback" not in result.stderr, result.stderr[-6000:]
    step, params = final_params(str(workdir))
    assert step == 4 and all(np.all(np.isfinite(v)) for v in params.values())


def test_read_only_workdir_fails_before_training(setup, reference):
    """Case 4: a read-only file system is reported before any compile; nothing is lost."""
    if shutil.which("unshare") is None:
        pytest.fail("the read-only case needs util-linux's unshare")
    workdir = setup["root"] / "reference"
    before = _complete_steps(workdir)
    mount = (f"mount --bind {workdir} {workdir} && mount -o remount,bind,ro {workdir} && "
             'exec "$@"')
    code, output = _run(setup, workdir, ["train.num_steps=20"],
                        prefix=["unshare", "--user", "--map-root-user", "--mount", "sh", "-c",
                                mount, "sh"])
    assert code == 2, output[-3000:]
    assert f"{workdir}: cannot write the run folder (the file system is read-only)" in output
    assert _complete_steps(workdir) == before


def _add_loud_utterance(data_root):
    """A training mixture 1e30 times louder than normal: finite samples whose energy
    overflows float32 in the loss, so every step that draws it is non-finite."""
    loud = "tr_loud.wav"
    for folder in ("mix", "s1", "s2"):
        source = os.path.join(data_root, "tr", folder, "tr_000.wav")
        samples, rate = soundfile.read(source, dtype="float32")
        soundfile.write(os.path.join(data_root, "tr", folder, loud), samples * 1e30, rate,
                        subtype="FLOAT")


# Metrics fetched after every step, and every 4 steps (the loop's sync points then
# report the steps in between).
@pytest.mark.parametrize("log_every", [1, 4])
def test_non_finite_steps_are_skipped_counted_and_training_continues(setup, tmp_path, log_every):
    """Case 5: NaN/Inf from the data -> those updates are skipped, counted and logged."""
    data = shutil.copytree(setup["data"], tmp_path / "data")
    _add_loud_utterance(str(data))
    workdir = tmp_path / "run"
    code, output = _run(setup, workdir, [f"data.root={data}", "train.max_consecutive_skips=5",
                                         f"train.log_every={log_every}"])
    assert code == 0, output[-3000:]
    from galr_jax.config import load_config
    from galr_jax.data import make_train_loader, open_split
    config = load_config(setup["config"], [f"data.root={data}"])
    loader = make_train_loader(config, open_split(config.data, "tr", 2))
    loud_steps = [s + 1 for s in range(NUM_STEPS) if np.abs(loader.batch_at(s)["mixture"]).max() > 1e10]
    assert loud_steps, "the loud utterance was never drawn"
    records = [json.loads(line) for line in open(workdir / "metrics.jsonl")]
    assert records[-1]["skipped_steps"] == len(loud_steps)
    for step in loud_steps:
        assert f"step {step}: non-finite loss or gradient, update skipped" in output
    step, params = final_params(str(workdir))
    assert step == NUM_STEPS and all(np.all(np.isfinite(v)) for v in params.values())
    assert all(r["loss"] is not None for r in records if r["step"] not in loud_steps)


def test_consecutive_non_finite_steps_stop_with_a_clear_message(setup, tmp_path):
    """Case 5: a learning rate that blows the weights up -> the run stops after
    train.max_consecutive_skips skipped steps (exit 1) and keeps its checkpoint."""
    workdir = tmp_path / "diverged"
    code, output = _run(setup, workdir, ["train.learning_rate=1e30", "train.max_consecutive_skips=3"])
    assert code == 1, output[-3000:]
    assert "3 consecutive steps had a non-finite loss or gradient" in output
    assert "train.max_consecutive_skips=3" in output
    kept = _complete_steps(workdir)
    assert kept and f"The last good checkpoint is step {kept[-1]}" in output
    step, params = final_params(str(workdir))
    assert step == kept[-1] and all(np.all(np.isfinite(v)) for v in params.values())
    records = [json.loads(line) for line in open(workdir / "metrics.jsonl")]
    assert records[-1]["skipped_steps"] >= 3 and records[-1]["loss"] is None


def test_divergence_is_reported_at_the_step_that_reached_the_limit_between_sync_points(
        setup, tmp_path):
    """The loop reads the skip counters only every train.log_every steps: the stop still
    names the step that reached train.max_consecutive_skips, and that step's count,
    as a run that reads them after every step does, and nothing past it is saved."""
    common = ["train.learning_rate=1e30", "train.max_consecutive_skips=3",
              f"train.checkpoint_every={NUM_STEPS}"]
    stops = {}
    for log_every in (1, NUM_STEPS - 1):
        workdir = tmp_path / f"log-every-{log_every}"
        code, output = _run(setup, workdir, common + [f"train.log_every={log_every}"])
        assert code == 1, output[-3000:]
        message = [line for line in output.splitlines() if line.startswith("train.py: ")]
        assert message and "3 consecutive steps had a non-finite loss" in message[0], output[-3000:]
        records = [json.loads(line) for line in open(workdir / "metrics.jsonl")]
        assert records[-1]["step"] < log_every or log_every == 1, records
        assert _complete_steps(workdir) == []
        stops[log_every] = (message[0], records[-1]["step"], records[-1]["skipped_steps"])
    assert stops[1] == stops[NUM_STEPS - 1], stops


def test_resuming_with_another_model_config_is_a_clear_error(setup, reference):
    """A workdir resumed with different model settings fails before any compile."""
    workdir = setup["root"] / "reference"
    before = _complete_steps(workdir)
    code, output = _run(setup, workdir, ["model.features=32", "model.num_filters=32"])
    assert code == 2, output[-3000:]
    assert "this run was started with another model (model.features is 16" in output
    assert _complete_steps(workdir) == before


def test_resuming_with_changed_runtime_settings_continues_the_run(setup, reference, tmp_path):
    """runtime.* (the usual answer to an out of memory is remat) may change on resume,
    also in the old model.* spelling; training continues from the saved step."""
    workdir = tmp_path / "runtime"
    shutil.copytree(setup["root"] / "reference", workdir)
    more = NUM_STEPS + CHECKPOINT_EVERY
    code, output = _run(setup, workdir, [f"train.num_steps={more}", "runtime.remat=true",
                                         "runtime.lstm_unroll=2", "model.recompute_attention=false"])
    assert code == 0, output[-3000:]
    assert f"resuming {workdir} from step {NUM_STEPS}" in output, output[-3000:]
    assert "model.recompute_attention is deprecated" in output
    assert "runtime.remat: False -> True" in output
    steps = [json.loads(line)["step"] for line in open(workdir / "metrics.jsonl")]
    assert steps == list(range(1, more + 1)), steps
    step, _ = final_params(str(workdir))
    assert step == more
