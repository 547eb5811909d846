"""The whole TasNet: encoder -> separator (GALR or DPRNN blocks) -> mask head -> decoder."""

from __future__ import annotations

from typing import Union

import flax.linen as nn
import jax
import jax.numpy as jnp

from galr_jax.config import Config, ModelConfig, RuntimeConfig
from galr_jax.models.dense import Dense
from galr_jax.models.dprnn import DPRNNBlock
from galr_jax.models.dropout import DROPOUT
from galr_jax.models.filterbank import Decoder, Encoder
from galr_jax.models.galr import GALRBlock
from galr_jax.models.mask_head import MaskHead
from galr_jax.models.norms import GlobalLayerNorm
from galr_jax.models.remat import apply_rematerialised
from galr_jax.models.segmentation import segment

COMPUTE_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


class SeparationModel(nn.Module):
    """GALR (or the DPRNN baseline) for time-domain separation of C sources.

    Attributes:
      config: the model section of the run config (the architecture).
      runtime: how it is computed (dtype, recomputation, unrolling).

    Shape:
      ``[batch, time]`` float32 -> ``[batch, C, time]`` float32, for any ``time >= 1``.

    Example:
      >>> model = build_model(load_config("configs/galr_1.5m.yaml"))
      >>> variables = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 8000)))
      >>> estimates = model.apply(variables, mixture)             # inference
      >>> estimates = model.apply(variables, mixture, train=True,
      ...                         rngs={"dropout": key})           # training (dropout on)

    ``first_row`` is the global index of the batch's first example. Dropout masks are
    drawn per (key, global example), so a global batch split over devices, each device
    passing its own ``first_row`` and the same key, draws what it draws on one device.
    """

    config: ModelConfig
    runtime: RuntimeConfig = RuntimeConfig()

    @property
    def uses_dropout(self) -> bool:
        """Whether ``train=True`` draws random numbers (and so needs a ``dropout`` rng)."""
        return self.config.separator == "galr" and self.config.attention_dropout > 0

    def _block(self, index: int) -> nn.Module:
        c, r = self.config, self.runtime
        dtype = COMPUTE_DTYPES[r.compute_dtype]
        if c.separator == "galr":
            return GALRBlock(c.hidden, c.num_heads, c.low_dim, c.attention_dropout,
                             c.attention_residual, c.norm_eps, r.lstm_unroll, dtype,
                             recompute_attention=r.recompute_attention and not r.remat,
                             name=f"blocks_{index}")
        return DPRNNBlock(c.hidden, c.norm_eps, r.lstm_unroll, dtype, name=f"blocks_{index}")

    @nn.compact
    def __call__(self, mixture: jnp.ndarray, train: bool = False,
                 first_row: Union[int, jax.Array] = 0) -> jnp.ndarray:
        if mixture.ndim != 2:
            raise ValueError(f"mixture must be [batch, time], got shape {mixture.shape}")
        if mixture.shape[1] < 1:
            raise ValueError("mixture has no samples")
        c = self.config
        dtype = COMPUTE_DTYPES[self.runtime.compute_dtype]
        length = mixture.shape[1]
        encoded = Encoder(c.num_filters, c.window, dtype, name="encoder")(mixture)  # [B, F, N]
        x = encoded
        if c.separator == "dprnn":
            x = GlobalLayerNorm(c.norm_eps, name="input_norm")(x)
        x = Dense(c.features, use_bias=c.separator == "dprnn", dtype=dtype, name="bottleneck")(x)
        x = segment(x, c.segment_length)  # [B, S, K, D]
        for index in range(c.num_blocks):
            block = self._block(index)
            if self.runtime.remat:
                key = self.make_rng(DROPOUT) if train and self.uses_dropout else None
                x = apply_rematerialised(block, x, train, key, first_row)
            else:
                x = block(x, train, first_row)
        masks = MaskHead(c.num_sources, c.num_filters, c.mask_nonlinearity, dtype,
                         name="mask_head")(x, encoded.shape[1])  # [B, C, F, N]
        separated = Decoder(c.window, dtype, name="decoder")(encoded[:, None] * masks, length)
        return separated.astype(jnp.float32)


def build_model(config: Config | ModelConfig,
                runtime: RuntimeConfig | None = None) -> SeparationModel:
    """The Flax module for ``config`` (a full :class:`Config` or its ``model`` section).

    ``runtime`` defaults to a full config's own section, else to :class:`RuntimeConfig`'s
    defaults.
    """
    if isinstance(config, Config):
        return SeparationModel(config.model, runtime or config.runtime)
    return SeparationModel(config, runtime or RuntimeConfig())
