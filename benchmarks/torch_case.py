"""The PyTorch side of a benchmark case: the reference model in eager mode."""

from __future__ import annotations

import copy
import itertools

import jax
import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from galr_jax.config import Config
from galr_jax.interop.torch_reference import build_torch_model, count_parameters
from galr_jax.training.losses import SI_SNR_EPS

import measure

# The LSTM forward computes x W_ih^T and h W_hh^T for every row (sequence x step);
# its backward computes the input, hidden-state and both weight gradients: twice that.
_LSTM_BACKWARD_FACTOR = 2


def _lstm_layer_flops(input_shape, w_ih_shape, w_hh_shape, *args, out_shape=None, **kwargs):
    rows = int(np.prod(input_shape[:-1]))
    return 2 * rows * (int(np.prod(w_ih_shape)) + int(np.prod(w_hh_shape)))


def _lstm_layer_backward_flops(input_shape, w_ih_shape, w_hh_shape, *args, out_shape=None,
                               **kwargs):
    return _LSTM_BACKWARD_FACTOR * _lstm_layer_flops(input_shape, w_ih_shape, w_hh_shape)


# FlopCounterMode has no formula for the oneDNN LSTM layer that CPU nn.LSTM runs.
_LSTM_FLOP_FORMULAS = {
    torch.ops.aten.mkldnn_rnn_layer: _lstm_layer_flops,
    torch.ops.aten.mkldnn_rnn_layer_backward: _lstm_layer_backward_flops,
}


