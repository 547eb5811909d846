"""PyTorch reference of GALR and DPRNN, written from the spec (docs: GALR-SPEC.md).

An independent implementation in plain ``torch.nn`` against which the Flax models are
compared numerically. Its ``state_dict`` keys are the names the weight converter maps to
Flax, so keep them stable:

    encoder.conv                     Conv1d(1, N, L, stride L/2), no bias
    input_norm                       DPRNN only: gLN over (frames, N)
    bottleneck                       Conv1d(N, D, 1); bias only for DPRNN
    blocks.{i}.locally_recurrent     GALR: BiLSTM over K with learnable h0/c0, proj, norm
    blocks.{i}.globally_attentive    GALR: to_low_dim, norm_in, attention, norm_out,
                                     from_low_dim, norm
    blocks.{i}.intra / .inter        DPRNN: BiLSTM over K / over S, proj, norm
    mask_head                        prelu, to_sources, gate_tanh, gate_sigmoid, to_filters
    decoder.conv                     ConvTranspose1d(N, 1, L, stride L/2), no bias

Inside the separator tensors are channels-last, ``[batch, segments, segment_length,
features]`` (``[B, S, K, D]``), as in the spec. The ``runtime`` section (``compute_dtype``,
``lstm_unroll``, ``remat``, ``recompute_attention``) holds JAX-only settings, ignored here.
"""

from __future__ import annotations

from typing import Dict, Union

import torch
from torch import nn
from torch.nn import functional as F

from galr_jax.config import Config, ModelConfig

# Base of the wavelengths of the standard sinusoidal positional encoding.
POSITIONAL_ENCODING_BASE = 10000.0


