"""The whole TasNet: encoder -> separator (GALR or DPRNN blocks) -> mask head -> decoder."""

from __future__ import annotations

import dataclasses
from typing import Optional

import flax.linen as nn
import jax.numpy as jnp

from galr_jax.config import Config, ModelConfig, RuntimeConfig
from galr_jax.kernels import resolve as resolve_kernels
from galr_jax.models.dense import Dense
from galr_jax.models.dprnn import DPRNNBlock
from galr_jax.models.dropout import DROPOUT
from galr_jax.models.filterbank import Decoder, Encoder
from galr_jax.models.galr import GALRBlock
from galr_jax.models.mask_head import MaskHead
from galr_jax.models.norms import GlobalLayerNorm
from galr_jax.models.remat import apply_rematerialised
from galr_jax.models.segmentation import num_frames, segment

COMPUTE_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


class SeparationModel(nn.Module):
    """GALR (or the DPRNN baseline) for time-domain separation of C sources.

    Attributes:
      config: the model section of the run config (the architecture).
      runtime: how it is computed (dtype, recomputation, unrolling, kernels).

    Shape:
      ``[batch, time]`` float32 -> ``[batch, C, time]`` float32, for any ``time >= 1``.
      ``lengths`` (optional): int ``[batch]``, each row's valid samples in a padded batch.
      Every output sample of a row then equals what the model computes on that row alone
      at its own length, and samples past it are zero (spec, "Batches with padding").

    Example:
      >>> model = build_model(load_config("configs/galr_1.5m.yaml"))
      >>> variables = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 8000)))
      >>> estimates = model.apply(variables, mixture)             # inference
      >>> estimates = model.apply(variables, mixture, train=True,
      ...                         rngs={"dropout": key})           # training (dropout on)
      >>> estimates = model.apply(variables, padded, lengths=lengths)  # a padded batch

    Dropout masks are drawn from the ``dropout`` key for the whole call; the training
    step calls the model once per example with a key of that example's own
    (:func:`galr_jax.training.step.batch_loss`).
    """

    config: ModelConfig
    runtime: RuntimeConfig = RuntimeConfig()

    @property
    def uses_dropout(self) -> bool:
        """Whether ``train=True`` draws random numbers (and so needs a ``dropout`` rng)."""
        return self.config.separator == "galr" and self.config.attention_dropout > 0

    @property
    def kernels(self) -> str:
        """``reference`` or ``tuned``: ``runtime.kernels`` with ``auto`` decided."""
        return resolve_kernels(self.runtime.kernels)

    def _block(self, index: int) -> nn.Module:
        c, r = self.config, self.runtime
        dtype = COMPUTE_DTYPES[r.compute_dtype]
        if c.separator == "galr":
            return GALRBlock(c.hidden, c.num_heads, c.low_dim, c.attention_dropout,
                             c.attention_residual, c.norm_eps, r.lstm_unroll, dtype,
                             recompute_attention=r.recompute_attention and not r.remat,
                             kernels=self.kernels, causal=c.causal,
                             attention_window=c.attention_window, name=f"blocks_{index}")
        return DPRNNBlock(c.hidden, c.norm_eps, r.lstm_unroll, dtype, kernels=self.kernels,
                          name=f"blocks_{index}")

    @nn.compact
    def __call__(self, mixture: jnp.ndarray, train: bool = False,
                 *, lengths: Optional[jnp.ndarray] = None) -> jnp.ndarray:
        if mixture.ndim != 2:
            raise ValueError(f"mixture must be [batch, time], got shape {mixture.shape}")
        if mixture.shape[1] < 1:
            raise ValueError("mixture has no samples")
        if lengths is not None and jnp.shape(lengths) != mixture.shape[:1]:
            raise ValueError(f"lengths must be [batch] = [{mixture.shape[0]}], got shape "
                             f"{jnp.shape(lengths)}")
        c = self.config
        dtype = COMPUTE_DTYPES[self.runtime.compute_dtype]
        length = mixture.shape[1]
        valid = None if lengths is None else PaddingMasks.of(
            jnp.asarray(lengths, jnp.int32), length, c.window, c.segment_length)
        if valid is not None:
            mixture = jnp.where(valid.samples, mixture, 0.0)
        encoded = Encoder(c.num_filters, c.window, dtype, name="encoder")(mixture)  # [B, F, N]
        x = encoded
        if c.separator == "dprnn":
            x = GlobalLayerNorm(c.norm_eps, self.kernels, name="input_norm")(
                x, None if valid is None else valid.frames)
        x = Dense(c.features, use_bias=c.separator == "dprnn", dtype=dtype, kernels=self.kernels,
                  name="bottleneck")(x)
        if valid is not None and c.separator == "dprnn":
            # The bottleneck's bias would make the frames past the length differ from the
            # segmentation's zero padding of the exact-length run.
            x = jnp.where(valid.frames[..., None], x, jnp.zeros((), x.dtype))
        x = segment(x, c.segment_length)  # [B, S, K, D]
        segment_valid = None if valid is None else valid.segments
        for index in range(c.num_blocks):
            block = self._block(index)
            if self.runtime.remat:
                key = self.make_rng(DROPOUT) if train and self.uses_dropout else None
                x = apply_rematerialised(block, x, train, key, segment_valid)
            else:
                x = block(x, train, segment_valid)
        masks = MaskHead(c.num_sources, c.num_filters, c.mask_nonlinearity, dtype, self.kernels,
                         name="mask_head")(x, encoded.shape[1])  # [B, C, F, N]
        separated = Decoder(c.window, dtype, name="decoder")(encoded[:, None] * masks, length)
        separated = separated.astype(jnp.float32)
        if valid is not None:
            separated = jnp.where(valid.samples[:, None], separated, 0.0)
        return separated


@dataclasses.dataclass(frozen=True)
class PaddingMasks:
    """Which samples, encoder frames and segments of a padded batch each row has at its
    own length (bool ``[B, T]``, ``[B, F]``, ``[B, S]``).

    The encoder (no bias) maps padding to zero frames, and the segmentation pads with
    zeros, so the first F_b frames and S_b segments of a row equal those of its
    exact-length run; everything past them exists only because of the batch's padding.
    """

    samples: jnp.ndarray
    frames: jnp.ndarray
    segments: jnp.ndarray

    @classmethod
    def of(cls, lengths: jnp.ndarray, time: int, window: int, segment_length: int
           ) -> "PaddingMasks":
        frames = num_frames(lengths, window)  # the same arithmetic as the padding itself
        segments = num_frames(frames, segment_length)
        total_frames = num_frames(time, window)
        return cls(samples=jnp.arange(time) < lengths[:, None],
                   frames=jnp.arange(total_frames) < frames[:, None],
                   segments=jnp.arange(num_frames(total_frames, segment_length))
                   < segments[:, None])


def build_model(config: Config | ModelConfig,
                runtime: RuntimeConfig | None = None) -> SeparationModel:
    """The Flax module for ``config`` (a full :class:`Config` or its ``model`` section).

    ``runtime`` defaults to a full config's own section, else to :class:`RuntimeConfig`'s
    defaults. ``runtime.kernels: auto`` is decided here, for JAX's default backend.
    """
    if isinstance(config, Config):
        config, runtime = config.model, runtime or config.runtime
    runtime = runtime or RuntimeConfig()
    return SeparationModel(config, dataclasses.replace(
        runtime, kernels=resolve_kernels(runtime.kernels)))
