"""Where the time of one model goes: each part of the forward and of its gradient, timed alone.

Usage:
  python benchmarks/breakdown.py [--config configs/galr_1.5m.yaml] [--seconds 4] [--batch 4]
                                 [--set model.lstm_unroll=2 ...] [--repeats 5]

Each part (encoder + bottleneck + segmentation, one locally recurrent layer, its
BiLSTM alone, one globally attentive layer, mask head + decoder) is jitted on its own,
on inputs of the shapes it sees inside the model, and timed as a forward and as
forward + backward (gradient of the sum of its output w.r.t. input and parameters).
Per-block parts are multiplied by the number of blocks in the "model share" column,
which therefore tells where optimisation pays; the whole model is timed too, so the
sum of the parts can be checked against it.
"""

from __future__ import annotations

import argparse
import pathlib
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from galr_jax.host_memory import keep_freed_memory  # noqa: E402

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


def _part(module, x, repeats, **kwargs):
    """(forward seconds, forward+backward seconds) of a Flax module on ``x``: medians of
    ``repeats`` round-robin runs after one compiling call of each."""
    variables = module.init(jax.random.PRNGKey(0), x, **kwargs)
    forward = jax.jit(lambda v, x: module.apply(v, x, **kwargs))

    def loss(v, x):
        return jnp.sum(module.apply(v, x, **kwargs).astype(jnp.float32))

    backward = jax.jit(jax.grad(loss, argnums=(0, 1)))
    runs = {"forward": lambda: jax.block_until_ready(forward(variables, x)),
            "backward": lambda: jax.block_until_ready(backward(variables, x))}
    for run in runs.values():
        run()
    times = measure.interleaved_times(runs, repeats)
    return measure.median(times["forward"]), measure.median(times["backward"])


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default=str(REPO / "configs" / "galr_1.5m.yaml"))
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=5)
    add_override_argument(parser, dest="set")
    args = parser.parse_args(argv)
    c = load_config(args.config, args.set).model
    dtype = COMPUTE_DTYPES[c.compute_dtype]
    samples = int(args.seconds * SAMPLE_RATE)
    rng = np.random.default_rng(0)
    mixture = jnp.asarray(rng.standard_normal((args.batch, samples)), jnp.float32)
    segments = num_frames(num_frames(samples, c.window), c.segment_length)
    blocks_input = jnp.asarray(
        rng.standard_normal((args.batch, segments, c.segment_length, c.features)), jnp.float32)
    sequences = blocks_input.reshape(-1, c.segment_length, c.features)

    model = build_model(c)
    rows = [("whole model", 1, *_part(model, mixture, args.repeats))]
    rows.append(("locally recurrent", c.num_blocks, *_part(
        LocallyRecurrent(c.hidden, c.norm_eps, True, c.lstm_unroll, dtype), blocks_input,
        args.repeats)))
    rows.append(("  its BiLSTM", c.num_blocks, *_part(
        BiLSTM(c.hidden, True, c.lstm_unroll, dtype), sequences, args.repeats)))
    if c.separator == "galr":
        rows.append(("globally attentive", c.num_blocks, *_part(
            GloballyAttentive(c.num_heads, c.low_dim, c.attention_dropout, c.attention_residual,
                              c.norm_eps, dtype), blocks_input, args.repeats)))
    whole_forward, whole_backward = rows[0][2], rows[0][3]
    print(f"{args.config} ({' '.join(args.set)}), batch {args.batch} x {args.seconds:g} s: "
          f"{args.batch * segments} sequences of {c.segment_length} steps per block, "
          f"{c.num_blocks} blocks; {jax.devices()[0].device_kind}")
    print(f"{'part':<20}{'x':>3}{'fwd ms':>10}{'fwd+bwd ms':>12}{'fwd share':>11}{'grad share':>12}")
    for name, count, forward, backward in rows:
        print(f"{name:<20}{count:>3}{forward * 1e3:>10.1f}{backward * 1e3:>12.1f}"
              f"{count * forward / whole_forward:>11.0%}{count * backward / whole_backward:>12.0%}")


if __name__ == "__main__":
    main()
