"""Config errors reach the user as one line naming the key, before any compile or write."""

import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("override, key", [
    ("model.bogus=1", "model.bogus"),
    ("train.learning_rate=fast", "train.learning_rate"),
    ("model.num_heads=5", "model.num_heads"),
    ("model.segment_length=51", "model.segment_length"),
    ("model.window=15", "model.window"),
    ("model.separator=tcn", "model.separator"),
])
def test_train_py_rejects_a_bad_config_in_one_line_and_writes_nothing(tmp_path, override, key):
    workdir = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, os.path.join(REPO, "train.py"), "--config",
         os.path.join(REPO, "configs", "demo.yaml"), "--workdir", str(workdir), "--set", override],
        capture_output=True, text=True, cwd=tmp_path, timeout=120,
        env=dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=REPO))
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert key in lines[0]
    assert not workdir.exists()


def test_set_takes_several_overrides_per_flag_and_repeats():
    sys.path.insert(0, REPO)
    try:
        import train
    finally:
        sys.path.remove(REPO)
    args = train.parse_args(["--config", "c.yaml", "--workdir", "w", "--set", "model.hidden=32",
                             "train.seed=3", "--set", "train.num_steps=5"])
    assert args.overrides == ["model.hidden=32", "train.seed=3", "train.num_steps=5"]
    assert train.parse_args(["--config", "c.yaml", "--workdir", "w"]).overrides == []
