"""Readers for the standard speech-separation layouts.

* **wsj0-mix** (wsj0-2mix / wsj0-3mix, and the demo set):
  ``ROOT/{tr,cv,tt}/{mix,s1,s2[,s3]}/<id>.wav``; a mixture and its sources share a file name.
* **LibriMix** (Libri2Mix / Libri3Mix): a metadata CSV per split with the columns
  ``mixture_ID,mixture_path,source_1_path,source_2_path[,source_3_path],length``
  (further columns, e.g. ``noise_path``, are ignored).

Both give a :class:`MixtureDataset`: ids, lengths in samples, and
``load(i) -> (mixture [T], sources [C, T])``. Unusable mixtures are handled by the
``bad_files`` policy: ``'skip'`` drops them and lists ``(file, problem)`` in
``dataset.problems`` for the caller to log; ``'error'`` raises on the first one,
naming the file.
"""

from __future__ import annotations

import csv
import os
from typing import Optional, Sequence

import numpy as np

from galr_jax.data.audio import AudioError, path_problem, read_audio
from galr_jax.data.index import IndexResult, MixtureEntry, build_index

BAD_FILE_POLICIES = ("skip", "error")
LAYOUTS = ("wsj0-mix", "librimix")
AUDIO_SUFFIX = ".wav"
MIXTURE_DIR = "mix"
LIBRIMIX_ID_COLUMN = "mixture_ID"
LIBRIMIX_MIXTURE_COLUMN = "mixture_path"
LIBRIMIX_LENGTH_COLUMN = "length"


class DatasetError(ValueError):
    """A corpus does not have the expected layout; the message says what was expected."""


def source_dir(index: int) -> str:
    """wsj0-mix folder of source ``index`` (0-based): ``s1``, ``s2``, ..."""
    return f"s{index + 1}"


def librimix_source_column(index: int) -> str:
    """LibriMix CSV column of source ``index`` (0-based): ``source_1_path``, ..."""
    return f"source_{index + 1}_path"


class MixtureDataset:
    """The usable mixtures of one split, with their lengths.

    Attributes:
      name: a readable name for messages (root and split, or the CSV path).
      entries: the usable :class:`MixtureEntry` objects, sorted by id.
      lengths: ``[num_mixtures]`` int64 samples per mixture.
      sample_rate: expected rate in Hz (None: any).
      num_sources: C.
      problems: ``(file, problem)`` for every mixture that was skipped.
    """

    def __init__(self, name: str, entries: Sequence[MixtureEntry], lengths: Sequence[int], *,
                 sample_rate: Optional[int], num_sources: int, stereo: str,
                 problems: Sequence[tuple[str, str]] = ()):
        self.name = name
        self.entries = list(entries)
        self.lengths = np.asarray(lengths, dtype=np.int64)
        self.sample_rate = sample_rate
        self.num_sources = num_sources
        self.stereo = stereo
        self.problems = list(problems)

    def __len__(self) -> int:
        return len(self.entries)

    @property
    def ids(self) -> list[str]:
        return [e.id for e in self.entries]

    def summary(self) -> str:
        """One line for the log: counts and total duration."""
        text = f"{self.name}: {len(self)} mixtures"
        if self.sample_rate:
            text += f", {self.lengths.sum() / self.sample_rate / 3600:.2f} h"
        if self.problems:
            text += f", {len(self.problems)} skipped (bad files)"
        return text

    def _read(self, path: str, index: int, start: int, frames: Optional[int]) -> np.ndarray:
        signal = read_audio(path, self.sample_rate, start=start, frames=frames, stereo=self.stereo)
        expected = int(self.lengths[index]) - start
        if frames is not None:
            expected = min(frames, expected)
        if len(signal) != expected:
            raise AudioError(path, f"read {len(signal)} samples, the length index says {expected}: "
                                   "the file changed after the split was opened")
        return signal

    def load(self, index: int, start: int = 0,
             frames: Optional[int] = None) -> tuple[np.ndarray, np.ndarray]:
        """Reads mixture ``index`` (optionally the slice ``[start, start + frames)``).

        Returns:
          ``(mixture [T], sources [C, T])`` float32.

        Raises:
          AudioError: a file cannot be read or holds NaN/Inf samples.
        """
        entry = self.entries[index]
        mixture = self._read(entry.mixture, index, start, frames)
        sources = np.stack([self._read(p, index, start, frames) for p in entry.sources])
        return mixture, sources

    def load_source(self, index: int, source: int, start: int = 0,
                    frames: Optional[int] = None) -> np.ndarray:
        """Reads one clean source of mixture ``index``: ``[T]`` float32."""
        return self._read(self.entries[index].sources[source], index, start, frames)


