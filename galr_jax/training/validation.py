"""Validation SI-SNRi during training, with the scoring code ``eval.py`` uses.

Whole validation utterances go through :func:`galr_jax.evaluation.scoring.evaluate`
(bucketed padding with the valid lengths given to the model, PIT SI-SNRi), so the
number that ranks checkpoints is the one evaluation reports for the same weights.

Multi-process runs: each process reads its own share of the utterances (every
``process_count``-th one), so the processes hold different numbers of utterances in
different buckets and would make different numbers of model calls of different
shapes. JAX requires every process to run the same *multi-process* computations in
the same order; a mismatch hangs or fails on an accelerator pod (on the CPU it runs
silently). Two designs avoid that: (a) a global bucket plan that every process
follows, padding its share with empty rows, or (b) model calls that involve this
process's devices only. This module does (b): the model runs under ``jax.jit`` on a
mesh of ``jax.local_devices()`` (:class:`galr_jax.inference.BatchedApply`), and the
scores are jitted on the default device, which is local too. Such computations are
each process's own: their device assignment holds no other process's device, so
nothing in them waits for another process, and JAX compiles them without the
distributed client (``jax._src.compiler.compile_or_get_cached`` takes the
multi-process path only when the devices span several processes). The only
multi-process computation is the final ``process_allgather`` of four per-process
sums, which every process makes exactly once with the same shape. Why (b): it
cannot diverge whatever each process reads or skips (a bad file found by one
process alone changes nothing), needs no agreement on a plan, and costs no padding
rows. (A ``jax.pmap`` with ``devices=jax.local_devices()`` would not do: pmap
documents that ``devices`` must be given identically on every process.) What it
gives up is balance: a process with more audio finishes later, and the others wait
for it at the allgather.
"""

from __future__ import annotations

from typing import Any, Optional

import jax
import numpy as np
from jax.experimental import multihost_utils

from galr_jax.evaluation import scoring
from galr_jax.config import Config
from galr_jax.data import MixtureDataset, UtteranceReader
from galr_jax.inference.apply import BatchedApply
from galr_jax.models import SeparationModel


class Validator:
    """Scores parameters on the validation split.

    Args:
      config: the run config (``eval.batch_size``, ``eval.bucket_seconds``,
        ``train.max_valid_utterances``, ``data.num_workers``/``prefetch``/``bad_files``).
      dataset: the validation split.
      model: the separation model.
    """

    def __init__(self, config: Config, dataset: MixtureDataset, model: SeparationModel):
        self.config = config
        self.dataset = dataset
        self.model = model
        # Built at the first run, when there are weights to place; later runs swap the
        # weights and keep the compiled programs.
        self._apply: Optional[BatchedApply] = None

    def _local_apply(self, params: Any) -> BatchedApply:
        variables = {"params": params}
        if self._apply is None:
            self._apply = BatchedApply(self.config, variables, model=self.model)
        else:
            self._apply.set_variables(variables)
        return self._apply

    def run(self, params: Any) -> dict[str, float]:
        """Validation metrics of ``params`` (host arrays): ``val_si_snri``, ``val_si_snr``.

        Also ``val_utterances`` (scored) and ``val_skipped_files`` (unreadable, skipped).
        Every process gets the same result.
        """
        data = self.config.data
        limit = self.config.train.max_valid_utterances or None
        apply = self._local_apply(params)
        with UtteranceReader(self.dataset, num_workers=data.num_workers, prefetch=data.prefetch,
                             bad_files=data.bad_files, process_index=jax.process_index(),
                             process_count=jax.process_count(), limit=limit) as reader:
            result = scoring.evaluate(
                apply, ((u.id, u.mixture, u.sources) for u in reader),
                sample_rate=data.sample_rate, bucket_seconds=self.config.eval.bucket_seconds,
                batch_size=self.config.eval.batch_size, num_devices=apply.num_devices,
                progress=False)
            skipped = len(reader.problems)
        records = result.records
        # The one multi-process computation of a validation: the same shape on every
        # process, however many utterances each one scored.
        totals = np.array([sum(r["si_snri"] for r in records), sum(r["si_snr"] for r in records),
                           len(records), skipped], np.float64)
        if jax.process_count() > 1:
            totals = np.asarray(multihost_utils.process_allgather(totals)).sum(axis=0)
        count = totals[2] if totals[2] else float("nan")  # nothing readable: no score
        return {"val_si_snri": float(totals[0] / count), "val_si_snr": float(totals[1] / count),
                "val_utterances": int(totals[2]), "val_skipped_files": int(totals[3])}