def pit_neg_si_snr(estimates: torch.Tensor, references: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of the best-permutation negative SI-SNR
    (as ``galr_jax.training.losses``).

    Args:
      estimates, references: ``[B, C, T]``.
    """
    estimates = estimates - estimates.mean(-1, keepdim=True)
    references = references - references.mean(-1, keepdim=True)
    est, ref = estimates[:, :, None], references[:, None]  # pairwise [B, C, C, T]
    scale = (est * ref).sum(-1, keepdim=True) / (ref.square().sum(-1, keepdim=True) + SI_SNR_EPS)
    target = scale * ref
    ratio = ((target.square().sum(-1) + SI_SNR_EPS)
             / ((est - target).square().sum(-1) + SI_SNR_EPS))
    pairwise = -10.0 * torch.log10(ratio)  # [B, C, C]
    sources = range(pairwise.shape[1])
    costs = torch.stack([pairwise[:, list(perm), list(sources)].mean(-1)
                         for perm in itertools.permutations(sources)], dim=-1)
    return costs.min(-1).values.mean()


def _nbytes(tensors) -> int:
    return int(sum(t.numel() * t.element_size() for t in tensors))


def torch_device() -> torch.device:
    """The device that matches JAX's default backend: CUDA when JAX runs on a GPU.

    Comparing JAX on a GPU with PyTorch on the host would be meaningless, so a GPU
    backend without a CUDA build of PyTorch is an error rather than a fallback.
    """
    backend = jax.default_backend()
    if backend == "cpu":
        return torch.device("cpu")
    if backend == "gpu" and torch.cuda.is_available():
        return torch.device("cuda")
    raise SystemExit(f"JAX runs on {backend} ({jax.devices()[0].device_kind}) but PyTorch "
                     f"{torch.__version__} has no such device: install a CUDA build of "
                     "PyTorch there, or run with JAX_PLATFORMS=cpu")


class TorchCase:
    """The PyTorch reference model: eager forward (inference mode) and train step.

    Same train step as :class:`jax_case.JaxCase`: forward with dropout, PIT negative
    SI-SNR, backward, gradient clipping, Adam. With ``compute_dtype: bfloat16`` the
    model runs under autocast to bfloat16 (float32 parameters and loss), the
    counterpart of the JAX model's bfloat16 compute. It runs on :func:`torch_device`;
    on CUDA every call waits for the device, so its wall time is the work's.
    """

    framework = "torch"
    compile_s = None  # eager: nothing is compiled
    fwd_compile_s = None

    def __init__(self, config: Config, mixture: np.ndarray, sources: np.ndarray,
                 learning_rate: float, clip_norm: float):
        torch.manual_seed(0)
        self.device = torch_device()
        self.model = build_torch_model(config.model).to(self.device)
        self.mixture = torch.from_numpy(mixture).to(self.device)
        self.sources = torch.from_numpy(sources).to(self.device)
        self.clip_norm = clip_norm
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=learning_rate)
        self.autocast = config.runtime.compute_dtype == "bfloat16"

    def _model(self, mixture: torch.Tensor, autocast: bool) -> torch.Tensor:
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=autocast):
            return self.model(mixture).float()

    def _forward(self, autocast: bool) -> torch.Tensor:
        self.model.eval()
        with torch.inference_mode():
            return self._model(self.mixture, autocast)

    def _loss_and_backward(self, autocast: bool) -> None:
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        pit_neg_si_snr(self._model(self.mixture, autocast), self.sources).backward()

    def _wait(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def run_forward(self) -> None:
        self._forward(self.autocast)
        self._wait()

    def run_step(self) -> None:
        self._loss_and_backward(self.autocast)
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.clip_norm)
        self.optimizer.step()
        self._wait()

    def _state_bytes(self, with_optimizer: bool) -> int:
        tensors = [*self.model.parameters(), self.mixture]
        if with_optimizer:
            tensors += [self.sources, *(value for state in self.optimizer.state.values()
                                        for value in state.values() if torch.is_tensor(value))]
        return _nbytes(tensors)

    def static_stats(self) -> dict:
        """Parameter count and matmul/conv/LSTM FLOPs from ``FlopCounterMode``.

        The optimizer update is elementwise and not counted. Counted in float32: the
        counts do not depend on the dtype, and oneDNN's bf16 LSTM kernel fails under the
        counter's dispatch mode. Counted on the host, on a copy when the model runs on
        CUDA: the counts do not depend on the device, and the formulas above are for the
        oneDNN kernel (cuDNN's has none in ``FlopCounterMode``).
        """
        if self.device.type != "cpu":
            host = copy.copy(self)
            host.model = copy.deepcopy(self.model).cpu()
            host.optimizer = torch.optim.Adam(host.model.parameters())  # zeroes the copy's grads
            host.mixture, host.sources = self.mixture.cpu(), self.sources.cpu()
            host.device = torch.device("cpu")
            return host.static_stats()
        counter = FlopCounterMode(display=False, custom_mapping=_LSTM_FLOP_FORMULAS)
        # The fused inference kernel of nn.MultiheadAttention has no FLOP formula.
        fastpath = torch.backends.mha.get_fastpath_enabled()
        torch.backends.mha.set_fastpath_enabled(False)
        try:
            with counter:
                self._forward(autocast=False)
        finally:
            torch.backends.mha.set_fastpath_enabled(fastpath)
        fwd_flops = counter.get_total_flops()
        counter = FlopCounterMode(display=False, custom_mapping=_LSTM_FLOP_FORMULAS)
        with counter:
            self._loss_and_backward(autocast=False)
        return {
            "params": count_parameters(self.model),
            "fwd_flops": fwd_flops,
            "step_flops": counter.get_total_flops(),
            "fwd_matmul_flops": fwd_flops,
            "step_matmul_flops": counter.get_total_flops(),
        }

    def _cuda_peak_bytes(self, fn) -> int:
        """Peak of CUDA memory allocated while ``fn`` runs (the resident state included)."""
        torch.cuda.reset_peak_memory_stats(self.device)
        fn()
        return torch.cuda.max_memory_allocated(self.device)

    def device_stats(self) -> dict:
        """Peak device memory of one call, from the CUDA caching allocator; {} on the host."""
        if self.device.type != "cuda":
            return {}
        return {"fwd_device_peak_bytes": self._cuda_peak_bytes(self.run_forward),
                "step_device_peak_bytes": self._cuda_peak_bytes(self.run_step)}

    def rss_stats(self) -> dict:
        """Peak resident memory of one call: growth of the peak RSS + resident state read."""
        fwd = measure.peak_rss_growth(self.run_forward)
        step = measure.peak_rss_growth(self.run_step)
        return {
            "fwd_rss_peak_bytes": None if fwd is None else fwd + self._state_bytes(False),
            "step_rss_peak_bytes": None if step is None else step + self._state_bytes(True),
        }
