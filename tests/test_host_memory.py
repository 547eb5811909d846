"""The host allocator settings: XLA's per-call buffers stop being page-faulted in anew.

Each case runs in a fresh process, because the settings are process-wide and must be
in place before XLA starts its threads.
"""

import ctypes
import os
import platform
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUFFER_MB = 64
PAGE_BYTES = 4096
PAGES_PER_BUFFER = BUFFER_MB * 1024 * 1024 // PAGE_BYTES
CALLS = 24

# Applies the settings as SETUP says, then calls a jitted function whose 64 MB output is
# dropped after each call. Prints whether the settings are in effect, how many pages the
# main heap grew by after the first (compiling) call, and the page faults of each later call.
PROBE_TEMPLATE = f"""
import ctypes, resource, sys
sys.path.insert(0, {REPO!r})
SETUP

class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks"
                " keepcost".split()]

libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = MallInfo2
import jax, jax.numpy as jnp
f = jax.jit(lambda x: jnp.broadcast_to(x, ({BUFFER_MB}, 1024, 256)) * 2.0)
f(jnp.float32(1.0)).block_until_ready()
heap_before = libc.mallinfo2().arena
faults = []
for _ in range({CALLS} - 1):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    f(jnp.float32(1.0)).block_until_ready()
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(applied, (libc.mallinfo2().arena - heap_before) // {PAGE_BYTES}, *faults)
"""
# Before JAX is imported, as the benchmarks do.
PROBE = PROBE_TEMPLATE.replace("SETUP", """
from galr_jax.training.host_memory import keep_freed_memory
applied = keep_freed_memory()
""")
# As train.py does: the training loop imported and JAX's backend started (to learn
# that it is the CPU) before the settings.
TRAIN_PY_PROBE = PROBE_TEMPLATE.replace("SETUP", """
from galr_jax.training import train_and_evaluate
from galr_jax.training.host_memory import keep_freed_memory_on_cpu
applied = keep_freed_memory_on_cpu()
""")

# The probe reads the heap's size with mallinfo2, which glibc has had since 2.33.
needs_glibc = pytest.mark.skipif(
    platform.libc_ver()[0] != "glibc" or not hasattr(ctypes.CDLL(None), "mallinfo2"),
    reason="mallopt's settings exist only in glibc (and mallinfo2 from glibc 2.33)")


def _probe(probe=PROBE, **env):
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                            timeout=120, env={**os.environ, "JAX_PLATFORMS": "cpu", **env})
    assert result.returncode == 0, result.stderr
    applied, heap_growth, *faults = result.stdout.split()
    return applied == "True", int(heap_growth), [int(n) for n in faults]


@needs_glibc
@pytest.mark.parametrize("probe", [PROBE, TRAIN_PY_PROBE], ids=["before-jax", "as-train-py"])
def test_every_page_faulted_in_is_heap_the_process_keeps(probe):
    applied, heap_growth, faults = _probe(probe)
    assert applied
    # A call faults pages in only where the heap grows: when an earlier output's
    # memory comes back only after the next call has allocated (on a busy machine), or
    # the free space is too fragmented for the next buffer. Those pages then stay, so the
    # faults cannot come back call after call as they do with glibc's defaults.
    slack = PAGES_PER_BUFFER // 4
    assert sum(faults) <= heap_growth + slack, (heap_growth, faults)
    assert heap_growth <= PAGES_PER_BUFFER * (CALLS - 1) // 2, (heap_growth, faults)


@needs_glibc
def test_system_defaults_fault_every_call_and_the_opt_out_keeps_them():
    applied, heap_growth, faults = _probe(GALR_JAX_SYSTEM_MALLOC="1")
    assert not applied
    # glibc maps a buffer this large afresh on every call and unmaps it on free: what
    # the settings remove. None of it shows up as heap growth.
    assert min(faults) >= PAGES_PER_BUFFER // 2, faults
    assert sum(faults) > heap_growth + PAGES_PER_BUFFER * (CALLS - 1) // 2, (
        heap_growth, faults)
