"""Training batches of random fixed-length crops (a grain pipeline), and in-order reading
of whole utterances.

The training pipeline is built from grain (the JAX ecosystem's loader, as MaxText
uses) and keeps one contract: **the batch of global step ``s`` is a pure function of
``(seed, s)``**, whoever reads it, with how many threads or processes, on how many hosts.

* Order: each pass over the usable utterances is its own permutation, drawn by a
  generator seeded by ``(seed, epoch, pass in the epoch)`` (:class:`PassOrder`), the
  order of the loader before grain, so a run's batches did not change with the move
  (the demo recipe's 8 dB in 20 minutes depends on its path: docs/demo-recipe.md).
  Epoch ``e`` holds ``steps_per_epoch * B`` examples and starts a new pass (the
  remainder of the last one is dropped); a longer epoch (``steps_per_epoch`` set) runs
  several passes.
* Examples: global example ``x = s * B + j`` (row ``j`` of step ``s``) is made by a
  grain transformation (:class:`StoredCrop` or :class:`DynamicMix`, the latter with the
  :class:`~galr_jax.data.augment.Augmenter`) whose every random choice comes from a
  generator seeded by ``(seed, x)``, so no random state passes between examples.
* Per-host sharding: each process reads its contiguous slice of every global batch
  (rows ``[p * B/P, (p + 1) * B/P)``), so concatenating the slices in process order
  gives the single-process batch. The examples are laid out process-major within each
  step, which turns that slice into grain's usual ``ds[shard_index::shard_count]``.
* Batches: ``MapDataset.batch``; grain prefetches them (``data.prefetch`` ahead) and,
  with ``data.workers > 0``, computes them in that many worker processes; the rows of
  one batch decode in ``data.num_workers`` threads (decoding and resampling release
  the GIL). The batch order does not depend on either count.
* State: the iterator's grain state (the next batch's index) goes into each checkpoint
  (:class:`galr_jax.training.checkpointer.TrainCheckpointer`); restoring it puts the
  iterator back at the step, which, batches being a pure function of the step, is
  also where the step alone would put it.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import logging
import math
import sys
import threading
from typing import Any, Callable, Iterator, Optional

import grain
import numpy as np

from galr_jax.data.audio import AudioError
from galr_jax.data.augment import Augmenter, augment_config
from galr_jax.data.datasets import BAD_FILE_POLICIES, DatasetError, MixtureDataset
from galr_jax.data.prefetch import OrderedPrefetcher

SHORT_POLICIES = ("pad", "drop")
log = logging.getLogger(__name__)
# First entropy word of the order's and of every example's generator, so that no two
# streams seeded from the same run seed coincide (the augmenter's rooms use 7).
_ORDER_STREAM = 0
_EXAMPLE_STREAM = 1
_ORDER_CACHE_SIZE = 4  # pass permutations kept per process (threads share the current one)
# An endless run still needs a length for grain's MapDataset; steps beyond it never come.
_ENDLESS = sys.maxsize
# Batches grain's last prefetch thread (which runs the device placement) keeps ready
# ahead of the step that takes them: the transfer of step N + 1's batch overlaps step N,
# as flax.jax_utils.prefetch_to_device(size=2).
DEVICE_AHEAD = 1
THREAD_NAME = "galr-data"

Problems = list[tuple[str, str]]


def _db_to_gain(db: np.ndarray) -> np.ndarray:
    return np.power(10.0, db / 20.0)


def _check_bad_files(policy: str) -> None:
    if policy not in BAD_FILE_POLICIES:
        raise ValueError(f"bad_files: {policy!r} is not one of {', '.join(BAD_FILE_POLICIES)}")


@dataclasses.dataclass
class _Example:
    """What every example transformation returns: ``[T]``, ``[C, T]``, samples before the
    zero padding, and the files it skipped (``(file, problem)``)."""

    mixture: np.ndarray
    sources: np.ndarray
    length: int
    problems: Problems


@functools.lru_cache(maxsize=_ORDER_CACHE_SIZE)
def _permutation(seed: int, size: int, epoch: int, pass_index: int) -> np.ndarray:
    return np.random.default_rng([seed, _ORDER_STREAM, epoch, pass_index]).permutation(size)


class PassOrder:
    """The usable utterances in their training order: ``order[q * n + i]`` is the ``i``-th
    utterance of pass ``q`` over the ``n`` usable ones (pass ``p`` of epoch ``e`` for
    ``q = e * passes_per_epoch + p``), each pass a permutation of its own.

    Random access, endless and picklable (grain's worker processes get a copy); each
    process keeps the last few permutations.
    """

    def __init__(self, usable: np.ndarray, seed: int, passes_per_epoch: int):
        self.usable = usable
        self.seed = seed
        self.passes_per_epoch = passes_per_epoch

    def __getitem__(self, index: int) -> int:
        q, i = divmod(int(index), len(self.usable))
        epoch, pass_index = divmod(q, self.passes_per_epoch)
        return int(self.usable[_permutation(self.seed, len(self.usable), epoch, pass_index)[i]])


class _ExampleBase(grain.transforms.Map):
    """Shared by the two example transformations: crops, padding and bad files.

    ``map(x)`` takes the global example index and returns an :class:`_Example`.
    Picklable (grain's worker processes receive a copy).
    """

    def __init__(self, dataset: MixtureDataset, usable: np.ndarray, *,
                 seed: int, crop_samples: int, batch_size: int, steps_per_epoch: int,
                 bad_files: str):
        self.dataset = dataset
        self.usable = usable
        self.seed = seed
        self.crop_samples = crop_samples
        self.batch_size = batch_size
        self.steps_per_epoch = steps_per_epoch
        self.bad_files = bad_files
        self.num_usable = len(usable)
        self.num_sources = dataset.num_sources
        self.passes_per_epoch = math.ceil(steps_per_epoch * batch_size / self.num_usable)
        self.order = PassOrder(usable, seed, self.passes_per_epoch)

    def slot(self, x: int) -> tuple[int, int]:
        """``(first index into the shuffled order of this pass, offset in the pass)`` of
        global example ``x``."""
        step, j = divmod(x, self.batch_size)
        epoch, in_epoch = divmod(step, self.steps_per_epoch)
        pass_in_epoch, offset = divmod(in_epoch * self.batch_size + j, self.num_usable)
        return (epoch * self.passes_per_epoch + pass_in_epoch) * self.num_usable, offset

    def rng(self, x: int) -> np.random.Generator:
        """The example's generator, seeded by the seed and the example's global index in
        the coordinates ``(epoch, step in epoch, row)`` of the earlier loader."""
        step, j = divmod(x, self.batch_size)
        epoch, in_epoch = divmod(step, self.steps_per_epoch)
        return np.random.default_rng([self.seed, _EXAMPLE_STREAM, epoch, in_epoch, j])

    def record(self, error: AudioError, problems: Problems) -> None:
        if self.bad_files == "error":
            raise error
        problems.append((error.path, error.problem))

    def crop_window(self, rng: np.random.Generator, utterance: int,
                    frames: Optional[int] = None) -> tuple[int, int]:
        frames = frames or self.crop_samples
        length = int(self.dataset.lengths[utterance])
        if length <= frames:
            return 0, length
        return int(rng.integers(0, length - frames + 1)), frames

    def fit(self, signal: np.ndarray) -> np.ndarray:
        """Zero-pads the time axis (last) at the end to T."""
        missing = self.crop_samples - signal.shape[-1]
        if missing <= 0:
            return signal
        return np.pad(signal, [(0, 0)] * (signal.ndim - 1) + [(0, missing)])


class StoredCrop(_ExampleBase):
    """A random crop of the stored mixture and sources of the utterance at the example's
    place in the shuffled order. A file that fails to decode is replaced by the next
    utterance of that order (deterministic, so resumption stays exact)."""

    def map(self, x: int) -> _Example:
        rng, problems = self.rng(x), []
        base, offset = self.slot(x)
        for attempt in range(self.num_usable):
            utterance = int(self.order[base + (offset + attempt) % self.num_usable])
            start, frames = self.crop_window(rng, utterance)
            try:
                mixture, sources = self.dataset.load(utterance, start, frames)
            except AudioError as e:
                self.record(e, problems)
                continue
            return _Example(self.fit(mixture), self.fit(sources), mixture.shape[-1], problems)
        raise DatasetError(f"{self.dataset.name}: no utterance could be loaded")


class DynamicMix(_ExampleBase):
    """Dynamic mixing: the clean sources of C different utterances (the one at the
    example's place in the shuffled order and C - 1 random partners), one random source
    channel and crop each, gain uniform in ``[-gain_db, +gain_db]`` dB, optionally
    augmented (speed, band, reverberation, level), summed into the mixture. Speaker
    identities are not known, so two sources may occasionally be the same speaker."""

    def __init__(self, *args, gain_db: float, augmenter: Optional[Augmenter], **kwargs):
        super().__init__(*args, **kwargs)
        self.gain_db = gain_db
        self.augmenter = augmenter

    def map(self, x: int) -> _Example:
        rng, problems = self.rng(x), []
        base, offset = self.slot(x)
        first = int(self.order[base + offset])
        # Partners: distinct positions among the usable utterances other than `first`.
        skip = int(np.searchsorted(self.usable, first))
        others = rng.choice(self.num_usable - 1, self.num_sources - 1, replace=False)
        chosen = [first] + [int(self.usable[o + (o >= skip)]) for o in others]
        gains = _db_to_gain(rng.uniform(-self.gain_db, self.gain_db, self.num_sources))
        if self.augmenter is None:
            crops = [self._source(rng, chosen, slot, problems) for slot in range(self.num_sources)]
        else:
            # Its own generator, seeded from the example's: still a pure function of x.
            augment_rng = np.random.default_rng(int(rng.integers(2 ** 63)))
            factors = self.augmenter.speed_factors(augment_rng)
            crops = [self._source(rng, chosen, slot, problems,
                                  self.augmenter.frames_to_read(self.crop_samples, f))
                     for slot, f in enumerate(factors)]
            crops, level = self.augmenter.apply(augment_rng, crops, factors)
            crops = [crop[:self.crop_samples] for crop in crops]
            gains = gains * level
        sources = np.stack([self.fit(crop) * np.float32(gain)
                            for crop, gain in zip(crops, gains)]).astype(np.float32)
        return _Example(sources.sum(axis=0), sources, max(c.shape[-1] for c in crops), problems)

    def _source(self, rng, chosen: list[int], slot: int, problems: Problems,
                frames: Optional[int] = None) -> np.ndarray:
        """A crop of one random clean source of ``chosen[slot]``, or of a replacement."""
        position = int(np.searchsorted(self.usable, chosen[slot]))
        for attempt in range(self.num_usable):
            utterance = int(self.usable[(position + attempt) % self.num_usable])
            if attempt and utterance in chosen:
                continue
            channel = int(rng.integers(self.num_sources))
            start, count = self.crop_window(rng, utterance, frames)
            try:
                source = self.dataset.load_source(utterance, channel, start, count)
            except AudioError as e:
                self.record(e, problems)
                continue
            chosen[slot] = utterance
            return source
        raise DatasetError(f"{self.dataset.name}: no source could be loaded")


@dataclasses.dataclass(frozen=True)
class _ProcessMajor(grain.transforms.Map):
    """Position in the process-major layout -> global example index: within a step,
    position ``m * P + p`` holds row ``p * B/P + m``, so that grain's sharding slice
    ``[p::P]`` is process p's contiguous rows of every step."""

    batch_size: int
    process_count: int

    def map(self, position: int) -> int:
        step, r = divmod(position, self.batch_size)
        m, p = divmod(r, self.process_count)
        return step * self.batch_size + p * (self.batch_size // self.process_count) + m


class _MakeBatch(grain.transforms.Map):
    """``[B_local]`` global example indices -> ``(batch, problems)``: each row made by the
    example transformation, in ``num_threads`` threads (created in whichever process runs
    it; grain pickles this object into its worker processes)."""

    def __init__(self, example: _ExampleBase, *, pads: bool, num_threads: int):
        self.example = example
        self.pads = pads
        self.num_threads = num_threads
        self._pool: Optional[concurrent.futures.ThreadPoolExecutor] = None
        self._closed = False
        self._lock = threading.Lock()

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k not in ("_pool", "_lock")}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state, _pool=None, _lock=threading.Lock())

    def _executor(self) -> Optional[concurrent.futures.ThreadPoolExecutor]:
        # After close, a batch that grain's reader thread still finishes (grain does not
        # wait for it) decodes without threads rather than starting new ones.
        with self._lock:
            if self._closed or not self.num_threads:
                return None
            if self._pool is None:
                self._pool = concurrent.futures.ThreadPoolExecutor(self.num_threads, THREAD_NAME)
            return self._pool

    def map(self, indices: np.ndarray) -> tuple[dict[str, np.ndarray], Problems]:
        keys = [int(x) for x in indices]
        pool = self._executor()
        examples = (list(pool.map(self.example.map, keys)) if pool is not None
                    else [self.example.map(x) for x in keys])
        batch = {"mixture": np.stack([e.mixture for e in examples]).astype(np.float32),
                 "sources": np.stack([e.sources for e in examples]).astype(np.float32)}
        if self.pads:
            batch["lengths"] = np.array([e.length for e in examples], np.int32)
        return batch, [p for e in examples for p in e.problems]

    def close(self) -> None:
        """Stops this process's threads (waits for running work)."""
        with self._lock:
            self._closed, pool, self._pool = True, self._pool, None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)


class _Positioned:
    """grain's batch iterator, started at any step without decoding the batches before it.

    grain positions an iterator by index only without worker processes or with one
    (``set_next_index``); with several, only its own saved state can. So the pipeline is
    built from the step it starts at (``first_step``), and the state this iterator
    reports, ``{first_step, next_step, workers, pipeline}``, carries that step beside
    grain's own state. Setting a state rebuilds the pipeline from its ``first_step`` and
    hands grain its state back; a state without one (:meth:`BatchIterator.move_to`), or
    from another number of worker processes (whose grain state has another structure),
    starts afresh at ``next_step``: batches being a pure function of the step, both give
    the same batches.
    """

    def __init__(self, build: Callable[[int], grain.DatasetIterator], workers: int,
                 put: Optional[Callable[[Any], Any]]):
        self._build = build
        self._workers = workers
        self._put = put
        self._first = self._next = 0
        self._iterator = build(0)

    def __next__(self) -> tuple[Any, Problems]:
        batch, problems = next(self._iterator)
        self._next += 1
        return (batch if self._put is None else self._put(batch)), problems

    def get_state(self) -> dict[str, Any]:
        return {"first_step": self._first, "next_step": self._next, "workers": self._workers,
                "pipeline": self._iterator.get_state()}

    def set_state(self, state: dict[str, Any]) -> None:
        fits = state.get("pipeline") is not None and state.get("workers") == self._workers
        if state.get("pipeline") is not None and not fits:
            log.info("the saved data iterator state is from %s worker processes, now %d: the "
                     "input starts afresh at step %d (the same batches)", state.get("workers"),
                     self._workers, state["next_step"])
        first = int(state["first_step"]) if fits else int(state["next_step"])
        self._iterator.close()
        self._iterator = self._build(first)
        if fits:
            self._iterator.set_state(state["pipeline"])
        self._first, self._next = first, int(state["next_step"])

    def close(self) -> None:
        self._iterator.close()


class BatchIterator:
    """Batches of one :meth:`TrainLoader.iterate` call: an iterator and a context manager.

    ``grain_iterator`` is a ``grain.DatasetIterator`` (grain's thread prefetch, which also
    runs the device placement ahead): its ``get_state()`` is the position after the
    batch last returned, which is what a checkpoint saves. An exception while making a
    batch reaches the consumer from ``next`` and closes the iterator.
    """

    def __init__(self, loader: "TrainLoader", positioned: _Positioned, make_batch: _MakeBatch):
        self._loader = loader
        self._positioned = positioned
        # Never 0: grain's checkpoint restore starts this thread, and one without a
        # buffer bound would race the consumer for the batches.
        self.grain_iterator = grain.experimental.ThreadPrefetchDatasetIterator(
            positioned, prefetch_buffer_size=DEVICE_AHEAD)
        self._make_batch = make_batch
        self.closed = False

    def __iter__(self) -> "BatchIterator":
        return self

    def __next__(self) -> Any:
        if self.closed:
            raise StopIteration
        try:
            batch, problems = next(self.grain_iterator)
        except BaseException:
            self.close()
            raise
        self._loader.load_problems.extend(problems)
        return batch

    def position(self) -> int:
        """The global step of the next batch."""
        return int(self.grain_iterator.get_state()["next_step"])

    def move_to(self, step: int) -> None:
        """Makes ``step`` the next batch (nothing is decoded to get there)."""
        self.grain_iterator.set_state({"first_step": step, "next_step": step, "pipeline": None})

    def close(self) -> None:
        """Stops grain's threads and processes and the decoding threads (idempotent)."""
        if self.closed:
            return
        self.closed = True
        try:
            self.grain_iterator.close()
            self._positioned.close()
        finally:
            self._make_batch.close()

    def __enter__(self) -> "BatchIterator":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _parse_absl_flags() -> None:
    """grain 0.2.18 reads one of its absl flags (worker profiling) when it starts worker
    processes, which fails in a program that never parsed absl flags (ours: argparse);
    marking them parsed leaves every flag at its default."""
    from absl import flags  # grain's dependency

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


class TrainLoader:
    """Batches of random crops: ``{'mixture': [B_local, T], 'sources': [B_local, C, T]}`` float32.

    Args:
      dataset: the training split.
      batch_size: the global batch B over all processes (divisible by
        ``process_count``).
      crop_samples: T.
      seed: base seed, 0 or more.
      short_utterances: ``'pad'`` zero-pads utterances shorter than T at the end;
        ``'drop'`` leaves them out. Either way they are counted (``num_short``).
      dynamic_mixing: build each example from the clean sources of C different
        utterances (:class:`DynamicMix`) instead of reading the stored mixture.
      dynamic_mixing_gain_db: each remixed source's gain is uniform in ``[-g, g]`` dB.
      bad_files: a file that fails to decode (e.g. NaN samples) is, with ``'skip'``,
        replaced by the next utterance of the epoch order and listed in
        ``load_problems`` when its batch is taken; with ``'error'`` the AudioError
        reaches the consumer. The replacement is deterministic, so resumption stays exact.
      augmenter: with dynamic mixing, augments each example's sources (speed, band,
        reverberation, level) from a generator seeded by the example's own generator.
      num_workers: threads decoding the rows of a batch; 0 decodes them in the thread
        that makes the batch.
      prefetch: batches grain makes ahead of the consumer (in each worker process with
        ``workers > 0``).
      workers: grain worker processes making batches (0: none, the batches are made in
        this process).
      process_index, process_count: this process's slice of the global batch (in
        training, ``grain.sharding.ShardByJaxProcess``).
      steps_per_epoch: 0 for one pass over the usable utterances (remainder dropped);
        otherwise the epoch length in steps (passes beyond the data reshuffle).

    Attributes:
      steps_per_epoch: steps in one epoch.
      local_batch_size: B / process_count.
      num_short: utterances shorter than T (padded or dropped).
      num_usable: utterances crops are drawn from.
      load_problems: ``(file, problem)`` of files skipped in the batches taken so far.
    """

    def __init__(self, dataset: MixtureDataset, *, batch_size: int, crop_samples: int, seed: int,
                 short_utterances: str = "pad", dynamic_mixing: bool = False,
                 dynamic_mixing_gain_db: float = 2.5, bad_files: str = "skip",
                 augmenter: Optional[Augmenter] = None,
                 num_workers: int = 2, prefetch: int = 4, workers: int = 0, process_index: int = 0,
                 process_count: int = 1, steps_per_epoch: int = 0):
        if short_utterances not in SHORT_POLICIES:
            raise ValueError(f"short_utterances: {short_utterances!r} is not one of "
                             f"{', '.join(SHORT_POLICIES)}")
        _check_bad_files(bad_files)
        if seed < 0 or crop_samples <= 0 or batch_size <= 0 \
                or steps_per_epoch < 0:
            raise ValueError(f"need seed >= 0, crop_samples > 0, batch_size > 0 and "
                             f"steps_per_epoch >= 0; got {seed}, {crop_samples}, {batch_size}, "
                             f"{steps_per_epoch}")
        if not 0 <= process_index < process_count or batch_size % process_count:
            raise ValueError(f"batch_size {batch_size} must split evenly over {process_count} "
                             f"processes (process_index {process_index})")
        if num_workers < 0 or prefetch < 1 or workers < 0:
            raise ValueError(f"need num_workers >= 0, prefetch >= 1 and workers >= 0; got "
                             f"{num_workers}, {prefetch}, {workers}")
        self.dataset = dataset
        self.batch_size = batch_size
        self.local_batch_size = batch_size // process_count
        self.crop_samples = crop_samples
        self.seed = seed
        self.dynamic_mixing = dynamic_mixing
        self.bad_files = bad_files
        self.num_workers = num_workers
        self.prefetch = prefetch
        self.workers = workers
        self.process_index = process_index
        self.process_count = process_count
        self.num_sources = dataset.num_sources

        short = dataset.lengths < crop_samples
        self.num_short = int(short.sum())
        self.short_utterances = short_utterances
        usable = (np.flatnonzero(~short) if short_utterances == "drop"
                  else np.arange(len(dataset)))
        self.num_usable = len(usable)
        if self.num_usable < (self.num_sources if dynamic_mixing else 1):
            raise DatasetError(f"{dataset.name}: {self.num_usable} usable utterances "
                               f"({self.num_short} shorter than the {crop_samples}-sample crop "
                               "were dropped; data.short_utterances=pad keeps them)")
        if steps_per_epoch == 0 and self.num_usable < batch_size:
            raise DatasetError(f"{dataset.name}: {self.num_usable} usable utterances, fewer than "
                               f"one batch of {batch_size}")
        self.steps_per_epoch = steps_per_epoch or self.num_usable // batch_size
        self.load_problems: Problems = []

        common = dict(seed=seed, crop_samples=crop_samples, batch_size=batch_size,
                      steps_per_epoch=self.steps_per_epoch, bad_files=bad_files)
        if dynamic_mixing:
            augmenter = augmenter if augmenter is not None and augmenter.config.enabled else None
            self.example: _ExampleBase = DynamicMix(dataset, usable, **common,
                                                    gain_db=dynamic_mixing_gain_db,
                                                    augmenter=augmenter)
        else:
            self.example = StoredCrop(dataset, usable, **common)
        self._open_iterators: list[BatchIterator] = []

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

    def example_indices(self, num_steps: int = _ENDLESS) -> grain.MapDataset:
        """This process's global example indices, in order, as a grain MapDataset
        (``local_batch_size`` per step)."""
        total = num_steps * self.batch_size if num_steps != _ENDLESS else _ENDLESS
        shard = grain.sharding.ShardOptions(self.process_index, self.process_count)
        layout = _ProcessMajor(self.batch_size, self.process_count)
        positions = grain.MapDataset.range(total).map(layout)
        return positions[shard.shard_index::shard.shard_count]

    def _batches(self, num_steps: int, num_threads: int) -> tuple[grain.MapDataset, _MakeBatch]:
        make_batch = _MakeBatch(self.example, pads=self.pads, num_threads=num_threads)
        indices = self.example_indices(num_steps).batch(self.local_batch_size)
        return indices.map(make_batch), make_batch

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
        batches, _ = self._batches(step + 1, num_threads=0)
        batch, problems = batches[step]
        self.load_problems.extend(problems)
        return batch

    def iterate(self, start_step: int = 0, num_steps: Optional[int] = None, *,
                put: Optional[Callable[[dict[str, np.ndarray]], Any]] = None) -> BatchIterator:
        """Batches from global step ``start_step`` on, made ahead by grain.

        Args:
          start_step: the first global step (the checkpointed step on resumption).
          num_steps: how many batches; None for an endless stream.
          put: applied to each batch ahead of the consumer (``DEVICE_AHEAD`` batches, in
            a grain thread), e.g. the train step's device placement: the transfer of the
            next batch then overlaps the current step.

        Returns:
          A :class:`BatchIterator`; close it (or this loader) to stop its threads and
          processes.
        """
        end = _ENDLESS if num_steps is None else start_step + num_steps
        batches, make_batch = self._batches(end, self.num_workers)
        # One grain thread makes batches ahead, in order; the rows of each decode in the
        # batch's own threads (_MakeBatch).
        read = grain.ReadOptions(num_threads=1, prefetch_buffer_size=self.prefetch)
        if self.workers:
            _parse_absl_flags()
            if self.dynamic_mixing and self.example.augmenter is not None \
                    and self.example.augmenter.config.reverb_prob:
                self.example.augmenter.rooms()  # once here, not once per worker process
        processes = grain.MultiprocessingOptions(num_workers=self.workers,
                                                 per_worker_buffer_size=self.prefetch)

        def build(first_step: int) -> grain.DatasetIterator:
            pipeline = batches[first_step:].to_iter_dataset(read)
            if self.workers:
                pipeline = pipeline.mp_prefetch(processes)
            return iter(pipeline)

        iterator = BatchIterator(self, _Positioned(build, self.workers, put), make_batch)
        if start_step:
            iterator.move_to(start_step)
        self._open_iterators = [i for i in self._open_iterators if not i.closed] + [iterator]
        return iterator

    def close(self) -> None:
        """Stops the threads and processes of every iterator this loader started."""
        for iterator in self._open_iterators:
            iterator.close()
        self._open_iterators.clear()

    def __enter__(self) -> "TrainLoader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def make_train_loader(config, dataset: MixtureDataset, *, process_index: int = 0,
                      process_count: int = 1,
                      shard: Optional[grain.sharding.ShardOptions] = None) -> TrainLoader:
    """A :class:`TrainLoader` set up from a :class:`galr_jax.config.Config`; ``shard``
    (e.g. ``grain.sharding.ShardByJaxProcess()``) overrides the process index and count."""
    data, train = config.data, config.train
    if shard is not None:
        process_index, process_count = shard.shard_index, shard.shard_count
    return TrainLoader(
        dataset, batch_size=train.batch_size,
        crop_samples=int(round(data.crop_seconds * data.sample_rate)), seed=train.seed,
        short_utterances=data.short_utterances, dynamic_mixing=data.dynamic_mixing,
        dynamic_mixing_gain_db=data.dynamic_mixing_gain_db, bad_files=data.bad_files,
        augmenter=Augmenter(augment_config(data), sample_rate=data.sample_rate,
                            num_sources=dataset.num_sources, seed=train.seed),
        num_workers=data.num_workers, prefetch=data.prefetch, workers=data.workers,
        process_index=process_index,
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
