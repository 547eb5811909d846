"""Validation SI-SNRi during training, with the scoring code ``eval.py`` uses.

Whole validation utterances go through :func:`galr_jax.evaluation.evaluate`
(bucketed padding, PIT SI-SNRi), so the number that ranks checkpoints is the one
evaluation reports for the same weights. Each process scores its share of the
utterances on its local devices (``jax.pmap`` of the model in inference mode) and
the per-process sums are combined, so every process gets the same result.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils

from galr_jax import evaluation
from galr_jax.config import Config
from galr_jax.data import MixtureDataset, UtteranceReader
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
        self._num_local = jax.local_device_count()
        self._apply = jax.pmap(lambda variables, mixture: model.apply(variables, mixture),
                               in_axes=(None, 0))

    def _separate_fn(self, params: Any):
        variables = {"params": params}

        def separate(mixture: np.ndarray) -> np.ndarray:  # [B, T] -> [B, C, T]
            rows = mixture.reshape((self._num_local, -1) + mixture.shape[1:])
            estimates = np.asarray(self._apply(variables, rows))
            return estimates.reshape((mixture.shape[0],) + estimates.shape[2:])

        return separate

    def run(self, params: Any) -> dict[str, float]:
        """Validation metrics of ``params`` (host arrays): ``val_si_snri``, ``val_si_snr``.

        Also ``val_utterances`` (scored) and ``val_skipped_files`` (unreadable, skipped).
        """
        data = self.config.data
        limit = self.config.train.max_valid_utterances or None
        with UtteranceReader(self.dataset, num_workers=data.num_workers, prefetch=data.prefetch,
                             bad_files=data.bad_files, process_index=jax.process_index(),
                             process_count=jax.process_count(), limit=limit) as reader:
            result = evaluation.evaluate(
                self._separate_fn(params), ((u.id, u.mixture, u.sources) for u in reader),
                sample_rate=data.sample_rate, bucket_seconds=self.config.eval.bucket_seconds,
                batch_size=self.config.eval.batch_size, num_devices=self._num_local,
                progress=False)
            skipped = len(reader.problems)
        records = result.records
        totals = np.array([sum(r["si_snri"] for r in records), sum(r["si_snr"] for r in records),
                           len(records), skipped], np.float64)
        if jax.process_count() > 1:
            totals = np.asarray(multihost_utils.process_allgather(totals)).sum(axis=0)
        count = totals[2] if totals[2] else float("nan")  # nothing readable: no score
        return {"val_si_snri": float(totals[0] / count), "val_si_snr": float(totals[1] / count),
                "val_utterances": int(totals[2]), "val_skipped_files": int(totals[3])}
