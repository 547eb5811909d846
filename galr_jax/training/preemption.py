"""SIGTERM (preemption notice) handling: finish the step, save, exit cleanly.

Cloud schedulers and TPU pods send SIGTERM some seconds before taking a machine
away. The handler only records the request; the training loop polls it between
steps, saves a checkpoint synchronously and returns, and ``train.py`` exits 0 so the
scheduler restarts the job, which then resumes from that checkpoint.

With several processes every host must stop at the same step, so the decision goes
through JAX's preemption sync point: ``jax.distributed`` watches for SIGTERM itself
and its coordination service tells every process once any of them was notified.
No Python handler is installed then, as it would hide the signal from that service.
A single process uses its own signal flag.
"""

from __future__ import annotations

import logging
import signal
import threading
from typing import Optional

import jax
from jax.experimental import multihost_utils

log = logging.getLogger(__name__)


class PreemptionWatcher:
    """Context manager that turns SIGTERM into a flag polled by the training loop.

    The previous handler is restored on exit. Only the main thread can install
    signal handlers; elsewhere (e.g. a notebook thread) the watcher stays inert.
    """

    def __init__(self, signum: int = signal.SIGTERM):
        self._signum = signum
        self._requested = threading.Event()
        self._previous: Optional[object] = None

    def _handle(self, signum, frame) -> None:
        log.warning("received signal %d: saving a checkpoint after the current step", signum)
        self._requested.set()

    def __enter__(self) -> "PreemptionWatcher":
        if jax.process_count() == 1 and threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(self._signum, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(self._signum, self._previous)
            self._previous = None

    def should_stop(self, step: int) -> bool:
        """True once a stop was requested; on several processes all agree at ``step``."""
        if jax.process_count() > 1:
            return multihost_utils.reached_preemption_sync_point(step)
        return self._requested.is_set()
