"""Where the time of one model goes: each part of the forward and of its gradient, timed alone.

Usage:
  python benchmarks/breakdown.py [--config configs/galr_1.5m.yaml] [--seconds 4] [--batch 4]
                                 [--set runtime.lstm_unroll=2 ...] [--repeats 5] [--torch]

Each part (encoder + bottleneck + segmentation, one locally recurrent layer, its
BiLSTM alone, one globally attentive layer, mask head + decoder) is jitted on its own,
on inputs of the shapes it sees inside the model, and timed as a forward and as
forward + backward (gradient of the sum of its output w.r.t. input and parameters).
Per-block parts are multiplied by the number of blocks in the "model share" column,
which therefore tells where optimisation pays; the whole model is timed too, so the
sum of the parts can be checked against it.

With ``--torch`` the same parts of the PyTorch reference (``galr_jax.interop.torch_reference``,
eval mode, its own ``nn.LSTM`` for the BiLSTM row) are timed on the same inputs in the
same rounds, with as many threads as JAX sees, and the table gains the ratios.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys

# Must precede the first import of torch (libgomp reads it once); see run.py.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from galr_jax.training.host_memory import keep_freed_memory  # noqa: E402

keep_freed_memory()  # as train.py does, before XLA allocates

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from galr_jax import build_model  # noqa: E402
from galr_jax.config import add_override_argument, load_config  # noqa: E402
from galr_jax.models.galr import GloballyAttentive, LocallyRecurrent  # noqa: E402
from galr_jax.models.recurrent import BiLSTM  # noqa: E402
from galr_jax.models.segmentation import num_frames  # noqa: E402
from galr_jax.models.separation import COMPUTE_DTYPES  # noqa: E402

import measure  # noqa: E402

SAMPLE_RATE = 8000


def _jax_runs(module, x, **kwargs):
    """Forward and forward+backward (gradient of the output's sum w.r.t. input and
    parameters) of a Flax module on ``x``, jitted and compiled."""
    variables = module.init(jax.random.PRNGKey(0), x, **kwargs)
    forward = jax.jit(lambda v, x: module.apply(v, x, **kwargs))

    def loss(v, x):
        return jnp.sum(module.apply(v, x, **kwargs).astype(jnp.float32))

    backward = jax.jit(jax.grad(loss, argnums=(0, 1)))
    runs = (lambda: jax.block_until_ready(forward(variables, x)),
            lambda: jax.block_until_ready(backward(variables, x)))
    for run in runs:
        run()
    return runs


def _torch_runs(module, x):
    """The same pair for a torch module in eval mode, eager."""
    import torch

    module.eval()
    inputs = torch.from_numpy(np.array(x)).requires_grad_(True)  # a writable copy

    def forward():
        with torch.no_grad():
            module(inputs)

    def backward():
        out = module(inputs)
        (out[0] if isinstance(out, tuple) else out).sum().backward()

    for run in (forward, backward):
        run()
    return forward, backward


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default=str(REPO / "configs" / "galr_1.5m.yaml"))
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--torch", action="store_true",
                        help="also time the PyTorch reference's parts in the same rounds")
    add_override_argument(parser, dest="set")
    args = parser.parse_args(argv)
    config = load_config(args.config, args.set)
    c, r = config.model, config.runtime
    dtype = COMPUTE_DTYPES[r.compute_dtype]
    samples = int(args.seconds * SAMPLE_RATE)
    rng = np.random.default_rng(0)
    mixture = jnp.asarray(rng.standard_normal((args.batch, samples)), jnp.float32)
    segments = num_frames(num_frames(samples, c.window), c.segment_length)
    blocks_input = jnp.asarray(
        rng.standard_normal((args.batch, segments, c.segment_length, c.features)), jnp.float32)
    sequences = blocks_input.reshape(-1, c.segment_length, c.features)

    # (name, count per model, JAX module, its input and call arguments, torch module or None)
    parts = [("whole model", 1, build_model(config), mixture, {}, "model"),
             ("locally recurrent", c.num_blocks,
              LocallyRecurrent(c.hidden, c.norm_eps, True, r.lstm_unroll, dtype), blocks_input, {},
              "locally_recurrent"),
             ("  its BiLSTM", c.num_blocks, BiLSTM(c.hidden, True, r.lstm_unroll, dtype),
              sequences, {}, "lstm")]
    if c.separator == "galr":
        parts.append(("globally attentive", c.num_blocks,
                      GloballyAttentive(c.num_heads, c.low_dim, c.attention_dropout,
                                        c.attention_residual, c.norm_eps, dtype,
                                        r.recompute_attention),
                      blocks_input, {}, "globally_attentive"))
    runs = {}
    for name, _, module, x, kwargs, torch_name in parts:
        runs[("jax", name, "forward")], runs[("jax", name, "backward")] = _jax_runs(
            module, x, **kwargs)
        if args.torch:
            torch_module = _torch_part(torch_name, c)
            runs[("torch", name, "forward")], runs[("torch", name, "backward")] = _torch_runs(
                torch_module, x)
    times = {key: measure.median(samples)
             for key, samples in measure.interleaved_times(runs, args.repeats).items()}
    whole_forward = times[("jax", "whole model", "forward")]
    whole_backward = times[("jax", "whole model", "backward")]
    print(f"{args.config} ({' '.join(args.set)}), batch {args.batch} x {args.seconds:g} s: "
          f"{args.batch * segments} sequences of {c.segment_length} steps per block, "
          f"{c.num_blocks} blocks; {jax.devices()[0].device_kind}")
    header = f"{'part':<20}{'x':>3}{'fwd ms':>10}{'fwd+bwd ms':>12}{'fwd share':>11}{'grad share':>12}"
    if args.torch:
        header += f"{'torch fwd':>11}{'torch f+b':>11}{'torch/JAX fwd':>15}{'torch/JAX f+b':>15}"
    print(header)
    for name, count, *_ in parts:
        forward, backward = times[("jax", name, "forward")], times[("jax", name, "backward")]
        line = (f"{name:<20}{count:>3}{forward * 1e3:>10.1f}{backward * 1e3:>12.1f}"
                f"{count * forward / whole_forward:>11.0%}{count * backward / whole_backward:>12.0%}")
        if args.torch:
            t_forward = times[("torch", name, "forward")]
            t_backward = times[("torch", name, "backward")]
            line += (f"{t_forward * 1e3:>11.1f}{t_backward * 1e3:>11.1f}"
                     f"{t_forward / forward:>15.2f}{t_backward / backward:>15.2f}")
        print(line)


def _torch_part(name, c):
    """The PyTorch reference's counterpart of a part, built with torch's default init."""
    import torch

    from galr_jax.interop import torch_reference

    torch.set_num_threads(measure.cpu_threads())
    torch.manual_seed(0)
    if name == "model":
        return torch_reference.build_torch_model(c)
    if name == "lstm":
        return torch.nn.LSTM(c.features, c.hidden, batch_first=True, bidirectional=True)
    if name == "locally_recurrent":
        return torch_reference.RecurrentPath(c.features, c.hidden, c.norm_eps,
                                             learnable_initial_state=True)
    return torch_reference.GloballyAttentive(c)


if __name__ == "__main__":
    main()
