"""README's main command, ``bash scripts/demo.sh``, end to end at two training steps.

The script's own steps are what is under test (data, train, eval, separate, each
stopping the script if it fails), so the run uses the default demo data, as a user's
does. Installation is not: the run sets ``GALR_SKIP_SETUP=1``, and a guard in front of
PATH and of Python's import path records any apt-get or pip the script would still run.
"""

import json
import os
import stat
import subprocess
import sys

import soundfile

from pool_helpers import make_system_root
from subprocess_env import REPO, cpu_environment

TRAIN_STEPS = 2
# The real-voice pool the demo scores its held-out real speakers on, built from the
# packages' layouts with synthetic clips (tests/pool_helpers.py): seconds, not minutes
POOL_OPTIONS = "--max-utterances 4 --espeak-sentences 0 --num-valid 3 --num-test 4 --seconds 1"
GUARDED_COMMANDS = ("apt-get", "apt", "pip", "pip3")
GUARD_EXIT = 97  # what a guarded command exits with; no real tool's usual code


def _guard(root) -> tuple[dict, str]:
    """Stubs of the installers, first on PATH and (for ``python -m pip``) on the
    import path; each appends its command line to a log and fails loudly.
    Returns the environment changes and the log's path."""
    log = str(root / "installers_called.log")
    bin_dir, python_dir = root / "bin", root / "python" / "pip"
    bin_dir.mkdir(parents=True)
    python_dir.mkdir(parents=True)
    for name in GUARDED_COMMANDS:
        stub = bin_dir / name
        stub.write_text(f'#!/bin/sh\necho "{name} $*" >> "{log}"\n'
                        f'echo "test guard: {name} must not run here" >&2\nexit {GUARD_EXIT}\n')
        stub.chmod(stub.stat().st_mode | stat.S_IXUSR)
    (python_dir / "__init__.py").write_text("")
    (python_dir / "__main__.py").write_text(
        f"import sys\nwith open({log!r}, 'a') as f:\n    f.write('python -m pip ' + "
        f"' '.join(sys.argv[1:]) + '\\n')\nsys.exit('test guard: pip must not run here')\n")
    return {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
            "PYTHONPATH": f"{root / 'python'}{os.pathsep}{REPO}"}, log


def test_demo_script_trains_evaluates_and_separates_a_test_mixture(tmp_path):
    data, workdir, real = tmp_path / "data", tmp_path / "run", tmp_path / "realpool"
    guard, log = _guard(tmp_path / "guard")
    env = {**cpu_environment(num_devices=2), **guard, "DATA": str(data), "WORKDIR": str(workdir),
           "GALR_SKIP_SETUP": "1", "GALR_PYTHON": sys.executable,
           "REAL_DATA": str(real),
           "POOL_OPTIONS": f"{POOL_OPTIONS} --system-root {make_system_root(tmp_path / 'system')}"}
    # The guard is in the way of both routes before the script runs.
    apt_get = subprocess.run(["apt-get", "update"], env=env, capture_output=True)
    assert apt_get.returncode == GUARD_EXIT
    assert subprocess.run([sys.executable, "-m", "pip", "--version"], env=env,
                          capture_output=True).returncode == 1
    with open(log) as f:
        assert f.read().splitlines() == ["apt-get update", "python -m pip --version"]
    os.remove(log)

    result = subprocess.run(
        ["bash", "scripts/demo.sh", "--set", f"train.num_steps={TRAIN_STEPS}",
         f"train.eval_every={TRAIN_STEPS}", f"train.checkpoint_every={TRAIN_STEPS}"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, (result.returncode, result.stderr[-3000:])
    assert not os.path.exists(log), open(log).read()
    assert "GALR_SKIP_SETUP=1: no setup" in result.stdout
    assert "Environment ready" not in result.stdout  # setup.sh's last line

    summary = json.loads((workdir / "eval" / "tt" / "summary.json").read_text())
    assert summary["count"] == len(os.listdir(data / "tt" / "mix"))

    real_summary = json.loads((workdir / "eval" / "real_tt" / "summary.json").read_text())
    assert real_summary["count"] == len(os.listdir(real / "tt" / "mix")) == 4
    assert "(held-out real speakers)" in result.stdout

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
