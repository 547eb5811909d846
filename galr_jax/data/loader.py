"""Training batches of random fixed-length crops, and in-order reading of whole utterances.

Determinism: global step ``g`` lies in epoch ``g // steps_per_epoch`` at position
``g % steps_per_epoch``; the utterance order of an epoch is a permutation drawn from
``(seed, epoch)``, and every random choice for example ``j`` of a batch (crop
offset, dynamic-mixing partners, channels and gains) comes from its own generator
seeded by ``(seed, epoch, step in epoch, j)``. A batch is therefore a pure function
of the step: a run resumed at step ``s`` sees exactly the batches an uninterrupted
run sees from ``s``, and no iterator state needs to be checkpointed.

Multi-host: each process builds only its contiguous slice of the global batch
(examples ``[p * B/P, (p + 1) * B/P)``); concatenating the slices in process order
gives the single-process global batch.

Why not ``grain``: its value is checkpointable iterator state and multiprocess
workers. Batches here are already a pure function of the step (nothing to
checkpoint), and decoding short WAV crops is I/O-bound, so threads suffice; a small
prefetcher avoids another dependency whose sharding and shuffle semantics would
have to be matched to this contract.
"""

from __future__ import annotations

import dataclasses
import itertools
import threading
from typing import Iterator, Optional

import numpy as np

from galr_jax.data.audio import AudioError
from galr_jax.data.augment import Augmenter, augment_config
from galr_jax.data.datasets import BAD_FILE_POLICIES, DatasetError, MixtureDataset
from galr_jax.data.prefetch import OrderedPrefetcher

SHORT_POLICIES = ("pad", "drop")
# First entropy word of every generator, so the order and example streams never coincide.
_ORDER_STREAM = 0
_EXAMPLE_STREAM = 1
_ORDER_CACHE_SIZE = 4  # epoch permutations kept (workers share the current one)


def _db_to_gain(db: np.ndarray) -> np.ndarray:
    return np.power(10.0, db / 20.0)


def _check_bad_files(policy: str) -> None:
    if policy not in BAD_FILE_POLICIES:
        raise ValueError(f"bad_files: {policy!r} is not one of {', '.join(BAD_FILE_POLICIES)}")


