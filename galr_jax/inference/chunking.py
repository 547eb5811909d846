"""Long audio in fixed-size overlapping chunks: cutting, speaker alignment, stitching.

A separation model sees one chunk of ``chunk`` samples at a time. Chunks start every
``hop = chunk - overlap`` samples; the last one is moved left so that it ends exactly
at the end of the signal (no padding, so every chunk has the one compiled shape), which
makes its overlap with the previous chunk longer than ``overlap``. A signal no longer
than one chunk is a single, shorter chunk.

Neighbouring chunks are stitched by a raised-cosine crossfade over their whole overlap
(the weights of the two sides sum to one). Before that, the speaker order of the new
chunk is aligned with the output so far: a separation model orders its outputs
arbitrarily and independently per chunk, so the sources are matched by the normalised
correlation of the two versions of the overlap region (a linear assignment, so any
number of sources works).

Both halves stream: :func:`iter_chunks` needs only the incoming blocks, and
:class:`OverlapAddStitcher` gives back every sample as soon as no later chunk can touch
it. Memory is a few chunks, whatever the length of the signal.
"""

from __future__ import annotations

from typing import Iterable, Iterator, Tuple

import numpy as np
import scipy.optimize

# Added to the product of norms in the correlation: silent overlaps score 0, not NaN.
CORRELATION_EPS = 1e-8


def chunk_starts(length: int, chunk: int, overlap: int) -> list[int]:
    """Start samples of the chunks :func:`iter_chunks` cuts from a signal of ``length``.

    Args:
      length: samples in the signal (positive).
      chunk: samples per chunk.
      overlap: samples shared by neighbouring chunks, ``0 <= overlap < chunk``.

    Returns:
      Increasing starts; the last chunk ends at ``length`` (or the only chunk, at 0,
      when ``length <= chunk``).
    """
    _check_geometry(chunk, overlap)
    if length <= 0:
        raise ValueError(f"length must be positive, got {length}")
    hop = chunk - overlap
    starts = list(range(0, max(length - chunk, 0) + 1, hop))
    if starts[-1] + chunk < length:
        starts.append(length - chunk)
    return starts


def _check_geometry(chunk: int, overlap: int) -> None:
    if chunk <= 0:
        raise ValueError(f"chunk must be positive, got {chunk}")
    if not 0 <= overlap < chunk:
        raise ValueError(f"overlap must be in [0, chunk={chunk}), got {overlap}")


def iter_chunks(blocks: Iterable[np.ndarray], chunk: int,
                overlap: int) -> Iterator[Tuple[int, np.ndarray]]:
    """Cuts a stream of 1-D blocks into overlapping chunks, without knowing its length.

    Yields the chunks of :func:`chunk_starts` for the concatenated blocks. Only the
    samples from the latest chunk start onwards are kept, so memory stays at about
    ``chunk + hop + len(block)`` samples.

    Args:
      blocks: ``[n]`` float arrays of any sizes (empty ones are skipped).
      chunk: samples per chunk.
      overlap: samples shared by neighbouring chunks.

    Yields:
      ``(start, samples)``: ``samples`` is ``[chunk]``, or ``[length]`` for a signal no
      longer than one chunk. Nothing is yielded for an empty stream.
    """
    _check_geometry(chunk, overlap)
    hop = chunk - overlap
    buffer = np.zeros((0,), np.float32)
    buffer_start = 0  # signal index of buffer[0]
    next_start = 0
    last_end = 0  # end of the last yielded chunk
    for block in blocks:
        block = np.asarray(block, np.float32)
        if block.ndim != 1:
            raise ValueError(f"blocks must be 1-D, got shape {block.shape}")
        buffer = np.concatenate([buffer, block])
        while buffer_start + buffer.shape[0] >= next_start + chunk:
            offset = next_start - buffer_start
            yield next_start, buffer[offset:offset + chunk].copy()
            last_end = next_start + chunk
            # The final chunk may start anywhere after this one: keep from here on.
            buffer, buffer_start = buffer[offset:], next_start
            next_start += hop
    length = buffer_start + buffer.shape[0]
    if length == 0:
        return
    if last_end == 0:
        yield 0, buffer.copy()
    elif last_end < length:
        yield length - chunk, buffer[buffer.shape[0] - chunk:].copy()


