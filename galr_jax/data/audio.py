"""Reading and writing mono audio files, with errors that name the file and the problem.

Every reader checks what can go wrong with real corpora before handing samples to
training: a missing or empty file, a header with no samples, a WAV whose data chunk
was cut short, bytes that are not audio, the wrong sample rate, more than one
channel, and NaN/Inf samples. Samples come back as float32 in [-1, 1] for integer
formats (float formats are returned as stored).
"""

from __future__ import annotations

import dataclasses
import errno
import os
import struct
import tempfile
import warnings
from typing import Optional

import numpy as np
import soundfile as sf

STEREO_POLICIES = ("error", "downmix")
WRITE_SUBTYPES = ("FLOAT", "PCM_16")

# Largest value PCM_16 represents: libsndfile scales floats by 2**15 on write.
_PCM16_MAX = 32767 / 32768
# Data-chunk sizes that streaming writers put in a header when the length is unknown.
_UNKNOWN_CHUNK_SIZES = (0, 0xFFFFFFFF)
_RIFF_HEADER_BYTES = 12
_CHUNK_HEADER_BYTES = 8
# mkstemp creates 0600 files; published audio gets the usual umask-filtered 0666.
_UMASK = os.umask(0)
os.umask(_UMASK)
_FILE_MODE = 0o666 & ~_UMASK