def _list_wavs(folder: str) -> dict[str, str]:
    """``{stem: path}`` of the ``.wav`` entries directly in ``folder`` (dotfiles ignored).

    Entries are listed, not followed, so symlink loops inside the folder cannot hang
    the scan; a looping file link shows up later as a bad file.
    """
    found = {}
    with os.scandir(folder) as it:
        for entry in it:
            if entry.name.startswith(".") or not entry.name.lower().endswith(AUDIO_SUFFIX):
                continue
            found[entry.name[:-len(AUDIO_SUFFIX)]] = entry.path
    return found


def _require_dir(path: str, what: str, expected: str) -> None:
    if os.path.isdir(path):
        return
    problem = path_problem(path)
    problem = {None: "is not a directory", "no such file": "does not exist"}.get(
        problem, f"is unusable ({problem})")
    raise DatasetError(f"{path}: {what} {problem}; expected the layout {expected}")


def scan_wsj0_mix(root: str, split: str,
                  num_sources: int) -> tuple[list[MixtureEntry], list[tuple[str, str]]]:
    """Lists ``ROOT/SPLIT/mix/*.wav`` and pairs each with ``s1 .. sC`` files of the same name.

    Returns:
      ``(entries, problems)``: entries whose files all exist, sorted by id, and
      ``(missing file, problem)`` for mixtures whose sources are missing.

    Raises:
      DatasetError: the root, split, mix or a source folder is missing, the split has
        no .wav files, or a folder ``s{C+1}`` exists (a set with more speakers than
        ``num_sources``).
    """
    split_dir = os.path.join(root, split)
    folders = "{" + ",".join([MIXTURE_DIR] + [source_dir(c) for c in range(num_sources)]) + "}"
    expected = f"{split_dir}/{folders}/<id>{AUDIO_SUFFIX}"
    _require_dir(root, "data root", expected)
    _require_dir(split_dir, f"split {split!r}", expected)
    for name in [MIXTURE_DIR] + [source_dir(c) for c in range(num_sources)]:
        _require_dir(os.path.join(split_dir, name), "folder", expected)
    extra = os.path.join(split_dir, source_dir(num_sources))
    if os.path.isdir(extra):
        raise DatasetError(f"{extra}: found a source folder for {num_sources + 1} speakers, "
                           f"but num_sources={num_sources} (model.num_sources)")
    mixtures = _list_wavs(os.path.join(split_dir, MIXTURE_DIR))
    if not mixtures:
        raise DatasetError(f"{os.path.join(split_dir, MIXTURE_DIR)}: no {AUDIO_SUFFIX} files; "
                           f"expected the layout {expected}")
    sources = [_list_wavs(os.path.join(split_dir, source_dir(c))) for c in range(num_sources)]
    entries, problems = [], []
    for stem in sorted(mixtures):
        missing = [c for c in range(num_sources) if stem not in sources[c]]
        if missing:
            path = os.path.join(split_dir, source_dir(missing[0]), stem + AUDIO_SUFFIX)
            problems.append((path, f"missing source file for mixture {mixtures[stem]} "
                                   f"(expected {expected})"))
            continue
        entries.append(MixtureEntry(stem, mixtures[stem],
                                    tuple(sources[c][stem] for c in range(num_sources))))
    return entries, problems


