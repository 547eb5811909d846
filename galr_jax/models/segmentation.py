"""Half-overlapping framing and overlap-add, shared by the filterbank and the separator.

Both the encoder (window L, hop L/2) and the segmentation (segment K, hop K/2) use the
same padding scheme (spec sec. 1 and 4): append ``rest = size - (size/2 + n mod size) mod size``
zeros, then ``size/2`` zeros on both sides, so every real element lies in exactly two
frames. With hop = size/2 a frame is two consecutive half-size chunks, so framing is a
reshape plus a concatenation and overlap-add is a shifted sum: no gather, no scatter.
"""

from __future__ import annotations

import jax.numpy as jnp


def half_overlap_padding(length: int, size: int) -> tuple[int, int]:
    """Left and right zero padding that makes ``length`` frame exactly at hop ``size/2``."""
    half = size // 2
    rest = size - (half + length % size) % size
    return half, half + rest


def num_frames(length: int, size: int) -> int:
    """Number of half-overlapping frames of ``size`` that cover ``length`` padded elements."""
    left, right = half_overlap_padding(length, size)
    return (left + length + right) // (size // 2) - 1


def frame_half_overlap(x: jnp.ndarray, size: int) -> jnp.ndarray:
    """Pads axis 1 and cuts it into frames of ``size`` with hop ``size/2``.

    Args:
      x: ``[batch, length, ...]``.
      size: even frame length.

    Returns:
      ``[batch, frames, size, ...]`` with ``frames = num_frames(length, size)``.
    """
    half = size // 2
    left, right = half_overlap_padding(x.shape[1], size)
    pad = [(0, 0)] * x.ndim
    pad[1] = (left, right)
    x = jnp.pad(x, pad)
    chunks = x.reshape(x.shape[0], x.shape[1] // half, half, *x.shape[2:])
    return jnp.concatenate([chunks[:, :-1], chunks[:, 1:]], axis=2)


def overlap_add_half(frames: jnp.ndarray, length: int) -> jnp.ndarray:
    """Inverse of :func:`frame_half_overlap`: sums overlapping halves and strips the padding.

    Args:
      frames: ``[batch, frames, size, ...]`` with hop ``size/2``.
      length: the unpadded length to return.

    Returns:
      ``[batch, length, ...]``; each element is the plain sum of its two frames.
    """
    size = frames.shape[2]
    half = size // 2
    first, second = frames[:, :, :half], frames[:, :, half:]
    zeros = jnp.zeros_like(first[:, :1])
    summed = (jnp.concatenate([first, zeros], axis=1)
              + jnp.concatenate([zeros, second], axis=1))
    flat = summed.reshape(summed.shape[0], -1, *summed.shape[3:])
    left, _ = half_overlap_padding(length, size)
    return flat[:, left:left + length]


def segment(features: jnp.ndarray, segment_length: int) -> jnp.ndarray:
    """Splits encoded frames into half-overlapping segments.

    Args:
      features: ``[batch, frames, features]``.
      segment_length: K, even.

    Returns:
      ``[batch, segments, K, features]``.
    """
    return frame_half_overlap(features, segment_length)


def overlap_add(segments: jnp.ndarray, num_frames_out: int) -> jnp.ndarray:
    """Merges ``[batch, segments, K, features]`` back to ``[batch, frames, features]``."""
    return overlap_add_half(segments, num_frames_out)
