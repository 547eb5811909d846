"""Separation of recordings with a trained model: any length, in bounded memory."""

from galr_jax.inference.apply import BatchedApply
from galr_jax.inference.audio_io import OUTPUT_FORMATS, SourceWriter, open_input
from galr_jax.inference.chunking import (OverlapAddStitcher, align_sources, chunk_starts,
                                         crossfade, iter_chunks)
from galr_jax.inference.separator import SeparationError, Separator

__all__ = [
    "BatchedApply", "OUTPUT_FORMATS", "OverlapAddStitcher", "SeparationError", "Separator",
    "SourceWriter", "align_sources", "chunk_starts", "crossfade", "iter_chunks", "open_input",
]
