"""Audio files, corpus readers and training batches.

``audio``: read/write mono files with precise errors. ``datasets``: wsj0-mix and
LibriMix readers. ``index``: the cached length index. ``loader``: deterministic
training crops (a grain pipeline) and in-order utterances. ``prefetch``: background
decoding of whole utterances.
``voices``: offline speech for the demo set.
"""

from galr_jax.data.audio import AudioError, audio_info, read_audio, write_audio
from galr_jax.data.datasets import (DatasetError, MixtureDataset, open_librimix, open_split,
                                    open_wsj0_mix)
from galr_jax.data.loader import TrainLoader, Utterance, UtteranceReader, make_train_loader

__all__ = [
    "AudioError", "DatasetError", "MixtureDataset", "TrainLoader", "Utterance", "UtteranceReader",
    "audio_info", "make_train_loader", "open_librimix", "open_split", "open_wsj0_mix",
    "read_audio", "write_audio",
]
