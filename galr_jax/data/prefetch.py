"""Ordered, bounded background decoding of whole utterances with threads.

Validation and evaluation read each utterance of a split once, in order
(:class:`galr_jax.data.loader.UtteranceReader`); decoding audio is I/O plus a little
numpy, both of which release the GIL, so plain threads suffice there. Training batches
come from a grain pipeline instead (:class:`galr_jax.data.loader.TrainLoader`), which
also places them on the devices ahead of the step.
"""

from __future__ import annotations

import collections
import concurrent.futures
from typing import Callable, Generic, Iterable, Iterator, TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")


class OrderedPrefetcher(Generic[Result]):
    """Applies ``fn`` to ``items`` in worker threads and yields the results in order.

    At most ``depth`` results are computed ahead of the consumer, so memory stays
    bounded however slow the consumer is. An exception raised by ``fn`` in a worker
    is re-raised in the consumer (by ``next``), after which the prefetcher is closed.
    Use as a context manager, or call :meth:`close`, to stop the workers: pending
    work is cancelled and running work is waited for.

    Args:
      fn: ``item -> result``.
      items: the inputs, consumed lazily (may be infinite).
      num_workers: threads; 0 runs ``fn`` in the consumer's thread (no prefetch).
      depth: results kept in flight; at least ``num_workers`` so no thread idles.
    """

    def __init__(self, fn: Callable[[Item], Result], items: Iterable[Item], *, num_workers: int,
                 depth: int):
        if num_workers < 0 or depth < 1:
            raise ValueError(f"num_workers must be >= 0 and depth >= 1, got {num_workers}, {depth}")
        self._fn = fn
        self._items = iter(items)
        self._depth = max(depth, num_workers)
        self._pool = (concurrent.futures.ThreadPoolExecutor(num_workers, "galr-data")
                      if num_workers else None)
        self._pending: collections.deque = collections.deque()
        self._closed = False

    def __iter__(self) -> Iterator[Result]:
        return self

    def _fill(self) -> None:
        while len(self._pending) < self._depth:
            try:
                item = next(self._items)
            except StopIteration:
                return
            self._pending.append(self._pool.submit(self._fn, item))

    def __next__(self) -> Result:
        if self._closed:
            raise StopIteration
        if self._pool is None:
            return self._fn(next(self._items))
        self._fill()
        if not self._pending:
            self.close()
            raise StopIteration
        future = self._pending.popleft()
        try:
            result = future.result()
        except BaseException:
            self.close()
            raise
        self._fill()
        return result

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        """Cancels queued work, waits for running work and stops the threads (idempotent)."""
        if self._closed:
            return
        self._closed = True
        for future in self._pending:
            future.cancel()
        self._pending.clear()
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> "OrderedPrefetcher[Result]":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
