"""Optimizer and learning-rate schedules."""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np
import optax
import pytest

from galr_jax.config import TrainConfig, config_from_dict
from galr_jax.training.optim import PlateauSchedule, make_learning_rate_fn, make_optimizer


def _update(config: TrainConfig, grads, params):
    optimizer = make_optimizer(config)
    updates, _ = optimizer.update(grads, optimizer.init(params), params)
    return updates


def test_gradients_are_clipped_to_the_global_norm_before_adam():
    config = TrainConfig(clip_grad_norm=5.0)
    params = {"w": jnp.ones((3, 3))}
    grads = {"w": jnp.full((3, 3), 100.0)}
    clipped, _ = optax.clip_by_global_norm(5.0).update(grads, None)
    assert float(optax.tree.norm(clipped)) == pytest.approx(5.0, rel=1e-6)
    # Adam's first step normalises each entry: m / sqrt(v) = sign(g).
    np.testing.assert_allclose(_update(config, grads, params)["w"], 1.0, rtol=1e-5)


def test_weight_decay_applies_to_matrices_only():
    config = TrainConfig(weight_decay=0.1)
    params = {"kernel": jnp.full((2, 2), 3.0), "bias": jnp.full((2,), 3.0)}
    grads = {"kernel": jnp.zeros((2, 2)), "bias": jnp.zeros((2,))}
    updates = _update(config, grads, params)
    np.testing.assert_allclose(updates["kernel"], 0.1 * 3.0, rtol=1e-6)
    np.testing.assert_allclose(updates["bias"], 0.0)


def test_no_weight_decay_by_default():
    params = {"kernel": jnp.full((2, 2), 3.0)}
    updates = _update(TrainConfig(), {"kernel": jnp.zeros((2, 2))}, params)
    np.testing.assert_allclose(updates["kernel"], 0.0)


def test_exponential_schedule_decays_by_0_98_every_two_epochs():
    config = TrainConfig(schedule="exponential", learning_rate=1e-3, decay_rate=0.98,
                         decay_every_epochs=2)
    lr = make_learning_rate_fn(config, steps_per_epoch=10)
    assert float(lr(0)) == pytest.approx(1e-3)
    assert float(lr(19)) == pytest.approx(1e-3)
    assert float(lr(20)) == pytest.approx(0.98e-3)
    assert float(lr(45)) == pytest.approx(0.98 ** 2 * 1e-3)


@pytest.mark.parametrize("schedule", ["constant", "plateau"])
def test_step_independent_schedules(schedule):
    lr = make_learning_rate_fn(TrainConfig(schedule=schedule, learning_rate=5e-4), 10)
    assert float(lr(0)) == float(lr(12345)) == pytest.approx(5e-4)


def test_plateau_halves_after_patience_validations_without_improvement():
    config = TrainConfig(schedule="plateau", plateau_patience=2, plateau_factor=0.5)
    schedule = PlateauSchedule()
    for value in (5.0, 6.0, 5.5, 5.9):  # improves twice, then two validations without
        schedule.update(config, value)
    assert schedule.scale == 0.5 and schedule.best == 6.0
    schedule.update(config, 5.0)
    assert schedule.scale == 0.5  # the patience counts again from the reduction
    schedule.update(config, 5.0)
    assert schedule.scale == 0.25
    schedule.update(config, 7.0)
    assert schedule.since_best == 0 and schedule.scale == 0.25


def test_constant_schedule_never_scales_but_early_stopping_counts():
    config = TrainConfig(schedule="constant", early_stop_patience=3)
    schedule = PlateauSchedule()
    schedule.update(config, 1.0)
    for _ in range(2):
        schedule.update(config, 0.0)
        assert not schedule.should_stop(config)
    schedule.update(config, 0.0)
    assert schedule.should_stop(config) and schedule.scale == 1.0


def test_schedule_state_round_trips():
    schedule = PlateauSchedule(scale=0.25, best=7.5, since_best=3, since_reduction=1)
    assert PlateauSchedule.from_state_dict(schedule.state_dict()) == schedule
    assert PlateauSchedule.from_state_dict(None).best == -math.inf


@pytest.mark.parametrize("override, message", [
    ("train.plateau_factor=1.5", "train.plateau_factor"),
    ("train.decay_every_epochs=0", "train.decay_every_epochs"),
    ("train.weight_decay=-1", "train.weight_decay"),
    ("train.max_valid_utterances=-2", "train.max_valid_utterances"),
])
def test_train_config_errors_name_the_key(override, message):
    from galr_jax.config import ConfigError
    with pytest.raises(ConfigError, match=message):
        config_from_dict({}, [override])


def test_cosine_schedule_warms_up_then_decays_to_the_floor():
    config = TrainConfig(schedule="cosine", learning_rate=2e-3, num_steps=100, warmup_steps=10,
                         final_lr_scale=0.1)
    lr = make_learning_rate_fn(config, 7)
    values = np.array([float(lr(jnp.asarray(step))) for step in range(101)])
    assert values[0] == 0.0 and values[5] == pytest.approx(1e-3)
    assert values[10] == pytest.approx(2e-3)
    assert np.all(np.diff(values[:11]) > 0) and np.all(np.diff(values[10:]) < 0)
    assert values[55] == pytest.approx(2e-3 * (0.1 + 0.9 * 0.5), rel=1e-5)  # half way down
    assert values[100] == pytest.approx(2e-4)


def test_cosine_schedule_is_clipped_to_a_shortened_run():
    """``--set train.num_steps=N`` below warm-up + decay still warms up, then decays to the floor."""
    config = TrainConfig(schedule="cosine", learning_rate=1e-3, num_steps=20, warmup_steps=100,
                         decay_steps=900, final_lr_scale=0.1)
    lr = make_learning_rate_fn(config, 7)
    values = np.array([float(lr(jnp.asarray(step))) for step in range(21)])
    assert np.all(np.isfinite(values)) and values.max() == pytest.approx(1e-3)
    # Warm-up and decay shrink in proportion: 2 warm-up steps, 18 of decay.
    assert values[0] == 0.0 and values[2] == pytest.approx(1e-3)
    assert np.all(np.diff(values[2:]) < 0) and values[20] == pytest.approx(1e-4)


def test_cosine_schedule_can_hold_the_peak_before_decaying():
    config = TrainConfig(schedule="cosine", learning_rate=1e-3, num_steps=100, warmup_steps=10,
                         decay_steps=40, final_lr_scale=0.0)
    lr = make_learning_rate_fn(config, 7)
    values = np.array([float(lr(jnp.asarray(step))) for step in range(101)])
    assert np.allclose(values[10:61], 1e-3)
    assert values[80] == pytest.approx(5e-4, rel=1e-5) and values[100] == pytest.approx(0.0)
