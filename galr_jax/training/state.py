"""What a training run carries from step to step, on the devices and on the host."""

from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax

from galr_jax.models import SeparationModel

# Samples of the dummy mixture used to create the parameters; any length works
# because no parameter depends on it.
_INIT_SAMPLES = 256


@flax.struct.dataclass
class TrainState:
    """Device-side state, replicated over the data-parallel devices.

    Attributes:
      step: int32 scalar, batches consumed so far (skipped updates included); it also
        fixes the data position and the dropout keys of the next step.
      params: the model's ``params`` collection (float32).
      opt_state: Optax state of :func:`optim.make_optimizer`.
      rng: uint32 key data of the run's base key; each step folds in its step number,
        so the key never needs to advance and a restart reproduces it exactly.
      skipped_steps: int32 scalar, updates skipped because of a non-finite loss or
        gradient, over the whole run.
      consecutive_skips: int32 scalar, skipped updates since the last applied one.
    """

    step: jax.Array
    params: Any
    opt_state: Any
    rng: jax.Array
    skipped_steps: jax.Array
    consecutive_skips: jax.Array


def create_train_state(model: SeparationModel, optimizer: optax.GradientTransformation,
                       seed: int) -> TrainState:
    """Fresh parameters and optimizer state from ``seed`` (host arrays, step 0)."""
    init_key, run_key = jax.random.split(jax.random.PRNGKey(seed))
    variables = jax.jit(model.init)(init_key, jnp.zeros((1, _INIT_SAMPLES), jnp.float32))
    params = variables["params"]
    zero = jnp.zeros((), jnp.int32)
    return TrainState(step=zero, params=params, opt_state=optimizer.init(params),
                      rng=run_key, skipped_steps=zero, consecutive_skips=zero)


def abstract_train_state(model: SeparationModel,
                         optimizer: optax.GradientTransformation) -> TrainState:
    """Shapes and dtypes of :func:`create_train_state`, computed without allocating."""
    return jax.eval_shape(lambda: create_train_state(model, optimizer, 0))
