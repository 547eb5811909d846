"""Score a trained checkpoint on a test split: SI-SNRi and SDRi per utterance and overall.

    python eval.py --workdir runs/demo --data data/demo --split tt
    python eval.py --checkpoint exported/ --config configs/galr_1.5m.yaml --data DIR --out results/
    python eval.py --model galr_voices_8k --data DIR --split tt --out results/   # a shipped model

Writes ``per_utterance.csv`` and ``summary.json`` to ``WORKDIR/eval/SPLIT`` (or ``--out``)
and prints a table; ``python eval.py --help`` lists the options. The work is done by
:mod:`galr_jax.evaluation.cli`.
"""

import sys

from galr_jax.evaluation.cli import main

if __name__ == "__main__":
    sys.exit(main())
