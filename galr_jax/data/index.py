"""Length index of a mixture set: checked once, cached as JSON.

Opening tens of thousands of headers takes a while on network storage, so the
result (each mixture's length, or why it is unusable) is stored in the caller's
cache folder under a name derived from a fingerprint of the corpus: the root, the
split, every file's size and modification time, and the reading options. A changed
corpus therefore gets a new fingerprint and is indexed again; nothing has to be
invalidated by hand.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import json
import os
import tempfile
from typing import Optional, Sequence

from galr_jax.data.audio import AudioError, audio_info, check_format, path_problem

INDEX_FORMAT = 1  # bump when the cached content or the checks change
_INDEX_THREADS = 8  # header reads wait on storage, not on the CPU


@dataclasses.dataclass(frozen=True)
class MixtureEntry:
    """One mixture and its clean sources, as file paths.

    Attributes:
      id: the mixture's name (file stem or the CSV's mixture_ID).
      mixture: path of the mixture file.
      sources: paths of the C source files, in source order.
    """

    id: str
    mixture: str
    sources: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class IndexResult:
    """What indexing found for one entry: a length, or the offending file and problem."""

    length: Optional[int]
    bad_file: Optional[str] = None
    problem: Optional[str] = None


def _file_signature(path: str) -> list:
    try:
        st = os.stat(path)
        return [path, st.st_size, st.st_mtime_ns]
    except OSError:
        return [path, path_problem(path)]


def fingerprint(entries: Sequence[MixtureEntry], options: dict) -> str:
    """Hash of the entries' files (path, size, mtime) and the reading options."""
    digest = hashlib.sha256()
    digest.update(json.dumps({"format": INDEX_FORMAT, **options}, sort_keys=True).encode())
    for entry in entries:
        for path in (entry.mixture, *entry.sources):
            digest.update(json.dumps(_file_signature(path)).encode("utf-8", "surrogateescape"))
    return digest.hexdigest()


def _check_entry(entry: MixtureEntry, sample_rate: Optional[int], stereo: str) -> IndexResult:
    length = None
    for path in (entry.mixture, *entry.sources):
        try:
            info = audio_info(path)
            check_format(path, info, sample_rate, stereo)
        except AudioError as e:
            return IndexResult(None, e.path, e.problem)
        if length is None:
            length = info.frames
        elif info.frames != length:
            return IndexResult(None, path, f"has {info.frames} samples, its mixture "
                                           f"{entry.mixture} has {length}")
    return IndexResult(length)


def build_index(entries: Sequence[MixtureEntry], *, sample_rate: Optional[int], stereo: str,
                cache_dir: Optional[str], description: dict) -> list[IndexResult]:
    """Checks every entry's headers (or loads the cached result).

    Each entry is usable when all its files open, have the expected sample rate and
    channel count, and share one length. NaN samples are not looked for here (that
    needs the samples): readers find them when loading.

    Args:
      entries: mixtures to check.
      sample_rate: expected rate in Hz, or None for any.
      stereo: the channel policy (see :func:`galr_jax.data.audio.check_format`).
      cache_dir: folder for the JSON cache; None disables caching.
      description: what the entries are (layout, root, split); part of the
        fingerprint and written into the cache file for people who open it.

    Returns:
      One :class:`IndexResult` per entry, in order.
    """
    options = {**description, "sample_rate": sample_rate, "stereo": stereo}
    key = fingerprint(entries, options)
    cache_path = os.path.join(cache_dir, f"data-index-{key[:20]}.json") if cache_dir else None
    if cache_path:
        cached = _load_cache(cache_path, key, len(entries))
        if cached is not None:
            return cached
    with concurrent.futures.ThreadPoolExecutor(_INDEX_THREADS) as pool:
        results = list(pool.map(lambda e: _check_entry(e, sample_rate, stereo), entries))
    if cache_path:
        _save_cache(cache_path, key, options, results)
    return results


def _load_cache(path: str, key: str, count: int) -> Optional[list[IndexResult]]:
    try:
        with open(path, encoding="utf-8") as f:
            content = json.load(f)
    except (OSError, ValueError):
        return None  # absent or damaged: rebuild
    if content.get("key") != key or len(content.get("results", ())) != count:
        return None
    return [IndexResult(*row) for row in content["results"]]


def _save_cache(path: str, key: str, options: dict, results: list[IndexResult]) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    content = {"key": key, "options": options,
               "results": [[r.length, r.bad_file, r.problem] for r in results]}
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(content, f)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
