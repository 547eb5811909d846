"""The per-device train step, written once for every parallel backend.

:func:`train_step` sees this device's rows of the global batch and the replicated
state. It is compiled by :mod:`galr_jax.training.parallel` either with ``jax.pmap``
or with ``jax.jit`` + ``jax.shard_map`` on a ``Mesh``; both name the device axis
``DATA_AXIS``.

Gradient averaging. Under ``shard_map`` (with its default ``check_vma``) the
parameters enter as *device-invariant* values, and the transpose of their implicit
broadcast to the per-device computation is a sum over devices: ``jax.grad`` would
return the sum of the per-device gradients, and a ``pmean`` on top would be wrong by
the device count. The step therefore marks the parameters as device-varying with
``lax.pcast`` before differentiating, so ``jax.grad`` returns this device's own
gradient under either backend, and exactly one ``pmean`` averages them.
``tests/test_train_parallel.py`` checks the result against a single device.

Dropout: every device draws with the same step key and passes the global index of
its first row, and the masks are functions of (key, global row)
(:func:`galr_jax.models.dropout.keep_mask`), so one global batch gives the same update
on any number of devices or hosts, with every row in one call of the model.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Optional, Union

import jax
import jax.numpy as jnp
import optax
from jax import lax

from galr_jax import losses
from galr_jax.models import SeparationModel
from galr_jax.models.dropout import DROPOUT
from galr_jax.training.optim import LearningRateFn
from galr_jax.training.state import TrainState

DATA_AXIS = "data"

Batch = Mapping[str, jax.Array]
StepFn = Callable[[TrainState, Batch, jax.Array], tuple[TrainState, dict[str, jax.Array]]]


def batch_loss(model: SeparationModel, params: Any, batch: Batch, key: Optional[jax.Array],
               first_row: Union[int, jax.Array] = 0) -> jax.Array:
    """Mean PIT negative SI-SNR of this device's rows.

    Args:
      model: the separation model.
      params: its ``params`` collection.
      batch: ``mixture [b, T]``, ``sources [b, C, T]`` and optionally ``lengths [b]``
        (valid samples of rows padded to T: the model and the loss ignore the padding).
      key: the step's dropout key, the same on every device; unused (may be None)
        when the model has no dropout.
      first_row: global index of this device's first row.

    Returns:
      Scalar float32 loss in dB (lower is better).
    """
    # One call on all rows, never a per-example vmap: vmap would put its batch axis in
    # front of every scan's stacked outputs, which XLA then transposes (demo config on
    # two CPU devices: 2.8 steps/s under vmap, 3.2 without).
    rngs = {DROPOUT: key} if model.uses_dropout else {}
    lengths = batch.get("lengths")
    estimates = model.apply({"params": params}, batch["mixture"], train=True,
                            first_row=first_row, lengths=lengths, rngs=rngs)
    loss, _ = losses.pit_neg_si_snr(estimates, batch["sources"], lengths)
    return jnp.mean(loss)


def train_step(state: TrainState, batch: Batch, lr_scale: jax.Array, *,
               model: SeparationModel, optimizer: optax.GradientTransformation,
               learning_rate_fn: LearningRateFn) -> tuple[TrainState, dict[str, jax.Array]]:
    """One optimizer step on this device's rows; call it under a ``DATA_AXIS`` mapping.

    A non-finite loss or gradient norm (after averaging, so every device agrees)
    leaves the parameters and optimizer state unchanged and counts the step as
    skipped; the step counter advances either way, so the data moves on.

    Args:
      state: replicated train state.
      batch: this device's rows, see :func:`batch_loss`.
      lr_scale: float32 scalar multiplying the scheduled learning rate (plateau scale).
      model, optimizer, learning_rate_fn: static parts, bound with ``functools.partial``.

    Returns:
      The new state and replicated float32/int32 scalars: ``loss``, ``grad_norm``,
      ``learning_rate``, ``skipped`` (0/1), ``skipped_steps``, ``consecutive_skips``.
    """
    first_row = lax.axis_index(DATA_AXIS) * batch["mixture"].shape[0]
    key = jax.random.fold_in(state.rng, state.step)
    params = lax.pcast(state.params, DATA_AXIS, to="varying")
    loss, grads = jax.value_and_grad(
        lambda p: batch_loss(model, p, batch, key, first_row))(params)
    loss, grads = lax.pmean((loss, grads), DATA_AXIS)
    grad_norm = optax.tree.norm(grads)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)

    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    learning_rate = learning_rate_fn(state.step) * lr_scale
    updated = optax.apply_updates(state.params, jax.tree.map(lambda u: -learning_rate * u, updates))

    def keep_if_finite(new, old):
        return jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)

    skipped = (~finite).astype(jnp.int32)
    new_state = state.replace(
        step=state.step + 1,
        params=keep_if_finite(updated, state.params),
        opt_state=keep_if_finite(opt_state, state.opt_state),
        skipped_steps=state.skipped_steps + skipped,
        consecutive_skips=jnp.where(finite, 0, state.consecutive_skips + 1),
    )
    metrics = {
        "loss": loss,
        "grad_norm": grad_norm,
        "learning_rate": jnp.asarray(learning_rate, jnp.float32),
        "skipped": skipped,
        "skipped_steps": new_state.skipped_steps,
        "consecutive_skips": new_state.consecutive_skips,
    }
    return new_state, metrics
