"""``StreamingSeparator``: live separation with a causal model, chunk by chunk.

Example::

    from galr_jax.inference.streaming import StreamingSeparator
    stream = StreamingSeparator.from_checkpoint("runs/demo_causal")
    for chunk in microphone_chunks():          # any sizes, 1-D float32 at 8 kHz
        play(stream.push(chunk))               # [C, n]: the samples final so far
    play(stream.flush())                       # the rest, once the stream ends

The whole stream is one run of the causal model (``model.causal``, docs/streaming.md):
the concatenated outputs equal the offline model's output on the whole signal
(``tests/test_streaming.py``), so the speakers keep their order over the stream. Samples
come out ``latency_samples`` (at most) after they go in, plus the compute time of one
segment. Between calls the separator keeps only what later segments need
(:func:`galr_jax.models.causal_step.initial_state`): the attention's keys and values of
past segments, bounded by ``model.attention_window`` (for a model that attends to all
past segments, by ``max_seconds``), half a segment of encoder frames, the previous
segment's output and half an encoder window of input and output.

Outputs are the model's own, at its level: the offline separator's rescaling to the
mixture (:mod:`galr_jax.inference.level`) needs the whole signal.
"""

from __future__ import annotations

import functools
import time
from typing import Any, Optional, Union

import jax
import jax.numpy as jnp
import numpy as np

from galr_jax.config import Config, ModelConfig
from galr_jax.models.causal_step import (StreamGeometry, initial_state, memory_segments,
                                         position_of, segment_step)
from galr_jax.models.separation import COMPUTE_DTYPES
from galr_jax.training.checkpoints import restore_variables

# A model that attends to all past segments keeps keys and values for this long a stream
# unless told otherwise (galr_1.5m: 60 s are 600 segments, 59 MB of keys and values).
DEFAULT_MAX_SECONDS = 60.0


