"""Timing, peak-memory and machine-peak measurements shared by both frameworks."""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import os
import statistics
import time
from typing import Callable, Mapping, Optional

import jax
import jax.numpy as jnp

_STATUS = "/proc/self/status"
_CLEAR_REFS = "/proc/self/clear_refs"
_RESET_PEAK_RSS = "5"  # written to clear_refs: resets VmHWM to the current RSS (Linux >= 4.0)
_KIB = 1024


def cpu_threads() -> int:
    """Cores this process may run on (the thread count given to both frameworks)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def cpu_name() -> str:
    """The processor's model name from /proc/cpuinfo, or the platform's description."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform
    return platform.processor() or platform.machine()


def _status_kib(field: str) -> int:
    with open(_STATUS) as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(f"{_STATUS}: no field {field}")


def _release_free_heap() -> None:
    """Returns freed heap pages to the OS so the baseline RSS holds live data only."""
    gc.collect()
    libc_name = ctypes.util.find_library("c")
    if libc_name:
        libc = ctypes.CDLL(libc_name)
        if hasattr(libc, "malloc_trim"):
            libc.malloc_trim(0)


def peak_rss_growth(fn: Callable[[], None]) -> Optional[int]:
    """Bytes by which the process's peak resident set rises above its live set while ``fn`` runs.

    Frees cached heap pages, reads VmRSS, resets the peak (VmHWM) through
    ``/proc/self/clear_refs``, runs ``fn`` and reads VmHWM. The growth is the memory
    ``fn`` allocated at its peak (activations, gradients, workspace) on top of what
    was already resident (parameters, optimizer state, inputs). Linux only; None
    elsewhere.
    """
    if not (os.path.exists(_STATUS) and os.access(_CLEAR_REFS, os.W_OK)):
        return None
    _release_free_heap()
    base = _status_kib("VmRSS")
    with open(_CLEAR_REFS, "w") as f:
        f.write(_RESET_PEAK_RSS)
    fn()
    return max(0, _status_kib("VmHWM") - base) * _KIB


class MatmulPeak:
    """One large float32 matrix product in JAX: the machine's practical FLOP/s ceiling.

    Attributes:
      size: the product is ``[size, size] @ [size, size]``.
      flops: FLOPs of one product (2 size^3).
    """

    def __init__(self, size: int):
        self.size = size
        self.flops = 2 * size ** 3
        key_a, key_b = jax.random.split(jax.random.PRNGKey(0))
        self._a = jax.random.normal(key_a, (size, size), jnp.float32)
        self._b = jax.random.normal(key_b, (size, size), jnp.float32)
        self._product = jax.jit(jnp.matmul)
        self()

    def __call__(self) -> None:
        self._product(self._a, self._b).block_until_ready()


def interleaved_times(runs: Mapping[str, Callable[[], None]], repeats: int) -> dict[str, list]:
    """Wall times of each callable, run round-robin ``repeats`` times.

    Round-robin (A, B, C, A, B, C, ...) spreads slow phases of a shared machine over
    every entry instead of penalising whichever ran during them, so ratios of the
    medians are fair even when absolute times are noisy.

    Returns:
      ``{name: [seconds, ...]}`` in run order.
    """
    times = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    return times


def median(values) -> float:
    return float(statistics.median(values))
