"""``python -m galr_jax.plot``: a real 2-step run's curve, old logs without ``time``, and
the message when matplotlib is missing."""

import subprocess
import sys

import numpy as np
import pytest

from galr_jax.plot import curve_from_records, load_curve
from galr_jax.training.logs import MetricLogger
from subprocess_env import REPO
from training_helpers import environment, run_train, write_config, write_corpus

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    root = tmp_path_factory.mktemp("plot")
    data = write_corpus(str(root / "data"), counts={"tr": 4, "cv": 2})
    config = write_config(str(root / "tiny.yaml"), data, num_steps=2, tensorboard=False)
    result = run_train(config, str(root / "run"), cache_dir=str(root / "cache"))
    assert result.returncode == 0, result.stderr
    return root / "run"


@pytest.mark.slow  # trains (about 25 s with its drawing)
def test_a_two_step_run_is_drawn_with_measured_wall_time(workdir, tmp_path):
    curve = load_curve(workdir)
    assert curve.measured_time  # every record carries the logger's "time"
    assert curve.train_steps == [1, 2] and curve.val_steps == [2]
    assert curve.train_hours[0] == 0 and np.all(np.diff(curve.train_hours) >= 0)
    assert np.isfinite(curve.val_si_snri).all()

    out = tmp_path / "curve.png"
    result = subprocess.run([sys.executable, "-m", "galr_jax.plot", "--workdir", str(workdir),
                             "--out", str(out)], capture_output=True, text=True, cwd=tmp_path,
                            env=environment(), timeout=120)
    assert result.returncode == 0, result.stderr
    assert out.read_bytes().startswith(PNG_SIGNATURE)
    import matplotlib.image
    pixels = matplotlib.image.imread(out)
    assert pixels.shape[:2] == (600, 1000)  # FIGURE_SIZE at DPI
    assert pixels.std() > 0  # something was drawn


def test_records_without_time_get_training_hours_from_steps_per_second():
    records = [{"step": 100, "loss": 1.0, "steps_per_second": 2.0},
               {"step": 200, "loss": 0.5, "steps_per_second": 4.0, "val_si_snri": 3.0},
               {"step": 300, "loss": None, "steps_per_second": None}]
    curve = curve_from_records(records, "old.jsonl")
    assert not curve.measured_time
    # 100 steps at 2/s, then 100 at 4/s: 50 s and 75 s; the last window has no rate.
    assert curve.train_hours == pytest.approx([50 / 3600, 75 / 3600])
    assert curve.train_steps == [100, 200] and curve.val_hours == pytest.approx([75 / 3600])


def test_a_workdir_without_metrics_and_a_missing_matplotlib_are_one_line_errors(tmp_path):
    result = subprocess.run([sys.executable, "-m", "galr_jax.plot", "--workdir", str(tmp_path)],
                            capture_output=True, text=True, env=environment(), timeout=120)
    assert result.returncode == 2
    assert result.stderr.startswith(f"error: {tmp_path}/metrics.jsonl: not found")

    workdir = tmp_path / "run"
    workdir.mkdir()  # train.py's workdir set-up makes it
    logger = MetricLogger(workdir, start_step=0, tensorboard=False)
    logger.write(1, {"loss": 1.0, "val_si_snri": 2.0})
    logger.close()
    # As on an install without the plot extra: importing matplotlib fails.
    no_matplotlib = ("import sys; sys.modules['matplotlib'] = None; "
                     "from galr_jax.plot import main; sys.exit(main(sys.argv[1:]))")
    result = subprocess.run([sys.executable, "-c", no_matplotlib, "--workdir", str(workdir),
                             "--out", str(tmp_path / "x.png")],
                            capture_output=True, text=True, env=environment(), timeout=120,
                            cwd=REPO)
    assert result.returncode == 2
    assert "pip install 'galr-jax[plot]'" in result.stderr and "matplotlib==3.10.8" in result.stderr
    assert not (tmp_path / "x.png").exists()
