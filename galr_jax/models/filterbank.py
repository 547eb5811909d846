"""Learned encoder and decoder filterbanks (TasNet), window L with hop L/2."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from galr_jax.models.segmentation import frame_half_overlap, overlap_add_half


class Encoder(nn.Module):
    """Conv1d(1 -> N, kernel L, stride L/2, no bias) followed by ReLU.

    The waveform is padded (spec sec. 1) so every real sample lies in exactly two
    frames; the strided convolution is then a framing reshape and one matrix product.

    Attributes:
      num_filters: N.
      window: L, even.

    Shape:
      ``[batch, time]`` -> ``[batch, frames, N]``.
    """

    num_filters: int
    window: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, waveform: jnp.ndarray) -> jnp.ndarray:
        kernel = self.param("kernel", nn.initializers.lecun_normal(),
                            (self.window, self.num_filters))
        frames = frame_half_overlap(waveform, self.window)  # [batch, frames, L]
        return nn.relu(jnp.einsum("bfl,ln->bfn", frames.astype(self.dtype),
                                  kernel.astype(self.dtype)))


class Decoder(nn.Module):
    """ConvTranspose1d(N -> 1, kernel L, stride L/2, no bias), then strips the padding.

    Attributes:
      window: L, even.

    Shape:
      ``[batch, sources, frames, N]`` -> ``[batch, sources, time]`` for ``time`` given.
    """

    window: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, frames: jnp.ndarray, length: int) -> jnp.ndarray:
        num_filters = frames.shape[-1]
        kernel = self.param("kernel", nn.initializers.lecun_normal(),
                            (num_filters, self.window))
        batch, sources = frames.shape[:2]
        windows = jnp.einsum("bcfn,nl->bcfl", frames.astype(self.dtype), kernel.astype(self.dtype))
        windows = windows.reshape(batch * sources, *windows.shape[2:])
        waveform = overlap_add_half(windows[..., None], length)[..., 0]
        return waveform.reshape(batch, sources, length)
