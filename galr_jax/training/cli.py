"""Trains GALR (or the DPRNN baseline): ``galr-train --config C --workdir W``.

``C`` is a YAML file or the name of a shipped config (``demo``, ``galr_1.5m``, ...);
``python train.py`` in the repository is the same program. Running it again with the
same ``--workdir`` resumes the run from its newest complete checkpoint. Kept short on
purpose: the training story is in ``galr_jax/training/loop.py`` (``train_and_evaluate``).

Multi-host (every process runs the same command)::

    galr-train --config C.yaml --workdir W \\
        --coordinator-address HOST0:1234 --num-processes 2 --process-id {0,1}

or set ``JAX_COORDINATOR_ADDRESS``/``JAX_NUM_PROCESSES``/``JAX_PROCESS_ID``, or pass
``--distributed-auto`` on a TPU pod or a SLURM cluster.

Exit status: 0 when training completed, stopped early or was preempted (SIGTERM,
after saving); 1 when it diverged (too many non-finite steps); 2 for a bad config,
data set, workdir or checkpoint (a one-line message names the problem).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Optional, Sequence

# None of these imports jax, so --help stays fast.
from galr_jax.cli_logging import configure_logging
from galr_jax.config import ConfigError, add_override_argument, load_config
from galr_jax.training.host_memory import keep_freed_memory_on_cpu

EXIT_DIVERGED = 1
EXIT_BAD_INPUT = 2


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", required=True,
                        help="YAML config file, or a shipped config's name: "
                             "demo, galr_1.5m, galr_2.3m, galr_w2, dprnn, dprnn_w2, ...")
    parser.add_argument("--workdir", required=True,
                        help="run folder (checkpoints, logs); an existing run is resumed")
    add_override_argument(parser)
    parser.add_argument("--coordinator-address", help="host:port of process 0 (multi-host)")
    parser.add_argument("--num-processes", type=int, help="processes in the job (multi-host)")
    parser.add_argument("--process-id", type=int, help="this process's index (multi-host)")
    parser.add_argument("--distributed-auto", action="store_true",
                        help="let JAX detect the cluster (TPU pod, SLURM, MPI)")
    return parser.parse_args(argv)


def report_error(error: Exception) -> None:
    """Writes ``PROGRAM: ERROR`` (``train.py: ...`` or ``galr-train: ...``) as one line of
    its own on stderr.

    One ``write(2)`` on the raw descriptor, starting with a newline: Orbax's background
    threads may still be printing tracebacks of a failed save, and ``print`` would let
    their text land inside our line (``print`` writes the text and the newline separately).
    """
    line = f"\n{os.path.basename(sys.argv[0])}: {error}\n"
    sys.stderr.flush()
    try:
        os.write(sys.stderr.fileno(), line.encode("utf-8", "replace"))
    except (AttributeError, OSError, ValueError):  # stderr replaced, e.g. captured in-process
        sys.stderr.write(line)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    configure_logging(logging.WARNING)  # Orbax logs every file it writes
    # Imported after parsing so --help is fast; jax must not touch devices before
    # jax.distributed.initialize.
    from galr_jax.data import AudioError, DatasetError
    from galr_jax.training import TrainingDiverged, initialize_distributed, train_and_evaluate
    from galr_jax.training.checkpoints import CheckpointError
    from galr_jax.training.workdir import WorkdirError

    try:
        config = load_config(args.config, args.overrides)
        initialize_distributed(args.coordinator_address, args.num_processes, args.process_id,
                               auto_detect=args.distributed_auto)
        keep_freed_memory_on_cpu()  # before the first computation, once the backend is known
        result = train_and_evaluate(config, args.workdir)
    except TrainingDiverged as e:
        report_error(e)
        return EXIT_DIVERGED
    except (ConfigError, DatasetError, AudioError, WorkdirError, CheckpointError,
            FileNotFoundError) as e:
        report_error(e)
        return EXIT_BAD_INPUT
    logging.info("%s at step %d %s", result.status, result.step, result.validation or "")
    return 0


if __name__ == "__main__":
    sys.exit(main())
