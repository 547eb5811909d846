"""Joining a multi-host job with ``jax.distributed.initialize``.

Settings come from flags, else from the environment variables JAX itself reads
(``JAX_COORDINATOR_ADDRESS``, ``JAX_NUM_PROCESSES``, ``JAX_PROCESS_ID``). With none
of them a run is single-process, unless cluster auto-detection is asked for (TPU pods,
SLURM, Open MPI, Kubernetes: JAX finds the coordinator and the process ids itself).
"""

from __future__ import annotations

import logging
import os
from typing import Optional

import jax

ENV_COORDINATOR = "JAX_COORDINATOR_ADDRESS"
ENV_NUM_PROCESSES = "JAX_NUM_PROCESSES"
ENV_PROCESS_ID = "JAX_PROCESS_ID"

log = logging.getLogger(__name__)


def _int_setting(value: Optional[int], env: str) -> Optional[int]:
    if value is not None:
        return value
    raw = os.environ.get(env)
    if raw is None or raw == "":
        return None
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"{env}={raw!r}: expected an integer") from None


def initialize_distributed(coordinator_address: Optional[str] = None,
                           num_processes: Optional[int] = None,
                           process_id: Optional[int] = None,
                           auto_detect: bool = False) -> bool:
    """Initializes ``jax.distributed`` if a multi-process job is configured.

    Must run before anything touches the devices.

    Args:
      coordinator_address: ``host:port`` of process 0's coordination service.
      num_processes: processes in the job.
      process_id: this process's index, ``0 .. num_processes - 1``.
      auto_detect: with nothing configured, let JAX detect the cluster.

    Returns:
      True if ``jax.distributed`` was initialized.
    """
    coordinator_address = coordinator_address or os.environ.get(ENV_COORDINATOR) or None
    num_processes = _int_setting(num_processes, ENV_NUM_PROCESSES)
    process_id = _int_setting(process_id, ENV_PROCESS_ID)
    if coordinator_address is None and num_processes is None and process_id is None:
        if not auto_detect:
            return False
        jax.distributed.initialize()
    else:
        if coordinator_address is None or num_processes is None or process_id is None:
            raise ValueError(
                "multi-host training needs the coordinator address, the number of processes and "
                f"the process id (flags or {ENV_COORDINATOR}, {ENV_NUM_PROCESSES}, {ENV_PROCESS_ID})"
                f"; got {coordinator_address!r}, {num_processes!r}, {process_id!r}")
        if not 0 <= process_id < num_processes:
            raise ValueError(f"process id {process_id} is outside 0..{num_processes - 1}")
        jax.distributed.initialize(coordinator_address=coordinator_address,
                                   num_processes=num_processes, process_id=process_id)
    log.info("process %d of %d, %d local and %d global devices", jax.process_index(),
             jax.process_count(), jax.local_device_count(), jax.device_count())
    return True