def read_librimix_csv(csv_path: str, num_sources: int, audio_root: Optional[str] = None
                      ) -> tuple[list[MixtureEntry], list[tuple[str, str]]]:
    """Reads a LibriMix metadata CSV.

    Args:
      csv_path: the metadata file.
      num_sources: C; the CSV must have ``source_1_path .. source_C_path`` and no
        ``source_{C+1}_path``.
      audio_root: folder that relative audio paths are resolved against; default the
        CSV's folder. Absolute paths are used as they are.

    Returns:
      ``(entries, problems)`` like :func:`scan_wsj0_mix`; rows with empty cells or a
      repeated mixture_ID are problems.

    Raises:
      DatasetError: the CSV is missing, empty, or lacks a required column.
    """
    problem = path_problem(csv_path)
    if problem:
        raise DatasetError(f"{csv_path}: LibriMix metadata CSV {problem}")
    source_columns = [librimix_source_column(c) for c in range(num_sources)]
    required = [LIBRIMIX_ID_COLUMN, LIBRIMIX_MIXTURE_COLUMN, *source_columns,
                LIBRIMIX_LENGTH_COLUMN]
    base = audio_root if audio_root is not None else os.path.dirname(os.path.abspath(csv_path))
    with open(csv_path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        header = reader.fieldnames or []
        missing = [c for c in required if c not in header]
        if missing:
            raise DatasetError(f"{csv_path}: missing column(s) {', '.join(missing)}; expected "
                               f"{','.join(required)}")
        if librimix_source_column(num_sources) in header:
            raise DatasetError(f"{csv_path}: has {librimix_source_column(num_sources)}, a set with "
                               f"more speakers than num_sources={num_sources} (model.num_sources)")
        entries, problems, seen = [], [], set()
        for line, row in enumerate(reader, start=2):
            cells = [row.get(c) for c in required]
            if any(not cell for cell in cells):
                problems.append((csv_path, f"line {line}: empty cell in {', '.join(required)}"))
                continue
            ident = row[LIBRIMIX_ID_COLUMN]
            if ident in seen:
                problems.append((csv_path, f"line {line}: repeated mixture_ID {ident!r}"))
                continue
            seen.add(ident)
            paths = [os.path.join(base, row[c]) for c in [LIBRIMIX_MIXTURE_COLUMN, *source_columns]]
            entries.append(MixtureEntry(ident, paths[0], tuple(paths[1:])))
    if not entries and not problems:
        raise DatasetError(f"{csv_path}: no rows; expected a header line {','.join(required)} "
                           "and one line per mixture")
    return sorted(entries, key=lambda e: e.id), problems


def _apply_policy(name: str, entries: Sequence[MixtureEntry], results: Sequence[IndexResult],
                  layout_problems: Sequence[tuple[str, str]], bad_files: str):
    if bad_files not in BAD_FILE_POLICIES:
        raise ValueError(f"bad_files: {bad_files!r} is not one of {', '.join(BAD_FILE_POLICIES)}")
    problems = list(layout_problems)
    problems += [(r.bad_file, r.problem) for r in results if r.length is None]
    if problems and bad_files == "error":
        path, problem = problems[0]
        raise AudioError(path, f"{problem} [data.bad_files=error; {len(problems)} bad "
                               f"mixture(s) in {name}; set data.bad_files=skip to skip them]")
    kept = [(e, r.length) for e, r in zip(entries, results) if r.length is not None]
    if not kept:
        shown = "; ".join(f"{p}: {q}" for p, q in problems[:3])
        raise DatasetError(f"{name}: all {len(problems)} mixtures are unusable ({shown})")
    return [e for e, _ in kept], [n for _, n in kept], problems


def _open(name: str, entries, layout_problems, description: dict, *, num_sources: int,
          sample_rate: Optional[int], bad_files: str, stereo: str,
          cache_dir: Optional[str]) -> MixtureDataset:
    results = build_index(entries, sample_rate=sample_rate, stereo=stereo, cache_dir=cache_dir,
                          description=description)
    kept, lengths, problems = _apply_policy(name, entries, results, layout_problems, bad_files)
    return MixtureDataset(name, kept, lengths, sample_rate=sample_rate, num_sources=num_sources,
                          stereo=stereo, problems=problems)


def _require_local(path: Optional[str], what: str) -> None:
    """Audio is decoded by soundfile (libsndfile) from local files, and the length index
    stats every file; an object-store URL would otherwise surface as a mangled "not found"."""
    if path is not None and "://" in os.fspath(path):
        raise DatasetError(
            f"{what} {path}: audio is read from a local file system; mount the bucket (for "
            "gs://, e.g. with gcsfuse) and give the mount point. Workdirs and checkpoints "
            "can be gs:// URLs")


def open_wsj0_mix(root: str, split: str, *, num_sources: int = 2,
                  sample_rate: Optional[int] = None, bad_files: str = "skip",
                  stereo: str = "error", cache_dir: Optional[str] = None) -> MixtureDataset:
    """Opens split ``split`` of a wsj0-mix tree, checking every header once (cached).

    Args:
      root: folder holding the splits (for wsj0-2mix e.g. ``.../wav8k/min``).
      split: ``tr``, ``cv`` or ``tt``.
      num_sources: C (2 for wsj0-2mix, 3 for wsj0-3mix).
      sample_rate: expected rate in Hz; files at another rate are bad files.
      bad_files: ``'skip'`` or ``'error'``.
      stereo: ``'error'`` or ``'downmix'``.
      cache_dir: where the length index is cached (e.g. the run's workdir).

    Raises:
      DatasetError: layout problems (see :func:`scan_wsj0_mix`), or no usable mixture.
      AudioError: with ``bad_files='error'``, the first bad file.
    """
    _require_local(root, "data root")
    root = os.path.abspath(root)
    entries, layout_problems = scan_wsj0_mix(root, split, num_sources)
    description = {"layout": "wsj0-mix", "root": root, "split": split, "num_sources": num_sources}
    return _open(f"{root}/{split}", entries, layout_problems, description, num_sources=num_sources,
                 sample_rate=sample_rate, bad_files=bad_files, stereo=stereo, cache_dir=cache_dir)


def open_librimix(csv_path: str, *, num_sources: int = 2, audio_root: Optional[str] = None,
                  sample_rate: Optional[int] = None, bad_files: str = "skip",
                  stereo: str = "error", cache_dir: Optional[str] = None) -> MixtureDataset:
    """Opens a LibriMix metadata CSV (see :func:`read_librimix_csv`), checking headers once.

    A file whose length differs from the CSV's ``length`` column is not an error: the
    length index measures the files themselves.
    """
    _require_local(csv_path, "metadata CSV")
    _require_local(audio_root, "audio root")
    csv_path = os.path.abspath(csv_path)
    entries, layout_problems = read_librimix_csv(csv_path, num_sources, audio_root)
    description = {"layout": "librimix", "csv": csv_path, "num_sources": num_sources}
    return _open(csv_path, entries, layout_problems, description, num_sources=num_sources,
                 sample_rate=sample_rate, bad_files=bad_files, stereo=stereo, cache_dir=cache_dir)


def open_split(data_config, split: str, num_sources: int,
               cache_dir: Optional[str] = None) -> MixtureDataset:
    """Opens a split as the config describes it.

    For ``data.layout=wsj0-mix`` the split is a folder under ``data.root``; for
    ``librimix`` it is a metadata CSV, absolute or relative to ``data.root`` (``.csv``
    may be left off), with relative audio paths resolved against ``data.root``.

    Args:
      data_config: a :class:`galr_jax.config.DataConfig`.
      split: e.g. ``data_config.train_split``.
      num_sources: C (``model.num_sources``).
      cache_dir: where the length index is cached.
    """
    options = dict(num_sources=num_sources, sample_rate=data_config.sample_rate,
                   bad_files=data_config.bad_files, stereo=data_config.stereo, cache_dir=cache_dir)
    if data_config.layout == "wsj0-mix":
        return open_wsj0_mix(data_config.root, split, **options)
    if data_config.layout == "librimix":
        csv_path = split if split.endswith(".csv") else split + ".csv"
        csv_path = os.path.join(data_config.root, csv_path)
        return open_librimix(csv_path, audio_root=data_config.root, **options)
    raise DatasetError(f"data.layout: {data_config.layout!r} is not one of {', '.join(LAYOUTS)}")
