"""Evaluation: the metrics, whole-utterance scoring, and ``galr-eval``.

``metrics``: SI-SNRi, BSS-eval SDR/SDRi, optional PESQ/STOI. ``scoring``: bucketed
whole-utterance scoring, shared by validation during training and ``galr-eval``.
``cli``: ``galr-eval`` / ``eval.py``.

``galr_jax.evaluation`` was the scoring module before it became this package, so
scoring's names are here too, imported on first use (:mod:`galr_jax._lazy`).
"""

from galr_jax import _lazy

_EXPORTS = {name: "galr_jax.evaluation.scoring" for name in (
    "Batch", "EvaluationResult", "SeparateFn", "Utterance", "bucket_length",
    "buckets_in_samples", "evaluate", "make_buckets", "model_lengths", "padded_batch_size",
    "summarize")}

__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = _lazy.exports(__name__, _EXPORTS)