def hop_padding(length: int, window: int) -> int:
    """Right padding that makes every real element lie in exactly two half-overlapping windows.

    The padded length ``length + rest`` is an odd multiple of ``window / 2``; with
    ``window / 2`` more on both sides the windows (hop ``window / 2``) tile it exactly.

    Args:
      length: number of real elements (samples or frames).
      window: window length (even); the hop is ``window / 2``.

    Returns:
      ``rest = window - (window/2 + length mod window) mod window``.
    """
    return window - (window // 2 + length % window) % window


def pad_for_windows(x: torch.Tensor, window: int, dim: int) -> torch.Tensor:
    """Pads ``dim`` with ``hop_padding`` zeros on the right, then ``window/2`` on both sides."""
    rest = hop_padding(x.shape[dim], window)
    half = window // 2
    # F.pad lists (left, right) pairs starting from the last dimension.
    pads = [0, 0] * (x.dim() - 1 - dim % x.dim()) + [half, rest + half]
    return F.pad(x, pads)


def segment(frames: torch.Tensor, segment_length: int) -> torch.Tensor:
    """Cuts frames into half-overlapping segments (spec sec. 1, step 4).

    Args:
      frames: ``[B, F, D]``.
      segment_length: K (even); the hop is K/2.

    Returns:
      ``[B, S, K, D]`` with segment ``s`` covering padded frames ``[s*K/2, s*K/2 + K)``.
    """
    batch, _, features = frames.shape
    half = segment_length // 2
    halves = pad_for_windows(frames, segment_length, dim=1).reshape(batch, -1, half, features)
    return torch.cat([halves[:, :-1], halves[:, 1:]], dim=2)


def overlap_add(segments: torch.Tensor, num_frames: int) -> torch.Tensor:
    """Inverse of :func:`segment` up to a factor 2: plain sum of the overlapping halves.

    Args:
      segments: ``[B, S, K, D]``.
      num_frames: F, the number of real frames before segmentation.

    Returns:
      ``[B, F, D]`` with the segment padding removed.
    """
    batch, _, length, features = segments.shape
    half = length // 2
    # Half j of the padded sequence is the first half of segment j plus the second half
    # of segment j - 1; padding the segment axis by one lines the two up.
    first = F.pad(segments[:, :, :half], (0, 0, 0, 0, 0, 1))
    second = F.pad(segments[:, :, half:], (0, 0, 0, 0, 1, 0))
    frames = (first + second).reshape(batch, -1, features)
    return frames[:, half:half + num_frames]


def sinusoidal_positional_encoding(num_positions: int, features: int, device=None,
                                   dtype=torch.float32) -> torch.Tensor:
    """Standard sinusoidal encoding: feature 2i is sin(s / 10000^(2i/D)), 2i+1 the cos.

    Returns:
      ``[num_positions, features]``.
    """
    position = torch.arange(num_positions, device=device, dtype=torch.float64)[:, None]
    exponent = torch.arange(0, features, 2, device=device, dtype=torch.float64) / features
    angle = position / POSITIONAL_ENCODING_BASE ** exponent
    encoding = torch.stack([torch.sin(angle), torch.cos(angle)], dim=-1)
    return encoding.reshape(num_positions, features).to(dtype)


def channels_last_group_norm(norm: nn.GroupNorm, x: torch.Tensor) -> torch.Tensor:
    """Applies a GroupNorm (gLN) to a channels-last ``[B, S, K, D]`` tensor."""
    return norm(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)


class Encoder(nn.Module):
    """Learned filterbank: Conv1d(1 -> N, kernel L, stride L/2, no bias) then ReLU."""

    def __init__(self, window: int, num_filters: int):
        super().__init__()
        self.conv = nn.Conv1d(1, num_filters, window, stride=window // 2, bias=False)

    def forward(self, padded: torch.Tensor) -> torch.Tensor:
        """Maps a padded waveform ``[B, T_padded]`` to frames ``[B, N, F]``."""
        return F.relu(self.conv(padded[:, None]))


class Decoder(nn.Module):
    """Transposed filterbank: ConvTranspose1d(N -> 1, kernel L, stride L/2, no bias)."""

    def __init__(self, window: int, num_filters: int):
        super().__init__()
        self.conv = nn.ConvTranspose1d(num_filters, 1, window, stride=window // 2, bias=False)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        """Maps masked frames ``[B', N, F]`` to a padded waveform ``[B', T_padded]``."""
        return self.conv(frames)[:, 0]


class RecurrentPath(nn.Module):
    """BiLSTM over the segment axis (axis 2) -> Linear 2H -> D -> gLN -> residual.

    GALR's locally recurrent part learns the initial states (one ``h0`` and one ``c0`` of
    size H, shared by both directions and all sequences); DPRNN starts from zeros. DPRNN's
    inter-segment path uses this module on the transposed ``[B, K, S, D]`` tensor: gLN
    normalises over both spatial axes, so the result is the same.
    """

    def __init__(self, features: int, hidden: int, eps: float, learnable_initial_state: bool):
        super().__init__()
        self.lstm = nn.LSTM(features, hidden, batch_first=True, bidirectional=True)
        if learnable_initial_state:
            self.h0 = nn.Parameter(torch.rand(hidden))
            self.c0 = nn.Parameter(torch.rand(hidden))
        else:
            self.h0 = self.c0 = None
        self.proj = nn.Linear(2 * hidden, features)
        self.norm = nn.GroupNorm(1, features, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, S, K, D] -> [B, S, K, D]``, the LSTM running over K within each of B*S rows."""
        batch, rows, length, features = x.shape
        sequences = x.reshape(batch * rows, length, features)
        if self.h0 is None:
            state = None
        else:
            shape = (2, batch * rows, self.h0.shape[0])  # (directions, sequences, H)
            state = (self.h0.expand(shape).contiguous(), self.c0.expand(shape).contiguous())
        hidden, _ = self.lstm(sequences, state)
        y = self.proj(hidden).reshape(batch, rows, length, features)
        return x + channels_last_group_norm(self.norm, y)


class GloballyAttentive(nn.Module):
    """GALR's inter-segment part: self-attention across the S segments (spec sec. 2).

    With a low dimension Q the K frames of each segment are first mapped to Q (Linear
    K -> Q) and back afterwards; the attention then runs on B*Q sequences of S tokens.
    """

    def __init__(self, model: ModelConfig):
        super().__init__()
        features, length, low_dim = model.features, model.segment_length, model.low_dim
        self.to_low_dim = None if low_dim is None else nn.Linear(length, low_dim)
        self.norm_in = nn.LayerNorm(features, eps=model.norm_eps)
        self.attention = nn.MultiheadAttention(features, model.num_heads,
                                               dropout=model.attention_dropout, batch_first=True)
        self.dropout = nn.Dropout(model.attention_dropout)
        self.norm_out = nn.LayerNorm(features, eps=model.norm_eps)
        self.from_low_dim = None if low_dim is None else nn.Linear(low_dim, length)
        self.norm = nn.GroupNorm(1, features, eps=model.norm_eps)
        self.attention_residual = model.attention_residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, S, K, D] -> [B, S, K, D]``."""
        batch, segments, length, features = x.shape
        if self.to_low_dim is None:
            rows = x.permute(0, 2, 1, 3)  # [B, K, S, D]
        else:
            rows = self.to_low_dim(x.transpose(2, 3)).permute(0, 3, 1, 2)  # [B, Q, S, D]
        low = rows.shape[1]
        tokens = self.norm_in(rows.reshape(batch * low, segments, features))
        tokens = tokens + sinusoidal_positional_encoding(segments, features, tokens.device,
                                                         tokens.dtype)
        attended, _ = self.attention(tokens, tokens, tokens, need_weights=False)
        residual = tokens if self.attention_residual else attended
        tokens = self.norm_out(residual + self.dropout(attended))
        rows = tokens.reshape(batch, low, segments, features)
        if self.from_low_dim is None:
            y = rows.permute(0, 2, 1, 3)
        else:
            y = self.from_low_dim(rows.permute(0, 2, 3, 1)).transpose(2, 3)  # [B, S, K, D]
        return x + channels_last_group_norm(self.norm, y)


class GALRBlock(nn.Module):
    """Locally recurrent, then globally attentive (spec sec. 2). ``[B, S, K, D]`` in and out."""

    def __init__(self, model: ModelConfig):
        super().__init__()
        self.locally_recurrent = RecurrentPath(model.features, model.hidden, model.norm_eps,
                                               learnable_initial_state=True)
        self.globally_attentive = GloballyAttentive(model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.globally_attentive(self.locally_recurrent(x))


class DPRNNBlock(nn.Module):
    """Intra-segment then inter-segment BiLSTM paths (spec sec. 3). ``[B, S, K, D]`` in and out."""

    def __init__(self, model: ModelConfig):
        super().__init__()
        self.intra = RecurrentPath(model.features, model.hidden, model.norm_eps,
                                   learnable_initial_state=False)
        self.inter = RecurrentPath(model.features, model.hidden, model.norm_eps,
                                   learnable_initial_state=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.intra(x)
        return self.inter(x.transpose(1, 2)).transpose(1, 2)


class MaskHead(nn.Module):
    """Segments to per-source masks (spec sec. 1, step 6)."""

    def __init__(self, model: ModelConfig):
        super().__init__()
        features = model.features
        self.num_sources = model.num_sources
        self.prelu = nn.PReLU()
        self.to_sources = nn.Conv1d(features, model.num_sources * features, 1)
        self.gate_tanh = nn.Conv1d(features, features, 1)
        self.gate_sigmoid = nn.Conv1d(features, features, 1)
        self.to_filters = nn.Conv1d(features, model.num_filters, 1, bias=False)
        self.nonlinearity = torch.relu if model.mask_nonlinearity == "relu" else torch.sigmoid

    def forward(self, x: torch.Tensor, num_frames: int) -> torch.Tensor:
        """Maps separator output ``[B, S, K, D]`` to masks ``[B, C, N, F]``."""
        batch, segments, length, features = x.shape
        channels = self.prelu(x).permute(0, 3, 1, 2).reshape(batch, features, segments * length)
        # Output channel index = source * D + feature.
        sources = self.to_sources(channels).reshape(batch * self.num_sources, features,
                                                    segments, length)
        frames = overlap_add(sources.permute(0, 2, 3, 1), num_frames).transpose(1, 2)
        gated = torch.tanh(self.gate_tanh(frames)) * torch.sigmoid(self.gate_sigmoid(frames))
        masks = self.nonlinearity(self.to_filters(gated))
        return masks.reshape(batch, self.num_sources, -1, num_frames)


class TorchSeparator(nn.Module):
    """TasNet pipeline with a GALR or DPRNN separator (spec sec. 1).

    Shape:
      mixture ``[B, T]`` float32 -> separated sources ``[B, C, T]``, for any T >= 1.
      ``lengths`` (optional): ``[B]`` valid samples of each row of a padded batch. The
      reference applies the spec's rule by its definition: each row is separated alone
      at its own length and the output is zero past it.
    """

    def __init__(self, model: ModelConfig):
        super().__init__()
        self.window = model.window
        self.segment_length = model.segment_length
        self.num_sources = model.num_sources
        self.encoder = Encoder(model.window, model.num_filters)
        is_dprnn = model.separator == "dprnn"
        # GALR follows its author (bottleneck without norm or bias); DPRNN follows asteroid.
        self.input_norm = (nn.GroupNorm(1, model.num_filters, eps=model.norm_eps)
                           if is_dprnn else None)
        self.bottleneck = nn.Conv1d(model.num_filters, model.features, 1, bias=is_dprnn)
        block = DPRNNBlock if is_dprnn else GALRBlock
        self.blocks = nn.ModuleList(block(model) for _ in range(model.num_blocks))
        self.mask_head = MaskHead(model)
        self.decoder = Decoder(model.window, model.num_filters)

    def forward(self, mixture: torch.Tensor, lengths=None) -> torch.Tensor:
        if mixture.dim() != 2:
            raise ValueError(f"mixture: expected [batch, time], got shape {tuple(mixture.shape)}")
        if lengths is not None:
            out = mixture.new_zeros(mixture.shape[0], self.num_sources, mixture.shape[1])
            for row, length in enumerate(torch.as_tensor(lengths).tolist()):
                out[row, :, :length] = self.forward(mixture[row:row + 1, :length])[0]
            return out
        batch, num_samples = mixture.shape
        encoded = self.encoder(pad_for_windows(mixture, self.window, dim=1))  # [B, N, F]
        num_frames = encoded.shape[-1]
        x = encoded if self.input_norm is None else self.input_norm(encoded)
        x = segment(self.bottleneck(x).transpose(1, 2), self.segment_length)  # [B, S, K, D]
        for block in self.blocks:
            x = block(x)
        masks = self.mask_head(x, num_frames)  # [B, C, N, F]
        masked = (encoded[:, None] * masks).reshape(batch * self.num_sources, -1, num_frames)
        waveforms = self.decoder(masked).reshape(batch, self.num_sources, -1)
        start = self.window // 2
        return waveforms[..., start:start + num_samples]


def build_torch_model(config: Union[Config, ModelConfig]) -> TorchSeparator:
    """Builds the PyTorch reference model from a full config or its ``model`` section."""
    model = config.model if isinstance(config, Config) else config
    if not isinstance(model, ModelConfig):
        raise TypeError(f"config: expected Config or ModelConfig, got {type(config).__name__}")
    return TorchSeparator(model)


def count_parameters(module: nn.Module) -> int:
    """Number of scalar parameters (torch counts both LSTM biases)."""
    return sum(p.numel() for p in module.parameters())


def parameter_breakdown(module: nn.Module) -> Dict[str, int]:
    """Parameter count of each top-level submodule, e.g. ``{"encoder": 1024, ...}``."""
    return {name: count_parameters(child) for name, child in module.named_children()}
