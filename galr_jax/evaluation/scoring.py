"""Whole-utterance scoring shared by validation during training and ``eval.py``.

Utterances are zero-padded to a small set of bucket lengths and grouped into
batches of a fixed size, so a jitted separation function compiles once per bucket
instead of once per utterance length. The separation function is given every row's
valid length along with the padded batch, and the model leaves what padding adds
out of every computation (``SeparationModel.__call__(..., lengths=...)``), so an
utterance's estimates, and hence its scores, do not depend on the bucket it landed
in: ``EvalConfig.bucket_seconds`` is a speed setting, not part of the result.
Scores are computed with the same lengths, so padded samples never enter the
SI-SNR or the SDR either.

Grouping is streaming: an utterance waits in its bucket until the bucket holds a
full batch, and the partly filled buckets are flushed at the end. Memory therefore
stays at about ``number of buckets x batch size`` utterances, whatever the size of
the test set, and a plain iterator (a dataset reader) is enough as input.

Multi-process runs: :func:`evaluate` scores whatever utterances it is given with
whatever ``separate_fn`` it is given, so each process can score its own share with a
function that runs on that process's devices only (:class:`galr_jax.inference.BatchedApply`);
see :mod:`galr_jax.training.validation` for why that is the multi-host design.

Typical use::

    separate = jax.jit(lambda mixture, lengths: model.apply(params, mixture, lengths=lengths))
    result = evaluate(separate, reader, sample_rate=8000, bucket_seconds=(2, 4, 8, 16),
                      batch_size=4, compute_sdr=True)
    print(result.summary["si_snri_mean"])
"""

from __future__ import annotations

import bisect
import collections.abc
from typing import (Any, Callable, Dict, Iterable, Iterator, List, NamedTuple, Sequence,
                    Tuple)

import jax
import jax.numpy as jnp
import numpy as np
import tqdm

from galr_jax.evaluation import metrics

Utterance = Tuple[str, np.ndarray, np.ndarray]  # (id, mixture [T], sources [C, T])
# (mixture [B, T_pad], lengths [B] int32) -> estimates [B, C, T_pad]
SeparateFn = Callable[[np.ndarray, np.ndarray], Any]


class Batch(NamedTuple):
    """One padded batch planned by ``make_buckets``.

    Attributes:
      indices: positions (in the input order) of the utterances in this batch; at
        most ``batch_size`` of them.
      padded_length: samples every utterance of the batch is zero-padded to.
    """

    indices: Tuple[int, ...]
    padded_length: int


class EvaluationResult(NamedTuple):
    """What ``evaluate`` returns.

    Attributes:
      records: one dict per utterance, in input order, with keys ``id``, ``length``
        (valid samples), ``si_snr``, ``si_snri`` (dB, mean over sources),
        ``permutation`` (list; entry j is the estimate matched to reference j), and
        when requested ``sdr``, ``sdri``, ``pesq``, ``stoi``.
      summary: ``count`` plus ``<metric>_mean`` and ``<metric>_median`` for every
        metric present in the records.
    """

    records: List[Dict[str, Any]]
    summary: Dict[str, float]


def buckets_in_samples(bucket_seconds: Sequence[float], sample_rate: int) -> Tuple[int, ...]:
    """Bucket durations in seconds -> sorted, distinct lengths in samples."""
    if not bucket_seconds:
        raise ValueError("bucket_seconds: at least one bucket is needed")
    buckets = sorted({int(round(seconds * sample_rate)) for seconds in bucket_seconds})
    if buckets[0] <= 0:
        raise ValueError(f"bucket_seconds: buckets must be positive, got {list(bucket_seconds)}")
    return tuple(buckets)