def crossfade(length: int) -> np.ndarray:
    """Raised-cosine fade-in of ``length`` samples, ``[length]`` in (0, 1).

    Sampled at half-integer positions, so ``fade + fade[::-1] == 1`` and no weight is
    exactly 0 or 1.
    """
    position = (np.arange(length) + 0.5) / length
    return (np.sin(0.5 * np.pi * position) ** 2).astype(np.float32)


def align_sources(reference: np.ndarray, candidate: np.ndarray) -> np.ndarray:
    """Speaker order of ``candidate`` that best matches ``reference``.

    Args:
      reference: ``[C, n]`` the output so far over an overlap region.
      candidate: ``[C, n]`` a new chunk's estimates over the same region.

    Returns:
      ``[C]`` int permutation ``p``: ``candidate[p]`` lines up with ``reference``. The
      identity when the overlap is silent.
    """
    if reference.shape != candidate.shape or reference.ndim != 2:
        raise ValueError(f"expected two [C, n] arrays of one shape, got {reference.shape} "
                         f"and {candidate.shape}")
    reference = reference - reference.mean(axis=1, keepdims=True)
    candidate = candidate - candidate.mean(axis=1, keepdims=True)
    norms = np.linalg.norm(reference, axis=1)[:, None] * np.linalg.norm(candidate, axis=1)[None]
    similarity = (reference @ candidate.T) / (norms + CORRELATION_EPS)  # [C, C]
    if not np.any(similarity):
        return np.arange(reference.shape[0])
    _, order = scipy.optimize.linear_sum_assignment(similarity, maximize=True)
    return order


class OverlapAddStitcher:
    """Joins per-chunk estimates into one signal, streaming.

    Call :meth:`add` with each chunk's ``[C, n]`` estimates in order of increasing
    start; it returns the output samples that are final (those before the chunk's
    start). :meth:`finish` returns the rest. Concatenated, the returned blocks are the
    ``[C, length]`` stitched signal.
    """

    def __init__(self, num_sources: int):
        self.num_sources = num_sources
        self._pending = np.zeros((num_sources, 0), np.float32)  # output not yet returned
        self._pending_start = 0  # signal index of _pending[:, 0]

    def add(self, start: int, estimates: np.ndarray) -> np.ndarray:
        """Adds one chunk.

        Args:
          start: signal index of the chunk's first sample; at or after the previous
            chunk's start and no later than its end (chunks overlap or touch).
          estimates: ``[C, n]`` the chunk's separated sources, any speaker order.

        Returns:
          ``[C, m]`` output samples that no later chunk can change (``m`` may be 0).
        """
        estimates = np.asarray(estimates, np.float32)
        if estimates.ndim != 2 or estimates.shape[0] != self.num_sources:
            raise ValueError(f"estimates must be [{self.num_sources}, n], got {estimates.shape}")
        pending_end = self._pending_start + self._pending.shape[1]
        if not self._pending_start <= start <= pending_end:
            raise ValueError(f"chunk start {start} outside the open region "
                             f"[{self._pending_start}, {pending_end}]")
        done = self._pending[:, :start - self._pending_start]
        tail = self._pending[:, start - self._pending_start:]  # [C, overlap]
        overlap = min(tail.shape[1], estimates.shape[1])
        if overlap:
            estimates = estimates[align_sources(tail[:, :overlap], estimates[:, :overlap])]
            fade_in = crossfade(overlap)
            estimates = estimates.copy()
            estimates[:, :overlap] = (fade_in * estimates[:, :overlap]
                                      + (1.0 - fade_in) * tail[:, :overlap])
        # A chunk ending inside the open region keeps the old samples past its end.
        self._pending = np.concatenate([estimates, tail[:, estimates.shape[1]:]], axis=1)
        self._pending_start = start
        return done

    def finish(self) -> np.ndarray:
        """Returns the remaining output, ``[C, m]``, and resets the stitcher."""
        rest = self._pending
        self._pending = np.zeros((self.num_sources, 0), np.float32)
        self._pending_start = 0
        return rest

