"""End to end in CI: demo data -> train.py (demo config) -> checkpoint -> resume -> evaluate."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
import yaml

from training_helpers import REPO, environment, run_train

DEMO_CONFIG = os.path.join(REPO, "configs", "demo.yaml")
# A few short steps of the demo recipe on a tiny demo set.
OVERRIDES = ["train.batch_size=2", "data.crop_seconds=0.5", "train.log_every=1",
             "train.checkpoint_every=1", "train.eval_every=1000", "eval.batch_size=2",
             "eval.bucket_seconds=[1.0]", "data.num_workers=1", "train.tensorboard=true"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("smoke")
    data = root / "demo"
    build = subprocess.run([sys.executable, "-m", "galr_jax.data.demo", "--out", str(data),
                            "--num-train", "8", "--num-valid", "2", "--num-test", "2",
                            "--seconds", "1", "--no-install"], capture_output=True, text=True,
                           env=environment(1), timeout=300, cwd=REPO)
    assert build.returncode == 0, build.stderr[-3000:]
    workdir = root / "run"
    overrides = OVERRIDES + [f"data.root={data}"]
    cache = str(root / "jax-cache")
    first = run_train(DEMO_CONFIG, str(workdir), overrides + ["train.num_steps=2"], cache_dir=cache)
    assert first.returncode == 0, first.stderr[-3000:]
    second = run_train(DEMO_CONFIG, str(workdir), overrides + ["train.num_steps=3"], cache_dir=cache)
    assert second.returncode == 0, second.stderr[-3000:]
    return {"data": data, "workdir": workdir, "first": first, "second": second}


def test_run_folder_has_config_versions_logs_and_checkpoints(run):
    workdir = run["workdir"]
    config = yaml.safe_load(open(workdir / "config.yaml"))
    assert config["train"]["num_steps"] == 3 and config["model"]["separator"] == "galr"
    versions = json.load(open(workdir / "versions.json"))
    assert versions["jax"] == jax.__version__ and versions["devices"].endswith("cpu")
    assert sorted(int(d) for d in os.listdir(workdir / "checkpoints") if d.isdigit()) == [1, 2, 3]
    assert any(name.startswith("events.out.tfevents") for name in os.listdir(workdir / "tensorboard"))


def test_second_run_resumed_and_logged_each_step_once(run):
    assert "resuming" in run["second"].stderr and "from step 2" in run["second"].stderr
    records = [json.loads(line) for line in open(run["workdir"] / "metrics.jsonl")]
    assert [r["step"] for r in records] == [1, 2, 3]
    assert all(np.isfinite(r["loss"]) for r in records)
    assert "val_si_snri" in records[1] and "val_si_snri" in records[2]


def test_evaluation_of_the_checkpoint_matches_the_logged_validation(run):
    from galr_jax.evaluation import scoring
    from galr_jax.data import UtteranceReader, open_split
    from galr_jax.models import build_model
    from galr_jax.training.checkpoints import restore_variables

    variables, meta = restore_variables(run["workdir"], which="latest")
    config = meta["config"]
    assert meta["step"] == 3
    model = build_model(config)
    separate = jax.jit(lambda mixture, lengths: model.apply(variables, mixture, lengths=lengths))
    logged = [json.loads(line) for line in open(run["workdir"] / "metrics.jsonl")][-1]
    for split in ("cv", "tt"):
        with UtteranceReader(open_split(config.data, split, config.model.num_sources)) as reader:
            result = scoring.evaluate(
                separate, ((u.id, u.mixture, u.sources) for u in reader),
                sample_rate=config.data.sample_rate, bucket_seconds=config.eval.bucket_seconds,
                batch_size=config.eval.batch_size, progress=False)
        assert result.summary["count"] == 2 and np.isfinite(result.summary["si_snri_mean"])
        if split == "cv":
            assert result.summary["si_snri_mean"] == pytest.approx(logged["val_si_snri"], abs=1e-3)