class TrainLoader:
    """Batches of random crops: ``{'mixture': [B_local, T], 'sources': [B_local, C, T]}`` float32.

    Args:
      dataset: the training split.
      batch_size: the global batch B over all processes (divisible by
        ``process_count``).
      crop_samples: T.
      seed: non-negative base seed.
      short_utterances: ``'pad'`` zero-pads utterances shorter than T at the end;
        ``'drop'`` leaves them out. Either way they are counted (``num_short``).
      dynamic_mixing: build each example from the clean sources of C different
        utterances (one random source each, random crop, gain uniform in
        ``[-dynamic_mixing_gain_db, +dynamic_mixing_gain_db]`` dB) and sum them,
        instead of reading the stored mixture. Speaker identities are not known, so
        two sources may occasionally be the same speaker.
      dynamic_mixing_gain_db: see above.
      bad_files: a file that fails to decode (e.g. NaN samples) is, with ``'skip'``,
        replaced by the next utterance of the epoch order and listed in
        ``load_problems``; with ``'error'`` the AudioError reaches the consumer.
        The replacement is deterministic, so resumption stays exact.
      augmenter: with dynamic mixing, augments each example's sources (speed, band,
        reverberation, level) from a generator seeded by the example's own generator.
      num_workers, prefetch: decoding threads and batches decoded ahead.
      process_index, process_count: this process's slice of the global batch.
      steps_per_epoch: 0 for one pass over the usable utterances (remainder dropped);
        otherwise the epoch length in steps (passes beyond the data reshuffle).

    Attributes:
      steps_per_epoch: steps in one epoch.
      local_batch_size: B / process_count.
      num_short: utterances shorter than T (padded or dropped).
      num_usable: utterances crops are drawn from.
      load_problems: ``(file, problem)`` of files skipped while loading.
    """

    def __init__(self, dataset: MixtureDataset, *, batch_size: int, crop_samples: int, seed: int,
                 short_utterances: str = "pad", dynamic_mixing: bool = False,
                 dynamic_mixing_gain_db: float = 2.5, bad_files: str = "skip",
                 augmenter: Optional[Augmenter] = None,
                 num_workers: int = 2, prefetch: int = 4, process_index: int = 0,
                 process_count: int = 1, steps_per_epoch: int = 0):
        if short_utterances not in SHORT_POLICIES:
            raise ValueError(f"short_utterances: {short_utterances!r} is not one of "
                             f"{', '.join(SHORT_POLICIES)}")
        _check_bad_files(bad_files)
        if seed < 0 or crop_samples <= 0 or batch_size <= 0 or steps_per_epoch < 0:
            raise ValueError(f"need seed >= 0, crop_samples > 0, batch_size > 0 and "
                             f"steps_per_epoch >= 0; got {seed}, {crop_samples}, {batch_size}, "
                             f"{steps_per_epoch}")
        if not 0 <= process_index < process_count or batch_size % process_count:
            raise ValueError(f"batch_size {batch_size} must split evenly over {process_count} "
                             f"processes (process_index {process_index})")
        self.dataset = dataset
        self.batch_size = batch_size
        self.local_batch_size = batch_size // process_count
        self.crop_samples = crop_samples
        self.seed = seed
        self.dynamic_mixing = dynamic_mixing
        self.dynamic_mixing_gain_db = dynamic_mixing_gain_db
        self.bad_files = bad_files
        self.augmenter = augmenter if augmenter is not None and augmenter.config.enabled else None
        self.num_workers = num_workers
        self.prefetch = prefetch
        self.process_index = process_index
        self.num_sources = dataset.num_sources

        short = dataset.lengths < crop_samples
        self.num_short = int(short.sum())
        self.short_utterances = short_utterances
        self._usable = (np.flatnonzero(~short) if short_utterances == "drop"
                        else np.arange(len(dataset)))
        self.num_usable = len(self._usable)
        if self.num_usable < (self.num_sources if dynamic_mixing else 1):
            raise DatasetError(f"{dataset.name}: {self.num_usable} usable utterances "
                               f"({self.num_short} shorter than the {crop_samples}-sample crop "
                               "were dropped; data.short_utterances=pad keeps them)")
        if steps_per_epoch == 0 and self.num_usable < batch_size:
            raise DatasetError(f"{dataset.name}: {self.num_usable} usable utterances, fewer than "
                               f"one batch of {batch_size}")
        self.steps_per_epoch = steps_per_epoch or self.num_usable // batch_size
        self.load_problems: list[tuple[str, str]] = []
        self._lock = threading.Lock()
        self._orders: dict[tuple[int, int], np.ndarray] = {}
        self._open_iterators: list[OrderedPrefetcher] = []

    @property
    def pads(self) -> bool:
        """Whether batches can hold zero-padded rows, and so carry ``lengths`` (fixed for a
        run: the train step's input structure does not change between steps)."""
        return self.num_short > 0 and self.short_utterances == "pad"

    def summary(self) -> str:
        """One line for the log."""
        return (f"{self.dataset.name}: {self.num_usable} utterances for training, "
                f"{self.num_short} shorter than the crop ({self.short_utterances}), "
                f"{self.steps_per_epoch} steps per epoch of {self.batch_size}"
                + (", dynamic mixing" if self.dynamic_mixing else ""))

    def _order(self, epoch: int, pass_index: int) -> np.ndarray:
        """The usable utterances in the order of one pass of an epoch."""
        key = (epoch, pass_index)
        with self._lock:
            order = self._orders.get(key)
        if order is None:
            rng = np.random.default_rng([self.seed, _ORDER_STREAM, epoch, pass_index])
            order = self._usable[rng.permutation(self.num_usable)]
            with self._lock:
                if len(self._orders) >= _ORDER_CACHE_SIZE:
                    self._orders.pop(next(iter(self._orders)))
                self._orders[key] = order
        return order

    def _slot(self, epoch: int, position: int) -> tuple[np.ndarray, int]:
        pass_index, offset = divmod(position, self.num_usable)
        return self._order(epoch, pass_index), offset

    def _record(self, error: AudioError) -> None:
        if self.bad_files == "error":
            raise error
        with self._lock:
            self.load_problems.append((error.path, error.problem))

    def _crop_window(self, rng: np.random.Generator, utterance: int,
                     frames: Optional[int] = None) -> tuple[int, int]:
        frames = frames or self.crop_samples
        length = int(self.dataset.lengths[utterance])
        if length <= frames:
            return 0, length
        return int(rng.integers(0, length - frames + 1)), frames

    def _fit(self, signal: np.ndarray) -> np.ndarray:
        """Zero-pads the time axis (last) at the end to T."""
        missing = self.crop_samples - signal.shape[-1]
        if missing <= 0:
            return signal
        return np.pad(signal, [(0, 0)] * (signal.ndim - 1) + [(0, missing)])

    def _stored_example(self, rng, order, offset) -> tuple[np.ndarray, np.ndarray, int]:
        for attempt in range(self.num_usable):
            utterance = int(order[(offset + attempt) % self.num_usable])
            start, frames = self._crop_window(rng, utterance)
            try:
                mixture, sources = self.dataset.load(utterance, start, frames)
            except AudioError as e:
                self._record(e)
                continue
            return self._fit(mixture), self._fit(sources), mixture.shape[-1]
        raise DatasetError(f"{self.dataset.name}: no utterance could be loaded")

    def _mixed_example(self, rng, order, offset) -> tuple[np.ndarray, np.ndarray, int]:
        first = int(order[offset])
        # Partners: distinct positions among the usable utterances other than `first`.
        skip = int(np.searchsorted(self._usable, first))
        others = rng.choice(self.num_usable - 1, self.num_sources - 1, replace=False)
        chosen = [first] + [int(self._usable[o + (o >= skip)]) for o in others]
        gains = _db_to_gain(rng.uniform(-self.dynamic_mixing_gain_db,
                                        self.dynamic_mixing_gain_db, self.num_sources))
        if self.augmenter is None:
            crops = [self._mixed_source(rng, chosen, slot) for slot in range(self.num_sources)]
        else:
            # Its own generator, seeded from the example's: a pure function of the step.
            augment_rng = np.random.default_rng(int(rng.integers(2 ** 63)))
            factors = self.augmenter.speed_factors(augment_rng)
            crops = [self._mixed_source(rng, chosen, slot,
                                        self.augmenter.frames_to_read(self.crop_samples, f))
                     for slot, f in enumerate(factors)]
            crops, level = self.augmenter.apply(augment_rng, crops, factors)
            crops = [crop[:self.crop_samples] for crop in crops]
            gains = gains * level
        sources = np.stack([self._fit(crop) * np.float32(gain)
                            for crop, gain in zip(crops, gains)]).astype(np.float32)
        return sources.sum(axis=0), sources, max(crop.shape[-1] for crop in crops)

    def _mixed_source(self, rng, chosen: list[int], slot: int,
                      frames: Optional[int] = None) -> np.ndarray:
        """A crop of one random clean source of ``chosen[slot]``, or of a replacement."""
        position = int(np.searchsorted(self._usable, chosen[slot]))
        for attempt in range(self.num_usable):
            utterance = int(self._usable[(position + attempt) % self.num_usable])
            if attempt and utterance in chosen:
                continue
            channel = int(rng.integers(self.num_sources))
            start, count = self._crop_window(rng, utterance, frames)
            try:
                source = self.dataset.load_source(utterance, channel, start, count)
            except AudioError as e:
                self._record(e)
                continue
            chosen[slot] = utterance
            return source
        raise DatasetError(f"{self.dataset.name}: no source could be loaded")

    def batch_indices(self, step: int) -> list[tuple[int, int, int]]:
        """``(epoch, step in epoch, j)`` of this process's examples at global ``step``."""
        epoch, in_epoch = divmod(step, self.steps_per_epoch)
        first = self.process_index * self.local_batch_size
        return [(epoch, in_epoch, j) for j in range(first, first + self.local_batch_size)]

    def example(self, epoch: int, in_epoch: int, j: int) -> tuple[np.ndarray, np.ndarray, int]:
        """Example ``j`` of the global batch at ``(epoch, in_epoch)``: ``([T], [C, T],
        length)``, zero-padded to T past ``length`` (an utterance shorter than the crop)."""
        rng = np.random.default_rng([self.seed, _EXAMPLE_STREAM, epoch, in_epoch, j])
        order, offset = self._slot(epoch, in_epoch * self.batch_size + j)
        if self.dynamic_mixing:
            return self._mixed_example(rng, order, offset)
        return self._stored_example(rng, order, offset)

    def batch_at(self, step: int) -> dict[str, np.ndarray]:
        """This process's slice of the global batch at ``step`` (decoded synchronously).

        Returns:
          ``{'mixture': [B_local, T], 'sources': [B_local, C, T]}`` float32; where the
          split has utterances shorter than the crop (padded, :attr:`pads`), also
          ``'lengths': [B_local]`` int32, each row's samples before its zero padding (the
          model and the loss ignore the padding).
        """
        if step < 0:
            raise ValueError(f"step must be >= 0, got {step}")
        examples = [self.example(*key) for key in self.batch_indices(step)]
        batch = {"mixture": np.stack([m for m, _, _ in examples]).astype(np.float32),
                 "sources": np.stack([s for _, s, _ in examples]).astype(np.float32)}
        if self.pads:
            batch["lengths"] = np.array([n for _, _, n in examples], np.int32)
        return batch

    def iterate(self, start_step: int = 0,
                num_steps: Optional[int] = None) -> OrderedPrefetcher[dict[str, np.ndarray]]:
        """Batches from global step ``start_step`` on, decoded ahead in worker threads.

        Args:
          start_step: the first global step (the checkpointed step on resumption).
          num_steps: how many batches; None for an endless stream.

        Returns:
          An iterator that is also a context manager; close it (or this loader) to
          stop its threads.
        """
        steps = (range(start_step, start_step + num_steps) if num_steps is not None
                 else itertools.count(start_step))
        iterator = OrderedPrefetcher(self.batch_at, steps, num_workers=self.num_workers,
                                     depth=self.prefetch)
        self._open_iterators = [i for i in self._open_iterators if not i.closed] + [iterator]
        return iterator

    def close(self) -> None:
        """Stops the threads of every iterator this loader started."""
        for iterator in self._open_iterators:
            iterator.close()
        self._open_iterators.clear()

    def __enter__(self) -> "TrainLoader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def make_train_loader(config, dataset: MixtureDataset, *, process_index: int = 0,
                      process_count: int = 1) -> TrainLoader:
    """A :class:`TrainLoader` set up from a :class:`galr_jax.config.Config`."""
    data, train = config.data, config.train
    return TrainLoader(
        dataset, batch_size=train.batch_size,
        crop_samples=int(round(data.crop_seconds * data.sample_rate)), seed=train.seed,
        short_utterances=data.short_utterances, dynamic_mixing=data.dynamic_mixing,
        dynamic_mixing_gain_db=data.dynamic_mixing_gain_db, bad_files=data.bad_files,
        augmenter=Augmenter(augment_config(data), sample_rate=data.sample_rate,
                            num_sources=dataset.num_sources, seed=train.seed),
        num_workers=data.num_workers, prefetch=data.prefetch, process_index=process_index,
        process_count=process_count, steps_per_epoch=train.steps_per_epoch)


