"""Separation of recordings with a trained model: any length, in bounded memory.

``separator``: the :class:`Separator` API. ``chunking``: long recordings in
overlapping chunks. ``apply``: the batched, jitted model call. ``audio_io``/``level``:
input files and output level. ``streaming``: the causal model frame by frame.
``exported`` runs a ``jax.export`` file with JAX alone (no Flax, no model code);
``export_cli`` writes one (``galr-export``). ``cli``: ``galr-separate``;
``stream_cli``: its ``--stream`` mode.

The names below are imported on first use (:mod:`galr_jax._lazy`), so that
``galr_jax.inference.exported`` stays free of Flax and the model code.
"""

from galr_jax import _lazy

_EXPORTS = {
    "BatchedApply": "galr_jax.inference.apply",
    "OUTPUT_FORMATS": "galr_jax.inference.audio_io",
    "SourceWriter": "galr_jax.inference.audio_io",
    "open_input": "galr_jax.inference.audio_io",
    "OverlapAddStitcher": "galr_jax.inference.chunking",
    "align_sources": "galr_jax.inference.chunking",
    "chunk_starts": "galr_jax.inference.chunking",
    "crossfade": "galr_jax.inference.chunking",
    "iter_chunks": "galr_jax.inference.chunking",
    "SeparationError": "galr_jax.inference.separator",
    "Separator": "galr_jax.inference.separator",
}

__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = _lazy.exports(__name__, _EXPORTS)
