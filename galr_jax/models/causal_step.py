"""The causal GALR, one segment at a time: the per-segment step of a stream.

A causal model (``model.causal``) computes segment s from segments s' <= s alone, so a
stream can run it segment by segment. Each step takes the next segment hop of waveform
(K/2 encoder hops, ``K * L / 4`` samples) and returns the same number of separated
samples, those that every segment covering them has now contributed to. The step applies
the offline model's own modules (encoder, bottleneck, locally recurrent layers, the
attentive layers' maps and norms, mask head, decoder) to the parameters of a
:class:`galr_jax.models.SeparationModel`; only the attention reads its projections
directly, to attend from the one new segment to the keys and values kept from earlier
ones. ``tests/test_streaming.py`` checks that a stream equals the offline causal model.

Coordinates: the offline model pads the waveform with L/2 zeros on the left and the
encoded frames with K/2 zero frames (spec sec. 1); step s consumes padded samples up to
``(s + 1) * hop + L/2`` and emits padded samples ``[(s - 1) * hop, s * hop)``, where
``hop = K * L / 4``. The first ``hop + L/2`` emitted samples precede the signal.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from galr_jax.config import ModelConfig
from galr_jax.kernels.attention import dot_product_attention
from galr_jax.kernels.dense import add_bias
from galr_jax.models.dense import Dense
from galr_jax.models.filterbank import Decoder, Encoder
from galr_jax.models.galr import LocallyRecurrent, SegmentLengthMap, sinusoidal_positions
from galr_jax.models.mask_head import MaskHead
from galr_jax.models.norms import LayerNorm


@dataclasses.dataclass(frozen=True)
class StreamGeometry:
    """Sizes of a stream through a causal model (samples at the model's rate).

    Attributes:
      window: L.
      segment_length: K.
      hop: samples per step, K/2 encoder hops of L/2.
      lead: emitted samples before the signal's first one (one hop, then the L/2 of the
        waveform's left padding).
      latency: the most samples any output sample waits for: sample t is emitted with
        the step that consumes samples up to the end of the hop after the one holding
        t + L/2, i.e. up to 2 hops + L/2 - 1 samples after t = (K + 1) L/2 - 1.
    """

    window: int
    segment_length: int

    @property
    def hop(self) -> int:
        return self.segment_length * self.window // 4

    @property
    def lead(self) -> int:
        return self.hop + self.window // 2

    @property
    def latency(self) -> int:
        return 2 * self.hop + self.window // 2 - 1

    @classmethod
    def of(cls, model: ModelConfig) -> "StreamGeometry":
        return cls(model.window, model.segment_length)

    def steps_for(self, num_samples: int) -> int:
        """Steps after which the first ``num_samples`` output samples are all emitted."""
        return -(-(num_samples + self.lead) // self.hop)


def memory_segments(model: ModelConfig, max_segments: int) -> int:
    """Past segments whose keys and values a step keeps: W - 1, or for a model that
    attends to all past segments (W = 0), ``max_segments - 1``."""
    if model.attention_window:
        return model.attention_window - 1
    return max_segments - 1


def initial_state(model: ModelConfig, memory: int, batch: int = 1) -> dict:
    """The state before the first sample: zeros, as the offline model's left padding.

    Returns:
      ``samples`` ``[B, L/2]`` the last half window of padded input; ``encoded``
      ``[B, K/2, N]`` the newest half segment of encoder frames; ``blocks_out``
      ``[B, 1, K, D]`` the previous segment's separator output; ``masked`` ``[B, C, 1, N]``
      the last finished masked encoder frame; ``keys`` and ``values`` (one per block)
      ``[B, Q, heads, memory, D/heads]`` of the past segments' attention tokens, with
      ``memory_valid`` bool ``[memory]``; ``segment`` the next segment's index.
    """
    c = model
    tokens = c.low_dim or c.segment_length
    memory_shape = (batch, tokens, c.num_heads, memory, c.features // c.num_heads)
    zeros = lambda *shape: jnp.zeros(shape, jnp.float32)  # noqa: E731
    return {
        "samples": zeros(batch, c.window // 2),
        "encoded": zeros(batch, c.segment_length // 2, c.num_filters),
        "blocks_out": zeros(batch, 1, c.segment_length, c.features),
        "masked": zeros(batch, c.num_sources, 1, c.num_filters),
        "keys": [zeros(*memory_shape) for _ in range(c.num_blocks)],
        "values": [zeros(*memory_shape) for _ in range(c.num_blocks)],
        "memory_valid": jnp.zeros((memory,), bool),
        "segment": jnp.zeros((), jnp.int32),
    }


def position_of(model: ModelConfig, segment: int):
    """The positional encoding of one segment, computed as the offline model's table."""
    return sinusoidal_positions(1, model.features, first=segment)[0]


def _projection(x, params, dtype):
    """``x [..., D]`` -> ``[..., heads, depth]`` with a ``query``/``key``/``value`` kernel."""
    y = jnp.einsum("...d,dhe->...he", x.astype(dtype), params["kernel"].astype(dtype))
    return add_bias(y, params["bias"], (-2, -1))


def attend_with_memory(params, tokens, keys, values, memory_valid, dtype):
    """The multi-head self-attention of one new segment's tokens over the kept ones.

    Computes for the newest segment what :class:`MultiHeadSelfAttention` with a causal
    mask computes for it over the whole signal: its query against its own and the kept
    segments' keys (softmax over the segments, the order of the keys irrelevant).

    Args:
      params: the ``attention`` parameters (``query``, ``key``, ``value``, ``out``).
      tokens: ``[B, Q, D]``, the new segment's tokens (after the input norm and position).
      keys, values: ``[B, Q, heads, M, depth]`` of the kept segments.
      memory_valid: bool ``[M]``, which kept slots hold a segment.

    Returns:
      ``(attended [B, Q, D], key [B, Q, heads, depth], value [B, Q, heads, depth])``.
    """
    query, key, value = (_projection(tokens, params[name], dtype)
                         for name in ("query", "key", "value"))
    all_keys = jnp.concatenate([keys.astype(dtype), key[..., None, :]], axis=-2)
    all_values = jnp.concatenate([values.astype(dtype), value[..., None, :]], axis=-2)
    valid = jnp.concatenate([memory_valid, jnp.ones((1,), bool)])
    attended = dot_product_attention(query[..., None, :], all_keys, all_values,
                                     key_valid=valid)[..., 0, :]  # [B, Q, heads, depth]
    out = jnp.einsum("...he,hed->...d", attended, params["out"]["kernel"].astype(dtype))
    return add_bias(out, params["out"]["bias"], (-1,)), key, value


def _globally_attentive(params, c: ModelConfig, x, keys, values, memory_valid, position,
                        dtype):
    """:class:`galr_jax.models.galr.GloballyAttentive` (causal, inference) for the newest
    segment ``x [B, 1, K, D]``, step by step as there."""
    length = x.shape[2]
    y = x
    if c.low_dim is not None:
        y = SegmentLengthMap(c.low_dim, dtype).apply({"params": params["to_low_dim"]}, y)
    tokens = y[:, 0]  # [B, Q, D]: one token per (batch, q) for this segment
    tokens = LayerNorm(c.norm_eps, dtype).apply({"params": params["norm_in"]}, tokens)
    tokens = tokens + position.astype(tokens.dtype)
    attended, key, value = attend_with_memory(params["attention"], tokens, keys, values,
                                              memory_valid, dtype)
    residual = tokens if c.attention_residual else attended
    tokens = LayerNorm(c.norm_eps, dtype).apply({"params": params["norm_out"]},
                                                residual + attended)
    y = tokens[:, None]  # [B, 1, Q, D]
    if c.low_dim is not None:
        y = SegmentLengthMap(length, dtype).apply({"params": params["from_low_dim"]}, y)
    return x + LayerNorm(c.norm_eps).apply({"params": params["norm"]}, y), key, value


def segment_step(params: Any, model: ModelConfig, state: dict, samples: jnp.ndarray,
                 position: jnp.ndarray, dtype: Any = jnp.float32, unroll: int = 1
                 ) -> tuple[dict, jnp.ndarray]:
    """Runs the causal model over one more segment.

    Args:
      params: the ``params`` of a causal :class:`galr_jax.models.SeparationModel`.
      model: its config (``causal`` true, GALR).
      state: as returned by :func:`initial_state` or the previous step.
      samples: ``[B, hop]`` float32, the next waveform samples.
      position: ``[D]`` float32, :func:`position_of` the state's ``segment``.

    Returns:
      ``(state, separated [B, C, hop])``: the next state, and the padded-coordinate samples
      ``[(s - 1) hop, s hop)`` of every source for this step's segment s.
    """
    c = model
    half_window, half_segment = c.window // 2, c.segment_length // 2
    # Encoder frames that start at the kept half window: the encoder pads its input with
    # L/2 zeros on the left, so its frame j is our frame j - 1.
    waveform = jnp.concatenate([state["samples"], samples], axis=1)  # [B, L/2 + hop]
    encoded = Encoder(c.num_filters, c.window, dtype).apply(
        {"params": params["encoder"]}, waveform)[:, 1:half_segment + 1]  # [B, K/2, N]
    segment_frames = jnp.concatenate([state["encoded"], encoded], axis=1)  # [B, K, N]
    x = Dense(c.features, use_bias=False, dtype=dtype).apply(
        {"params": params["bottleneck"]}, segment_frames)[:, None]  # [B, 1, K, D]
    position = jnp.asarray(position)
    slot = state["segment"] % max(state["memory_valid"].shape[0], 1)
    keys, values = [], []
    for index in range(c.num_blocks):
        block = params[f"blocks_{index}"]
        x = LocallyRecurrent(c.hidden, c.norm_eps, True, unroll, dtype, causal=True).apply(
            {"params": block["locally_recurrent"]}, x)
        x, key, value = _globally_attentive(
            block["globally_attentive"], c, x, state["keys"][index], state["values"][index],
            state["memory_valid"], position, dtype)
        keys.append(_kept(state["keys"][index], key, slot))
        values.append(_kept(state["values"][index], value, slot))
    # The previous and this segment overlap-added give the K/2 frames both cover: the
    # mask head's own overlap-add over two segments, cut to those frames.
    masks = MaskHead(c.num_sources, c.num_filters, c.mask_nonlinearity, dtype).apply(
        {"params": params["mask_head"]}, jnp.concatenate([state["blocks_out"], x], axis=1),
        half_segment)  # [B, C, K/2, N]
    masked = state["encoded"][:, None] * masks
    # With the last finished frame before them, the decoder's overlap-add of these
    # frames is final for the K/2 hops they start.
    separated = Decoder(c.window, dtype).apply(
        {"params": params["decoder"]}, jnp.concatenate([state["masked"], masked], axis=2),
        half_segment * half_window)
    memory_valid = state["memory_valid"]
    if memory_valid.shape[0]:
        memory_valid = memory_valid.at[slot].set(True)
    new_state = {"samples": samples[:, samples.shape[1] - half_window:], "encoded": encoded,
                 "blocks_out": x, "masked": masked[:, :, -1:], "keys": keys, "values": values,
                 "memory_valid": memory_valid, "segment": state["segment"] + 1}
    return new_state, separated.astype(jnp.float32)


def _kept(memory, new, slot):
    """``memory [B, Q, heads, M, depth]`` with the newest segment's ``[B, Q, heads, depth]``
    in ring slot ``slot`` (the oldest kept segment's); unchanged when M = 0."""
    if memory.shape[-2] == 0:
        return memory
    return jax.lax.dynamic_update_slice_in_dim(memory, new[..., None, :].astype(memory.dtype),
                                               slot, axis=-2)
