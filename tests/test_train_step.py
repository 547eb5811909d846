"""The train step: non-finite updates are skipped and counted; bfloat16 compute works."""

from __future__ import annotations

import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from galr_jax.config import config_from_dict
from galr_jax.models import build_model
from galr_jax.training import batch_loss
from training_helpers import TINY_MODEL, environment

WORKERS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "training_workers.py")


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    out = tmp_path_factory.mktemp("step") / "step.npz"
    run = subprocess.run([sys.executable, WORKERS, "step-behaviour", str(out)], capture_output=True,
                         text=True, env=environment(1), timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    return dict(np.load(out))


def _params(results, prefix):
    return {k[len(prefix):]: v for k, v in results.items() if k.startswith(prefix)}


def test_nan_in_batch_skips_the_update_and_counts_it(results):
    initial = _params(results, "float32/initial/params")
    after = _params(results, "float32/nan/params")
    assert all(np.array_equal(initial[k], after[k]) for k in initial)
    assert int(results["float32/nan/metrics/skipped"]) == 1
    assert int(results["float32/nan/metrics/skipped_steps"]) == 1
    assert int(results["float32/nan/metrics/consecutive_skips"]) == 1
    assert not np.isfinite(float(results["float32/nan/metrics/loss"]))
    # The data position moves on; Adam's own count does not (its state is kept).
    assert int(results["float32/nan/step"]) == 1
    assert int(results["float32/nan/adam_count"]) == 0


def test_finite_step_after_a_skip_updates_and_resets_the_run_of_skips(results):
    before = _params(results, "float32/nan/params")
    after = _params(results, "float32/finite/params")
    assert any(not np.array_equal(before[k], after[k]) for k in before)
    assert all(np.all(np.isfinite(v)) for v in after.values())
    assert int(results["float32/finite/metrics/skipped"]) == 0
    assert int(results["float32/finite/metrics/consecutive_skips"]) == 0
    assert int(results["float32/finite/metrics/skipped_steps"]) == 1
    assert int(results["float32/finite/step"]) == 2
    assert int(results["float32/finite/adam_count"]) == 1


def test_bfloat16_compute_keeps_float32_params_and_a_finite_loss(results):
    after = _params(results, "bfloat16/finite/params")
    assert all(v.dtype == np.float32 for v in after.values())
    assert np.isfinite(float(results["bfloat16/finite/metrics/loss"]))
    assert int(results["bfloat16/finite/metrics/skipped"]) == 0
    # Same data, the same initial params (each run's NaN step changed nothing) and the same
    # step, so the same dropout masks: bfloat16 moves the loss by rounding only.
    f32_loss = float(results["float32/finite/metrics/loss"])
    assert float(results["bfloat16/finite/metrics/loss"]) == pytest.approx(f32_loss, abs=0.5)


@pytest.mark.parametrize("dropout", [0.1, 0.0])
def test_the_whole_batch_in_one_call_equals_its_rows_apart(dropout):
    """The batch's loss gives the mean loss and gradient of the rows taken one at a
    time, each with its global row index: the property that makes an update independent
    of how the batch is split over devices, dropout masks included."""
    model = build_model(config_from_dict({"model": {**TINY_MODEL, "attention_dropout": dropout}}))
    assert model.uses_dropout == (dropout > 0)
    key = jax.random.PRNGKey(7)
    rng = np.random.default_rng(0)
    batch = {"mixture": rng.standard_normal((3, 640)).astype(np.float32),
             "sources": rng.standard_normal((3, 2, 640)).astype(np.float32)}
    params = model.init(jax.random.PRNGKey(0), batch["mixture"])["params"]
    whole_loss, whole_grads = jax.value_and_grad(
        lambda p: batch_loss(model, p, batch, key))(params)

    def row_loss(p, row):
        return batch_loss(model, p, {k: v[row:row + 1] for k, v in batch.items()}, key,
                          first_row=row)

    rows = [jax.value_and_grad(row_loss)(params, row) for row in range(3)]
    assert abs(float(whole_loss) - np.mean([float(loss) for loss, _ in rows])) < 1e-5
    mean_grads = jax.tree.map(lambda *g: sum(g) / 3, *[grads for _, grads in rows])
    # float32 sums over a batch of 3 against 3 separate sums: relative to the largest gradient.
    scale = max(float(np.max(np.abs(g))) for g in jax.tree.leaves(mean_grads))
    worst = max(jax.tree.leaves(jax.tree.map(lambda a, b: float(np.max(np.abs(a - b))),
                                             whole_grads, mean_grads)))
    assert scale > 1e-3 and worst < 1e-5 * scale
    if dropout:
        # The rows' global indices matter: row 1 drawn as if it were row 0 is another draw.
        shifted = batch_loss(model, params, {k: v[1:2] for k, v in batch.items()}, key,
                             first_row=0)
        assert abs(float(shifted) - float(rows[1][0])) > 1e-4
