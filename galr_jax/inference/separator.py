"""``Separator``: a trained model applied to recordings of any length.

Example (a notebook)::

    from galr_jax.inference import Separator
    separator = Separator.from_checkpoint("runs/demo")           # best checkpoint
    separator = Separator.from_pretrained("galr_voices_8k")      # shipped with the package
    sources = separator.separate("meeting.wav")                  # [C, T] float32
    separator.separate_to_files("meeting.wav", ["a.wav", "b.wav"])  # streaming, any length

Signals longer than one chunk (``eval.chunk_seconds``) are cut into chunks that overlap
by ``eval.chunk_overlap_seconds`` and run in batches of ``eval.chunk_batch_size`` chunks
through one compiled function of one shape; see :mod:`galr_jax.inference.chunking` for
the stitching. A signal no longer than one chunk runs whole, zero-padded to the
smallest of ``eval.bucket_seconds`` (or the chunk) that holds it, as evaluation pads
utterances: the set of compiled shapes stays bounded whatever the inputs, and the model
is given the signal's length, so the padding does not change its output.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Iterable, Iterator, Optional, Sequence, Union

import numpy as np

from galr_jax.config import Config, config_from_dict, config_to_dict
from galr_jax.data.audio import AudioError
from galr_jax.evaluation.scoring import (bucket_length, buckets_in_samples, model_lengths,
                                         padded_batch_size)
from galr_jax.inference.apply import BatchedApply
from galr_jax.inference.audio_io import SourceWriter, open_input
from galr_jax.inference.chunking import OverlapAddStitcher, iter_chunks
from galr_jax.inference.level import rescale_to_mixture
from galr_jax.training.checkpoints import restore_variables

PathLike = Union[str, os.PathLike]


class SeparationError(ValueError):
    """A signal cannot be separated (too short, not mono, NaN/Inf); says why."""


class Separator:
    """Separates mixtures with fixed weights; see the module docstring.

    Args:
      config: the run config; ``model`` builds the network, ``eval`` gives the chunk
        geometry (``chunk_seconds``, ``chunk_overlap_seconds``), the chunks per call
        (``chunk_batch_size``) and the buckets for short signals (``bucket_seconds``).
      variables: Flax variables ``{'params': ...}`` matching ``config.model``.
      chunk_seconds: overrides ``config.eval.chunk_seconds``.
      overlap_seconds: overrides ``config.eval.chunk_overlap_seconds``.
      batch_size: chunks per call (rounded up to a multiple of the devices);
        overrides ``config.eval.chunk_batch_size``.
      devices: devices to run on; default all local devices.
      compute_dtype: overrides ``config.runtime.compute_dtype``: ``'bfloat16'`` runs the
        products in bfloat16 (weights, LSTM cell state, norms and softmax stay float32).
      apply: runs the model instead of ``config``'s network and ``variables`` (then unused):
        e.g. a :class:`galr_jax.inference.exported.ExportedModel`.

    Attributes:
      sample_rate: Hz the model expects.
      num_sources: C, sources per mixture.
      chunk_samples, overlap_samples: the chunk geometry in samples.
      meta: for :meth:`from_checkpoint`, the checkpoint's ``meta`` (step, metrics); for
        :meth:`from_pretrained`, ``step``, ``pretrained`` (the name) and ``manifest``.
    """

    def __init__(self, config: Config, variables: Any, *, chunk_seconds: Optional[float] = None,
                 overlap_seconds: Optional[float] = None, batch_size: Optional[int] = None,
                 devices: Optional[Sequence[Any]] = None, compute_dtype: Optional[str] = None,
                 apply: Optional[Any] = None):
        if compute_dtype is not None:  # validated by the config system
            config = config_from_dict(config_to_dict(config),
                                      [f"runtime.compute_dtype={compute_dtype}"])
        self.config = config
        self.sample_rate = config.model.sample_rate
        self.num_sources = config.model.num_sources
        self.min_samples = config.model.window
        chunk_seconds = config.eval.chunk_seconds if chunk_seconds is None else chunk_seconds
        overlap_seconds = (config.eval.chunk_overlap_seconds if overlap_seconds is None
                           else overlap_seconds)
        self.chunk_samples = int(round(chunk_seconds * self.sample_rate))
        self.overlap_samples = int(round(overlap_seconds * self.sample_rate))
        if self.chunk_samples < self.min_samples:
            raise ValueError(f"chunk_seconds={chunk_seconds}: a chunk must hold at least one "
                             f"encoder window ({self.min_samples} samples)")
        if not 0 < 2 * self.overlap_samples < self.chunk_samples:
            raise ValueError(f"overlap_seconds={overlap_seconds}: must be positive (the speaker "
                             f"order of neighbouring chunks is aligned on the overlap) and under "
                             f"half of chunk_seconds={chunk_seconds}")
        self._apply = apply if apply is not None else BatchedApply(config, variables, devices)
        self.batch_size = padded_batch_size(batch_size or config.eval.chunk_batch_size,
                                            self._apply.num_devices)
        buckets = buckets_in_samples(config.eval.bucket_seconds, self.sample_rate)
        self._short_buckets = tuple(sorted({b for b in buckets if b < self.chunk_samples}
                                           | {self.chunk_samples}))
        self.meta: dict = {}

    @classmethod
    def from_checkpoint(cls, path: PathLike, which: Union[str, int] = "best",
                        **options: Any) -> "Separator":
        """Loads the weights and config of a training workdir or checkpoint directory.

        Args:
          path: workdir (``path/checkpoints`` is used) or checkpoint directory.
          which: ``'best'``, ``'latest'`` or a step number.
          **options: keyword arguments of the constructor (chunk_seconds, ...).

        Raises:
          galr_jax.training.checkpoints.CheckpointError: no usable checkpoint at ``path``.
        """
        variables, meta = restore_variables(path, which=which)
        separator = cls(meta["config"], variables, **options)
        separator.meta = meta
        return separator

    @classmethod
    def from_pretrained(cls, name: str, root: Optional[PathLike] = None,
                        **options: Any) -> "Separator":
        """Loads a pretrained model shipped with the package (``galr-separate --list-models``).

        Args:
          name: the model's name, e.g. ``'galr_voices_8k'``.
          root: registry directory; default ``$GALR_PRETRAINED_DIR``, else the package's.
          **options: keyword arguments of the constructor (chunk_seconds, ...).

        Raises:
          galr_jax.pretrained.PretrainedError: unknown name (the message lists the
            available ones) or damaged files (names the file).
        """
        from galr_jax import pretrained

        model = pretrained.load(name, root)
        separator = cls(model.config, model.variables, **options)
        separator.meta = {"step": model.manifest.get("step"), "pretrained": model.name,
                          "manifest": model.manifest, "config": model.config}
        return separator

    @property
    def compiled_shapes(self) -> set:
        """Input shapes the model has been compiled for so far."""
        return set(self._apply.shapes)

    def _check_length(self, length: int, name: str) -> None:
        if length < self.min_samples:
            raise SeparationError(f"{name}: has {length} sample(s) at {self.sample_rate} Hz, "
                                  f"shorter than one encoder window ({self.min_samples} samples)")

    def _separate_short(self, samples: np.ndarray) -> np.ndarray:
        length = samples.shape[0]
        padded_length = bucket_length(length, self._short_buckets)
        padded = np.zeros((self._apply.num_devices, padded_length), np.float32)
        padded[0, :length] = samples
        lengths = np.zeros((self._apply.num_devices,), np.int32)
        lengths[0] = length  # the model leaves the bucket's padding out
        estimates = self._apply(padded, model_lengths(lengths, padded_length))[0, :, :length]
        return rescale_to_mixture(estimates, samples)

    def _run_batch(self, batch: list, stitcher: OverlapAddStitcher) -> Iterator[np.ndarray]:
        inputs = np.zeros((self.batch_size, self.chunk_samples), np.float32)
        for row, (_, samples) in enumerate(batch):
            inputs[row] = samples
        estimates = self._apply(inputs)
        for row, (start, _) in enumerate(batch):
            yield stitcher.add(start, rescale_to_mixture(estimates[row], inputs[row]))

    def separate_blocks(self, blocks: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
        """Streaming separation: mono blocks in, separated blocks out.

        Args:
          blocks: ``[n]`` float32 blocks of one signal at :attr:`sample_rate`, finite.

        Yields:
          ``[C, m]`` float32 blocks; concatenated along time they are the ``[C, T]``
          separated signal. Memory stays at a few batches of chunks.

        Raises:
          SeparationError: the signal is shorter than one encoder window.
        """
        stitcher = OverlapAddStitcher(self.num_sources)
        batch: list = []
        for start, samples in iter_chunks(blocks, self.chunk_samples, self.overlap_samples):
            if samples.shape[0] < self.chunk_samples:  # the whole signal, shorter than a chunk
                self._check_length(samples.shape[0], "signal")
                yield self._separate_short(samples)
                return
            batch.append((start, samples))
            if len(batch) == self.batch_size:
                yield from self._run_batch(batch, stitcher)
                batch = []
        if batch:
            yield from self._run_batch(batch, stitcher)
        rest = stitcher.finish()
        if rest.shape[1] == 0:
            raise SeparationError("signal: no samples")
        yield rest

    def _open(self, audio: Union[PathLike, np.ndarray]) -> tuple[str, int, Iterable[np.ndarray]]:
        """``(name, length, blocks)`` of a path or an array, checked."""
        if isinstance(audio, (str, os.PathLike)):
            stream = open_input(audio, self.sample_rate, self.chunk_samples)
            self._check_length(stream.length, stream.path)
            return stream.path, stream.length, stream.blocks
        signal = np.asarray(audio, np.float32)
        if signal.ndim != 1:
            raise SeparationError(f"array: expected a mono [time] signal, got shape {signal.shape}"
                                  " (average the channels first)")
        self._check_length(signal.shape[0], "array")
        if not np.isfinite(signal).all():
            raise SeparationError(f"array: contains {int((~np.isfinite(signal)).sum())} "
                                  "NaN/Inf samples")
        return "array", signal.shape[0], [signal]

    def separate(self, audio: Union[PathLike, np.ndarray]) -> np.ndarray:
        """Separates a whole signal into memory.

        Args:
          audio: a ``[T]`` float array at :attr:`sample_rate`, or a path to any audio
            file (downmixed and resampled as needed, with a warning).

        Returns:
          ``[C, T]`` float32 sources (``T`` at :attr:`sample_rate`).

        Raises:
          AudioError: the file is unusable (names it).
          SeparationError: an array that is not mono, too short or not finite.
        """
        name, length, blocks = self._open(audio)
        output = np.concatenate(list(self.separate_blocks(blocks)), axis=1)
        if output.shape[1] != length:
            raise AudioError(name, f"separated {output.shape[1]} samples, expected {length}")
        return output

    def separate_to_files(self, audio: Union[PathLike, np.ndarray],
                          destinations: Sequence[PathLike], output_format: str = "float",
                          overwrite: bool = False,
                          progress: Optional[Callable[[int], None]] = None) -> dict:
        """Separates a signal of any length straight into one file per source.

        Input and output stream, so memory does not grow with the length.

        Args:
          audio: a path (or a ``[T]`` array) as for :meth:`separate`.
          destinations: C output paths (WAV).
          output_format: ``'float'`` (32-bit float, unscaled) or ``'pcm16'``
            (peak-normalised 16-bit PCM; see :class:`SourceWriter`).
          overwrite: replace existing destinations.
          progress: called with the number of samples written after each block.

        Returns:
          ``{'samples': T, 'seconds': ..., 'gain': g, 'peak': p}``: the gain applied
          (1.0 for float) and the largest magnitude before it.

        Raises:
          AudioError: unusable input, or a destination exists (no ``overwrite``).
          SeparationError: as for :meth:`separate`.
        """
        if len(destinations) != self.num_sources:
            raise ValueError(f"expected {self.num_sources} destinations, got {len(destinations)}")
        name, length, blocks = self._open(audio)
        with SourceWriter([os.fspath(d) for d in destinations], self.sample_rate, output_format,
                          overwrite) as writer:
            for block in self.separate_blocks(blocks):
                writer.write(block)
                if progress:
                    progress(block.shape[1])
            if writer.frames != length:
                raise AudioError(name, f"separated {writer.frames} samples, expected {length}")
            writer.close()
        return {"samples": length, "seconds": length / self.sample_rate, "gain": writer.gain,
                "peak": writer.peak}
