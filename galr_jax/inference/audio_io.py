"""Streaming audio in and out of the separator: bounded memory for files of any length.

Reading checks the file as :func:`galr_jax.data.audio.audio_info` does (missing, empty,
header only, truncated, not audio), then yields mono float32 blocks at the model's
rate: several channels are averaged (with a warning) and another sample rate is
converted with soxr (with a warning). NaN/Inf samples raise an error naming the file
and the first bad sample.

Resampling uses soxr (libsoxr's streaming resampler, "HQ" quality): it converts block by
block with constant memory, so hour-long files at 44.1 kHz never have to be held whole,
and it is a small binary wheel with no further dependencies. scipy's ``resample_poly``
would need the whole signal in memory.

Writing stages every source in a temporary file next to its destination and renames it
into place only when the whole file has been written, so a failed or interrupted run
leaves no partial outputs, and an existing file is never replaced unless asked.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
import warnings
from typing import Iterator, Sequence

import numpy as np
import soundfile as sf
import soxr

from galr_jax.data.audio import AudioError, AudioInfo, audio_info, publish_file

OUTPUT_FORMATS = ("float", "pcm16")
RESAMPLE_QUALITY = "HQ"
# --pcm16 scales all sources of a file by one gain so the loudest peak sits here: the
# model's output level is arbitrary (SI-SNR training ignores scale), and 1 dB of
# headroom survives later resampling or lossy encoding without clipping.
PCM16_PEAK_DBFS = -1.0
_SUBTYPES = {"float": "FLOAT", "pcm16": "PCM_16"}


@dataclasses.dataclass
class InputStream:
    """An opened input file.

    Attributes:
      path: the file.
      info: its header.
      length: samples at the target rate (for a resampled file, soxr's output length).
      blocks: iterator of ``[n]`` float32 mono blocks at the target rate; read once.
    """

    path: str
    info: AudioInfo
    length: int
    blocks: Iterator[np.ndarray]


def resampled_length(frames: int, rate_in: int, rate_out: int) -> int:
    """Number of samples soxr produces for ``frames`` input samples (halves round up)."""
    return (2 * frames * rate_out + rate_in) // (2 * rate_in)


def open_input(path: str | os.PathLike, sample_rate: int, block_frames: int) -> InputStream:
    """Opens an audio file for streaming at ``sample_rate``.

    Args:
      path: any file libsndfile reads.
      sample_rate: the rate the blocks must have (the model's).
      block_frames: input samples read per block.

    Raises:
      AudioError: the file is unusable (see the module docstring). Blocks may also
        raise it, for NaN/Inf samples, while they are read.
    """
    path = os.fspath(path)
    info = audio_info(path)
    if info.channels != 1:
        warnings.warn(f"{path}: averaging {info.channels} channels to mono", stacklevel=2)
    length = info.frames
    if info.sample_rate != sample_rate:
        warnings.warn(f"{path}: resampling {info.sample_rate} Hz to {sample_rate} Hz (soxr)",
                      stacklevel=2)
        length = resampled_length(info.frames, info.sample_rate, sample_rate)
    return InputStream(path, info, length, _blocks(path, info, sample_rate, block_frames))


def _blocks(path: str, info: AudioInfo, sample_rate: int,
            block_frames: int) -> Iterator[np.ndarray]:
    resampler = None
    if info.sample_rate != sample_rate:
        resampler = soxr.ResampleStream(info.sample_rate, sample_rate, 1, dtype="float32",
                                        quality=RESAMPLE_QUALITY)
    position = 0
    try:
        with sf.SoundFile(path) as f:
            for block in f.blocks(blocksize=block_frames, dtype="float32", always_2d=True):
                mono = block.mean(axis=1, dtype=np.float32) if block.shape[1] != 1 else block[:, 0]
                bad = np.flatnonzero(~np.isfinite(mono))
                if bad.size:
                    raise AudioError(path, f"NaN/Inf sample at index {position + int(bad[0])}")
                position += mono.shape[0]
                yield resampler.resample_chunk(mono) if resampler else mono
    except (sf.LibsndfileError, RuntimeError) as e:
        raise AudioError(path, f"decoding failed at sample {position} ({e})") from None
    if position != info.frames:
        raise AudioError(path, f"read {position} samples, the header says {info.frames}")
    if resampler:
        yield resampler.resample_chunk(np.zeros((0,), np.float32), last=True)


def output_subtype(output_format: str) -> str:
    """libsndfile subtype of an output format name (``float`` or ``pcm16``)."""
    if output_format not in _SUBTYPES:
        raise ValueError(f"output format {output_format!r} is not one of "
                         f"{', '.join(OUTPUT_FORMATS)}")
    return _SUBTYPES[output_format]


class SourceWriter:
    """Writes the C separated sources of one input, block by block, then publishes them.

    Use as a context manager: leaving it with an exception deletes the temporary files.
    With ``pcm16`` the float staging files are re-encoded at the end with the gain
    that puts the loudest peak at ``PCM16_PEAK_DBFS`` (never clipping); ``float`` files
    are published as written.

    Args:
      paths: destination of each source.
      sample_rate: Hz.
      output_format: ``'float'`` (32-bit float WAV) or ``'pcm16'``.
      overwrite: replace existing destinations; otherwise they are an error, checked
        before anything is written and again when publishing.
      block_frames: samples per block when re-encoding.
    """

    def __init__(self, paths: Sequence[str], sample_rate: int, output_format: str = "float",
                 overwrite: bool = False, block_frames: int = 1 << 16):
        self.paths = [os.fspath(p) for p in paths]
        self.sample_rate = sample_rate
        self.subtype = output_subtype(output_format)
        self.overwrite = overwrite
        self.block_frames = block_frames
        self.peak = 0.0
        self.gain = 1.0
        self.frames = 0
        if not overwrite:
            for path in self.paths:
                if os.path.lexists(path):
                    raise AudioError(path, "already exists; not overwriting it (use --force)")
        self._temporary: list[str] = []
        self._files: list[sf.SoundFile] = []
        try:
            for path in self.paths:
                self._files.append(sf.SoundFile(self._new_temporary(path), "w",
                                                samplerate=sample_rate, channels=1,
                                                subtype="FLOAT", format="WAV"))
        except BaseException:
            self.abort()
            raise

    def _new_temporary(self, path: str) -> str:
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path) or ".",
                                   prefix=f".{os.path.basename(path)}.", suffix=".tmp")
        os.close(fd)
        self._temporary.append(tmp)
        return tmp

    def write(self, sources: np.ndarray) -> None:
        """Appends ``[C, n]`` samples; NaN/Inf is an error (a broken model, not audio)."""
        sources = np.asarray(sources, np.float32)
        if sources.shape[0] != len(self.paths) or sources.ndim != 2:
            raise ValueError(f"expected [{len(self.paths)}, n] samples, got {sources.shape}")
        if not np.isfinite(sources).all():
            raise AudioError(self.paths[0], "the model produced NaN/Inf samples; nothing written")
        if sources.shape[1]:
            self.peak = max(self.peak, float(np.abs(sources).max()))
        for f, source in zip(self._files, sources):
            f.write(source)
        self.frames += sources.shape[1]

    def close(self) -> None:
        """Finishes the files and moves them to their destinations."""
        for f in self._files:
            f.close()
        staged = self._temporary[:]
        if self.subtype == "PCM_16":
            if self.peak > 0:
                self.gain = 10 ** (PCM16_PEAK_DBFS / 20) / self.peak
            staged = [self._reencode(tmp, dest) for tmp, dest in zip(staged, self.paths)]
        for tmp, dest in zip(staged, self.paths):
            publish_file(tmp, dest, self.overwrite,
                         refusal="already exists; not overwriting it (use --force)")
        self._cleanup()

    def _reencode(self, staged: str, destination: str) -> str:
        target = self._new_temporary(destination)
        with sf.SoundFile(staged) as src, sf.SoundFile(target, "w", samplerate=self.sample_rate,
                                                       channels=1, subtype=self.subtype,
                                                       format="WAV") as dst:
            for block in src.blocks(blocksize=self.block_frames, dtype="float32"):
                dst.write(block * np.float32(self.gain))
        return target

    def _cleanup(self) -> None:
        for tmp in self._temporary:
            if os.path.exists(tmp):
                os.unlink(tmp)
        self._temporary = []

    def abort(self) -> None:
        """Closes and deletes everything written so far."""
        for f in self._files:
            if not f.closed:
                f.close()
        self._cleanup()

    def __enter__(self) -> "SourceWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()
