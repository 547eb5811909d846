"""The environment every test subprocess (train.py, eval.py, the CLIs) runs in."""

from __future__ import annotations

import os
from typing import Optional

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def cpu_environment(num_devices: int = 1, xla_flags: str = "",
                    cache_dir: Optional[str] = None) -> dict:
    """This process's environment plus: JAX on the CPU with ``num_devices`` devices, the
    repository importable, UTF-8 output, extra ``xla_flags``, and (if given) a persistent
    compilation cache shared by the runs of a test session."""
    env = dict(os.environ)
    env.update(JAX_PLATFORMS="cpu", PYTHONPATH=REPO, PYTHONIOENCODING="utf-8",
               XLA_FLAGS=f"--xla_force_host_platform_device_count={num_devices} {xla_flags}".strip())
    if cache_dir:
        env.update(JAX_COMPILATION_CACHE_DIR=cache_dir,
                   JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
    return env