class StreamingSeparator:
    """Separates a stream pushed in chunks of any size; see the module docstring.

    Args:
      config: the run config (or its ``model`` section) of a causal GALR.
      variables: Flax variables ``{'params': ...}`` matching it.
      max_seconds: for a model with ``attention_window: 0``, the longest stream (its keys
        and values are kept in a buffer of that many segments); ignored otherwise.
      compute_dtype: ``float32`` (default: the config's runtime's) or ``bfloat16``.

    Attributes:
      sample_rate, num_sources: the model's.
      hop_samples: samples per segment step (K L / 4).
      latency_samples, latency_seconds: the algorithmic latency, (K + 1) L/2 - 1 samples.
      step_seconds: wall time of each segment step so far (compute, after compilation).
    """

    def __init__(self, config: Union[Config, ModelConfig], variables: Any, *,
                 max_seconds: Optional[float] = None, compute_dtype: Optional[str] = None):
        model = config.model if isinstance(config, Config) else config
        if not model.causal:
            raise ValueError("StreamingSeparator needs a causal model (model.causal: true); "
                             "this one attends to future segments")
        if compute_dtype is None:
            compute_dtype = config.runtime.compute_dtype if isinstance(config, Config) else "float32"
        self.model = model
        self.sample_rate = model.sample_rate
        self.num_sources = model.num_sources
        self.geometry = StreamGeometry.of(model)
        self.hop_samples = self.geometry.hop
        self.latency_samples = self.geometry.latency
        self.latency_seconds = self.latency_samples / self.sample_rate
        seconds = DEFAULT_MAX_SECONDS if max_seconds is None else max_seconds
        self.max_segments = None if model.attention_window else (
            self.geometry.steps_for(round(seconds * self.sample_rate)) + 1)
        self._memory = memory_segments(model, self.max_segments or 0)
        self._params = variables["params"]
        self._step = jax.jit(functools.partial(segment_step, model=model,
                                               dtype=COMPUTE_DTYPES[compute_dtype]),
                             donate_argnames="state")
        self.reset()

    @classmethod
    def from_checkpoint(cls, path, which: Union[str, int] = "best",
                        **options: Any) -> "StreamingSeparator":
        """Loads a causal model's weights and config from a workdir or checkpoint directory."""
        variables, meta = restore_variables(path, which=which)
        separator = cls(meta["config"], variables, **options)
        separator.meta = meta
        return separator

    @classmethod
    def from_pretrained(cls, name: str, root=None, **options: Any) -> "StreamingSeparator":
        """A released causal model by name (``galr-separate --list-models``)."""
        from galr_jax import pretrained

        released = pretrained.load(name, root)
        return cls(released.config, released.variables, **options)

    def warm_up(self) -> float:
        """Compiles the segment step now, so that no step of a stream waits for it;
        returns the seconds it took."""
        start = time.perf_counter()
        state = initial_state(self.model, self._memory)
        jax.block_until_ready(self._step(self._params, state=state,
                                         samples=jnp.zeros((1, self.hop_samples), jnp.float32),
                                         position=position_of(self.model, 0)))
        return time.perf_counter() - start

    def reset(self) -> None:
        """Starts a new stream."""
        self._state = initial_state(self.model, self._memory)
        self._segment = 0
        self._pending = np.zeros((0,), np.float32)
        self._received = 0  # samples pushed
        self._emitted = 0  # samples of the step outputs so far, the lead included
        self.step_seconds: list[float] = []

    @property
    def compilations(self) -> int:
        """Times the segment step has been compiled (one per shape; 1 for a whole stream)."""
        return self._step._cache_size()

    @property
    def state_bytes(self) -> int:
        """Bytes of the state carried between segments."""
        return sum(x.nbytes for x in jax.tree_util.tree_leaves(self._state))

    def push(self, samples) -> np.ndarray:
        """Adds samples to the stream.

        Args:
          samples: 1-D, any length (0 included), at ``sample_rate``.

        Returns:
          ``[C, n]`` float32: every output sample that became final, in order after those
          returned before.
        """
        samples = np.asarray(samples, np.float32)
        if samples.ndim != 1:
            raise ValueError(f"push expects 1-D samples, got shape {samples.shape}")
        if not np.all(np.isfinite(samples)):
            raise ValueError("push: samples hold NaN or Inf")
        self._pending = np.concatenate([self._pending, samples])
        self._received += samples.shape[0]
        start, outputs = self._emitted, []
        while self._pending.shape[0] >= self.hop_samples:
            outputs.append(self._run(self._pending[:self.hop_samples]))
            self._pending = self._pending[self.hop_samples:]
        return self._final(outputs, start, self._received)

    def flush(self) -> np.ndarray:
        """Ends the stream: returns ``[C, n]``, the output samples not returned yet (the
        stream's total output then equals its input in length), and starts a new stream."""
        total = self._received
        start, outputs = self._emitted, []
        while self._emitted < self.geometry.lead + total:
            missing = self.hop_samples - self._pending.shape[0]
            # The offline model pads the signal's end with zeros too.
            outputs.append(self._run(np.concatenate([self._pending, np.zeros(missing, np.float32)])))
            self._pending = np.zeros((0,), np.float32)
        rest = self._final(outputs, start, total)
        self.reset()
        return rest

    def _run(self, hop: np.ndarray) -> np.ndarray:
        if self.max_segments is not None and self._segment >= self.max_segments:
            raise ValueError(f"the stream is longer than max_seconds allows ({self.max_segments} "
                             f"segments); raise max_seconds or use a model with "
                             f"model.attention_window set")
        position = position_of(self.model, self._segment)
        start = time.perf_counter()
        self._state, separated = self._step(self._params, state=self._state,
                                            samples=jnp.asarray(hop[None]), position=position)
        separated = np.asarray(separated[0])
        self.step_seconds.append(time.perf_counter() - start)
        self._segment += 1
        self._emitted += separated.shape[1]
        return separated

    def _final(self, outputs: list, start: int, limit: int) -> np.ndarray:
        """The samples of ``outputs`` (step outputs from emitted sample ``start`` on) that
        belong to the signal: past the lead and before ``limit`` (the signal's length, as
        far as it is known)."""
        if not outputs:
            return np.zeros((self.num_sources, 0), np.float32)
        block = np.concatenate(outputs, axis=1)
        lead = self.geometry.lead
        first, last = max(lead - start, 0), min(limit + lead - start, block.shape[1])
        return block[:, first:max(first, last)]
