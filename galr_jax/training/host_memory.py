"""Host allocator settings that keep XLA's CPU buffers mapped from one call to the next.

XLA on CPU mallocs the temporaries and outputs of every call of a compiled function
and frees them when the call ends. With glibc's defaults those buffers come from
fresh ``mmap`` pages whenever they are large, or whenever one of XLA's worker threads
allocates them (a thread arena cannot hold a block above 64 MB), and go back to the
kernel on ``free``. Each call then page-faults its buffers in anew, and the kernel
zeroes them: gigabytes per train step (XLA's peak estimate for galr_1.5m at 4 s is
3.7 GB). With the settings below that step took 3.3 s instead of 4.9 s (docs/benchmarks.md).

The settings: one arena (every thread allocates from the main heap), no ``mmap``
for any size, and no trimming, so freed memory stays in the process. The resident
set then stays at its high-water mark. A training process reaches that mark on
every step anyway. ``train.py`` applies the settings when JAX computes on the CPU
(:func:`keep_freed_memory_on_cpu`; on a GPU or TPU the host holds no step buffers, so
they would only keep memory), and so do the CPU training benchmarks. Inference does
not: separating a recording was no faster with them, and over an hour of chunks the
heap grew by 680 MB.

Only glibc has these knobs; elsewhere (macOS, musl) this does nothing. Set
``GALR_JAX_SYSTEM_MALLOC=1`` to keep the system defaults.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os

OPT_OUT_VARIABLE = "GALR_JAX_SYSTEM_MALLOC"

# mallopt(3) parameter numbers, from glibc's <malloc.h>.
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8

_SETTINGS = (
    (_M_ARENA_MAX, 1),
    # The largest threshold glibc accepts on 64-bit (4 * 1024 * 1024 * sizeof(long));
    # setting it also stops glibc from moving the threshold by itself.
    (_M_MMAP_THRESHOLD, 32 * 1024 * 1024),
    (_M_MMAP_MAX, 0),
    (_M_TRIM_THRESHOLD, -1),  # mallopt(3): -1 disables trimming
)

_log = logging.getLogger(__name__)
_applied = False


def keep_freed_memory() -> bool:
    """Applies the settings above to this process; returns whether they are in effect.

    Call it before JAX runs its first computation: the arena limit holds for threads
    that allocate for the first time after it, and XLA starts its worker threads with
    the backend. Calling it again is harmless.
    """
    global _applied
    if _applied:
        return True
    if os.environ.get(OPT_OUT_VARIABLE, "") not in ("", "0"):
        return False
    name = ctypes.util.find_library("c")
    try:
        mallopt = ctypes.CDLL(name).mallopt
    except (OSError, AttributeError, TypeError):  # no libc found, or no mallopt in it
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    _applied = all(mallopt(parameter, value) == 1
                   for parameter, value in _SETTINGS)
    _log.debug("glibc malloc tuned for XLA's per-call buffers: %s", _applied)
    return _applied


def keep_freed_memory_on_cpu() -> bool:
    """:func:`keep_freed_memory` if JAX's default backend is the CPU; returns whether
    the settings are in effect.

    It starts JAX's backends to ask, so call it after ``jax.distributed.initialize``
    (which must come first) and before the first computation. Starting the backend
    allocates in the calling thread only; XLA's worker threads allocate when the
    first computation runs, under the settings (``tests/test_host_memory.py`` checks
    this order).
    """
    import jax  # here, not above: importing this module must not start JAX

    backend = jax.default_backend()
    if backend != "cpu":
        _log.debug("glibc malloc left at its defaults: JAX computes on %s", backend)
        return False
    return keep_freed_memory()
