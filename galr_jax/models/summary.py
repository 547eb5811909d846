"""Per-module parameter counts of a model config, without allocating any weights.

Run:
  python -m galr_jax.models.summary --config configs/galr_1.5m.yaml [--set model.features=128] [--torch]

Prints one row per module (each block split into its two paths), then
``total_params_torch_convention N`` (what PyTorch reports: it keeps two biases per
LSTM direction, ``b_ih`` and ``b_hh``, where Flax keeps their sum) and, last,
``total_params N`` (the Flax model). ``--torch`` also builds the PyTorch reference and
checks that its count equals the torch-convention total.
"""

from __future__ import annotations

import argparse
import re
import sys
from typing import List, Optional, Sequence, Tuple, Union

import flax
import jax
import jax.numpy as jnp
import numpy as np

from galr_jax.config import Config, ConfigError, ModelConfig, add_override_argument, load_config
from galr_jax.models import build_model

_SHAPE_PROBE_SAMPLES = 16  # parameter shapes do not depend on the input length
_PIPELINE = ("encoder", "input_norm", "bottleneck", "blocks", "mask_head", "decoder")
_BLOCK_PARTS = ("locally_recurrent", "globally_attentive", "intra", "inter")
_MERGED_LSTM_BIAS = "lstm/bias"  # torch stores this sum as two tensors of the same size

Row = Tuple[str, int, int]  # module, Flax count, torch-convention count


def _row_name(path: str) -> str:
    parts = path.split("/")
    return "/".join(parts[:2]) if parts[0].startswith("blocks_") else parts[0]


def _row_order(name: str) -> tuple:
    top, _, part = name.partition("/")
    block = re.fullmatch(r"blocks_(\d+)", top)
    if block:
        return (_PIPELINE.index("blocks"), int(block.group(1)), _BLOCK_PARTS.index(part))
    return (_PIPELINE.index(top), 0, 0)


def count_params(config: Union[Config, ModelConfig]) -> Tuple[int, int, List[Row]]:
    """Counts the parameters of ``build_model(config)`` from shapes alone (``jax.eval_shape``).

    Returns:
      ``(flax_total, torch_total, rows)``: the Flax count, the count under torch's
      convention (Flax plus one more ``[2, 4H]`` bias per BiLSTM), and per-module rows
      ``(name, flax_count, torch_count)`` in pipeline order, e.g.
      ``("blocks_0/locally_recurrent", 214464, 215488)`` for configs/galr_1.5m.yaml.
    """
    model = config.model if isinstance(config, Config) else config
    probe = jnp.zeros((1, _SHAPE_PROBE_SAMPLES), jnp.float32)
    variables = jax.eval_shape(build_model(model).init, jax.random.PRNGKey(0), probe)
    flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(variables)["params"], sep="/")
    counts = {}
    for path, leaf in flat.items():
        size = int(np.prod(leaf.shape))
        extra = size if path.endswith(_MERGED_LSTM_BIAS) else 0
        flax_count, torch_count = counts.get(_row_name(path), (0, 0))
        counts[_row_name(path)] = (flax_count + size, torch_count + size + extra)
    rows = [(name, *counts[name]) for name in sorted(counts, key=_row_order)]
    return sum(r[1] for r in rows), sum(r[2] for r in rows), rows


def format_table(rows: Sequence[Row]) -> str:
    """The rows as an aligned text table with a header."""
    width = max(len("module"), *(len(r[0]) for r in rows))
    lines = [f"{'module':<{width}}  {'params':>10}  {'params_torch':>12}"]
    lines += [f"{name:<{width}}  {flax_count:>10,}  {torch_count:>12,}"
              for name, flax_count, torch_count in rows]
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True, help="YAML config file")
    add_override_argument(parser, dest="set")
    parser.add_argument("--torch", action="store_true",
                        help="cross-check the torch-convention count with the PyTorch reference")
    args = parser.parse_args(argv)
    try:
        config = load_config(args.config, args.set)
    except (ConfigError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    flax_total, torch_total, rows = count_params(config)
    print(format_table(rows))
    if args.torch:
        from galr_jax.interop.torch_reference import build_torch_model, count_parameters  # needs torch

        reference = count_parameters(build_torch_model(config))
        print(f"torch_reference_params {reference}")
        if reference != torch_total:
            print(f"error: the PyTorch reference has {reference} parameters, the Flax model "
                  f"{torch_total} in torch's convention", file=sys.stderr)
            return 1
    print(f"total_params_torch_convention {torch_total}")
    print(f"total_params {flax_total}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
