"""The package as a new user gets it: the wheel, installed (not editable) into a fresh
venv, trains and evaluates from a folder outside the repository with the shipped
configs, by name.

Offline and lean: the wheel is built without build isolation from a copy of the
sources (so the checkout gets no ``build/`` or ``.egg-info``), and the venv reuses this
interpreter's installed dependencies through a ``.pth`` line instead of downloading
them. A ``.pth`` line adds the folder to ``sys.path`` without running the ``.pth`` files
in it, so an editable install of galr-jax there stays invisible: the test checks that
``galr_jax`` is imported from the wheel.
"""

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import venv

import pytest

from subprocess_env import REPO
from training_helpers import FAST_COMPILE_FLAG

# What setup.cfg's build reads: the package, its metadata and the README it embeds.
BUILD_INPUTS = ("galr_jax", "setup.cfg", "pyproject.toml", "README.md")
STEPS = 2
TIMEOUT = 300


def _checked(command: list[str], **options) -> str:
    """Runs ``command`` (``options`` go to subprocess.run); its stdout, or a failure that
    shows what it printed."""
    result = subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT, **options)
    assert result.returncode == 0, f"{command}:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def _build_wheel(root) -> str:
    """The wheel of a copy of the sources. Without build isolation pip uses this
    interpreter's setuptools, which builds wheels by itself from 70.1 (torch, of the dev
    extra, requires >= 77)."""
    source = root / "source"
    for name in BUILD_INPUTS:
        path = os.path.join(REPO, name)
        if os.path.isdir(path):
            shutil.copytree(path, source / name,
                            ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy(path, source / name)
    dist = root / "dist"
    _checked([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
              "--no-index", "--quiet", "--wheel-dir", str(dist), str(source)])
    (wheel,) = dist.glob("galr_jax-*.whl")
    return str(wheel)


def _venv_with_wheel(root, wheel: str) -> str:
    """A venv whose site-packages sees this interpreter's, with the wheel installed."""
    env_dir = root / "venv"
    venv.create(env_dir, with_pip=False)
    python = str(env_dir / "bin" / "python")
    site = _checked([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"])
    site = site.strip()
    outer = {sysconfig.get_paths()[key] for key in ("purelib", "platlib")}
    with open(os.path.join(site, "outer_site_packages.pth"), "w") as f:
        f.write("\n".join(sorted(outer)) + "\n")
    _checked([sys.executable, "-m", "pip", "--python", python, "install", "--no-deps",
              "--no-index", "--quiet", wheel])
    return str(env_dir / "bin")


@pytest.mark.slow
def test_installed_wheel_trains_and_evaluates_outside_the_repository(tmp_path):
    bin_dir = _venv_with_wheel(tmp_path, _build_wheel(tmp_path))
    work = tmp_path / "user"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env.update(JAX_PLATFORMS="cpu", PYTHONIOENCODING="utf-8", XLA_FLAGS=FAST_COMPILE_FLAG)

    def run(program, *args):
        """Runs the venv's ``program`` (by its path: another install may be on PATH)."""
        return _checked([os.path.join(bin_dir, program), *args], cwd=work, env=env)

    where = run("python", "-c", "import galr_jax; print(galr_jax.__file__)")
    assert where.startswith(str(tmp_path / "venv")), where

    unknown = subprocess.run([os.path.join(bin_dir, "galr-train"), "--config", "galr_15m",
                              "--workdir", "nowhere"], cwd=work, env=env, capture_output=True,
                             text=True, timeout=TIMEOUT)
    assert unknown.returncode == 2
    assert ("galr-train: galr_15m: config file not found, and not the name of a shipped config "
            "(demo, ") in unknown.stderr, unknown.stderr
    assert " galr_1.5m, " in unknown.stderr, unknown.stderr

    run("galr-demo-data", "--out", "data", "--num-train", "4", "--num-valid", "2",
        "--num-test", "2", "--seconds", "1", "--voices", "synthetic", "--pool-size", "2",
        "--no-install")
    run("galr-train", "--config", "demo", "--workdir", "run", "--set", f"train.num_steps={STEPS}",
        "data.root=data", "data.crop_seconds=0.5", "data.num_workers=1", "train.batch_size=2",
        "train.tensorboard=false", "eval.batch_size=2", "eval.bucket_seconds=[1.0]")
    records = [json.loads(line) for line in open(work / "run" / "metrics.jsonl")]
    assert records[-1]["step"] == STEPS and "val_si_snri" in records[-1]

    run("galr-eval", "--workdir", "run", "--split", "tt", "--no-sdr", "--quiet")
    with open(work / "run" / "eval" / "tt" / "summary.json") as f:
        summary = json.load(f)
    assert summary["step"] == STEPS and summary["count"] == 2

    # galr-separate --list-models arrives with the released models (issue 22's merge);
    # test it once the installed galr-separate offers it.
    if "--list-models" in run("galr-separate", "--help"):
        assert run("galr-separate", "--list-models").strip()
