"""Log settings of the command-line programs; importing any ``galr_jax`` module sets none.

:func:`configure_logging` is called by the programs' ``main`` functions (``train.py``,
``eval.py``, ``galr-separate``, ``galr-convert``) and by nothing else, so that a
library user's process keeps its own logging and ``sys.unraisablehook``. It

* sets the level of the ``absl`` logger, through which Orbax reports every file it
  reads or writes;
* filters Orbax's reports of checkpoint saves: the warning that a save carries no
  metrics, and the tracebacks of its threads after a failed save (the failure
  reaches the user as one :class:`galr_jax.training.checkpoints.CheckpointError` line);
* silences the "Event loop is closed" errors of TensorStore writes that finish after
  a failed save was torn down, which Python would print as unraisable exceptions.

The filters match Orbax's message texts (orbax-checkpoint 0.12); a changed text only
lets that message through again.

This module does not import JAX, so a program may call it before JAX starts.
"""

from __future__ import annotations

import logging
import os
import sys
import traceback

_installed = False


class _NoUnrankedSaveWarning(logging.Filter):
    """Drops Orbax's warning for saves without metrics.

    Only validation steps carry ``val_si_snri``; the steps saved in between are meant
    to be kept by recency alone, so the warning would fire at every such save.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return "did not provide metrics" not in record.getMessage()


class _OneLineSaveErrors(logging.Filter):
    """Keeps Orbax's log lines about a failed asynchronous save but drops their tracebacks.

    The failure reaches the user as :class:`CheckpointError` at the next save or wait,
    naming the folder, the error and the last complete step; the tracebacks of Orbax's
    save threads (five per failed save) only added screenfuls of its internals before it.
    """

    # The messages Orbax logs with a traceback when a background write fails.
    MESSAGES = ("_SignalingThread.run() raised an exception",
                "in background save thread", "Save Finalize thread")

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and any(m in record.getMessage() for m in self.MESSAGES):
            record.exc_info = record.exc_text = None
        return True


class _NoUnretrievedSaveErrors(logging.Filter):
    """Drops asyncio's "exception was never retrieved" reports of Orbax's write futures.

    After a failed save, every array write that failed with it is reported again, with
    its traceback, when its future is garbage-collected (often after the run's own
    error message); the error itself is in that message already.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if "exception was never retrieved" not in record.getMessage() or not record.exc_info:
            return True
        frames = traceback.extract_tb(record.exc_info[2])
        return not any(f"{os.sep}orbax{os.sep}" in frame.filename for frame in frames)


def _is_late_write_callback(unraisable) -> bool:
    """A TensorStore write completing after Orbax closed the event loop of a failed save."""
    if not (isinstance(unraisable.exc_value, RuntimeError)
            and str(unraisable.exc_value) == "Event loop is closed"):
        return False
    frames = traceback.extract_tb(unraisable.exc_traceback)
    return any(frame.name == "call_soon_threadsafe" for frame in frames)


def _install_unraisable_filter() -> None:
    """Silences :func:`_is_late_write_callback` errors (dozens per failed save, each with
    a traceback); every other unraisable error still goes to the hook installed before."""
    previous = sys.unraisablehook

    def hook(unraisable):
        if not _is_late_write_callback(unraisable):
            previous(unraisable)

    sys.unraisablehook = hook


def configure_logging(absl_level: int = logging.WARNING) -> None:
    """Sets up a command line's logging as the module docstring says.

    Args:
      absl_level: level of the ``absl`` logger: ``logging.WARNING`` for training (its
        own saves), ``logging.ERROR`` for the programs that only read checkpoints.

    The filters and the hook are installed once per process however often it is called.
    """
    global _installed
    logging.getLogger("absl").setLevel(absl_level)
    if _installed:
        return
    _installed = True
    logging.getLogger("absl").addFilter(_NoUnrankedSaveWarning())
    logging.getLogger("absl").addFilter(_OneLineSaveErrors())
    logging.getLogger("asyncio").addFilter(_NoUnretrievedSaveErrors())
    _install_unraisable_filter()