def bucket_length(length: int, buckets_samples: Sequence[int]) -> int:
    """Padded length of an utterance: the smallest bucket that holds it.

    Utterances longer than the largest bucket round up to a multiple of it, so the
    set of shapes stays bounded by the longest utterance of the data.

    Args:
      length: valid samples of the utterance (positive).
      buckets_samples: bucket lengths in samples, positive.

    Returns:
      The padded length in samples (>= length).
    """
    if length <= 0:
        raise ValueError(f"utterance length must be positive, got {length}")
    buckets = sorted(buckets_samples)
    position = bisect.bisect_left(buckets, length)
    if position < len(buckets):
        return buckets[position]
    largest = buckets[-1]
    return -(-length // largest) * largest


def _group_by_bucket(items: Iterable[Tuple[int, Any]], buckets_samples: Sequence[int],
                     batch_size: int) -> Iterator[Tuple[int, List[Any]]]:
    """Streams ``(length, payload)`` items into ``(padded_length, payloads)`` batches.

    A bucket is emitted as soon as it holds ``batch_size`` items; the remainders
    follow at the end, shortest bucket first. Within a batch the input order is kept.
    """
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    pending: Dict[int, List[Any]] = {}
    for length, payload in items:
        padded_length = bucket_length(length, buckets_samples)
        group = pending.setdefault(padded_length, [])
        group.append(payload)
        if len(group) == batch_size:
            yield padded_length, pending.pop(padded_length)
    for padded_length in sorted(pending):
        yield padded_length, pending[padded_length]


def make_buckets(lengths: Sequence[int], bucket_seconds: Sequence[float], sample_rate: int,
                 batch_size: int) -> List[Batch]:
    """Plans the batches ``evaluate`` forms for utterances of the given lengths.

    Args:
      lengths: valid samples of each utterance, in input order.
      bucket_seconds: bucket durations in seconds.
      sample_rate: Hz.
      batch_size: utterances per batch (the last batch of a bucket may hold fewer).

    Returns:
      Batches in the order ``evaluate`` runs them; every index appears exactly once.
    """
    buckets = buckets_in_samples(bucket_seconds, sample_rate)
    return [Batch(tuple(indices), padded_length)
            for padded_length, indices in _group_by_bucket(
                ((int(length), index) for index, length in enumerate(lengths)), buckets,
                batch_size)]


def padded_batch_size(batch_size: int, num_devices: int) -> int:
    """Batch rows given to ``separate_fn``: ``batch_size`` rounded up to a multiple of devices."""
    if num_devices <= 0:
        raise ValueError(f"num_devices must be positive, got {num_devices}")
    return -(-batch_size // num_devices) * num_devices


@jax.jit
def _score_batch(estimates: jax.Array, references: jax.Array, mixture: jax.Array,
                 lengths: jax.Array) -> metrics.SiSnrScores:
    # Models may compute in bfloat16; scores are always taken in float32.
    return metrics.si_snr_improvement(estimates.astype(jnp.float32), references, mixture, lengths)


def model_lengths(lengths: np.ndarray, padded_length: int) -> np.ndarray:
    """The ``lengths`` a padded batch gives the model: empty rows (length 0) count as full.

    Rows past the real utterances exist only to fill the batch and their output is
    discarded. Given as all-zero rows of full length they are an ordinary input; with
    length 0 every statistic the model takes over a row's valid part would be over
    nothing (0/0).

    Args:
      lengths: ``[B]`` valid samples per row, 0 for empty rows.
      padded_length: samples per row of the batch.

    Returns:
      ``[B]`` int32.
    """
    lengths = np.asarray(lengths, np.int32)
    return np.where(lengths > 0, lengths, np.int32(padded_length)).astype(np.int32)


def _checked(utterance: Utterance, num_sources: int | None) -> Tuple[str, np.ndarray, np.ndarray]:
    """Validates one ``(id, mixture [T], sources [C, T])`` triple; returns float32 arrays."""
    utt_id, mixture, sources = utterance
    mixture = np.asarray(mixture, np.float32)
    sources = np.asarray(sources, np.float32)
    if mixture.ndim != 1 or mixture.shape[0] == 0:
        raise ValueError(f"utterance {utt_id}: mixture must be a non-empty [T] array, "
                         f"got shape {mixture.shape}")
    if sources.ndim != 2 or sources.shape[1] != mixture.shape[0]:
        raise ValueError(f"utterance {utt_id}: sources must be [C, T] with T={mixture.shape[0]}, "
                         f"got shape {sources.shape}")
    if num_sources is not None and sources.shape[0] != num_sources:
        raise ValueError(f"utterance {utt_id}: {sources.shape[0]} sources, earlier utterances "
                         f"had {num_sources}")
    return str(utt_id), mixture, sources


def _validated(utterances: Iterable[Utterance]) -> Iterator[Tuple[int, tuple]]:
    """Yields ``(length, (position, id, mixture, sources))`` with consistent source counts."""
    num_sources = None
    for position, utterance in enumerate(utterances):
        utt_id, mixture, sources = _checked(utterance, num_sources)
        num_sources = sources.shape[0]
        yield mixture.shape[0], (position, utt_id, mixture, sources)


def summarize(records: Sequence[Dict[str, Any]]) -> Dict[str, float]:
    """Count, mean and median of every numeric metric of the records.

    NaN entries (a PESQ that found no speech) are left out of the mean and median.

    Args:
      records: per-utterance dicts as in ``EvaluationResult.records``.

    Returns:
      ``{"count": N, "<metric>_mean": ..., "<metric>_median": ...}``.
    """
    summary: Dict[str, float] = {"count": len(records)}
    if not records:
        return summary
    for name in ("si_snr", "si_snri", "sdr", "sdri", "pesq", "stoi"):
        if name in records[0]:
            values = np.array([record[name] for record in records], np.float64)
            summary[f"{name}_mean"] = float(np.nanmean(values))
            summary[f"{name}_median"] = float(np.nanmedian(values))
    return summary


def _pad_batch(group: Sequence[tuple], rows: int,
               padded_length: int) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Zero-pads a group of ``(position, id, mixture, sources)`` to a fixed-shape batch.

    Returns:
      mixture ``[rows, T_pad]``, sources ``[rows, C, T_pad]``, lengths ``[rows]`` (rows
      past the group are zeros with length 0).
    """
    num_sources = group[0][3].shape[0]
    mixture = np.zeros((rows, padded_length), np.float32)
    sources = np.zeros((rows, num_sources, padded_length), np.float32)
    lengths = np.zeros((rows,), np.int32)
    for row, (_, _, utt_mixture, utt_sources) in enumerate(group):
        length = utt_mixture.shape[0]
        mixture[row, :length] = utt_mixture
        sources[row, :, :length] = utt_sources
        lengths[row] = length
    return mixture, sources, lengths


def _host_scores(ordered: np.ndarray, sources: np.ndarray, mixture: np.ndarray, *,
                 compute_sdr: bool, perceptual: bool, sample_rate: int,
                 sdr_filter_length: int) -> Dict[str, float]:
    """SDR(i) and PESQ/STOI of one utterance whose estimates are in reference order."""
    scores: Dict[str, float] = {}
    if compute_sdr:
        sdr, sdri = metrics.sdr_improvement(ordered, sources, mixture, sdr_filter_length)
        scores["sdr"] = float(np.mean(sdr))
        scores["sdri"] = float(np.mean(sdri))
    if perceptual:
        scores.update(metrics.perceptual_metrics(ordered, sources, sample_rate))
    return scores


def evaluate(separate_fn: SeparateFn, utterances: Iterable[Utterance], *, sample_rate: int,
             bucket_seconds: Sequence[float], batch_size: int, num_devices: int = 1,
             compute_sdr: bool = False, perceptual: bool = False,
             sdr_filter_length: int = metrics.SDR_FILTER_LENGTH,
             progress: bool = True) -> EvaluationResult:
    """Separates and scores whole utterances in padded, bucketed batches.

    Args:
      separate_fn: maps a mixture batch ``[B, T_pad]`` float32 (numpy) and the valid
        samples of each row ``[B]`` int32 to estimates ``[B, C, T_pad]``; typically a
        jitted model apply passing ``lengths=``. B is always
        ``padded_batch_size(batch_size, num_devices)`` and T_pad a bucket length (or a
        multiple of the largest bucket), so it sees a bounded set of shapes. Rows
        past the real utterances are zeros given as full length
        (:func:`model_lengths`); their outputs are ignored.
      utterances: iterable of ``(utt_id, mixture [T], sources [C, T])``; read once,
        in a streaming fashion.
      sample_rate: Hz, for the bucket lengths and PESQ/STOI.
      bucket_seconds: bucket durations in seconds (``EvalConfig.bucket_seconds``).
      batch_size: utterances per call of ``separate_fn``.
      num_devices: the batch is padded to a multiple of this, so the caller can
        split it over devices (pmap or sharding is the caller's job).
      compute_sdr: also compute BSS-eval SDR and SDRi (numpy, float64).
      perceptual: also compute PESQ/STOI where those packages are importable.
      sdr_filter_length: taps of the BSS-eval distortion filter.
      progress: show a tqdm progress bar.

    Returns:
      ``EvaluationResult`` with per-utterance records (input order) and a summary.
    """
    buckets = buckets_in_samples(bucket_seconds, sample_rate)
    rows = padded_batch_size(batch_size, num_devices)
    on_host = compute_sdr or perceptual
    records: List[Tuple[int, Dict[str, Any]]] = []
    total = len(utterances) if isinstance(utterances, collections.abc.Sized) else None
    with tqdm.tqdm(total=total, disable=not progress, desc="evaluate", unit="utt") as bar:
        for padded_length, group in _group_by_bucket(_validated(utterances), buckets, batch_size):
            mixture, sources, lengths = _pad_batch(group, rows, padded_length)
            estimates = separate_fn(mixture, model_lengths(lengths, padded_length))
            if tuple(estimates.shape) != sources.shape:
                raise ValueError(f"separate_fn returned shape {tuple(estimates.shape)} for a "
                                 f"mixture batch {mixture.shape}; expected {sources.shape}")
            scores = jax.device_get(_score_batch(estimates, sources, mixture, lengths))
            if on_host:
                estimates = np.asarray(estimates, np.float32)
            for row, (position, utt_id, utt_mixture, utt_sources) in enumerate(group):
                length = utt_mixture.shape[0]
                permutation = scores.permutation[row]
                record: Dict[str, Any] = {
                    "id": utt_id,
                    "length": length,
                    "si_snr": float(scores.si_snr[row]),
                    "si_snri": float(scores.si_snri[row]),
                    "permutation": [int(p) for p in permutation],
                }
                if on_host:
                    record.update(_host_scores(
                        estimates[row, permutation, :length], utt_sources, utt_mixture,
                        compute_sdr=compute_sdr, perceptual=perceptual, sample_rate=sample_rate,
                        sdr_filter_length=sdr_filter_length))
                records.append((position, record))
            bar.update(len(group))
    records.sort(key=lambda item: item[0])
    ordered_records = [record for _, record in records]
    return EvaluationResult(ordered_records, summarize(ordered_records))
