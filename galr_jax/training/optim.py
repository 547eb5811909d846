"""Optimizer and learning-rate schedules (spec sec. 5: Adam 1e-3, clipping at norm 5).

The learning rate is applied by the train step, not inside the Optax chain, so that
it is a plain function of the step (exponential schedule) times a host-side scale
(plateau halving). Both survive a restart exactly: the step is in the train state and
the scale in the checkpointed :class:`PlateauSchedule` state.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import optax

from galr_jax.config import TrainConfig

LearningRateFn = Callable[[jax.Array], jax.Array]

# Parameters with fewer dimensions than this (biases, norm scales, the learnable LSTM
# initial states, PReLU slopes) are not weight-decayed, as is usual for AdamW.
_MIN_DECAYED_NDIM = 2


def make_optimizer(config: TrainConfig) -> optax.GradientTransformation:
    """Gradient clipping, Adam moments and optional decoupled weight decay.

    The result still has to be multiplied by ``-learning_rate``; the train step does it.

    Args:
      config: ``clip_grad_norm`` (global norm; 0 disables) and ``weight_decay``
        (AdamW-style, on weight matrices only; 0 disables).
    """
    chain = []
    if config.clip_grad_norm > 0:
        chain.append(optax.clip_by_global_norm(config.clip_grad_norm))
    chain.append(optax.scale_by_adam())
    if config.weight_decay > 0:
        chain.append(optax.add_decayed_weights(
            config.weight_decay, mask=lambda params: jax.tree.map(
                lambda p: p.ndim >= _MIN_DECAYED_NDIM, params)))
    return optax.chain(*chain)


def make_learning_rate_fn(config: TrainConfig, steps_per_epoch: int) -> LearningRateFn:
    """``step -> learning rate`` before the plateau scale.

    ``exponential`` multiplies by ``decay_rate`` once every ``decay_every_epochs``
    epochs (the DPRNN paper's 0.98 every two epochs), in whole steps; ``cosine`` warms
    up linearly over ``warmup_steps``, holds the base rate, and over the last
    ``decay_steps`` (0: every step after the warm-up) follows a half cosine down to
    ``final_lr_scale`` times the base rate at ``num_steps`` (for runs with a fixed
    budget, such as the demo); ``constant`` and ``plateau`` return the base rate
    (plateau halving is the host-side scale).

    Args:
      config: the train section.
      steps_per_epoch: optimizer steps in one epoch (positive).
    """
    base = config.learning_rate
    if config.schedule == "cosine":
        warmup_steps = config.warmup_steps
        decay_steps = config.decay_steps or config.num_steps - warmup_steps
        if warmup_steps + decay_steps > config.num_steps:
            # A run shortened with --set train.num_steps=N keeps the shape of its schedule.
            scale = config.num_steps / (warmup_steps + decay_steps)
            warmup_steps = int(warmup_steps * scale)
            decay_steps = config.num_steps - warmup_steps
        hold_until = config.num_steps - decay_steps
        warmup = optax.linear_schedule(0.0, base, max(warmup_steps, 1))
        decay = optax.cosine_decay_schedule(base, max(decay_steps, 1), config.final_lr_scale)
        return optax.join_schedules([warmup, optax.constant_schedule(base), decay],
                                    [warmup_steps, hold_until])
    if config.schedule != "exponential":
        return lambda step: jnp.asarray(base, jnp.float32)
    if steps_per_epoch <= 0:
        raise ValueError(f"steps_per_epoch must be positive, got {steps_per_epoch}")
    return optax.exponential_decay(
        init_value=base, transition_steps=config.decay_every_epochs * steps_per_epoch,
        decay_rate=config.decay_rate, staircase=True)


@dataclasses.dataclass
class PlateauSchedule:
    """Host-side learning-rate scale and early stopping, driven by validation SI-SNRi.

    With ``schedule: plateau`` the scale is multiplied by ``plateau_factor`` after
    ``plateau_patience`` validations without improvement (asteroid's halving on a
    plateau). With ``early_stop_patience > 0`` training stops after that many
    validations without improvement, whatever the schedule.

    Attributes:
      scale: multiplies the learning rate.
      best: best validation SI-SNRi so far (dB; -inf before the first).
      since_best: validations since ``best`` improved.
      since_reduction: validations without improvement since the last reduction.
    """

    scale: float = 1.0
    best: float = -math.inf
    since_best: int = 0
    since_reduction: int = 0

    def update(self, config: TrainConfig, value: float) -> None:
        """Takes one validation result (higher is better)."""
        if value > self.best:
            self.best, self.since_best, self.since_reduction = value, 0, 0
            return
        self.since_best += 1
        self.since_reduction += 1
        if config.schedule == "plateau" and self.since_reduction >= config.plateau_patience:
            self.scale *= config.plateau_factor
            self.since_reduction = 0

    def should_stop(self, config: TrainConfig) -> bool:
        """Whether early stopping is due."""
        return 0 < config.early_stop_patience <= self.since_best

    def state_dict(self) -> dict[str, Any]:
        """Checkpointable form (plain numbers)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_state_dict(cls, state: Optional[dict[str, Any]]) -> "PlateauSchedule":
        """Inverse of :meth:`state_dict`; ``None`` gives a fresh schedule."""
        if not state:
            return cls()
        return cls(scale=float(state["scale"]), best=float(state["best"]),
                   since_best=int(state["since_best"]),
                   since_reduction=int(state["since_reduction"]))
