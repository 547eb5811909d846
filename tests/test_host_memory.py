"""The host allocator settings: XLA's per-call buffers stop being page-faulted in anew.

Each case runs in a fresh process, because the settings are process-wide and must be
in place before XLA starts its threads.
"""

import os
import platform
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUFFER_MB = 64
PAGES_PER_BUFFER = BUFFER_MB * 1024 * 1024 // 4096

# Calls a jitted function whose 64 MB output is dropped after each call, and prints
# whether the settings are in effect and the page faults of each of the last calls.
PROBE = f"""
import resource, sys
sys.path.insert(0, {REPO!r})
from galr_jax.host_memory import keep_freed_memory
applied = keep_freed_memory()
import jax, jax.numpy as jnp
f = jax.jit(lambda x: jnp.broadcast_to(x, ({BUFFER_MB}, 1024, 256)) * 2.0)
faults = []
for _ in range(10):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    f(jnp.float32(1.0)).block_until_ready()
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(applied, *faults[-5:])
"""

needs_glibc = pytest.mark.skipif(platform.libc_ver()[0] != "glibc",
                                 reason="mallopt's settings exist only in glibc")


def _probe(**env):
    result = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True,
                            timeout=120, env={**os.environ, "JAX_PLATFORMS": "cpu", **env})
    assert result.returncode == 0, result.stderr
    applied, *faults = result.stdout.split()
    return applied == "True", [int(n) for n in faults]


@needs_glibc
def test_kept_memory_is_reused_without_page_faults():
    applied, faults = _probe()
    assert applied
    # The freed output's memory serves the next call. The heap may still grow once
    # (an output freed just after the next call allocated), hence the median.
    assert sorted(faults)[len(faults) // 2] < PAGES_PER_BUFFER // 4, faults


@needs_glibc
def test_system_defaults_fault_every_call_and_the_opt_out_keeps_them():
    applied, faults = _probe(GALR_JAX_SYSTEM_MALLOC="1")
    assert not applied
    # glibc maps a buffer this large afresh on every call: what the settings remove.
    assert min(faults) >= PAGES_PER_BUFFER // 2, faults