@dataclasses.dataclass(frozen=True)
class Utterance:
    """A whole mixture for validation or evaluation.

    Attributes:
      index: position in the dataset.
      id: the mixture's id.
      mixture: ``[T]`` float32.
      sources: ``[C, T]`` float32.
    """

    index: int
    id: str
    mixture: np.ndarray
    sources: np.ndarray


class UtteranceReader:
    """Whole utterances of a split in dataset order, decoded ahead in threads.

    Process ``p`` of ``P`` reads utterances ``p, p + P, p + 2P, ...``. With
    ``bad_files='skip'`` an utterance that fails to decode is left out and listed in
    ``problems``; with ``'error'`` its AudioError reaches the consumer. Iterate it
    once; use as a context manager or call :meth:`close`.

    Args:
      dataset: the split.
      num_workers, prefetch: decoding threads and utterances decoded ahead.
      bad_files: ``'skip'`` or ``'error'``.
      process_index, process_count: this process's share.
      limit: read only the first ``limit`` utterances of the split (before sharing
        among processes); None for all.
    """

    def __init__(self, dataset: MixtureDataset, *, num_workers: int = 2, prefetch: int = 4,
                 bad_files: str = "skip", process_index: int = 0, process_count: int = 1,
                 limit: Optional[int] = None):
        _check_bad_files(bad_files)
        self.dataset = dataset
        self.bad_files = bad_files
        self.problems: list[tuple[str, str]] = []
        end = len(dataset) if limit is None else min(limit, len(dataset))
        self._prefetcher = OrderedPrefetcher(self._read, range(process_index, end, process_count),
                                             num_workers=num_workers, depth=prefetch)

    def _read(self, index: int) -> Utterance | tuple[str, str]:
        """The utterance, or ``(file, problem)`` if it failed to decode (``'skip'`` policy)."""
        try:
            mixture, sources = self.dataset.load(index)
        except AudioError as e:
            if self.bad_files == "error":
                raise
            return e.path, e.problem
        return Utterance(index, self.dataset.entries[index].id, mixture, sources)

    def __iter__(self) -> Iterator[Utterance]:
        for result in self._prefetcher:
            if isinstance(result, Utterance):
                yield result
            else:
                self.problems.append(result)

    def close(self) -> None:
        self._prefetcher.close()

    def __enter__(self) -> "UtteranceReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
