"""What the backward passes keep: XLA's temporary bytes of compiled gradients, as ratios.

Usage:
  python benchmarks/backward_memory.py [--out benchmarks/results_backward_memory.json]

Each row compiles the gradient of a small stack of one part of the model (or of a small
whole model) and reads the temporary bytes from XLA's memory analysis of the compiled
program. A figure is a ratio: of two settings, or of the measured bytes to the bytes
counted by hand for what the backward pass has to keep. The "target" column is what the
optimisation that introduced the figure achieved and should keep achieving; a ratio past
it means a change to the model, to JAX or to XLA brought back what that optimisation
removed. These figures used to be assertions in tests/test_model.py; they depend on XLA's
CPU scheduler and buffer assignment, so they are measured here, not asserted in CI.

The ratios of layers (``per layer``) take the difference of two stack depths, so the
fixed cost of the program (inputs, the loss) cancels out.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
from typing import Callable

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from galr_jax import build_model  # noqa: E402
from galr_jax.config import RuntimeConfig, config_from_dict  # noqa: E402
from galr_jax.models import BiLSTM, GloballyAttentive, LocallyRecurrent  # noqa: E402

FLOAT_BYTES = 4
NORM_EPS = 1e-5
# Small models of both separators (as in tests/test_model.py, deeper and wider so the
# blocks dominate the program).
SMALL = {
    "galr": {"separator": "galr", "window": 16, "num_filters": 16, "features": 32,
             "hidden": 32, "segment_length": 20, "low_dim": 4, "num_blocks": 4,
             "num_heads": 4, "attention_dropout": 0.1},
    "dprnn": {"separator": "dprnn", "window": 16, "num_filters": 16, "features": 32,
              "hidden": 32, "segment_length": 20, "num_blocks": 4, "norm_eps": 1e-8},
}


def gradient_temporaries(module: nn.Module, x: jnp.ndarray, **apply_kwargs) -> int:
    """Temporary bytes of the compiled gradient of sum(module(x)^2), from XLA."""
    variables = module.init(jax.random.PRNGKey(0), x)

    def loss(v):
        return jnp.sum(module.apply(v, x, **apply_kwargs) ** 2)

    compiled = jax.jit(jax.grad(loss)).lower(variables).compile()
    return compiled.memory_analysis().temp_size_in_bytes


def per_layer(make: Callable[[int], nn.Module], x: jnp.ndarray, depths=(2, 4),
              **apply_kwargs) -> float:
    """Temporary bytes one more layer adds: the difference of two depths, per layer."""
    small, large = (gradient_temporaries(make(depth), x, **apply_kwargs) for depth in depths)
    return (large - small) / (depths[1] - depths[0])


class StackedBiLSTMs(nn.Module):
    layers: int
    hidden: int

    @nn.compact
    def __call__(self, x):
        features = x.shape[-1]
        for layer in range(self.layers):
            x = x + BiLSTM(self.hidden, True, name=f"lstm_{layer}")(x)[..., :features]
        return x


class StackedLocallyRecurrent(nn.Module):
    layers: int
    hidden: int

    @nn.compact
    def __call__(self, x):
        for layer in range(self.layers):
            x = LocallyRecurrent(self.hidden, NORM_EPS, name=f"recurrent_{layer}")(x)
        return x


class StackedGloballyAttentive(nn.Module):
    layers: int
    recompute_attention: bool
    dropout: float = 0.0
    heads: int = 4
    low_dim: int = 8

    @nn.compact
    def __call__(self, x):
        for layer in range(self.layers):
            x = GloballyAttentive(self.heads, self.low_dim, self.dropout, True, NORM_EPS,
                                  recompute_attention=self.recompute_attention,
                                  name=f"attend_{layer}")(x, train=True)
        return x


def model_rows() -> list[dict]:
    """Whole small models: ``remat`` and ``recompute_attention`` against their defaults."""
    rows = []
    mixture = np.random.default_rng(0).standard_normal((2, 8000)).astype(np.float32)
    dropout = {"rngs": {"dropout": jax.random.PRNGKey(1)}}
    for name, fields in SMALL.items():
        config = config_from_dict({"model": fields}).model
        plain, remat = (gradient_temporaries(build_model(config, RuntimeConfig(remat=r)),
                                             mixture, train=True, **dropout)
                        for r in (False, True))
        rows.append({"figure": f"{name}: remat / plain temporaries", "ratio": remat / plain,
                     "target": "< 0.9", "measured_bytes": [plain, remat]})
    config = config_from_dict({"model": {**SMALL["galr"], "features": 16, "hidden": 8,
                                         "num_blocks": 2, "attention_dropout": 0.0}}).model
    recomputed, kept = (gradient_temporaries(
        build_model(config, RuntimeConfig(recompute_attention=flag)), mixture[:, :4000],
        train=True) for flag in (True, False))
    rows.append({"figure": "galr: recompute_attention / kept temporaries",
                 "ratio": recomputed / kept, "target": "< 1", "measured_bytes": [recomputed, kept]})
    return rows


def bilstm_rows() -> list[dict]:
    sequences, steps, features, hidden = 64, 50, 16, 32
    x = jax.random.normal(jax.random.PRNGKey(2), (sequences, steps, features))
    # Per position and direction the backward needs the gates and cells (5 x H), the
    # output (H) and the input (features): counted over both directions.
    residuals = FLOAT_BYTES * steps * sequences * (5 * 2 * hidden + 2 * hidden + 2 * features)
    gate_gradients = FLOAT_BYTES * 2 * steps * sequences * 4 * hidden
    one_layer = gradient_temporaries(StackedBiLSTMs(1, hidden), x)
    growth = per_layer(lambda n: StackedBiLSTMs(n, hidden), x, depths=(4, 8))
    return [
        # The [steps, sequences, 4H] gate gradients are written over the saved gates: one
        # layer needs its residuals + 0.38 of a gate-gradient buffer (1.38 before).
        {"figure": "BiLSTM, one layer: (temporaries - residuals) / gate gradients",
         "ratio": (one_layer - residuals) / gate_gradients, "target": "< 0.75",
         "measured_bytes": [one_layer, residuals, gate_gradients]},
        # Each layer's gate-gradient buffers are live only during its own backward
        # (8.6 MB per layer before, when lax.scan's zero buffers were shared).
        {"figure": "BiLSTM, per layer: (temporaries - residuals) / gate gradients",
         "ratio": (growth - residuals) / gate_gradients, "target": "< 0.5",
         "measured_bytes": [growth, residuals, gate_gradients]},
    ]


def locally_recurrent_rows() -> list[dict]:
    batch, segments, length, features, hidden = 2, 32, 50, 32, 64
    x = jax.random.normal(jax.random.PRNGKey(4), (batch, segments, length, features))
    growth = per_layer(lambda n: StackedLocallyRecurrent(n, hidden), x, depths=(4, 8))
    floats = growth / (FLOAT_BYTES * batch * segments * length)
    # Per position: the five [2H] gate and cell arrays, the BiLSTM's [2H] output and
    # three [D] arrays (the layer's input, the gLN's input, the layer's output).
    counted = 5 * 2 * hidden + 2 * hidden + 3 * features
    return [{"figure": "locally recurrent, per layer: floats per position / counted",
             "ratio": floats / counted, "target": f"< {(counted + features) / counted:.3f}",
             "measured_bytes": [growth], "counted_floats_per_position": counted}]


def attention_rows() -> list[dict]:
    rows = []
    batch, segments, length, features, heads, low_dim = 2, 82, 20, 16, 4, 8
    x = jax.random.normal(jax.random.PRNGKey(3), (batch, segments, length, features))
    dropout_key = {"rngs": {"dropout": jax.random.PRNGKey(1)}}
    growth = {rate: per_layer(lambda n, r=rate: StackedGloballyAttentive(n, False, r), x,
                              **dropout_key)
              for rate in (0.0, 0.1)}
    # Kept from the forward pass, the dropped weights would cost one more
    # [B*Q, heads, S, S] float array per layer.
    weights = FLOAT_BYTES * batch * low_dim * heads * segments * segments
    rows.append({"figure": "attention with dropout, per layer: extra / one weights array",
                 "ratio": (growth[0.1] - growth[0.0]) / weights, "target": "< 0.5",
                 "measured_bytes": [growth[0.0], growth[0.1], weights]})

    batch, segments = 2, 40
    x = jax.random.normal(jax.random.PRNGKey(3), (batch, segments, length, features))
    positions = batch * segments * length
    floats = {flag: per_layer(lambda n, f=flag: StackedGloballyAttentive(n, f), x)
              / FLOAT_BYTES / positions for flag in (True, False)}
    # Recomputed: the layer's input and, per low-dimensional position, the LayerNorms'
    # inputs, the attention's input and the Q->K map's input.
    counted = features + 4 * features * low_dim / length
    # Kept: the attention's queries, keys, values, output and weights on top.
    attention = 4 * features * low_dim / length + heads * segments * low_dim / length
    rows.append({"figure": "globally attentive, recomputed, per layer: floats per position "
                           "/ counted", "ratio": floats[True] / counted, "target": "< 1",
                 "floats_per_position": floats[True], "counted": counted})
    rows.append({"figure": "globally attentive, kept - recomputed, per layer: floats per "
                           "position / counted attention", "ratio":
                 (floats[False] - floats[True]) / attention, "target": "> 0.9",
                 "floats_per_position": floats[False], "counted": attention})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", help="write the rows as JSON here")
    args = parser.parse_args()
    rows = model_rows() + bilstm_rows() + locally_recurrent_rows() + attention_rows()
    print("| figure | ratio | target |")
    print("|---|---|---|")
    for row in rows:
        print(f"| {row['figure']} | {row['ratio']:.3f} | {row['target']} |")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"jax": jax.__version__, "backend": jax.default_backend(), "rows": rows},
                      f, indent=1)


if __name__ == "__main__":
    main()
