"""The JAX side of a benchmark case: compiled forward and train step of one model."""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from galr_jax.models import build_model
from galr_jax.training import losses
from galr_jax.config import Config
from galr_jax.models.segmentation import num_frames

import measure
import opcount

_INIT_SAMPLES = 1000  # parameter shapes do not depend on the length: init on a short input


def _peak_bytes(compiled) -> int:
    """Peak of a compiled executable from XLA's memory analysis.

    Arguments + outputs + temporaries, minus outputs that alias (donated) arguments:
    everything the executable holds at once. Generated code is not counted.
    """
    stats = compiled.memory_analysis()
    return int(stats.argument_size_in_bytes + stats.output_size_in_bytes
               + stats.temp_size_in_bytes - stats.alias_size_in_bytes)


def _nbytes(tree: Any) -> int:
    return int(sum(np.asarray(leaf).nbytes for leaf in jax.tree_util.tree_leaves(tree)))


def _loop_unrolled(config: Config, num_samples: int) -> Config:
    """``config`` with every LSTM loop (K steps, or S steps in DPRNN) fully unrolled."""
    m = config.model
    segments = num_frames(num_frames(num_samples, m.window), m.segment_length)
    return dataclasses.replace(config, runtime=dataclasses.replace(
        config.runtime, lstm_unroll=max(m.segment_length, segments)))


class JaxCase:
    """GALR or DPRNN in JAX: a jitted forward and a jitted, donated train step.

    The train step is forward (dropout on) + mean PIT negative SI-SNR + backward +
    global-norm clipping + Adam, as in the published recipes.

    Args:
      config: the run config (its model and runtime sections are used).
      mixture: ``[B, T]`` float32.
      sources: ``[B, C, T]`` float32.
      learning_rate, clip_norm: Adam step size and clipping norm.
    """

    framework = "jax"

    def __init__(self, config: Config, mixture: np.ndarray, sources: np.ndarray,
                 learning_rate: float, clip_norm: float):
        self.config = config
        self.mixture = jnp.asarray(mixture)
        self.sources = jnp.asarray(sources)
        self.model = build_model(config)
        init_key, self.dropout_key = jax.random.split(jax.random.PRNGKey(0))
        self.params = self.model.init(init_key, self.mixture[:, :_INIT_SAMPLES])["params"]
        self.optimizer = optax.chain(optax.clip_by_global_norm(clip_norm),
                                     optax.adam(learning_rate))
        self.opt_state = self.optimizer.init(self.params)

        start = time.perf_counter()
        self._forward = jax.jit(self.forward_fn(self.model)).lower(
            self.params, self.mixture).compile()
        self.fwd_compile_s = time.perf_counter() - start
        start = time.perf_counter()
        self._step = jax.jit(self.step_fn(self.model), donate_argnums=(0, 1)).lower(
            *self._step_args()).compile()
        self.compile_s = time.perf_counter() - start

    @staticmethod
    def forward_fn(model):
        def forward(params, mixture):
            return model.apply({"params": params}, mixture)
        return forward

    def loss_fn(self, model):
        def loss(params, mixture, sources, key):
            estimates = model.apply({"params": params}, mixture, train=True,
                                    rngs={"dropout": key})
            return jnp.mean(losses.pit_neg_si_snr(estimates, sources)[0])
        return loss

    def step_fn(self, model):
        loss_fn, optimizer = self.loss_fn(model), self.optimizer

        def step(params, opt_state, mixture, sources, key):
            loss, grads = jax.value_and_grad(loss_fn)(params, mixture, sources, key)
            updates, opt_state = optimizer.update(grads, opt_state, params)
            return optax.apply_updates(params, updates), opt_state, loss
        return step

    def _step_args(self):
        return self.params, self.opt_state, self.mixture, self.sources, self.dropout_key

    def run_forward(self) -> None:
        self._forward(self.params, self.mixture).block_until_ready()

    def run_step(self) -> None:
        self.params, self.opt_state, loss = self._step(*self._step_args())
        loss.block_until_ready()

    def static_stats(self) -> dict:
        """Parameter count, operation counts and XLA's peak-memory estimates."""
        unrolled = build_model(_loop_unrolled(self.config, self.mixture.shape[1]))
        fwd_args = (self.params, self.mixture)
        step_args = self._step_args()
        grad_args = (self.params, self.mixture, self.sources, self.dropout_key)
        return {
            "params": int(sum(leaf.size for leaf in jax.tree_util.tree_leaves(self.params))),
            "fwd_flops": opcount.xla_flops(self.forward_fn(unrolled), *fwd_args),
            "step_flops": opcount.xla_flops(self.step_fn(unrolled), *step_args),
            "fwd_matmul_flops": opcount.matmul_flops(self.forward_fn(self.model), *fwd_args),
            "step_matmul_flops": opcount.matmul_flops(
                jax.value_and_grad(self.loss_fn(self.model)), *grad_args),
            "fwd_peak_bytes": _peak_bytes(self._forward),
            "step_peak_bytes": _peak_bytes(self._step),
        }

    def device_stats(self) -> dict:
        """Nothing beyond ``static_stats``: XLA's memory analysis is the compiled calls'
        peak on every backend, and JAX cannot reset a device's recorded peak between
        cases."""
        return {}

    def rss_stats(self) -> dict:
        """Peak resident memory of one call, measured like PyTorch's (see ``measure``)."""
        state = _nbytes((self.params, self.mixture))
        fwd = measure.peak_rss_growth(self.run_forward)
        step_state = _nbytes(self._step_args())
        step = measure.peak_rss_growth(self.run_step)
        return {
            "fwd_rss_peak_bytes": None if fwd is None else fwd + state,
            "step_rss_peak_bytes": None if step is None else step + step_state,
        }
