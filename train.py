"""Trains GALR (or the DPRNN baseline): ``python train.py --config C.yaml --workdir W``.

The same program as the installed ``galr-train``; ``python train.py --help`` lists the
options. The work is done by :mod:`galr_jax.training.cli`.
"""

import sys

from galr_jax.training.cli import EXIT_BAD_INPUT, EXIT_DIVERGED, main, parse_args

__all__ = ["EXIT_BAD_INPUT", "EXIT_DIVERGED", "main", "parse_args"]

if __name__ == "__main__":
    sys.exit(main())
