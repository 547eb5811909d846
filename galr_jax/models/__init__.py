"""Flax modules of GALR and DPRNN, one part of the architecture per module."""

from galr_jax.models.attention import MultiHeadSelfAttention
from galr_jax.models.dprnn import DPRNNBlock
from galr_jax.models.dropout import Dropout
from galr_jax.models.filterbank import Decoder, Encoder
from galr_jax.models.galr import GALRBlock, GloballyAttentive, LocallyRecurrent, SegmentLengthMap
from galr_jax.models.mask_head import MaskHead
from galr_jax.models.norms import GlobalLayerNorm, LayerNorm
from galr_jax.models.recurrent import BiLSTM
from galr_jax.models.segmentation import overlap_add, segment
from galr_jax.models.separation import SeparationModel, build_model

__all__ = [
    "BiLSTM", "DPRNNBlock", "Decoder", "Dropout", "Encoder", "GALRBlock", "GlobalLayerNorm",
    "GloballyAttentive", "LayerNorm", "LocallyRecurrent", "MaskHead", "MultiHeadSelfAttention",
    "SegmentLengthMap", "SeparationModel",
    "build_model", "overlap_add", "segment",
]