class AudioError(ValueError):
    """An audio file is unusable; ``str(e)`` is ``"<path>: <problem>"``.

    Attributes:
      path: the file.
      problem: what is wrong with it, in words.
    """

    def __init__(self, path: str | os.PathLike, problem: str):
        self.path = os.fspath(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


@dataclasses.dataclass(frozen=True)
class AudioInfo:
    """What a file's header says.

    Attributes:
      sample_rate: samples per second.
      channels: number of channels.
      frames: samples per channel.
      subtype: libsndfile's encoding name, e.g. ``PCM_16``, ``PCM_24``, ``FLOAT``.
    """

    sample_rate: int
    channels: int
    frames: int
    subtype: str


def path_problem(path: str | os.PathLike) -> Optional[str]:
    """Why ``path`` cannot be opened as a regular file, or None if it can.

    Distinguishes a missing file, a symlink loop, a broken symlink, a directory and a
    zero-byte file, so callers can report the exact cause.
    """
    path = os.fspath(path)
    try:
        st = os.stat(path)
    except OSError as e:
        if e.errno == errno.ELOOP:
            return "symlink loop"
        if os.path.islink(path):
            return f"broken symlink to {os.readlink(path)!r}"
        if e.errno == errno.ENOENT:
            return "no such file"
        return f"cannot access ({e.strerror})"
    if os.path.isdir(path):
        return "is a directory, not an audio file"
    if st.st_size == 0:
        return "empty file (0 bytes)"
    return None


def _wav_truncation(path: str) -> Optional[str]:
    """Checks a RIFF/WAVE data chunk against the bytes actually present.

    libsndfile silently shortens a WAV whose data chunk was cut off (an interrupted copy
    or download), which would pass as a shorter utterance; this finds it.

    Returns:
      A description of the truncation, or None (also for non-WAV files).
    """
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(_RIFF_HEADER_BYTES)
        if len(head) < _RIFF_HEADER_BYTES or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
            return None
        pos = _RIFF_HEADER_BYTES
        while pos + _CHUNK_HEADER_BYTES <= size:
            f.seek(pos)
            chunk_id, chunk_size = struct.unpack("<4sI", f.read(_CHUNK_HEADER_BYTES))
            if chunk_id == b"data":
                available = size - pos - _CHUNK_HEADER_BYTES
                if chunk_size not in _UNKNOWN_CHUNK_SIZES and chunk_size > available:
                    return (f"truncated: the WAV header declares {chunk_size} data bytes, "
                            f"only {available} are present")
                return None
            pos += _CHUNK_HEADER_BYTES + chunk_size + (chunk_size & 1)  # chunks are word-aligned
    return None


def audio_info(path: str | os.PathLike) -> AudioInfo:
    """Reads and checks a file's header.

    Raises:
      AudioError: missing, not a regular file, empty, not audio, no samples
        (header only) or truncated.
    """
    path = os.fspath(path)
    problem = path_problem(path)
    if problem:
        raise AudioError(path, problem)
    try:
        info = sf.info(path)
    except (sf.LibsndfileError, RuntimeError) as e:
        raise AudioError(path, f"not a readable audio file ({_libsndfile_reason(e)})") from None
    if info.frames <= 0:
        raise AudioError(path, "no audio samples (header only)")
    problem = _wav_truncation(path)
    if problem:
        raise AudioError(path, problem)
    return AudioInfo(sample_rate=info.samplerate, channels=info.channels, frames=info.frames,
                     subtype=info.subtype)


def _libsndfile_reason(error: Exception) -> str:
    text = str(error)
    # soundfile prefixes "Error opening '<path>': "; the path is already in our message.
    return text.split("': ", 1)[1] if "': " in text else text


def check_format(path: str | os.PathLike, info: AudioInfo, sample_rate: Optional[int] = None,
                 stereo: str = "error") -> None:
    """Checks a header against what the caller expects.

    Raises:
      AudioError: wrong sample rate, or several channels with ``stereo='error'``.
    """
    if stereo not in STEREO_POLICIES:
        raise ValueError(f"stereo: {stereo!r} is not one of {', '.join(STEREO_POLICIES)}")
    if sample_rate is not None and info.sample_rate != sample_rate:
        raise AudioError(path, f"sample rate is {info.sample_rate} Hz, expected {sample_rate} Hz")
    if info.channels != 1 and stereo == "error":
        raise AudioError(path, f"has {info.channels} channels, expected mono "
                               "(set data.stereo=downmix to average the channels)")


def read_audio(path: str | os.PathLike, sample_rate: Optional[int] = None, *, start: int = 0,
               frames: Optional[int] = None, stereo: str = "error") -> np.ndarray:
    """Reads a mono signal (or a slice of it) as float32.

    Args:
      path: audio file (anything libsndfile reads: WAV of any PCM width or float,
        FLAC, raw GSM by extension, ...).
      sample_rate: expected rate in Hz; None accepts any (see :func:`audio_info`).
      start: first sample to read.
      frames: number of samples to read from ``start``; None reads to the end. A slice
        that runs past the end is shortened, not padded.
      stereo: ``'error'`` rejects multi-channel files; ``'downmix'`` averages the
        channels and warns.

    Returns:
      ``[time]`` float32.

    Raises:
      AudioError: any problem listed in the module docstring, naming the file.
    """
    path = os.fspath(path)
    info = audio_info(path)
    check_format(path, info, sample_rate, stereo)
    if start < 0 or start > info.frames:
        raise AudioError(path, f"start sample {start} outside the file's {info.frames} samples")
    count = -1 if frames is None else max(0, min(frames, info.frames - start))
    try:
        data, _ = sf.read(path, start=start, frames=count, dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError) as e:
        raise AudioError(path, f"decoding failed ({_libsndfile_reason(e)})") from None
    if info.channels != 1:
        warnings.warn(f"{path}: averaging {info.channels} channels to mono", stacklevel=2)
    signal = data.mean(axis=1, dtype=np.float32) if info.channels != 1 else data[:, 0]
    finite = np.isfinite(signal)
    if not finite.all():
        raise AudioError(path, f"contains {int((~finite).sum())} NaN/Inf samples")
    return np.ascontiguousarray(signal)


def write_audio(path: str | os.PathLike, data: np.ndarray, sample_rate: int, *,
                subtype: str = "FLOAT", overwrite: bool = False) -> float:
    """Writes a mono signal atomically (a temporary file in the same folder, then a rename).

    ``PCM_16`` output is peak-normalised only if it would clip: when a sample lies
    outside the 16-bit range [-1, 32767/32768], the whole signal is scaled by the
    largest gain that brings it inside; otherwise samples are written unchanged
    (rounded to 16 bits, so values on that grid round-trip exactly). ``FLOAT``
    output is never scaled.

    Args:
      path: destination; the format follows its extension (``.wav``, ``.flac``).
      data: ``[time]`` samples, nominally in [-1, 1].
      sample_rate: Hz.
      subtype: ``'FLOAT'`` (32-bit float) or ``'PCM_16'``.
      overwrite: replace an existing file; by default an existing file is an error.

    Returns:
      The gain that was applied (1.0 unless PCM output was peak-normalised).

    Raises:
      AudioError: the file exists (and ``overwrite`` is False), the data are not a
        finite 1-D signal, or the subtype is unknown.
    """
    path = os.fspath(path)
    signal = np.asarray(data, dtype=np.float32)
    if signal.ndim != 1:
        raise AudioError(path, f"expected a mono [time] signal to write, got shape {signal.shape}")
    if subtype not in WRITE_SUBTYPES:
        raise AudioError(path, f"subtype {subtype!r} is not one of {', '.join(WRITE_SUBTYPES)}")
    if not np.isfinite(signal).all():
        raise AudioError(path, "refusing to write NaN/Inf samples")
    if not overwrite and os.path.lexists(path):
        raise AudioError(path, "already exists (pass overwrite=True to replace it)")
    gain = 1.0
    if subtype == "PCM_16" and signal.size:
        high, low = float(signal.max()), float(signal.min())
        if high > _PCM16_MAX:
            gain = _PCM16_MAX / high
        if low < -1.0:
            gain = min(gain, -1.0 / low)
        if gain != 1.0:
            signal = signal * np.float32(gain)
    extension = os.path.splitext(path)[1].lstrip(".").upper() or "WAV"
    folder = os.path.dirname(path) or "."
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            try:
                sf.write(f, signal, sample_rate, subtype=subtype, format=extension)
            except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as e:
                raise AudioError(path, f"cannot write {subtype} {extension} ({e})") from None
        publish_file(tmp, path, overwrite)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return gain


def publish_file(tmp: str, path: str, overwrite: bool,
                 refusal: str = "already exists (pass overwrite=True to replace it)") -> None:
    """Moves a finished temporary file into place; never clobbers without ``overwrite``.

    The file gets the usual umask-filtered 0666 mode (``mkstemp`` creates 0600).

    Raises:
      AudioError: ``path`` exists and ``overwrite`` is false (``refusal`` says what to do).
    """
    os.chmod(tmp, _FILE_MODE)
    if overwrite:
        os.replace(tmp, path)
        return
    try:
        os.link(tmp, path)  # atomic create-if-absent, unlike os.replace
    except FileExistsError:
        raise AudioError(path, refusal) from None
    except OSError:  # the file system has no hard links
        if os.path.lexists(path):
            raise AudioError(path, refusal) from None
        os.replace(tmp, path)
