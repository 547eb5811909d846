"""README's main command, ``bash scripts/demo.sh``, end to end at two training steps.

The script's own steps are what is under test (setup, data, train, eval, separate, each
stopping the script if it fails), so the run uses the default demo data, as a user's does.
"""

import json
import os
import subprocess

import soundfile

from subprocess_env import REPO, cpu_environment

TRAIN_STEPS = 2


def test_demo_script_trains_evaluates_and_separates_a_test_mixture(tmp_path):
    data, workdir = tmp_path / "data", tmp_path / "run"
    env = {**cpu_environment(num_devices=2), "DATA": str(data), "WORKDIR": str(workdir)}
    result = subprocess.run(
        ["bash", "scripts/demo.sh", "--set", f"train.num_steps={TRAIN_STEPS}",
         f"train.eval_every={TRAIN_STEPS}", f"train.checkpoint_every={TRAIN_STEPS}"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, (result.returncode, result.stderr[-3000:])

    summary = json.loads((workdir / "eval" / "tt" / "summary.json").read_text())
    assert summary["count"] == len(os.listdir(data / "tt" / "mix"))

    first = sorted(os.listdir(data / "tt" / "mix"))[0]
    stem = os.path.splitext(first)[0]
    separated = sorted(os.listdir(workdir / "separated"))
    assert separated == [f"{stem}_s1.wav", f"{stem}_s2.wav"], separated
    mixture = soundfile.info(str(data / "tt" / "mix" / first))
    for name in separated:
        info = soundfile.info(str(workdir / "separated" / name))
        assert (info.samplerate, info.channels, info.frames) == (
            mixture.samplerate, 1, mixture.frames), name
    assert f"Separated {data}/tt/mix/{first}" in result.stdout
